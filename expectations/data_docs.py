"""Data Docs that work on a closed network: the CDN assets GX links to, shipped in the project.

Great Expectations' Data Docs pages load Bootstrap, jQuery, Vega and Font Awesome from public CDNs
(jsdelivr, unpkg, code.jquery, cdnjs, stackpath), some at floating versions. On a municipality's
network without internet access the pages then show no results at all, and inside the Airflow UI
those scripts would run next to the analyst's session. So after every build:

1. `expectations/vendor/` (the assets at pinned versions, with their licences; `VENDOR` lists them
   and `expectations/vendor/README.md` gives each file's sha256) is copied to
   `<docs>/static/vendor/`;
2. every page GX wrote is rewritten to load them from there by relative paths (so the pages work
   from the file system and under any URL prefix), without `integrity`/`crossorigin`, which would
   need CORS for files served by the page's own server;
3. GX's logo, loaded from S3 with the data context's id appended, is replaced by the copy GX ships.

`localise(docs_dir)` does all three and returns the external asset URLs it could not replace (a new
GX version may add one: the tests fail on it). No Airflow import, no network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
#: Where the assets go inside the Data Docs site (GX's own static files are in <docs>/static).
SITE_VENDOR = PurePosixPath("static/vendor")


@dataclass(frozen=True)
class Package:
    """One npm package: the files the Data Docs need, and the CDN URLs they replace."""

    name: str
    version: str
    licence: str
    licence_file: str
    #: CDN URL (as GX writes it) -> file inside the package's vendor folder
    replaces: dict[str, str]
    #: other files the replaced ones load (fonts of a style sheet)
    extra: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"  # @a/b -> a-b-<version>

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.replaces.values(), *self.extra, self.licence_file]))


_FA_FONTS = tuple(f"webfonts/{n}.{ext}" for n in ("fa-brands-400", "fa-regular-400", "fa-solid-900",
                                                    "fa-v4compatibility") for ext in ("woff2", "ttf"))
_BT = "https://unpkg.com/bootstrap-table@"

#: The assets of the Data Docs of great-expectations 1.24 (its templates under render/view/templates).
#: Floating CDN versions (vega@5 ...) are pinned to the newest release of that major line on the
#: day they were vendored; bootstrap-table's filter-control CSS, linked at 1.19.0, comes from 1.19.1
#: like the rest of bootstrap-table.
VENDOR: tuple[Package, ...] = (
    Package("jquery", "3.7.1", "MIT", "LICENSE.txt",
            {"https://code.jquery.com/jquery-3.7.1.min.js": "jquery.min.js"}),
    Package("popper.js", "1.12.9", "MIT", "LICENSE",
            {"https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.min.js"}),
    Package("bootstrap", "4.3.1", "MIT", "LICENSE", {
        "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "css/bootstrap.min.css",
        "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "js/bootstrap.min.js"}),
    Package("bootstrap-table", "1.19.1", "MIT", "LICENSE", {
        f"{_BT}1.19.1/dist/bootstrap-table.min.css": "bootstrap-table.min.css",
        f"{_BT}1.19.1/dist/bootstrap-table.min.js": "bootstrap-table.min.js",
        f"{_BT}1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
            "extensions/filter-control/bootstrap-table-filter-control.min.js",
        f"{_BT}1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
            "extensions/filter-control/bootstrap-table-filter-control.min.css",
        f"{_BT}1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
            "extensions/filter-control/bootstrap-table-filter-control.min.css"}),
    Package("bootstrap-datepicker", "1.9.0", "Apache-2.0", "LICENSE", {
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
            "css/bootstrap-datepicker.min.css",
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
            "js/bootstrap-datepicker.min.js"}),
    Package("@forevolve/bootstrap-dark", "1.1.0", "MIT", "LICENSE", {
        "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
            "css/bootstrap-prefers-dark.css"}),
    Package("@fortawesome/fontawesome-free", "6.6.0", "CC-BY-4.0 (icons), OFL-1.1 (fonts), MIT (code)", "LICENSE.txt",
            {"https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "css/all.min.css"},
            extra=_FA_FONTS),
    Package("vega", "5.33.1", "BSD-3-Clause", "LICENSE",
            {"https://cdn.jsdelivr.net/npm/vega@5": "vega.min.js"}),
    Package("vega-lite", "5.23.0", "BSD-3-Clause", "LICENSE",
            {"https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite.min.js"}),
    Package("vega-embed", "6.29.0", "BSD-3-Clause", "LICENSE",
            {"https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed.min.js"}),
)

#: Every CDN URL GX writes -> the file's path inside the site (static/vendor/<pkg>-<version>/...).
REPLACEMENTS: dict[str, PurePosixPath] = {
    url: SITE_VENDOR / p.folder / file for p in VENDOR for url, file in p.replaces.items()
}
#: GX's logo, which its pages load from S3 with the data context's id appended (a call home): GX ships
#: the images in static/images; the dark-mode logo (styles) has no local twin, the vector logo serves.
_GX_IMAGES = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/([\w.-]+)[^\"')\s]*")
_LOCAL_IMAGES = {"logo-long.png": "logo-long.png", "full_logo_dark.png": "logo-long-vector.svg"}
_STYLE_SHEET = PurePosixPath("static/styles/data_docs_default_styles.css")
#: An asset that loads by itself: <script src>, <link href> (style sheets, icons), <img src>, CSS url().
_EXTERNAL_ASSET = re.compile(
    r"""<(?:script|img|link|iframe|source)\b[^>]*?\b(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']"""
    r"""|url\(\s*["']?((?:https?:)?//[^)"']+)""", re.I)
_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.I)
_SRI = re.compile(r"""\s+(?:integrity|crossorigin)\s*=\s*["'][^"']*["']""", re.I)
_SITE_STATIC = re.compile(r"(?:\./|(?:\.\./)*)static/([^?#]+)")
_ASSET_URL = re.compile(r"""\b(src|href)\s*=\s*(["'])([^"']+)\2""", re.I)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def external_assets(text: str) -> list[str]:
    """The URLs of assets a page or style sheet would load from another machine (links to click are
    not assets: a plain <a href> requests nothing)."""
    return [a or b for a, b in _EXTERNAL_ASSET.findall(text)]


def _copy_vendor(docs_dir: Path) -> None:
    """Mirror expectations/vendor/<pkg>-<version>/ into <docs>/static/vendor/ (only what changed)."""
    target_root = docs_dir / SITE_VENDOR
    for package in VENDOR:
        for name in package.files:
            source = VENDOR_DIR / package.folder / name
            target = target_root / package.folder / name
            if target.is_file() and target.stat().st_size == source.stat().st_size \
                    and sha256_file(target) == sha256_file(source):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)


def rewrite_page(text: str, page: PurePosixPath) -> str:
    """The page or style sheet (path relative to the site root) with every known CDN asset and GX's
    logo pointing at the local copy."""
    up = "../" * (len(page.parts) - 1)

    def tag(m: re.Match) -> str:
        element = m.group(0)

        def url(u: re.Match) -> str:
            local = REPLACEMENTS.get(u.group(3))
            own = _SITE_STATIC.fullmatch(u.group(3))
            if own:  # GX's own static file, at whatever depth GX guessed (its favicon link is one short)
                local = SITE_VENDOR.parent / own.group(1)
            return u.group(0) if local is None else f"{u.group(1)}={u.group(2)}{up}{local}{u.group(2)}"

        rewritten = _ASSET_URL.sub(url, element)
        return _SRI.sub("", rewritten) if rewritten != element else element

    def image(m: re.Match) -> str:
        return f"{up}static/images/{_LOCAL_IMAGES.get(m.group(1), 'logo-long.png')}"

    return _GX_IMAGES.sub(image, _TAG.sub(tag, text))


def _write_if_changed(path: Path, old: str, new: str) -> None:
    if new != old:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(path)  # a reader (the UI) never sees half a page


def localise(docs_dir: Path, *, since: float | None = None) -> list[str]:
    """Make the Data Docs site in `docs_dir` load nothing from outside; return what is still external.

    `since` (a time.time() value) limits the rewrite to pages written at or after it (GX rewrites the
    index and the new validation's pages on each build); None rewrites every page. Idempotent.
    """
    docs_dir = Path(docs_dir)
    _copy_vendor(docs_dir)
    left: list[str] = []
    style = [docs_dir / _STYLE_SHEET] if (docs_dir / _STYLE_SHEET).is_file() else []
    for path in style + _pages(docs_dir, since):
        text = path.read_text(encoding="utf-8")
        new = rewrite_page(text, PurePosixPath(path.relative_to(docs_dir).as_posix()))
        _write_if_changed(path, text, new)
        left += external_assets(new)
    left = sorted(set(left))
    if left:
        log.warning("Data Docs still load %d asset(s) from outside this machine: %s", len(left), ", ".join(left))
    return left


def _pages(docs_dir: Path, since: float | None) -> list[Path]:
    pages = [docs_dir / "index.html"] if (docs_dir / "index.html").is_file() else []
    for folder in ("expectations", "validations"):
        for root, _dirs, files in os.walk(docs_dir / folder):
            pages += [Path(root) / f for f in files if f.endswith(".html")]
    if since is None:
        return pages
    return [p for p in pages if p.stat().st_mtime >= since - 1]  # coarse file-system clocks


def vendor_readme() -> str:
    """expectations/vendor/README.md: package, version, licence and each file's sha256."""
    lines = [
        "# Vendored assets of the Great Expectations Data Docs",
        "",
        "Generated by `ams-report docs` from `expectations/data_docs.py` (`VENDOR`); do not edit by hand.",
        "The Data Docs that Great Expectations writes link these files on public CDNs; the pipeline copies",
        "them into the site (`static/vendor/`) and points the pages at them, so the reports work on a closed",
        "network. Each file is byte for byte the file of the npm package named (fetched with `npm pack`),",
        "with the package's licence beside it.",
        "",
        "| package | version | licence | file | sha256 |",
        "|---|---|---|---|---|",
    ]
    for p in VENDOR:
        for name in p.files:
            digest = sha256_file(VENDOR_DIR / p.folder / name)
            lines.append(f"| `{p.name}` | {p.version} | {p.licence} | `{p.folder}/{name}` | `{digest}` |")
    lines += [
        "",
        "`popper.js@1.12.9` and `vega@5.33.1` ship no licence file in their npm package; their `LICENSE` here",
        "states the licence their `package.json` and file headers name (MIT; BSD-3-Clause), and says so.",
        "",
    ]
    return "\n".join(lines)

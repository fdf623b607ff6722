"""Data Docs on a closed network (issue 11, item 1): the vendored assets and the rewrite of GX's pages.

The browser test (tests/test_reports_ui.py) opens them offline through the Airflow UI; these tests
check the parts without a browser.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path, PurePosixPath

import great_expectations
import pandas as pd

from expectations import data_docs
from expectations.data_docs import REPLACEMENTS, VENDOR, VENDOR_DIR, external_assets, localise, rewrite_page
from expectations.runner import run_quality

GX_TEMPLATES = Path(great_expectations.__file__).parent / "render" / "view"
LINKED = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)


def _build(docs: Path) -> None:
    records = pd.DataFrame([{"record_key": "k1", "person_cpr": "3102901234", "municipality_code": "101",
                             "held_on": date(2012, 5, 14), "interview_form": "1", "visitation_category": "2",
                             "visitation_rules": "2005", "action": "CREATE_OR_UPDATE", "reconciles": True}],
                           dtype=object)
    run_quality(3, records, period_end=date(2012, 12, 31), run_id="docs", data_docs_dir=docs)


def test_every_cdn_asset_of_gx_templates_has_a_local_copy():
    """A new GX version that links another CDN file fails here, before an analyst sees a blank page."""
    linked = set()
    for template in GX_TEMPLATES.rglob("*"):
        if template.suffix in (".j2", ".css", ".html"):
            linked |= set(external_assets(template.read_text(encoding="utf-8")))
    gx_images = {u for u in linked if u.startswith("https://great-expectations-web-assets.")}
    assert linked - gx_images == set(REPLACEMENTS)
    for image in gx_images:  # GX's logo (with a templated suffix): replaced by the copy GX ships
        assert "static/images/" in rewrite_page(f'<img src="{image}">', PurePosixPath("index.html"))


def test_built_data_docs_load_nothing_from_outside(tmp_path):
    docs = tmp_path / "docs"
    _build(docs)
    pages = [docs / "index.html", *docs.glob("validations/**/*.html"), *docs.glob("expectations/**/*.html")]
    assert len(pages) >= 3
    for page in [*pages, docs / "static" / "styles" / "data_docs_default_styles.css"]:
        text = page.read_text(encoding="utf-8")
        assert external_assets(text) == [], page
        assert "integrity=" not in text and "crossorigin=" not in text
        assert "dataContextId" not in text  # GX's logo URL carries the context id: a call home
        for link in LINKED.findall(text):
            if not link.startswith(("#", "data:")):
                target = (page.parent / link.split("?")[0]).resolve()
                assert target.is_file() and target.is_relative_to(docs.resolve()), (page, link)
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert 'src="static/vendor/jquery-3.7.1/jquery.min.js"' in index
    validation = next(docs.glob("validations/**/*.html"))
    depth = len(validation.relative_to(docs).parts) - 1
    assert f'src="{"../" * depth}static/vendor/bootstrap-4.3.1/js/bootstrap.min.js"' in \
        validation.read_text(encoding="utf-8")


def test_localise_is_idempotent_and_restores_a_damaged_copy(tmp_path):
    docs = tmp_path / "docs"
    _build(docs)
    index = docs / "index.html"
    before = index.read_text(encoding="utf-8")
    jquery = docs / "static" / "vendor" / "jquery-3.7.1" / "jquery.min.js"
    jquery.write_text("tampered")
    assert localise(docs) == []
    assert index.read_text(encoding="utf-8") == before
    assert jquery.read_bytes() == (VENDOR_DIR / "jquery-3.7.1" / "jquery.min.js").read_bytes()


def test_localise_reports_an_asset_it_cannot_replace(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.html").write_text('<script src="https://cdn.example.org/new-lib@2"></script>'
                                     '<script src="https://cdn.jsdelivr.net/npm/vega@5" integrity="sha384-x" '
                                     'crossorigin="anonymous"></script><a href="https://greatexpectations.io">GX</a>')
    assert localise(docs) == ["https://cdn.example.org/new-lib@2"]
    text = (docs / "index.html").read_text()
    assert '<script src="static/vendor/vega-5.33.1/vega.min.js"></script>' in text
    assert 'href="https://greatexpectations.io"' in text  # a link to click loads nothing


def test_the_vendor_folder_holds_exactly_the_listed_files_with_licences_and_hashes():
    readme = (VENDOR_DIR / "README.md").read_text(encoding="utf-8")
    assert readme == data_docs.vendor_readme(), "expectations/vendor/README.md is stale: run `make docs`"
    listed = {f"{p.folder}/{name}" for p in VENDOR for name in p.files}
    present = {path.relative_to(VENDOR_DIR).as_posix() for path in VENDOR_DIR.rglob("*") if path.is_file()}
    assert present - {"README.md"} == listed
    for p in VENDOR:
        assert (VENDOR_DIR / p.folder / p.licence_file).stat().st_size > 500, p.name
        assert re.fullmatch(r"\d+\.\d+\.\d+", p.version), p.name  # pinned, never a floating tag
        assert f"| `{p.name}` | {p.version} | {p.licence} |" in readme
    for name in present:
        assert (VENDOR_DIR / name).stat().st_size < 5_000_000, name
    for row in re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", readme):
        assert data_docs.sha256_file(VENDOR_DIR / row[0]) == row[1], row[0]

"""The analysts' data-quality pages inside the Airflow UI: a small read-only FastAPI app.

`plugins/ams_reporting_plugin.py` registers it with Airflow 3.3: the API server mounts the app at
`/ams-reports`, and the nav link "AMS data quality" (an external view) shows it inside the UI, at
`/plugin/ams-data-quality`. The app serves the reports folder (`Settings.from_env().reports_dir`,
written by reports.summary / reports.pages) and nothing else:

    /                                  index.html: every run, newest first
    /runs/<safe run id>/               that run's page
    /runs/<safe run id>/<file>         quarantine.csv, findings.csv, summary.md, summary.json
    /data_docs/...                     the Great Expectations Data Docs (the site only, not data_docs/gx)
    /<kommunekode>/...                 the same pages of one municipality (a tenants deployment, where
                                       / is the operator's overview across municipalities)

The reports live in the object store (AMS_OBJECT_STORE_URL, credentials from AMS_OBJECT_STORE_CONN_ID;
default AMS_HOME/reports): a local folder is served as files, an object store through its path API.

Any other path, or one that would leave the folder, is a 404. Requests need an Airflow login (the UI's
session cookie or a bearer token, as for Airflow's REST API) of a user whom Airflow's auth manager
allows to read the custom view "AMS Reports" (403 otherwise). Only the Data Docs' static files
(styles, fonts, the vendored libraries: no report data) are served without one.

Our own pages run under a strict Content-Security-Policy (no script at all); the Data Docs, GX's
pages with scripts, run sandboxed in an opaque origin and load nothing from outside this server.

Import is cheap and has no side effect: no database, no file, no Airflow core import; the reports
folder is looked up per request.
"""

from __future__ import annotations

import html
import mimetypes
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

URL_PREFIX = "/ams-reports"
APP_NAME = "AMS reports"
NAV_NAME = "AMS data quality"
NAV_ROUTE = "ams-data-quality"

#: A municipality's folder under the reports root (a tenants deployment).
_KOMMUNEKODE = re.compile(r"\d{3}")
#: A run folder's name as reports.summary._safe writes it.
_RUN_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,250}")
#: The files of a run folder that are served, with their media type and whether they download.
RUN_FILES: dict[str, tuple[str, bool]] = {
    "index.html": ("text/html; charset=utf-8", False),
    "quarantine.html": ("text/html; charset=utf-8", False),
    "quarantine.csv": ("text/csv; charset=utf-8", True),
    "findings.csv": ("text/csv; charset=utf-8", True),
    "summary.md": ("text/plain; charset=utf-8", False),
    "summary.json": ("application/json", False),
}
#: The Data Docs site: its index and these folders (data_docs/gx, the GX project, is not served).
DOCS_FOLDERS = ("static", "expectations", "validations")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
}
#: Our own pages need nothing but inline CSS and inline SVG.
_OWN_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'; "
            "base-uri 'none'; form-action 'none'")
#: The Data Docs are GX's pages: scripts (the project's vendored copies, expectations/vendor) and inline
#: scripts and styles. They load only from this server, send nothing anywhere (connect-src, form-action),
#: and run sandboxed: in an opaque origin, so their scripts cannot reach Airflow's pages, its API with the
#: analyst's session, its cookies or storage, nor the frame around them.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'; connect-src 'none'; frame-src 'none'; worker-src 'none'; "
            "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox allow-scripts")
#: Who may read the reports: Airflow's auth manager decides, for this custom view (plugin resource).
RESOURCE_NAME = "AMS Reports"


def external_view() -> dict:
    """The nav entry: "AMS data quality", the app shown in an iframe inside the Airflow UI.

    `href` has no leading slash: the UI resolves it against its <base href>, so it also works when
    Airflow is served under a sub-path ([api] base_url).
    """
    return {"name": NAV_NAME, "href": URL_PREFIX.lstrip("/") + "/", "destination": "nav", "url_route": NAV_ROUTE}


def default_reports_dir() -> Any:
    """The reports root: <store>/reports (every municipality's folder, or today's single folder)."""
    from cycle.pipeline import Settings  # per request: AMS_HOME is read when a page is asked for

    settings = Settings.from_env()
    if os.environ.get("AMS_OBJECT_STORE_URL"):
        from ams_reporting.hooks import object_store_root

        settings.object_store = object_store_root()
    return settings.reports_root


def _public_asset(relative: str) -> bool:
    """Data Docs' static files (GX's styles, fonts, images and the vendored libraries): no report data,
    served without a login, because the sandboxed Data Docs load them from an opaque origin, which
    sends no cookie. Everything else needs a reader."""
    parts = PurePosixPath(relative).parts
    return len(parts) > 1 and parts[0] == "static" and ".." not in parts


async def _require_reader(request: Request) -> None:
    """An Airflow login (the UI's JWT cookie or an `Authorization: Bearer` token) whose user Airflow's
    auth manager allows to read the custom view "AMS Reports" (RESOURCE_NAME): 401 without a login,
    403 without the permission."""
    if not request.app.state.require_login:
        return
    route = request.scope.get("route")
    if getattr(route, "name", "") == "data_docs" and _public_asset(str(request.path_params.get("relative", ""))):
        return
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    try:
        user = await get_user(request, None, await bearer_scheme(request))
        allowed = get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user)
    except RuntimeError as exc:  # no auth manager: the app is not running inside Airflow's API server
        raise HTTPException(503, "Airflow's auth manager is not running: open this page through Airflow.") from exc
    if not allowed:
        raise HTTPException(403, f"Your Airflow user ({user.get_name()}) may not read the data-quality reports. "
                                 f"Ask an Airflow administrator for read access to \"{RESOURCE_NAME}\".")


def _page(status: int, title: str, text: str, link: tuple[str, str] | None = None, *,
          top: bool = False) -> HTMLResponse:
    target = ' target="_top"' if top else ""
    more = f'<p><a href="{html.escape(link[0])}"{target}>{html.escape(link[1])}</a></p>' if link else ""
    body = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<style>body{font:15px/1.5 system-ui,sans-serif;color:#1d2430;margin:40px}h1{font-size:20px}'
            'code{background:#f4f6f9;padding:1px 4px}</style></head><body>'
            f"<h1>{html.escape(title)}</h1><p>{text}</p>{more}</body></html>")
    return HTMLResponse(body, status_code=status, headers={**_HEADERS, "Content-Security-Policy": _OWN_CSP})


def _serve(path: Any, media_type: str, *, csp: str | None, download: str | None = None,
           extra: dict[str, str] | None = None) -> Response:
    headers = {**_HEADERS, **(extra or {})}
    if csp:
        headers["Content-Security-Policy"] = csp
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
    if not isinstance(path, Path):  # an object store: the object's bytes
        return Response(path.read_bytes(), media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


def _inside(base: Any, relative: str) -> Any | None:
    """`base/relative` if it is a file inside `base` (no '..', no hidden part, no symlink out), else None."""
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    pure = PurePosixPath(relative)
    if pure.is_absolute() or any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts):
        return None
    if not isinstance(base, Path):  # an object store: keys have no links to leave by; the parts are checked
        target = base
        for part in pure.parts:
            target = target / part
        try:
            return target if target.is_file() else None
        except OSError:
            return None
    try:
        root = base.resolve(strict=True)
        target = (root / pure).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError, RuntimeError, OSError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def create_app(*, reports_dir: Any | Callable[[], Any] | None = None, require_login: bool = True) -> FastAPI:
    """The app. `reports_dir` (a folder, or a function giving it) defaults to the AMS settings."""
    where: Callable[[], Any]
    if reports_dir is None:
        where = default_reports_dir
    elif callable(reports_dir):
        where = reports_dir
    else:
        fixed = Path(reports_dir) if isinstance(reports_dir, str) else reports_dir

        def where() -> Any:
            return fixed

    app = FastAPI(title=APP_NAME, docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(_require_reader)])
    app.state.require_login = require_login

    @app.exception_handler(StarletteHTTPException)
    async def _error(request: Request, exc: StarletteHTTPException) -> Response:
        root = str(request.scope.get("root_path", ""))  # the mount point, e.g. /ams-reports
        home = root + "/"
        if exc.status_code == 401:
            return _page(401, "Please sign in to Airflow", "These pages need an Airflow login.",
                         (root.removesuffix(URL_PREFIX) + "/", "Airflow"), top=True)
        if exc.status_code == 403:
            return _page(403, "Not allowed", html.escape(str(exc.detail)))
        if exc.status_code == 404:
            return _page(404, "Not found", "There is no such report page.", (home, "All runs"))
        return _page(exc.status_code, "Error", html.escape(str(exc.detail)))

    def no_run_yet() -> HTMLResponse:
        return _page(404, "No data-quality report yet",
                     "No run has written a report yet: run the DAG <code>employment_reporting</code> first "
                     "(in Airflow: Dags &rarr; employment_reporting &rarr; Trigger). Its last task writes the "
                     "pages shown here.")

    def tenant_base(code: str) -> Any:
        """A municipality's folder under the reports root (404 for anything but a kommunekode)."""
        if not _KOMMUNEKODE.fullmatch(code):
            raise HTTPException(404)
        return where() / code

    def index_of(base: Any) -> Response:
        path = base / "index.html"
        if not path.is_file():
            return no_run_yet()
        return _serve(path, RUN_FILES["index.html"][0], csp=_OWN_CSP)

    def run_file_of(base: Any, run: str, name: str) -> Response:
        if not _RUN_FOLDER.fullmatch(run) or name not in RUN_FILES:
            raise HTTPException(404)
        path = _inside(base, f"runs/{run}/{name}")
        if path is None:
            if not (base / "index.html").is_file():
                return no_run_yet()
            raise HTTPException(404)
        media_type, download = RUN_FILES[name]
        return _serve(path, media_type, csp=_OWN_CSP if name.endswith(".html") else None,
                      download=f"{run}-{name}" if download else None)

    def data_docs_of(base: Any, relative: str) -> Response:
        relative = relative or "index.html"
        first = PurePosixPath(relative).parts[0] if relative else ""
        if relative != "index.html" and first not in DOCS_FOLDERS:
            raise HTTPException(404)
        path = _inside(base / "data_docs", relative)
        if path is None:
            if relative == "index.html":
                return _page(404, "No Data Docs yet", "The Great Expectations Data Docs are built by the first "
                             "run of the DAG <code>employment_reporting</code> (unless AMS_DATA_DOCS=0).")
            raise HTTPException(404)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript", "application/json"):
            media_type += "; charset=utf-8"
        if _public_asset(relative):
            # Sandboxed pages load these from an opaque origin: fonts need CORS, and no cookie comes along.
            return _serve(path, media_type, csp=None, extra={"Access-Control-Allow-Origin": "*",
                                                             "Cache-Control": "private, max-age=3600"})
        return _serve(path, media_type, csp=DOCS_CSP)

    @app.api_route("/", methods=["GET", "HEAD"], response_model=None)
    @app.api_route("/index.html", methods=["GET", "HEAD"], response_model=None)
    def index() -> Response:
        return index_of(where())

    @app.api_route("/runs", methods=["GET", "HEAD"], response_model=None)
    def runs() -> Response:
        return RedirectResponse("./", status_code=307)  # relative: right under any mount point

    @app.api_route("/runs/", methods=["GET", "HEAD"], response_model=None)
    def runs_slash() -> Response:
        return RedirectResponse("../", status_code=307)

    @app.api_route("/runs/{run}", methods=["GET", "HEAD"], response_model=None)
    def run_without_slash(run: str) -> Response:
        if not _RUN_FOLDER.fullmatch(run):
            raise HTTPException(404)
        return RedirectResponse(f"{run}/", status_code=307)  # relative links on the page need the slash

    @app.api_route("/runs/{run}/", methods=["GET", "HEAD"], response_model=None)
    def run_page(run: str) -> Response:
        return run_file_of(where(), run, "index.html")

    @app.api_route("/runs/{run}/{name}", methods=["GET", "HEAD"], response_model=None)
    def run_file(run: str, name: str) -> Response:
        return run_file_of(where(), run, name)

    @app.api_route("/data_docs/{relative:path}", methods=["GET", "HEAD"], response_model=None)
    def data_docs(relative: str) -> Response:
        return data_docs_of(where(), relative)

    # One municipality's pages (a tenants deployment): the same pages under /<kommunekode>/, so the
    # relative links inside them work unchanged. Declared last: /runs/... and /data_docs/... come first.
    @app.api_route("/{code}", methods=["GET", "HEAD"], response_model=None)
    def tenant_without_slash(code: str) -> Response:
        tenant_base(code)
        return RedirectResponse(f"{code}/", status_code=307)

    @app.api_route("/{code}/", methods=["GET", "HEAD"], response_model=None)
    @app.api_route("/{code}/index.html", methods=["GET", "HEAD"], response_model=None)
    def tenant_index(code: str) -> Response:
        return index_of(tenant_base(code))

    @app.api_route("/{code}/runs/{run}", methods=["GET", "HEAD"], response_model=None)
    def tenant_run_without_slash(code: str, run: str) -> Response:
        tenant_base(code)
        if not _RUN_FOLDER.fullmatch(run):
            raise HTTPException(404)
        return RedirectResponse(f"{run}/", status_code=307)

    @app.api_route("/{code}/runs/{run}/", methods=["GET", "HEAD"], response_model=None)
    def tenant_run_page(code: str, run: str) -> Response:
        return run_file_of(tenant_base(code), run, "index.html")

    @app.api_route("/{code}/runs/{run}/{name}", methods=["GET", "HEAD"], response_model=None)
    def tenant_run_file(code: str, run: str, name: str) -> Response:
        return run_file_of(tenant_base(code), run, name)

    @app.api_route("/{code}/data_docs/{relative:path}", methods=["GET", "HEAD"], response_model=None,
                   name="data_docs")
    def tenant_data_docs(code: str, relative: str) -> Response:
        return data_docs_of(tenant_base(code), relative)

    return app

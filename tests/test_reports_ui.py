"""The analysts' data-quality pages: the HTML written per run, the Airflow UI plugin that serves them,
and - in a real browser against the real Airflow API server - what an analyst sees.

One small world for the whole module: a demo source (300 persons, 5 % defects), two runs of areas 1,
2 and 7 (prepare + deliver to a local receiver + the run report), so the pages have quarantine,
warnings, deliveries, Data Docs and a trend of two runs.
"""

from __future__ import annotations

import csv
import html
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from markupsafe import escape

from conftest import ROOT
from cycle.pipeline import Settings, deliver_area, prepare_area
from demo import synthetic
from reports import pages as report_html
from reports.counts import safe_folder_name
from reports.summary import write_run_report
from tests.support import free_port
from transforms.source import create_engine_from_url

AREAS = (1, 2, 7)
RUNS = ("scheduled__2026-11-27T00:00:00+00:00", "scheduled__2026-11-28T00:00:00+00:00")
PERIOD_END = date(2026, 11, 28)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MASKED = re.compile(r"\b\d{6}-\*\*\*\*")
CPR_SHAPED = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(settings, raw CPR numbers of the source): two runs through prepare, deliver and the report."""
    from delivery.client import AmsClient
    from receiver.server import start_in_thread

    tmp = tmp_path_factory.mktemp("reports")
    source = f"sqlite:///{tmp / 'source.sqlite'}"
    engine = create_engine_from_url(source)
    synthetic.generate(engine, persons=300, defect_rate=0.05)
    with engine.connect() as conn:
        cprs = {str(c) for (c,) in conn.execute(sa.text("SELECT cpr FROM persons")) if c}
    engine.dispose()
    cprs.discard("0000000000")  # the agency's "required but unknown": not a person
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMS_ARCHIVE_DIR", str(tmp / "var" / "archive"))
        mp.delenv("AMS_ARCHIVE_KEY", raising=False)
        mp.delenv("AMS_ARCHIVE_KEY_FILE", raising=False)
        settings = Settings(home=tmp / "var", source_url=source, state_url=f"sqlite:///{tmp / 'state.sqlite'}",
                            batch_size=500, data_docs=True, delivery_attempts=2, backoff_seconds=0.05)
        receiver = start_in_thread(tmp / "receiver.sqlite")
        try:
            client = AmsClient(receiver.wsdl_url, timeout=10)
            for run_id in RUNS:
                for area in AREAS:
                    prepare_area(area, run_id=run_id, period_end=PERIOD_END, settings=settings)
                    deliver_area(area, run_id=run_id, settings=settings, client=client)
                write_run_report(run_id, settings)  # writes summary.*, the run page and the index
                if run_id == RUNS[0]:
                    _withdraw_at_source(settings, source)  # so the second run releases some from quarantine
        finally:
            receiver.stop()
    assert len(cprs) > 100
    return settings, cprs


#: Quarantined measures that the case system withdraws (soft-deletes) between the two runs.
WITHDRAWN = 2


def _withdraw_at_source(settings: Settings, source: str) -> None:
    keys = sorted(q["record_key"] for q in settings.state().open_quarantine() if q["area"] in (1, 2))[:WITHDRAWN]
    engine = create_engine_from_url(source)
    with engine.begin() as conn:
        for key in keys:
            # stamped, as the source contract demands (updated_at / deleted_at drive change detection)
            conn.execute(sa.text("UPDATE measures SET deleted_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP "
                                 "WHERE CAST(measure_id AS TEXT) = :k"), {"k": key})
    engine.dispose()


def _page_path(settings: Settings, run_id: str) -> Path:
    return settings.reports_dir / "runs" / safe_folder_name(run_id) / "index.html"


def _assert_no_raw_cpr(text: str, cprs: set[str], where: str) -> None:
    found = {m.group(0).replace("-", "") for m in CPR_SHAPED.finditer(text)}
    leaked = found & cprs
    assert not leaked, f"{where}: {len(leaked)} raw CPR number(s) of the source persons"


# --- (a) the pages --------------------------------------------------------------------------------


def test_run_page_shows_counts_rules_and_every_quarantined_record(world):
    settings, _ = world
    state = settings.state()
    run_id = RUNS[-1]
    page = _page_path(settings, run_id).read_text(encoding="utf-8")
    assert html.escape(run_id) in page

    # Counts per area, with the reconciliation check.
    assert page.count("adds up") >= len(AREAS) + 1  # every area and the total
    assert "&#10007;" not in page
    for area in AREAS:
        assert f'data-counts-area="{area}"' in page

    # Counts per area and rule: records (not findings) with an error and with a warning apart, with the
    # rule's title and basis.
    findings = state.run_findings(run_id)
    assert len(findings) and set(findings["severity"]) == {"error", "warning"}
    expected = findings.groupby(["area", "rule", "severity"])["record_key"].nunique().to_dict()
    for (area, rule) in {(a, r) for a, r, _ in expected}:
        m = re.search(rf'<tr data-area="{area}" data-rule="{re.escape(rule)}">(.*?)</tr>', page, re.S)
        assert m, f"no row for area {area} rule {rule}"
        row = m.group(1)
        assert f'data-errors="{expected.get((area, rule, "error"), 0)}"' in row
        assert f'data-warnings="{expected.get((area, rule, "warning"), 0)}"' in row
        rule_def = report_html.RULE_BY_ID[rule]
        assert str(escape(rule_def.title)) in row and str(escape(rule_def.basis)) in row

    # The open quarantine, on the page beside it (quarantine.html): every record, its masked person, every
    # failed rule with paragraph and message. The run page shows those new in this run (none: both runs
    # hold back the same records, less those released) and links the lists.
    lists = (_page_path(settings, run_id).parent / "quarantine.html").read_text(encoding="utf-8")
    assert 'href="quarantine.html"' in page and "No record entered quarantine in this run." in page
    assert "data-quarantine-area=" not in page
    first = _page_path(settings, RUNS[0]).read_text(encoding="utf-8")  # the first run: every entry is new
    assert first.count("data-quarantine-area=") == min(report_html.NEW_ROWS, len(state.open_quarantine())
                                                       + WITHDRAWN)
    open_entries = state.open_quarantine()
    assert 0 < len(open_entries) <= report_html.MAX_ROWS
    for q in open_entries:
        m = re.search(rf'<tr data-quarantine-area="{q["area"]}" data-key="{re.escape(q["record_key"])}">(.*?)</tr>',
                      lists, re.S)
        assert m, f"quarantined record {q['record_key']} is not on the page"
        row = m.group(1)
        assert MASKED.fullmatch(q["masked_person"]) and q["masked_person"] in row
        for f in q["findings"]:
            assert f["rule"] in row and str(escape(f["paragraph"])) in row and str(escape(f["message"])) in row
        # first seen links to the first run's page (the same link from every run's folder: the page is
        # shared); the last run that saw it is in quarantine.csv
        assert f"{safe_folder_name(RUNS[0])}/index.html" in row and "this run" not in row

    # Data Docs: the index and this run's validations, linked relatively and present.
    assert 'href="../../data_docs/index.html"' in page
    assert (settings.reports_dir / "data_docs" / "index.html").is_file()
    for href in re.findall(r'href="(\.\./\.\./data_docs/validations/[^"]+)"', page):
        from urllib.parse import unquote

        assert (_page_path(settings, run_id).parent / unquote(html.unescape(href))).resolve().is_file()

    # The trend: both runs, an SVG per area (quarantined and delivered) and for the total.
    trend = page[page.index('id="trend"'):]
    assert trend.count("<svg") == 2 * len(AREAS) + 2
    assert html.escape(RUNS[0]) in trend and html.escape(RUNS[1]) in trend

    # Self-contained: no script, no external asset.
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_run_page_plots_answer_the_analysts_questions(world):
    """Issue 11, item 3: quarantine per area over the runs, the top rules over time, time to release."""
    settings, _ = world
    state = settings.state()
    page = _page_path(settings, RUNS[-1]).read_text(encoding="utf-8")
    plots = page[page.index('id="plots"'):page.index('id="rules"')]
    assert plots.count("<svg") == 3 and "<script" not in plots.lower()

    quarantine = plots[plots.index('id="plot-quarantine"'):plots.index('id="plot-rules"')]
    for area in AREAS:  # one line per area, through both runs, ending at this run's quarantine
        assert f'data-series="area {area}"' in quarantine
        now = {r["area"]: r for r in state.run_rows(RUNS[-1])}[area]["counts"]["quarantined"]
        assert f"area {area}: {now}</text>" in quarantine
    assert ">11-27</text>" in quarantine and ">11-28</text>" in quarantine  # the runs' dates on the axis

    rules = plots[plots.index('id="plot-rules"'):plots.index('id="plot-release"')]
    totals: dict[str, int] = {}
    for run_id in RUNS:
        for row in state.run_rows(run_id):
            for key, n in row["counts"]["rules"].items():
                totals[key] = totals.get(key, 0) + n
    top = sorted(totals, key=lambda k: (-totals[k], k))[:report_html.TOP_RULES]
    shown = re.findall(r'data-top-rule="([^"]+)"><td><code>[^<]+</code></td><td>(\w+)</td>.*?<td class="n">(\d+)</td>',
                       rules, re.S)
    assert [(f"{r}:{sev}", int(n)) for r, sev, n in shown] == [(k, totals[k]) for k in top]
    for key in top:
        rule, severity = key.rsplit(":", 1)
        assert f'data-series="{rule} ({severity})"' in rules

    release = plots[plots.index('id="plot-release"'):]
    assert f"for the {WITHDRAWN} records released in these runs" in release
    assert f'data-bucket="same day"><title>same day: {WITHDRAWN}</title>' in release


def test_quarantine_csv_holds_the_whole_list_and_the_page_caps_it(world, monkeypatch):
    settings, _ = world
    state = settings.state()
    run_id = RUNS[-1]
    folder = _page_path(settings, run_id).parent
    with (folder / "quarantine.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    entries = state.open_quarantine()
    assert len(rows) == sum(len(q["findings"]) for q in entries)
    assert {(int(r["area"]), r["record_key"]) for r in rows} == {(q["area"], q["record_key"]) for q in entries}
    assert all(MASKED.fullmatch(r["person"]) for r in rows)
    with (folder / "findings.csv").open(encoding="utf-8-sig", newline="") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == len(state.run_findings(run_id))

    monkeypatch.setattr(report_html, "MAX_ROWS", 2)
    page = report_html.render_lists_page(run_id, settings)
    assert page.count("data-quarantine-area=") == 2
    assert f"Showing 2 of {len(entries)} open entries" in page and 'href="quarantine.csv"' in page


def test_index_lists_runs_newest_first(world):
    settings, _ = world
    index = (settings.reports_dir / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="runs/([^"/]+)/index.html"', index)
    newest, oldest = safe_folder_name(RUNS[1]), safe_folder_name(RUNS[0])
    assert newest in links and oldest in links
    assert index.index(f'runs/{newest}/index.html') < index.index(f'runs/{oldest}/index.html')
    assert 'href="data_docs/index.html"' in index


def test_no_raw_cpr_in_any_written_file(world):
    settings, cprs = world
    files = [p for p in settings.reports_dir.rglob("*") if p.is_file()]
    shared = [p for p in files if report_html.SHARED_FILES in p.parts]  # the findings.csv copies, linked
    ours = [p for p in files if p.suffix in (".html", ".csv") and "data_docs" not in p.parts and p not in shared]
    assert {p.name for p in ours} == {"index.html", "quarantine.html", "quarantine.csv", "findings.csv"}
    assert len(ours) == 1 + 4 * len(RUNS)
    ours += shared
    for path in files:  # everything under the reports folder, Data Docs included
        _assert_no_raw_cpr(path.read_bytes().decode("utf-8", "replace"), cprs, str(path))
    for path in ours:  # and nothing CPR-shaped at all in our own files, but the agency's 0000000000
        shaped = {m.group(0) for m in CPR_SHAPED.finditer(path.read_text(encoding="utf-8-sig"))} - {"0000000000"}
        assert not shaped, f"{path}: CPR-shaped numbers {sorted(shaped)[:3]}"


def test_scrub_masks_anything_shaped_like_a_cpr_number():
    assert report_html.scrub("person_cpr 0101901234 bad") == "person_cpr 010190-**** bad"
    assert report_html.scrub("010190-1234; 311299-9999") == "010190-****; 311299-****"
    assert report_html.scrub("unknown (0000000000)") == "unknown (0000000000)"
    for kept in ("CVR 30230907", "20261128T005851", "2024-12-15", "M0000021", "12345678901"):
        assert report_html.scrub(kept) == kept


# --- (b) the Airflow plugin -----------------------------------------------------------------------


def test_airflow_loads_the_plugin_with_its_app_and_nav_link():
    from airflow import plugins_manager
    from fastapi import FastAPI

    plugins_manager.ensure_plugins_loaded()
    assert plugins_manager.get_import_errors() == {}
    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    plugin = info["ams_reporting"]
    assert str(plugin["source"]).endswith("ams_reporting_plugin.py")
    assert plugin["fastapi_apps"] == [{"app": "fastapi.applications.FastAPI", "url_prefix": "/ams-reports",
                                       "name": "AMS reports"}]
    assert {"name": "AMS data quality", "href": "ams-reports/", "destination": "nav",
            "url_route": "ams-data-quality"}.items() <= plugin["external_views"][0].items()
    apps, _ = plugins_manager.get_fastapi_plugins()
    mounted = [a for a in apps if a["url_prefix"] == "/ams-reports"]
    assert len(mounted) == 1 and isinstance(mounted[0]["app"], FastAPI)


def test_plugin_import_touches_no_database_and_no_file(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    def forbidden(*args, **kwargs):
        raise AssertionError("a database was touched at import time")

    monkeypatch.setattr(sa, "create_engine", forbidden)
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls: forbidden()))
    home = tmp_path / "no-such-home"
    monkeypatch.setenv("AMS_HOME", str(home))
    ui = runpy.run_path(str(ROOT / "plugins" / "ams_reporting" / "ui.py"))
    plugin = runpy.run_path(str(ROOT / "plugins" / "ams_reporting_plugin.py"))
    assert plugin["AmsReportingPlugin"].fastapi_apps[0]["url_prefix"] == "/ams-reports"
    assert not home.exists()
    # The handlers are lazy: with no report yet, the page says what to do.
    page = TestClient(ui["create_app"](reports_dir=home / "reports", require_login=False)).get("/")
    assert page.status_code == 404 and "run the DAG" in page.text


def test_app_serves_the_reports_read_only_and_refuses_traversal(world, tmp_path):
    from ams_reporting.ui import create_app
    from fastapi.testclient import TestClient

    settings, _ = world
    reports = settings.reports_dir
    safe = safe_folder_name(RUNS[-1])
    secret = reports.parent / "outside.txt"
    secret.write_text("not for the browser")
    link = reports / "data_docs" / "static" / "escape.txt"
    link.symlink_to(secret)
    try:
        client = TestClient(create_app(reports_dir=reports, require_login=False))
        assert client.get("/").status_code == 200
        r = client.get(f"/runs/{safe}", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == f"{safe}/"
        r = client.get(f"/runs/{safe}/")
        assert r.status_code == 200 and "Open quarantine" in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]
        r = client.get(f"/runs/{safe}/quarantine.csv")
        assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
        assert client.get("/data_docs/index.html").status_code == 200
        for bad in ("/runs/..%2F..%2Fstate/index.html", f"/runs/{safe}/..%2F..%2F..%2Foutside.txt",
                    "/data_docs/static/%2e%2e/%2e%2e/%2e%2e/outside.txt", "/data_docs/%2e%2e/%2e%2e/outside.txt",
                    "/data_docs/static/escape.txt", "/data_docs/gx/great_expectations.yml", "/runs/.hidden/",
                    f"/runs/{safe}/summary.json.tmp", "/data_docs/%2Fetc%2Fpasswd"):
            r = client.get(bad)
            assert r.status_code == 404 and "not for the browser" not in r.text, bad
        assert client.post("/").status_code == 405
    finally:
        link.unlink()
        secret.unlink()


def _as_user(monkeypatch, user) -> None:
    """Airflow's login as `user` (None: nobody signed in), without a token round trip."""
    from airflow.api_fastapi.core_api import security
    from fastapi import HTTPException

    async def resolve(request, oauth_token, credentials):
        if user is None:
            raise HTTPException(401, "Not authenticated")
        return user

    monkeypatch.setattr(security, "get_user", resolve)


def _auth_manager(monkeypatch, manager) -> None:
    from airflow.api_fastapi import app as api_app

    monkeypatch.setattr(api_app._AuthManagerState, "instance", manager)


def test_app_requires_an_airflow_login(world, monkeypatch):
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from ams_reporting.ui import create_app
    from fastapi.testclient import TestClient

    settings, _ = world
    _auth_manager(monkeypatch, SimpleAuthManager())
    _as_user(monkeypatch, None)
    client = TestClient(create_app(reports_dir=settings.reports_dir))
    r = client.get("/")
    assert r.status_code == 401 and "sign in" in r.text.lower() and "Open quarantine" not in r.text
    assert client.get(f"/runs/{safe_folder_name(RUNS[-1])}/quarantine.csv").status_code == 401
    assert client.get("/data_docs/index.html").status_code == 401

    _as_user(monkeypatch, SimpleAuthManagerUser(username="ana", role="viewer"))
    assert client.get("/").status_code == 200


def test_only_a_user_whom_the_auth_manager_lets_read_the_reports_sees_them(world, monkeypatch):
    """Issue 11, item 2: the reports hold record keys and birth dates: Airflow's auth manager decides who
    reads them, as the custom view "AMS Reports"."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from ams_reporting.ui import RESOURCE_NAME, create_app
    from fastapi.testclient import TestClient

    settings, _ = world
    safe = safe_folder_name(RUNS[-1])
    pages = ("/", f"/runs/{safe}/", f"/runs/{safe}/quarantine.csv", f"/runs/{safe}/findings.csv",
             f"/runs/{safe}/summary.json", "/data_docs/index.html")
    client = TestClient(create_app(reports_dir=settings.reports_dir))

    # Airflow's simple auth manager: a user with a role (viewer and up) may, a user without one may not.
    _auth_manager(monkeypatch, SimpleAuthManager())
    _as_user(monkeypatch, SimpleAuthManagerUser(username="ana", role="viewer"))
    assert [client.get(p).status_code for p in pages] == [200] * len(pages)
    _as_user(monkeypatch, SimpleAuthManagerUser(username="guest", role=None))
    for path in pages:
        r = client.get(path)
        assert r.status_code == 403, path
        assert "may not read the data-quality reports" in r.text and "guest" in r.text
        assert "Open quarantine" not in r.text and not MASKED.search(r.text)

    # Any auth manager (FAB, Keycloak, ...) is asked the same question: its answer is the rule.
    class Roles:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str, str]] = []

        def is_authorized_custom_view(self, *, method, resource_name, user):
            self.asked.append((method, resource_name, user.get_name()))
            return user.get_name() == "reader"

    roles = Roles()
    _auth_manager(monkeypatch, roles)
    _as_user(monkeypatch, SimpleAuthManagerUser(username="reader", role="viewer"))
    assert client.get(f"/runs/{safe}/").status_code == 200
    _as_user(monkeypatch, SimpleAuthManagerUser(username="operator", role="op"))
    assert client.get(f"/runs/{safe}/").status_code == 403
    assert roles.asked == [("GET", RESOURCE_NAME, "reader"), ("GET", RESOURCE_NAME, "operator")]


def test_data_docs_are_sandboxed_and_their_static_files_need_no_login(world, monkeypatch):
    from ams_reporting.ui import DOCS_CSP, create_app
    from fastapi.testclient import TestClient

    settings, _ = world
    _as_user(monkeypatch, None)  # nobody signed in
    client = TestClient(create_app(reports_dir=settings.reports_dir))
    for asset in ("static/vendor/jquery-3.7.1/jquery.min.js", "static/styles/data_docs_default_styles.css",
                  "static/vendor/fortawesome-fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2"):
        r = client.get(f"/data_docs/{asset}")
        assert r.status_code == 200, asset
        assert r.headers["access-control-allow-origin"] == "*"  # fonts, asked for by an opaque origin
    for private in ("/data_docs/index.html", "/data_docs/static/../index.html", "/data_docs/static",
                    "/data_docs/validations/"):
        assert client.get(private).status_code in (401, 404), private

    docs = TestClient(create_app(reports_dir=settings.reports_dir, require_login=False)).get("/data_docs/index.html")
    policy = docs.headers["content-security-policy"]
    assert policy == DOCS_CSP
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["sandbox"] == "allow-scripts"  # an opaque origin: no allow-same-origin
    assert directives["default-src"] == directives["connect-src"] == "'none'"
    assert "http" not in policy and "*" not in policy  # nothing from another host


# --- (c) in a browser, through the real Airflow API server ---------------------------------------




def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def api_server(world, tmp_path_factory):
    """`airflow api-server` on loopback with this module's reports (AMS_HOME) and no login (all admins)."""
    settings, _ = world
    tmp_path = tmp_path_factory.mktemp("api-server")
    home = tmp_path / "airflow"
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT / "plugins"),
        "AMS_HOME": str(settings.home),
        "GX_ANALYTICS_ENABLED": "false",
        "NO_PROXY": "*",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    log_path = tmp_path / "api-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([airflow, "api-server", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while not _up(f"{base}/api/v2/monitor/health"):
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("the Airflow API server did not come up:\n"
                                     + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def chromium() -> str:
    """Debian's chromium, or a skip (CI turns a skipped browser test into a failure)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM}: apt-get install -y chromium")
    return CHROMIUM


@pytest.mark.browser
def test_analyst_reads_the_findings_in_the_airflow_ui(chromium, world, api_server):
    from playwright.sync_api import expect, sync_playwright

    settings, cprs = world
    shots = ROOT / "var" / "ci"
    shots.mkdir(parents=True, exist_ok=True)
    state = settings.state()
    quarantined = state.open_quarantine()
    rules = {f["rule"] for q in quarantined for f in q["findings"]}

    def check_run_page(content: str, where: str) -> None:
        assert html.escape(RUNS[-1]) in content
        for rule in rules:
            assert rule in content, f"{where}: rule {rule} missing"
        _assert_no_raw_cpr(content, cprs, where)

    def check_lists_page(content: str, where: str) -> None:
        for q in quarantined:
            assert q["record_key"] in content and q["masked_person"] in content
        assert len(MASKED.findall(content)) >= len(quarantined)
        _assert_no_raw_cpr(content, cprs, where)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            tried = _offline(context)
            page = context.new_page()
            page.set_default_timeout(30_000)

            # The analyst's way: Airflow UI -> nav link "AMS data quality" -> latest run, inside Airflow.
            page.goto(f"{api_server}/")
            page.get_by_role("link", name="AMS data quality").first.click()
            page.wait_for_url("**/plugin/ams-data-quality**")
            frame = page.frame_locator("iframe[title='AMS data quality']")
            expect(frame.locator("h1")).to_have_text("AMS data quality")
            frame.get_by_role("link", name="Latest run", exact=True).click()
            expect(frame.locator("#quarantine")).to_be_visible()
            inner = next(f for f in page.frames if f != page.main_frame and "/ams-reports/runs/" in f.url)
            check_run_page(inner.content(), "run page inside the Airflow UI")
            page.screenshot(path=str(shots / "reports-ui-airflow.png"))

            # The pages themselves, full size: index -> latest run.
            page.goto(f"{api_server}/ams-reports/")
            expect(page.locator("h1")).to_have_text("AMS data quality")
            _assert_no_raw_cpr(page.content(), cprs, "index page")
            page.screenshot(path=str(shots / "reports-index.png"))
            page.get_by_role("link", name="Latest run", exact=True).click()
            page.wait_for_url(f"**/ams-reports/runs/{safe_folder_name(RUNS[-1])}/**")
            check_run_page(page.content(), "run page")
            page.screenshot(path=str(shots / "reports-ui.png"), full_page=True)
            page.screenshot(path=str(shots / "reports-run.png"))  # what the page opens with: counts, first plot

            # The plots, drawn by the browser at a readable size: one picture each for docs/analysts.md.
            for figure in ("plot-quarantine", "plot-rules", "plot-release"):
                plot = page.locator(f"#{figure} svg.plot")
                expect(plot).to_be_visible()
                box = plot.bounding_box()
                assert box is not None and box["width"] >= 700 and box["height"] >= 200, (figure, box)
                page.locator(f"#{figure}").screenshot(path=str(shots / f"{figure}.png"))
            page.locator("#rules").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "reports-rules.png"))
            # The open quarantine and the warnings: one click from the run page.
            page.get_by_role("link", name="The open quarantine and this run's warnings").click()
            page.wait_for_url(f"**/ams-reports/runs/{safe_folder_name(RUNS[-1])}/quarantine.html")
            expect(page.locator("tr[data-quarantine-area] td.mono").first).to_have_text(MASKED)
            check_lists_page(page.content(), "quarantine page")
            page.screenshot(path=str(shots / "reports-quarantine.png"))
            page.get_by_role("link", name="The run's page").click()
            expect(page.locator("#quarantine")).to_be_visible()

            # No report for an unknown run: a 404 page, not a server error.
            missing = page.goto(f"{api_server}/ams-reports/runs/no-such-run/")
            assert missing is not None and missing.status == 404
        finally:
            browser.close()
    assert tried == [], f"requests that tried to leave the machine: {tried[:5]}"
    assert (shots / "reports-ui.png").stat().st_size > 10_000


def _offline(context) -> list[str]:
    """Block every request that would leave 127.0.0.1; return the list of the ones tried."""
    tried: list[str] = []

    def route(r) -> None:
        host = urlsplit(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:", "about:")) or host == "127.0.0.1":
            r.continue_()
        else:
            tried.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return tried


@pytest.mark.browser
def test_data_docs_render_offline_inside_the_airflow_ui(chromium, world, api_server):
    """Issue 11, item 1: with the internet out of reach, the Data Docs show their results, styled, from
    the project's own copies of their libraries, sandboxed inside the Airflow UI."""
    from playwright.sync_api import expect, sync_playwright

    settings, cprs = world
    shots = ROOT / "var" / "ci"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            tried = _offline(context)
            failed: list[str] = []
            context.on("requestfailed", lambda r: failed.append(r.url))
            page = context.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # Airflow UI -> AMS data quality -> latest run -> Great Expectations Data Docs, all in the frame.
            page.goto(f"{api_server}/")
            page.get_by_role("link", name="AMS data quality").first.click()
            frame = page.frame_locator("iframe[title='AMS data quality']")
            frame.get_by_role("link", name="Latest run", exact=True).click()
            frame.locator("nav.links").get_by_role("link", name="Great Expectations Data Docs").click()
            rows = frame.locator("table.ge-index-page-validation-results-table tbody tr")
            expect(rows.first).to_be_visible()
            assert rows.count() >= len(AREAS), "the validation results list has no rows"
            expect(rows.first).to_contain_text("area")
            # Bootstrap's style sheet and Font Awesome's font came from this server
            navbar = frame.locator("nav.navbar").first
            assert navbar.evaluate("e => getComputedStyle(e).display") == "flex"
            docs = next(f for f in page.frames if "/ams-reports/data_docs/" in f.url)
            loaded = docs.evaluate("() => document.fonts.load('900 16px \"Font Awesome 6 Free\"')"
                                   ".then(faces => faces.map(f => f.status))")
            assert loaded == ["loaded"], loaded
            # Sandboxed: an opaque origin, no access to Airflow's cookies or to the page around it.
            assert docs.evaluate("() => window.origin") == "null"
            assert docs.evaluate("() => { try { return document.cookie, 'cookie readable'; }"
                                 " catch (e) { return 'blocked'; } }") == "blocked"
            page.screenshot(path=str(shots / "data-docs-index.png"))

            # A validation page: its expectations, with their results.
            rows.first.click()
            expectations = frame.locator("td", has_text="values must")
            expect(expectations.first).to_be_visible()
            assert expectations.count() >= 5
            expect(frame.locator("h4", has_text="Expectation Validation Result")).to_be_visible()
            docs = next(f for f in page.frames if "/ams-reports/data_docs/validations/" in f.url)
            _assert_no_raw_cpr(docs.content(), cprs, "a Data Docs validation page")
            page.screenshot(path=str(shots / "data-docs-validation.png"))
        finally:
            browser.close()
    assert tried == [], f"requests that tried to leave the machine: {tried[:5]}"
    assert not [u for u in failed if urlsplit(u).hostname == "127.0.0.1"], failed
    assert not [e for e in errors if "Content Security Policy" in e or "Failed to load" in e], errors


def test_analysts_guide_shows_every_page_and_plot_with_a_screenshot_of_the_browser_test():
    guide = (ROOT / "docs" / "analysts.md").read_text(encoding="utf-8")
    shown = re.findall(r"!\[[^\]]+\]\(screenshots/([\w-]+\.png)\)", guide)
    this_test = Path(__file__).read_text(encoding="utf-8")
    written = set(re.findall(r'shots / "([\w-]+\.png)"', this_test))
    written |= {f"{figure}.png" for figure in re.findall(r'"(plot-[a-z]+)"', this_test)}
    assert set(shown) <= written, set(shown) - written  # made by the browser test, not by hand
    for name in ("reports-index.png", "reports-run.png", "plot-quarantine.png", "plot-rules.png", "plot-release.png",
                 "reports-rules.png", "reports-quarantine.png", "data-docs-index.png", "data-docs-validation.png"):
        assert name in shown, name
        assert (ROOT / "docs" / "screenshots" / name).stat().st_size > 10_000, name

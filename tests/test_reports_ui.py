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
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from markupsafe import escape

from conftest import ROOT
from delivery import report_html
from delivery.pipeline import Settings, deliver_area, prepare_area
from delivery.report import _safe, write_run_report
from transforms import synthetic
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
        finally:
            receiver.stop()
    assert len(cprs) > 100
    return settings, cprs


def _page_path(settings: Settings, run_id: str) -> Path:
    return settings.reports_dir / "runs" / _safe(run_id) / "index.html"


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

    # Counts per area and rule: errors and warnings apart, with the rule's title and basis.
    findings = state.run_findings(run_id)
    assert len(findings) and set(findings["severity"]) == {"error", "warning"}
    expected = findings.groupby(["area", "rule", "severity"]).size().to_dict()
    for (area, rule) in {(a, r) for a, r, _ in expected}:
        m = re.search(rf'<tr data-area="{area}" data-rule="{re.escape(rule)}">(.*?)</tr>', page, re.S)
        assert m, f"no row for area {area} rule {rule}"
        row = m.group(1)
        assert f'data-errors="{expected.get((area, rule, "error"), 0)}"' in row
        assert f'data-warnings="{expected.get((area, rule, "warning"), 0)}"' in row
        rule_def = report_html.RULE_BY_ID[rule]
        assert str(escape(rule_def.title)) in row and str(escape(rule_def.basis)) in row

    # The open quarantine: every record, its masked person, every failed rule with paragraph and message.
    open_entries = state.open_quarantine()
    assert 0 < len(open_entries) <= report_html.MAX_ROWS
    for q in open_entries:
        m = re.search(rf'<tr data-quarantine-area="{q["area"]}" data-key="{re.escape(q["record_key"])}">(.*?)</tr>',
                      page, re.S)
        assert m, f"quarantined record {q['record_key']} is not on the page"
        row = m.group(1)
        assert MASKED.fullmatch(q["masked_person"]) and q["masked_person"] in row
        for f in q["findings"]:
            assert f["rule"] in row and str(escape(f["paragraph"])) in row and str(escape(f["message"])) in row
        # seen in both runs: first seen links to the first run's page, last seen is this run
        assert f"{_safe(RUNS[0])}/index.html" in row and "this run" in row

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
    page = report_html.render_run_page(run_id, settings)
    assert page.count("data-quarantine-area=") == 2
    assert f"Showing 2 of {len(entries)} open entries" in page and 'href="quarantine.csv"' in page


def test_index_lists_runs_newest_first(world):
    settings, _ = world
    index = (settings.reports_dir / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="runs/([^"/]+)/index.html"', index)
    newest, oldest = _safe(RUNS[1]), _safe(RUNS[0])
    assert newest in links and oldest in links
    assert index.index(f'runs/{newest}/index.html') < index.index(f'runs/{oldest}/index.html')
    assert 'href="data_docs/index.html"' in index


def test_no_raw_cpr_in_any_written_file(world):
    settings, cprs = world
    files = [p for p in settings.reports_dir.rglob("*") if p.is_file()]
    ours = [p for p in files if p.suffix in (".html", ".csv") and "data_docs" not in p.parts]
    assert {p.name for p in ours} == {"index.html", "quarantine.csv", "findings.csv"}
    assert len(ours) == 1 + 3 * len(RUNS)
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
    safe = _safe(RUNS[-1])
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


def test_app_requires_an_airflow_login(world, monkeypatch):
    from airflow.api_fastapi.core_api import security
    from ams_reporting.ui import create_app
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    settings, _ = world

    async def nobody(request, oauth_token, credentials):
        raise HTTPException(401, "Not authenticated")

    monkeypatch.setattr(security, "get_user", nobody)
    client = TestClient(create_app(reports_dir=settings.reports_dir))
    r = client.get("/")
    assert r.status_code == 401 and "sign in" in r.text.lower() and "Open quarantine" not in r.text
    assert client.get(f"/runs/{_safe(RUNS[-1])}/quarantine.csv").status_code == 401

    async def analyst(request, oauth_token, credentials):
        return object()

    monkeypatch.setattr(security, "get_user", analyst)
    assert client.get("/").status_code == 200


# --- (c) in a browser, through the real Airflow API server ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def api_server(world, tmp_path):
    """`airflow api-server` on loopback with this module's reports (AMS_HOME) and no login (all admins)."""
    settings, _ = world
    home = tmp_path / "airflow"
    port = _free_port()
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
        for q in quarantined:
            assert q["record_key"] in content and q["masked_person"] in content
        assert len(MASKED.findall(content)) >= len(quarantined)
        _assert_no_raw_cpr(content, cprs, where)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
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
            page.get_by_role("link", name="Latest run", exact=True).click()
            page.wait_for_url(f"**/ams-reports/runs/{_safe(RUNS[-1])}/**")
            expect(page.locator("tr[data-quarantine-area] td.mono").first).to_have_text(MASKED)
            check_run_page(page.content(), "run page")
            page.screenshot(path=str(shots / "reports-ui.png"), full_page=True)

            # No report for an unknown run: a 404 page, not a server error.
            missing = page.goto(f"{api_server}/ams-reports/runs/no-such-run/")
            assert missing is not None and missing.status == 404
        finally:
            browser.close()
    assert (shots / "reports-ui.png").stat().st_size > 10_000

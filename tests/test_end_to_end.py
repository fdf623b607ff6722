"""End to end through Airflow: demo source -> DAG run (dag.test) -> local AMS receiver.

Asserts what the users rely on: the receiver holds exactly the valid records, the quarantine exactly
the invalid ones, a second run sends nothing, corrections are updates, deletions annulments, a fixed
row leaves quarantine and is delivered, the counts reconcile, and no raw CPR leaks anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import ROOT
from cycle.settings import Settings
from reports.summary import run_summary
from transforms import mapping
from transforms.registry import AREAS, get_area
from transforms.rules import severity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB for dag.test() (once per session)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return True


@pytest.fixture
def receiver(tmp_path):
    from receiver.server import start_in_thread

    handle = start_in_thread(tmp_path / "receiver.sqlite")
    yield handle
    handle.stop()


def _configure(monkeypatch, tmp_path: Path, source_url: str, state_url: str, receiver) -> Settings:
    host_port = receiver.url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    monkeypatch.setenv("AIRFLOW_CONN_AMS_RECEIVER",
                       f'{{"conn_type": "http", "host": "{host}", "port": {port}, "schema": "ams", '
                       f'"extra": {{"timeout": 20, "scheme": "http"}}}}')  # the in-thread receiver: plain HTTP
    monkeypatch.setenv("AMS_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("AMS_SOURCE_URL", source_url)
    monkeypatch.setenv("AMS_STATE_URL", state_url)
    monkeypatch.setenv("AMS_BATCH_SIZE", "400")
    monkeypatch.setenv("AMS_DELIVERY_ATTEMPTS", "2")
    monkeypatch.setenv("AMS_BACKOFF_SECONDS", "0.1")
    return Settings.from_env()


def run_dag() -> str:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["employment_reporting"]
    dag_run = dag.test()
    assert dag_run.state == "success", f"DAG run ended {dag_run.state}"
    return dag_run.run_id


def expected(engine, data) -> dict[int, dict[str, set[str]]]:
    """Per area: keys that must be delivered, quarantined (planted errors) or left alone."""
    from transforms.source import extract_chunks

    planted: dict[int, dict[str, str]] = {}
    for d in data.defects:
        planted.setdefault(d.area, {})[d.record_key] = d.rule
    out = {}
    for area in AREAS:
        records = pd.concat([mapping.map_records(area, c).records for c in extract_chunks(engine, area)],
                            ignore_index=True)
        live = set(records.loc[records["action"] != mapping.ANNUL, "record_key"])
        errors = {k for k, rule in planted.get(area.number, {}).items() if severity(rule) == "error"}
        out[area.number] = {"quarantined": errors & live, "delivered": live - errors, "all": set(records["record_key"])}
    return out


def receiver_keys(receiver, area: int) -> dict[str, str]:
    """record_id -> status at the receiver."""
    from receiver.store import ReceiverStore

    return {r["record_id"]: r["status"] for r in ReceiverStore(receiver.db_path).records(area)}


def assert_reconciles(summary: dict) -> None:
    for row in summary["areas"]:
        total = row["delivered"] + row["annulled"] + row["quarantined"] + row["unchanged"] + row["outstanding"]
        assert row["extracted"] == total, row
        assert row["outstanding"] == 0, row


def _scenario(monkeypatch, tmp_path, receiver, source_url: str, state_url: str, airflow_db) -> None:
    from delivery.state import StateStore
    from demo import synthetic
    from transforms.source import create_engine_from_url, create_source_schema

    engine = create_engine_from_url(source_url)
    create_source_schema(engine)
    data = synthetic.generate(engine, persons=600, defect_rate=0.05)
    settings = _configure(monkeypatch, tmp_path, source_url, state_url, receiver)
    want = expected(engine, data)

    run1 = run_dag()
    summary = run_summary(run1, settings)
    assert_reconciles(summary)
    state = StateStore(state_url)
    quarantine = state.open_quarantine()
    for area in AREAS:
        got_ids = set(receiver_keys(receiver, area.number))
        want_ids = {mapping.record_id(area, k) for k in want[area.number]["delivered"]}
        assert got_ids == want_ids, f"area {area.number}: receiver differs from the valid records"
        q = {e["record_key"] for e in quarantine if e["area"] == area.number}
        assert q == want[area.number]["quarantined"], f"area {area.number}: quarantine differs from the defects"
    planted = {(d.area, d.record_key): d.rule for d in data.defects}
    for entry in quarantine:  # every quarantined row carries the planted rule among its reasons
        rules = {f["rule"] for f in entry["findings"]}
        assert planted[(entry["area"], entry["record_key"])] in rules
        assert all(f["paragraph"] for f in entry["findings"])

    # A second run finds nothing new to send.
    run2 = run_dag()
    summary2 = run_summary(run2, settings)
    assert_reconciles(summary2)
    assert sum(r["delivered"] + r["annulled"] for r in summary2["areas"]) == 0

    # A correction, a deletion and a fix at the source.
    area1 = get_area(1)
    delivered = sorted(want[1]["delivered"])
    changed, deleted = delivered[0], delivered[1]
    fixable = {d.record_key for d in data.defects if d.area == 1 and d.rule in FIXES}
    fixed_key = next(iter(sorted(want[1]["quarantined"] & fixable)), None)
    with engine.begin() as conn:
        # Stamped as the source contract demands: updated_at / deleted_at drive change detection (principle 9).
        conn.execute(sa.text("UPDATE measures SET weekly_hours = 12.5, updated_at = CURRENT_TIMESTAMP "
                             "WHERE measure_id = :k"), {"k": changed})
        conn.execute(sa.text("UPDATE measures SET deleted_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP "
                             "WHERE measure_id = :k"), {"k": deleted})
    if fixed_key:
        _fix_at_source(engine, data, 1, fixed_key)
    run3 = run_dag()
    summary3 = run_summary(run3, settings)
    assert_reconciles(summary3)
    row1 = summary3["areas"][0]
    assert row1["annulled"] == 1 and row1["delivered"] == 1 + (1 if fixed_key else 0)
    statuses = receiver_keys(receiver, 1)
    assert statuses[mapping.record_id(area1, deleted)] == "ANNULLED"
    from receiver.store import ReceiverStore

    versions = {r["record_id"]: r["version"] for r in ReceiverStore(receiver.db_path).records(1)}
    assert versions[mapping.record_id(area1, changed)] == 2  # same id, sent again as an update
    if fixed_key:
        assert mapping.record_id(area1, fixed_key) in statuses
        assert fixed_key not in {e["record_key"] for e in state.open_quarantine(1)}

    assert_no_cpr_leak(engine, [Path(settings.home), Path(os.environ["AIRFLOW_HOME"]) / "logs"],
                       state_url=state_url)


#: How an analyst would fix a planted defect of an area-1 measure at the source.
FIXES = {
    "municipality.unknown": "municipality_code = '101'",
    "jobcentre.unknown_municipality": "responsible_jobcenter = '10101', registering_jobcenter = '10101'",
    "dates.start_after_end": "end_date = start_date",
    "hours.out_of_range": "weekly_hours = 30",
    "cvr.bad_checksum": "provider_cvr = '13748136'",
    "format.pnr": "provider_pnr = '1003456789'",
}


def _fix_at_source(engine, data, area: int, key: str) -> None:
    """Undo the planted defect of one area-1 measure by copying a clean measure's values."""
    rule = next(d.rule for d in data.defects if d.area == area and d.record_key == key)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE measures SET {FIXES[rule]}, updated_at = CURRENT_TIMESTAMP "
                             "WHERE measure_id = :k"), {"k": key})


def assert_no_cpr_leak(engine, folders: list[Path], state_url: str) -> None:
    """No raw CPR from the source in reports, Data Docs, logs, the state DB or staging."""
    with engine.connect() as conn:
        cprs = {r[0] for r in conn.execute(sa.text("SELECT cpr FROM persons")) if r[0] and r[0] != "0000000000"}
    assert cprs
    leaks = []
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file() or "archive" in path.parts or "source" in path.parts or "receiver" in path.parts:
                continue
            text = path.read_bytes().decode("utf-8", "replace")
            hits = [c for c in cprs if c in text]
            if hits:
                leaks.append(f"{path}: {len(hits)} CPR number(s)")
    if state_url.startswith("postgresql"):
        from delivery.state import metadata

        state = sa.create_engine(state_url)
        with state.connect() as conn:
            for table in metadata.sorted_tables:
                dump = "\n".join(str(tuple(r)) for r in conn.execute(table.select()))
                hits = [c for c in cprs if c in dump]
                if hits:
                    leaks.append(f"state table {table.name}: {len(hits)} CPR number(s)")
    assert not leaks, "raw CPR numbers found:\n" + "\n".join(leaks)


def test_end_to_end_sqlite(monkeypatch, tmp_path, receiver, airflow_db, capfd):
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    state = f"sqlite:///{tmp_path / 'state.sqlite'}"
    _scenario(monkeypatch, tmp_path, receiver, source, state, airflow_db)
    out, err = capfd.readouterr()
    from transforms.source import create_engine_from_url

    with create_engine_from_url(source).connect() as conn:
        cprs = {r[0] for r in conn.execute(sa.text("SELECT cpr FROM persons")) if r[0] != "0000000000"}
    assert not [c for c in cprs if c in out or c in err], "a raw CPR number reached the console output"


@pytest.mark.postgres
def test_end_to_end_postgresql(monkeypatch, tmp_path, receiver, airflow_db, pg_url):
    _scenario(monkeypatch, tmp_path, receiver, pg_url, pg_url, airflow_db)

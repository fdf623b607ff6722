"""Several municipalities through Airflow: one DAG per tenant (dag.test), one loopback AMS receiver.

Two municipalities with same-shaped sources (the same record keys) deliver to the one receiver: no
record id collides, each ledger holds its own records only, each run's counts are its municipality's.
A third municipality's source is down: its DAG fails, its alert names it and goes to its address,
and the other two deliver all the same. No raw CPR number reaches the reports, logs or state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from conftest import PG_BASE_URL, ROOT
from cycle.settings import Settings
from tests.support import free_port
from tests.test_alerts import Inbox, _smtp_connection
from tests.test_end_to_end import airflow_db, assert_no_cpr_leak, assert_reconciles, expected  # noqa: F401
from transforms import mapping
from transforms.registry import AREAS

pytestmark = pytest.mark.slow

PERSONS = 250
GOOD = ("101", "147")
DOWN = "151"  # its source database is unreachable


@pytest.fixture
def receiver(tmp_path):
    from receiver.server import start_in_thread

    handle = start_in_thread(tmp_path / "receiver.sqlite")
    yield handle
    handle.stop()


@pytest.fixture
def smtp_inbox(monkeypatch):
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    monkeypatch.setenv("AMS_ALERT_SMTP_CONN_ID", "ams_alert_smtp")
    monkeypatch.setenv("AIRFLOW_CONN_AMS_ALERT_SMTP", _smtp_connection(controller.port))
    monkeypatch.setenv("AMS_ALERT_EMAIL", "deployment@it-service.example")
    yield inbox
    controller.stop()


def _set_up(monkeypatch, tmp_path: Path, receiver, state_url: str) -> dict:
    """Sources for the good municipalities, connections for all three, the tenants file."""
    from demo import synthetic
    from transforms.source import create_engine_from_url

    host_port = receiver.url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    data = {}
    for code in (*GOOD, DOWN):
        source = f"sqlite:///{tmp_path / f'source_{code}.sqlite'}"
        if code == DOWN:
            source = f"sqlite:///{tmp_path / 'no-such-folder' / 'source.sqlite'}"  # cannot be opened
        else:
            engine = create_engine_from_url(source)
            data[code] = (engine, synthetic.generate(engine, persons=PERSONS, municipality=code, defect_rate=0.05),
                          source)
        monkeypatch.setenv(f"AIRFLOW_CONN_AMS_SOURCE_{code}", json.dumps(
            {"conn_type": "sqlite", "extra": {"sqlalchemy_url": source}}))
        # Each municipality its own receiver connection (its own certificate in production); here all
        # point at the one loopback receiver, as all municipalities deliver to the agency's one service.
        monkeypatch.setenv(f"AIRFLOW_CONN_AMS_RECEIVER_{code}", json.dumps(
            {"conn_type": "http", "host": host, "port": int(port), "schema": "ams",
             "extra": {"timeout": 20, "scheme": "http"}}))
    tenants = {"tenants": [{"kommunekode": "101"}, {"kommunekode": "147"},
                           {"kommunekode": DOWN, "alert_email": "ballerup-drift@ballerup.example"}]}
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(tenants), encoding="utf-8")
    monkeypatch.setenv("AMS_TENANTS_FILE", str(path))
    monkeypatch.setenv("AMS_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("AMS_STATE_URL", state_url)
    monkeypatch.setenv("AMS_BATCH_SIZE", "300")
    monkeypatch.setenv("AMS_DELIVERY_ATTEMPTS", "2")
    monkeypatch.setenv("AMS_BACKOFF_SECONDS", "0.1")
    monkeypatch.setenv("AMS_DATA_DOCS", "0")
    monkeypatch.delenv("AMS_AREAS", raising=False)
    monkeypatch.delenv("AMS_SOURCE_URL", raising=False)
    return data


def _run(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == [f"employment_reporting_{c}" for c in ("101", "147", "151")]
    return bag.dags[dag_id].test()


def _scenario(monkeypatch, tmp_path, receiver, smtp_inbox, state_url: str) -> None:
    from delivery.state import StateStore
    from receiver.store import ReceiverStore
    from reports.summary import run_summary

    data = _set_up(monkeypatch, tmp_path, receiver, state_url)

    # The municipality whose source is down runs first: it fails, alone.
    down = _run(f"employment_reporting_{DOWN}")
    assert down.state == "failed"
    runs = {}
    for code in GOOD:
        run = _run(f"employment_reporting_{code}")
        assert run.state == "success", f"municipality {code}: the DAG run ended {run.state}"
        runs[code] = run.run_id

    # The UI's task labels name the municipality and the area.
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        labels = {ti.rendered_map_index for ti in session.query(TaskInstance).filter(
            TaskInstance.dag_id == "employment_reporting_147", TaskInstance.run_id == runs["147"],
            TaskInstance.task_id == "area.deliver")}
    assert labels == {f"147 Frederiksberg: {a.code} {a.key}" for a in AREAS}

    store = ReceiverStore(receiver.db_path)
    at_receiver = {r.record_id: r for r in store.records()}
    want_ids: dict[str, set[str]] = {}
    for code in GOOD:
        engine, demo, _ = data[code]
        want = expected(engine, demo)
        want_ids[code] = set()
        settings = Settings.from_env()
        settings.tenant = code
        summary = run_summary(runs[code], settings)
        assert_reconciles(summary)
        ledger_state = StateStore(state_url, tenant=code)
        for area in AREAS:
            ids = {mapping.record_id(area, k, code) for k in want[area.number]["delivered"]}
            want_ids[code] |= ids
            assert ids <= set(at_receiver), f"municipality {code} area {area.number}: records missing at the receiver"
            ledger = ledger_state.ledger_rows(area.number)
            # Each ledger holds its own municipality's records, under ids with its kommunekode.
            assert set(ledger["record_key"]) == want[area.number]["delivered"]
            assert set(ledger["record_id"]) == ids
        delivered = sum(r["delivered"] for r in summary["areas"])
        assert delivered == len(want_ids[code]), f"municipality {code}: counts differ from its records"
    # Same-shaped sources (the same record keys) and still no id shared: every record arrived once.
    assert not want_ids["101"] & want_ids["147"]
    shared_keys = (set(StateStore(state_url, tenant="101").ledger_rows(1)["record_key"])
                   & set(StateStore(state_url, tenant="147").ledger_rows(1)["record_key"]))
    assert shared_keys, "the two sources should share record keys, or the test proves nothing"
    assert set(at_receiver) == want_ids["101"] | want_ids["147"]
    assert all(r.version == 1 for r in at_receiver.values())
    # The failed municipality has no state of delivered records, and an alert that names it.
    assert all(StateStore(state_url, tenant=DOWN).ledger_rows(a.number).empty for a in AREAS)
    mails = [(to, m) for to, m in smtp_inbox.messages if "151 Ballerup" in m["Subject"]]
    assert mails, [m["Subject"] for _, m in smtp_inbox.messages]
    assert all(to == ["ballerup-drift@ballerup.example"] for to, _ in mails)
    assert not [m for _, m in smtp_inbox.messages if "101 " in m["Subject"] or "147 " in m["Subject"]]
    for code in GOOD:
        # The files (reports, logs, staging; SQLite state files included); the PostgreSQL partitions below.
        assert_no_cpr_leak(data[code][0], [Path(os.environ["AMS_HOME"]), Path(os.environ["AIRFLOW_HOME"]) / "logs",
                                           tmp_path / "state"], state_url="files only")
    if state_url.startswith("postgresql"):
        from delivery.state import metadata

        cprs = set()
        for code in GOOD:
            with data[code][0].connect() as conn:
                cprs |= {r[0] for r in conn.execute(sa.text("SELECT cpr FROM persons")) if r[0] != "0000000000"}
        for code in (*GOOD, DOWN):
            with StateStore(state_url, tenant=code).engine.connect() as conn:
                dump = "\n".join(str(tuple(r)) for t in metadata.sorted_tables for r in conn.execute(t.select()))
            assert dump and not [c for c in cprs if c in dump], f"municipality {code}: a raw CPR in the state"


def test_two_municipalities_one_receiver_and_a_third_one_down_sqlite(monkeypatch, tmp_path, receiver, smtp_inbox,
                                                                    airflow_db):  # noqa: F811
    _scenario(monkeypatch, tmp_path, receiver, smtp_inbox, f"sqlite:///{tmp_path / 'state' / 'state.sqlite'}")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "state_k0101.sqlite", "state_k0147.sqlite", "state_k0151.sqlite"]


@pytest.mark.postgres
def test_two_municipalities_one_receiver_and_a_third_one_down_postgresql(monkeypatch, tmp_path, receiver,
                                                                        smtp_inbox, airflow_db, pg_url):  # noqa: F811
    schema = pg_url.rsplit("%3D", 1)[1]
    try:
        _scenario(monkeypatch, tmp_path, receiver, smtp_inbox, pg_url)
        inspector = sa.inspect(sa.create_engine(PG_BASE_URL))
        for code in ("k0101", "k0147", "k0151"):
            assert "ams_ledger" in inspector.get_table_names(schema=f"{schema}_{code}")
        assert "ams_ledger" not in inspector.get_table_names(schema=schema)  # nothing unpartitioned
    finally:
        admin = sa.create_engine(PG_BASE_URL)
        with admin.begin() as conn:
            for (name,) in conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                                        {"p": f"{schema}_k%"}):
                conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()

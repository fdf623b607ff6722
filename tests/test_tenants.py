"""Tenants: the file's validation, one DAG per municipality, the state partitioned by municipality, and
ids that cannot collide between municipalities (issue 10, items 1-3).

The state is tested on real SQLite files and a real PostgreSQL server (skipped when it does not answer).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import PG_BASE_URL, ROOT
from cycle.tenants import (
    ALL_AREAS,
    TenantsError,
    find_tenant,
    load_tenants,
    parse_tenants,
    problems_by_kommunekode,
    read_tenants,
)
from delivery.state import AreaBusy, StateStore, adopt_unpartitioned, tenant_sqlite_path
from transforms import codelists, mapping
from transforms.registry import get_area

EXAMPLE = ROOT / "tenants.example.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- the file -----------------------------------------------------------------------------------


def test_the_example_file_is_valid_and_fills_the_defaults():
    tenants = load_tenants(EXAMPLE)
    assert [t.kommunekode for t in tenants] == ["101", "147", "151"]
    kk, frb, bal = tenants
    assert kk.name == "København" and kk.schedule == "0 2 * * *" and kk.areas == ALL_AREAS
    assert kk.alert_email == ("drift@kk.example", "jobcenter-it@kk.example")
    assert frb.name == "Frederiksberg" and frb.channels == {1: "sftp", 2: "sftp"} and frb.channel(3) == "webservice"
    assert frb.connection_ids() == {"source_conn_id": "ams_source_147", "receiver_conn_id": "ams_receiver_147",
                                    "sftp_conn_id": "ams_sftp_147"}
    assert bal.source_conn_id == "ams_source_151" and bal.receiver_conn_id == "ams_receiver_151"
    assert bal.areas == (1, 2, 3, 4, 5) and bal.schedule == "@daily" and "sftp_conn_id" not in bal.connection_ids()
    assert bal.dag_id == "employment_reporting_151" and bal.label == "151 Ballerup"


BAD_FILES = [
    ("tenants: []", "top level: the file must hold a non-empty list"),
    ("tenants: [{kommunekode: 101}]\nextra: 1", "top level: unknown key(s) extra"),
    ("tenants:\n  - kommunekode: 101\n    reciever_conn_id: x",
     "entry 1 (kommunekode 101): field 'reciever_conn_id' is not a known field"),
    ("tenants:\n  - name: Somewhere", "entry 1: field 'kommunekode' is missing"),
    ("tenants:\n  - kommunekode: abc", "entry 1: field 'kommunekode' = 'abc' is not a kommunekode"),
    ("tenants:\n  - kommunekode: 999",
     "entry 1 (kommunekode 999): field 'kommunekode': 999 is not a municipality in reference/municipalities.csv"),
    ("tenants:\n  - kommunekode: 101\n  - kommunekode: '0101'",
     "entry 2 (kommunekode 101): field 'kommunekode' = '101' is already used by entry 1"),
    ("tenants:\n  - kommunekode: 101\n  - kommunekode: 147\n    receiver_conn_id: ams_receiver_101",
     "entry 2 (kommunekode 147): field 'receiver_conn_id' = 'ams_receiver_101' is already used by entry 1"),
    ("tenants:\n  - kommunekode: 101\n  - kommunekode: 147\n    source_conn_id: ams_source_101",
     "entry 1 (kommunekode 101): field 'source_conn_id' = 'ams_source_101' is also used by entry 2"),
    ("tenants:\n  - kommunekode: 101\n    areas: [1, 9]",
     "entry 1 (kommunekode 101): field 'areas' has 9, which is not a data area (1-8)"),
    ("tenants:\n  - kommunekode: 101\n    areas: [1, 1]",
     "entry 1 (kommunekode 101): field 'areas' names area 1 twice"),
    ("tenants:\n  - kommunekode: 101\n    channels: {3: sftp}",
     "entry 1 (kommunekode 101): field 'channels' is not allowed: area 3 (followup_interviews) may only be "
     "delivered by web service (§ 17, stk. 2)"),
    ("tenants:\n  - kommunekode: 101\n    channels: {1: ftp}", "channels.1='ftp' is not a delivery channel"),
    ("tenants:\n  - kommunekode: 101\n    areas: [3]\n    channels: {1: sftp}",
     "field 'channels' sets a channel for area 1, which is not among the entry's areas"),
    ("tenants:\n  - kommunekode: 101\n    schedule: '@dayly'",
     "entry 1 (kommunekode 101): field 'schedule' is wrong: '@dayly' is not one of Airflow's presets"),
    ("tenants:\n  - kommunekode: 101\n    schedule: '0 25 * * *'", "'0 25 * * *' is not a valid cron expression"),
    ("tenants:\n  - kommunekode: 101\n    schedule: 'daily'", "'daily' is not a cron expression"),
    ("tenants:\n  - kommunekode: 101\n    alert_email: drift-at-kk", "field 'alert_email' has 'drift-at-kk'"),
    ("tenants:\n  - kommunekode: 101\n    receiver_conn_id: 'my receiver'",
     "field 'receiver_conn_id' = 'my receiver' is not an Airflow connection id"),
    ("tenants:\n  - kommunekode: 101\n   bad: indentation", "is not valid YAML at line"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m[:40] for _, m in BAD_FILES])
def test_a_bad_file_is_refused_naming_entry_field_and_rule(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(TenantsError) as caught:
        load_tenants(path)
    assert message in str(caught.value), str(caught.value)
    assert str(path) in str(caught.value)


def test_every_problem_of_a_file_is_reported_at_once_and_good_entries_stay(tmp_path):
    path = _write(tmp_path, """\
        tenants:
          - kommunekode: 101
          - kommunekode: 147
            schedule: "@dayly"
            areas: [0]
          - kommunekode: 151
    """)
    tenants, problems = read_tenants(path)
    assert [t.kommunekode for t in tenants] == ["101", "151"]
    assert len(problems) == 2 and all(p.startswith("entry 2 (kommunekode 147)") for p in problems)
    assert set(problems_by_kommunekode(problems)) == {"147"}


def test_find_tenant_reads_the_file_of_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AMS_TENANTS_FILE", str(EXAMPLE))
    assert find_tenant("147").name == "Frederiksberg"
    with pytest.raises(KeyError, match="municipality 153 is not a valid entry"):
        find_tenant("153")
    bad = _write(tmp_path, "tenants:\n  - kommunekode: 101\n    areas: [9]\n")
    with pytest.raises(KeyError, match=r"field 'areas' has 9"):
        find_tenant("101", bad)
    monkeypatch.delenv("AMS_TENANTS_FILE")
    with pytest.raises(KeyError, match="AMS_TENANTS_FILE is not set"):
        find_tenant("101")


CODES = sorted(codelists.municipality_codes())


@given(codes=st.lists(st.sampled_from(CODES), min_size=1, max_size=6, unique=True),
       areas=st.lists(st.sets(st.integers(1, 8), min_size=1), min_size=6, max_size=6),
       duplicate=st.none() | st.integers(0, 5))
def test_property_distinct_entries_load_and_any_duplicate_is_named(codes, areas, duplicate):
    entries = [{"kommunekode": c, "areas": sorted(a)} for c, a in zip(codes, areas, strict=False)]
    tenants, problems = parse_tenants({"tenants": entries})
    assert problems == [] and [t.kommunekode for t in tenants] == codes
    assert all(t.areas == tuple(sorted(a)) for t, a in zip(tenants, areas, strict=False))
    if duplicate is not None:
        copy = dict(entries[duplicate % len(entries)])
        tenants, problems = parse_tenants({"tenants": [*entries, copy]})
        assert f"entry {len(entries) + 1} (kommunekode {copy['kommunekode']}): field 'kommunekode'" in problems[0]
        assert copy["kommunekode"] not in {t.kommunekode for t in tenants}
        assert len(tenants) == len(entries) - 1


# --- one DAG per municipality --------------------------------------------------------------------


def _dagbag(monkeypatch, tenants_file: Path | None):
    from airflow.dag_processing.dagbag import DagBag

    if tenants_file is None:
        monkeypatch.delenv("AMS_TENANTS_FILE", raising=False)
    else:
        monkeypatch.setenv("AMS_TENANTS_FILE", str(tenants_file))
    monkeypatch.delenv("AMS_AREAS", raising=False)
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_without_a_tenants_file_there_is_exactly_the_one_dag(monkeypatch):
    bag = _dagbag(monkeypatch, None)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["employment_reporting"]
    dag = bag.dags["employment_reporting"]
    assert dag.tags == {"ams", "reporting", "bek-2010"} or set(dag.tags) == {"ams", "reporting", "bek-2010"}
    assert "Re-running a failed delivery" in dag.doc_md
    assert dag.task_group_dict["area"]._expand_input.value["area"] == list(ALL_AREAS)


def test_one_dag_per_municipality_with_its_schedule_areas_tags_and_doc(monkeypatch):
    bag = _dagbag(monkeypatch, EXAMPLE)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["employment_reporting_101", "employment_reporting_147",
                                   "employment_reporting_151"]
    for tenant in load_tenants(EXAMPLE):
        dag = bag.dags[tenant.dag_id]
        assert {t.task_id for t in dag.tasks} == {"area.prepare", "area.deliver", "report", "watcher"}
        assert {tenant.kommunekode, tenant.name, "ams"} <= set(dag.tags)
        assert tenant.label in dag.doc_md and tenant.receiver_conn_id in dag.doc_md
        assert dag.task_group_dict["area"]._expand_input.value["area"] == list(tenant.areas)
        assert dag.max_active_runs == 1 and not dag.catchup
        assert all(t.on_failure_callback for t in dag.tasks)
        # Each task is told its municipality (the kommunekode is an argument of the task).
        for task_id in ("area.prepare", "area.deliver", "report"):
            assert dag.task_dict[task_id].op_args[-1] == tenant.kommunekode, task_id
    assert bag.dags["employment_reporting_101"].schedule == "0 2 * * *"
    assert bag.dags["employment_reporting_101"].timetable.expression == "0 2 * * *"
    assert bag.dags["employment_reporting_151"].schedule == "@daily"


def test_a_bad_entry_gets_a_dag_that_says_so_and_the_others_are_scheduled(monkeypatch, tmp_path):
    path = _write(tmp_path, """\
        tenants:
          - kommunekode: 101
          - kommunekode: 147
            schedule: "@dayly"
    """)
    bag = _dagbag(monkeypatch, path)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["employment_reporting_101", "employment_reporting_147"]
    broken = bag.dags["employment_reporting_147"]
    assert "configuration-error" in broken.tags and "'@dayly'" in broken.doc_md
    assert [t.task_id for t in broken.tasks] == ["configuration"]
    assert type(broken.timetable).__name__ == "NullTimetable"  # never scheduled
    assert {t.task_id for t in bag.dags["employment_reporting_101"].tasks} >= {"area.prepare", "area.deliver"}


def test_an_unreadable_tenants_file_is_an_import_error_naming_the_problem(monkeypatch, tmp_path):
    path = _write(tmp_path, "tenants: [")
    bag = _dagbag(monkeypatch, path)
    assert bag.dag_ids == [] or list(bag.dag_ids) == []
    assert any("is not valid YAML" in err for err in bag.import_errors.values()), bag.import_errors


def test_the_dag_file_stays_light_with_a_tenants_file():
    code = ("import sys, runpy; runpy.run_path('dags/employment_reporting.py'); "
            "bad = [m for m in ('pandas', 'great_expectations', 'zeep', 'pandera') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "AMS_TENANTS_FILE": str(EXAMPLE)})
    assert out.stdout.strip() == ""


# --- ids ----------------------------------------------------------------------------------------


def test_record_ids_include_the_municipality_only_for_tenants():
    area = get_area(1)
    legacy = str(uuid.uuid5(mapping.ID_NAMESPACE, f"{area.code}:M1"))
    assert mapping.record_id(area, "M1") == legacy  # the single-municipality ids of every earlier run
    ids = {mapping.record_id(area, "M1", code) for code in ("101", "147", "151")}
    assert len(ids) == 3 and legacy not in ids


def test_batch_ids_include_the_municipality_only_for_tenants():
    from cycle.pipeline import _batch_id

    members = pd.DataFrame({"record_key": ["M1", "M2"], "content_hash": ["a", "b"]})
    area = get_area(1)
    plain = _batch_id(area, "scheduled__x", members, lambda _: False)
    assert _batch_id(area, "scheduled__x", members, lambda _: False) == plain
    tenants = {_batch_id(area, "scheduled__x", members, lambda _: False, code) for code in ("101", "147")}
    assert len(tenants) == 2 and plain not in tenants


# --- the state, partitioned -----------------------------------------------------------------------


def _touch_state(store: StateStore, run_id: str) -> None:
    store.start_area_run(run_id, 1)
    store.set_watermark(1, since="x", period_end="2026-10-31", fingerprint=run_id, run_id=run_id, full=True)
    store.add_batch(batch_id=str(uuid.uuid4()), area=1, run_id=run_id, staged_path="-", payload_sha256="0" * 64,
                    payload_created="2026-10-31T00:00:00+00:00",
                    members=pd.DataFrame({"record_key": ["M1"], "record_id": [str(uuid.uuid4())],
                                          "content_hash": ["h"], "action": ["CREATE_OR_UPDATE"],
                                          "masked_person": ["010190-****"]}))


def _assert_isolated(stores: dict[str | None, StateStore]) -> None:
    for who, store in stores.items():
        _touch_state(store, f"run-{who}")
    for who, store in stores.items():
        assert [r["run_id"] for r in store.all_batches()] == [f"run-{who}"]
        assert store.watermark(1)["fingerprint"] == f"run-{who}"
        assert [r["run_id"] for r in store.run_rows(f"run-{who}")] == [f"run-{who}"]
        others = [f"run-{o}" for o in stores if o != who]
        assert all(store.run_rows(o) == [] for o in others)


def test_sqlite_state_is_a_file_per_municipality(tmp_path):
    url = f"sqlite:///{tmp_path / 'state' / 'state.sqlite'}"
    (tmp_path / "state").mkdir()
    stores = {None: StateStore(url), "101": StateStore(url, tenant="101"), "147": StateStore(url, tenant="147")}
    _assert_isolated(stores)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "state.sqlite", "state_k0101.sqlite", "state_k0147.sqlite"]
    assert tenant_sqlite_path("/x/state.sqlite", "101") == "/x/state_k0101.sqlite"
    # The lock rows live in each municipality's own file: the same area of two municipalities runs at once.
    with stores["101"].area_lock(1, "prepare", wait_seconds=0), stores["147"].area_lock(1, "prepare", wait_seconds=0):
        pass


@pytest.fixture
def pg_state_url(pg_url) -> str:
    """The test's schema, and afterwards the municipality schemas made beside it."""
    yield pg_url
    schema = pg_url.rsplit("%3D", 1)[1]
    admin = sa.create_engine(PG_BASE_URL)
    with admin.begin() as conn:
        for (name,) in conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                                    {"p": f"{schema}_k%"}):
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    admin.dispose()


@pytest.mark.postgres
def test_postgresql_state_is_a_schema_per_municipality_and_locks_are_per_municipality(pg_state_url):
    schema = pg_state_url.rsplit("%3D", 1)[1]
    stores = {None: StateStore(pg_state_url), "101": StateStore(pg_state_url, tenant="101"),
              "147": StateStore(pg_state_url, tenant="147")}
    _assert_isolated(stores)
    inspector = sa.inspect(sa.create_engine(PG_BASE_URL))
    for suffix in ("k0101", "k0147"):
        assert "ams_ledger" in inspector.get_table_names(schema=f"{schema}_{suffix}")
    assert "ams_ledger" in inspector.get_table_names(schema=schema)
    # Advisory locks are database-wide: the key includes the municipality.
    with stores["101"].area_lock(1, "prepare", wait_seconds=0), stores["147"].area_lock(1, "prepare", wait_seconds=0):
        with pytest.raises(AreaBusy, match="municipality 101: area 1 is being processed"):
            with StateStore(pg_state_url, tenant="101").area_lock(1, "deliver", wait_seconds=0):
                pass
    # The ledger diff's SQL texts (temporary key table) run inside the partition too.
    assert stores["147"].ledger_diff(1, ["M1"])["in_flight"].tolist() == [True]


@pytest.mark.postgres
def test_adopt_moves_the_single_municipality_state_into_its_schema(pg_state_url):
    _touch_state(StateStore(pg_state_url), "before-tenants")
    StateStore(pg_state_url, tenant="101")  # a first parse made the (empty) partition already
    assert adopt_unpartitioned(pg_state_url, "101").endswith("_k0101")
    assert [b["run_id"] for b in StateStore(pg_state_url, tenant="101").all_batches()] == ["before-tenants"]
    assert StateStore(pg_state_url).all_batches() == []
    with pytest.raises(ValueError, match="municipality 101 has state already"):
        _touch_state(StateStore(pg_state_url), "again")
        adopt_unpartitioned(pg_state_url, "101")


def test_adopt_on_sqlite_renames_the_file_and_refuses_to_overwrite(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    _touch_state(StateStore(url), "before-tenants")
    assert adopt_unpartitioned(url, "101") == str(tmp_path / "state_k0101.sqlite")
    assert [b["run_id"] for b in StateStore(url, tenant="101").all_batches()] == ["before-tenants"]
    _touch_state(StateStore(url), "again")
    with pytest.raises(ValueError, match="municipality 101 has state already"):
        adopt_unpartitioned(url, "101")


# --- the demo source per municipality ---------------------------------------------------------------


def test_demo_source_per_municipality_is_deterministic_distinct_and_same_shaped(tmp_path):
    from demo import synthetic
    from transforms.source import create_engine_from_url

    def make(name: str, municipality: str) -> tuple[synthetic.DemoData, tuple[pd.DataFrame, pd.DataFrame]]:
        engine = create_engine_from_url(f"sqlite:///{tmp_path / name}")
        data = synthetic.generate(engine, persons=60, municipality=municipality)
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text("SELECT measure_id, municipality_code, person_id FROM measures "
                                        "ORDER BY measure_id"), conn)
            persons = pd.read_sql(sa.text("SELECT cpr FROM persons ORDER BY person_id"), conn)
        engine.dispose()
        return data, (frame, persons)

    d101, (m101, p101) = make("a.sqlite", "101")
    d147, (m147, p147) = make("b.sqlite", "147")
    _, (m147b, p147b) = make("c.sqlite", "147")
    assert d101.seed == synthetic.DEFAULT_SEED  # today's demo, unchanged
    assert d147.seed != d101.seed and d147.reporting_municipality == "147"
    assert m147.equals(m147b) and p147.equals(p147b)  # deterministic
    assert not p147["cpr"].equals(p101["cpr"])  # distinct persons
    assert (m147["municipality_code"] == "147").mean() > 0.5  # its own municipality's rows
    assert set(m147["measure_id"]) & set(m101["measure_id"])  # same-shaped keys: ids must not collide on them


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB (once per session): `airflow connections list` reads it."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return True


def test_tenants_check_command_validates_the_file_and_names_missing_connections(tmp_path, monkeypatch, capsys,
                                                                                airflow_db):
    from cli.main import main

    path = _write(tmp_path, yaml.safe_dump({"tenants": [{"kommunekode": "101"}, {"kommunekode": "147"}]}))
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SOURCE_101", '{"conn_type": "sqlite", "host": "/tmp/x.sqlite"}')
    monkeypatch.setenv("AIRFLOW_CONN_AMS_RECEIVER_101", '{"conn_type": "http", "host": "127.0.0.1"}')
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SOURCE_147", '{"conn_type": "sqlite", "host": "/tmp/y.sqlite"}')
    code = main(["tenants", "check", "--file", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "municipality 147 Frederiksberg: field 'receiver_conn_id': there is no Airflow connection " \
           "'ams_receiver_147'" in out
    assert "municipality 101" not in out.split("PROBLEM", 1)[1]
    monkeypatch.setenv("AIRFLOW_CONN_AMS_RECEIVER_147", '{"conn_type": "http", "host": "127.0.0.1"}')
    assert main(["tenants", "check", "--file", str(path)]) == 0
    assert main(["tenants", "check", "--file", str(_write(tmp_path, "tenants: [{kommunekode: 1}]")),
                 "--no-connections"]) == 1


def test_an_alert_of_a_tenant_names_the_municipality_its_dag_and_goes_to_its_address(monkeypatch):
    from ams_reporting import alerts

    from tests.test_alerts import _context

    monkeypatch.setenv("AMS_TENANTS_FILE", str(EXAMPLE))
    monkeypatch.setenv("AMS_ALERT_EMAIL", "deployment@it-service.example")
    context = _context()
    context["task_instance"].dag_id = context["ti"].dag_id = "employment_reporting_147"
    alert = alerts.build_alert(context)
    assert alert.subject.startswith("[AMS reporting] 147 Frederiksberg: area 1 ")
    assert "Municipality: 147 Frederiksberg" in alert.body
    assert "airflow tasks clear employment_reporting_147 " in alert.body and "ams_sftp_147" in alert.body
    assert "0101901234" not in alert.body and "010190-1234" not in alert.body
    assert alerts.recipients(alerts.tenant_of(context)) == ["it-drift@frederiksberg.example"]
    # A municipality without an address of its own: the deployment's.
    context["task_instance"].dag_id = "employment_reporting_151"
    assert alerts.recipients(alerts.tenant_of(context)) == ["deployment@it-service.example"]
    # The single DAG's alerts are as before.
    context["task_instance"].dag_id = "employment_reporting"
    assert "Municipality:" not in alerts.build_alert(context).body


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_municipality_moving_to_a_tenants_file_keeps_its_record_ids(tmp_path, monkeypatch, request, database):
    """Delivered under the single deployment, adopted into its partition, run as a tenant: the records
    already at the receiver keep their ids (a change is an update, nothing is created twice); a new
    record gets an id with the kommunekode."""
    from datetime import date

    from cycle.pipeline import Settings as PipelineSettings
    from cycle.pipeline import deliver_area, prepare_area
    from delivery.archive import load_keys
    from delivery.client import AmsClient
    from demo import synthetic
    from receiver.server import start_in_thread
    from receiver.store import ReceiverStore
    from transforms.source import create_engine_from_url

    state_url = request.getfixturevalue("pg_state_url") if database == "postgresql" else (
        f"sqlite:///{tmp_path / 'state.sqlite'}")
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'source.sqlite'}")
    synthetic.generate(engine, persons=80, defect_rate=0.0)
    monkeypatch.setenv("AMS_ARCHIVE_KEY_FILE", str(tmp_path / "key"))
    load_keys(tmp_path / "key", create=True)
    receiver = start_in_thread(tmp_path / "receiver.sqlite")
    area = get_area(1)

    def run(run_id: str, tenant: str | None) -> None:
        settings = PipelineSettings(home=tmp_path / "var", source_url=str(engine.url), state_url=state_url,
                                    data_docs=False, batch_size=40, backoff_seconds=0.01, tenant=tenant)
        prepare_area(1, run_id=run_id, period_end=date(2026, 10, 31), settings=settings)
        deliver_area(1, run_id=run_id, settings=settings, client=AmsClient(receiver.wsdl_url, insecure_for_tests=True))

    from transforms.source import extract_chunks

    records = pd.concat([mapping.map_records(area, c).records for c in extract_chunks(engine, area)])
    held_back = sorted(records.loc[records["action"] != mapping.ANNUL, "record_key"])[-1]
    with engine.begin() as conn:  # a record the single deployment never saw: it comes after the move
        row = dict(conn.execute(sa.text("SELECT * FROM measures WHERE measure_id = :k"), {"k": held_back}
                                ).mappings().one())
        conn.execute(sa.text("DELETE FROM measures WHERE measure_id = :k"), {"k": held_back})
    try:
        run("single", None)
        before = {r.record_id: r for r in ReceiverStore(receiver.db_path).records(1)}
        assert before
        keys = sorted(StateStore(state_url).ledger_rows(1)["record_key"])
        assert set(before) == {mapping.record_id(area, k) for k in keys}  # today's ids
        adopt_unpartitioned(state_url, "101")
        changed = keys[0]
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE measures SET weekly_hours = 11.5, updated_at = CURRENT_TIMESTAMP "
                                 "WHERE measure_id = :k"), {"k": changed})
            # The new record, stamped now so that the next read of the changes sees it.
            columns = [c for c in row if c != "updated_at"]
            conn.execute(sa.text(f"INSERT INTO measures ({', '.join(columns)}, updated_at) VALUES "
                                 f"({', '.join(':' + c for c in columns)}, CURRENT_TIMESTAMP)"), row)
        run("tenant", "101")
        after = {r.record_id: r for r in ReceiverStore(receiver.db_path).records(1)}
        new_id = mapping.record_id(area, held_back, "101")
        assert set(after) == set(before) | {new_id}  # nothing created twice
        assert after[mapping.record_id(area, changed)].version == 2  # the change: an update, same id
        assert all(after[i].version == 1 for i in before if i != mapping.record_id(area, changed))
        ledger = StateStore(state_url, tenant="101").ledger_rows(1).set_index("record_key")["record_id"]
        assert ledger[changed] == mapping.record_id(area, changed) and ledger[held_back] == new_id
    finally:
        receiver.stop()
        engine.dispose()


def test_a_tenant_without_its_connection_fails_naming_municipality_field_and_connection(monkeypatch):
    from ams_reporting.hooks import TenantConfigError, client_for_area, settings

    monkeypatch.setenv("AMS_TENANTS_FILE", str(EXAMPLE))
    monkeypatch.setenv("AMS_SOURCE_URL", "sqlite:////never/the/single/deployment/source.sqlite")
    monkeypatch.delenv("AIRFLOW_CONN_AMS_SOURCE_147", raising=False)
    with pytest.raises(TenantConfigError, match=r"municipality 147 Frederiksberg: there is no Airflow connection "
                                                r"'ams_source_147' \(source_conn_id"):
        settings("147")
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SOURCE_147", '{"conn_type": "sqlite", "extra": {"sqlalchemy_url": '
                                                      '"sqlite:////data/frb.sqlite"}}')
    config = settings("147")
    assert (config.tenant, config.sender_municipality, config.source_url) == ("147", "147", "sqlite:////data/frb.sqlite")
    # Area 1 of 147 is on the file channel: its own SFTP connection, never the single deployment's ams_sftp.
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SFTP", '{"conn_type": "sftp", "host": "127.0.0.1"}')
    with pytest.raises(TenantConfigError, match="'ams_sftp_147' \\(sftp_conn_id"):
        client_for_area(1, "147")
    with pytest.raises(TenantConfigError, match="'ams_receiver_147' \\(receiver_conn_id"):
        client_for_area(3, "147")
    with pytest.raises(TenantConfigError, match="municipality 153 is not a valid entry"):
        settings("153")

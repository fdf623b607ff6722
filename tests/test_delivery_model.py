"""The delivery protocol, proved by a model-based test (Hypothesis RuleBasedStateMachine).

It drives the real pipeline functions (prepare_area, deliver_area, finish_archives) against the real
receiver process over HTTP, on a real SQLite source and state DB, and interleaves in random order:
source changes (create, update, soft-delete, break, fix), runs of prepare and deliver, clears of
either (the same run id again) and new runs, and faults at every boundary: each receiver fault on
SubmitBatch and on GetBatchReceipt, a crash at every named failure point between two state-store
writes (delivery.failpoints), an archive write failure (ENOSPC) and a lost staged file.

After every step it checks the invariants:
- no record is received twice: the receiver never gets a live record again with the same content,
  nor an annulled one annulled again (`resends`);
- the ledger agrees with the receiver (records of batches still in doubt aside);
- every archived batch's archive verifies against the ledger, and its payload is the exact
  SubmitBatchRequest the receiver digested;
- no raw CPR number in the state DB.
After every *clean cycle* (a new run with no fault until nothing is outstanding), also: the receiver
holds exactly the valid live records, with the content the pipeline would send now, every record
deleted at the source after acceptance is annulled, every broken one is in quarantine, and the run's
counts reconcile with nothing outstanding.

CI runs a bounded number of examples; `make soak` runs many more (AMS_SOAK_EXAMPLES, AMS_SOAK_SECONDS)
and prints the steps, faults and checks it exercised.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from lxml import etree

from cycle.pipeline import AreaDeliveryStopped, Settings, deliver_area, finish_archives, prepare_area
from delivery import failpoints
from delivery.archive import PAYLOAD_FILE, verify_archive
from delivery.client import AmsClient
from delivery.state import IN_DOUBT
from demo import synthetic
from receiver.server import ReceiverProcess
from receiver.store import ReceiverStore
from reports.summary import run_summary
from transforms import mapping
from transforms.payload import build_batch, q, xml_parser
from transforms.registry import RECORD_ID_ELEMENT, get_area
from transforms.source import create_engine_from_url, create_source_schema, extract_chunks

AREA = get_area(1)
PERIOD_END = date(2026, 11, 28)
RECEIVER_MODES = ("error500", "busy", "timeout", "drop_reply", "schema_fault", "access_closed", "signature_refused")
OPERATIONS = ("SubmitBatch", "GetBatchReceipt")
DELIVERY_POINTS = tuple(p for p in failpoints.POINTS if not p.startswith("prepare") and p != "state.discard")
PREPARE_POINTS = ("prepare.staged", "state.discard")
SOAK = os.environ.get("AMS_SOAK") == "1"
_FAULT = st.tuples(st.sampled_from(RECEIVER_MODES), st.sampled_from(OPERATIONS), st.integers(1, 2))
#: Faults after which the batch may have arrived, the reply lost: the next try must ask first.
_IN_DOUBT = st.tuples(st.sampled_from(("drop_reply", "timeout")), st.just("SubmitBatch"), st.just(1))
#: Answers to the lookup that say nothing about the batch.
_LOOKUP = st.tuples(st.sampled_from(RECEIVER_MODES), st.just("GetBatchReceipt"), st.integers(1, 2))
#: No fault, one fault, or a lost answer followed by a fault on the lookup it leads to.
FAULTS = st.one_of(st.just([]), _FAULT.map(lambda f: [f]), _IN_DOUBT.map(lambda f: [f]),
                   st.tuples(_IN_DOUBT, _LOOKUP).map(list), _LOOKUP.map(lambda f: [f]))

#: What the machine exercised, over every example of the session (printed by `make soak`).
TALLY: Counter = Counter()


@pytest.fixture(scope="module")
def receiver_process():
    with tempfile.TemporaryDirectory(prefix="ams-model-") as tmp:
        with ReceiverProcess(Path(tmp) / "receiver.sqlite", control=True) as receiver:
            yield receiver


class DeliveryProtocol(RuleBasedStateMachine):
    receiver: ReceiverProcess  # set by the test function
    postgres: str | None = None  # a PostgreSQL URL: the state DB in a fresh schema per example
    lanes: int = 1  # batches on their way at once (AMS_DELIVER_LANES): 2 needs clients built per lane

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="ams-model-")
        root = Path(self.tmp.name)
        self.source_url = f"sqlite:///{root / 'source.sqlite'}"
        engine = create_engine_from_url(self.source_url)
        create_source_schema(engine)
        synthetic.generate(engine, persons=60, defect_rate=0.0)
        engine.dispose()
        state_url = f"sqlite:///{root / 'state.sqlite'}"
        self.schema = None
        if self.postgres:  # as in production: the state DB on PostgreSQL (advisory locks)
            self.schema = f"model_{uuid.uuid4().hex[:12]}"
            with sa.create_engine(self.postgres).begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
            state_url = f"{self.postgres}?options=-csearch_path%3D{self.schema}"
        self.settings = Settings(home=root / "var", source_url=self.source_url,
                                 # two lanes: smaller batches, so that a day's few changes make several
                                 state_url=state_url, batch_size=4 if self.lanes == 1 else 1, data_docs=False,
                                 delivery_attempts=2, backoff_seconds=0.01, lock_wait_seconds=5,
                                 deliver_lanes=self.lanes)
        self.state = self.settings.state()
        self.store = ReceiverStore(self.receiver.db_path)
        self._control(mode="ok", reset=True)
        self.client = AmsClient(self.receiver.wsdl_url, timeout=1.0)  # a 1.5 s "timeout" fault outlasts it
        self.patient_client = AmsClient(self.receiver.wsdl_url, timeout=60.0)  # clean cycles on a busy machine
        if self.lanes > 1:  # a function that builds a client: a client per lane, as the Airflow task passes
            wsdl = self.receiver.wsdl_url
            self.client = lambda: AmsClient(wsdl, timeout=1.0)
            self.patient_client = lambda: AmsClient(wsdl, timeout=60.0)
        self.run_no = 0
        self.run_id = ""
        self.steps_since_clean = 0
        self.keys: list[str] = []            # the measures the model changes (area 1)
        self.original: dict[str, tuple] = {}  # key -> (weekly_hours, activation_type) at the start
        self.deleted: set[str] = set()
        self.broken: set[str] = set()
        self.cprs = self._source_cprs()

    def teardown(self) -> None:
        failpoints.disarm()
        self._control(mode="ok")
        self.state.engine.dispose()
        if self.schema:
            engine = sa.create_engine(self.postgres)
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()
        self.tmp.cleanup()

    # --- helpers ---------------------------------------------------------------------------------
    def _control(self, **data) -> None:
        requests.post(f"{self.receiver.base_url}/_control", json={"count": 1, "delay": 1.5, **data},
                      timeout=5).raise_for_status()

    def _source(self) -> sqlite3.Connection:
        return sqlite3.connect(self.source_url.removeprefix("sqlite:///"), isolation_level=None)

    def _source_cprs(self) -> set[str]:
        with self._source() as conn:
            return {row[0] for row in conn.execute("SELECT cpr FROM persons") if row[0]}

    def _touch(self, key: str, sql: str, *params) -> None:
        now = datetime.now(UTC).isoformat(sep=" ")
        with self._source() as conn:
            conn.execute(f"UPDATE measures SET {sql}, updated_at = ? WHERE measure_id = ?", (*params, now, key))

    def _new_run(self) -> None:
        self.run_no += 1
        self.run_id = f"run-{self.run_no:03d}"

    def _prepare(self) -> dict | None:
        try:
            return prepare_area(AREA.number, run_id=self.run_id, period_end=PERIOD_END, settings=self.settings)
        except failpoints.InjectedCrash:
            TALLY["crashes in prepare"] += 1
            return None

    def _deliver(self, patient: bool = False) -> dict | None:
        try:
            return deliver_area(AREA.number, run_id=self.run_id, settings=self.settings,
                                client=self.patient_client if patient else self.client)
        except AreaDeliveryStopped:
            TALLY["deliveries stopped"] += 1
            return None
        except failpoints.InjectedCrash:
            TALLY["crashes in deliver"] += 1
            return None
        finally:
            failpoints.disarm()
            self._control(mode="ok")

    # --- set-up: a first clean cycle, then choose the records the model changes ------------------
    @initialize()
    def first_cycle(self) -> None:
        self.clean_cycle()
        live = self.state.ledger_rows(AREA.number)
        live = sorted(live.loc[live["receiver_state"] == "active", "record_key"])
        assert len(live) >= 8, "the demo source should give area 1 some records"
        self.keys = live[:8]
        with self._source() as conn:
            for key in self.keys:
                self.original[key] = conn.execute(
                    "SELECT weekly_hours, activation_type FROM measures WHERE measure_id = ?", (key,)).fetchone()

    # --- source changes ---------------------------------------------------------------------------
    @rule(kind=st.sampled_from(("update", "delete", "create", "break", "fix", "requeue")), i=st.integers(0, 7),
          hours=st.integers(1, 37))
    def change_source(self, kind: str, i: int, hours: int) -> None:
        """A change at the source, or an operator's `ams-report requeue` of refused records."""
        key = self.keys[i]
        if kind == "requeue":
            self.state.requeue_rejected(AREA.number)
        elif kind == "update":
            self._touch(key, "weekly_hours = ?", float(hours))
        elif kind == "delete":
            self._touch(key, "deleted_at = ?", datetime.now(UTC).isoformat(sep=" "))
            self.deleted.add(key)
        elif kind == "create":  # a record coming back is a create for the receiver
            self._touch(key, "deleted_at = NULL")
            self.deleted.discard(key)
        elif kind == "break":
            self._touch(key, "activation_type = ?", "ZZ")  # not in the code list: quarantined
            self.broken.add(key)
        else:
            self._touch(key, "activation_type = ?", self.original[key][1])
            self.broken.discard(key)
        TALLY[f"source: {kind}"] += 1

    # --- runs, clears and faults -----------------------------------------------------------------
    @rule(new_run=st.booleans(), crash=st.sampled_from((None, *PREPARE_POINTS)))
    def prepare(self, new_run: bool, crash: str | None) -> None:
        if new_run or not self.run_id:
            self._new_run()
        if crash:
            failpoints.arm(crash)
            TALLY[f"fault: crash at {crash}"] += 1
        try:
            self._prepare()
        finally:
            failpoints.disarm()
        TALLY["prepare: new run" if new_run else "prepare: cleared (same run)"] += 1

    @rule(new_run=st.booleans(), faults=FAULTS, crash=st.sampled_from((None, None, *DELIVERY_POINTS)),
          then_report=st.booleans())
    def deliver(self, new_run: bool, faults: list[tuple[str, str, int]], crash: str | None, then_report: bool) -> None:
        """A delivery (a new run's, or a clear of the current one) under up to two receiver faults in
        sequence (a fault on SubmitBatch, then one on the lookup that follows) and perhaps a crash or an
        archive failure at a named point; then perhaps the report task, which finishes archives."""
        if new_run or not self.run_id:
            self._new_run()
        if faults:
            steps = [{"mode": m, "operation": o, "count": c} for m, o, c in faults]
            self._control(**steps[0], then=steps[1:])
            for m, o, _ in faults:
                TALLY[f"fault: {m} on {o}"] += 1
        if crash == "archive.write":
            failpoints.arm(crash, OSError(errno.ENOSPC, "No space left on device"))
            TALLY["fault: archive write failure (ENOSPC)"] += 1
        elif crash:
            failpoints.arm(crash)
            TALLY[f"fault: crash at {crash}"] += 1
        self._deliver()
        TALLY["deliver: new run" if new_run else "deliver: cleared (same run)"] += 1
        if then_report:
            finish_archives(self.settings, self.state, self.settings.vault())
            TALLY["report runs"] += 1

    def _cycle(self, data) -> None:
        """A whole daily run in one step: a source change, prepare (perhaps crashing), deliver under
        faults (perhaps crashing), perhaps the report task. Denser than the separate rules, so that
        faults of consecutive runs combine often."""
        self.change_source(data.draw(st.sampled_from(("update", "delete", "create", "break", "fix"))),
                           data.draw(st.integers(0, 7)), data.draw(st.integers(1, 37)))
        self.prepare(data.draw(st.booleans()), data.draw(st.sampled_from((None, None, None, *PREPARE_POINTS))))
        self.deliver(False, data.draw(FAULTS), data.draw(st.sampled_from((None, None, *DELIVERY_POINTS))),
                     data.draw(st.booleans()))

    @rule(data=st.data())
    def daily_run(self, data) -> None:
        self._cycle(data)

    @rule(data=st.data())
    def another_daily_run(self, data) -> None:  # the same again: runs are what the model does most
        self._cycle(data)

    @precondition(lambda self: self.state.outstanding_batches(AREA.number))
    @rule(data=st.data(), damage=st.booleans())
    def lose_staged_file(self, data, damage) -> None:
        """The staged payload (a row of the state DB's staging table) is gone or damaged."""
        batch = data.draw(st.sampled_from(self.state.outstanding_batches(AREA.number)))
        if damage:
            blob = self.state.staged_blob(batch["batch_id"], PAYLOAD_FILE)
            if blob is not None:
                self.state.stage(batch["batch_id"], PAYLOAD_FILE, blob[:-8] + b"damaged!")
            TALLY["fault: staged payload damaged"] += 1
        else:
            self.state.unstage(batch["batch_id"], PAYLOAD_FILE)
            TALLY["fault: staged payload lost"] += 1

    @precondition(lambda self: self.steps_since_clean >= 3)
    @rule()
    def clean_cycle(self) -> None:
        """A new run without faults, repeated until nothing is outstanding; then the strong checks."""
        for _ in range(4):
            self._new_run()
            prepared = self._prepare()
            assert prepared is not None
            self._deliver(patient=True)
            if prepared.get("pending", 0) == 0 and not self.state.outstanding_batches(AREA.number):
                break
        else:
            raise AssertionError("four clean cycles left batches outstanding")
        TALLY["clean cycles"] += 1
        self.steps_since_clean = 0
        self.check_converged()

    # --- invariants ------------------------------------------------------------------------------
    @invariant()
    def nothing_received_twice(self) -> None:
        TALLY["steps"] += 1
        self.steps_since_clean += 1
        TALLY["invariant checks"] += 6
        again = [(r.record_id, r.resends) for r in self.store.records(AREA.number) if r.resends]
        assert not again, f"the receiver got records again unchanged: {again[:5]}"

    @invariant()
    def ledger_agrees_with_receiver(self) -> None:
        ledger = self.state.ledger_rows(AREA.number)
        in_doubt = {b["batch_id"] for b in self.state.batches_in(AREA.number, IN_DOUBT)}
        doubtful_ids: set[str] = set()
        for batch_id in in_doubt:
            doubtful_ids |= set(self.state.batch_members(batch_id)["record_id"])
        ours = {r.record_id: r.receiver_state for r in ledger.itertuples()}
        for record in self.store.records(AREA.number):
            if record.record_id in doubtful_ids:
                continue  # its batch is in doubt: the next delivery asks and the ledger catches up
            expected = {"ACTIVE": "active", "ANNULLED": "annulled"}[record.status]
            assert ours.get(record.record_id) == expected, (
                f"receiver holds {record.record_id} as {record.status}, the ledger says {ours.get(record.record_id)}")
        held = {r.record_id for r in self.store.records(AREA.number)}
        for record_id, receiver_state in ours.items():
            if receiver_state in ("active", "annulled") and record_id not in doubtful_ids:
                assert record_id in held, f"the ledger says {record_id} is at the receiver, it is not"

    @invariant()
    def archive_holds_what_was_sent(self) -> None:
        batches = self.state.all_batches()
        # Allowed: an archive not written yet (finished by the next task), and the double fault of a
        # staged payload lost while its batch was in doubt and the receiver had it (reported, not hidden).
        problems = [p for p in verify_archive(self.settings.vault(), self.settings.archive_dir, batches)
                    if "not archived yet" not in p and "payload was lost before it was archived" not in p]
        assert not problems, problems
        for batch in batches:
            if batch["status"] != "archived" or str(batch["receipt_message_id"]).startswith("fault-"):
                continue
            payload = self.settings.vault().read(Path(batch["archive_path"]) / PAYLOAD_FILE)
            stored = self.store.batch(batch["batch_id"])
            assert stored is not None, f"archived batch {batch['batch_id']} is unknown to the receiver"
            digest = hashlib.sha256(etree.tostring(etree.fromstring(payload, xml_parser()), method="c14n",
                                                   exclusive=True)).hexdigest()
            assert digest == stored.request_sha256, f"archive of {batch['batch_id']} is not what was received"

    @invariant()
    def every_runs_counts_reconcile(self) -> None:
        """extracted = delivered + annulled + quarantined + unchanged + outstanding, for every run so
        far, with nothing counted twice (a negative remainder) whatever faults came between."""
        for run_id in self.state.recent_runs(1000):
            for row in run_summary(run_id, self.settings)["areas"]:
                assert row["outstanding"] >= 0, f"{run_id}: a record counted twice: {row}"
                assert row["extracted"] == (row["delivered"] + row["annulled"] + row["quarantined"]
                                            + row["unchanged"] + row["outstanding"])

    @invariant()
    def no_raw_cpr_in_the_state_db(self) -> None:
        dump = []
        with self.state.engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                dump += [str(v) for row in conn.execute(sa.text(f"SELECT * FROM {table}")) for v in row]
        text = "\n".join(dump)
        leaked = [c for c in self.cprs if c in text or f"{c[:6]}-{c[6:]}" in text]
        assert not leaked, f"{len(leaked)} raw CPR number(s) in the state DB"

    def check_converged(self) -> None:
        """After a clean cycle: the receiver holds exactly the valid live records, as built now."""
        TALLY["convergence checks"] += 1
        ledger = self.state.ledger_rows(AREA.number).set_index("record_key")
        refused = set(ledger.index[(ledger["status"] == "rejected") & ledger["rejected_hash"].notna()])
        quarantined = {q["record_key"] for q in self.state.open_quarantine(AREA.number)}
        assert self.broken - self.deleted <= quarantined, "a record broken at the source is not in quarantine"
        engine = create_engine_from_url(self.source_url)
        try:
            frames = [mapping.map_records(AREA, chunk).records for chunk in extract_chunks(engine, AREA)]
        finally:
            engine.dispose()
        records = mapping.strip_not_applicable(AREA, pd.concat(frames, ignore_index=True))
        live = records[(records["action"] != mapping.ANNUL) & ~records["record_key"].isin(quarantined)]
        expected = {}
        if len(live):
            built = etree.fromstring(build_batch(AREA, live, batch_id="00000000-0000-0000-0000-000000000000",
                                                 sender_municipality="101", run_id="check"), xml_parser())
            for element in built.find(q("Records")):
                expected[element.findtext(q(RECORD_ID_ELEMENT)).strip()] = etree.tostring(
                    element, method="c14n", exclusive=True)
        held = {r.record_id: r for r in self.store.records(AREA.number, status="ACTIVE")}
        refused_ids = set(ledger.loc[list(refused & set(ledger.index)), "record_id"]) if refused else set()
        for record_id, xml in expected.items():
            if record_id in refused_ids:
                continue  # the receiver refused this content: it stays in quarantine until it changes
            assert record_id in held, f"valid live record {record_id} is not active at the receiver"
            assert held[record_id].payload_xml == xml, f"record {record_id}: the receiver holds other content"
        for record_id in set(held) - set(expected):
            key = records.loc[records["record_id"] == record_id, "record_key"]
            assert not len(key) or key.iloc[0] in quarantined or key.iloc[0] in refused, (
                f"record {record_id} is active at the receiver but deleted or gone at the source")
        for key in self.deleted:
            row = ledger.loc[key] if key in ledger.index else None
            if row is not None and row["receiver_state"] is not None:
                assert self.store.record(row["record_id"]).status == "ANNULLED", f"deleted {key} not annulled"
        row = next(r for r in run_summary(self.run_id, self.settings)["areas"] if r["area"] == AREA.number)
        assert row["outstanding"] == 0
        assert row["extracted"] == row["delivered"] + row["annulled"] + row["quarantined"] + row["unchanged"]


def _run(receiver, examples: int, steps: int, postgres: str | None = None, lanes: int = 1) -> None:
    DeliveryProtocol.receiver = receiver
    DeliveryProtocol.postgres = postgres
    DeliveryProtocol.lanes = lanes
    DeliveryProtocol.TestCase.settings = settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=not SOAK,
        suppress_health_check=list(HealthCheck), database=None)
    DeliveryProtocol.TestCase().runTest()


@pytest.mark.slow
def test_delivery_protocol_model(receiver_process):
    """CI: a bounded, derandomised run (the same examples every time)."""
    _run(receiver_process, examples=int(os.environ.get("AMS_MODEL_EXAMPLES", 6)), steps=12)
    assert TALLY["clean cycles"] and TALLY["invariant checks"]


@pytest.mark.slow
def test_delivery_protocol_model_two_lanes(receiver_process):
    """Two batches on their way at once (AMS_DELIVER_LANES=2, the default where the task builds the clients):
    the same invariants after every step, with faults and crashes hitting either lane."""
    _run(receiver_process, examples=int(os.environ.get("AMS_MODEL_EXAMPLES", 6)), steps=12, lanes=2)
    assert TALLY["clean cycles"] and TALLY["invariant checks"]


@pytest.mark.slow
@pytest.mark.postgres
def test_delivery_protocol_model_on_postgresql(receiver_process, pg_url):
    """The same protocol with the state DB on PostgreSQL (its transactions, its advisory locks)."""
    _run(receiver_process, examples=int(os.environ.get("AMS_MODEL_EXAMPLES_PG", 3)), steps=10,
         postgres=pg_url.split("?", 1)[0])
    assert TALLY["clean cycles"]


@pytest.mark.skipif(not SOAK, reason="the soak runs with `make soak` (AMS_SOAK=1)")
def test_delivery_protocol_soak(receiver_process):
    """`make soak`: random examples until AMS_SOAK_SECONDS have passed; prints what it exercised."""
    seconds = float(os.environ.get("AMS_SOAK_SECONDS", 1200))
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < seconds:
        _run(receiver_process, examples=int(os.environ.get("AMS_SOAK_EXAMPLES", 10)), steps=25, lanes=1 + rounds % 2)
        rounds += 1
    TALLY["examples"] = rounds * int(os.environ.get("AMS_SOAK_EXAMPLES", 10))
    report = "\n".join(f"  {name}: {count}" for name, count in sorted(TALLY.items()))
    print(f"\nSoak: {time.monotonic() - started:.0f} s, {rounds} round(s)\n{report}")

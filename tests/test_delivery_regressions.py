"""Regression tests for the compound-fault defects of the delivery (issue 8), each against the real
pipeline functions, a real receiver on loopback and a real SQLite (and PostgreSQL) state DB.

The model-based test (test_delivery_model.py) searches the same space at random; these pin down the
cases that were reproduced by hand, so each stays fixed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from lxml import etree

from cycle.pipeline import AreaDeliveryStopped, deliver_area, finish_archives, prepare_area
from delivery import failpoints
from delivery.archive import LOOKUP_REQUEST_FILE, PAYLOAD_FILE, verify_archive
from delivery.client import AmsClient
from delivery.state import StateStore, area_locks
from receiver.store import ReceiverStore
from tests.test_delivery_faults import AREA, PERIOD_END, demo_settings
from transforms.payload import xml_parser


@pytest.fixture
def world(tmp_path, monkeypatch):
    from receiver.server import start_in_thread

    settings = demo_settings(tmp_path, monkeypatch, persons=300, defect_rate=0.0, batch_size=40,
                             delivery_attempts=3, backoff_seconds=0.01)
    receiver = start_in_thread(tmp_path / "receiver.sqlite", control=True)
    yield settings, receiver, tmp_path
    failpoints.disarm()
    receiver.stop()


def control(receiver, mode: str, count: int = 1, operation: str = "SubmitBatch", then: list | None = None) -> None:
    data = {"mode": mode, "count": count, "operation": operation, "delay": 1.5, "then": then or []}
    requests.post(f"{receiver.base_url}/_control", json=data, timeout=5).raise_for_status()


def run(settings, receiver, run_id: str, *, prepare: bool = True, timeout: float = 5.0) -> dict | None:
    if prepare:
        prepare_area(AREA, run_id=run_id, period_end=PERIOD_END, settings=settings)
    try:
        client = AmsClient(receiver.wsdl_url, timeout=timeout)
        return deliver_area(AREA, run_id=run_id, settings=settings, client=client)
    except AreaDeliveryStopped:
        return None
    finally:
        control(receiver, "ok")


def source_sql(tmp_path: Path, sql: str, *params) -> None:
    with sqlite3.connect(tmp_path / "source.sqlite", isolation_level=None) as conn:
        conn.execute(sql, params)


def touch(tmp_path: Path, key: str, assignment: str, *params) -> None:
    source_sql(tmp_path, f"UPDATE measures SET {assignment}, updated_at = ? WHERE measure_id = ?",
               *params, datetime.now(UTC).isoformat(sep=" "), key)


def no_record_received_twice(receiver) -> None:
    again = [r.record_id for r in ReceiverStore(receiver.db_path).records() if r.resends]
    assert not again, f"records received twice: {again[:5]}"


# --- 1. an in-doubt batch never returns to `built` -------------------------------------------------

def test_in_doubt_batch_whose_lookup_is_refused_stays_in_doubt(world):
    settings, receiver, tmp_path = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    first = state.outstanding_batches(AREA)[0]
    # The receiver stores the first batch but the reply is lost; the lookup is then refused (§ 48).
    control(receiver, "drop_reply", then=[{"mode": "access_closed"}])
    assert run(settings, receiver, "run-1", prepare=False) is None
    assert ReceiverStore(receiver.db_path).batch(first["batch_id"]) is not None
    assert state.batch(first["batch_id"])["status"] == "unknown"  # in doubt, never `built`
    staged = state.staged_blob(first["batch_id"], PAYLOAD_FILE)
    assert staged is not None
    # A record of that batch is deleted at the source; the runbook's "clear prepare" runs again.
    gone = state.batch_members(first["batch_id"])["record_key"].iloc[0]
    touch(tmp_path, gone, "deleted_at = ?", datetime.now(UTC).isoformat(sep=" "))
    prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    assert prepared["pending"] == first["record_count"]  # its records wait for the lookup, not rebuilt
    assert state.staged_blob(first["batch_id"], PAYLOAD_FILE) == staged
    assert state.batch(first["batch_id"])["status"] == "unknown"
    run(settings, receiver, "run-1", prepare=False)  # access restored: the lookup recovers the receipt
    assert state.batch(first["batch_id"])["recovered"]
    run(settings, receiver, "run-2")  # the next run annuls the deleted record
    ledger = state.ledger_rows(AREA).set_index("record_key")
    assert ReceiverStore(receiver.db_path).record(ledger.loc[gone, "record_id"]).status == "ANNULLED"
    no_record_received_twice(receiver)


def test_only_unknown_batch_means_not_received_any_other_lookup_fault_stops(world):
    settings, receiver, _ = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    first = state.outstanding_batches(AREA)[0]
    control(receiver, "drop_reply", then=[{"mode": "schema_fault", "operation": "GetBatchReceipt"}])
    assert run(settings, receiver, "run-1", prepare=False) is None
    batch = state.batch(first["batch_id"])
    assert batch["status"] == "unknown" and batch["accepted_count"] is None  # not taken as "refused"
    assert state.ledger_rows(AREA).empty
    run(settings, receiver, "run-1", prepare=False)
    assert state.batch(first["batch_id"])["outcome"] == "accepted"
    no_record_received_twice(receiver)


def test_a_rebuilt_unsent_batch_is_byte_identical(world):
    settings, _, _ = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    before = {b["batch_id"]: settings.vault().open(state.staged_blob(b["batch_id"], PAYLOAD_FILE) or b"")
              for b in state.outstanding_batches(AREA)}
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)  # a cleared prepare
    after = {b["batch_id"]: settings.vault().open(state.staged_blob(b["batch_id"], PAYLOAD_FILE) or b"")
             for b in state.outstanding_batches(AREA)}
    assert after == before


# --- 2. a refused update does not hide the version the receiver holds ---------------------------

def test_refused_update_followed_by_a_deletion_is_annulled(world):
    settings, receiver, tmp_path = world
    state = settings.state()
    run(settings, receiver, "run-1")
    key = state.ledger_rows(AREA)["record_key"].iloc[0]
    touch(tmp_path, key, "weekly_hours = ?", 11.5)
    control(receiver, "schema_fault")  # the update's batch is refused
    run(settings, receiver, "run-2")
    row = state.ledger_rows(AREA).set_index("record_key").loc[key]
    assert (row["status"], row["receiver_state"]) == ("rejected", "active")
    touch(tmp_path, key, "deleted_at = ?", datetime.now(UTC).isoformat(sep=" "))
    run(settings, receiver, "run-3")
    assert ReceiverStore(receiver.db_path).record(row["record_id"]).status == "ANNULLED"


# --- 3. a recovered receipt archives the SubmitBatch bytes ---------------------------------------

def test_recovered_receipt_archives_the_submitted_payload_and_the_lookup(world):
    settings, receiver, _ = world
    state = settings.state()
    control(receiver, "drop_reply")
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    first = state.outstanding_batches(AREA)[0]
    staged = settings.vault().open(state.staged_blob(first["batch_id"], PAYLOAD_FILE) or b"")
    result = deliver_area(AREA, run_id="run-1", settings=settings, client=AmsClient(receiver.wsdl_url, timeout=5))
    assert result["recovered"] == 1
    batch = state.batch(first["batch_id"])
    folder = Path(batch["archive_path"])
    archived = settings.vault().read(folder / PAYLOAD_FILE)
    assert archived == staged
    digest = hashlib.sha256(etree.tostring(etree.fromstring(archived, xml_parser()), method="c14n",
                                           exclusive=True)).hexdigest()
    assert digest == ReceiverStore(receiver.db_path).batch(first["batch_id"]).request_sha256
    assert b"GetBatchReceipt" in settings.vault().read(folder / LOOKUP_REQUEST_FILE)
    assert json.loads((folder / "manifest.json").read_text())["recovered"] is True
    assert verify_archive(settings.vault(), settings.archive_dir, state.all_batches()) == []


# --- 4. an archive failure after the receipt is stored is finished later -------------------------

def test_archive_failure_after_the_receipt_is_finished_by_the_next_task(world):
    settings, receiver, _ = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    failpoints.arm("archive.write", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(AreaDeliveryStopped, match="could not be archived"):
        deliver_area(AREA, run_id="run-1", settings=settings, client=AmsClient(receiver.wsdl_url, timeout=5))
    waiting = state.batches_in(AREA, ("acknowledged",))
    assert len(waiting) == 1 and "No space left" in waiting[0]["last_error"]
    assert any("not archived yet" in p for p in verify_archive(settings.vault(), settings.archive_dir,
                                                               state.all_batches()))
    assert finish_archives(settings, state, settings.vault()) == 0  # the report task's repair
    batch = state.batch(waiting[0]["batch_id"])
    assert batch["status"] == "archived" and state.staged_names(batch["batch_id"]) == []  # unstaged with it
    assert verify_archive(settings.vault(), settings.archive_dir, state.all_batches()) == []


# --- 5. verify-archive checks the archive against the ledger -------------------------------------

def test_verify_archive_notices_missing_batches_and_orphan_folders(world):
    settings, receiver, _ = world
    state = settings.state()
    run(settings, receiver, "run-1")
    archived = [b for b in state.all_batches() if b["status"] == "archived"]
    assert len(archived) >= 2
    gone = Path(archived[0]["archive_path"])
    for item in gone.iterdir():
        item.unlink()
    gone.rmdir()
    orphan = gone.parent / "00000000-0000-0000-0000-000000000000"
    orphan.mkdir()
    problems = verify_archive(settings.vault(), settings.archive_dir, state.all_batches())
    assert any(archived[0]["batch_id"] in p and "missing" in p for p in problems)
    assert any("orphan" in p and str(orphan) in p for p in problems)


# --- 6. a lost staged file of an in-doubt batch does not block the area --------------------------

def test_lost_staged_file_of_a_batch_the_receiver_never_got(world):
    settings, receiver, _ = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    control(receiver, "error500", count=10)
    assert run(settings, receiver, "run-1", prepare=False) is None
    doubt = state.batches_in(AREA, ("unknown",))[0]
    assert state.unstage(doubt["batch_id"], PAYLOAD_FILE) == 1
    result = run(settings, receiver, "run-1", prepare=False)
    assert result is not None and result["batches_lost"] == 1  # asked first, then freed: not blocked
    assert state.batch(doubt["batch_id"])["status"] == "lost"
    run(settings, receiver, "run-2")  # the next run stages its records again
    members = set(state.batch_members(doubt["batch_id"])["record_id"])
    held = {r.record_id for r in ReceiverStore(receiver.db_path).records(AREA)}
    assert members <= held
    no_record_received_twice(receiver)


# --- 7. no raw CPR number reaches the state DB ---------------------------------------------------

def test_cpr_numbers_in_code_fields_and_receiver_texts_are_masked_in_the_state_db(world):
    settings, receiver, tmp_path = world
    state = settings.state()
    key = None
    with sqlite3.connect(tmp_path / "source.sqlite") as conn:
        key = conn.execute("SELECT measure_id FROM measures ORDER BY measure_id LIMIT 1").fetchone()[0]
    touch(tmp_path, key, "activation_type = ?", "0101901234")  # a CPR number typed into a code field
    touch(tmp_path, key, "job_order_type = ?", "010190-1234")
    run(settings, receiver, "run-1")
    batch = state.all_batches()[0]
    member = state.batch_members(batch["batch_id"]).iloc[0]
    # A receiver echoing a CPR number in a record's ErrorText.
    fake = state.add_batch(batch_id="11111111-1111-1111-1111-111111111111", area=AREA, run_id="run-x",
                           staged_path="-", payload_sha256="-", payload_created="-",
                           members=state.batch_members(batch["batch_id"]).iloc[:1][
                               ["record_key", "record_id", "content_hash", "action", "masked_person"]])
    assert fake
    state.apply_receipt("11111111-1111-1111-1111-111111111111", run_id="run-x", outcome="rejected", message_id="m",
                        event_date="-", record_results={member["record_id"]: ("REJECTED", "1010", "CPR 0101901234")})
    state.update_area_run("run-x", AREA, message="failed for 010190-1234")
    dump = []
    with state.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            dump += [str(v) for row in conn.execute(sa.text(f"SELECT * FROM {table}")) for v in row]
    text = "\n".join(dump)
    assert "0101901234" not in text and "010190-1234" not in text
    assert "010190-****" in text


# --- 8. two tasks of one area never interleave ---------------------------------------------------

def test_a_second_task_of_the_area_waits_then_fails_with_the_holder(world):
    settings, _, _ = world
    settings.lock_wait_seconds = 0.3
    state = settings.state()
    held, release = threading.Event(), threading.Event()

    def holder():
        with StateStore(settings.state_url).area_lock(AREA, "deliver run-0"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(5)
        with pytest.raises(AreaDeliveryStopped, match="being processed by another task .*deliver run-0"):
            prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    finally:
        release.set()
        thread.join()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)  # free again
    # A lock row left by a process that died (SIGKILL) is taken over.
    with state.begin() as conn:
        conn.execute(area_locks.insert().values(area=AREA, owner=f"{os.uname().nodename}:999999999:zombie",
                                                acquired_at=datetime.now(UTC)))
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)


def test_moves_are_guarded_by_the_batch_status(world):
    settings, _, _ = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    batch = state.outstanding_batches(AREA)[0]
    assert state.mark_sending(batch["batch_id"])
    discarded = state.discard_unsent_batches(AREA)  # a batch marked sent meanwhile is never discarded
    assert batch["batch_id"] not in {b["batch_id"] for b in discarded}
    assert state.batch(batch["batch_id"])["status"] == "sent"
    assert not state.mark_archived(batch["batch_id"], "/nowhere")  # only an acknowledged batch archives


@pytest.mark.postgres
def test_the_area_lock_on_postgresql_is_an_advisory_lock(pg_url):
    first, second = StateStore(pg_url), StateStore(pg_url)
    try:
        with first.area_lock(AREA, "deliver run-1"):
            with pytest.raises(Exception, match="advisory lock"):
                with second.area_lock(AREA, "prepare run-2", wait_seconds=0.2):
                    pass
        with second.area_lock(AREA, "prepare run-2", wait_seconds=0.2):
            pass
    finally:
        first.engine.dispose()
        second.engine.dispose()


# --- 12. the receiver down, as an operator sees it -----------------------------------------------

def test_receiver_down_is_retried_recorded_and_summarised_truthfully(world, monkeypatch, capsys):
    from reports.summary import format_summary, run_summary

    settings, _, _ = world
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    tries = []

    def client():  # loading the WSDL of a receiver that is down
        tries.append(1)
        return AmsClient("http://127.0.0.1:9/ams?wsdl", timeout=2)

    with pytest.raises(AreaDeliveryStopped, match="has not been sent: the receiver could not be reached"):
        deliver_area(AREA, run_id="run-1", settings=settings, client=client)
    assert len(tries) == settings.delivery_attempts  # AMS_DELIVERY_ATTEMPTS applies to the WSDL too
    summary = run_summary("run-1", settings)
    row = next(r for r in summary["areas"] if r["area"] == AREA)
    assert row["status"] == "delivery_failed" and row["outstanding"] > 0 and row["delivered"] == 0
    text = format_summary(summary)
    assert f"Area {AREA} FAILED: " in text and "Nothing new to send" not in text
    # `ams-report summary` reads: it prints the same and writes no report file.
    from cli import main as cli

    monkeypatch.setenv("AMS_HOME", str(settings.home))
    monkeypatch.setenv("AMS_STATE_URL", settings.state_url)
    assert cli.main(["summary", "run-1"]) == 0
    assert f"Area {AREA} FAILED: " in capsys.readouterr().out
    assert not (settings.reports_dir / "runs").exists()


def test_a_payload_lost_after_the_receiver_got_it_is_reported_and_does_not_block_the_area(world):
    settings, receiver, tmp_path = world
    state = settings.state()
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    first = state.outstanding_batches(AREA)[0]
    control(receiver, "drop_reply", then=[{"mode": "error500", "operation": "GetBatchReceipt", "count": 10}])
    assert run(settings, receiver, "run-1", prepare=False) is None  # the receiver has it; we do not know
    assert state.unstage(first["batch_id"], PAYLOAD_FILE) == 1
    result = run(settings, receiver, "run-1", prepare=False)  # the lookup recovers the receipt
    assert result is not None and result["recovered"] == 1
    assert state.batch(first["batch_id"])["status"] == "acknowledged"
    problems = verify_archive(settings.vault(), settings.archive_dir, state.all_batches())
    assert [p for p in problems if first["batch_id"] in p and "payload was lost" in p]
    touch(tmp_path, state.ledger_rows(AREA)["record_key"].iloc[-1], "weekly_hours = ?", 3.5)
    assert run(settings, receiver, "run-2") is not None  # the area goes on
    no_record_received_twice(receiver)

"""Shared-nothing workers (issue 10, item 4): no task relies on a file another task wrote to its disk.

Real processes (spawned, as Celery workers would run the tasks), each with its own AMS_HOME, against a
real state DB (SQLite file and PostgreSQL), a real receiver on loopback, one archive key from
AMS_ARCHIVE_KEY. The payloads are staged in the state DB (delivery.state, `ams_staged`).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from cycle.pipeline import Settings, deliver_area, prepare_area
from delivery.archive import PAYLOAD_FILE, ArchiveKeyMissing, verify_archive
from delivery.state import STAGED_IN_DB, StateStore
from receiver.store import ReceiverStore
from tests.test_delivery_faults import AREA, PERIOD_END, demo_settings
from transforms.registry import REPO_ROOT

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter, as on another worker


def _task(step: str, home: str, source_url: str, state_url: str, wsdl_url: str, run_id: str, queue) -> None:
    """One task on one 'worker': its own AMS_HOME, nothing else shared but the state DB and the archive."""
    from delivery.client import AmsClient

    try:
        settings = Settings(home=Path(home), source_url=source_url, state_url=state_url, data_docs=False,
                            batch_size=40, delivery_attempts=2, backoff_seconds=0.01, lock_wait_seconds=120)
        if step == "prepare":
            result = prepare_area(AREA, run_id=run_id, period_end=PERIOD_END, settings=settings)
        else:
            result = deliver_area(AREA, run_id=run_id, settings=settings, client=AmsClient(wsdl_url, timeout=10))
        queue.put({"ok": True, **{k: v for k, v in result.items() if isinstance(v, int | str)}})
    except BaseException as exc:  # reported to the test, which fails with it
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _run_tasks(*tasks: tuple) -> list[dict]:
    """Start every task at once, each in its own process; their results in order."""
    queues = [SPAWN.Queue() for _ in tasks]
    procs = [SPAWN.Process(target=_task, args=(*task, queue)) for task, queue in zip(tasks, queues, strict=True)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for queue in queues]
    for proc in procs:
        proc.join(30)
    return results


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """A demo source, a receiver on loopback, one archive key for every worker (AMS_ARCHIVE_KEY) and an
    archive outside every worker's AMS_HOME."""
    from receiver.server import start_in_thread

    demo_settings(tmp_path, monkeypatch, persons=300, defect_rate=0.0)
    monkeypatch.delenv("AMS_ARCHIVE_KEY_FILE")
    monkeypatch.setenv("AMS_ARCHIVE_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("AMS_CREATE_ARCHIVE_KEY", "0")  # a worker must not make one up
    monkeypatch.setenv("AMS_ARCHIVE_DIR", str(tmp_path / "shared-archive"))
    receiver = start_in_thread(tmp_path / "receiver.sqlite")
    yield tmp_path, receiver
    receiver.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'state.sqlite'}"


def _exactly_once(receiver, state: StateStore) -> None:
    store = ReceiverStore(receiver.db_path)
    records = store.records(AREA)
    assert records, "nothing reached the receiver"
    assert not [r.record_id for r in records if r.resends], "a record reached the receiver twice"
    ours = [b for b in state.all_batches() if b["area"] == AREA]
    assert ours and all(b["status"] == "archived" for b in ours)
    assert {b["batch_id"] for b in store.batches(AREA)} == {b["batch_id"] for b in ours}
    assert sum(b["record_count"] for b in ours) == len(records)


def test_prepare_on_one_worker_and_deliver_on_another(shared, state_url):
    """prepare runs with AMS_HOME a, whose folder is then deleted; deliver runs with AMS_HOME b: every
    batch is delivered exactly once and archived from what only the state DB held."""
    tmp_path, receiver = shared
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    (prepared,) = _run_tasks(("prepare", str(tmp_path / "worker-a"), source, state_url, receiver.wsdl_url, "run-1"))
    assert prepared["ok"], prepared
    assert prepared["batches_staged"] > 1
    state = StateStore(state_url)
    try:
        open_batches = state.outstanding_batches(AREA)
        assert {b["staged_path"] for b in open_batches} == {STAGED_IN_DB}
        assert all(state.staged_names(b["batch_id"]) == [PAYLOAD_FILE] for b in open_batches)
        assert not (tmp_path / "worker-a" / "staging").exists()  # nothing staged on worker a's disk
        shutil.rmtree(tmp_path / "worker-a", ignore_errors=True)  # and nothing of its disk survives
        (delivered,) = _run_tasks(("deliver", str(tmp_path / "worker-b"), source, state_url, receiver.wsdl_url,
                                   "run-1"))
        assert delivered["ok"], delivered
        assert delivered["batches_sent"] == prepared["batches_staged"]
        _exactly_once(receiver, state)
        assert all(state.staged_names(b["batch_id"]) == [] for b in open_batches)  # unstaged when archived
        settings = Settings(home=tmp_path / "worker-c", state_url=state_url)
        assert verify_archive(settings.vault(), settings.archive_dir, state.all_batches()) == []
        assert not (tmp_path / "worker-b" / "archive").exists()  # the archive is the shared one
    finally:
        state.engine.dispose()


@pytest.mark.postgres
def test_two_processes_delivering_one_area_send_each_batch_once(shared, pg_url):
    """Two deliveries of the same area started at once on two 'workers': the area lock serialises them,
    the claim (compare-and-set on attempts) backs it, and every batch reaches the receiver once."""
    tmp_path, receiver = shared
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    (prepared,) = _run_tasks(("prepare", str(tmp_path / "a"), source, pg_url, receiver.wsdl_url, "run-1"))
    assert prepared["ok"], prepared
    results = _run_tasks(("deliver", str(tmp_path / "b"), source, pg_url, receiver.wsdl_url, "run-1"),
                         ("deliver", str(tmp_path / "c"), source, pg_url, receiver.wsdl_url, "run-1"))
    assert all(r["ok"] for r in results), results
    assert sum(r.get("batches_sent", 0) for r in results) == prepared["batches_staged"]
    state = StateStore(pg_url)
    try:
        _exactly_once(receiver, state)
    finally:
        state.engine.dispose()


def test_the_claim_lets_one_of_two_tasks_send_a_batch(shared, state_url):
    """Two tasks that read the same batch (as if the area lock had been lost): only one claim wins."""
    tmp_path, _ = shared
    settings = Settings(home=tmp_path / "a", source_url=f"sqlite:///{tmp_path / 'source.sqlite'}",
                        state_url=state_url, data_docs=False, batch_size=40)
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    first, second = StateStore(state_url), StateStore(state_url)
    try:
        seen_by_first = first.outstanding_batches(AREA)[0]
        seen_by_second = second.batch(seen_by_first["batch_id"])
        assert seen_by_second is not None
        assert first.mark_sending(seen_by_first["batch_id"], attempts=seen_by_first["attempts"])
        assert not second.mark_sending(seen_by_second["batch_id"], attempts=seen_by_second["attempts"])
        assert second.batch(seen_by_first["batch_id"])["attempts"] == seen_by_first["attempts"] + 1
    finally:
        first.engine.dispose()
        second.engine.dispose()


_HOLDER = """
import sys, time
from delivery.state import StateStore
with StateStore(sys.argv[1]).area_lock(1, "deliver killed-worker", wait_seconds=5):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.postgres
def test_a_sigkilled_workers_area_lock_is_released(pg_url):
    """PostgreSQL ends the session of a worker killed with SIGKILL, and its advisory lock with it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, pg_url], stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    state = StateStore(pg_url)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="advisory lock"):
            with state.area_lock(1, "deliver other-worker", wait_seconds=0.5):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        started = time.monotonic()
        with state.area_lock(1, "deliver other-worker", wait_seconds=20):
            taken_after = time.monotonic() - started
        assert taken_after < 20
    finally:
        if proc.poll() is None:
            proc.kill()
        state.engine.dispose()


def test_staging_rows_of_two_municipalities_never_collide(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    aarhus, copenhagen, single = StateStore(url, tenant="751"), StateStore(url, tenant="101"), StateStore(url)
    for store, blob in ((aarhus, b"751"), (copenhagen, b"101"), (single, b"none")):
        store.stage("same-batch-id", PAYLOAD_FILE, blob)
    assert [s.staged_blob("same-batch-id", PAYLOAD_FILE) for s in (aarhus, copenhagen, single)] == [
        b"751", b"101", b"none"]
    assert aarhus.unstage("same-batch-id") == 1
    assert copenhagen.staged_blob("same-batch-id", PAYLOAD_FILE) == b"101"


def test_several_workers_never_make_up_an_archive_key(tmp_path, monkeypatch):
    """On Celery a key file made up on one worker could not open what another staged: a clear error."""
    for name in ("AMS_ARCHIVE_KEY", "AMS_ARCHIVE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMS_CREATE_ARCHIVE_KEY", "1")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    settings = Settings(home=tmp_path / "worker")
    with pytest.raises(ArchiveKeyMissing, match="several workers .*AMS_ARCHIVE_KEY"):
        settings.vault()
    assert not (tmp_path / "worker" / "keys").exists()
    monkeypatch.setenv("AMS_ARCHIVE_KEY", Fernet.generate_key().decode())
    assert settings.vault().key_id
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTOR")
    monkeypatch.delenv("AMS_ARCHIVE_KEY")
    assert settings.vault().key_id  # one machine (the demo): the key file is made, as before


def test_batches_staged_on_disk_before_the_upgrade_are_still_delivered(shared):
    """An upgrade with batches open: their payloads are files under AMS_HOME/staging (the old layout,
    `staged_path` a file path); deliver reads them there, archives them and removes the folder."""
    from delivery.client import AmsClient
    from delivery.state import batches

    tmp_path, receiver = shared
    settings = Settings(home=tmp_path / "home", source_url=f"sqlite:///{tmp_path / 'source.sqlite'}",
                        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}", data_docs=False, batch_size=40)
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    state = settings.state()
    old = state.outstanding_batches(AREA)
    for batch in old:  # as the previous version left them
        folder = settings.home / "staging" / "area1" / batch["batch_id"]
        folder.mkdir(parents=True)
        (folder / PAYLOAD_FILE).write_bytes(state.staged_blob(batch["batch_id"], PAYLOAD_FILE) or b"")
        state.unstage(batch["batch_id"])
        with state.begin() as conn:
            conn.execute(batches.update().where(batches.c.batch_id == batch["batch_id"]).values(
                staged_path=str(folder / PAYLOAD_FILE)))
    result = deliver_area(AREA, run_id="run-1", settings=settings, client=AmsClient(receiver.wsdl_url, timeout=10))
    assert result["batches_sent"] == len(old)
    _exactly_once(receiver, state)
    assert not any((settings.home / "staging" / "area1").iterdir())  # the old folders are gone once archived

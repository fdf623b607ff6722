"""The reporting cycle of one data area, as plain functions the DAG's tasks call.

prepare_area: extract (in chunks) -> map -> contract -> data quality -> quarantine -> ledger diff
              -> payload batches, staged encrypted. Safe to re-run: batches never sent are rebuilt
              (same ids, byte-identical); a batch that may have reached the receiver is never rebuilt.
deliver_area: finishes the archive of batches acknowledged before; looks up every in-doubt batch at
              the receiver before anything is sent again; sends the rest; stores each receipt (staged,
              then in the ledger) before archiving the exact bytes.
write_report: the run summary for operations and analysts.

Both take the area's lock (delivery.state.area_lock): two runs of one area never interleave.
The protocol's states are described in delivery.state and, for operators, docs/operations.md.

No Airflow import here; configuration arrives as `Settings`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from cycle.checks import Checker, masked_persons, process_pays, second_core_free, switch
from cycle.settings import Settings
from cycle.timing import PhaseTimer, one_malloc_arena, peak_rss_mib, release_free_memory
from delivery import failpoints
from delivery.archive import (
    LOOKUP_REQUEST_FILE,
    PAYLOAD_FILE,
    RECEIPT_FILE,
    Vault,
    apply_retention,
    archive_batch,
    sha256,
)
from delivery.objectstore import StorePath, copy_tree, is_local
from delivery.state import (
    ACKNOWLEDGED,
    OUTSTANDING,
    STAGED_IN_DB,
    AreaBusy,
    FindingsCover,
    StateStore,
    sorted_hashes,
)
from transforms import mapping
from transforms.registry import Area, InterfaceVersion, get_area, version_in_force

log = logging.getLogger(__name__)

BATCH_NAMESPACE = uuid.UUID("1f6b0c2e-8d7a-5e0b-a2a1-0b4610f02010")
# A first chunk not read after this long comes from a large source: the checking child starts while it is read
# (a small source's query answers in well under a second; 100,000 records' first chunk took ~1.3 s).
FIRST_CHUNK_SLOW_SECONDS = 1.0


class AreaDeliveryStopped(RuntimeError):
    """Delivery for an area cannot go on without a person acting (access closed, retries exhausted)."""


def _batch_id(area: Area, run_id: str, members: pd.DataFrame, taken: Callable[[str], bool],
              tenant: str | None = None) -> str:
    """Deterministic within a run: the same records with the same content give the same batch id on
    every try of the run, so a cleared `prepare` rebuilds a never-sent batch under its old id (and,
    with its stored creation time, byte-identically). An id the state store already holds for a batch
    that was sent (`taken`) is never reused: a suffix gives the next one. A later run gets new ids.
    A tenant's ids include its kommunekode: every municipality's DAG has the same run ids, and the
    agency's one receiver must never take one municipality's batch for another's."""
    digest = sha256("\n".join(f"{k}:{h}" for k, h in zip(members["record_key"], members["content_hash"],
                                                          strict=True)).encode())
    n = 0
    while True:
        name = f"{area.code}:{run_id}:{digest}" + (f":{n}" if n else "")
        batch_id = str(uuid.uuid5(BATCH_NAMESPACE, name if tenant is None else f"{tenant}:{name}"))
        if not taken(batch_id):
            return batch_id
        n += 1


@dataclass
class _Staging:
    """A batch built on the task's thread, waiting for its XSD check and seal (in the stage thread)."""

    batch_id: str
    created: datetime
    members: pd.DataFrame
    sealed: Future  # -> (sealed payload, its plaintext's SHA-256, xsd seconds, encrypt seconds)
    valid: Future | None = None  # the XSD check in the checking child (Checker.validate_later): -> its seconds


class _BatchWriter:
    """Collects records to send and stages them as XSD-valid, encrypted payload batches, all in one
    interface version (§ 49): a batch never mixes versions.

    With `threads` (AMS_PREPARE_THREADS) a batch's XSD validation, gzip and encryption run in one stage
    thread while this thread builds the next batch's payload or checks the next chunk: libxml2, zlib,
    OpenSSL and hashlib release the GIL, so that work takes the second core. The batch is recorded
    (add_batch, the state DB's connection) on this thread, in build order, one batch behind: an XSD
    failure stops the run with the same error, the batches before it staged and none after it.

    With a `checker` whose child process checks the chunks, each batch's XSD check goes to that child
    (Checker.validate_later) while this thread encrypts it; a batch is recorded once the child has answered,
    in build order, so that this thread never waits for the chunk the child checks meanwhile."""

    def __init__(self, area: Area, run_id: str, settings: Settings, state: StateStore, vault: Vault,
                 created: dict[str, str], version: InterfaceVersion, timer: PhaseTimer | None = None,
                 threads: bool = False, checker: Checker | None = None):
        self.area, self.run_id, self.settings, self.state, self.vault = area, run_id, settings, state, vault
        self.timer = timer or PhaseTimer()
        self.created = created  # batch id -> CreatedDateTime of a discarded, never-sent build
        self.version = version
        self.pending: list[pd.DataFrame] = []
        self.pending_rows = 0
        self.batch_ids: list[str] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ams-stage") if threads else None
        self._staging: deque[_Staging] = deque()  # built, not yet recorded: the one the stage thread seals
        self._checker = checker

    def add(self, records: pd.DataFrame) -> None:
        """Stage every full batch of what is pending plus `records`; keep the remainder (a copy, less than a
        batch) for the next call. Each row is copied once: slicing the chunk, not concatenating what is left
        of it again for every batch (quadratic in the chunk's size)."""
        if records.empty:
            return
        if self.pending:
            records = pd.concat([*self.pending, records], ignore_index=True)
            self.pending = []
        size = self.settings.batch_size
        start = 0
        while len(records) - start >= size:
            self._flush(records.iloc[start:start + size].reset_index(drop=True))
            start += size
        if start < len(records):
            self.pending = [records.iloc[start:].reset_index(drop=True).copy()]
        self.pending_rows = len(records) - start

    def close(self) -> list[str]:
        if self.pending_rows:
            rest = pd.concat(self.pending, ignore_index=True)
            self.pending, self.pending_rows = [], 0
            self._flush(rest)
        while self._staging:
            self._record(self._staging.popleft())
        self.shutdown()
        return self.batch_ids

    def shutdown(self) -> None:
        """Stop the stage thread (after a failure: what it is sealing is dropped, never recorded)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._staging.clear()

    def _taken(self, batch_id: str) -> bool:
        return any(s.batch_id == batch_id for s in self._staging) or self.state.batch(batch_id) is not None

    def _flush(self, batch: pd.DataFrame) -> None:
        from transforms.payload import build_batch

        batch_id = _batch_id(self.area, self.run_id, batch, self._taken, self.settings.tenant)
        created = datetime.fromisoformat(self.created[batch_id]) if batch_id in self.created else datetime.now(UTC)
        with self.timer.phase("payload"):
            payload = build_batch(self.area, batch, batch_id=batch_id, created=created,
                                  sender_municipality=self.settings.sender_municipality, run_id=self.run_id,
                                  version=self.version)
        with self.timer.phase("add_batch"):
            members = batch[["record_key", "record_id", "content_hash", "action"]].assign(
                masked_person=masked_persons(self.area, batch).to_numpy())
        valid = self._checker.validate_later(payload) if self._checker is not None else None
        if self._pool is None:
            sealed: Future = Future()
            sealed.set_result(self._seal(payload, validate=valid is None))
        else:
            sealed = self._pool.submit(self._seal, payload, validate=valid is None)
        del payload
        self._staging.append(_Staging(batch_id, created, members, sealed, valid))
        if self._checker is not None and self._checker.in_child:  # the batches whose XSD check is answered
            self._checker.poll()
            while self._staging and (self._staging[0].valid is None or self._staging[0].valid.done()):
                self._record(self._staging.popleft())
            return
        # One batch sealing while the next is built: the one before it is recorded now.
        while len(self._staging) > 1 or (self._staging and self._pool is None):
            self._record(self._staging.popleft())

    def _seal(self, payload: bytes, validate: bool) -> tuple[bytes, str, float, float]:
        """XSD check (unless the checking child does it) and seal of one payload (in the stage thread when there
        is one); its timings."""
        from transforms.payload import validate_payload

        start = time.perf_counter()
        if validate:
            validate_payload(payload)  # nothing leaves that the XSD does not accept
        checked = time.perf_counter()
        sealed = self.vault.seal(payload)
        return sealed, sha256(payload), checked - start, time.perf_counter() - checked

    def _record(self, staging: _Staging) -> None:
        # The XSD's error, if any, is raised here: the batches before it are recorded, this one is not.
        if staging.valid is not None:
            self._checker.wait(staging.valid, self.timer)  # type: ignore[union-attr]
            self.timer.add("xsd", staging.valid.result())  # the child's time, as map/contract/quality's
        if self._pool is None:
            sealed, digest, xsd_seconds, encrypt_seconds = staging.sealed.result()
        else:
            with self.timer.phase("stage_wait"):  # what the stage thread's work still costs this thread
                sealed, digest, xsd_seconds, encrypt_seconds = staging.sealed.result()
        self.timer.add("xsd", xsd_seconds)
        self.timer.add("encrypt", encrypt_seconds)
        failpoints.point("prepare.staged")
        with self.timer.phase("add_batch"):
            # The encrypted payload goes into the state DB with the batch row, in one transaction: every
            # worker reaches it, and a batch never exists without its payload (shared-nothing workers).
            self.state.add_batch(batch_id=staging.batch_id, area=self.area.number, run_id=self.run_id,
                                 staged_path=STAGED_IN_DB, payload_sha256=digest,
                                 payload_created=staging.created.isoformat(), members=staging.members,
                                 payload=sealed, payload_name=PAYLOAD_FILE)
        self.batch_ids.append(staging.batch_id)


class _FirstChunk:
    """The source's chunks; with `threads` the first one is read in a thread while this thread imports Great
    Expectations (~4 s): the query's first step (SQLite sorts the area's rows, PostgreSQL runs the query)
    releases the GIL.

    Not the later chunks: read in a thread beside the checks (tried, 300k records) they moved only another
    ~3 s of CPU off this thread, held a second raw chunk (~200 MiB at 100,000 rows: over 1 GiB at 1M) and
    slowed both threads (the driver takes the GIL back for every row)."""

    def __init__(self, chunks: Iterator[pd.DataFrame], timer: PhaseTimer, threads: bool):
        self._chunks, self._timer = chunks, timer
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ams-extract") if threads else None
        self._first: Future | None = self._pool.submit(self._read) if self._pool is not None else None

    def slow(self, seconds: float) -> bool:
        """Whether the first chunk, read in the thread, is not there after `seconds`."""
        if self._first is None:
            return False
        try:
            self._first.exception(timeout=seconds)
        except FuturesTimeout:
            return True
        return False

    def _read(self) -> tuple[pd.DataFrame | None, float]:
        start = time.perf_counter()
        chunk = next(self._chunks, None)
        return chunk, time.perf_counter() - start

    def next(self) -> pd.DataFrame | None:
        if self._first is None:
            with self._timer.phase("extract"):
                return next(self._chunks, None)
        with self._timer.phase("extract_wait"):  # what the read in the thread still cost this thread
            chunk, seconds = self._first.result()
        self._timer.add("extract", seconds)
        self.shutdown()
        return chunk

    def chunks(self) -> Iterator[pd.DataFrame]:
        while (chunk := self.next()) is not None:
            yield chunk

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._first = None


def threads_pay(setting: str) -> bool:
    """Whether prepare's threads (AMS_PREPARE_THREADS) run: "on"/"1", "off"/"0", or "auto" (the default): when a
    second core is free as the task starts (checks.second_core_free). Each hand-over of the GIL waits for the OS to
    run the thread that takes it: 300k records on a 2-core machine at load 5 prepared in 115 s with threads, 97 s
    without; 1M on a quiet one (load 1) in 132-134 s with threads, 146-150 s without (docs/performance.md)."""
    chosen = switch(setting, "AMS_PREPARE_THREADS")
    return second_core_free() if chosen is None else chosen


def _classify(state: StateStore, area: Area, records: pd.DataFrame) -> tuple[pd.DataFrame, Counter, set[str]]:
    """Split validated records into what must be sent and what is unchanged since the last delivery.

    Column operations over the chunk's ledger diff (StateStore.ledger_diff), first matching rule wins:
    - in flight: its batch's outcome is not known yet; the delivery resolves it first (pending);
    - a deletion (§ 4 / principle 4): annulled at the receiver when the receiver holds an active
      version. What the receiver holds follows the last *accepted* action: a refused update after an
      accepted version leaves that version live, so it must be annulled too. Else unchanged;
    - accepted with this content and active at the receiver: unchanged;
    - refused with this exact content: stays in quarantine (rejected_unchanged);
    - else: to_update when a version was accepted before, to_create otherwise."""
    counts: Counter = Counter()
    diff = state.ledger_diff(area.number, records["record_key"].tolist())
    hashes = records["content_hash"].to_numpy(dtype=object)
    action = records["action"].to_numpy(dtype=object)
    in_flight = diff["in_flight"].to_numpy(dtype=bool)
    active = (diff["receiver_state"] == "active").to_numpy(dtype=bool)
    accepted_hash = diff["accepted_hash"].to_numpy(dtype=object)
    known = diff["accepted_hash"].notna().to_numpy(dtype=bool)
    annul = (action == mapping.ANNUL) & ~in_flight
    live = ~in_flight & ~annul
    same = live & active & (accepted_hash == hashes)
    refused_same = live & ~same & (diff["rejected_hash"].to_numpy(dtype=object) == hashes)
    changed = live & ~same & ~refused_same
    to_annul = annul & active
    # A record the ledger knows keeps the id it was delivered under (a municipality that moved to a
    # tenants file keeps its records' ids; a new record of a tenant gets an id with its kommunekode).
    stored = diff["record_id"].to_numpy(dtype=object)
    if "record_id" in records.columns and any(s is not None for s in stored):
        ids = records["record_id"].to_numpy(dtype=object)
        records = records.assign(record_id=np.where(pd.notna(stored), stored, ids))
    counts["pending"] += int(in_flight.sum())
    counts["to_annul"] += int(to_annul.sum())
    counts["unchanged"] += int((annul & ~active).sum() + same.sum())
    counts["rejected_unchanged"] += int(refused_same.sum())
    counts["to_update"] += int((changed & known).sum())
    counts["to_create"] += int((changed & ~known).sum())
    refused = set(records["record_key"].to_numpy(dtype=object)[refused_same])
    return records.loc[to_annul | changed], +counts, refused


@dataclass
class ReadPlan:
    """How much of the source a preparation reads (DESIGN.md principle 9)."""

    full: bool
    reason: str
    params: dict[str, Any]  # the query's change-detection parameters (empty: the full read)
    mark: str | None  # the source's change mark before the read: where the next read starts
    fingerprint: str


def _fingerprint(version: InterfaceVersion) -> str:
    """What the checks depend on beyond the source rows: the interface version, the code lists and the
    rule settings. When it changes, every record must be checked again: a full read."""
    from transforms.codelists import reference_dir

    digest = hashlib.sha256(version.name.encode())
    for name in ("AMS_RULE_SEVERITY", "AMS_AREA2_JOBPLAN_FROM"):
        digest.update(f"\n{name}={os.environ.get(name, '')}".encode())
    for path in sorted(reference_dir().glob("*.csv")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _read_plan(state: StateStore, area: Area, engine: Any, settings: Settings, period_end: date,
               version: InterfaceVersion, discarded: int) -> ReadPlan:
    """A full read when asked (--full), when the safety net is due, when nothing says where the last read
    got to, when the checks' inputs changed (fingerprint), when the period goes back, or when batches
    were discarded (their records must be staged again); else the changes since the last read."""
    from transforms.source import change_mark, db_value, supports_incremental

    fingerprint = _fingerprint(version)
    if not supports_incremental(area, engine):
        return ReadPlan(True, "the area's query reads everything", {}, None, fingerprint)
    mark = change_mark(engine, area)
    last = state.watermark(area.number)
    full_at: datetime | None = last["full_at"] if last else None
    if full_at is not None and full_at.tzinfo is None:
        full_at = full_at.replace(tzinfo=UTC)
    reason = ("asked for (--full / AMS_FULL_READ)" if settings.full_read else
              "no earlier read to continue from" if last is None or last["since"] is None else
              "the interface version, code lists or rule settings changed" if last["fingerprint"] != fingerprint else
              "the reporting period went back" if last["period_end"] > period_end.isoformat() else
              "batches never sent were discarded" if discarded else
              f"the weekly safety net ({settings.full_read_every_days} days)"
              if full_at is None or (datetime.now(UTC) - full_at).days >= settings.full_read_every_days else "")
    if reason:
        return ReadPlan(True, reason, {}, mark, fingerprint)
    assert last is not None
    since = db_value(datetime.fromisoformat(last["since"]), engine)
    recheck = date.fromisoformat(last["period_end"]) if last["period_end"] < period_end.isoformat() else None
    params = {"since": since, "recheck_after": None if recheck is None else db_value(recheck, engine)}
    return ReadPlan(False, f"changes since {last['since']}", params, mark, fingerprint)


def prepare_area(area_ref: int | str, *, run_id: str, period_end: date, settings: Settings) -> dict:
    """Extract, check and stage one area's batches. Returns small counts (fit for XCom)."""

    # § 49: the interface version in force on the run's date (the data interval's end the DAG passes in,
    # not today), so a re-run of an earlier day builds that day's version; its fields drive the whole cycle.
    version = version_in_force(period_end)
    area = version.area(get_area(area_ref))
    state = settings.state()
    vault = settings.vault()  # fails here, before any work, when the archive key is missing
    try:
        with state.area_lock(area.number, f"prepare {run_id}", settings.lock_wait_seconds):
            return _prepare(area, version, run_id=run_id, period_end=period_end, settings=settings, state=state,
                            vault=vault)
    except AreaBusy as exc:
        raise AreaDeliveryStopped(f"Area {area.number}: {exc}") from None


def _remove_stale_staging(settings: Settings, state: StateStore, area: Area) -> None:
    """Staged blobs that no open batch owns: they hold CPR payloads with no retention, so they go. In the
    state DB the transactions leave none behind (StateStore.remove_stale_staging is the safety net); on
    disk, folders staged before issue 10 whose batch is done are removed from this worker's disk."""
    keep = {b["batch_id"] for b in state.batches_in(area.number, (*OUTSTANDING, ACKNOWLEDGED))}
    state.remove_stale_staging(area.number)
    root = settings.home / "staging" / area.code
    if not root.exists():
        return
    for folder in root.iterdir():
        if folder.name not in keep:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()


def _prepare(area: Area, version: InterfaceVersion, *, run_id: str, period_end: date, settings: Settings,
             state: StateStore, vault: Vault) -> dict:
    from transforms.source import create_engine_from_url, extract_chunks

    state.start_area_run(run_id, area.number)
    # Batches never sent are rebuilt from the source; their ids and creation times are kept, so a
    # rebuild with the same records is byte-identical.
    discarded = state.discard_unsent_batches(area.number)
    created = {old["batch_id"]: old["payload_created"] for old in discarded if old.get("payload_created")}
    _remove_stale_staging(settings, state, area)
    timer = PhaseTimer()
    writer: _BatchWriter | None = None
    reader: _FirstChunk | None = None
    checker: Checker | None = None
    docs_dir = settings.data_docs_build_dir if settings.data_docs else None
    counts: Counter = Counter()
    rules: Counter = Counter()
    rejected_by_receiver: set[str] = set()
    read_hashes: list[np.ndarray] = []  # hash(record_key) of every record read: 8 bytes a record, not the key
    cover = FindingsCover()  # where a full read's chunks read the open findings: its end looks elsewhere
    docs_index = None
    engine = create_engine_from_url(settings.source_url)
    try:
        plan = _read_plan(state, area, engine, settings, period_end, version, len(discarded))
        counts["full_read"] = int(plan.full)
        log.info("area %s: %s read (%s)", area.number, "full" if plan.full else "incremental", plan.reason)
        chunks = extract_chunks(engine, area, chunksize=settings.chunksize, params=plan.params)
        process = process_pays(settings.prepare_process)
        # With a child checking a full read's chunks, the stage thread would take its time from this process's
        # own core (the child has the other): the batches are sealed here (docs/performance.md).
        threads = threads_pay(settings.prepare_threads) and not (
            process and plan.full and settings.prepare_threads == "auto")
        log.info("area %s: prepare's threads %s (AMS_PREPARE_THREADS=%s, AMS_PREPARE_PROCESS=%s)", area.number,
                 "on" if threads else "off", settings.prepare_threads, settings.prepare_process)
        if threads:
            one_malloc_arena()
        checker = Checker(area, tenant=settings.tenant, period_end=period_end, run_id=run_id, docs_dir=docs_dir,
                          process=process, chunksize=settings.chunksize)
        writer = _BatchWriter(area, run_id, settings, state, vault, created, version, timer, threads, checker)
        # The first chunk is read in a thread while Great Expectations imports here (not where a child may check
        # the chunks: it imports it there, and the task's memory is spared it).
        # With a child possible, a full read's first chunk is read in a thread too: a full read whose first chunk
        # takes a while (PostgreSQL sorts first: ~12 s at 1M records) reads a large source, so the child starts
        # meanwhile and imports the checks while the query runs (Checker.start_early). Not for a read of the
        # changes: it is mostly one chunk, however long its query takes (4-5 s on PostgreSQL at 1M).
        early = process and plan.full
        reader = _FirstChunk(chunks, timer, threads or early)
        if early and reader.slow(FIRST_CHUNK_SLOW_SECONDS):
            checker.start_early()
        if plan.full and threads:
            with timer.phase("quality"):  # while the source runs the query; a full read checks records
                import expectations.runner  # noqa: F401
        for checked in checker.checked(reader.chunks(), timer):
            for name, seconds in checked.seconds.items():
                timer.add(name, seconds)
            counts["out_of_scope"] += checked.out_of_scope
            counts["extracted"] += checked.extracted
            docs_index = checked.docs_index or docs_index
            found = checked.found
            with timer.phase("findings"):
                counts["findings_stored"] += state.record_findings(run_id, area.number, found,
                                                                   read=checked.read_keys,
                                                                   cover=cover if plan.full else None)
                read_hashes.append(np.fromiter(map(hash, checked.read_keys), dtype=np.int64))
            # Records, not findings: one record with three bad codes counts once for code.invalid.
            rules.update(f"{r.rule}:{r.severity}" for r in
                         found.drop_duplicates(["record_key", "rule", "severity"]).itertuples())
            errors = found[found["severity"] == "error"]
            with timer.phase("findings"):
                state.quarantine_rows(run_id, area.number, errors, checked.persons)
            counts["quarantined"] += errors["record_key"].nunique()
            with timer.phase("diff"):
                to_send, classified, refused = _classify(state, area, checked.good)
            counts.update(classified)
            # "warn": records sent for delivery with a warning (quarantined and unchanged ones are not).
            warned = set(found.loc[found["severity"] == "warning", "record_key"])
            sent = to_send.loc[to_send["action"] != mapping.ANNUL, "record_key"]
            counts["with_warnings"] += int(sent.isin(warned).sum())
            rejected_by_receiver |= refused
            writer.add(to_send)
            # Nothing of this chunk outlives it: the next chunk is read while these names would still
            # hold this one's frames (two chunks in memory at once).
            del checked, found, errors, to_send, sent, warned, refused
            release_free_memory()  # glibc keeps the freed frames otherwise: memory grew with the chunks
        batch_ids = writer.close()
    finally:
        if writer is not None:
            writer.shutdown()
        if reader is not None:
            reader.shutdown()
        if checker is not None:
            checker.shutdown()
        engine.dispose()
    # Records the receiver refused stay in quarantine until their content changes.
    with timer.phase("findings"):
        read = sorted_hashes(read_hashes)
        del read_hashes
        # After a read of the changes only, a record not read has not changed: its quarantine entry and
        # findings stand. After a full read, a record not read is gone from the source.
        state.release_quarantine(run_id, area.number, keep=rejected_by_receiver,
                                 read_hashes=None if plan.full else read)
        if plan.full:
            counts["findings_stored"] += state.resolve_findings_not_read(run_id, area.number, read, cover)
        else:
            # The records held back and not read (unchanged) are still held back: the run's counts show
            # the area's whole quarantine, as a full read's do (extracted = ... + quarantined + ...).
            standing = state.standing_quarantine(run_id, area.number, read)
            counts["quarantined"] += standing
            counts["extracted"] += standing
            counts["quarantine_not_read"] = standing
    # Where the next read starts. Records left pending (their batch's outcome unknown) were not staged
    # with their current content: the next preparation reads the whole source again to reach them.
    state.set_watermark(area.number, since=plan.mark if not counts.get("pending") else None,
                        period_end=period_end.isoformat(), fingerprint=plan.fingerprint, run_id=run_id,
                        full=plan.full)
    if docs_index and docs_dir is not None and not is_local(settings.reports_dir):
        # Great Expectations wrote the site on this worker's disk: publish it where every worker and the
        # UI read it (the object store), then name the stored index.
        with timer.phase("quality"):
            copy_tree(docs_dir, settings.reports_dir / "data_docs")
        docs_index = settings.reports_dir / "data_docs" / "index.html"
    counts["quarantined"] += counts.pop("rejected_unchanged", 0)
    counts["batches_staged"] = len(batch_ids)
    summary = {"area": area.number, **{k: int(v) for k, v in counts.items()}}
    state.update_area_run(run_id, area.number, status="prepared",
                          counts={**summary, "rules": dict(rules), "phases": timer.seconds_rounded(),
                                  "peak_rss_mib": round(peak_rss_mib()),
                                  **({"peak_rss_mib_checks": round(checker.child_peak_rss_mib)}
                                     if checker.child_peak_rss_mib else {})},
                          data_docs=str(docs_index) if docs_index else None)
    log.info("area %s prepared in interface version %s: %s", area.number, version.name,
             json.dumps(summary, sort_keys=True))
    return {"area": area.number, "batches": batch_ids, "interface_version": version.name, **summary}


# --- delivery -------------------------------------------------------------------------------------


class _Receiver:
    """The delivery client, built on first use inside the delivery's error handling: loading the WSDL
    is retried like any call, and a configuration error stops the area with its message."""

    def __init__(self, client: Any, on_ready: Callable[[], Any] | None = None):
        is_factory = self.is_factory(client)
        self._client = None if is_factory else client
        self._factory: Callable[[], Any] | None = client if is_factory else None
        self._on_ready = on_ready  # called once the client is built (delivery lanes: the others may start)

    @staticmethod
    def is_factory(client: Any) -> bool:
        """A function that builds a client (each call a new one), not a client."""
        return callable(client) and not hasattr(client, "submit")

    @property
    def built(self) -> Any:
        """The client if it has been built, else None."""
        return self._client

    def get(self) -> Any:
        from delivery.client import DeliveryError

        if self._client is None:
            assert self._factory is not None
            try:
                self._client = self._factory()
            except DeliveryError:
                raise
            except Exception as exc:  # a configuration problem: say what it is, once
                raise DeliveryError(f"the delivery client could not be set up: {exc}") from None
            if self._on_ready is not None:
                self._on_ready()
        return self._client


def deliver_area(area_ref: int | str, *, run_id: str, settings: Settings, client: Any) -> dict:
    """Send every outstanding batch of one area; in-doubt batches are looked up at the receiver first.

    `client` is a delivery client (AmsClient, SftpFileDropClient) or a function that builds one. Given a
    function, up to `settings.deliver_lanes` batches are on their way at once (AMS_DELIVER_LANES), each lane
    with a client of its own: see `_Lanes`."""
    area = get_area(area_ref)
    state = settings.state()
    counts: Counter = Counter()
    receipts: list[str] = []
    timer = PhaseTimer()
    try:
        vault = settings.vault()
        with state.area_lock(area.number, f"deliver {run_id}", settings.lock_wait_seconds):
            with timer.phase("archive"):
                unarchived = finish_archives(settings, state, vault, area.number)
            lanes = _Lanes(client, settings.deliver_lanes)
            for result in lanes.deliver(state.outstanding_batches(area.number), state, vault, settings, run_id,
                                        area, timer):
                if result is None:
                    counts["batches_lost"] += 1
                    continue
                if "receipt" in result:
                    receipts.append(result.pop("receipt"))
                unarchived += result.pop("unarchived", 0)
                counts.update(result)
            if unarchived:
                raise AreaDeliveryStopped(
                    f"Area {area.number}: {unarchived} acknowledged batch(es) could not be archived (see the "
                    "error above: disk full, archive folder not writable?). The receiver has them and the "
                    "ledger knows it; fix the archive location, then clear this task: it archives them "
                    "without sending anything.")
    except AreaBusy as exc:
        message = f"Area {area.number}: {exc}"
        state.update_area_run(run_id, area.number, status="delivery_failed", message=message, finished=True)
        raise AreaDeliveryStopped(message) from None
    except AreaDeliveryStopped as exc:
        state.update_area_run(run_id, area.number, status="delivery_failed", message=str(exc), finished=True)
        raise
    summary = {k: int(v) for k, v in counts.items() if k != "receipt"}
    state.update_area_run(run_id, area.number, status="delivered", message="", finished=True,
                          counts={"phases": timer.seconds_rounded(), "peak_rss_mib": round(peak_rss_mib())})
    return {"area": area.number, "receipts": receipts, **summary}


class _Lanes:
    """The outstanding batches delivered by one or more lanes: threads that each take the next batch and run
    `_deliver_batch` for it with a client of their own.

    One lane waits while the receiver works on its request, and the receiver waits while the lane signs the
    next request and stores the last receipt: with two lanes the task's work and the receiver's overlap (the
    same batches, in about half the time, docs/performance.md). The protocol is the one-lane protocol per
    batch: a batch is marked sent before its request leaves, so after a crash every batch a lane had on its way
    is in doubt and is looked up before anything is sent again (tests/test_delivery_model.py runs the model
    with two lanes). A lane that stops the area (access closed, retries exhausted, a crash) lets the other
    finish the batch it has started and take no other; the first such error is raised. A client given as an
    object (not a function that builds one), or one that says it is not `parallel_safe` (the SFTP channel),
    gets one lane."""

    def __init__(self, client: Any, lanes: int):
        self.client = client
        self.lanes = max(1, lanes) if _Receiver.is_factory(client) else 1

    def deliver(self, batches: list[dict], state: StateStore, vault: Vault, settings: Settings, run_id: str,
                area: Area, timer: PhaseTimer) -> list[dict | None]:
        """Each batch's result (see `_deliver_batch`), in the batches' order."""
        if self.lanes == 1 or len(batches) < 2:
            receiver = _Receiver(self.client)
            return [_deliver_batch(receiver, state, vault, batch, settings, run_id, area, timer) for batch in batches]
        results: dict[int, dict | None] = {}
        queue = deque(enumerate(batches))
        lock = threading.Lock()
        stop = threading.Event()
        failures: list[BaseException] = []

        # The lanes' state DB calls one at a time: each is a transaction of its own, as with one lane, and
        # SQLite never sees two writers of this task (a read transaction upgraded to a write fails at once).
        serial = cast(StateStore, _Serialized(state, threading.Lock()))  # the same methods, taken in turn

        first_ready = threading.Event()  # the first lane has built its client, or has ended
        first = _Receiver(self.client, on_ready=first_ready.set)

        def lane(number: int, lane_timer: PhaseTimer) -> None:
            if number == 0:
                receiver = first
            else:
                # Another client only once the first lane's is built: a receiver that is down is tried as
                # often as AMS_DELIVERY_ATTEMPTS says, by the first lane, and reported once.
                first_ready.wait()
                if stop.is_set() or first.built is None or not getattr(first.built, "parallel_safe", True):
                    return
                receiver = _Receiver(self.client)
                if _quietly(receiver) is None:
                    return
            try:
                lane_batches(receiver, lane_timer)
            finally:
                if number == 0:
                    first_ready.set()

        def lane_batches(receiver: _Receiver, lane_timer: PhaseTimer) -> None:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    index, batch = queue.popleft()
                try:
                    results[index] = _deliver_batch(receiver, serial, vault, batch, settings, run_id, area, lane_timer)
                except BaseException as exc:  # noqa: BLE001 - a crash too: raised by the task, after both lanes
                    with lock:
                        failures.append(exc)
                    stop.set()
                    return

        timers = [PhaseTimer() for _ in range(min(self.lanes, len(batches)))]
        threads = [threading.Thread(target=lane, args=(n, t), name=f"ams-deliver-{n}", daemon=True)
                   for n, t in enumerate(timers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for lane_timer in timers:  # each phase summed over the lanes (they overlap: more than the wall time)
            for name, seconds in lane_timer.seconds.items():
                timer.add(name, seconds)
        if failures:
            raise failures[0]
        return [results[i] for i in sorted(results)]


class _Serialized:
    """An object whose method calls take a lock: one call at a time across threads."""

    def __init__(self, target: Any, lock: threading.Lock):
        self._target, self._lock = target, lock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return call


def _quietly(receiver: _Receiver) -> Any:
    """The receiver's client, or None when it cannot be built (the first lane reports why)."""
    try:
        return receiver.get()
    except Exception:  # noqa: BLE001
        return None


def _stop(area: Area, batch: dict, what: str) -> AreaDeliveryStopped:
    return AreaDeliveryStopped(f"Area {area.number}, batch {batch['batch_id']}: {what}")


def _deliver_batch(receiver: _Receiver, state: StateStore, vault: Vault, batch: dict, settings: Settings,
                   run_id: str, area: Area, timer: PhaseTimer | None = None) -> dict | None:
    """Resolve one outstanding batch: its counts (with "receipt"), or None when it was lost.

    A batch is in doubt once a POST may have reached the receiver (status sent/unknown, or a failure
    after `mark_sending` in this call): then GetBatchReceipt is asked first, and only the receiver's
    "unknown batch" answer lets the same bytes be sent again (DESIGN.md, principle 3)."""
    from delivery.client import (
        AccessClosed,
        BusinessFault,
        DeliveryError,
        SignatureRefused,
        TransientDeliveryError,
    )
    from transforms.payload import ERR_BATCH_REUSED

    batch_id = batch["batch_id"]
    label = f"area {area.number} batch {batch_id}"
    in_doubt = batch["status"] in ("sent", "unknown")
    claimed = int(batch.get("attempts") or 0)  # the claim's compare-and-set value (mark_sending)
    timer = timer or PhaseTimer()
    may_have_arrived = ("It may have reached the receiver: clear this task when the cause is fixed; the receiver "
                        "is asked about it first, so nothing is sent twice.")

    def halt(exc: Exception, what: str) -> AreaDeliveryStopped:
        """Stop the area; a batch that may have reached the receiver stays in doubt (never `built`)."""
        if in_doubt:
            state.mark_in_doubt(batch_id, str(exc))
        return _stop(area, batch, what)

    for attempt in range(1, settings.delivery_attempts + 1):
        asking = False
        try:
            client = receiver.get()
            if in_doubt:
                asking = True
                with timer.phase("send"):
                    receipt = client.get_batch_receipt(batch_id)
                asking = False
                if receipt is not None:
                    log.info("%s: the receiver already had it; receipt %s recovered", label, receipt.message_id)
                    return _store(state, settings, vault, batch, receipt, run_id,
                                  lookup_request=receipt.request_bytes, timer=timer)
                log.info("%s: not received by the receiver; sending it", label)
            payload, payload_blob = _read_staged_keeping(vault, state, batch, PAYLOAD_FILE)
            if payload is None or sha256(payload) != batch["payload_sha256"]:
                # Never received (the receiver said so, or it was never sent) and its bytes are gone:
                # free its records; the next preparation stages them again.
                reason = ("its staged payload is missing" if payload is None
                          else "its staged payload is damaged (checksum or decryption fails)")
                state.mark_lost(batch_id, f"{reason}; the receiver does not have it")
                log.error("%s: %s, and the receiver does not have it. Its %d record(s) are staged again by the "
                          "next run (docs/operations.md, 'Batch states').", label, reason, batch["record_count"])
                return None
            if not state.mark_sending(batch_id, attempts=claimed):
                # Another task marked it sending since we read it: that task owns its outcome now.
                log.warning("%s: claimed by another task meanwhile; left to it (nothing sent here)", label)
                return {}
            claimed += 1
            in_doubt = True
            failpoints.point("deliver.before_post")
            with timer.phase("send"):
                receipt = client.submit(payload)
            failpoints.point("deliver.after_reply")
            return _store(state, settings, vault, batch, receipt, run_id, timer=timer, sent=(payload, payload_blob))
        except TransientDeliveryError as exc:
            if in_doubt:
                state.mark_in_doubt(batch_id, str(exc))
            else:
                state.note_error(batch_id, str(exc))
            if attempt == settings.delivery_attempts:
                raise _stop(area, batch, (
                    f"no receipt after {attempt} attempts (last attempt: {exc}). "
                    + (may_have_arrived if in_doubt else
                       "It has not been sent: the receiver could not be reached. Clear this task to try again.")
                )) from None
            pause = settings.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("%s: transient fault (%s); attempt %d of %d, retrying in %.1f s",
                        label, exc, attempt, settings.delivery_attempts, pause)
            time.sleep(pause)
        except AccessClosed as exc:
            raise halt(exc, f"the agency has closed access (§ 48): {exc}. Nothing more is sent for this area. "
                            "Contact the agency; when access is restored, clear this task in the Airflow UI.") from None
        except SignatureRefused as exc:
            # Our signing key or certificate is wrong, not the records: the batch is kept as it is.
            raise halt(exc, f"the receiver refused our WS-Security signature: {exc}. Check the signing key and "
                            "certificate (the connection's private_key / signing_cert, or AMS_SIGNING_KEY / "
                            "AMS_SIGNING_CERT), then clear this task.") from None
        except BusinessFault as exc:
            if asking or exc.code == ERR_BATCH_REUSED:
                # A refused lookup says nothing about the batch; 1030 says the receiver holds another
                # batch under this id. Either way only a person can tell: the batch stays in doubt.
                raise halt(exc, f"the receiver answered {'the receipt lookup' if asking else 'the delivery'} with "
                                f"{exc}. The batch stays in doubt and nothing of it is sent again until the receiver "
                                "answers the lookup. Contact the agency with the batch id.") from None
            # The receiver refused the whole message (schema, validation): its records are quarantined.
            return _store(state, settings, vault, batch, _rejected_receipt(state, batch, exc), run_id, timer=timer)
        except DeliveryError as exc:
            raise halt(exc, f"{str(exc).rstrip('.')}. " + (
                may_have_arrived if in_doubt else "Nothing was sent. Fix the cause, then clear this task.")) from None
    raise AssertionError("unreachable")


def _staged_blob(state: StateStore, batch: dict, name: str) -> bytes | None:
    """A batch's staged blob (encrypted), None when it is missing. Batches staged before issue 10 have a
    file path in `staged_path`: their files are read where they are (an upgrade with batches open)."""
    blob = state.staged_blob(batch["batch_id"], name)
    if blob is None and (batch.get("staged_path") or STAGED_IN_DB) not in (STAGED_IN_DB, "-"):
        legacy = Path(batch["staged_path"]).parent / name
        blob = legacy.read_bytes() if legacy.is_file() else None
    return blob


def _read_staged_keeping(vault: Vault, state: StateStore, batch: dict, name: str,
                         ) -> tuple[bytes | None, bytes | None]:
    """A staged blob decrypted (b"" when it cannot be decrypted: damaged, or no configured key opens it; None when
    it is missing), with the staged blob itself when it is sealed with the newest key (the archive
    stores it as it is: `Vault.open_keeping`), else None."""
    from cryptography.fernet import InvalidToken

    blob = _staged_blob(state, batch, name)
    if blob is None:
        return None, None
    try:
        plain, keep = vault.open_keeping(blob)
    except (InvalidToken, OSError, EOFError):  # OSError/EOFError: a damaged gzip stream inside a valid token
        return b"", None
    return plain, blob if keep else None


def _store(state: StateStore, settings: Settings, vault: Vault, batch: dict, receipt, run_id: str,
           lookup_request: bytes | None = None, timer: PhaseTimer | None = None,
           sent: tuple[bytes, bytes | None] | None = None) -> dict:
    """Stage the receipt's bytes, store it in the ledger (acknowledged), then archive. The staged
    receipt lets a later task finish the archive when this one cannot (disk full, crash). `sent`: the payload
    this task just sent and its staged blob (as `_read_staged_keeping` gave them), archived without reading and
    decrypting them again."""
    state.stage(batch["batch_id"], RECEIPT_FILE, vault.seal(receipt.response_bytes or b""))
    if lookup_request is not None:
        state.stage(batch["batch_id"], LOOKUP_REQUEST_FILE, vault.seal(lookup_request))
    failpoints.point("deliver.receipt_staged")
    results = {r.record_id: (r.status, None if r.error_code is None else str(r.error_code), r.error_text)
               for r in receipt.records}
    timer = timer or PhaseTimer()
    with timer.phase("receipt"):
        stored = state.apply_receipt(
            batch["batch_id"], run_id=run_id, outcome=str(receipt.batch_status).lower(),
            message_id=receipt.message_id, event_date=str(receipt.event_date), record_results=results,
            recovered=lookup_request is not None)
    if stored is None:  # stored before by another try: nothing to count twice
        return {}
    accepted, rejected = stored
    failpoints.point("deliver.acknowledged")
    # The accepted annulments, as apply_receipt counted them (not the members read again).
    stored_batch = state.batch(batch["batch_id"]) or batch
    annulled = int(stored_batch.get("annulled_count") or 0)
    with timer.phase("archive"):
        archived = _archive(settings, state, vault, stored_batch, sent)
    counts = {"accepted": accepted, "rejected": rejected, "annulled": annulled,
              "recovered" if lookup_request is not None else "batches_sent": 1, "unarchived": int(not archived)}
    if not str(receipt.message_id).startswith("fault-"):
        counts["receipt"] = receipt.message_id
    else:
        counts["batches_rejected"] = 1
    return counts


PAYLOAD_LOST = "payload lost before archiving"


def _archive(settings: Settings, state: StateStore, vault: Vault, batch: dict,
             sent: tuple[bytes, bytes | None] | None = None) -> bool:
    """Archive an acknowledged batch from its staging folder and remove the folder. False on a failure
    worth retrying (disk full, folder not writable): the batch stays acknowledged and the next deliver
    or report task tries again. A staged payload that is gone or damaged cannot be archived as the
    exact bytes sent by any retry: the batch stays acknowledged, the error says so (verify-archive
    reports it), and the area is not blocked for it."""
    from cryptography.fernet import InvalidToken

    area = get_area(batch["area"])
    label = f"area {area.number} batch {batch['batch_id']}"
    # The payload this task sent (its checksum checked before it left), else the staged one.
    payload, payload_blob = sent if sent is not None else _read_staged_keeping(vault, state, batch, PAYLOAD_FILE)
    if payload is None or (sent is None and sha256(payload) != batch["payload_sha256"]):
        if PAYLOAD_LOST not in (batch.get("last_error") or ""):
            state.note_error(batch["batch_id"], f"{PAYLOAD_LOST}: the staged payload is "
                             f"{'missing' if payload is None else 'damaged'}; the receiver holds the batch and the "
                             "ledger knows its receipt, but the exact bytes sent cannot be archived")
            log.error("%s: acknowledged, but its staged payload is %s: the exact bytes sent cannot be archived. "
                      "The receipt stays staged; `ams-report verify-archive` reports the batch.", label,
                      "missing" if payload is None else "damaged")
        return True
    try:
        # The staged blobs sealed with the newest key are archived as they are (their plaintext is not
        # compressed and encrypted again); the manifest's checksums are of the same plaintext.
        sealed = {PAYLOAD_FILE: payload_blob} if payload_blob is not None else {}

        def unseal(name: str) -> bytes | None:
            blob = _staged_blob(state, batch, name)
            if blob is None:
                return None
            plain, keep = vault.open_keeping(blob)
            if keep:
                sealed[name] = blob
            return plain

        response = unseal(RECEIPT_FILE)
        if response is None:
            raise FileNotFoundError(2, f"staged {RECEIPT_FILE} of batch {batch['batch_id']} is missing", RECEIPT_FILE)
        lookup = unseal(LOOKUP_REQUEST_FILE)
        acknowledged = batch.get("acknowledged_at") or datetime.now(UTC)
        target = archive_batch(
            vault, settings.archive_dir, area=area.number, batch_id=batch["batch_id"], run_id=batch["run_id"],
            request=payload, response=response, record_count=batch["record_count"],
            accepted=batch.get("accepted_count") or 0, rejected=batch.get("rejected_count") or 0,
            receipt_id=batch.get("receipt_message_id") or "", day=acknowledged.date(),
            lookup_request=lookup, sealed=sealed,
            # the payload's checksum, checked against the staged plaintext above (or before it was sent)
            digests={PAYLOAD_FILE: batch["payload_sha256"]})
        failpoints.point("archive.written")
    except (OSError, ValueError, InvalidToken) as exc:
        detail = (f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError)
                  else str(exc) or "a staged file cannot be decrypted with the configured key(s)")
        state.note_error(batch["batch_id"], f"archive failed: {detail}")
        log.error("%s: acknowledged, but the archive could not be written (%s); the next deliver or report "
                  "task tries again", label, detail)
        return False
    # Archived and unstaged in one transaction of the state DB.
    if state.mark_archived(batch["batch_id"], str(target)):
        legacy = Path(batch.get("staged_path") or STAGED_IN_DB).parent
        if legacy.is_absolute() and legacy.name == batch["batch_id"]:  # staged on disk before issue 10
            shutil.rmtree(legacy, ignore_errors=True)
    return True


def finish_archives(settings: Settings, state: StateStore, vault: Vault, area: int | None = None) -> int:
    """Archive every acknowledged batch (of one area, or all); returns how many are still not archived.
    Without `area` (the report task) each area is taken under its lock, and an area busy with another
    task is left to that task."""
    if area is not None:
        return sum(not _archive(settings, state, vault, b) for b in state.batches_in(area, (ACKNOWLEDGED,)))
    failed = 0
    for number in state.areas_with(ACKNOWLEDGED):
        try:
            with state.area_lock(number, "archive", wait_seconds=0):
                failed += finish_archives(settings, state, vault, number)
        except AreaBusy:
            continue
    return failed


def apply_archive_retention(settings: Settings) -> list[StorePath]:
    """Delete archived day folders older than AMS_ARCHIVE_RETENTION_DAYS (unset: keep everything)."""
    if settings.archive_retention_days is None or not settings.archive_dir.exists():
        return []
    removed = apply_retention(settings.archive_dir, settings.archive_retention_days)
    for folder in removed:
        log.info("archive retention: removed %s (older than %d days)", folder, settings.archive_retention_days)
    return removed


def _rejected_receipt(state: StateStore, batch: dict, fault):
    """A business fault rejects the whole batch: a receipt-like object so the ledger records why.
    Its answer bytes are the fault the receiver sent (archived as the batch's receipt)."""
    from delivery.client import Receipt, RecordReceipt

    members = state.batch_members(batch["batch_id"])
    return Receipt(
        message_id=f"fault-{fault.code}", event_date=datetime.now(UTC), batch_id=batch["batch_id"],
        batch_status="REJECTED",
        records=[RecordReceipt(rid, "REJECTED", fault.code, fault.text) for rid in members["record_id"]],
        request_bytes=getattr(fault, "request_bytes", b"") or b"",
        response_bytes=getattr(fault, "response_bytes", b"") or b"")

"""The checks of one chunk of source rows, and where they run: in the task's process, or in a child process
while the task stores the chunk before (AMS_PREPARE_PROCESS).

`check_chunk` is a pure function of the chunk and the reference data: map, contract, the quality suite,
strip + content hash. What it returns is everything `cycle.pipeline._prepare` needs to record the chunk in the
state DB and stage its batches; it reads and writes no state, so it can run in any process.

`Checker` gives the checked chunks in the order the chunks came:
- in-process: each chunk is checked when it is read;
- in a child process (`spawn`, one worker): the task reads chunk N+1 and hands it over while the child checks
  chunk N, and records chunk N-1 while the child checks N+1. Of prepare's work the checks are about half
  (map, contract, quality, hash: ~90 of ~190 s at 1M), and the task's own half (extract, the state DB, the
  batches) does not need them until they are done: two processes take both cores, where threads could not
  (the GIL, docs/performance.md). At most two chunks are with the child (one checked, one waiting), and the
  child's peak memory is reported beside the task's. The child also takes up to three staged batches' XSD
  checks (`Checker.validate_later`), and starts while a slow first chunk is read (`Checker.start_early`).

No Airflow import here.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import pickle
import queue
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cycle.timing import PhaseTimer, peak_rss_mib, release_free_memory
from transforms import mapping
from transforms.contracts import FINDING_COLUMNS, check_contract
from transforms.identifiers import mask_cpr
from transforms.registry import Area, get_area

log = logging.getLogger(__name__)


@dataclass
class CheckedChunk:
    """One chunk after its checks: what the task records and stages."""

    extracted: int  # records mapped (live and annulments)
    out_of_scope: int
    read_keys: list[str]  # every record read: the mapped ones, then those now outside the area's scope
    found: pd.DataFrame  # the findings of the contract and the quality suite, one per record, rule and field
    persons: dict[str, str]  # record key -> masked person, for the records with an error (the quarantine's)
    good: pd.DataFrame  # records without an error, not-applicable fields stripped, with content_hash
    docs_index: str | None = None  # the Data Docs page this chunk's validation built
    seconds: dict[str, float] = field(default_factory=dict)  # per check phase
    peak_rss_mib: float = 0.0  # of the process that checked it

    # From the child to the task, `good` travels with its date columns as datetime64 (one buffer each), not a
    # `datetime.date` object per value to pickle and build again: a chunk of 25,000 there and back in half the
    # time (0.15 -> 0.08 s).
    def __getstate__(self) -> dict:
        return {**self.__dict__, "good": _DatesPacked(self.good)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, good=state["good"].frame())


class _DatesPacked:
    """A frame whose object columns of dates (`datetime.date` or None, nothing else) are held as datetime64[D];
    `frame()` gives the frame back as it was: the same columns in the same order, the same values and types."""

    SAMPLE = 64  # a column is looked at whole only where one of its first values is a date

    def __init__(self, frame: pd.DataFrame):
        self.columns = list(frame.columns)
        self.dates: dict[str, np.ndarray] = {}
        for name in self.columns:
            column = frame[name]
            if column.dtype != object or not any(type(v) is date for v in column.iloc[:self.SAMPLE]):
                continue
            values = column.tolist()
            if set(map(type, values)) <= {date, type(None)}:
                self.dates[name] = _days(values)
        self.rest = frame.drop(columns=list(self.dates)) if self.dates else frame

    def frame(self) -> pd.DataFrame:
        if not self.dates:
            return self.rest
        out = self.rest.assign(**{name: days.astype(object) for name, days in self.dates.items()})  # NaT: None
        return out[self.columns]


_EPOCH = date(1970, 1, 1).toordinal()


def _days(values: list) -> np.ndarray:
    """`datetime.date`s (None: NaT) as datetime64[D], by their ordinals (numpy's own conversion of date objects
    took 15 times as long)."""
    ordinals = np.fromiter((_EPOCH if v is None else v.toordinal() for v in values), dtype=np.int64,
                           count=len(values))
    days = (ordinals - _EPOCH).astype("datetime64[D]")
    days[np.fromiter((v is None for v in values), dtype=bool, count=len(values))] = np.datetime64("NaT")
    return days


def masked_persons(area: Area, records: pd.DataFrame) -> pd.Series:
    if area.person_field:
        return records[area.person_field].map(mask_cpr)
    first = records["person_cprs"].map(lambda v: v[0] if v else None)
    return first.map(mask_cpr)


def _quality(area: Area, records: pd.DataFrame, period_end: date, run_id: str, docs_dir: Path | None):
    from expectations.runner import run_quality  # GX is heavy: import only where it runs

    return run_quality(area, records, period_end=period_end, run_id=run_id, data_docs_dir=docs_dir)


def check_chunk(area: Area | int, chunk: pd.DataFrame, *, tenant: str | None, period_end: date, run_id: str,
                docs_dir: Path | None) -> CheckedChunk:
    """Map, contract, quality suite, strip + hash of one chunk. `run_id` names this chunk's validation."""
    area = get_area(area) if not isinstance(area, Area) else area
    seconds: dict[str, float] = {}

    def timed(name: str, start: float) -> float:
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - start
        return now

    start = time.perf_counter()
    mapped = mapping.map_records(area, chunk, tenant)
    # Each frame is dropped as soon as it is no longer needed: the peak holds as few copies of the chunk as
    # possible.
    del chunk
    start = timed("map", start)
    records = mapped.records
    out_of_scope = mapped.out_of_scope["record_key"].tolist()
    del mapped
    live = records[records["action"] != mapping.ANNUL]
    findings = [check_contract(area, live)]
    start = timed("contract", start)
    docs_index = None
    if len(live):
        result = _quality(area, live, period_end, run_id, docs_dir)
        findings.append(result.findings)
        docs_index = str(result.docs_index) if result.docs_index else None
        del result
        start = timed("quality", start)
    found = (pd.concat([f for f in findings if len(f)], ignore_index=True) if any(len(f) for f in findings)
             else pd.DataFrame(columns=FINDING_COLUMNS))
    del findings
    # A range is checked by both layers (registry bounds): one finding per record, rule and field.
    found = found.drop_duplicates(["record_key", "rule", "field"], ignore_index=True)
    bad = set(found.loc[found["severity"] == "error", "record_key"])
    erring = live[live["record_key"].isin(bad)]
    persons = dict(zip(erring["record_key"], masked_persons(area, erring), strict=True))
    del live, erring
    good = mapping.strip_not_applicable(area, records[~records["record_key"].isin(bad)])
    good = good.assign(content_hash=mapping.content_hashes(area, good))
    timed("hash", start)
    # A row read but outside the area's scope now (its person's group changed) was read too: its findings
    # and quarantine entry no longer hold.
    read_keys = [*records["record_key"].tolist(), *out_of_scope]
    return CheckedChunk(extracted=len(records), out_of_scope=len(out_of_scope), read_keys=read_keys, found=found,
                        persons=persons, good=good, docs_index=docs_index, seconds=seconds,
                        peak_rss_mib=peak_rss_mib())


def _validated(payload: bytes) -> float:
    """The XSD check of one staged batch's payload (what `cycle.pipeline._BatchWriter` would do itself); its
    seconds."""
    from transforms.payload import validate_payload

    start = time.perf_counter()
    validate_payload(payload)  # nothing leaves that the XSD does not accept
    return time.perf_counter() - start


def dumps(message: Any) -> bytes:
    """A message between the task and its checking child, pickled without pickle's memo ("fast" mode): the
    frames' object columns are written value by value, and the memo of every value took more than half the
    time (a raw chunk of 50,000 rows: 0.32 s, 0.13 s without; loading it 0.13 s, 0.09 s). What refers to itself
    cannot be pickled so: it is pickled the usual way."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: nothing in a chunk, a payload or a checked chunk refers to itself
    try:
        pickler.dump(message)
    except (ValueError, RecursionError):  # a cycle after all
        return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return buffer.getvalue()


def _pickled(answer: tuple) -> bytes:
    """The answer, pickled here (`dumps`): a queue pickles in a thread of its own and only prints what it cannot
    pickle, and the task would wait for an answer that never comes. An exception that cannot make the trip
    becomes a RuntimeError with its type and message."""
    try:
        data = dumps(answer)
        if answer[0] == "failed":
            pickle.loads(data)  # an exception whose class cannot be rebuilt from its arguments fails here
        return data
    except Exception:
        failed = answer[1]
        return pickle.dumps(("failed", RuntimeError(f"{type(failed).__name__}: {failed}")))


def serve(tasks, results, area: int, kwargs: dict) -> None:
    """The child's loop: answer each request of the task in the order it came; None ends it. A request is
    ("check", run_id, chunk): check_chunk; or ("xsd", payload): the XSD check of one batch."""
    while (message := tasks.get()) is not None:
        task = pickle.loads(message)
        del message
        kind = task[0]
        try:
            if kind == "xsd":
                answer: tuple = ("valid", _validated(task[1]))
            else:
                answer = ("checked", check_chunk(area, task[2], run_id=task[1], **kwargs))
        except Exception as exc:  # the task raises it as if the work had run there
            answer = ("failed", exc)
        del task
        results.put(_pickled(answer))
        del answer
        if kind != "xsd":
            release_free_memory()  # the child lives for the whole read: its freed frames go back every chunk


class CheckerStopped(RuntimeError):
    """The child process checking the chunks ended before it answered (killed, out of memory)."""


class _Child:
    """One `spawn`ed process (a fork of a task process with threads, Airflow's or the stage thread's, may
    inherit a held lock) and its two queues. A queue pickles what is put in a thread of its own and lets go of
    the object once pickled: the task keeps no chunk it has handed over (an executor's future would keep it
    until its answer came), and reads an answer only when it asks for it."""

    def __init__(self, area: int, kwargs: dict):
        context = multiprocessing.get_context("spawn")
        self.tasks, self.results = context.Queue(), context.Queue()
        self.process = context.Process(target=serve, args=(self.tasks, self.results, area, kwargs),
                                       name="ams-checks", daemon=True)
        self.process.start()

    def send(self, request: tuple) -> None:
        self.tasks.put(dumps(request))

    def ready(self) -> bool:
        """Whether an answer is waiting (a hint: `answer` may still wait a moment)."""
        return not self.results.empty()

    def answer(self) -> tuple[str, Any]:
        """The next answer: ("checked", CheckedChunk), ("valid", seconds) or ("failed", exception)."""
        while True:
            try:
                data = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise CheckerStopped(
                        f"The process checking the source's chunks ended without an answer (exit code "
                        f"{self.process.exitcode}: out of memory, or killed). Nothing of the unchecked chunks was "
                        "staged; clear the prepare task to run it again, or set AMS_PREPARE_PROCESS=off to check "
                        "the chunks in the task's own process.") from None
        return pickle.loads(data)

    def stop(self, *, at_once: bool) -> None:
        """End the child: `at_once` (a failure, chunks still unanswered: what it holds is dropped), else once it
        has taken the end of its work."""
        self.tasks.cancel_join_thread()  # never wait at exit for a chunk the child will not read
        if self.process.is_alive() and not at_once:
            try:
                self.tasks.put(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.tasks.close()
        self.results.close()


def _start_child(area: int, kwargs: dict) -> _Child | None:
    """The child, or None where a process cannot start here."""
    if multiprocessing.current_process().daemon:
        # A daemonic process may not have children (a Celery prefork child, a multiprocessing pool's).
        log.info("prepare checks the chunks in the task's process: this process is daemonic")
        return None
    try:
        return _Child(area, kwargs)
    except (OSError, RuntimeError, AssertionError) as exc:
        log.warning("prepare checks the chunks in the task's process: no child process could start (%s)",
                    type(exc).__name__)
        return None


class Checker:
    """Checked chunks in the order the chunks came, checked here or in a child process; with a child, the staged
    batches' XSD checks go there too (`validate_later`).

    With `process` the child starts when the first chunk is full (`chunksize` rows: more may follow): a read
    of one chunk (a small municipality, a day's changes) has nothing to overlap, and starting a child and
    importing the checks there (~5 s) would cost more than it saves. Where the first chunk is slow to come
    (`start_early`, for a full read: PostgreSQL sorts before the first row, ~12 s at 1M records) the child starts
    while it is read, and is stopped again if the read is one chunk after all.

    The child answers in the order it was asked. Of prepare's work at 1M the task's own (extract, the state DB,
    building, encrypting and recording the batches) took ~84 s and the child's checks ~59 s: the XSD check of
    each batch (~16 s) is the piece that moves without another round trip, so it goes to the child, which takes
    it after the chunk it is checking."""

    # Chunks handed to the child and not yet answered, at most: the one it checks and the next, which waits
    # pickled in this process's queue until the child takes it.
    AHEAD = 2
    # Batches whose XSD check waits in the child, at most. A batch's check waits behind the chunk the child is
    # checking, its payload (~8 MB at 5,000 records) held in this process's queue meanwhile: beyond these the
    # task checks the batch itself, which also keeps the two processes' work even (docs/performance.md).
    XSD_AHEAD = 3

    def __init__(self, area: Area, *, tenant: str | None, period_end: date, run_id: str,
                 docs_dir: Path | None, process: bool, chunksize: int):
        self.area = area
        self.kwargs: dict[str, Any] = {"tenant": tenant, "period_end": period_end, "docs_dir": docs_dir}
        self.run_id = run_id
        self.process, self.chunksize = process, chunksize
        self.in_child = False  # whether this read's chunks went to a child
        self.child_peak_rss_mib = 0.0
        self._child: _Child | None = None
        # The child's requests not yet answered, in order: None for a chunk, the Future of a batch's XSD check.
        self._asked: deque[Future | None] = deque()
        self._answered: deque[CheckedChunk] = deque()  # checked chunks taken while waiting for an XSD check

    def checked(self, chunks: Iterator[pd.DataFrame], timer: PhaseTimer) -> Iterator[CheckedChunk]:
        """The checked chunks in order; with a child, the time this process waited for one is `check_wait`."""
        for index, chunk in enumerate(chunks):
            run_id = f"{self.run_id}-{index}"
            if index == 0:
                full = self.process and len(chunk) >= self.chunksize
                if full and self._child is None:
                    self._child = _start_child(self.area.number, self.kwargs)
                elif not full and self._child is not None:  # started early, and the read is one chunk after all
                    self._child.stop(at_once=True)
                    self._child = None
                self.in_child = self._child is not None
                log.info("area %s: the chunks are checked in %s", self.area.number,
                         "a child process" if self.in_child else "the task's process")
            if self._child is None:
                yield check_chunk(self.area, chunk, run_id=run_id, **self.kwargs)
                continue
            self._child.send(("check", run_id, chunk))
            del chunk
            self._asked.append(None)
            while self._chunks_out() >= self.AHEAD:
                yield self._next_chunk(timer)
        while self._chunks_out():
            yield self._next_chunk(timer)

    def start_early(self) -> None:
        """Start the child before the first chunk is read (its imports take ~5 s; a slow first chunk, a large
        source, is read meanwhile). `checked` stops it again when the read is one chunk after all."""
        if self.process and self._child is None:
            self._child = _start_child(self.area.number, self.kwargs)
            log.info("area %s: the first chunk is slow to come; the checking child starts meanwhile",
                     self.area.number)

    def validate_later(self, payload: bytes) -> Future | None:
        """Hand a staged batch's XSD check to the child: its Future (the check's seconds, or the PayloadError),
        or None where there is no child, or `XSD_AHEAD` checks wait there already (the caller checks it itself)."""
        if self._child is None:
            return None
        self.poll()
        if sum(asked is not None for asked in self._asked) >= self.XSD_AHEAD:  # XSD checks not yet answered
            return None
        done: Future = Future()
        self._child.send(("xsd", payload))
        self._asked.append(done)
        return done

    def poll(self) -> None:
        """Take the answers the child has ready, without waiting."""
        while self._asked and self._child is not None and self._child.ready():
            self._take()

    def wait(self, done: Future, timer: PhaseTimer) -> None:
        """Take answers until `done` has its outcome (time waited: `check_wait`)."""
        if not done.done():
            with timer.phase("check_wait"):
                while not done.done():
                    self._take()

    def _next_chunk(self, timer: PhaseTimer) -> CheckedChunk:
        with timer.phase("check_wait"):
            while not self._answered:
                self._take()
        return self._answered.popleft()

    def _chunks_out(self) -> int:
        """Chunks handed to the child and not yet given back by `checked`: unanswered, or answered and kept."""
        return sum(asked is None for asked in self._asked) + len(self._answered)

    def _take(self) -> None:
        """The child's next answer, given to what asked for it: a chunk's is kept for `checked` (a chunk the
        child could not check raises here), an XSD check's settles its Future."""
        assert self._child is not None and self._asked  # only asked for where requests went to the child
        kind, value = self._child.answer()
        asked = self._asked.popleft()
        if asked is not None:
            asked.set_exception(value) if kind == "failed" else asked.set_result(value)
            return
        if kind == "failed":
            raise value
        self.child_peak_rss_mib = max(self.child_peak_rss_mib, value.peak_rss_mib)
        self._answered.append(value)

    def shutdown(self) -> None:
        if self._child is not None:
            self._child.stop(at_once=bool(self._asked))
            self._child = None
        self._asked.clear()
        self._answered.clear()


def switch(setting: str, variable: str) -> bool | None:
    """An on/off/auto setting: True, False, or None for "auto"."""
    value = setting.strip().lower()
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    if value != "auto":
        raise ValueError(f"{variable} must be auto, on or off, not {setting!r}")
    return None


def second_core_free() -> bool:
    """Whether the task may use two cores or more and the last minute's load leaves one free. On a machine whose
    cores are all busy a second thread or process brings no core (docs/performance.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # the platform keeps no load average: a second core is taken if there is one
        load = 0.0
    return cpus >= 2 and load < cpus - 0.5


def process_pays(setting: str) -> bool:
    """Whether prepare may check the chunks in a child process (AMS_PREPARE_PROCESS): "on", "off", or "auto" (the
    default): when a second core is free. Either way only a read of more than one chunk starts a child (Checker)."""
    chosen = switch(setting, "AMS_PREPARE_PROCESS")
    return second_core_free() if chosen is None else chosen

"""Per-phase wall-clock timings and the process's peak memory, for the run summary and `make bench`.

    timer = PhaseTimer()
    with timer.phase("extract"):
        ...
    counts["phases"] = timer.seconds_rounded()

A phase entered many times (once per chunk) adds up. Timings are recorded into the run's counts
(delivery.state `ams_run_areas.counts`), so the summary and the report page show where a slow day
went. With AMS_RSS_TRACE=<file> every phase's end also appends "phase, resident MiB, peak MiB" to
that file: where the memory of a long run grows, chunk by chunk. No Airflow import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Seconds spent per named phase (summed over repeats), in the order phases were first entered."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.trace = os.environ.get("AMS_RSS_TRACE") or None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self.trace:
                memory = _status_mib("VmRSS:", "VmHWM:")
                with open(self.trace, "a", encoding="ascii") as out:
                    out.write(f"{name}\t{memory.get('VmRSS:', 0):.0f}\t{memory.get('VmHWM:', 0):.0f}\n")

    def add(self, name: str, seconds: float) -> None:
        """Seconds of a phase timed elsewhere (in a worker thread; added by the thread that owns the timer)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def seconds_rounded(self, digits: int = 2) -> dict[str, float]:
        return {name: round(value, digits) for name, value in self.seconds.items()}


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (max RSS), in MiB.

    On Linux the high-water mark of this process's own memory (VmHWM): `getrusage`'s ru_maxrss survives
    fork and exec, so a task started by a worker (or a benchmark's child) would report at least its
    parent's peak."""
    found = _status_mib("VmHWM:")
    if found:
        return found["VmHWM:"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def rss_mib() -> float:
    """The process's resident memory now, in MiB (0 where /proc is not there)."""
    return _status_mib("VmRSS:").get("VmRSS:", 0.0)


def _status_mib(*fields: str) -> dict[str, float]:
    """Fields of /proc/self/status (Linux), kB to MiB; empty where there is no /proc."""
    found: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(fields):
                    found[line.split()[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return found


@functools.cache
def _glibc(call: str) -> Callable[..., int] | None:
    """A glibc allocator call (malloc_trim, mallopt), or None (macOS, musl: no such call)."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        return getattr(ctypes.CDLL(name), call, None) if name else None
    except OSError:
        return None


def one_malloc_arena() -> None:
    """One malloc arena for every thread of the process (glibc `mallopt(M_ARENA_MAX, 1)`); a no-op elsewhere.

    glibc gives each thread an arena of its own, which keeps the pages it freed: prepare's stage thread's
    parse trees added ~50 MiB to the task's peak (300k records). One arena keeps the peak where it was."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(-8, 1)  # M_ARENA_MAX


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc `malloc_trim`); a no-op elsewhere.

    A chunk's frames are freed when the chunk is done, but glibc keeps what lies below memory that lives
    on (the heap's top): called after each chunk, the pages go back before the next chunk is read."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)

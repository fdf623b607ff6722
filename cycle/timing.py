"""Per-phase wall-clock timings and the process's peak memory, for the run summary and `make bench`.

    timer = PhaseTimer()
    with timer.phase("extract"):
        ...
    counts["phases"] = timer.seconds_rounded()

A phase entered many times (once per chunk) adds up. Timings are recorded into the run's counts
(delivery.state `ams_run_areas.counts`), so the summary and the report page show where a slow day
went. No Airflow import.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Seconds spent per named phase (summed over repeats), in the order phases were first entered."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

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
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux

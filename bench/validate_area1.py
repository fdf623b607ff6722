"""Benchmark: the area-1 record contract (pandera) and data-quality suite (GX), separately.

    make bench                      # 1,000,000 records in chunks of 100,000
    make bench BENCH_ARGS="--rows 200000 --chunk 50000"

Prints rows per second for each engine and the process's peak memory. Not a test: numbers depend
on the machine; compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from datetime import date, timedelta

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def records(n: int, seed: int = 1) -> pd.DataFrame:
    """n area-1 records in the records-frame format, about 3 % of them defective."""
    from transforms.identifiers import make_cvr
    from transforms.mapping import condition_column, record_id
    from transforms.registry import get_area

    area = get_area(1)
    rng = np.random.default_rng(seed)
    birth = pd.to_datetime("1960-01-01") + pd.to_timedelta(rng.integers(0, 40 * 365, n), unit="D")
    serial = rng.integers(0, 4000, n)
    cpr = birth.strftime("%d%m%y") + pd.Series(serial).map(lambda s: f"{s:04d}").to_numpy()
    bad = rng.random(n) < 0.01
    cpr = np.where(bad, "3102" + cpr.str[4:], cpr)  # 31 February: cpr.bad_date
    start = [date(2025, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 600, n)]
    end = [s + timedelta(days=int(d)) for s, d in zip(start, rng.integers(-3, 180, n), strict=True)]
    kinds = rng.choice(["VP", "LTP", "VO"], n)
    company = kinds != "VO"
    keys = [f"M{i:08d}" for i in range(n)]
    cvr = make_cvr("1374813") or "13748136"
    frame = pd.DataFrame({
        "record_key": keys,
        "record_id": [record_id(area, k) for k in keys[:1]] * n,
        "action": "CREATE_OR_UPDATE",
        "person_cpr": cpr,
        "municipality_code": rng.choice(["101", "147", "999"], n, p=[0.6, 0.39, 0.01]),
        "responsible_jobcentre": "10101",
        "registering_jobcentre": "10101",
        "measure_id": keys,
        "measure_type": kinds,
        "start_date": start,
        "end_date": end,
        "weekly_hours": rng.uniform(5, 40, n).round(2),
        "activation_type": rng.choice(["01", "02", "ZZ"], n, p=[0.5, 0.49, 0.01]),
        "jobplan_id": None, "jobplan_created_on": None, "jobplan_revised_on": None, "employment_goal": None,
        "job_order_id": None,
        "job_order_type": np.where(company, "PRAKTIK", None),
        "provider_cvr": cvr, "provider_pnr": "1003456789",
        "ministry_area": None,
        "job_title": np.where(company, "Lagermedarbejder", None),
        "course_type": np.where(company, None, "AMU"),
        "team_id": np.where(company, None, "H1"),
        "reconciles": 1,
        "status_changed": False,
        "no_target_group": False,
    })
    for cond, values in {"jobplan": False, "company_directed": company, "course": ~company,
                         "state_wage_subsidy": False, "has_provider": True}.items():
        frame[condition_column(cond)] = values
    return frame.astype({c: object for c in frame.columns if frame[c].dtype != bool})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    args = parser.parse_args()

    from expectations.runner import run_quality
    from transforms.contracts import check_contract
    from transforms.registry import get_area

    area = get_area(1)
    timings = {"contract (pandera)": 0.0, "data quality (Great Expectations)": 0.0}
    findings = {k: 0 for k in timings}
    done = 0
    while done < args.rows:
        n = min(args.chunk, args.rows - done)
        chunk = records(n, seed=done + 1)
        t = time.perf_counter()
        findings["contract (pandera)"] += len(check_contract(area, chunk))
        timings["contract (pandera)"] += time.perf_counter() - t
        t = time.perf_counter()
        result = run_quality(area, chunk, period_end=date(2026, 11, 28), run_id="bench", data_docs_dir=None)
        findings["data quality (Great Expectations)"] += len(result.findings)
        timings["data quality (Great Expectations)"] += time.perf_counter() - t
        done += n
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"area 1, {args.rows:,} records in chunks of {args.chunk:,}")
    for name, seconds in timings.items():
        print(f"  {name:<36} {args.rows / seconds:>12,.0f} rows/s  ({seconds:.1f} s, {findings[name]:,} findings)")
    print(f"  peak memory (max RSS)                {peak_mib:>12,.0f} MiB")


if __name__ == "__main__":
    main()

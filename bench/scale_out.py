"""Scale-out on Celery: N municipalities on one worker, then on two (`make bench-scale`).

    python bench/scale_out.py [--municipalities 4] [--persons 1000] [--concurrency 2] [--workers 1,2]

The same harness as tests/test_celery_deployment.py (deployment/local_celery.py): a real Celery
deployment made of processes on this machine (PostgreSQL and Redis on loopback), every worker with
its own working directory and AMS_HOME, one synthetic source database and one local receiver (TLS,
signed requests) per municipality. For each worker count, a fresh deployment (fresh metadata and
state databases, fresh receivers; the sources are made once and only read): every municipality's DAG
is triggered at once, and the clock runs from the first trigger until the last run has finished.

Printed per worker count: wall time, records delivered, records/s, the speed-up over the first
row, and where the CPU went in that window (each component's process tree, PostgreSQL's server
processes, the machine's total busy share). Like is compared with like: every row has the same
concurrency per worker (--concurrency), so two workers have twice the task slots of one.
Not a timed test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployment.local_celery import (  # noqa: E402 - after the path set-up, as the other benchmarks
    CeleryDeployment,
    Municipality,
    deployment_env,
    postgres_unreachable,
    redis_unreachable,
    start_municipalities,
)

# Data Docs off (as `make bench`); a task retried for any reason shows in the table (retried).
SETTINGS = {"AMS_DATA_DOCS": "0", "AMS_RETRY_DELAY_SECONDS": "5"}


def _cpu(procs: list[psutil.Process]) -> float:
    """CPU seconds of these processes and of their reaped children (the task processes)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def _groups(cluster: CeleryDeployment, municipalities: list[Municipality]) -> dict[str, list[psutil.Process]]:
    groups: dict[str, list[psutil.Process]] = {}
    for name, proc in cluster.processes.items():
        if name == "db-migrate":
            continue
        key = "workers" if name.startswith("worker-") else name
        groups.setdefault(key, []).extend(proc.tree())
    groups["receivers"] = [psutil.Process(m.receiver.pid) for m in municipalities if m.receiver.pid]
    groups["postgresql"] = _postgres()
    return groups


def _snapshot(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    return {name: _cpu(procs) for name, procs in groups.items()}


def run_once(root: Path, municipalities: list[Municipality], workers: int, concurrency: int,
             broker_db: int) -> dict:
    with CeleryDeployment(root, workers=workers, concurrency=concurrency, broker_db=broker_db,
                          env={**SETTINGS, **deployment_env(municipalities, root / "config")}) as cluster:
        dag_ids = [m.dag_id for m in municipalities]
        cluster.wait_for_dags(dag_ids)
        time.sleep(5)  # let the start-up settle (first parse, worker mingle) before the clock starts
        groups = _groups(cluster, municipalities)
        cpu_before, machine_before = _snapshot(groups), psutil.cpu_times()
        started = time.monotonic()
        runs = {dag_id: cluster.trigger(dag_id) for dag_id in dag_ids}
        states = cluster.wait_for_runs(runs, timeout=3600)
        wall = time.monotonic() - started
        groups = _groups(cluster, municipalities)  # worker trees now hold the pool processes of the run
        cpu_after, machine_after = _snapshot(groups), psutil.cpu_times()
        busy = ((machine_after.user + machine_after.system + machine_after.nice)
                - (machine_before.user + machine_before.system + machine_before.nice))
        tasks = [ti for dag_id, run_id in runs.items() for ti in cluster.task_instances(dag_id, run_id)]
        durations = [ti["duration"] or 0.0 for ti in tasks if ti["state"] == "success"]
    records = sum(len(m.receiver_store().records()) for m in municipalities)
    return {"workers": workers, "concurrency": concurrency, "wall_s": wall, "records": records,
            "records_per_s": records / wall if wall else 0.0, "states": states,
            "cpu_s": {k: max(0.0, cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0)) for k in cpu_after},
            "machine_busy_share": busy / (wall * psutil.cpu_count()) if wall else 0.0,
            "task_seconds": sum(durations), "tasks": len(tasks),
            "retried": sum(1 for ti in tasks if ti["try_number"] > 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--municipalities", type=int, default=4, help="how many municipalities (default 4)")
    parser.add_argument("--persons", type=int, default=1000, help="persons per municipality's source (default 1000)")
    parser.add_argument("--concurrency", type=int, default=2, help="task slots per worker (default 2)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--broker-db", type=int, default=14, help="Redis database number of its own (default 14)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    for reason in (postgres_unreachable(), redis_unreachable()):
        if reason:
            print(f"PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 are needed: {reason}")
            return 2
    codes = ["101", "147", "151", "153", "155", "157", "159", "161", "163", "165"][:args.municipalities]
    counts = [int(n) for n in args.workers.split(",")]
    results = []
    with TemporaryDirectory(prefix="ams-bench-scale-") as folder, ExitStack() as stack:
        root = Path(folder)
        print(f"Making {len(codes)} source databases of {args.persons} persons ...", flush=True)
        municipalities = start_municipalities(stack, root, codes, persons=args.persons)
        for workers in counts:
            for m in municipalities:
                m.receiver_store().reset()  # each configuration delivers everything anew
            print(f"{workers} worker(s) x concurrency {args.concurrency}: starting ...", flush=True)
            result = run_once(root / f"cluster-{workers}", municipalities, workers, args.concurrency,
                              args.broker_db)
            results.append(result)
            print(f"  {result['wall_s']:.1f} s, {result['records']} records, {result['records_per_s']:.1f} records/s, "
                  f"runs {set(result['states'].values())}", flush=True)
    _print(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(set(r["states"].values()) == {"success"} for r in results) else 1


def _print(results: list[dict], args: argparse.Namespace) -> None:
    base = results[0]
    print(f"\n{args.municipalities} municipalities x 8 areas, {args.persons} persons each; "
          f"concurrency {args.concurrency} per worker; {psutil.cpu_count()} CPUs")
    print(f"{'workers':>7} {'slots':>5} {'wall s':>8} {'records':>8} {'rec/s':>8} {'speed-up':>8} "
          f"{'CPU busy':>8} {'task s':>8} {'retried':>7}")
    for r in results:
        print(f"{r['workers']:>7} {r['workers'] * r['concurrency']:>5} {r['wall_s']:>8.1f} {r['records']:>8} "
              f"{r['records_per_s']:>8.1f} {base['wall_s'] / r['wall_s']:>7.2f}x {r['machine_busy_share']:>7.0%} "
              f"{r['task_seconds']:>8.0f} {r['retried']:>7}")
    print("\nCPU seconds in the timed window, by component:")
    names = sorted({k for r in results for k in r["cpu_s"]})
    print(f"{'workers':>7} " + " ".join(f"{n:>13}" for n in names))
    for r in results:
        print(f"{r['workers']:>7} " + " ".join(f"{r['cpu_s'].get(n, 0.0):>13.1f}" for n in names))


if __name__ == "__main__":
    raise SystemExit(main())

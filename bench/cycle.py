"""End-to-end benchmark (issue 9): area 1's whole cycle beside a floor measured in the same run
(`--area N`: one of areas 3-8 instead, on the demo source; see --help).

    make bench                                        # 100,000 area-1 records, SQLite source
    make bench BENCH_ARGS="--rows 1000000"
    make bench BENCH_ARGS="--rows 300000 --source-url postgresql://user@host/db"
    .venv/bin/python bench/cycle.py --rows 100000 --no-validation

Steps, all in one session so the ratios compare like with like:
1. the source: the demo source (demo.synthetic) scaled up in SQL to about `--rows` area-1
   records (demo.scale: every copy its own persons, keys and CPR numbers, each with its demo person's status);
2. the floor: the same rows read with pandas in chunks and written as XML with lxml, one element per
   field, gzip'd, no checks;
3. the full cycle: prepare (extract, map, contract, data quality, ledger diff, stage) and deliver
   (send to a local receiver with TLS and signed requests, store receipts, archive) of area 1, the way
   `ams-report demo` runs it, with Data Docs off;
4. a day with no change, then a day with `--changed` (1 %) of the measures changed at the source.

`--repeat N` does steps 2-4 N times at each size (the source made once) and reports the median of each
figure (peak RSS and disk: the largest), with the spread of the runs beside: on a shared machine one run's
phase can take 30 % more or less than the same phase of the next.

Each cycle runs in its own process, so its peak RSS is the task's. Prints one table: phase times,
rows/s, ratio to the floor, peak RSS; then (unless `--no-validation`) the validation-only benchmark
(bench/validate_area1.py). Not a test: absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

PERIOD_END = date(2026, 11, 28)
PREPARE_PHASES = ("extract", "map", "contract", "quality", "findings", "hash", "diff", "payload", "xsd", "encrypt",
                  "add_batch")
DELIVER_PHASES = ("send", "receipt", "archive")
# What prepare's threads (AMS_PREPARE_THREADS) and its checking child (AMS_PREPARE_PROCESS) still cost the task's
# own thread; absent when they did not run. With a child, map/contract/quality/hash are the child's time.
WAIT_PHASES = ("extract_wait", "stage_wait", "check_wait")


def _floor(source_url: str, out: Path, chunksize: int, area: int = 1) -> dict:
    """Read the rows of the area's query tables (areas 3-8: its own table) with pandas in chunks; write them
    as gzip'd XML with lxml."""
    import pandas as pd
    from lxml import etree

    from demo.scale import area_floor_query, floor_query
    from transforms.source import create_engine_from_url

    engine = create_engine_from_url(source_url)
    start = time.perf_counter()
    rows = 0
    # a server-side cursor on PostgreSQL, as the pipeline reads (psycopg would hold every row client-side)
    with engine.connect().execution_options(stream_results=True) as conn, \
            gzip.open(out, "wb", compresslevel=6) as raw, etree.xmlfile(raw) as xf:
        with xf.element("Records"):
            for chunk in pd.read_sql(floor_query() if area == 1 else area_floor_query(area), conn, chunksize=chunksize):
                columns = list(chunk.columns)
                for values in chunk.itertuples(index=False, name=None):
                    record = etree.Element("Record")
                    for name, value in zip(columns, values, strict=True):
                        if value is not None and value == value:
                            etree.SubElement(record, name).text = str(value)
                    xf.write(record)
                rows += len(chunk)
    engine.dispose()
    return {"seconds": time.perf_counter() - start, "rows": rows, "bytes": out.stat().st_size}


def _one_step(args: argparse.Namespace) -> None:
    """Child process: one task of the area's cycle (prepare, deliver or report), as Airflow runs each in a
    process of its own; prints a JSON line with its seconds and its peak RSS."""
    from cycle.pipeline import Settings, deliver_area, prepare_area
    from cycle.timing import PhaseTimer, peak_rss_mib
    from delivery.client import client_from_connection
    from reports.summary import write_run_report

    home = Path(args.home)
    # prepare's second core and the delivery's lanes as the environment sets them, as a deployment's would
    settings = Settings(home=home / "var", source_url=args.source_url, state_url=args.state_url,
                        chunksize=args.chunk, data_docs=False, batch_size=args.batch_size,
                        prepare_threads=os.environ.get("AMS_PREPARE_THREADS", "auto"),
                        prepare_process=os.environ.get("AMS_PREPARE_PROCESS", "auto"),
                        deliver_lanes=int(os.environ.get("AMS_DELIVER_LANES", 2)))
    extra = json.loads(args.client_extra)
    timer = PhaseTimer()
    counts: dict = {}
    with timer.phase(args.step):
        if args.step == "prepare":
            counts = prepare_area(args.area, run_id=args.run_id, period_end=PERIOD_END, settings=settings)
        elif args.step == "deliver":
            counts = deliver_area(args.area, run_id=args.run_id, settings=settings,
                                  client=lambda: client_from_connection(args.host, args.port, "ams", extra))
        else:
            write_run_report(args.run_id, settings)
    print(json.dumps({"seconds": timer.seconds_rounded(3)[args.step],
                      "counts": {k: v for k, v in counts.items() if isinstance(v, int)},
                      "peak_rss_mib": peak_rss_mib()}))


STEPS = ("prepare", "deliver", "report")


def _run_cycle(args: argparse.Namespace, run_id: str, host: str, port: int, extra: dict) -> dict:
    """prepare, deliver and report of one day, each in its own process (its peak RSS is the task's)."""
    result: dict = {"totals": {}, "rss": {}}
    for step in STEPS:
        command = [sys.executable, __file__, "--one-step", step, "--home", args.home, "--source-url",
                   args.source_url, "--state-url", args.state_url, "--chunk", str(args.chunk), "--batch-size",
                   str(args.batch_size), "--area", str(args.area), "--run-id", run_id, "--host", host, "--port",
                   str(port), "--client-extra", json.dumps(extra)]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-5000:])
            raise SystemExit(f"the {run_id} {step} failed (exit {done.returncode})")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        result["totals"][step] = out["seconds"]
        result["rss"][step] = out["peak_rss_mib"]
        if step != "report":
            result["prepared" if step == "prepare" else "delivered"] = out["counts"]
    from cycle.pipeline import Settings

    settings = Settings(home=Path(args.home) / "var", source_url=args.source_url, state_url=args.state_url)
    counts = settings.state().run_rows(run_id)[0]["counts"]
    result["phases"] = counts.get("phases", {})
    # prepare's checking child (AMS_PREPARE_PROCESS): its own peak, beside the task's; 0 when it did not run
    result["rss"]["checks"] = counts.get("peak_rss_mib_checks", 0)
    result["peak_rss_mib"] = max(result["rss"][s] for s in ("prepare", "deliver"))
    if result.get("delivered", {}).get("batches_rejected"):
        # A whole batch refused (a SOAP fault): the day's figures are not those of a delivery. Say why, loudly.
        with settings.state().begin() as conn:
            reasons = conn.exec_driver_sql(
                "SELECT error_code, error_text, COUNT(*) FROM ams_ledger WHERE status = 'rejected' "
                "GROUP BY error_code, error_text ORDER BY COUNT(*) DESC LIMIT 3").all()
        print(f"WARNING: the receiver refused {result['delivered']['batches_rejected']} batches of {run_id}, "
              "so its figures are not a delivery's: " + "; ".join(f"{c} {t} ({n:,} records)" for c, t, n in reasons),
              flush=True)
    return result


def _disk(path: Path) -> int:
    """Bytes in a folder (a hard-linked file once), or in a SQLite file with its journal files."""
    files = path.rglob("*") if path.is_dir() else path.parent.glob(path.name + "*")
    seen = {(s.st_dev, s.st_ino): s.st_size for s in (p.stat() for p in files if p.is_file())}
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    from cycle.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="the area's records in the source (about)")
    parser.add_argument("--area", type=int, default=1, choices=(1, 3, 4, 5, 6, 7, 8),
                        help="the area to bench (default 1); areas 3-8: the demo source with enough persons for "
                             "--rows (slower to make), floor = the area's table read plainly, and the changed "
                             "day stamps updated_at on --changed of its rows without changing their content")
    parser.add_argument("--chunk", type=int, default=Settings.chunksize,
                        help="AMS_CHUNK_SIZE of the cycle and the floor (default: AMS_CHUNK_SIZE's)")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of measures changed before day 3")
    parser.add_argument("--source-url", default="",
                        help="a PostgreSQL URL for the source (default: SQLite), its search_path an empty or "
                             "missing schema (or the one a previous run filled, with --reuse-source)")
    parser.add_argument("--state-url", default="", help="the state DB (default: SQLite in the work folder)")
    parser.add_argument("--home", default="", help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--no-validation", action="store_true", help="skip the validation-only benchmark")
    parser.add_argument("--reuse-source", action="store_true",
                        help="use the source a previous run made in --home (its state and reports are removed)")
    parser.add_argument("--linear-from", type=int, default=0, metavar="ROWS",
                        help="first run the same at ROWS records (a source of its own) and print each phase's "
                             "growth from there (the issue's 'linear' target: at most 11x for 10x the rows)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="measure the floor and the three days N times at each size and report the medians "
                             "(peak RSS and disk: the largest), with each run's cycle/floor and growth beside")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    parser.add_argument("--one-step", choices=STEPS, dest="step", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-extra", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        _one_step(args)
        return 0

    tmp = None
    if not args.home:
        tmp = tempfile.TemporaryDirectory(prefix="ams-bench-")
        args.home = tmp.name
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AMS_ARCHIVE_KEY_FILE"] = str(home / "archive.key")
    from delivery.archive import load_keys

    load_keys(home / "archive.key", create=True)  # the bench's own throw-away key
    args.source_url = args.source_url or f"sqlite:///{home / 'source.sqlite'}"
    args.state_url = args.state_url or f"sqlite:///{home / 'state.sqlite'}"
    try:
        return _bench(args, home)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _bench(args: argparse.Namespace, home: Path) -> int:
    if args.repeat < 1:
        raise SystemExit("--repeat: at least 1")
    small_runs: list[tuple[dict, dict[str, dict]]] = []
    if args.linear_from:
        small = argparse.Namespace(**{**vars(args), "rows": args.linear_from, "reuse_source": False,
                                      "home": str(home / f"linear-{args.linear_from}")})
        small.source_url = (_own_schema(args.source_url, f"linear{args.linear_from}") if args.source_url.startswith(
            "postgresql") else f"sqlite:///{Path(small.home) / 'source.sqlite'}")
        small.state_url = f"sqlite:///{Path(small.home) / 'state.sqlite'}"
        Path(small.home).mkdir(parents=True, exist_ok=True)
        # The sizes' runs interleaved (the i-th at each size back to back): on a shared machine the load
        # drifts over the half hour of a run set, and with every small run first a drift between the two sets
        # showed as growth in every phase (tenth pass: the floor itself grew 10.8x for 9.9x the rows).
        runs = []
        for i in range(args.repeat):
            for size, size_home, kept in ((small, Path(small.home), small_runs), (args, home, runs)):
                print(f"== {size.rows:,} records, run {i + 1} of {args.repeat}"
                      + (" (--linear-from)" if size is small else ""), flush=True)
                kept.append(_measure(_again(size, i), size_home))
    else:
        runs = _measure_runs(args, home)
    floor, results = median_run(runs)
    print()
    print(format_table(args, floor, results))
    print()
    print(format_targets(floor, results))
    if len(runs) > 1:
        print(format_runs(runs))
    if args.linear_from:
        floor_small, results_small = median_run(small_runs)
        print()
        print(format_table(small, floor_small, results_small))
        print()
        print(format_linear(results_small, results, floor_small, floor,
                            spread=growth_spread(small_runs, runs) if len(runs) > 1 else None))
    if args.json:
        figures: dict[str, Any] = {"floor": floor, "results": results,
                                   "runs": [{"floor": f, "results": r} for f, r in runs]}
        if args.linear_from:
            figures["linear_from"] = {"floor": floor_small, "results": results_small,
                                      "runs": [{"floor": f, "results": r} for f, r in small_runs]}
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if not args.no_validation and args.area == 1:
        print()
        subprocess.run([sys.executable, str(ROOT / "bench" / "validate_area1.py"), "--rows", str(args.rows),
                        "--chunk", str(args.chunk)], check=True)
    return 0


def _measure_runs(args: argparse.Namespace, home: Path) -> list[tuple[dict, dict[str, dict]]]:
    """`_measure` `--repeat` times at one size, the source made (at most) once."""
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {i + 1} of {args.repeat}", flush=True)
        runs.append(_measure(_again(args, i), home))
    return runs


def _again(args: argparse.Namespace, i: int) -> argparse.Namespace:
    """The i-th run's arguments: after the first, the source the first made (or was given) is reused."""
    return args if i == 0 else argparse.Namespace(**{**vars(args), "reuse_source": True})


def median_run(runs: list[tuple[dict, dict[str, dict]]]) -> tuple[dict, dict[str, dict]]:
    """One run's figures from several of the same size: the median of every time, the largest peak RSS and
    disk growth (a memory or disk target must hold in every run), the counts of the first run."""
    if len(runs) == 1:
        return runs[0]
    floors = [f for f, _ in runs]
    floor = {**floors[0], "seconds": statistics.median([f["seconds"] for f in floors])}
    results: dict[str, dict] = {}
    for day, first in runs[0][1].items():
        days = [r[day] for _, r in runs]
        merged = dict(first)
        for key in ("phases", "totals"):
            names = dict.fromkeys(name for d in days for name in d[key])
            merged[key] = {name: statistics.median([d[key].get(name, 0.0) for d in days]) for name in names}
        merged["rss"] = {step: max(d["rss"].get(step, 0) for d in days) for step in first["rss"]}
        if "peak_rss_mib" in first:
            merged["peak_rss_mib"] = max(d["peak_rss_mib"] for d in days)
        merged["disk_added"] = tuple(max(d["disk_added"][i] for d in days) for i in range(2))
        results[day] = merged
    return floor, results


def format_runs(runs: list[tuple[dict, dict[str, dict]]]) -> str:
    """Each run's full cycle against its own floor: the spread behind the medians."""
    ratios = [sum(r["full"]["totals"].values()) / f["seconds"] for f, r in runs]
    return ("  each run's full cycle / its floor: "
            + ", ".join(f"{sum(r['full']['totals'].values()):.1f} s / {f['seconds']:.1f} s = {x:.2f}x"
                        for (f, r), x in zip(runs, ratios, strict=True))
            + " (the table: the median cycle / the median floor)")


def growth_spread(small_runs: list[tuple[dict, dict[str, dict]]], runs: list[tuple[dict, dict[str, dict]]]
                  ) -> dict[str, tuple[float, float]]:
    """Each phase's lowest and highest growth over the pairs of runs (the i-th small with the i-th large)."""
    spread: dict[str, tuple[float, float]] = {}
    for phase in (*PREPARE_PHASES, *DELIVER_PHASES, *STEPS):
        key = "totals" if phase in STEPS else "phases"
        growths = [r["full"][key].get(phase, 0.0) / s["full"][key][phase]
                   for (_, s), (_, r) in zip(small_runs, runs, strict=True) if s["full"][key].get(phase)]
        if growths:
            spread[phase] = (min(growths), max(growths))
    return spread


def _search_path(url: str) -> tuple[Any, str, str | None]:
    """A PostgreSQL URL's parts: the parsed URL, its connection options, and its search_path schema (None: not
    set)."""
    import re

    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    options = parsed.query.get("options", "")
    options = options if isinstance(options, str) else " ".join(options)
    found = re.search(r"-csearch_path=(\w+)", options)
    return parsed, options, found.group(1) if found else None


def _in_admin(parsed: Any, *statements: str) -> None:
    """Run statements on the URL's database without its options (outside any search_path)."""
    import sqlalchemy as sa

    admin = sa.create_engine(parsed.set(query={k: v for k, v in parsed.query.items() if k != "options"}))
    with admin.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    admin.dispose()


def _own_schema(url: str, suffix: str) -> str:
    """The PostgreSQL URL with a fresh, empty schema of its own: its search_path schema + `_suffix`."""
    import re

    parsed, options, base = _search_path(url)
    schema = f"{base or 'public'}_{suffix}"
    options = (re.sub(r"-csearch_path=\w+", f"-csearch_path={schema}", options) if base
               else f"{options} -csearch_path={schema}".strip())
    _in_admin(parsed, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
    return parsed.set(query={**parsed.query, "options": options}).render_as_string(hide_password=False)


def _ensure_schema(url: str) -> None:
    """A PostgreSQL source's search_path schema, created when it is missing (PostgreSQL would refuse the
    source's tables: "no schema has been selected to create in")."""
    if not url.startswith("postgresql"):
        return
    parsed, _, schema = _search_path(url)
    if schema is not None:
        _in_admin(parsed, f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def _measure(args: argparse.Namespace, home: Path) -> tuple[dict, dict[str, dict]]:
    """Source, floor, and the three days at one size; returns the floor and each day's results."""
    # a fresh state, receiver and reports every time (a folder a run left would find everything delivered);
    # the source too, unless it is reused
    leftovers = ["state.sqlite", "receiver.sqlite", "floor.xml.gz"]
    if not args.reuse_source:
        leftovers.append("source.sqlite")
    for leftover in leftovers:
        for path in home.glob(leftover + "*"):
            path.unlink()
    shutil.rmtree(home / "var", ignore_errors=True)
    from delivery.security import generate_test_pki
    from demo.scale import change_measures, demo_source, scale_source, touch_rows
    from receiver.server import ReceiverProcess

    t = time.perf_counter()
    if args.reuse_source:
        print(f"source: {args.source_url.split(':', 1)[0]}, as a previous run left it (--reuse-source)", flush=True)
    elif args.area == 1:
        _ensure_schema(args.source_url)
        made = scale_source(args.source_url, args.rows)
        print(f"source: {made['measures']:,} measures ({made['copies']} copies of the demo source), "
              f"{args.source_url.split(':', 1)[0]}, made in {time.perf_counter() - t:.0f} s", flush=True)
    else:
        made = demo_source(args.source_url, args.area, args.rows)
        print(f"source: {made['rows']:,} area-{args.area} rows (the demo source of {made['persons']:,} persons), "
              f"{args.source_url.split(':', 1)[0]}, made in {time.perf_counter() - t:.0f} s", flush=True)
    floor = _floor(args.source_url, home / "floor.xml.gz", args.chunk, args.area)
    print(f"floor: {floor['rows']:,} rows in {floor['seconds']:.1f} s", flush=True)

    pki = generate_test_pki(home / "pki", name="AMS bench")
    extra = {"scheme": "https", "timeout": 300, "ca_bundle": str(pki.ca_cert), "signing_key": str(pki.client_key),
             "signing_cert": str(pki.client_cert)}
    state_path = Path(args.state_url.removeprefix("sqlite:///")) if args.state_url.startswith("sqlite") else None
    results: dict[str, dict] = {}
    with ReceiverProcess(home / "receiver.sqlite", trust_certs=[pki.client_cert], tls_cert=pki.server_cert,
                         tls_key=pki.server_key) as receiver:
        host, port = "127.0.0.1", int(receiver.port or 0)
        for name in ("full", "no change", f"{args.changed:.0%} changed"):
            if name.endswith("changed"):
                if args.area == 1:
                    changed = change_measures(args.source_url, args.changed)
                    print(f"changed {changed:,} measures at the source", flush=True)
                else:
                    changed = touch_rows(args.source_url, args.area, args.changed)
                    print(f"stamped updated_at on {changed:,} area-{args.area} rows (content unchanged)", flush=True)
            before = (_disk(state_path) if state_path else 0, _disk(home / "var" / "reports"))
            stamp = datetime.now(UTC).strftime("%H%M%S")
            result = _run_cycle(args, f"bench-{name.split()[0].rstrip('%')}-{stamp}", host, port, extra)
            after = (_disk(state_path) if state_path else 0, _disk(home / "var" / "reports"))
            result["disk_added"] = (after[0] - before[0], after[1] - before[1])
            results[name] = result
            print(f"{name}: {sum(result['totals'].values()):.1f} s, sent {result['delivered'].get('accepted', 0):,}, "
                  f"peak RSS " + ", ".join(f"{k} {v:.0f}" for k, v in result["rss"].items()) + " MiB", flush=True)
    return floor, results


def format_table(args: argparse.Namespace, floor: dict, results: dict[str, dict]) -> str:
    rows = results["full"]["prepared"].get("extracted", 0)
    names = list(results)
    lines = [f"area {args.area}, {rows:,} records (source rows read: {floor['rows']:,}), chunks of {args.chunk:,}, "
             f"batches of {args.batch_size:,}; floor {floor['seconds']:.1f} s",
             f"{'phase':<12}" + "".join(f"{n:>16}" for n in names) + f"{'full rows/s':>14}{'full/floor':>12}"]
    lines.append("-" * len(lines[-1]))
    waits = tuple(p for p in WAIT_PHASES if any(p in r["phases"] for r in results.values()))
    for phase in (*PREPARE_PHASES, *waits, *DELIVER_PHASES):
        secs = [r["phases"].get(phase, 0.0) for r in results.values()]
        rate = rows / secs[0] if secs[0] else 0
        lines.append(f"{phase:<12}" + "".join(f"{s:>15.1f}s" for s in secs) + f"{rate:>14,.0f}"
                     f"{secs[0] / floor['seconds']:>11.2f}x")
    for total in ("prepare", "deliver", "report"):
        secs = [r["totals"].get(total, 0.0) for r in results.values()]
        lines.append(f"{'= ' + total:<12}" + "".join(f"{s:>15.1f}s" for s in secs) + f"{'':>14}"
                     f"{secs[0] / floor['seconds']:>11.2f}x")
    cycle = [sum(r["totals"].values()) for r in results.values()]
    lines.append(f"{'CYCLE':<12}" + "".join(f"{s:>15.1f}s" for s in cycle) + f"{rows / cycle[0]:>14,.0f}"
                 f"{cycle[0] / floor['seconds']:>11.2f}x")
    lines.append(f"{'% of full':<12}" + "".join(f"{100 * s / cycle[0]:>15.1f}%" for s in cycle))
    lines.append(f"{'sent':<12}" + "".join(f"{r['delivered'].get('accepted', 0):>16,}" for r in results.values()))
    for step in (*STEPS, "checks"):
        lines.append(f"{'RSS ' + step:<12}" + "".join(f"{r['rss'].get(step, 0):>12,.0f} MiB" for r in results.values()))
    lines.append(f"{'state +':<12}" + "".join(f"{r['disk_added'][0] / 1024:>13,.0f} kB" for r in results.values()))
    lines.append(f"{'reports +':<12}" + "".join(f"{r['disk_added'][1] / 1024:>13,.0f} kB" for r in results.values()))
    return "\n".join(lines)


TARGET_FLOOR_RATIO = 3.0  # issue 9: the full cycle at most 3x the floor
TARGET_RSS_MIB = 1024  # and the task's peak RSS at most 1 GiB
TARGET_NO_CHANGE, TARGET_CHANGED = 0.10, 0.15  # shares of the full run's time
TARGET_QUIET_KB = 64  # "a few kilobytes" added by a day with no change, to the state DB and to the reports


def format_targets(floor: dict, results: dict[str, dict]) -> str:
    """Each of issue 9's targets that one size can show, with the figure and met / NOT met."""
    full, quiet, changed = (results[n] for n in results)
    cycle = {n: sum(r["totals"].values()) for n, r in results.items()}
    full_s, quiet_s, changed_s = cycle.values()
    # prepare and its checking child run at once: their peaks add up (an upper bound: they need not peak together)
    rss = max(max(r["rss"]["prepare"] + r["rss"].get("checks", 0), r["rss"]["deliver"]) for r in results.values())
    checks = [
        ("full cycle at most 3x the floor", f"{full_s:.1f} s = {full_s / floor['seconds']:.2f}x the floor",
         full_s <= TARGET_FLOOR_RATIO * floor["seconds"]),
        ("task peak RSS at most 1 GiB",
         f"{rss:,.0f} MiB (prepare + checks, deliver; report {full['rss']['report']:,.0f})",
         rss <= TARGET_RSS_MIB),
        ("no change: at most 10 % of full", f"{100 * quiet_s / full_s:.1f} %", quiet_s <= TARGET_NO_CHANGE * full_s),
        ("1 % changed: at most 15 % of full", f"{100 * changed_s / full_s:.1f} %, sent "
         f"{changed['delivered'].get('accepted', 0):,}", changed_s <= TARGET_CHANGED * full_s),
        ("no change adds a few kB to the state DB", f"{quiet['disk_added'][0] / 1024:,.0f} kB",
         quiet["disk_added"][0] <= TARGET_QUIET_KB * 1024),
        ("no change adds a few kB to the reports", f"{quiet['disk_added'][1] / 1024:,.0f} kB",
         quiet["disk_added"][1] <= TARGET_QUIET_KB * 1024),
    ]
    width = max(len(c[0]) for c in checks) + 2
    return "\n".join(["targets (issue 9)"] + [f"  {name:<{width}}{figure:<50} {'met' if ok else 'NOT met'}"
                                               for name, figure, ok in checks])


def format_linear(small: dict[str, dict], large: dict[str, dict], floor_small: dict, floor_large: dict,
                  spread: dict[str, tuple[float, float]] | None = None) -> str:
    """Each phase of the full run at the larger size against the smaller: the growth beside the rows'.
    `spread` (--repeat): each phase's lowest and highest growth over the pairs of runs, in a column of its own."""
    rows_small = small["full"]["prepared"].get("extracted", 0) or 1
    rows_large = large["full"]["prepared"].get("extracted", 0)
    factor = rows_large / rows_small
    limit = factor * 1.1  # issue 9: 11x for 10x the rows
    floor_growth = floor_large["seconds"] / floor_small["seconds"]
    lines = [f"growth from {rows_small:,} to {rows_large:,} records ({factor:.1f}x the rows; the target: at most "
             f"{limit:.1f}x per phase; the floor grew {floor_growth:.1f}x: 'vs floor' is a phase's growth over the "
             "floor's, which takes out what the machine's load and caches did to both)"
             + (": medians of the runs; 'runs' is the lowest and highest growth of a run pair" if spread else ""),
             f"{'phase':<12}{'small':>10}{'large':>10}{'growth':>10}{'vs floor':>10}"
             + (f"{'runs':>14}" if spread else "")]

    def line(label: str, phase: str, a: float, b: float, flagged: bool) -> str:
        growth = b / a if a else 0.0
        flag = "  over" if flagged and growth > limit and b >= 1.0 else ""
        runs = ""
        if spread:
            lo, hi = spread.get(phase, (0.0, 0.0))
            runs = f"{f'{lo:.1f}-{hi:.1f}x':>14}"
        return f"{label:<12}{a:>9.1f}s{b:>9.1f}s{growth:>9.1f}x{growth / floor_growth:>9.2f}x{runs}{flag}"

    for phase in (*PREPARE_PHASES, *DELIVER_PHASES):
        lines.append(line(phase, phase, small["full"]["phases"].get(phase, 0.0),
                          large["full"]["phases"].get(phase, 0.0), True))
    for step in STEPS:
        lines.append(line("= " + step, step, small["full"]["totals"][step], large["full"]["totals"][step], False))
    a, b = (max(r["full"]["rss"]["prepare"] + r["full"]["rss"].get("checks", 0), r["full"]["rss"]["deliver"])
            for r in (small, large))
    lines.append(f"{'task RSS':<12}{a:>7,.0f}MiB{b:>7,.0f}MiB{b / a:>9.2f}x  (flat: the same at both sizes)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

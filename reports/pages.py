"""The analysts' pages: one self-contained HTML page per run, and an index of the runs.

    var/reports/index.html                          the runs, newest first, with their counts and the trend
    var/reports/runs/<safe run id>/index.html       one run: counts per area with the reconciliation check,
                                                    plots (quarantine per area over the runs, the top
                                                    rules over time, time from first seen to released),
                                                    findings per area and rule, the records new in
                                                    quarantine, the Data Docs, the trend of 30 runs
    var/reports/runs/<safe run id>/quarantine.html  the open quarantine with every failed rule and the run's
                                                    warnings (the first 500 of each; shared by content)
    var/reports/runs/<safe run id>/quarantine.csv   the whole open quarantine, one line per failed rule
    var/reports/runs/<safe run id>/findings.csv     every finding of the run, errors and warnings
    var/reports/runs/<safe run id>/report.json      what the two CSVs were made of (fingerprints), so the
                                                    next run's report links a CSV that cannot have changed
    var/reports/runs/.shared/                       one copy of each distinct CSV and quarantine.html (the run
                                                    folders hold hard links), and what the page shows of
                                                    each findings.csv

Inline CSS and inline SVG, no JavaScript and no external asset: the pages open from the file system
and inside the Airflow UI (plugins/ams_reporting/ui.py serves this folder read-only).

Personal data: the state holds masked persons only (`DDMMYY-****`). As a second line of defence every
text taken from the state passes `scrub`, which masks anything shaped like a CPR number.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from jinja2 import DictLoader, Environment, StrictUndefined
from markupsafe import Markup, escape

from cycle.settings import Settings
from delivery.objectstore import StorePath, ensure_folder, is_local, tail, write_atomic
from delivery.state import StateStore, run_areas
from delivery.state import quarantine as quarantine_table
from reports import plots, tables
from reports.counts import area_row, safe_folder_name
from reports.tables import scrub
from transforms.registry import get_area
from transforms.rules import RULE_BY_ID

#: Rows of a list shown on a page; the CSV beside the page holds all of them.
MAX_ROWS = 500
#: The run page shows the entries new in quarantine, the first NEW_ROWS; the whole lists (the first MAX_ROWS)
#: are on quarantine.html, which a day with no change shares with the day before (issue 9: a few kB a day).
NEW_ROWS = 20
#: Under runs/: one copy of each distinct findings.csv, hard-linked from the runs that wrote it.
SHARED_FILES = ".shared"
#: Runs in the trend (up to and including the run of the page).
TREND_RUNS = 30
#: Runs listed on the index page.
INDEX_RUNS = 400
_COUNTS = ("extracted", "delivered", "annulled", "quarantined", "unchanged", "outstanding", "warnings")
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_NO_FINDING = {"rule": "", "title": "", "severity": "", "field": "", "paragraph": "", "message": "(no reason stored)"}


# --- helpers ----------------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: datetime | None) -> str:
    value = _utc(value)
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _rule_info(rule_id: str) -> dict:
    rule = RULE_BY_ID.get(rule_id)
    if rule is None:
        return {"title": "(not in the rule catalogue)", "basis": "", "engine": ""}
    return {"title": rule.title, "basis": rule.basis, "engine": rule.engine}


def _area_title(number: int) -> str:
    try:
        return get_area(number).title
    except KeyError:
        return ""


def _run_page_href(prefix: str, run_id: str, reports_dir: Path) -> str | None:
    """Relative link to a run's page (or its summary.md when the run predates the pages)."""
    folder = reports_dir / "runs" / safe_folder_name(run_id)
    for name in ("index.html", "summary.md"):
        if (folder / name).exists():
            return f"{prefix}{quote(safe_folder_name(run_id))}/{name}"
    return None


def _bars(values: list[int | None], labels: list[str], *, color: str, what: str, step: int = 9,
          height: int = 34) -> Markup:
    """A small inline SVG bar chart, oldest left; each bar has a tooltip (<title>), no JavaScript."""
    width = max(len(values), 1) * step
    top = max((v for v in values if v), default=0) or 1
    parts = [f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{escape(what)}, last {len(values)} runs">',
             f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#b0b7c3" stroke-width="1"/>']
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        if value is None:
            continue
        h = 0 if value == 0 else max(2, round(value / top * (height - 3)))
        parts.append(f'<rect x="{i * step + 1}" y="{height - 1 - h}" width="{step - 2}" height="{h}" fill="{color}">'
                     f"<title>{escape(label)}: {value} {escape(what)}</title></rect>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _csv_cell(value: object) -> object:
    """Neutralise spreadsheet formulas in text cells (CSV injection)."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA) and not _is_number(value):
        return "'" + value
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _write_csv(path: StorePath, header: Iterable[str], rows: Iterable[Iterable[object]], *,
               shared: StorePath | None = None, clean: bool = False) -> str | None:
    """Write a CSV atomically; rows are written as they come (a generator keeps memory flat). With
    `shared` (a folder), a file with the same content as one written before is not stored again: both
    names are hard links to one copy in `shared` (issue 9: a day with no change adds no 14 MB
    findings.csv), falling back to a plain file where links are not possible. Returns the shared copy's
    name (None without one). `clean`: the rows' texts are CSV-safe already (`_csv_cell`).
    On an object store (no links, no rename) the file is one put."""
    if not clean:
        rows = ([_csv_cell(v) for v in row] for row in rows)
    if not is_local(path):  # spooled to a local file past 8 MB, then one streamed put
        with tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+b") as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="")
            writer = csv.writer(text)
            writer.writerow(list(header))
            writer.writerows(rows)
            text.flush()
            spool.seek(0)
            ensure_folder(path.parent)
            with path.open("wb") as out:
                shutil.copyfileobj(spool, out, 1 << 20)
            text.detach()
        return None
    tmp = path.with_name(path.name + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("w", newline="", encoding="utf-8-sig") as fh:  # BOM: spreadsheets read § and æøå right
        writer = csv.writer(fh)
        writer.writerow(list(header))
        writer.writerows(rows)
    if shared is None:
        tmp.replace(path)
        return None
    with tmp.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return _share(tmp, digest.hexdigest(), path, shared)


def _share(tmp: Path, digest: str, path: Path, shared: Path) -> str | None:
    """The file written at `tmp` becomes `path`, a hard link to the one copy of its content in `shared`
    (`<digest><suffix>`, kept from an earlier run or moved there now). Returns the copy's name; None
    where it stayed a plain file (no shared folder, or no hard links on this file system)."""
    kept = shared / f"{digest}{path.suffix}"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        if kept.exists():
            tmp.unlink()
        else:
            tmp.replace(kept)
    except OSError:
        tmp.replace(path)
        return None
    if _link_shared(kept, path):
        return kept.name
    shutil.copyfile(kept, path)  # no hard links here (another file system): a plain copy
    return None


def _link_shared(kept: Path, path: Path) -> bool:
    """`path` as a hard link to the shared copy `kept`, replaced atomically; False where links fail."""
    link = path.with_name(path.name + ".link")
    try:
        if path.exists() and path.samefile(kept):  # a report written again: it is that copy already
            return True
        link.unlink(missing_ok=True)
        os.link(kept, link)
        link.replace(path)
    except OSError:
        return False
    finally:  # rename() between two names of one file does nothing: the temporary name would stay
        link.unlink(missing_ok=True)
    return True


def _write_shared_text(path: StorePath, text: str, shared: Path | None) -> None:
    """Write a page; with `shared`, one whose bytes were written before is a hard link to that copy."""
    if shared is None or not is_local(path):
        _write_text(path, text)
        return
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    _share(tmp, hashlib.sha256(data).hexdigest(), path, shared)


def _write_text(path: StorePath, text: str) -> None:
    if not is_local(path):
        write_atomic(path, text.encode("utf-8"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # readers (the UI) never see half a page


# --- what a page shows ------------------------------------------------------------------------------


def _areas_of_run(state: StateStore, run_id: str) -> list[dict]:
    acknowledged = state.batches_delivered_for(run_id)
    rows = []
    for raw in state.run_rows(run_id):
        row = area_row(raw, acknowledged)
        accounted = row["delivered"] + row["annulled"] + row["quarantined"] + row["unchanged"] + row["outstanding"]
        row["difference"] = row["extracted"] - accounted
        row["started_at"], row["finished_at"] = raw["started_at"], raw["finished_at"]
        row["message"] = scrub(row.get("message") or "")
        rows.append(row)
    return rows


def _run_status(areas: list[dict]) -> str:
    if not areas:
        return "no areas"
    failed = [str(a["area"]) for a in areas if "failed" in str(a["status"])]
    if failed:
        return f"delivery failed in area {', '.join(failed)}"
    pending = [str(a["area"]) for a in areas if a["status"] != "delivered"]
    if pending:
        return f"not delivered yet: area {', '.join(pending)}"
    if any(a["outstanding"] for a in areas):
        return "delivered, with outstanding records"
    return "delivered"


def _totals(areas: list[dict]) -> dict:
    totals = {c: sum(a[c] for a in areas) for c in _COUNTS}
    totals["difference"] = sum(a["difference"] for a in areas)
    return totals


def _run_overview(state: StateStore, run_id: str) -> dict:
    areas = _areas_of_run(state, run_id)
    started = [t for t in (_utc(a["started_at"]) for a in areas) if t is not None]
    finished = [t for t in (_utc(a["finished_at"]) for a in areas) if t is not None]
    return {
        "run_id": run_id,
        "safe": safe_folder_name(run_id),
        "areas": areas,
        "totals": _totals(areas),
        "status": _run_status(areas),
        "started": min(started) if started else None,
        "finished": max(finished) if finished and len(finished) == len(areas) else None,
    }


def _rule_counts(counted: Iterable[Iterable]) -> list[dict]:
    """Per area and rule: records with an error, records with a warning (records, not findings: a record
    with three fields outside their code lists counts once), and the findings themselves."""
    rows = [{"area": int(area), "rule": str(rule), **_rule_info(str(rule)), "errors": int(errors),
             "warnings": int(warnings), "findings": int(count)} for area, rule, errors, warnings, count in counted]
    rows.sort(key=lambda r: (r["area"], -r["errors"], -r["warnings"], r["rule"]))
    return rows


def _open_quarantine(state: StateStore, limit: int | None = None) -> list[dict]:
    """The open quarantine (the first `limit` entries), each failed rule with its title."""
    entries = [q for chunk in tables.open_quarantine_chunks(state, limit=limit) for q in chunk]
    for q in entries:
        for f in q["findings"]:
            f["title"] = _rule_info(f["rule"])["title"]
    return entries


def _released_in(state: StateStore, run_id: str) -> int:
    with state.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(quarantine_table).where(
            quarantine_table.c.released_run == run_id)).scalar_one())


def _trend(state: StateStore, run_id: str | None, reports_dir: Path, href_prefix: str) -> dict:
    """The last TREND_RUNS runs up to `run_id` (or the newest): per run totals, per area the series."""
    runs = state.recent_runs(limit=100_000)  # newest first
    start = runs.index(run_id) if run_id in runs else 0
    window = runs[start:start + TREND_RUNS]
    overviews = [_run_overview(state, r) for r in window]  # newest first
    for o in overviews:
        o["href"] = _run_page_href(href_prefix, o["run_id"], reports_dir)
        o["current"] = o["run_id"] == run_id
    chronological = list(reversed(overviews))
    labels = [f"{_when(o['started'])} ({o['run_id']})" for o in chronological]
    numbers = sorted({a["area"] for o in overviews for a in o["areas"]})
    series = []
    for number in numbers:
        per_run = [{a["area"]: a for a in o["areas"]}.get(number) for o in chronological]
        quarantined = [a["quarantined"] if a else None for a in per_run]
        delivered = [a["delivered"] if a else None for a in per_run]
        series.append({
            "area": number, "title": _area_title(number),
            "quarantined": _bars(quarantined, labels, color="#c0392b", what="quarantined"),
            "delivered": _bars(delivered, labels, color="#2e7d32", what="delivered"),
            "q_last": quarantined[-1] if quarantined else None, "d_last": delivered[-1] if delivered else None,
            "q_max": max((v for v in quarantined if v is not None), default=0),
            "d_max": max((v for v in delivered if v is not None), default=0),
        })
    totals_q = [o["totals"]["quarantined"] for o in chronological]
    totals_d = [o["totals"]["delivered"] for o in chronological]
    return {"runs": overviews, "series": series, "count": len(overviews), "chronological": chronological,
            "labels": labels, "total_quarantined": _bars(totals_q, labels, color="#c0392b", what="quarantined"),
            "total_delivered": _bars(totals_d, labels, color="#2e7d32", what="delivered")}


# --- the plots: the questions analysts ask, over the runs of the trend ------------------------------

#: Rules drawn in "the top rules over time".
TOP_RULES = 5
#: Buckets of "time from first seen to released": (label, days below which a release falls in it).
RELEASE_BUCKETS = (("same day", 1), ("1 day", 2), ("2-3 days", 4), ("4-7 days", 8), ("8-30 days", 31),
                   ("over 30 days", math.inf))


def _run_label(overview: dict) -> str:
    """Short x-axis label of a run: its logical date (11-27) where the run id has one, else its start."""
    m = re.search(r"(\d{4})-(\d{2})-(\d{2})T", overview["run_id"])
    if m:
        return f"{m.group(2)}-{m.group(3)}"
    started = _utc(overview["started"])
    return started.strftime("%m-%d %H:%M") if started else overview["run_id"][:10]


def _quarantine_plot(trend: dict) -> Markup:
    runs = trend["chronological"]
    series = []
    for s in trend["series"]:
        values = [{a["area"]: a for a in o["areas"]}.get(s["area"]) for o in runs]
        series.append((f"area {s['area']}", [a["quarantined"] if a else None for a in values]))
    return plots.line_chart(series, [_run_label(o) for o in runs], tooltips=trend["labels"],
                            what=f"Records in quarantine per data area, last {len(runs)} runs",
                            y_label="records held back")


def _top_rules(trend: dict) -> tuple[Markup, list[dict]]:
    """The rules that held back or warned about most records over the runs: a line each, and a table."""
    runs = trend["chronological"]
    per_run: list[dict[str, int]] = []
    for o in runs:
        counted: dict[str, int] = {}
        for a in o["areas"]:
            for key, n in a["rules"].items():
                counted[key] = counted.get(key, 0) + int(n)
        per_run.append(counted)
    totals: dict[str, int] = {}
    for counted in per_run:
        for key, n in counted.items():
            totals[key] = totals.get(key, 0) + n
    top = sorted(totals, key=lambda k: (-totals[k], k))[:TOP_RULES]
    series = []
    rows = []
    for key in top:
        rule, severity = key.rsplit(":", 1)
        label = f"{rule} ({severity})"
        series.append((label, [counted.get(key, 0) for counted in per_run]))
        rows.append({"rule": rule, "severity": severity, "title": _rule_info(rule)["title"], "total": totals[key],
                     "last": per_run[-1].get(key, 0) if per_run else 0})
    chart = plots.line_chart(series, [_run_label(o) for o in runs], tooltips=trend["labels"],
                             what=f"The {len(top)} rules that flagged most records, last {len(runs)} runs",
                             y_label="records", dashed={label for label, _ in series if label.endswith("(warning)")})
    return chart, rows


def _release_times(state: StateStore, trend: dict) -> dict:
    """Records released from quarantine in the trend's runs: days from the run that first saw them to the
    run that released them, as buckets, with the median."""
    window = [o["run_id"] for o in trend["chronological"]]
    with state.begin() as conn:
        starts = dict(conn.execute(sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at))
                                   .group_by(run_areas.c.run_id)).all())
        released = conn.execute(sa.select(quarantine_table.c.first_seen_run, quarantine_table.c.released_run).where(
            quarantine_table.c.status == "released", quarantine_table.c.released_run.in_(window))).all()
    days = []
    for first, last in released:
        begin, end = _utc(starts.get(first)), _utc(starts.get(last))
        if begin is not None and end is not None:
            days.append(max((end - begin).total_seconds(), 0) / 86400)
    counts = [sum(1 for d in days if low <= d < high)
              for low, (_, high) in zip([0, *[h for _, h in RELEASE_BUCKETS[:-1]]], RELEASE_BUCKETS, strict=True)]
    buckets = [(label, n) for (label, _), n in zip(RELEASE_BUCKETS, counts, strict=True)]
    return {"chart": plots.bar_chart(buckets, what=f"Days from first seen to released, {len(days)} records "
                                     f"released in the last {len(window)} runs", y_label="records released"),
            "released": len(days), "median": statistics.median(days) if days else None, "buckets": buckets}


def _data_docs_links(run_id: str, reports_dir: Path) -> dict:
    """The Data Docs index and, per area, this run's validation pages (one per chunk)."""
    docs = reports_dir / "data_docs"
    per_area: dict[int, list[dict]] = {}
    if is_local(docs):
        pattern = str(docs / "validations" / "*" / f"{glob.escape(run_id)}-*-area*" / "*" / "*.html")
        found = [Path(name) for name in sorted(glob.glob(pattern))]
    else:  # an object store: list the run folders and keep this run's (no escaping rules to trust)
        found = sorted(docs.glob("validations/*/*/*/*.html"), key=str) if docs.exists() else []
    for path in found:
        folder = path.parent.parent.name  # <run_id>-<chunk>-area<N>
        m = re.fullmatch(re.escape(run_id) + r"-(\d+)-area(\d+)", folder)
        if not m:
            continue
        rel = "/".join(tail(str(path), 5))  # validations/<suite>/<run>-<chunk>-area<N>/<stamp>/<page>
        per_area.setdefault(int(m.group(2)), []).append(
            {"chunk": int(m.group(1)), "href": "../../data_docs/" + quote(rel, safe="/")})
    for links in per_area.values():
        links.sort(key=lambda link: link["chunk"])
    return {"exists": (docs / "index.html").exists(), "index": "../../data_docs/index.html", "per_area": per_area}


# --- templates --------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1d2430; --muted:#5b6576; --line:#d5dae1; --band:#f4f6f9; --err:#b3261e; --err-bg:#fde8e7;
  --warn:#8a5a00; --warn-bg:#fff4d6; --ok:#1e6b30; --ok-bg:#e3f4e7; --link:#0b57d0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); margin: 0; padding: 20px 28px 40px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; padding-top: 8px;
  border-top: 2px solid var(--line); } h3 { font-size: 14px; margin: 16px 0 6px; }
a { color: var(--link); } .muted { color: var(--muted); } .small { font-size: 12px; }
nav.links { margin: 8px 0 4px; } nav.links a { margin-right: 14px; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 24px; margin: 6px 0 2px; }
.meta div span { color: var(--muted); margin-right: 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: var(--band); font-weight: 600; position: sticky; top: 0; }
td.n, th.n { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tr.total td { font-weight: 600; background: var(--band); border-top: 2px solid #9aa3b1; }
tr.current td { background: #eef4ff !important; }
td.mono, td.key { white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 12px; font-weight: 600;
  white-space: nowrap; }
.b-error { color: var(--err); background: var(--err-bg); }
.b-warning { color: var(--warn); background: var(--warn-bg); }
.b-ok { color: var(--ok); background: var(--ok-bg); } .b-new { color: #0b57d0; background: #e3ecff; }
.zero { color: #a0a8b5; }
ul.failed { margin: 0; padding-left: 16px; } ul.failed li { margin: 1px 0; }
.note { background: var(--warn-bg); border-left: 4px solid #e0a800; padding: 6px 10px; margin: 8px 0; }
.info { background: var(--band); border-left: 4px solid #9aa3b1; padding: 6px 10px; margin: 8px 0; }
svg.spark { vertical-align: middle; }
figure { margin: 10px 0 18px; } figcaption { max-width: 760px; margin: 0 0 6px; }
svg.plot { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
details > summary { cursor: pointer; font-weight: 600; margin: 8px 0; }
.run-id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  word-break: break-all; }
@media print { th { position: static; } body { padding: 0; } }
"""

_LAYOUT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{% block title %}{% endblock %}</title>
<style>{{ css }}</style>
</head>
<body>
{% block body %}{% endblock %}
<p class="muted small">{% if generated %}Written {{ generated }}. {% endif %}Persons are shown as DDMMYY-****:
no CPR number appears in this report. Use the record key to find the row in the case system.</p>
</body>
</html>
"""

_RUN_HEAD = """<h1>AMS data quality: run <span class="run-id">{{ run.run_id }}</span></h1>
<div class="meta">
  <div><span>started</span>{{ when(run.started) }}</div>
  <div><span>finished</span>{{ when(run.finished) }}</div>
  <div><span>status</span><strong>{{ run.status }}</strong></div>
  <div><span>open quarantine</span><strong>{{ quarantine_count }}</strong></div>
  <div><span>released from quarantine in this run</span>{{ released }}</div>
</div>
<nav class="links">
  <a href="../../index.html">All runs</a>
  <a href="quarantine.csv">Open quarantine (CSV)</a>
  <a href="findings.csv">All findings of this run (CSV)</a>
  <a href="summary.md">Run summary</a>
  {% if docs.exists %}<a href="{{ docs.index }}">Great Expectations Data Docs</a>
  {% else %}<span class="muted">Data Docs were not built (AMS_DATA_DOCS=0)</span>{% endif %}
</nav>
"""

_RUN_COUNTS = """<h2 id="counts">Counts per data area</h2>
<table>
<thead><tr><th>area</th><th>what</th><th class="n">extracted</th><th class="n">delivered</th><th class="n">annulled</th>
<th class="n">quarantined</th><th class="n">unchanged</th><th class="n">outstanding</th><th class="n">warnings</th>
<th>check</th><th>status</th></tr></thead>
<tbody>
{% for a in run.areas %}
<tr data-counts-area="{{ a.area }}"><td class="n">{{ a.area }}</td><td>{{ a.title }}</td>
{% for c in ["extracted", "delivered", "annulled", "quarantined", "unchanged", "outstanding", "warnings"] %}
<td class="n{% if not a[c] %} zero{% endif %}">{{ a[c] }}</td>{% endfor %}
<td>{{ check(a.difference) }}</td>
<td>{{ a.status }}{% if a.message %}<div class="small">{{ a.message }}</div>{% endif %}</td></tr>
{% endfor %}
</tbody>
<tbody><tr class="total"><td colspan="2">all areas</td>
{% for c in ["extracted", "delivered", "annulled", "quarantined", "unchanged", "outstanding", "warnings"] %}
<td class="n">{{ run.totals[c] }}</td>{% endfor %}<td>{{ check(run.totals.difference) }}</td><td></td></tr></tbody>
</table>
<p class="muted small">Check: extracted = delivered + annulled + quarantined + unchanged + outstanding, per area.
<b>warnings</b> counts records sent in this run with at least one warning (records held back or
unchanged are not counted). <b>outstanding</b> is staged or in doubt,
not yet acknowledged by the agency (0 after a good run).</p>

{% if run.areas | selectattr("phases") | list %}
<h2 id="phases">Where the time went</h2>
<table class="small">
<thead><tr><th>area</th>{% for p in phase_names %}<th class="n">{{ p }}</th>{% endfor %}
<th class="n">peak memory</th></tr></thead>
<tbody>{% for a in run.areas if a.phases %}
<tr data-phases-area="{{ a.area }}"><td class="n">{{ a.area }}</td>
{% for p in phase_names %}{% set t = a.phases.get(p, 0) %}
<td class="n{% if not t %} zero{% endif %}">{{ "%.1f s" | format(t) }}</td>{% endfor %}
<td class="n">{{ a.peak_rss_mib }} MiB</td></tr>{% endfor %}</tbody>
</table>
<p class="muted small">Seconds per phase of the area's prepare and deliver tasks (cycle.timing): extract,
map, contract (pandera), quality (Great Expectations), findings and quarantine stored, hash (content hashes),
diff (against the ledger), payload, xsd, encrypt and add_batch (staging), send (to the agency), receipt
(stored in the ledger), archive. Peak memory is the larger task's.</p>
{% endif %}
"""

_RUN = """{% extends "layout" %}
{% block title %}AMS data quality - run {{ run.run_id }}{% endblock %}
{% block body %}
{% include "run_head" %}
{% include "run_counts" %}
<h2 id="plots">At a glance: the last {{ trend.count }} run{{ "s" if trend.count != 1 else "" }}</h2>
<figure id="plot-quarantine">
<figcaption><b>Is the quarantine shrinking?</b> Records held back after each run, per data area (oldest left).
A falling line means fixes at the source are coming through; a jump means new defects or a new rule.</figcaption>
{{ plots.quarantine }}
</figure>
<figure id="plot-rules">
<figcaption><b>Which rules matter most?</b> The rules that flagged most records over these runs, per run
(records, not findings). Solid lines are errors, which hold a record back; dashed lines are warnings.</figcaption>
{{ plots.top_rules }}
{% if plots.top_rules_rows %}
<table class="small">
<thead><tr><th>rule</th><th>severity</th><th>what the rule demands</th><th class="n">records, all these runs</th>
<th class="n">this run</th></tr></thead>
<tbody>{% for r in plots.top_rules_rows %}
<tr data-top-rule="{{ r.rule }}"><td><code>{{ r.rule }}</code></td><td>{{ r.severity }}</td><td>{{ r.title }}</td>
<td class="n">{{ r.total }}</td><td class="n">{{ r.last }}</td></tr>{% endfor %}</tbody>
</table>
{% endif %}
</figure>
<figure id="plot-release">
<figcaption><b>How long does a fix take?</b> Days from the run that first held a record back to the run that
released it (fixed at the source), for the {{ plots.release.released }} record{{ "s" if plots.release.released != 1
else "" }} released in these runs{% if plots.release.median is not none %}; median
{{ "%.1f"|format(plots.release.median) }} days{% endif %}.</figcaption>
{{ plots.release.chart }}
</figure>

<h2 id="rules">Findings per area and rule</h2>
{% if rules %}
<table>
<thead><tr><th>area</th><th>rule</th><th>what the rule demands</th><th>basis</th>
<th class="n">records held back</th><th class="n">records with a warning</th><th class="n">findings</th></tr></thead>
<tbody>
{% for r in rules %}
<tr data-area="{{ r.area }}" data-rule="{{ r.rule }}"><td class="n">{{ r.area }}</td><td><code>{{ r.rule }}</code></td>
<td>{{ r.title }}</td><td>{{ r.basis }}</td>
<td class="n" data-errors="{{ r.errors }}">{{ count_badge(r.errors, "error") }}</td>
<td class="n" data-warnings="{{ r.warnings }}">{{ count_badge(r.warnings, "warning") }}</td>
<td class="n">{{ r.findings }}</td></tr>
{% endfor %}
</tbody>
</table>
<p class="muted small">An <b>error</b> holds the record back (quarantine) until it is fixed at the source; a
<b>warning</b> lets it through and is reported. Counts are records: a record with three fields outside their code
lists counts once under <code>code.invalid</code> (and three times under <b>findings</b>). A record can break
several rules, so the rows do not add up to the quarantine.</p>
{% else %}
<p class="info">No findings in this run.</p>
{% endif %}

<h2 id="quarantine">Open quarantine ({{ quarantine_count }})</h2>
<p class="muted small">Records held back until they are fixed at the source, with every rule they fail. A fixed
record leaves the list in the next run and is delivered.</p>
<p><a href="quarantine.html">The open quarantine and this run's warnings</a>{% if quarantine_count > MAX_ROWS %}
(the first {{ MAX_ROWS }} of each){% endif %}; every entry in <a href="quarantine.csv">quarantine.csv</a>, every
finding in <a href="findings.csv">findings.csv</a>.</p>
{% if new_in_quarantine %}
<h3>New in quarantine in this run ({{ new_count }}{% if new_count > new_in_quarantine|length %}, the first
{{ new_in_quarantine|length }} shown{% endif %})</h3>
{{ quarantine_table(new_in_quarantine, run.run_id, run_ref) }}
{% elif quarantine_count %}
<p class="info">No record entered quarantine in this run.</p>
{% else %}
<p class="info">Nothing is in quarantine.</p>
{% endif %}
<p class="muted small">Warnings in this run: {{ warnings_count }} findings (records delivered with a warning:
information, nothing is held back); per rule in the table above.</p>

<h2 id="data-docs">Great Expectations Data Docs</h2>
{% if docs.exists %}
<p>The data-quality suite's results for every run, area and chunk: <a href="{{ docs.index }}">Data Docs index</a>.
Each expectation names the rule, the field and the paragraph; the suite runs on a masked copy.</p>
{% if docs.per_area %}
<p>This run's validations:
{% for area, links in docs.per_area|dictsort %}
<span>area {{ area }}: {% for link in links %}<a href="{{ link.href }}">chunk {{ link.chunk }}</a>
{%- if not loop.last %}, {% endif %}{% endfor %}</span>{% if not loop.last %}; {% endif %}
{% endfor %}</p>
{% endif %}
{% else %}
<p class="info">No Data Docs were built for this installation (AMS_DATA_DOCS=0).</p>
{% endif %}

<h2 id="trend">Trend: the last {{ trend.count }} run{{ "s" if trend.count != 1 else "" }}</h2>
<table>
<thead><tr><th>area</th><th>what</th><th>quarantined (oldest left)</th><th class="n">now</th><th class="n">max</th>
<th>delivered (oldest left)</th><th class="n">now</th><th class="n">max</th></tr></thead>
<tbody>
{% for s in trend.series %}
<tr><td class="n">{{ s.area }}</td><td>{{ s.title }}</td><td>{{ s.quarantined }}</td>
<td class="n">{{ s.q_last if s.q_last is not none else "-" }}</td><td class="n">{{ s.q_max }}</td>
<td>{{ s.delivered }}</td><td class="n">{{ s.d_last if s.d_last is not none else "-" }}</td>
<td class="n">{{ s.d_max }}</td></tr>
{% endfor %}
<tr class="total"><td colspan="2">all areas</td><td>{{ trend.total_quarantined }}</td><td></td><td></td>
<td>{{ trend.total_delivered }}</td><td></td><td></td></tr>
</tbody>
</table>
{{ runs_table(trend.runs) }}
{% endblock %}
"""

_QUIET = """{% extends "layout" %}
{% block title %}AMS data quality - run {{ run.run_id }} (no change){% endblock %}
{% block body %}
{% include "run_head" %}
<p class="info" id="no-change"><b>Nothing changed in this run.</b> No record was sent or annulled, no finding is new
or resolved, and the open quarantine is the one
<a href="{{ full_href }}">run <span class="run-id">{{ full_run }}</span></a> left. That run's page shows the
findings per rule, the open quarantine and the plots; it is not written again for a day like this
(<a href="quarantine.html">the open quarantine and warnings</a> and the CSVs are the same files). The runs since
then, this one included, are in <a href="../../index.html">the list of runs</a> and in the trend of the next
page that shows a change.</p>
{% include "run_counts" %}
{% endblock %}
"""

_LISTS = """{% extends "layout" %}
{% block title %}AMS data quality - open quarantine and warnings{% endblock %}
{% block body %}
<h1>AMS data quality: open quarantine and warnings</h1>
<nav class="links">
  <a href="index.html">The run's page</a>
  <a href="quarantine.csv">Open quarantine (CSV)</a>
  <a href="findings.csv">All findings of the run (CSV)</a>
</nav>
<p class="muted small">This page is the same for every run after which nothing changed: it is stored once and
shared by their folders. Each record names the run that first held it back; the run that last saw it is in
quarantine.csv.</p>
<h2 id="quarantine">Open quarantine ({{ quarantine_count }})</h2>
<p class="muted small">Records held back until they are fixed at the source, with every rule they fail. The list is
the state after this run{% if quarantine_shown < quarantine_count %}; the first {{ quarantine_shown }} of
{{ quarantine_count }} are shown{% endif %}. A fixed record leaves the list in the next run and is delivered.</p>
{% if quarantine_shown < quarantine_count %}
<p class="note">Showing {{ quarantine_shown }} of {{ quarantine_count }} open entries.
The full list is in <a href="quarantine.csv">quarantine.csv</a>.</p>
{% endif %}
{% if quarantine %}
{{ quarantine_table(quarantine[:quarantine_shown], "", run_link, last_seen=False) }}
{% else %}
<p class="info">Nothing is in quarantine.</p>
{% endif %}

<h2 id="warnings">Warnings in this run ({{ warnings_count }} findings{% if warnings_shown < warnings_count %}, first
{{ warnings_shown }} shown{% endif %})</h2>
<p class="muted small">Records delivered with a warning: information, nothing is held back. All of them are in
<a href="findings.csv">findings.csv</a>.</p>
{% if warnings %}
<table>
<thead><tr><th>area</th><th>record key</th><th>rule</th><th>paragraph</th><th>message</th></tr></thead>
<tbody>
{% for f in warnings[:warnings_shown] %}
<tr><td class="n">{{ f.area }}</td><td><code>{{ f.record_key }}</code></td><td><code>{{ f.rule }}</code></td>
<td>{{ f.paragraph }}</td><td>{{ f.message }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}

{% endblock %}
"""

_QUARANTINE_TABLE = """{% macro quarantine_table(rows, run_id, run_ref, last_seen=True) %}
<table>
<thead><tr><th>area</th><th>record key</th><th>person</th><th>failed rules (paragraph: message)</th>
<th class="n">first seen</th>{% if last_seen %}<th class="n">last seen</th>{% endif %}</tr></thead>
<tbody>
{% for q in rows %}
<tr data-quarantine-area="{{ q.area }}" data-key="{{ q.record_key }}"><td class="n">{{ q.area }}</td>
<td class="key"><code>{{ q.record_key }}</code>
{% if q.first_seen_run == run_id %} <span class="badge b-new">new</span>{% endif %}</td>
<td class="mono">{{ q.person }}</td>
<td><ul class="failed">{% for f in q.findings %}
<li><code>{{ f.rule }}</code> <span class="muted">{{ f.paragraph }}</span>: {{ f.message }}</li>{% endfor %}</ul></td>
<td>{{ run_ref(q.first_seen_run) }}</td>{% if last_seen %}<td>{{ run_ref(q.last_seen_run) }}</td>{% endif %}</tr>
{% endfor %}
</tbody>
</table>
{% endmacro %}"""

_RUNS_TABLE = """{% macro runs_table(runs) %}
<table>
<thead><tr><th>run</th><th>started</th><th class="n">extracted</th><th class="n">delivered</th>
<th class="n">annulled</th><th class="n">quarantined</th><th class="n">warnings</th><th>check</th><th>status</th>
</tr></thead>
<tbody>
{% for o in runs %}
<tr{% if o.current %} class="current"{% endif %}>
<td class="run-id">{% if o.href %}<a href="{{ o.href }}">{{ o.run_id }}</a>{% else %}{{ o.run_id }}{% endif %}</td>
<td>{{ when(o.started) }}</td>
<td class="n">{{ o.totals.extracted }}</td><td class="n">{{ o.totals.delivered }}</td>
<td class="n">{{ o.totals.annulled }}</td>
<td class="n">{{ o.totals.quarantined }}</td><td class="n">{{ o.totals.warnings }}</td>
<td>{{ check(o.totals.difference) }}</td><td>{{ o.status }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endmacro %}
"""

_INDEX = """{% extends "layout" %}
{% block title %}AMS data quality - runs{% endblock %}
{% block body %}
<h1>AMS data quality</h1>
<p class="muted">Employment-area reporting to the labour market agency: one page per run of the DAG
<code>employment_reporting</code>, newest first.</p>
{% if latest %}
<div class="meta">
  <div><span>latest run</span>{% if latest.href %}<a class="run-id" href="{{ latest.href }}">{{ latest.run_id }}</a>
  {% else %}<span class="run-id">{{ latest.run_id }}</span>{% endif %}</div>
  <div><span>started</span>{{ when(latest.started) }}</div>
  <div><span>status</span><strong>{{ latest.status }}</strong></div>
  <div><span>open quarantine</span><strong>{{ open_quarantine }}</strong></div>
</div>
{% endif %}
<nav class="links">{% if latest and latest.href %}<a href="{{ latest.href }}">Latest run</a>{% endif %}
{% if docs_exists %}<a href="data_docs/index.html">Great Expectations Data Docs</a>{% endif %}</nav>

{% if runs %}
<h2>Trend: the last {{ trend.count }} run{{ "s" if trend.count != 1 else "" }}, all areas</h2>
<table><thead><tr><th>quarantined (oldest left)</th><th>delivered (oldest left)</th></tr></thead>
<tbody><tr><td>{{ trend.total_quarantined }}</td><td>{{ trend.total_delivered }}</td></tr></tbody></table>
<h2>Runs</h2>
{% if more %}
<p class="note">The {{ runs|length }} newest runs are listed; older ones are in the runs/ folder.</p>
{% endif %}
{{ runs_table(runs) }}
{% else %}
<p class="info">No run yet: run the DAG <code>employment_reporting</code> first.</p>
{% endif %}
{% endblock %}
"""


_OVERVIEW = """{% extends "layout" %}
{% block title %}AMS reporting - all municipalities{% endblock %}
{% block body %}
<h1>AMS reporting: all municipalities</h1>
<p class="muted">For the operator: the latest run of every municipality this deployment reports for
(one DAG <code>employment_reporting_&lt;kommunekode&gt;</code> each). Each municipality's own pages, for its
analysts, are linked.</p>
{% if municipalities %}
<table>
<thead><tr><th>municipality</th><th>latest run</th><th>finished</th><th>status</th><th class="n">extracted</th>
<th class="n">delivered</th><th class="n">quarantined</th><th class="n">in doubt</th><th class="n">not archived</th>
<th class="n">open quarantine</th></tr></thead>
<tbody>
{% for m in municipalities %}
<tr{% if m.attention %} class="current"{% endif %}>
<td><a href="{{ m.code }}/">{{ m.code }} {{ m.name }}</a></td>
<td class="run-id">{% if m.run_href %}<a href="{{ m.run_href }}">{{ m.run_id }}</a>
{% else %}{{ m.run_id }}{% endif %}</td>
<td>{{ m.written }}</td><td><strong>{{ m.status }}</strong></td>
<td class="n">{{ m.totals.extracted }}</td><td class="n">{{ m.totals.delivered }}</td>
<td class="n">{{ m.totals.quarantined }}</td><td class="n">{{ m.in_doubt }}</td><td class="n">{{ m.unarchived }}</td>
<td class="n">{{ m.open_quarantine }}</td></tr>
{% endfor %}
</tbody>
</table>
<p class="note">In doubt: batches that may have reached the agency, looked up before anything is sent again.
Not archived: acknowledged batches whose archive is not written yet. Both should be 0 after a clean run
(docs/operations.md, "Batch states").</p>
{% else %}
<p class="info">No municipality has written a report yet.</p>
{% endif %}
{% endblock %}
"""

#: A municipality's status card: written beside its index by every report task, read by the overview.
TENANT_CARD = "latest.json"
_KOMMUNEKODE = re.compile(r"\d{3}")


def write_tenant_card(settings: Settings, summary: dict) -> StorePath:
    """<reports root>/<kommunekode>/latest.json: the latest run's status and counts (no personal data)."""
    state = settings.state()
    overview = _run_overview(state, summary["run_id"])
    card = {"code": settings.tenant, "run_id": summary["run_id"], "safe": overview["safe"],
            "status": overview["status"], "totals": {k: int(v) for k, v in overview["totals"].items()
                                                     if isinstance(v, int | float)},
            "in_doubt": summary["in_doubt"], "unarchived": summary["unarchived"],
            "open_quarantine": summary["open_quarantine"], "written": datetime.now(UTC).isoformat()}
    path = settings.reports_dir / TENANT_CARD
    write_atomic(path, json.dumps(card, indent=2, sort_keys=True).encode())
    return path


def municipality_cards(reports_root: StorePath) -> list[dict]:
    """The status card of every municipality folder found in the reports root, by kommunekode."""
    from transforms.codelists import rows

    if not reports_root.exists():
        return []
    names = {r["kode"]: r["navn"] for r in rows("municipalities")}
    cards = []
    for folder in sorted(reports_root.iterdir(), key=lambda p: p.name):
        if not _KOMMUNEKODE.fullmatch(folder.name) or not (folder / TENANT_CARD).is_file():
            continue
        try:
            card = json.loads((folder / TENANT_CARD).read_text(encoding="utf-8"))
        except ValueError:
            continue
        totals = {c: card.get("totals", {}).get(c, 0) for c in ("extracted", "delivered", "quarantined")}
        run_page = folder / "runs" / str(card.get("safe", "")) / "index.html"
        cards.append({
            "code": folder.name, "name": names.get(folder.name, ""), "run_id": card.get("run_id", ""),
            "run_href": f"{folder.name}/runs/{card['safe']}/" if card.get("safe") and run_page.is_file() else None,
            "status": card.get("status", ""), "totals": totals, "in_doubt": int(card.get("in_doubt", 0)),
            "unarchived": int(card.get("unarchived", 0)), "open_quarantine": int(card.get("open_quarantine", 0)),
            "written": str(card.get("written", ""))[:16].replace("T", " "),
            "attention": bool(card.get("in_doubt") or card.get("unarchived")) or card.get("status") != "delivered"})
    return cards


def render_overview(reports_root: StorePath) -> str:
    return _env().get_template("overview").render(municipalities=municipality_cards(reports_root),
                                                  generated=_when(datetime.now(UTC)))


def write_overview(settings: Settings) -> StorePath:
    """<reports root>/index.html: the operator's page across municipalities (a tenants deployment)."""
    path = settings.reports_root / "index.html"
    _write_text(path, render_overview(settings.reports_root))
    return path


def _env() -> Environment:
    env = Environment(loader=DictLoader({"layout": _LAYOUT, "run": _RUN, "index": _INDEX, "runs_table": _RUNS_TABLE,
                                         "overview": _OVERVIEW, "lists": _LISTS, "quiet": _QUIET,
                                         "run_head": _RUN_HEAD, "run_counts": _RUN_COUNTS,
                                         "quarantine_table": _QUARANTINE_TABLE}),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["when"] = _when
    env.globals["css"] = Markup(_CSS)
    env.globals["check"] = _check
    env.globals["count_badge"] = _count_badge
    macros = env.get_template("runs_table").module
    env.globals["runs_table"] = macros.runs_table  # type: ignore[attr-defined]
    env.globals["quarantine_table"] = env.get_template("quarantine_table").module.quarantine_table  # type: ignore[attr-defined]
    env.globals["MAX_ROWS"] = MAX_ROWS
    return env


def _count_badge(count: int, severity: str) -> Markup:
    if not count:
        return Markup('<span class="zero">0</span>')
    return Markup('<span class="badge b-{}">{}</span>').format(severity, count)


def _check(difference: int) -> Markup:
    if difference == 0:
        return Markup('<span class="badge b-ok">&#10003; adds up</span>')
    word = "missing" if difference > 0 else "too many"
    return Markup('<span class="badge b-error">&#10007; {} {}</span>').format(abs(difference), word)


# --- the pages --------------------------------------------------------------------------------------


#: Beside each run's page: what its CSVs were made of (tables.findings_state, tables.quarantine_state)
#: and their shared copies, so the next run's report links a CSV whose content has not changed.
REPORT_STATE = "report.json"
_FINDINGS_CSV_HEADER = ("area", "record_key", "rule", "rule_title", "severity", "field", "paragraph", "message")
_QUARANTINE_CSV_HEADER = ("area", "record_key", "person", "rule", "rule_title", "severity", "field", "paragraph",
                          "message", "first_seen_run", "last_seen_run")
#: In quarantine.csv, the run of the folder: an entry standing unchanged is last seen by every run, so
#: naming the run would make every day's list a new file (the page says "this run" too).
THIS_RUN = "this run"


def _run_context(run_id: str, settings: Settings, state: StateStore, view: dict | None = None) -> dict:
    """What the run's pages show but the trend and plots, which only the full page shows (`_history`).
    `view`: what it shows of the run's findings (rules, warnings, warnings_count), from `_findings_view`;
    read from the state DB when not given."""
    run = _run_overview(state, run_id)
    if not run["areas"]:
        raise LookupError(f"run {run_id!r} is not in the state database")
    reports_dir = settings.reports_dir
    if view is None:
        view = _findings_view(state, run_id)
    quarantine = _open_quarantine(state, limit=MAX_ROWS)
    quarantine_count = tables.open_quarantine_count(state)

    def run_link(other: str) -> Markup:
        href = _run_page_href("../", other, reports_dir) if other != run_id else f"../{quote(run['safe'])}/index.html"
        text = Markup('<span class="run-id">{}</span>').format(other)
        return Markup('<a href="{}">{}</a>').format(href, text) if href else text

    def run_ref(other: str) -> Markup:
        if other == run_id:
            return Markup('<span class="muted">this run</span>')
        return run_link(other)

    return {
        "run": run,
        "rules": _rule_counts(view["rules"]),
        "phase_names": list(dict.fromkeys(p for a in run["areas"] for p in (a.get("phases") or {}))),
        "warnings": view["warnings"][:MAX_ROWS],
        "warnings_count": view["warnings_count"],
        "warnings_shown": min(view["warnings_count"], MAX_ROWS),
        "quarantine": quarantine,
        "quarantine_count": quarantine_count,
        "quarantine_shown": min(quarantine_count, len(quarantine)),
        "new_in_quarantine": [q for q in quarantine if q["first_seen_run"] == run_id][:NEW_ROWS],
        "new_count": tables.open_quarantine_count(state, first_seen_run=run_id) if quarantine_count else 0,
        "run_id": run_id,
        "released": _released_in(state, run_id),
        "docs": _data_docs_links(run_id, reports_dir),
        "run_ref": run_ref,
        "run_link": run_link,  # the same from every run's folder (quarantine.html is shared between them)
        "generated": _when(datetime.now(UTC)),
    }


def _history(state: StateStore, run: dict, reports_dir: Path) -> dict:
    """The full run page's trend and plots over the last TREND_RUNS runs up to `run` (an overview)."""
    trend = _trend(state, run["run_id"], reports_dir, "../")
    for o in trend["runs"]:  # this page, being written (before it exists the link went to summary.md)
        if o["current"]:
            o["href"] = f"../{quote(run['safe'])}/index.html"
    top_rules_chart, top_rules = _top_rules(trend)
    return {"trend": trend,
            "plots": {"quarantine": _quarantine_plot(trend), "top_rules": top_rules_chart,
                      "top_rules_rows": top_rules, "release": _release_times(state, trend)}}


def _findings_view(state: StateStore, run_id: str, tally: tables.FindingsTally | None = None) -> dict:
    """Stream the run's findings once through a tally (unless one has counted them already)."""
    if tally is None:
        tally = tables.FindingsTally(MAX_ROWS)
        for chunk in tables.run_findings_chunks(state, run_id):
            for row in chunk:
                tally.add(row)
    return {"rules": tally.rule_counts(), "warnings": tally.warnings, "warnings_count": tally.warnings_count}


def render_run_page(run_id: str, settings: Settings) -> str:
    """The run's page as HTML (self-contained; links are relative to runs/<safe run id>/)."""
    state = settings.state()
    context = _run_context(run_id, settings, state)
    return _env().get_template("run").render(**context, **_history(state, context["run"], settings.reports_dir))


def render_lists_page(run_id: str, settings: Settings) -> str:
    """The run's open quarantine and warnings (quarantine.html), shared by content between runs."""
    state = settings.state()
    return _env().get_template("lists").render(**{**_run_context(run_id, settings, state), "generated": ""})


def _findings_csv_rows(state: StateStore, run_id: str, tally: tables.FindingsTally) -> Iterator[tuple]:
    """findings.csv's rows, CSV-safe, chunk by chunk from the state DB; each row also counted in `tally`."""
    titles: dict[str, object] = {}
    cells: dict[str, object] = {}  # rules, fields, paragraphs and messages repeat: each made CSV-safe once

    def cell(value: str) -> object:
        found = cells.get(value)
        if found is None:
            found = cells[value] = _csv_cell(value)
        return found

    for chunk in tables.run_findings_chunks(state, run_id):
        if len(cells) > 200_000:
            cells.clear()
        for row in chunk:
            tally.add(row)
            area, key, rule, field, paragraph, severity, message = row
            title = titles.get(rule)
            if title is None:
                title = titles[rule] = _csv_cell(_rule_info(rule)["title"])
            yield (area, _csv_cell(key), cell(rule), title, cell(severity), cell(field), cell(paragraph), cell(message))


def _quarantine_csv_rows(state: StateStore, run_id: str) -> Iterator[tuple]:
    for chunk in tables.open_quarantine_chunks(state):
        for q in chunk:
            last = THIS_RUN if q["last_seen_run"] == run_id else q["last_seen_run"]
            for f in q["findings"] or [_NO_FINDING]:
                title = f["title"] if f is _NO_FINDING else _rule_info(f["rule"])["title"]
                yield tuple(_csv_cell(v) for v in (
                    q["area"], q["record_key"], q["person"], f["rule"], title, f["severity"], f["field"],
                    f["paragraph"], f["message"], q["first_seen_run"], last))


def _read_state(folder: StorePath) -> dict | None:
    try:
        return json.loads((folder / REPORT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run_start(state: StateStore, run_id: str) -> datetime | None:
    started = [t for t in (_utc(r["started_at"]) for r in state.run_rows(run_id)) if t is not None]
    return min(started) if started else None


def _earlier_reports(state: StateStore, run_id: str, runs_dir: Path) -> list[dict]:
    """The state files of this run's own earlier report and of the run before it, where they still
    describe those runs (same start). A run's findings are those of the run before it when both cover
    the same areas, the table is unchanged since that run's report was written, and this run started
    after that: then no finding is new in this run or resolved by it."""
    runs = state.recent_runs(limit=100_000)  # newest first
    if run_id not in runs:
        return []
    found = []
    for other in runs[runs.index(run_id):runs.index(run_id) + 2]:
        kept = _read_state(runs_dir / safe_folder_name(other))
        started = _run_start(state, other)
        if kept and kept.get("run_id") == other and started and kept.get("started") == started.isoformat():
            found.append(kept)
    return found


def _reuse(path: Path, kept: dict | None, shared: Path) -> str | None:
    """Link `path` to the shared copy `kept` names; its name, or None when it is gone or links fail."""
    name = (kept or {}).get("file")
    if not name or not (shared / name).is_file():
        return None
    return name if _link_shared(shared / name, path) else None


def write_run_page(run_id: str, settings: Settings) -> Path:
    """Write runs/<safe run id>/index.html with quarantine.csv and findings.csv beside it.

    The CSVs are streamed from the state DB (memory: one chunk). Where a CSV's content is the same as
    that of the previous run's report (nothing new, nothing resolved, the same quarantine: the state
    files say so without reading the tables), it is linked to the shared copy, not written again."""
    state = settings.state()
    folder = settings.reports_dir / "runs" / safe_folder_name(run_id)
    ensure_folder(folder)
    shared = settings.reports_dir / "runs" / SHARED_FILES
    local = is_local(folder)
    written_at = datetime.now(UTC)  # before the fingerprints: a run starting later cannot be in them
    findings_now = tables.findings_state(state)
    quarantine_now = tables.quarantine_state(state, run_id)
    started = _run_start(state, run_id)
    starts_before, starts_upto = tables.run_starts(state, run_id)
    areas = sorted(int(r["area"]) for r in state.run_rows(run_id))
    earlier = _earlier_reports(state, run_id, settings.reports_dir / "runs") if local else []

    view, findings_file, view_file, quarantine_file = None, None, None, None
    unchanged_since = None  # the run whose full page this run's findings and quarantine are the same as
    for kept in earlier:
        same_run = kept["run_id"] == run_id
        # the run before: it started just before this one (nothing between, nothing moved), and this one
        # started after its report had looked at the findings (none of this run's can be in them)
        try:
            after = same_run or (started is not None and started > datetime.fromisoformat(kept["written_at"]))
        except (KeyError, TypeError, ValueError):  # a state file of another version: read everything
            continue
        starts = kept.get("starts")
        follows = isinstance(starts, list) and len(starts) == 2 and starts[0 if same_run else 1] == starts_before
        findings_kept = kept.get("findings") or {}
        if (view is None and after and follows and kept.get("areas") == areas
                and findings_kept.get("state") == findings_now
                and (page_view := _read_view(shared, findings_kept.get("view")))
                and (findings_file := _reuse(folder / "findings.csv", findings_kept, shared))):
            view, view_file = page_view, findings_kept["view"]
        quarantine_kept = kept.get("quarantine") or {}
        if quarantine_file is None and quarantine_kept.get("state") == quarantine_now:
            quarantine_file = _reuse(folder / "quarantine.csv", quarantine_kept, shared)
        if (not same_run and after and follows and kept.get("areas") == areas
                and findings_kept.get("state") == findings_now and quarantine_kept.get("state") == quarantine_now):
            unchanged_since = str(kept.get("page") or kept["run_id"])

    if quarantine_file is None:
        quarantine_file = _write_csv(folder / "quarantine.csv", _QUARANTINE_CSV_HEADER,
                                     _quarantine_csv_rows(state, run_id), shared=shared, clean=True)
    if view is None:
        tally = tables.FindingsTally(MAX_ROWS)
        findings_file = _write_csv(folder / "findings.csv", _FINDINGS_CSV_HEADER,
                                   _findings_csv_rows(state, run_id, tally), shared=shared, clean=True)
        view = _findings_view(state, run_id, tally)
        if findings_file:  # what the page shows of that file, kept with it for the next run's report
            view_file = findings_file.rsplit(".", 1)[0] + ".view.json"
            if not (shared / view_file).is_file():
                _write_text(shared / view_file, json.dumps(view, sort_keys=True))
    page = folder / "index.html"
    context = _run_context(run_id, settings, state, view)
    lists = _env().get_template("lists").render(**{**context, "generated": ""})
    _write_shared_text(folder / "quarantine.html", lists, shared if local else None)
    full_run = _quiet_since(context, unchanged_since, settings.reports_dir / "runs")
    if full_run:  # a day without change: a short page pointing to the last full one (a few kB a day)
        _write_text(page, _env().get_template("quiet").render(
            **context, full_run=full_run, full_href=f"../{quote(safe_folder_name(full_run))}/index.html"))
    else:
        context.update(_history(state, context["run"], settings.reports_dir))
        _write_text(page, _env().get_template("run").render(**context))
    if local and started is not None:
        _write_text(folder / REPORT_STATE, json.dumps({
            "run_id": run_id, "started": started.isoformat(), "written_at": written_at.isoformat(), "areas": areas,
            "starts": [starts_before, starts_upto], "page": full_run or run_id,
            "findings": {"state": findings_now, "file": findings_file, "view": view_file},
            "quarantine": {"state": quarantine_now, "file": quarantine_file}}, indent=1, sort_keys=True))
    return page


def _quiet_since(context: dict, unchanged_since: str | None, runs_dir: Path) -> str | None:
    """The run whose full page stands for this one, when this run changed nothing: the findings and the
    open quarantine are those that run's page shows (`unchanged_since`, from the report states), and this
    run sent, annulled and released nothing and left nothing outstanding. None: write the full page."""
    run, totals = context["run"], context["run"]["totals"]
    if (not unchanged_since or run["status"] != "delivered" or context["released"]
            or any(totals[c] for c in ("delivered", "annulled", "outstanding"))):
        return None
    return unchanged_since if (runs_dir / safe_folder_name(unchanged_since) / "index.html").is_file() else None


def _read_view(shared: Path, name: str | None) -> dict | None:
    if not name:
        return None
    try:
        view = json.loads((shared / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    view["rules"] = [tuple(r) for r in view["rules"]]
    return view


def render_index(settings: Settings) -> str:
    state = settings.state()
    reports_dir = settings.reports_dir
    runs = state.recent_runs(limit=INDEX_RUNS + 1)
    listed = [_run_overview(state, r) for r in runs[:INDEX_RUNS]]
    for o in listed:
        o["href"] = _run_page_href("runs/", o["run_id"], reports_dir)
        o["current"] = False
    trend = _trend(state, runs[0] if runs else None, reports_dir, "runs/")
    return _env().get_template("index").render(
        runs=listed, more=len(runs) > INDEX_RUNS, latest=listed[0] if listed else None,
        open_quarantine=tables.open_quarantine_count(state), trend=trend,
        docs_exists=(reports_dir / "data_docs" / "index.html").exists(), generated=_when(datetime.now(UTC)))


def write_index(settings: Settings) -> Path:
    """Write var/reports/index.html: every run (newest first) with a link to its page."""
    path = settings.reports_dir / "index.html"
    _write_text(path, render_index(settings))
    return path

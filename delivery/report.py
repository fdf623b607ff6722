"""The run summary: one row per data area, counts that reconcile, receipts, where things are.

Counts per area (all in records):
- extracted: rows of the source that belong to the area this run (soft-deleted ones included);
- quarantined: rows held back with an error (contract, data quality, or refused by the receiver);
- delivered: new or changed records the receiver accepted this run;
- annulled: records deleted at the source that the receiver annulled this run;
- unchanged: accepted before with the same content (or deleted before ever being sent): nothing sent;
- outstanding: staged or in doubt, not yet acknowledged, or waiting for the outcome of a batch an
  earlier run left in doubt (0 after a good run; a re-run resolves them).
extracted = delivered + annulled + quarantined + unchanged + outstanding.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from delivery.pipeline import Settings
from transforms.registry import get_area

COLUMNS = ("extracted", "delivered", "annulled", "quarantined", "unchanged", "outstanding", "warnings")


def area_row(row: dict, acknowledged: list[dict]) -> dict:
    """One area's counts. Delivery counts come from the receipts of the batches the run's latest
    preparation staged (durable state), so a delivery that was killed half-way and re-run still adds up. `outstanding`
    is what is left: records staged or in doubt, or waiting for an earlier run's batch in doubt. It
    is never clamped: a negative value would show a counting error instead of hiding it."""
    counts = row["counts"]
    # Only the batches of the run's latest preparation: a cleared `prepare` counts the records anew,
    # and what an earlier attempt delivered is then "unchanged" (or, while in doubt, outstanding).
    started = _utc(row["started_at"])
    mine = [b for b in acknowledged if b["area"] == row["area"] and _utc(b["created_at"]) >= started]
    accepted = sum(b["accepted_count"] or 0 for b in mine)
    annulled = sum(b["annulled_count"] or 0 for b in mine)
    rejected = sum(b["rejected_count"] or 0 for b in mine)
    extracted = counts.get("extracted", 0)
    quarantined = counts.get("quarantined", 0) + rejected
    unchanged = counts.get("unchanged", 0)
    outstanding = extracted - (accepted + quarantined + unchanged)
    area = get_area(row["area"])
    return {
        "area": area.number,
        "title": area.title,
        "status": row["status"],
        "extracted": extracted,
        "delivered": accepted - annulled,
        "annulled": annulled,
        "quarantined": quarantined,
        "unchanged": unchanged,
        "outstanding": outstanding,
        "warnings": counts.get("with_warnings", 0),
        "out_of_scope": counts.get("out_of_scope", 0),
        "rules": counts.get("rules", {}),
        "phases": counts.get("phases", {}),  # seconds per phase of prepare and deliver (delivery.timing)
        "peak_rss_mib": counts.get("peak_rss_mib"),
        "receipts": [b["receipt_message_id"] for b in mine if not str(b["receipt_message_id"]).startswith("fault-")],
        "message": row.get("message"),
        "data_docs": row.get("data_docs"),
    }


def run_summary(run_id: str, settings: Settings) -> dict:
    state = settings.state()
    acknowledged = state.batches_delivered_for(run_id)
    rows = [area_row(r, acknowledged) for r in state.run_rows(run_id)]
    states = state.batch_status_counts()
    return {
        "run_id": run_id,
        "areas": rows,
        "in_doubt": states.get("sent", 0) + states.get("unknown", 0),
        "unarchived": states.get("acknowledged", 0),
        "totals": {c: sum(r[c] for r in rows) for c in COLUMNS},
        "open_quarantine": len(state.open_quarantine()),
        "archive_dir": str(settings.archive_dir),
        "reports_dir": str(settings.reports_dir),
    }


def format_summary(summary: dict) -> str:
    lines = [f"Run {summary['run_id']}", ""]
    header = f"{'area':<5}{'extracted':>10}{'delivered':>10}{'annulled':>9}{'quarant.':>9}{'unchanged':>10}" \
             f"{'outst.':>7}{'warn':>6}  status"
    lines += [header, "-" * len(header)]
    for r in summary["areas"]:
        lines.append(f"{r['area']:<5}{r['extracted']:>10}{r['delivered']:>10}{r['annulled']:>9}{r['quarantined']:>9}"
                     f"{r['unchanged']:>10}{r['outstanding']:>7}{r['warnings']:>6}  {r['status']}")
    t = summary["totals"]
    lines.append(f"{'all':<5}{t['extracted']:>10}{t['delivered']:>10}{t['annulled']:>9}{t['quarantined']:>9}"
                 f"{t['unchanged']:>10}{t['outstanding']:>7}{t['warnings']:>6}")
    lines.append("")
    errors: dict[str, int] = {}
    for r in summary["areas"]:
        for key, n in r["rules"].items():
            rule, severity = key.rsplit(":", 1)
            if severity == "error":
                errors[f"area {r['area']} {rule}"] = errors.get(f"area {r['area']} {rule}", 0) + n
    if errors:
        lines.append("Quarantined records, by rule (records, not findings; a record can break several rules):")
        lines += [f"  {k}: {v}" for k, v in sorted(errors.items())]
        lines.append("")
    timed = [r for r in summary["areas"] if r.get("phases")]
    if timed:
        lines.append("Time per phase (seconds), peak memory:")
        for r in timed:
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
            lines.append(f"  area {r['area']}: {phases}; {r.get('peak_rss_mib') or 0} MiB")
        lines.append("")
    receipts = [(r["area"], rid) for r in summary["areas"] for rid in r["receipts"]]
    if receipts:
        lines.append("Receipts (ServiceReceipt.MessageIdentifier):")
        lines += [f"  area {a}: {rid}" for a, rid in receipts]
    # One line per area that did not finish: the verdict first, then what to do (docs/operations.md).
    unfinished = []
    for r in summary["areas"]:
        if r["status"] == "delivery_failed":
            unfinished.append(f"Area {r['area']} FAILED: {r['message'] or 'see the task log'}")
        elif r["status"] in ("preparing", "prepared"):
            unfinished.append(f"Area {r['area']} did not finish: its {r['status'].removesuffix('d')}ing task stopped "
                              "or is still running; clear its area.deliver task (docs/operations.md).")
        elif r["outstanding"]:
            unfinished.append(f"Area {r['area']}: {r['outstanding']} record(s) outstanding (staged, in doubt, or "
                              "waiting for an earlier batch's receipt); the next run resolves them.")
    if unfinished:
        lines.append("")
        lines += unfinished
    elif not receipts and not any(r["delivered"] or r["annulled"] for r in summary["areas"]):
        lines.append("Nothing new to send: every valid record was delivered before and is unchanged.")
    if summary.get("in_doubt") or summary.get("unarchived"):
        lines.append(f"Batches in doubt (looked up before anything is sent again): {summary.get('in_doubt', 0)}; "
                     f"acknowledged but not archived yet: {summary.get('unarchived', 0)}.")
    lines += ["", f"Open quarantine entries: {summary['open_quarantine']}",
              f"Run summary:         {Path(summary['reports_dir']) / 'runs' / _safe(summary['run_id']) / 'summary.md'}",
              f"Data Docs:           {Path(summary['reports_dir']) / 'data_docs' / 'index.html'}",
              f"Archive:             {summary['archive_dir']}"]
    return "\n".join(lines)


def write_run_report(run_id: str, settings: Settings) -> dict:
    """Write summary.json and summary.md for the run; return the totals (small, for XCom)."""
    summary = run_summary(run_id, settings)
    folder = settings.reports_dir / "runs" / _safe(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    (folder / "summary.md").write_text("```\n" + format_summary(summary) + "\n```\n")
    from delivery.report_html import write_index, write_run_page  # the analysts' pages (imports this module)

    write_run_page(run_id, settings)
    write_index(settings)
    return {"run_id": run_id, **summary["totals"]}


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _safe(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)

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

from cycle.settings import Settings
from delivery.objectstore import ensure_folder
from reports.counts import COLUMNS, area_row, safe_folder_name
from reports.pages import write_index, write_overview, write_run_page, write_tenant_card
from reports.tables import open_quarantine_count


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
        "open_quarantine": open_quarantine_count(state),
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
    run_folder = f"{summary['reports_dir'].rstrip('/')}/runs/{safe_folder_name(summary['run_id'])}"  # path or URL
    lines += ["", f"Open quarantine entries: {summary['open_quarantine']}",
              f"Run page:            {run_folder}/index.html (the open quarantine: quarantine.html beside it)",
              f"Run summary:         {run_folder}/summary.md",
              f"Data Docs:           {summary['reports_dir'].rstrip('/')}/data_docs/index.html",
              f"Archive:             {summary['archive_dir']}"]
    return "\n".join(lines)


def write_run_report(run_id: str, settings: Settings) -> dict:
    """Write summary.json and summary.md for the run; return the totals (small, for XCom)."""
    summary = run_summary(run_id, settings)
    folder = settings.reports_dir / "runs" / safe_folder_name(run_id)
    ensure_folder(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    (folder / "summary.md").write_text("```\n" + format_summary(summary) + "\n```\n")
    write_run_page(run_id, settings)
    write_index(settings)
    if settings.tenant:  # one municipality of several: its status card, and the overview across them
        write_tenant_card(settings, summary)
        write_overview(settings)
    return {"run_id": run_id, **summary["totals"]}

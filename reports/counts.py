"""One area's counts in a run, reconciled: the single definition the summary and the pages share.

extracted = delivered + annulled + quarantined + unchanged + outstanding (reports.summary explains each).
"""

from __future__ import annotations

from datetime import UTC, datetime

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
    started = utc(row["started_at"])
    mine = [b for b in acknowledged if b["area"] == row["area"] and utc(b["created_at"]) >= started]
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
        "phases": counts.get("phases", {}),  # seconds per phase of prepare and deliver (cycle.timing)
        "peak_rss_mib": counts.get("peak_rss_mib"),
        "receipts": [b["receipt_message_id"] for b in mine if not str(b["receipt_message_id"]).startswith("fault-")],
        "message": row.get("message"),
        "data_docs": row.get("data_docs"),
    }


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def safe_folder_name(run_id: str) -> str:
    """A run id as a folder name (run ids hold colons and plus signs)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)

"""The pipeline's own state: delivery ledger, batches, quarantine, findings and run counts.

Any SQLAlchemy database (`AMS_STATE_URL`; SQLite by default, PostgreSQL in production). The tables
are declared with SQLAlchemy Core so one definition serves every dialect.

Personal data: the state holds record keys, record GUIDs, content hashes and *masked* persons only.
The rows themselves travel between tasks as the staged payload (encrypted) - never through here.

Ledger semantics (DESIGN.md, principle 3):
- a record is *in flight* while it belongs to a batch whose outcome is not known (`sent`, `unknown`);
  in-flight records are not batched again;
- a batch is `built` (staged, never sent), `sent` (the POST may have reached the receiver),
  `accepted` / `partially_accepted` / `rejected` (receipt stored), or `discarded`;
- a receipt is stored before the payload is archived and before anything else is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

ledger = sa.Table(
    "ams_ledger", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(36), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # accepted | rejected | annulled
    sa.Column("accepted_hash", sa.String(64)),  # content last accepted by the receiver
    sa.Column("rejected_hash", sa.String(64)),  # content the receiver rejected (not re-sent unchanged)
    sa.Column("last_batch_id", sa.String(36)),
    sa.Column("error_code", sa.String(16)),
    sa.Column("error_text", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

batches = sa.Table(
    "ams_batches", metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("area", sa.Integer, nullable=False, index=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("record_count", sa.Integer, nullable=False),
    sa.Column("annul_count", sa.Integer, nullable=False, default=0),
    sa.Column("staged_path", sa.Text),
    sa.Column("payload_sha256", sa.String(64)),
    sa.Column("receipt_message_id", sa.String(36)),
    sa.Column("receipt_event_date", sa.String(40)),
    sa.Column("archive_path", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_run_id", sa.String(250), index=True),
    sa.Column("accepted_count", sa.Integer),
    sa.Column("rejected_count", sa.Integer),
    sa.Column("annulled_count", sa.Integer),  # accepted annulments
)

batch_records = sa.Table(
    "ams_batch_records", metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(36), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("masked_person", sa.String(20)),
)

quarantine = sa.Table(
    "ams_quarantine", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True),
    sa.Column("masked_person", sa.String(20)),
    sa.Column("findings", sa.Text, nullable=False),  # JSON list: rule, field, paragraph, severity, message
    sa.Column("status", sa.String(12), nullable=False),  # open | released
    sa.Column("first_seen_run", sa.String(250), nullable=False),
    sa.Column("last_seen_run", sa.String(250), nullable=False),
    sa.Column("released_run", sa.String(250)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

findings = sa.Table(
    "ams_findings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False, index=True),
    sa.Column("area", sa.Integer, nullable=False),
    sa.Column("record_key", sa.String(64), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("field", sa.String(64)),
    sa.Column("paragraph", sa.String(120)),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

run_areas = sa.Table(
    "ams_run_areas", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("counts", sa.Text, nullable=False, default="{}"),  # JSON: extracted, quarantined, ...
    sa.Column("message", sa.Text),
    sa.Column("data_docs", sa.Text),
)

OUTSTANDING = ("built", "sent", "unknown")
_CHUNK = 500  # keys per IN (...) list: well under every dialect's bind-parameter limit


def now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StateStore:
    """Ledger, batches and quarantine on one SQLAlchemy engine."""

    def __init__(self, url_or_engine: str | Engine):
        self.engine = sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        metadata.create_all(self.engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- runs -----------------------------------------------------------------------------------

    def start_area_run(self, run_id: str, area: int) -> None:
        with self.begin() as conn:
            conn.execute(run_areas.delete().where(run_areas.c.run_id == run_id, run_areas.c.area == area))
            conn.execute(findings.delete().where(findings.c.run_id == run_id, findings.c.area == area))
            conn.execute(run_areas.insert().values(
                run_id=run_id, area=area, status="preparing", started_at=now(), counts="{}"))

    def update_area_run(self, run_id: str, area: int, *, status: str | None = None, counts: dict | None = None,
                        message: str | None = None, data_docs: str | None = None, finished: bool = False) -> None:
        with self.begin() as conn:
            row = conn.execute(sa.select(run_areas.c.counts).where(
                run_areas.c.run_id == run_id, run_areas.c.area == area)).first()
            if row is None:
                conn.execute(run_areas.insert().values(run_id=run_id, area=area, status=status or "unknown",
                                                       started_at=now(), counts="{}"))
                merged: dict = {}
            else:
                merged = json.loads(row.counts or "{}")
            merged.update(counts or {})
            values: dict = {"counts": json.dumps(merged, sort_keys=True)}
            if status:
                values["status"] = status
            if message is not None:
                values["message"] = message
            if data_docs is not None:
                values["data_docs"] = data_docs
            if finished:
                values["finished_at"] = now()
            conn.execute(run_areas.update().where(
                run_areas.c.run_id == run_id, run_areas.c.area == area).values(**values))

    def run_rows(self, run_id: str) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(run_areas).where(run_areas.c.run_id == run_id)
                                .order_by(run_areas.c.area)).mappings().all()
        return [{**r, "counts": json.loads(r["counts"] or "{}")} for r in rows]

    def recent_runs(self, limit: int = 30) -> list[str]:
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at).label("t"))
                .group_by(run_areas.c.run_id).order_by(sa.desc("t")).limit(limit)).all()
        return [r.run_id for r in rows]

    # --- findings and quarantine ----------------------------------------------------------------

    def record_findings(self, run_id: str, area: int, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        rows = frame.assign(run_id=run_id, area=area)[
            ["run_id", "area", "record_key", "rule", "field", "paragraph", "severity", "message"]]
        with self.begin() as conn:
            for part in _chunks(rows.to_dict("records"), 5000):
                conn.execute(findings.insert(), part)

    def quarantine_rows(self, run_id: str, area: int, errors: pd.DataFrame, persons: dict[str, str]) -> None:
        """Put (or keep) records in quarantine with every reason; `persons` maps key -> masked person."""
        if errors.empty:
            return
        by_key: dict[str, list[dict]] = {}
        for row in errors.to_dict("records"):
            by_key.setdefault(str(row["record_key"]), []).append(
                {k: row[k] for k in ("rule", "field", "paragraph", "severity", "message")})
        with self.begin() as conn:
            for keys in _chunks(sorted(by_key)):
                existing = {r.record_key: r for r in conn.execute(sa.select(
                    quarantine.c.record_key, quarantine.c.status, quarantine.c.first_seen_run).where(
                    quarantine.c.area == area, quarantine.c.record_key.in_(keys)))}
                for key in keys:
                    values = dict(masked_person=persons.get(key), findings=json.dumps(by_key[key], ensure_ascii=False),
                                  status="open", last_seen_run=run_id, released_run=None, updated_at=now())
                    old = existing.get(key)
                    if old is None:
                        conn.execute(quarantine.insert().values(area=area, record_key=key, first_seen_run=run_id,
                                                                **values))
                    else:
                        if old.status != "open":
                            values["first_seen_run"] = run_id
                        conn.execute(quarantine.update().where(
                            quarantine.c.area == area, quarantine.c.record_key == key).values(**values))

    def release_quarantine(self, run_id: str, area: int, keep: Iterable[str] = ()) -> int:
        """Release every open entry not seen with an error in this run (fixed or gone at the source)."""
        keep = set(keep)
        with self.begin() as conn:
            rows = conn.execute(sa.select(quarantine.c.record_key).where(
                quarantine.c.area == area, quarantine.c.status == "open",
                quarantine.c.last_seen_run != run_id)).all()
            released = [r.record_key for r in rows if r.record_key not in keep]
            for keys in _chunks(released):
                conn.execute(quarantine.update().where(
                    quarantine.c.area == area, quarantine.c.record_key.in_(keys)).values(
                    status="released", released_run=run_id, updated_at=now()))
        return len(released)

    def open_quarantine(self, area: int | None = None) -> list[dict]:
        q = sa.select(quarantine).where(quarantine.c.status == "open")
        if area is not None:
            q = q.where(quarantine.c.area == area)
        with self.begin() as conn:
            rows = conn.execute(q.order_by(quarantine.c.area, quarantine.c.record_key)).mappings().all()
        return [{**r, "findings": json.loads(r["findings"])} for r in rows]

    def run_findings(self, run_id: str) -> pd.DataFrame:
        with self.begin() as conn:
            return pd.read_sql(sa.select(findings).where(findings.c.run_id == run_id), conn)

    # --- ledger ---------------------------------------------------------------------------------

    def ledger_for(self, area: int, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self.begin() as conn:
            for part in _chunks(keys):
                for r in conn.execute(sa.select(ledger).where(
                        ledger.c.area == area, ledger.c.record_key.in_(part))).mappings():
                    out[r["record_key"]] = dict(r)
        return out

    def in_flight_keys(self, area: int, keys: list[str]) -> set[str]:
        out: set[str] = set()
        with self.begin() as conn:
            for part in _chunks(keys):
                q = (sa.select(batch_records.c.record_key)
                     .join(batches, batches.c.batch_id == batch_records.c.batch_id)
                     .where(batches.c.area == area, batches.c.status.in_(OUTSTANDING),
                            batch_records.c.record_key.in_(part)))
                out.update(r.record_key for r in conn.execute(q))
        return out

    def requeue_rejected(self, area: int) -> int:
        """Forget the receiver's refusals of an area, so the next run sends those records again
        (after a fault on the receiving side, e.g. a schema version mismatch, has been fixed)."""
        with self.begin() as conn:
            result = conn.execute(ledger.update().where(
                ledger.c.area == area, ledger.c.status == "rejected", ledger.c.rejected_hash.is_not(None))
                .values(rejected_hash=None, updated_at=now()))
        return int(result.rowcount or 0)

    def ledger_rows(self, area: int) -> pd.DataFrame:
        with self.begin() as conn:
            return pd.read_sql(sa.select(ledger).where(ledger.c.area == area), conn)

    # --- batches --------------------------------------------------------------------------------

    def discard_unsent_batches(self, area: int) -> list[dict]:
        """Batches staged but never sent are rebuilt by the next preparation (same content, same id)."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(
                batches.c.area == area, batches.c.status == "built")).mappings().all()
            ids = [r["batch_id"] for r in rows]
            if ids:
                conn.execute(batch_records.delete().where(batch_records.c.batch_id.in_(ids)))
                conn.execute(batches.delete().where(batches.c.batch_id.in_(ids)))
        return [dict(r) for r in rows]

    def add_batch(self, *, batch_id: str, area: int, run_id: str, staged_path: str, payload_sha256: str,
                  members: pd.DataFrame) -> None:
        with self.begin() as conn:
            existing = conn.execute(sa.select(batches.c.status).where(batches.c.batch_id == batch_id)).first()
            if existing is not None:
                return  # deterministic id: the same batch was built before and is already known
            conn.execute(batches.insert().values(
                batch_id=batch_id, area=area, run_id=run_id, status="built", record_count=len(members),
                annul_count=int((members["action"] == "ANNUL").sum()), staged_path=staged_path,
                payload_sha256=payload_sha256, attempts=0, created_at=now()))
            conn.execute(batch_records.insert(), members.assign(batch_id=batch_id)[
                ["batch_id", "record_key", "record_id", "content_hash", "action", "masked_person"]]
                .to_dict("records"))

    def outstanding_batches(self, area: int) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(
                batches.c.area == area, batches.c.status.in_(OUTSTANDING))
                .order_by(batches.c.created_at, batches.c.batch_id)).mappings().all()
        return [dict(r) for r in rows]

    def batch(self, batch_id: str) -> dict | None:
        with self.begin() as conn:
            row = conn.execute(sa.select(batches).where(batches.c.batch_id == batch_id)).mappings().first()
        return dict(row) if row else None

    def batch_members(self, batch_id: str) -> pd.DataFrame:
        with self.begin() as conn:
            return pd.read_sql(sa.select(batch_records).where(batch_records.c.batch_id == batch_id), conn)

    def mark_batch(self, batch_id: str, status: str, **values: object) -> None:
        with self.begin() as conn:
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(status=status, **values))

    def mark_sending(self, batch_id: str) -> None:
        """Written before the POST: after a crash the batch is in doubt and is looked up first."""
        with self.begin() as conn:
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(
                status="sent", sent_at=now(), attempts=batches.c.attempts + 1))

    def apply_receipt(self, batch_id: str, *, run_id: str, batch_status: str, message_id: str, event_date: str,
                      record_results: dict[str, tuple[str, str | None, str | None]]) -> tuple[int, int]:
        """Store a receipt: per record accepted/rejected, in one transaction. Returns (accepted, rejected)."""
        members = self.batch_members(batch_id)
        batch = self.batch(batch_id)
        assert batch is not None
        accepted = rejected = annulled = 0
        with self.begin() as conn:
            for m in members.to_dict("records"):
                status, code, text = record_results.get(m["record_id"], ("REJECTED", "missing", "no receipt line"))
                values: dict = dict(record_id=m["record_id"], last_batch_id=batch_id, updated_at=now())
                if status == "ACCEPTED":
                    accepted += 1
                    annulled += m["action"] == "ANNUL"
                    values.update(status="annulled" if m["action"] == "ANNUL" else "accepted",
                                  accepted_hash=m["content_hash"], rejected_hash=None, error_code=None, error_text=None)
                else:
                    rejected += 1
                    values.update(status="rejected", rejected_hash=m["content_hash"], error_code=code, error_text=text)
                updated = conn.execute(ledger.update().where(
                    ledger.c.area == batch["area"], ledger.c.record_key == m["record_key"]).values(**values))
                if updated.rowcount == 0:
                    conn.execute(ledger.insert().values(area=batch["area"], record_key=m["record_key"], **values))
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(
                status=batch_status, receipt_message_id=message_id, receipt_event_date=event_date,
                acknowledged_at=now(), acknowledged_run_id=run_id, last_error=None, accepted_count=accepted,
                rejected_count=rejected, annulled_count=annulled))
        return accepted, rejected

    def batches_acknowledged_in(self, run_id: str) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(batches.c.acknowledged_run_id == run_id)
                                .order_by(batches.c.area, batches.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

"""The report's large tables read from the state DB in chunks, never as a whole (issue 9).

A run's findings (a million at a large municipality's full read) and the open quarantine are read in
chunks of CHUNK_ROWS rows in the order the CSVs and the page list them; what the page shows of them
(counts per rule, the first rows) is asked of the database. The report's memory is one chunk.

`findings_state` and `quarantine_state` are cheap fingerprints of what the CSVs are made of: when one
is the same as when the previous run's report was written, that CSV's content has not changed and is
linked, not rendered again (reports.pages).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from delivery.state import StateStore, findings, run_areas
from delivery.state import quarantine as quarantine_table
from transforms.identifiers import mask_cpr_in_text

#: Rows read from the state DB at a time.
CHUNK_ROWS = 10_000
#: A finding as the page and findings.csv take it.
FINDING_COLUMNS = ("area", "record_key", "rule", "field", "paragraph", "severity", "message")


def scrub(value: object) -> str:
    """The text with anything shaped like a CPR number (10 digits, optionally DDMMYY-SSSS) masked."""
    if value is None:
        return ""
    return mask_cpr_in_text(str(value)) or ""


def _text(conn: Connection, column: sa.ColumnElement) -> sa.ColumnElement:
    """Text ordered by code point, as Python sorts it (PostgreSQL's database collation may not be)."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def run_findings_select(conn: Connection, run_id: str) -> sa.Select:
    """Every finding that held in the run's areas when the run ran: the query of
    `StateStore.run_findings` (tests/test_report_tables.py holds the two together), as columns."""
    starts = (sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at).label("t"))
              .group_by(run_areas.c.run_id).subquery())
    first, resolved = starts.alias("first"), starts.alias("resolved")
    at = conn.execute(sa.select(starts.c.t).where(starts.c.run_id == run_id)).scalar()
    areas = sa.select(run_areas.c.area).where(run_areas.c.run_id == run_id)
    return (sa.select(findings.c.id, *(findings.c[c] for c in FINDING_COLUMNS)).select_from(findings)
            .join(first, first.c.run_id == findings.c.run_id, isouter=True)
            .join(resolved, resolved.c.run_id == findings.c.resolved_run, isouter=True)
            .where(findings.c.area.in_(areas), sa.or_(
                findings.c.run_id == run_id,
                sa.and_(first.c.t <= at, sa.or_(findings.c.resolved_run.is_(None), resolved.c.t > at)))))


def _ordered(conn: Connection, query: sa.Select) -> sa.Select:
    """The page's order: area, record key, severity, rule, then as stored."""
    return query.order_by(findings.c.area, _text(conn, findings.c.record_key), _text(conn, findings.c.severity),
                          _text(conn, findings.c.rule), findings.c.id)


def _scrubbed(rows: Sequence, cache: dict[object, str]) -> list[tuple]:
    """(area, record_key, rule, field, paragraph, severity, message), texts scrubbed; texts repeat (a
    rule's message differs by a masked birth date), so each distinct one is scrubbed once per chunk."""
    get = cache.get
    out = []
    for _, area, key, rule, field, paragraph, severity, message in rows:
        texts = []
        for value in (field, paragraph, message):
            found = get(value)
            if found is None:
                found = cache[value] = scrub(value)
            texts.append(found)
        out.append((area, key, rule, texts[0], texts[1], severity, texts[2]))
    return out


def run_findings_chunks(state: StateStore, run_id: str, *, warnings_only: bool = False,
                        limit: int | None = None, chunk: int | None = None) -> Iterator[list[tuple]]:
    """The run's findings in the page's order, CHUNK_ROWS at a time (tuples of FINDING_COLUMNS)."""
    size = chunk or CHUNK_ROWS
    with state.begin() as conn:
        query = run_findings_select(conn, run_id)
        if warnings_only:
            query = query.where(findings.c.severity != "error")
        query = _ordered(conn, query)
        if limit is not None:
            query = query.limit(limit)
        result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
        for rows in result.partitions(size):
            yield _scrubbed(rows, {})


class FindingsTally:
    """What the page shows of the run's findings, counted while they stream past in the page's order:
    per area and rule the records with an error, with a warning (records, not findings) and the findings;
    the number of warnings and the first `shown` of them. A record's findings are adjacent in that order,
    so a record is counted once per rule and severity without a set of all records."""

    def __init__(self, shown: int):
        self.shown = shown
        self.counts: dict[tuple[int, str], list[int]] = {}
        self.warnings: list[dict] = []
        self.warnings_count = 0
        self._record: tuple[int, str] | None = None
        self._seen: set[tuple[str, bool]] = set()

    def add(self, row: tuple) -> None:
        area, key, rule, _, _, severity, _ = row
        if (area, key) != self._record:
            self._record, self._seen = (area, key), set()
        error = severity == "error"
        counted = self.counts.get((area, rule))
        if counted is None:
            counted = self.counts[(area, rule)] = [0, 0, 0]
        counted[2] += 1
        if (rule, error) not in self._seen:
            self._seen.add((rule, error))
            counted[0 if error else 1] += 1
        if not error:
            self.warnings_count += 1
            if len(self.warnings) < self.shown:
                self.warnings.append(dict(zip(FINDING_COLUMNS, row, strict=True)))

    def rule_counts(self) -> list[tuple[int, str, int, int, int]]:
        return [(area, rule, e, w, n) for (area, rule), (e, w, n) in self.counts.items()]


def run_starts(state: StateStore, run_id: str) -> tuple[str, str]:
    """Digests of the runs' starts before `run_id` and up to it (itself included). Which findings held in
    a run depends on when the runs before it started (`run_findings_select`): the previous run's "up to"
    equal to this run's "before" says that no run started between them and none moved."""
    with state.begin() as conn:
        rows = conn.execute(sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at))
                            .group_by(run_areas.c.run_id)).all()
    starts = sorted((t.isoformat(), str(r)) for r, t in rows if t is not None)
    mine = next((item for item in starts if item[1] == run_id), None)
    before = [item for item in starts if mine is None or item < mine]
    return _digest(before), _digest(before + ([mine] if mine else []))


def _digest(items: list) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def findings_state(state: StateStore) -> list:
    """What the findings table holds, in three numbers: rows are only added (ids grow) and resolved
    (resolved_run set once, never cleared), so equal numbers mean an unchanged table."""
    with state.begin() as conn:
        row = conn.execute(sa.select(sa.func.max(findings.c.id), sa.func.count(),
                                     sa.func.count(findings.c.resolved_run))).one()
    return [int(v or 0) for v in row]


def quarantine_state(state: StateStore, run_id: str) -> list:
    """What quarantine.csv of `run_id` is made of, in a few numbers: every change of an entry but the
    `last_seen_run` of one standing unchanged stamps `updated_at`; the CSV names this run "this run"."""
    q = quarantine_table.c
    is_open = q.status == "open"
    others = sa.and_(is_open, q.last_seen_run != run_id)

    def when(condition: sa.ColumnElement, value: sa.ColumnElement) -> sa.ColumnElement:
        return sa.case((condition, value))

    with state.begin() as conn:
        row = conn.execute(sa.select(
            sa.func.count(), sa.func.max(q.updated_at), sa.func.count(when(is_open, q.record_key)),
            sa.func.sum(when(is_open, sa.func.length(q.findings))),
            sa.func.count(when(sa.and_(is_open, q.last_seen_run == run_id), q.record_key)),
            sa.func.count(when(others, q.record_key)), sa.func.min(when(others, q.last_seen_run)),
            sa.func.max(when(others, q.last_seen_run)))).one()
    return json.loads(json.dumps([None if v is None else v if isinstance(v, int) else str(v) for v in row]))


def _entry(row: sa.Row) -> dict:
    failed = [{"rule": str(f.get("rule", "")), "field": scrub(f.get("field")), "paragraph": scrub(f.get("paragraph")),
               "severity": str(f.get("severity", "")), "message": scrub(f.get("message"))}
              for f in json.loads(row.findings)]
    return {"area": int(row.area), "record_key": str(row.record_key), "person": scrub(row.masked_person or "(none)"),
            "findings": failed, "first_seen_run": str(row.first_seen_run), "last_seen_run": str(row.last_seen_run)}


def open_quarantine_chunks(state: StateStore, *, limit: int | None = None,
                           chunk: int | None = None) -> Iterator[list[dict]]:
    """The open quarantine by area and record key (StateStore.open_quarantine's order), scrubbed, in
    chunks."""
    size = chunk or CHUNK_ROWS
    q = quarantine_table.c
    query = (sa.select(q.area, q.record_key, q.masked_person, q.findings, q.first_seen_run, q.last_seen_run)
             .where(q.status == "open").order_by(q.area, q.record_key))
    if limit is not None:
        query = query.limit(limit)
    with state.begin() as conn:
        result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
        for rows in result.partitions(size):
            yield [_entry(r) for r in rows]


def open_quarantine_count(state: StateStore, first_seen_run: str | None = None) -> int:
    """Open quarantine entries (those a run first saw, with `first_seen_run`)."""
    query = sa.select(sa.func.count()).select_from(quarantine_table).where(quarantine_table.c.status == "open")
    if first_seen_run is not None:
        query = query.where(quarantine_table.c.first_seen_run == first_seen_run)
    with state.begin() as conn:
        return int(conn.execute(query).scalar_one())

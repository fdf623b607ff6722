"""Areas 1-2's set-based extraction (sql/extract/measures*.sql) gives the same frame as the query it replaced.

tests/reference_sql/measures.before-set-based.sql is measures.sql as it was before the rewrite (issue 9):
one correlated subquery per measure and derived column, the plain statement of the as-of rules. It is
kept here, not in sql/, only as the reference the faster query must equal: the same rows, values and
order, on SQLite and PostgreSQL, for full reads and change-only reads (`:since`, `:recheck_after`).

Sources: the demo (demo.synthetic, several seeds) and a randomised source of edge cases the demo rarely
has: spells that overlap (an open-ended one under a later closed one), boundaries on the measure's
dates (valid_from or valid_to on start_date or end_date), several tables' rows starting on the same day,
soft-deleted spells, payments, job plans and measures, measures without start or end date, overlapping
measures of the same type, measures of a person missing from `persons`.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from demo import synthetic
from transforms import source
from transforms.source import create_engine_from_url, create_source_schema, extract_frame, insert_rows

REFERENCE = Path(__file__).parent / "reference_sql" / "measures.before-set-based.sql"


def _reference_frame(engine, monkeypatch, params) -> pd.DataFrame:
    text = source.split_sql(REFERENCE.read_text(encoding="utf-8"))[0]
    with monkeypatch.context() as patch:  # the script extract_chunks reads: the reference's one statement
        patch.setattr(source, "load_statements", lambda _area, _dialect: [text])
        return extract_frame(engine, 1, params=params)


def test_the_reference_is_what_is_read(tmp_path, monkeypatch):
    """The reference frame comes from the reference query, not from the shipped script (a patch that
    missed the function extract_chunks reads its script with would compare the script with itself)."""
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'source.sqlite'}")
    create_source_schema(engine)
    read = []
    real = source._rows

    def spy(conn, statements, *args):
        read.append(list(statements))
        return real(conn, statements, *args)

    monkeypatch.setattr(source, "_rows", spy)
    _reference_frame(engine, monkeypatch, None)
    assert read == [[source.split_sql(REFERENCE.read_text(encoding="utf-8"))[0]]]
    extract_frame(engine, 1)
    assert read[1] == source.load_statements(1, engine) != read[0]


def _assert_same(engine, monkeypatch, params) -> pd.DataFrame:
    new = extract_frame(engine, 1, params=params)
    old = _reference_frame(engine, monkeypatch, params)
    pd.testing.assert_frame_equal(new, old, check_exact=True)
    return new


def _days(rng: random.Random, k: int) -> list[date]:
    # few distinct days, so that spells, boundaries and measures meet often
    base = date(2025, 1, 1)
    return sorted(rng.sample([base + timedelta(days=7 * i) for i in range(12)], k))


def _edge_source(engine, seed: int, persons: int = 80) -> None:
    """A source of edge cases (see the module's docstring), random but the same for a seed."""
    rng = random.Random(seed)
    stamps = [datetime(2025, 6, d, 12, 0, 0) for d in range(1, 6)]

    def stamp() -> datetime:
        return rng.choice(stamps)

    def deleted() -> datetime | None:
        return stamp() if rng.random() < 0.15 else None

    def until(start: date) -> date | None:
        return None if rng.random() < 0.3 else start + timedelta(days=7 * rng.randint(0, 10))

    rows: dict[str, list[dict]] = {t: [] for t in ("persons", "person_target_groups", "benefits", "payments",
                                                   "jobplans", "measures")}
    payment_id = 0
    for pid in range(1, persons + 1):
        if rng.random() < 0.95:  # a few measures of persons that `persons` lacks
            rows["persons"].append({"person_id": pid, "cpr": f"{pid:010d}", "updated_at": stamp(),
                                    "deleted_at": deleted()})
        for start in _days(rng, rng.randint(0, 4)):  # valid_from unique per person (the key)
            rows["person_target_groups"].append({
                "person_id": pid, "valid_from": start, "valid_to": until(start),
                "target_group": rng.choice(["2.1", "2.2", "2.3", "2.6"]), "insured": rng.random() < 0.5,
                "updated_at": stamp(), "deleted_at": deleted()})
        for start in _days(rng, rng.randint(0, 3)):
            rows["benefits"].append({"person_id": pid, "valid_from": start, "valid_to": until(start),
                                     "benefit_code": rng.choice(["01", "02", "10"]), "updated_at": stamp(),
                                     "deleted_at": deleted()})
        for start in _days(rng, rng.randint(0, 3)):
            payment_id += 1
            rows["payments"].append({"payment_id": payment_id, "person_id": pid, "benefit_code": "01",
                                     "period_from": start, "period_to": start + timedelta(days=rng.randint(0, 30)),
                                     "amount": 100.0, "updated_at": stamp(), "deleted_at": deleted()})
        plan = None
        if rng.random() < 0.7:
            plan = f"J{pid:04d}"
            rows["jobplans"].append({"jobplan_id": plan, "person_id": pid, "created_on": rng.choice(_days(rng, 1)),
                                     "revised_on": rng.choice([None, *_days(rng, 1)]), "employment_goal": "goal",
                                     "updated_at": stamp(), "deleted_at": deleted()})
        for n in range(rng.randint(0, 4)):
            start = rng.choice([None, *_days(rng, 3)]) if rng.random() < 0.1 else _days(rng, 1)[0]
            end = None if start is None or rng.random() < 0.25 else start + timedelta(days=7 * rng.randint(0, 8))
            rows["measures"].append({
                # keys whose text order differs from their number order: the output is in text order
                "measure_id": f"M{pid}-{n}", "person_id": pid, "municipality_code": "101",
                "responsible_jobcenter": "10101", "registering_jobcenter": "10101",
                "measure_type": rng.choice(["VIRK", "LOENT"]), "activation_type": "A",
                "start_date": start, "end_date": end, "weekly_hours": 10.5, "open_offer": rng.random() < 0.5,
                "jobplan_id": plan if rng.random() < 0.8 else None, "updated_at": stamp(),
                "deleted_at": deleted()})
    create_source_schema(engine)
    with engine.begin() as conn:
        for table, table_rows in rows.items():
            insert_rows(conn, table, table_rows)


_CHANGE_READS = [
    {},  # the full read
    {"since": "2025-06-05 12:00:00", "recheck_after": None},
    {"since": "2025-06-04 00:00:00", "recheck_after": "2025-02-15"},
    {"since": None, "recheck_after": "2025-03-01"},
]


def _params(engine, params: dict) -> dict:
    """The change-read parameters as the pipeline passes them (PostgreSQL: dates and timestamps)."""
    out = {}
    for name, value in params.items():
        if value is not None and source.dialect_name(engine) == "postgresql":
            value = datetime.fromisoformat(value) if name == "since" else date.fromisoformat(value)
        out[name] = value
    return out


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_set_based_query_equals_the_reference_on_edge_cases(request, monkeypatch, sqlite_url, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite_url
    engine = create_engine_from_url(url)
    try:
        for seed in (1, 2, 3):
            _edge_source(engine, seed)
            for params in _CHANGE_READS:
                frame = _assert_same(engine, monkeypatch, _params(engine, params))
                if not params:  # the full read has every case in it
                    assert len(frame) > 100
                    assert frame["overlaps_with"].notna().any() and frame["reconciles"].eq(0).any()
                    assert frame["target_group"].isna().any() and frame["target_group_at_end"].notna().any()
                    assert frame["start_date"].isna().any() and frame["end_date"].isna().any()
            with engine.begin() as conn:  # the next seed into empty tables
                for table in ("persons", "person_target_groups", "benefits", "payments", "jobplans", "measures"):
                    conn.exec_driver_sql(f"DELETE FROM {table}")
    finally:
        engine.dispose()


@pytest.mark.parametrize(("database", "seed"), [("sqlite", 5), ("sqlite", 23), ("postgresql", 11)])
def test_set_based_query_equals_the_reference_on_demo_sources(request, monkeypatch, sqlite_url, database, seed):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite_url
    engine = create_engine_from_url(url)
    try:
        synthetic.generate(engine, persons=400, defect_rate=0.1, seed=seed)
        mark = source.change_mark(engine, 1)
        for params in ({}, {"since": mark, "recheck_after": "2025-06-30"}):
            frame = _assert_same(engine, monkeypatch, _params(engine, params))
            assert len(frame) > (300 if not params else 0)
    finally:
        engine.dispose()

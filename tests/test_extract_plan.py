"""How PostgreSQL plans areas 1-2's read (sql/extract/measures.sql): a day's change read is planned as
the few rows it is, and the read's cursor is planned for all its rows.

At 1M measures the change read once cost 20.8 s for 2,493 rows: the change filter was one WHERE of ORs
with an IN (subquery), whose size PostgreSQL guesses (~77 % of the table), so it hashed whole tables
(10.9M payments). As one UNION branch per reason, each an index look-up, it took 3.1 s. These tests
check the planner's estimate, which is what chose the plan, on a small source: not a timing.
"""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from demo import synthetic
from transforms import source
from transforms.source import create_engine_from_url, extract_frame


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_change_read_is_estimated_as_the_changes_not_the_table(pg_url):
    engine = create_engine_from_url(pg_url)
    try:
        synthetic.generate(engine, persons=3000, seed=7)
        since = datetime.fromisoformat(source.change_mark(engine, 1)).replace(microsecond=0)
        with engine.begin() as conn:
            measures = conn.execute(sa.text("SELECT COUNT(*) FROM measures")).scalar_one()
            # a day's edits: one person in a hundred gets a new stamp after the mark
            conn.execute(sa.text("UPDATE persons SET updated_at = :later WHERE person_id % 100 = 0"),
                         {"later": since.replace(year=since.year + 1)})
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
        params = {"since": since.replace(year=since.year + 1), "recheck_after": None}
        read = source.load_statements(1, engine)[-1]
        with engine.connect() as conn:
            plan = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + read), params).scalar_one()
            plan = plan if isinstance(plan, list) else json.loads(plan)
        selected = [n for n in _plan_nodes(plan[0]["Plan"]) if n.get("Subplan Name") == "CTE sel"]
        assert selected, "the read has a CTE sel"
        expected = len(extract_frame(engine, 1, params=params))
        assert 0 < expected < measures / 20
        # the estimate of the selected measures, within a few times the real count, not a share of the table
        assert selected[0]["Plan Rows"] <= max(5 * expected, 200) < measures / 4, (selected[0]["Plan Rows"], expected)
    finally:
        engine.dispose()


def test_the_read_cursor_is_planned_for_every_row(pg_url, monkeypatch):
    """A server-side cursor is planned for its first 10 % of rows unless told otherwise; the read takes all."""
    engine = create_engine_from_url(pg_url)
    try:
        monkeypatch.setattr(source, "load_statements", lambda _area, _dialect: [
            "SELECT current_setting('cursor_tuple_fraction') AS fraction"])
        frame = extract_frame(engine, 1)
        assert frame.equals(pd.DataFrame({"fraction": ["1"]}, dtype=object))
        with engine.connect() as conn:  # only the read's transaction: the server's default is left alone
            assert conn.execute(sa.text("SHOW cursor_tuple_fraction")).scalar_one() == "0.1"
    finally:
        engine.dispose()

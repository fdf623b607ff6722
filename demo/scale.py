"""A large source for `make bench`, fast: the demo source (demo.synthetic) copied in SQL.

`scale_source(url, rows)` fills the source contract with the demo data of a few thousand persons,
keeps the measures of area 1 and their persons (area 2's are deleted, so the source rows are area 1's
records),
then copies the tables that area 1 reads (persons, target groups, benefits, payments, job
plans, measures) with `INSERT ... SELECT` until area 1 has about `rows` records: every copy gets its
own person ids, CPR serials and keys, so copies never meet (no overlaps across copies), and the mix
of valid, defective, deleted and out-of-scope records is the demo's. A million records take seconds
on SQLite, not the hour a row-by-row generator would.

The statements are in sql/bench/. No Airflow import.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import sqlalchemy as sa

from demo import synthetic
from transforms import mapping
from transforms.registry import SQL_DIR, get_area
from transforms.source import (
    create_engine_from_url,
    create_source_schema,
    ddl_path,
    dialect_name,
    extract_chunks,
    split_sql,
)

BENCH_SQL = SQL_DIR / "bench"
BASE_PERSONS = 4000


def floor_query() -> str:
    return split_sql((BENCH_SQL / "floor.sql").read_text(encoding="utf-8"))[0]


def _keep_area1_only(engine: sa.Engine) -> int:
    """Delete the base's measures that area 1 does not report (area 2's); returns area 1's records."""
    area = get_area(1)
    kept, other = 0, []
    for chunk in extract_chunks(engine, area):
        mapped = mapping.map_records(area, chunk)
        kept += len(mapped.records)
        other += mapped.out_of_scope["record_key"].tolist()
    with engine.begin() as conn:
        for start in range(0, len(other), 500):
            conn.execute(sa.text("DELETE FROM measures WHERE measure_id IN :keys").bindparams(
                sa.bindparam("keys", expanding=True)), {"keys": other[start : start + 500]})
        # ... and the persons without a measure left, with their rows: only what area 1 reads is copied.
        for table in ("persons", "person_target_groups", "benefits", "payments", "jobplans"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE person_id NOT IN (SELECT person_id FROM measures)"))
    return kept


def scale_source(url: str, rows: int, *, base_persons: int = BASE_PERSONS, seed: int = synthetic.DEFAULT_SEED
                 ) -> dict[str, int]:
    """Fill the source at `url` with about `rows` area-1 records (never fewer than the base has)."""
    engine = create_engine_from_url(url)
    try:
        create_source_schema(engine)
        synthetic.generate(engine, persons=base_persons, seed=seed)
        base = _keep_area1_only(engine)
        copies = max(1, math.ceil(rows / max(base, 1)))
        if copies > 1:
            # a bulk load: the secondary indexes go while the copies are written, and are built once after
            # (at 1M measures, 11M payments, maintaining twenty of them row by row tripled the load's time)
            indexes = re.findall(r"CREATE INDEX IF NOT EXISTS (\w+) ON", ddl_path(engine).read_text(encoding="utf-8"))
            with engine.begin() as conn:
                for index in indexes:
                    conn.execute(sa.text(f"DROP INDEX IF EXISTS {index}"))
                strides = conn.execute(sa.text(
                    "SELECT (SELECT MAX(person_id) FROM persons) + 1, (SELECT MAX(payment_id) FROM payments) + 1"
                )).one()
                conn.execute(sa.text("DROP TABLE IF EXISTS bench_copies"))
                conn.execute(sa.text("CREATE TABLE bench_copies (c INTEGER PRIMARY KEY)"))
                conn.execute(sa.text("INSERT INTO bench_copies (c) VALUES (:c)"),
                             [{"c": c} for c in range(1, copies)])
                script = (BENCH_SQL / "scale.sql").read_text(encoding="utf-8")
                for statement in split_sql(script):
                    conn.execute(sa.text(statement), {"person_stride": int(strides[0]),
                                                      "payment_stride": int(strides[1] or 1)})
                conn.execute(sa.text("DROP TABLE bench_copies"))
            create_source_schema(engine)  # the indexes again (IF NOT EXISTS)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
            measures = int(conn.execute(sa.text("SELECT COUNT(*) FROM measures")).scalar_one())
        return {"base_area1": base, "copies": copies, "area1_about": base * copies, "measures": measures}
    finally:
        engine.dispose()


def change_measures(url: str, share: float) -> int:
    """Correct the weekly hours of every 1/share-th live measure (in key order), as a day's edits would."""
    engine = create_engine_from_url(url)
    try:
        with engine.begin() as conn:
            keys = conn.execute(sa.text(
                "SELECT measure_id FROM measures WHERE deleted_at IS NULL ORDER BY measure_id")).scalars().all()
            step = max(1, round(1 / share)) if share > 0 else 0
            chosen = keys[::step] if step else []
            stamp = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
            stamp_value = stamp.isoformat(sep=" ") if dialect_name(engine) == "sqlite" else stamp
            statement = split_sql((BENCH_SQL / "change.sql").read_text(encoding="utf-8"))[0]
            if chosen:
                conn.execute(sa.text(statement), [{"measure_id": k, "now": stamp_value} for k in chosen])
        return len(chosen)
    finally:
        engine.dispose()


# --- areas 3-8 (bench/cycle.py --area N) ----------------------------------------------------------------
#: The table each of areas 3-8 reports from, and its key.
AREA_TABLES = {
    3: ("followup_interviews", "interview_id"),
    4: ("absence_interviews", "interview_id"),
    5: ("cv_interviews", "interview_id"),
    6: ("personal_assistance_grants", "grant_id"),
    7: ("mentor_grants", "grant_id"),
    8: ("aid_grants", "grant_id"),
}


def area_floor_query(area: int) -> str:
    """The floor of areas 3-8: the area's table read plainly (no joins, no derivations, no checks)."""
    table, key = AREA_TABLES[area]
    return f"SELECT * FROM {table} ORDER BY {key}"


def demo_source(url: str, area: int, rows: int, *, seed: int = synthetic.DEFAULT_SEED) -> dict[str, int]:
    """Fill the source at `url` with the demo source, with enough persons for about `rows` rows in the
    area's table (areas 3-8 hold a fraction of a row per person: the generator runs twice, a small base
    first to learn the fraction). Slower than scale_source (the generator is Python), fine for tens of
    thousands of records."""
    table, _key = AREA_TABLES[area]
    engine = create_engine_from_url(url)
    try:
        persons = BASE_PERSONS
        for _ in range(2):
            synthetic.generate(engine, persons=persons, seed=seed)
            with engine.connect() as conn:
                have = int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
            wanted = math.ceil(persons * rows / max(have, 1))
            if have >= rows or wanted <= persons:
                break
            persons = wanted
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
        return {"persons": persons, "rows": have}
    finally:
        engine.dispose()


def touch_rows(url: str, area: int, share: float) -> int:
    """Stamp `updated_at` on every 1/share-th live row of the area's table (in key order), content unchanged:
    the rows are read again on the next day, and found unchanged at the ledger."""
    table, key = AREA_TABLES[area]
    engine = create_engine_from_url(url)
    try:
        with engine.begin() as conn:
            keys = conn.execute(sa.text(
                f"SELECT {key} FROM {table} WHERE deleted_at IS NULL ORDER BY {key}")).scalars().all()
            step = max(1, round(1 / share)) if share > 0 else 0
            chosen = keys[::step] if step else []
            stamp = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
            stamp_value = stamp.isoformat(sep=" ") if dialect_name(engine) == "sqlite" else stamp
            if chosen:
                conn.execute(sa.text(f"UPDATE {table} SET updated_at = :now WHERE {key} = :k"),
                             [{"k": k, "now": stamp_value} for k in chosen])
        return len(chosen)
    finally:
        engine.dispose()

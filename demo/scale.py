"""A large source for `make bench`, fast: the demo source (demo.synthetic) copied in SQL.

`scale_source(url, rows)` fills the source contract with the demo data of a few thousand persons,
keeps the measures of area 1 and their persons (area 2's are deleted, so the source rows are area 1's
records),
then copies the tables that area 1 reads (persons, target groups, benefits, payments, job
plans, measures) with `INSERT ... SELECT` until area 1 has about `rows` records: every copy gets its
own person ids, CPR numbers and keys, so copies never meet (no overlaps across copies), and the mix
of valid, defective, deleted and out-of-scope records is the demo's. A million records take seconds
on SQLite, not the hour a row-by-row generator would.

A copy's CPR number has the status of the demo person's it was copied from (`_cpr_plan`): it passes
modulus 11 exactly when that one does (about 95 %, as real numbers mostly do), has an impossible
date when that one has, and stays 0000000000 ("unknown") or empty. So every quality rule sees the
demo's mix at any size. No rule reads the birth date beyond its validity, so copies get other birth
dates: that is what keeps a million of them unique.

The statements are in sql/bench/. No Airflow import.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from demo import synthetic
from transforms import mapping
from transforms.identifiers import CPR_BAD_DATE, CPR_NO_MODULUS11, CPR_VALID, cpr_status, cpr_weighted_residue
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

#: A copy with a valid date: 7 digits (birth date, century digit) from bench_prefixes, then 3 serial digits
#: chosen so the weighted sum modulo 11 is its demo person's (sql/bench/scale.sql): 10 x 9 serials per
#: prefix (for each 8th digit, 9 of the 10 9th digits leave a 10th digit of 0-9).
OK_SERIALS = 90
#: A copy with an impossible date: 7 digits from bench_prefixes, then any 3.
BAD_SERIALS = 1000
_BIRTHS = (date(1950, 1, 1), date(2008, 12, 31))  # ages 17-76 in the demo's years


def _centuries(day: date) -> str:
    """The 7th digits that put the two-digit year of `day` in its century (DOMAIN.md, "Identifiers")."""
    yy = day.year % 100
    if day.year < 2000:
        return "0123" + ("49" if yy >= 37 else "")
    return ("49" if yy <= 36 else "") + ("5678" if yy <= 57 else "")


def _ok_prefixes() -> list[str]:
    day, last, prefixes = _BIRTHS[0], _BIRTHS[1], []
    while day <= last:
        prefixes += [day.strftime("%d%m%y") + century for century in _centuries(day)]
        day += timedelta(days=1)
    return prefixes


def _bad_prefixes() -> list[str]:
    """Birth dates that do not exist: month 13, 30 and 31 February (any century)."""
    stems = [f"{dd:02d}13{yy:02d}" for dd in range(1, 29) for yy in range(100)]
    stems += [f"{dd}02{yy:02d}" for dd in (30, 31) for yy in range(100)]
    return [stem + str(century) for stem in stems for century in range(10)]


def _cpr_plan(persons: list[tuple[int, str | None]], copies: int, seed: int
              ) -> tuple[list[dict], list[dict]]:
    """The rows of bench_people (each demo person: its kind, its rank within the kind, its modulus-11
    residue) and bench_prefixes (per kind, enough unused 7-digit prefixes for `copies - 1` copies).

    Kinds: "ok" (a valid date: the copy keeps the residue, so passes modulus 11 exactly when the demo
    person's does), "bad" (an impossible date: the copy's is impossible too), "keep" (0000000000,
    empty or malformed: copied as it is). The prefixes exclude the demo persons' own, so no copy
    meets a demo person; ranks and prefixes are distinct, so no copy meets another."""
    people: list[dict] = []
    used: dict[str, set[str]] = {"ok": set(), "bad": set()}
    for person_id, cpr in persons:
        status = cpr_status(cpr)
        kind = {CPR_VALID: "ok", CPR_NO_MODULUS11: "ok", CPR_BAD_DATE: "bad"}.get(status, "keep")
        if kind != "keep":
            used[kind].add(str(cpr).replace("-", "")[:7])
        people.append({"person_id": person_id, "kind": kind,
                       "residue": cpr_weighted_residue(str(cpr).replace("-", "")) if kind == "ok" else 0})
    counts = {kind: sum(p["kind"] == kind for p in people) for kind in ("ok", "bad", "keep")}
    ranks = dict.fromkeys(counts, 0)
    for person in people:
        kind = person["kind"]
        person["i"], ranks[kind] = ranks[kind], ranks[kind] + 1
        person["kind_count"] = counts[kind] if kind != "keep" else 1
        person["per_prefix"] = {"ok": OK_SERIALS, "bad": BAD_SERIALS}.get(kind, 1)
    rng = random.Random(seed)
    prefixes: list[dict] = []
    for kind, candidates, per_prefix in (("ok", _ok_prefixes(), OK_SERIALS), ("bad", _bad_prefixes(), BAD_SERIALS)):
        free = [prefix for prefix in candidates if prefix not in used[kind]]
        needed = math.ceil((copies - 1) * counts[kind] / per_prefix)
        if needed > len(free):
            raise ValueError(f"too many copies for unique CPR numbers: {copies - 1} copies need {needed:,} "
                             f"prefixes of kind {kind}, {len(free):,} exist")
        rng.shuffle(free)  # birth dates spread over the years, not a copy per day in calendar order
        prefixes += [{"kind": kind, "n": n, "prefix": prefix, "s7": cpr_weighted_residue(prefix)}
                     for n, prefix in enumerate(free[:needed])]
    return people, prefixes


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
        strides = (0, 0)
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
                people, prefixes = _cpr_plan(
                    [(int(r[0]), r[1]) for r in conn.execute(sa.text("SELECT person_id, cpr FROM persons"))],
                    copies, seed)
                for name, ddl, rows_ in (
                        ("bench_people", "person_id INTEGER PRIMARY KEY, kind VARCHAR(4) NOT NULL, i INTEGER NOT NULL,"
                                         " kind_count INTEGER NOT NULL, per_prefix INTEGER NOT NULL,"
                                         " residue INTEGER NOT NULL", people),
                        ("bench_prefixes", "kind VARCHAR(4) NOT NULL, n INTEGER NOT NULL, prefix VARCHAR(7) NOT NULL,"
                                           " s7 INTEGER NOT NULL, PRIMARY KEY (kind, n)", prefixes)):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
                    conn.execute(sa.text(f"CREATE TABLE {name} ({ddl})"))
                    if rows_:
                        columns = list(rows_[0])
                        conn.execute(sa.text(f"INSERT INTO {name} ({', '.join(columns)}) "
                                             f"VALUES ({', '.join(':' + c for c in columns)})"), rows_)
                script = (BENCH_SQL / "scale.sql").read_text(encoding="utf-8")
                for statement in split_sql(script):
                    conn.execute(sa.text(statement), {"person_stride": int(strides[0]),
                                                      "payment_stride": int(strides[1] or 1)})
                for name in ("bench_copies", "bench_people", "bench_prefixes"):
                    conn.execute(sa.text(f"DROP TABLE {name}"))
            create_source_schema(engine)  # the indexes again (IF NOT EXISTS)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
            measures = int(conn.execute(sa.text("SELECT COUNT(*) FROM measures")).scalar_one())
        return {"base_area1": base, "copies": copies, "area1_about": base * copies, "measures": measures,
                "person_stride": int(strides[0])}  # copy c of demo person p is person p + c * stride
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

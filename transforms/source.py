"""The source side: the source contract's schema (sql/ddl) and the chunked extraction (sql/extract).

Each area's query (`Area.query` in the registry) returns the *source frame* of docs/architecture.md:
one row per candidate record, a column per record field, the derivation inputs of
`EXTRA_COLUMNS`, then `record_key`, `updated_at` and `deleted_at`, ordered by `record_key`.
Soft-deleted rows are returned too: the pipeline annuls what it delivered before the delete.

A dialect can replace a query with `<name>.<dialect>.sql` beside the portable `<name>.sql`
(`area7_mentor_support.sqlite.sql`); `load_query` picks the dialect's file first. A file may hold statements
that prepare the read before it (SQLite's `measures.sqlite.sql` fills a temporary table): they run on the
read's connection in a savepoint that is rolled back when the read ends.

Frames are normalised the same way on every database, so SQLite and PostgreSQL give equal frames:
every column has dtype object and holds plain Python values, None for missing;
identifiers, codes, keys and texts are `str` (never numbers: leading zeros stay); dates are ISO
strings `YYYY-MM-DD`; `updated_at` / `deleted_at` are `YYYY-MM-DD HH:MM:SS` (UTC); hours are
`float`; counts are `int`; flags (bool fields, `insured`, `reconciles`) are `int` 0 or 1.
A value the database holds in another shape (a date stored as odd text) is passed on as it is,
for the contract to flag.

No Airflow import: this module is plain Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from transforms.registry import AREAS, REPO_ROOT, SQL_DIR, Area, get_area

DDL_DIR = SQL_DIR / "ddl"
SOURCE_URL_ENV = "AMS_SOURCE_URL"
DEFAULT_SOURCE_PATH = REPO_ROOT / "var" / "source" / "demo.sqlite"
DEFAULT_SOURCE_URL = f"sqlite:///{DEFAULT_SOURCE_PATH}"

#: The source contract (DESIGN.md): table -> columns, in load order. Must match sql/ddl/source.*.sql.
SOURCE_TABLES: dict[str, tuple[str, ...]] = {
    "persons": ("person_id", "cpr", "updated_at", "deleted_at"),
    "person_target_groups": (
        "person_id", "valid_from", "valid_to", "target_group", "insured", "updated_at", "deleted_at",
    ),
    "benefits": ("person_id", "valid_from", "valid_to", "benefit_code", "updated_at", "deleted_at"),
    "payments": (
        "payment_id", "person_id", "benefit_code", "period_from", "period_to", "amount", "updated_at",
        "deleted_at",
    ),
    "jobplans": (
        "jobplan_id", "person_id", "created_on", "revised_on", "employment_goal", "updated_at", "deleted_at",
    ),
    "measures": (
        "measure_id", "person_id", "municipality_code", "responsible_jobcenter", "registering_jobcenter",
        "measure_type", "activation_type", "start_date", "end_date", "weekly_hours", "open_offer",
        "jobplan_id", "job_order_id", "job_order_type", "provider_cvr", "provider_pnr", "ministry_area",
        "job_title", "course_type", "team_id", "location_code", "worksite_address", "updated_at",
        "deleted_at",
    ),
    "followup_interviews": (
        "interview_id", "person_id", "municipality_code", "held_on", "interview_form", "visitation_category",
        "updated_at", "deleted_at",
    ),
    "absence_interviews": (
        "interview_id", "person_id", "municipality_code", "employer_cvr", "employer_se", "held_on",
        "updated_at", "deleted_at",
    ),
    "cv_interviews": (
        "interview_id", "person_id", "municipality_code", "held_on", "cv_status", "updated_at", "deleted_at",
    ),
    "personal_assistance_grants": (
        "grant_id", "person_id", "municipality_code", "scheme", "company_cvr", "company_pnr", "start_date",
        "end_date", "weekly_hours", "updated_at", "deleted_at",
    ),
    "mentor_grants": (
        "grant_id", "municipality_code", "basis", "company_cvr", "company_pnr", "start_date", "end_date",
        "granted_hours", "persons_paid", "avg_paid_hours", "updated_at", "deleted_at",
    ),
    "mentor_grant_persons": ("grant_id", "person_id", "updated_at", "deleted_at"),
    "aid_grants": (
        "grant_id", "person_id", "municipality_code", "aid_kind", "company_cvr", "company_pnr", "approved_on",
        "updated_at", "deleted_at",
    ),
}

#: Primary key of each contract table (also the order a table is compared in).
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "persons": ("person_id",),
    "person_target_groups": ("person_id", "valid_from"),
    "benefits": ("person_id", "valid_from"),
    "payments": ("payment_id",),
    "jobplans": ("jobplan_id",),
    "measures": ("measure_id",),
    "followup_interviews": ("interview_id",),
    "absence_interviews": ("interview_id",),
    "cv_interviews": ("interview_id",),
    "personal_assistance_grants": ("grant_id",),
    "mentor_grants": ("grant_id",),
    "mentor_grant_persons": ("grant_id", "person_id"),
    "aid_grants": ("grant_id",),
}

_MEASURE_EXTRAS = ("target_group", "insured", "target_group_at_end", "insured_at_end", "reconciles",
                   "overlaps_with")

#: Derivation inputs each area's query returns beyond the area's fields (architecture.md).
EXTRA_COLUMNS: dict[int, tuple[str, ...]] = {
    1: _MEASURE_EXTRAS,
    2: _MEASURE_EXTRAS,
    3: ("reconciles",),
    4: (),
    5: ("target_group", "insured", "reconciles"),
    6: ("reconciles",),
    7: (),
    8: (),
}

#: Every source frame ends with these.
TRAILING_COLUMNS = ("record_key", "updated_at", "deleted_at")

# Kinds of the extra columns, for the normalisation (field kinds come from the registry).
_EXTRA_KINDS = {
    "target_group": "code",
    "target_group_at_end": "code",
    "insured": "flag",
    "insured_at_end": "flag",
    "reconciles": "flag",
    "overlaps_with": "key",
    "record_key": "key",
    "updated_at": "timestamp",
    "deleted_at": "timestamp",
}

# Width of identifiers a database may have stored as integers: zero-padded back to it.
_ZERO_PAD = {"cpr": 10, "pnr": 10, "se": 8, "jobcentre": 5, "municipality": 3}
_TEXT_KINDS = {"cpr", "cpr_list", "municipality", "jobcentre", "cvr", "pnr", "se", "key", "text", "code"}


# --------------------------------------------------------------------------------------------- engine
def source_url_from_env() -> str:
    """The source database URL: `AMS_SOURCE_URL`, else the demo SQLite file under var/source."""
    return os.environ.get(SOURCE_URL_ENV) or DEFAULT_SOURCE_URL


#: SQLite's page cache per source connection, in KiB (its default: 2,000). The area query looks up a
#: measure's person, job plan, target groups, benefits and payments in their indexes; at 1M records those
#: pages are ~750 MB, and each page missing from a 2 MB cache is a read from the OS. With 64 MiB the 1M
#: read took 32.5-36.0 s instead of 38.1-42.5 s and the cycle 2.12-2.34x the floor instead of 2.37-2.56x,
#: three runs each, for ~60 MiB more RSS in prepare (docs/performance.md, seventh pass). Filled only as
#: pages are read: a small source never holds it all.
SQLITE_CACHE_KIB = 65_536


def create_engine_from_url(url: str) -> Engine:
    """A SQLAlchemy engine for the source.

    `postgresql://` and `postgres://` get the psycopg (3) driver. For a SQLite file the folder is
    created, foreign keys are left off (the contract is read, not enforced), WAL journaling lets
    readers run while the demo data is written, and the page cache is SQLITE_CACHE_KIB.
    """
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        pg_engine = sa.create_engine(parsed, pool_pre_ping=True)

        @sa.event.listens_for(pg_engine, "connect")
        def _no_jit(dbapi_connection: Any, _record: Any) -> None:
            # The area queries' correlated subqueries give high cost estimates, so PostgreSQL compiled
            # them with JIT: about 1 s of every extraction whatever it read, 37x the time of a daily read
            # of changes only and 5x a full read at 10,000 measures (docs/performance.md).
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET jit = off")
            dbapi_connection.commit()

        return pg_engine
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)

    database = parsed.database or ""
    file_db = database not in ("", ":memory:") and not database.startswith("file:")
    if file_db:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.execute("PRAGMA busy_timeout=30000")
        if file_db:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    return engine


def dialect_name(dialect: str | Engine | sa.Connection) -> str:
    """'sqlite', 'postgresql', ... for a dialect name, an engine or a connection."""
    name = dialect if isinstance(dialect, str) else dialect.dialect.name
    name = name.split("+", 1)[0].lower()
    return "postgresql" if name == "postgres" else name


def db_value(value: Any, dialect: str | Engine | sa.Connection) -> Any:
    """A Python value as the contract stores it: SQLite keeps ISO text for dates and 0/1 for flags."""
    return _sqlite_value(value) if dialect_name(dialect) == "sqlite" else value


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def insert_rows(conn: sa.Connection, table: str, rows: Sequence[Mapping[str, Any]], batch: int = 10_000) -> int:
    """Insert rows of Python values (str, date, datetime, bool, float, None) into a contract table.

    The columns are those the rows name (a column no row names keeps its default, e.g. updated_at).
    Runs in the caller's transaction; returns the number of rows.
    """
    if table not in SOURCE_TABLES:
        raise KeyError(f"{table!r} is not a table of the source contract")
    named = {key for row in rows for key in row}
    unknown = named - set(SOURCE_TABLES[table])
    if unknown:
        raise KeyError(f"{table} has no column(s) {', '.join(sorted(unknown))}")
    columns = [c for c in SOURCE_TABLES[table] if c in named]
    statement = sa.insert(sa.table(table, *(sa.column(c) for c in columns)))
    if dialect_name(conn) == "sqlite":
        values = [{c: _sqlite_value(row.get(c)) for c in columns} for row in rows]
    else:
        values = [{c: row.get(c) for c in columns} for row in rows]
    for i in range(0, len(values), batch):
        conn.execute(statement, values[i : i + batch])
    return len(values)


# --------------------------------------------------------------------------------------------- SQL text
def split_sql(script: str) -> list[str]:
    """Split a SQL script into statements on `;`, dropping comments.

    Quotes ('...', "..."), `--` line comments and `/* */` block comments are honoured, so a `;` or a
    `--` inside a string literal does not split. Dollar quoting is not supported (none is used).
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if script[end] == ch:
                    if end + 1 < n and script[end + 1] == ch:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            current.append(script[i : end + 1])
            i = end + 1
        elif script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end == -1 else end  # keep the newline
        elif script.startswith("/*", i):
            end = script.find("*/", i + 2)
            i = n if end == -1 else end + 2
            current.append(" ")
        elif ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def ddl_path(dialect: str | Engine) -> Path:
    name = dialect_name(dialect)
    path = DDL_DIR / f"source.{name}.sql"
    if not path.exists():
        known = sorted(p.name for p in DDL_DIR.glob("source.*.sql"))
        raise ValueError(f"no source DDL for dialect {name!r}; have {', '.join(known)}")
    return path


def create_source_schema(engine: Engine) -> None:
    """Create the source contract's tables and indexes (re-runnable: IF NOT EXISTS)."""
    statements = split_sql(ddl_path(engine).read_text(encoding="utf-8"))
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _area(area: Area | int | str) -> Area:
    return area if isinstance(area, Area) else get_area(area)


def query_path(area: Area | int | str, dialect: str | Engine) -> Path:
    """The dialect's own query file when there is one, else the portable one."""
    base = _area(area).query_path
    specific = base.with_name(f"{base.name.removesuffix('.sql')}.{dialect_name(dialect)}.sql")
    return specific if specific.exists() else base


def load_statements(area: Area | int | str, dialect: str | Engine) -> list[str]:
    """The area's extraction script for a dialect, as statements without comments or `;`.

    The last statement is the read. Any before it prepare the read on the same connection and in the
    same transaction (SQLite's areas 1-2 compute their derived columns into a temporary table first:
    measures.sqlite.sql); they are undone when the read ends.
    """
    path = query_path(area, dialect)
    statements = split_sql(path.read_text(encoding="utf-8"))
    if not statements:
        raise ValueError(f"{path}: no statement")
    return statements


def load_query(area: Area | int | str, dialect: str | Engine) -> str:
    """The area's read statement for a dialect: the last statement of its script."""
    return load_statements(area, dialect)[-1]


#: The change-detection parameters an area's query may take (NULL: the full read). See measures.sql.
INCREMENTAL_PARAMS = ("since", "recheck_after")


def supports_incremental(area: Area | int | str, dialect: str | Engine) -> bool:
    """The area's query reads changes only (`:since`) and has a mark query (`<name>.mark.sql`)."""
    return any(":since" in s for s in load_statements(area, dialect)) and mark_path(area).exists()


def mark_path(area: Area | int | str) -> Path:
    base = _area(area).query_path
    return base.with_name(f"{base.name.removesuffix('.sql')}.mark.sql")


def change_mark(engine: Engine, area: Area | int | str) -> str | None:
    """The latest change stamp in the tables the area reads, as the contract's text 'YYYY-MM-DD HH:MM:SS'
    (None: an empty source). Read before an extraction; the next one reads from it on."""
    statement = split_sql(mark_path(area).read_text(encoding="utf-8"))[0]
    with engine.connect() as conn:
        value = conn.execute(sa.text(statement)).scalar()
    return None if value is None else _timestamp(value)


def _with_defaults(statements: Sequence[str], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters, with every change-detection parameter the script names and the caller did not
    give set to NULL (the full read)."""
    defaults = {name: None for name in INCREMENTAL_PARAMS if any(f":{name}" in s for s in statements)}
    return {**defaults, **dict(params or {})}


def derived_fields(area: Area | int | str) -> list[str]:
    """Fields the mapping derives in Python (registry source "derived from ..."): no query column."""
    return [f.name for f in _area(area).fields if f.source.startswith("derived")]


def expected_columns(area: Area | int | str) -> list[str]:
    """The source frame's columns: the fields (less the derived ones), the derivation inputs, then
    `record_key`, `updated_at`, `deleted_at`."""
    a = _area(area)
    fields: list[str] = []
    # Areas that share a query (1 and 2 read every measure) get the fields of all of them, in order.
    for sharing in (b for b in AREAS if b.query == a.query):
        derived = set(derived_fields(sharing))
        fields += [n for n in sharing.field_names if n not in derived and n not in fields]
    return [*fields, *EXTRA_COLUMNS[a.number], *TRAILING_COLUMNS]


# --------------------------------------------------------------------------------------------- values
def _integral(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)) and value == value and value == int(value):
        return int(value)
    return None


def _text_converter(kind: str) -> Callable[[Any], Any]:
    width = _ZERO_PAD.get(kind)

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        number = _integral(value)
        if number is not None:
            return str(number).zfill(width) if width else str(number)
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        return str(value)

    return convert


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, date):
        return f"{value.isoformat()} 00:00:00"
    if isinstance(value, str) and len(value) > 10 and value[10] == "T":
        return f"{value[:10]} {value[11:]}"
    return value


def _float(value: Any) -> Any:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return float(value)
    return value


def _count(value: Any) -> Any:
    number = _integral(value)
    return value if number is None else number


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    number = _integral(value)
    return value if number is None else number


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


_NONE = type(None)
#: Per converter, the value types it returns unchanged: a column holding only these is taken as it is.
_UNCHANGED: dict[Callable[[Any], Any], frozenset[type]] = {
    _date: frozenset({str, _NONE}), _float: frozenset({float, _NONE}), _count: frozenset({int, _NONE}),
    _flag: frozenset({int, _NONE}), _plain: frozenset({str, int, float, _NONE}),
}


def _converter(kind: str) -> Callable[[Any], Any]:
    if kind in _TEXT_KINDS:
        convert = _text_converter(kind)
        convert.unchanged = frozenset({str, _NONE})  # type: ignore[attr-defined]
        return convert
    return {
        "date": _date,
        "timestamp": _timestamp,
        "hours": _float,
        "count": _count,
        "bool": _flag,
        "flag": _flag,
    }.get(kind, _plain)


def column_kind(area: Area | int | str, column: str) -> str | None:
    """The registry kind of a source-frame column (or 'flag'/'timestamp' for the extras)."""
    a = _area(area)
    for f in a.fields:
        if f.name == column:
            return f.kind
    return _EXTRA_KINDS.get(column)


def _frame(rows: Sequence[Sequence[Any]], columns: list[str], converters: list[Callable[[Any], Any]]) -> pd.DataFrame:
    # Transposed in C; a column whose values the converter would leave alone is not walked in Python; the
    # columns go into one object block (one array, no per-column copies when the frame is made).
    if not rows:
        return pd.DataFrame({c: [] for c in columns}, columns=columns, dtype=object)
    block = np.empty((len(columns), len(rows)), dtype=object)
    for j, (convert, held) in enumerate(zip(converters, zip(*rows, strict=True), strict=True)):
        if not _unchanged(convert, held):
            held = tuple(convert(v) for v in held)
        block[j] = np.fromiter(held, dtype=object, count=len(rows))  # values as they are (a list stays a list)
    return pd.DataFrame(block.T, columns=columns, dtype=object, copy=False)


def _unchanged(convert: Callable[[Any], Any], held: tuple) -> bool:
    """True when `convert` would return every value of the column as it is."""
    types = set(map(type, held))
    if convert is _timestamp:  # text is left alone unless it has a "T" between date and time
        return types <= {str, _NONE} and "T" not in "".join(v for v in held if v is not None)
    known = _UNCHANGED.get(convert)
    unchanged: frozenset[type] = known if known is not None else getattr(convert, "unchanged", frozenset())
    return bool(unchanged) and types <= unchanged


# --------------------------------------------------------------------------------------------- extraction
def extract_chunks(
    engine: Engine,
    area: Area | int | str,
    chunksize: int = 50_000,
    params: Mapping[str, Any] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream an area's source frame in chunks of at most `chunksize` rows.

    PostgreSQL reads through a server-side cursor (`stream_results`), so memory is bounded by the
    chunk. A query without rows yields one empty frame with the columns. `params` binds named
    parameters (`:name`) for queries that have them; the shipped queries have none.
    """
    if chunksize < 1:
        raise ValueError("chunksize must be at least 1")
    a = _area(area)
    statements = load_statements(a, engine)
    params_ = _with_defaults(statements, params)
    with engine.connect() as conn, _rows(conn, statements, params_, chunksize) as (columns, partitions):
        converters = [_converter(column_kind(a, c) or "") for c in columns]
        empty = True
        for rows in partitions:
            empty = False
            yield _frame(rows, columns, converters)
        if empty:
            yield _frame([], columns, converters)


@contextmanager
def _rows(conn: sa.Connection, statements: Sequence[str], params: dict[str, Any], chunksize: int
          ) -> Iterator[tuple[list[str], Iterator[Sequence[Sequence[Any]]]]]:
    """A script's read: its column names and rows in lists of at most `chunksize` tuples, after the
    statements before it. The read ends on leaving, and what the statements before it made goes with it."""
    *prepare, read = statements
    if dialect_name(conn) == "sqlite":
        # sqlite3 binds the statement's :name parameters itself, and its tuples go to the frame as they are:
        # SQLAlchemy's Row objects cost ~3 s of the task's time at 1M records, outside the query.
        sqlite = conn.connection.driver_connection
        assert sqlite is not None  # an open connection has its DBAPI connection
        with _sqlite_read(sqlite, prepare, params):
            cursor = sqlite.execute(read, params)
            try:
                yield [d[0] for d in cursor.description], iter(lambda: cursor.fetchmany(chunksize), [])
            finally:
                cursor.close()
    else:  # PostgreSQL: a server-side cursor (stream_results), memory bounded by the chunk
        # A cursor's plan is made for its first 10 % of rows by default (cursor_tuple_fraction), which at 1M
        # measures chose an index look-up per row of persons and job plans; the read takes every row.
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
        for statement in prepare:  # in the read's transaction, which is rolled back when the connection closes
            conn.execute(sa.text(statement), params)
        result = conn.execution_options(stream_results=True, yield_per=chunksize).execute(sa.text(read), params)
        try:
            yield list(result.keys()), result.partitions(chunksize)
        finally:
            result.close()


@contextmanager
def _sqlite_read(sqlite: Any, prepare: Sequence[str], params: dict[str, Any]) -> Iterator[None]:
    """Run the statements that prepare a read in a savepoint, undone (temporary tables dropped) when the
    read ends; one snapshot of the source for the statements and the read. Nothing to do without any."""
    if not prepare:
        yield
        return
    sqlite.execute("SAVEPOINT ams_extract")
    try:
        for statement in prepare:
            sqlite.execute(statement, params)
        yield
    finally:
        sqlite.execute("ROLLBACK TO ams_extract")
        sqlite.execute("RELEASE ams_extract")


def extract_frame(engine: Engine, area: Area | int | str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The whole source frame at once (small sources and tests; the pipeline uses extract_chunks)."""
    frames = list(extract_chunks(engine, area, chunksize=100_000, params=params))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def count_rows(engine: Engine, area: Area | int | str, params: Mapping[str, Any] | None = None) -> int:
    """How many rows the area's query returns (soft-deleted ones included)."""
    *prepare, read = load_statements(area, engine)
    counting = [*prepare, f"SELECT COUNT(*) FROM ({read}) AS q"]
    with engine.connect() as conn, _rows(conn, counting, _with_defaults(counting, params), 1) as (_, rows):
        return int(next(rows)[0][0])

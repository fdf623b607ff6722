"""The source side: DDL on both dialects, the extraction queries' contract, chunked extraction."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from demo.synthetic import generate
from transforms import source
from transforms.registry import AREAS, get_area
from transforms.source import (
    EXTRA_COLUMNS,
    SOURCE_TABLES,
    SQLITE_CACHE_KIB,
    count_rows,
    create_engine_from_url,
    create_source_schema,
    expected_columns,
    extract_chunks,
    extract_frame,
    insert_rows,
    load_query,
    load_statements,
    split_sql,
)

IDENTIFIER_COLUMNS = {
    "cpr", "municipality_code", "responsible_jobcenter", "registering_jobcenter", "provider_cvr", "provider_pnr",
    "employer_cvr", "employer_se", "company_cvr", "company_pnr", "measure_id", "interview_id", "grant_id",
    "jobplan_id", "team_id", "job_order_id",
}


def _table_columns(engine: sa.Engine) -> dict[str, dict[str, str]]:
    inspector = sa.inspect(engine)
    return {
        table: {c["name"]: str(c["type"]).upper() for c in inspector.get_columns(table)}
        for table in inspector.get_table_names()
    }


# ------------------------------------------------------------------------------------------------ SQL text
def test_split_sql_honours_quotes_and_comments():
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'a;b', y TEXT DEFAULT 'it''s -- no comment');
    /* block; comment */ CREATE INDEX i ON a (x);  -- trailing
    ;
    """
    statements = split_sql(script)
    assert len(statements) == 2
    assert statements[0].startswith("CREATE TABLE a") and "'a;b'" in statements[0]
    assert "'it''s -- no comment'" in statements[0]
    assert statements[1] == "CREATE INDEX i ON a (x)"


def test_load_query_prefers_the_dialects_file():
    area7 = get_area(7)
    assert "group_concat" in load_query(area7, "sqlite")
    assert "string_agg" in load_query(area7, "postgresql")
    assert "LISTAGG" in load_query(area7, "oracle")  # the portable file
    # areas 1-2: SQLite computes the derived columns in person order into a temporary table first
    # (measures.sqlite.sql), then reads; PostgreSQL reads with the portable file's one statement
    create, insert, read = load_statements(1, "sqlite")
    assert create.startswith("CREATE TEMP TABLE") and insert.startswith("INSERT INTO ams_measures_derived")
    assert "ams_measures_derived" in read
    assert load_query(1, "sqlite") == read
    assert load_statements(1, "postgresql") == load_statements(1, "oracle") == [load_query(1, "postgresql")]
    for area in AREAS:
        for dialect in ("sqlite", "postgresql"):
            for sql in load_statements(area, dialect):
                assert "--" not in sql and not sql.rstrip().endswith(";")


def test_source_url_from_env(monkeypatch):
    monkeypatch.delenv("AMS_SOURCE_URL", raising=False)
    assert source.source_url_from_env() == f"sqlite:///{source.REPO_ROOT / 'var' / 'source' / 'demo.sqlite'}"
    monkeypatch.setenv("AMS_SOURCE_URL", "postgresql://u@h/db")
    assert source.source_url_from_env() == "postgresql://u@h/db"


def test_create_engine_from_url(tmp_path):
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.sqlite'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        # the area query's index look-ups at 1M records: 64 MiB, not SQLite's 2 MB (docs/performance.md)
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB == -65_536
    assert (tmp_path / "deep" / "er" / "x.sqlite").exists()
    engine.dispose()
    pg = create_engine_from_url("postgresql://user@localhost:5432/db")  # lazy: no connection made
    assert pg.dialect.driver == "psycopg"


# ------------------------------------------------------------------------------------------------ DDL
def _assert_contract_schema(engine: sa.Engine) -> None:
    tables = _table_columns(engine)
    for table, columns in SOURCE_TABLES.items():
        assert table in tables, table
        assert set(columns) == set(tables[table]), table
        assert {"updated_at", "deleted_at"} <= set(tables[table])
        for column, type_ in tables[table].items():
            if column in IDENTIFIER_COLUMNS:
                assert "INT" not in type_ and "NUMERIC" not in type_, (table, column, type_)


def test_schema_creates_on_sqlite_and_reruns(sqlite_url):
    engine = create_engine_from_url(sqlite_url)
    create_source_schema(engine)
    create_source_schema(engine)  # IF NOT EXISTS: re-runnable
    _assert_contract_schema(engine)
    assert _table_columns(engine)["measures"]["start_date"] == "TEXT"
    engine.dispose()


@pytest.mark.postgres
def test_schema_creates_on_postgres_and_reruns(pg_engine):
    create_source_schema(pg_engine)
    create_source_schema(pg_engine)
    _assert_contract_schema(pg_engine)
    columns = _table_columns(pg_engine)
    assert columns["measures"]["start_date"] == "DATE"
    assert columns["persons"]["cpr"].startswith("VARCHAR")
    indexes = {ix["name"] for ix in sa.inspect(pg_engine).get_indexes("payments")}
    assert {"ix_payments_person_period", "ix_payments_updated", "ix_payments_deleted"} <= indexes
    # every table has both change stamps indexed (the change mark and filters, docs/operations.md)
    inspector = sa.inspect(pg_engine)
    for table in inspector.get_table_names():
        stamped = {tuple(ix["column_names"]) for ix in inspector.get_indexes(table)}
        assert {("updated_at",), ("deleted_at",)} <= stamped, table


@pytest.mark.postgres
def test_postgres_source_reads_without_jit(pg_engine):
    # JIT compiled the area queries for about 1 s per extraction, whatever they read (docs/performance.md)
    for _ in range(2):  # a new connection and a pooled one
        with pg_engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"


# ------------------------------------------------------------------------------------------------ queries
def test_every_area_returns_the_contract_columns(demo_db):
    engine, _ = demo_db
    for area in AREAS:
        frame = extract_frame(engine, area)
        assert list(frame.columns) == expected_columns(area), area.code
        assert len(frame) > 0, area.code
        keys = frame["record_key"].tolist()
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert all(isinstance(k, str) for k in keys)
        if area.key_column in frame.columns:
            assert frame[area.key_column].tolist() == keys
        assert count_rows(engine, area) == len(frame)
        assert set(EXTRA_COLUMNS[area.number]) <= set(frame.columns)
        assert "visitation_rules" not in frame.columns


def test_soft_deleted_rows_are_returned(demo_db):
    engine, _ = demo_db
    with engine.connect() as conn:
        deleted = conn.execute(sa.text("SELECT COUNT(*) FROM measures WHERE deleted_at IS NOT NULL")).scalar_one()
    frame = extract_frame(engine, 1)
    assert deleted > 0
    assert frame["deleted_at"].notna().sum() == deleted


def test_values_are_normalised(demo_db):
    engine, _ = demo_db
    frame = extract_frame(engine, 2)
    assert all(str(dtype) == "object" for dtype in frame.dtypes)
    live = frame[frame["start_date"].notna()]
    assert all(isinstance(v, str) and len(v) == 10 for v in live["start_date"])
    assert all(isinstance(v, str) and len(v) == 19 and v[10] == " " for v in frame["updated_at"])
    assert set(frame["open_offer"]) <= {0, 1}
    assert set(frame["reconciles"]) <= {0, 1}
    assert set(frame["insured"].dropna()) <= {0, 1}
    assert all(isinstance(v, float) for v in frame["weekly_hours"].dropna())


def test_identifiers_keep_leading_zeros(sqlite_url):
    engine = create_engine_from_url(sqlite_url)
    create_source_schema(engine)
    with engine.begin() as conn:
        insert_rows(conn, "persons", [{"person_id": 1, "cpr": "0101901234"}])
        insert_rows(conn, "absence_interviews", [
            {"interview_id": "007", "person_id": 1, "employer_se": "01234567", "held_on": date(2025, 3, 1)},
        ])
        insert_rows(conn, "aid_grants", [
            {"grant_id": "0042", "person_id": 1, "municipality_code": "101", "aid_kind": "WORK_TOOLS",
             "company_cvr": "13748136", "company_pnr": "0012345678", "approved_on": date(2025, 3, 1)},
        ])
    area4 = extract_frame(engine, 4)
    assert area4.loc[0, "person_cpr"] == "0101901234"
    assert area4.loc[0, "employer_se"] == "01234567"
    assert area4.loc[0, "record_key"] == "007"
    area8 = extract_frame(engine, 8)
    assert area8.loc[0, "company_pnr"] == "0012345678" and area8.loc[0, "record_key"] == "0042"
    engine.dispose()


def test_integer_identifiers_are_padded_back():
    """A vendor table that stores identifiers as integers still gives 10-digit strings."""
    assert source._converter("cpr")(101901234) == "0101901234"
    assert source._converter("pnr")(12345678) == "0012345678"
    assert source._converter("jobcentre")(10101) == "10101"
    assert source._converter("cvr")(13748136) == "13748136"
    assert source._converter("key")(42) == "42"
    assert source._converter("date")(datetime(2025, 1, 2, 3, 4)) == "2025-01-02"
    assert source._converter("timestamp")("2025-01-02T03:04:05") == "2025-01-02 03:04:05"


def test_chunks_give_the_same_rows_as_one_chunk(demo_db):
    engine, _ = demo_db
    for area in AREAS:
        whole = extract_frame(engine, area)
        chunks = list(extract_chunks(engine, area, chunksize=37))
        assert all(len(c) <= 37 for c in chunks)
        assert len(chunks) == max(1, -(-len(whole) // 37))
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_a_prepared_read_leaves_nothing_on_its_connection(demo_db):
    """SQLite's areas 1-2 fill a temporary table before the read; it goes with the read, finished or not,
    so the pool's next user of the connection (the next chunked read, a count) starts clean."""
    engine, _ = demo_db
    whole = extract_frame(engine, 1)
    with engine.connect() as conn:  # the pool's one connection, held so that every read below takes it
        raw = conn.connection.driver_connection
        reads = extract_chunks(engine, 1, chunksize=5)
        assert len(next(reads)) == 5
        reads.close()  # abandoned after its first chunk
        assert raw.execute("SELECT name FROM sqlite_temp_master").fetchall() == []
        assert not raw.in_transaction
    assert count_rows(engine, 1) == len(whole)
    pd.testing.assert_frame_equal(extract_frame(engine, 1), whole)
    with engine.begin() as conn:  # inside a caller's transaction: a savepoint, undone the same way
        conn.exec_driver_sql("SELECT 1")
        assert count_rows(engine, 1) == len(whole)


def test_sqlite_derives_areas_1_2_in_person_order_from_the_covering_index(demo_db):
    """The full read's look-ups go in person order over ix_measures_person_type, with no table read and no
    sort before them (issue 9: in any other order each look-up searches the whole index)."""
    engine, _ = demo_db
    create, insert, _read = load_statements(1, "sqlite")
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute("SAVEPOINT plan")
        raw.execute(create)
        plan = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + insert, {"since": None, "recheck_after": None})]
        raw.execute("ROLLBACK TO plan")
    full_read = plan[: plan.index("RIGHT")]  # the UNION ALL's first branch: every measure
    assert "SCAN measures USING COVERING INDEX ix_measures_person_type" in full_read
    assert sum("TEMP B-TREE" in step for step in full_read) == 1  # only the record_key order of the table written


def test_empty_source_yields_one_empty_frame(sqlite_url):
    engine = create_engine_from_url(sqlite_url)
    create_source_schema(engine)
    for area in AREAS:
        chunks = list(extract_chunks(engine, area))
        assert len(chunks) == 1 and chunks[0].empty
        assert list(chunks[0].columns) == expected_columns(area)
    with pytest.raises(ValueError):
        next(extract_chunks(engine, 1, chunksize=0))
    engine.dispose()


# ------------------------------------------------------------------------------------------------ as-of joins
def _fixture_rows() -> dict[str, list[dict]]:
    """A hand-made source whose derived columns are known (see test_derivation_inputs)."""
    d = date
    stamp = datetime(2025, 6, 1, 12, 0, 0)
    return {
        "persons": [
            {"person_id": 1, "cpr": "2101901234", "updated_at": stamp},
            {"person_id": 2, "cpr": "0505851234", "updated_at": stamp},
            {"person_id": 3, "cpr": "0101801234", "updated_at": stamp},
        ],
        "person_target_groups": [
            {"person_id": 1, "valid_from": d(2025, 1, 1), "valid_to": d(2025, 3, 31), "target_group": "LAB2-1",
             "insured": True},
            {"person_id": 1, "valid_from": d(2025, 4, 1), "valid_to": None, "target_group": "LAB2-2",
             "insured": False},
            # deleted: must not win although it is the latest valid on 2025-04-15
            {"person_id": 1, "valid_from": d(2025, 4, 10), "valid_to": None, "target_group": "LAB2-9",
             "insured": False, "deleted_at": stamp},
        ],
        "benefits": [
            {"person_id": 1, "valid_from": d(2025, 1, 1), "valid_to": d(2025, 3, 31), "benefit_code": "20"},
            {"person_id": 1, "valid_from": d(2025, 4, 1), "valid_to": None, "benefit_code": "10"},
        ],
        "payments": [
            {"payment_id": 1, "person_id": 3, "benefit_code": None, "period_from": d(2025, 3, 1),
             "period_to": d(2025, 3, 31), "amount": 1000.0},
            {"payment_id": 2, "person_id": 2, "benefit_code": "10", "period_from": d(2025, 1, 1),
             "period_to": d(2025, 1, 31), "amount": 1000.0, "deleted_at": stamp},
        ],
        "jobplans": [
            {"jobplan_id": "JP1", "person_id": 1, "created_on": d(2025, 1, 15), "revised_on": d(2025, 2, 10),
             "employment_goal": "Job som tømrer"},
            {"jobplan_id": "JP2", "person_id": 1, "created_on": d(2025, 1, 15), "deleted_at": stamp},
        ],
        "measures": [
            {"measure_id": "A", "person_id": 1, "measure_type": "VO", "start_date": d(2025, 2, 1),
             "end_date": d(2025, 5, 31), "weekly_hours": 37.5, "open_offer": True, "jobplan_id": "JP1"},
            {"measure_id": "B", "person_id": 2, "measure_type": "VP", "start_date": d(2025, 2, 1),
             "end_date": d(2025, 2, 28), "open_offer": False},
            {"measure_id": "C", "person_id": 3, "measure_type": "VP", "start_date": d(2025, 3, 15),
             "end_date": d(2025, 4, 15)},
            {"measure_id": "D", "person_id": 1, "measure_type": "VP", "start_date": d(2025, 4, 1),
             "end_date": d(2025, 4, 15), "jobplan_id": "JP2", "deleted_at": stamp},
        ],
        "followup_interviews": [
            {"interview_id": "F1", "person_id": 3, "held_on": d(2025, 3, 10), "interview_form": "1"},
            {"interview_id": "F2", "person_id": 2, "held_on": d(2025, 3, 10), "interview_form": "2"},
        ],
        "cv_interviews": [
            {"interview_id": "C1", "person_id": 1, "held_on": d(2025, 4, 15), "cv_status": "KLAR"},
            {"interview_id": "C2", "person_id": 2, "held_on": d(2025, 4, 15), "cv_status": "KLAR"},
        ],
        "personal_assistance_grants": [
            {"grant_id": "P1", "person_id": 3, "scheme": "EMPLOYMENT", "start_date": d(2025, 2, 1),
             "end_date": d(2025, 3, 5), "weekly_hours": 10.0},
            {"grant_id": "P2", "person_id": 2, "scheme": "EDUCATION", "start_date": d(2025, 2, 1),
             "end_date": d(2025, 3, 5), "weekly_hours": 10.0},
        ],
        "mentor_grants": [
            {"grant_id": "G1", "basis": "SLOT", "start_date": d(2025, 2, 1), "end_date": d(2025, 2, 28),
             "persons_paid": 2, "avg_paid_hours": 4.5},
            {"grant_id": "G2", "basis": "PERSON", "start_date": d(2025, 2, 1), "granted_hours": 20.0},
        ],
        "mentor_grant_persons": [
            {"grant_id": "G1", "person_id": 1},
            {"grant_id": "G1", "person_id": 3},
            {"grant_id": "G1", "person_id": 2, "deleted_at": stamp},
        ],
    }


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_engine(request, sqlite_url):
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_engine_from_url(url)
    yield engine
    engine.dispose()


def test_derivation_inputs(any_engine):
    create_source_schema(any_engine)
    with any_engine.begin() as conn:
        for table, rows in _fixture_rows().items():
            insert_rows(conn, table, rows)

    m1 = extract_frame(any_engine, 1).set_index("record_key")
    m2 = extract_frame(any_engine, 2).set_index("record_key")
    a = m2.loc["A"]
    assert (a["target_group"], a["insured"]) == ("LAB2-1", 1)
    assert (a["target_group_at_end"], a["insured_at_end"]) == ("LAB2-2", 0)  # status changed during it
    assert a["main_benefit"] == "20" and a["reconciles"] == 1 and a["open_offer"] == 1
    assert (a["jobplan_id"], a["jobplan_created_on"], a["jobplan_revised_on"]) == ("JP1", "2025-01-15", "2025-02-10")
    assert a["employment_goal"] == "Job som tømrer" and a["weekly_hours"] == 37.5
    b = m2.loc["B"]  # no group, no benefit; its only payment is deleted
    assert b["target_group"] is None and b["insured"] is None and b["main_benefit"] is None
    assert b["reconciles"] == 0
    c = m2.loc["C"]  # no benefit spell, but a payment overlapping the measure
    assert c["main_benefit"] is None and c["reconciles"] == 1
    d = m1.loc["D"]  # boundary day: the new group; the deleted plan's fields are empty
    assert (d["target_group"], d["insured"]) == ("LAB2-2", 0)
    assert d["target_group_at_end"] == "LAB2-2"  # the deleted LAB2-9 row does not count
    assert d["jobplan_id"] == "JP2" and d["jobplan_created_on"] is None
    assert d["deleted_at"] == "2025-06-01 12:00:00"
    assert m1.loc["A", "person_cpr"] == "2101901234"

    area3 = extract_frame(any_engine, 3).set_index("record_key")
    assert area3.loc["F1", "reconciles"] == 1 and area3.loc["F2", "reconciles"] == 0
    area5 = extract_frame(any_engine, 5).set_index("record_key")
    assert (area5.loc["C1", "target_group"], area5.loc["C1", "insured"], area5.loc["C1", "reconciles"]) == (
        "LAB2-2", 0, 1)
    assert area5.loc["C2", "target_group"] is None and area5.loc["C2", "reconciles"] == 0
    area6 = extract_frame(any_engine, 6).set_index("record_key")
    assert area6.loc["P1", "reconciles"] == 1 and area6.loc["P2", "reconciles"] == 0
    area7 = extract_frame(any_engine, 7).set_index("record_key")
    assert area7.loc["G1", "person_cprs"] == "0101801234,2101901234"
    assert area7.loc["G2", "person_cprs"] is None
    assert area7.loc["G1", "persons_paid"] == 2 and area7.loc["G1", "avg_paid_hours"] == 4.5


# ------------------------------------------------------------------------------------------------ dialects
@pytest.mark.postgres
def test_sqlite_and_postgres_extract_the_same_frames(sqlite_url, pg_engine):
    lite = create_engine_from_url(sqlite_url)
    data_lite = generate(lite, persons=300, defect_rate=0.05)
    data_pg = generate(pg_engine, persons=300, defect_rate=0.05)
    assert data_lite.counts == data_pg.counts and data_lite.defects == data_pg.defects
    for area in AREAS:
        from_lite = extract_frame(lite, area)
        from_pg = extract_frame(pg_engine, area)
        assert len(from_lite) > 0
        pd.testing.assert_frame_equal(from_lite, from_pg, check_exact=True)
        chunks = list(extract_chunks(pg_engine, area, chunksize=50))
        pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), from_pg)
        assert count_rows(pg_engine, area) == len(from_pg)
    lite.dispose()

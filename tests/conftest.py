"""Shared fixtures: fresh source databases (SQLite file, PostgreSQL schema) and a small demo dataset."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from demo.synthetic import DemoData, generate
from transforms.registry import REPO_ROOT
from transforms.source import create_engine_from_url

# Property tests assert behaviour, not speed: on a shared 2-core machine an example can take longer
# than Hypothesis's default 200 ms deadline without anything being wrong.
hypothesis_settings.register_profile("ams", deadline=None)
hypothesis_settings.load_profile("ams")

#: The repository root, for tests that read files of the project (dags/, docker-compose.yml, ...).
ROOT = REPO_ROOT

# The Makefile's environment, so that a bare `pytest` runs like `make test` (values already set win).
for _name, _value in {
    "AIRFLOW_HOME": str(ROOT / "var" / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)

#: The test server (trust auth); `AMS_TEST_PG_URL` points the tests at another one.
PG_BASE_URL = os.environ.get("AMS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite file database (it is created on first connect)."""
    return f"sqlite:///{tmp_path / 'source.sqlite'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL bound to a fresh, uniquely named PostgreSQL schema, dropped afterwards.

    The schema is the connection's search_path (`options=-csearch_path=...`), so unqualified DDL
    and queries land in it. Skips when the server does not answer.
    """
    admin = sa.create_engine(PG_BASE_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect means: no server here
        admin.dispose()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {reason}")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url) -> Iterator[sa.Engine]:
    """An engine on the test's PostgreSQL schema, disposed before the schema is dropped."""
    engine = create_engine_from_url(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def demo_db(sqlite_url) -> Iterator[tuple[sa.Engine, DemoData]]:
    """A small demo dataset (400 persons, 5 % defects) in a fresh SQLite file: (engine, DemoData)."""
    engine = create_engine_from_url(sqlite_url)
    data = generate(engine, persons=400, defect_rate=0.05)
    yield engine, data
    engine.dispose()

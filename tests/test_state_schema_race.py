"""Workers that start at once on a fresh PostgreSQL state database all create its tables (and, for a
tenant, its schema): on Celery that happened, and a task failed with a unique violation in
PostgreSQL's catalog. Every StateStore must come up, however many start together."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from delivery.state import StateStore

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("tenant", [None, "147"])
def test_state_stores_created_at_once_on_a_fresh_database(pg_url, tenant):
    starters = 8
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            StateStore(pg_url, tenant=tenant).engine.dispose()
        except BaseException as exc:  # collected: the test names every failure
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, f"{len(errors)} of {starters} failed, e.g. {type(errors[0]).__name__}: {errors[0]}"
    store = StateStore(pg_url, tenant=tenant)
    assert "ams_ledger" in sa.inspect(store.engine).get_table_names()
    store.engine.dispose()

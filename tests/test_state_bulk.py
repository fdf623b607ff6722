"""The state store's bulk paths (issue 9) store exactly what the SQLAlchemy Core statements they replace
stored: `_insert_many` (tuples straight to the driver) against `table.insert()`, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery.state import StateStore, _column, _insert_many, batch_records, findings, ledger

STAMP = datetime(2026, 11, 30, 12, 34, 56, 789012, tzinfo=UTC)


def _rows(conn, table: sa.Table, order: str) -> list[tuple]:
    # Raw stored values (the text SQLite holds for a DateTime), not what SQLAlchemy makes of them.
    return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table.name} ORDER BY {order}").all()]


def _both_ways(url: str, table: sa.Table, values: dict, order: str) -> tuple[list, list]:
    """The rows `values` gives through `table.insert()` and through `_insert_many`, each in a fresh table."""
    count = max((len(v) for v in values.values() if isinstance(v, list)), default=1)
    dicts = [{k: (v[i] if isinstance(v, list) else v) for k, v in values.items()} for i in range(count)]
    store = StateStore(url)
    try:
        with store.begin() as conn:
            conn.execute(table.insert(), dicts)
            core = _rows(conn, table, order)
            conn.execute(table.delete())
            assert _insert_many(conn, table, values) == count
            bulk = _rows(conn, table, order)
            conn.execute(table.delete())
    finally:
        store.engine.dispose()
    return core, bulk


texts = st.one_of(st.none(), st.text(alphabet="abcæøå 0123456789-§", max_size=12))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="0123456789abcdef", min_size=1, max_size=10), texts, texts),
                min_size=1, max_size=30, unique_by=lambda t: t[0]))
def test_a_bulk_ledger_insert_stores_what_a_core_insert_stores(tmp_path_factory, rows):
    url = f"sqlite:///{tmp_path_factory.mktemp('bulk') / 'state.sqlite'}"
    values = {"area": 1, "record_key": [r[0] for r in rows], "record_id": [f"id-{r[0]}" for r in rows],
              "status": "accepted", "receiver_state": [r[1] for r in rows], "accepted_hash": [r[2] for r in rows],
              "rejected_hash": None, "last_batch_id": "b1", "error_text": [r[1] for r in rows], "updated_at": STAMP}
    core, bulk = _both_ways(url, ledger, values, "record_key")
    assert bulk == core


def test_bulk_inserts_match_core_on_postgresql(pg_url):
    values = {"area": 1, "record_key": ["k1", "k2"], "record_id": ["i1", "i2"], "status": "accepted",
              "receiver_state": ["active", None], "accepted_hash": [None, "h"], "last_batch_id": "b",
              "updated_at": STAMP}
    core, bulk = _both_ways(pg_url, ledger, values, "record_key")
    assert bulk == core
    members = {"batch_id": "b", "record_key": ["k1", "k2"], "record_id": ["i1", "i2"], "content_hash": ["h1", "h2"],
               "action": ["CREATE", "ANNUL"], "masked_person": [None, "010101-****"], "position": [0, 1]}
    core, bulk = _both_ways(pg_url, batch_records, members, "position")
    assert bulk == core


def test_frame_columns_go_in_as_python_values():
    """numpy integers and missing values (NaN, NA) become what the drivers take: int and None."""
    frame = pd.DataFrame({"area": np.array([1, 2], dtype=np.int64), "field": ["cpr", np.nan],
                          "message": pd.array(["m", pd.NA], dtype="string")})
    assert _column(frame["area"]) == [1, 2] and all(type(v) is int for v in _column(frame["area"]))
    assert _column(frame["field"]) == ["cpr", None]
    assert _column(frame["message"]) == ["m", None]


def test_a_bulk_findings_insert_matches_core(tmp_path):
    values = {"run_id": "r1", "area": 1, "record_key": ["a", "b", "c"], "rule": "cpr.no_modulus11",
              "field": ["cpr", "", None], "paragraph": "§ 4", "severity": "warning",
              "message": ["x", "y", "z"], "resolved_run": None}
    core, bulk = _both_ways(f"sqlite:///{tmp_path / 's.sqlite'}", findings, values, "id")
    # The ids run on from the first insert: compare all else.
    assert [r[1:] for r in bulk] == [r[1:] for r in core]


def test_columns_of_different_lengths_are_refused(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 's.sqlite'}")
    with pytest.raises(ValueError), store.begin() as conn:
        _insert_many(conn, ledger, {"area": 1, "record_key": ["a", "b"], "record_id": ["x"], "status": "accepted",
                                    "updated_at": STAMP})
    store.engine.dispose()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=23), max_size=8), st.integers(min_value=1, max_value=7))
def test_the_batch_writer_stages_consecutive_slices_of_what_it_was_given(sizes, batch_size):
    """Batches are the records in the order given, cut every `batch_size` rows, the last one shorter,
    each with a fresh RangeIndex (the batch writer slices each chunk once instead of re-concatenating)."""
    from collections import deque
    from types import SimpleNamespace

    from cycle.pipeline import _BatchWriter

    staged: list[pd.DataFrame] = []
    writer = _BatchWriter.__new__(_BatchWriter)
    writer.settings = SimpleNamespace(batch_size=batch_size)
    writer.pending, writer.pending_rows, writer.batch_ids = [], 0, []
    writer._staging, writer._pool = deque(), None  # no stage thread: _flush (replaced) records nothing
    writer._flush = staged.append  # type: ignore[method-assign]
    chunks, start = [], 0
    for size in sizes:
        chunks.append(pd.DataFrame({"record_key": [f"k{i}" for i in range(start, start + size)],
                                    "n": np.arange(start, start + size)}, index=np.arange(size) * 3 + 7))
        start += size
    for chunk in chunks:
        writer.add(chunk)
    writer.close()
    assert all(len(b) == batch_size for b in staged[:-1]) and all(0 < len(b) <= batch_size for b in staged)
    assert [b["n"].tolist() for b in staged] == [list(range(i, min(i + batch_size, start)))
                                                 for i in range(0, start, batch_size)]
    assert all(isinstance(b.index, pd.RangeIndex) and b.index.start == 0 for b in staged)


def test_the_state_dbs_sqlite_connections_get_the_larger_page_cache(tmp_path):
    from delivery.state import SQLITE_CACHE_KIB

    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    for _ in range(3):  # one listener, however many stores share the engine
        store = StateStore(engine)
    with store.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
    engine.dispose()


# --- the open findings of a chunk: a range of the index, or the keys looked up (delivery.state._open_findings) --

KEYS = ["10", "9", "A", "B", "a", "b", "c", "Å"]
FINDING = st.tuples(st.sampled_from(KEYS), st.sampled_from(["code.invalid", "cpr.no_modulus11"]),
                    st.sampled_from(["error", "warning"]), st.sampled_from(["m", "person_cpr 0101901234: m"]))
DAY = st.tuples(st.lists(st.sampled_from(KEYS), unique=True), st.lists(FINDING, unique=True, max_size=8))


def _full_read_chunks(full: tuple, order: list[str], cuts: list[int]) -> list[tuple[list[str], list]]:
    """The full read's records in `order` (key order, or any other), cut into chunks at `cuts`."""
    keys = [k for k in order if k in {*full[0], *(f[0] for f in full[1])}]
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(keys)), len(keys)]
    return [(keys[a:b], [f for f in full[1] if f[0] in keys[a:b]]) for a, b in pairwise(bounds) if b > a]


def _stored_findings(days: list, per_key: int, url: str, full: list[tuple[list[str], list]],
                     covered: bool = True) -> list[tuple]:
    """Store the days' findings, then the full read's chunks (`full`) and its end, with a `FindingsCover`
    gathered by the chunks (`covered`) or without one (the end scans every key)."""
    import delivery.state
    from delivery.state import FindingsCover

    store = StateStore(url)
    cover = FindingsCover() if covered else None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(delivery.state, "_FINDINGS_PER_KEY", per_key)
        runs = [*((f"r{n}", [day]) for n, day in enumerate(days)), (f"r{len(days)}", full)]
        for run_id, chunks in runs:
            for read, found in chunks:
                frame = pd.DataFrame(found, columns=["record_key", "rule", "severity", "message"]).assign(
                    field="f", paragraph="§ 3")
                store.record_findings(run_id, 1, frame, read=sorted(read),
                                      cover=cover if run_id == runs[-1][0] else None)
        # the last day was a full read: the records it did not read are gone from the source
        read = {k for chunk, found in full for k in [*chunk, *(f[0] for f in found)]}
        hashes = np.unique(np.array([hash(k) for k in read], dtype=np.int64))
        store.resolve_findings_not_read(f"r{len(days)}", 1, hashes, cover)
        with store.begin() as conn:
            rows = [tuple(r) for r in conn.exec_driver_sql(
                "SELECT record_key, rule, severity, message, run_id, resolved_run FROM ams_findings ORDER BY id").all()]
    store.engine.dispose()
    return rows


@settings(max_examples=60, deadline=None)
@given(days=st.lists(DAY, max_size=5), full=DAY, in_key_order=st.booleans(), order=st.permutations(KEYS),
       cuts=st.lists(st.integers(min_value=1, max_value=len(KEYS) - 1), max_size=3))
def test_a_chunks_open_findings_are_the_same_read_as_a_range_or_by_key(tmp_path_factory, days, full, in_key_order,
                                                                      order, cuts):
    """Property: over any days of reads (dense or sparse keys, findings new, kept or gone), storing the findings
    reads the same open findings whether the chunk's range is read (a full read's chunk) or its keys are looked
    up (a read of the changes), and both store what a model of the rule stores: a finding of a record read that
    no longer holds is resolved in that run, a new one added, an unchanged one left alone; others untouched.
    The last day (`full`) is a full read, in chunks, in key order or not: then the open findings of records it
    did not read are resolved (`resolve_findings_not_read`), whether it looks only where the chunks' ranges did
    not (`FindingsCover`) or at every key, and those of records it read are left as the day's findings say."""
    root = tmp_path_factory.mktemp("findings")
    chunks = _full_read_chunks(full, sorted(KEYS) if in_key_order else order, cuts)
    by_range = _stored_findings(days, 10**9, f"sqlite:///{root / 'range.sqlite'}", chunks)
    by_key = _stored_findings(days, -1, f"sqlite:///{root / 'keys.sqlite'}", chunks)
    mixed = _stored_findings(days, 1, f"sqlite:///{root / 'mixed.sqlite'}", chunks)
    uncovered = _stored_findings(days, 10**9, f"sqlite:///{root / 'uncovered.sqlite'}", chunks, covered=False)
    assert by_range == by_key == mixed == uncovered
    model: dict[tuple, list] = {}  # finding -> [run stored, run resolved]
    for n, (read, found) in enumerate([*days, *chunks]):
        n = min(n, len(days))  # the full read's chunks are one run
        now = {(k, r, s, m.replace("0101901234", "010190-****")) for k, r, s, m in found}
        for finding, runs in model.items():
            if runs[1] is None and finding[0] in {*read, *(f[0] for f in now)} and finding not in now:
                runs[1] = f"r{n}"
        for finding in sorted(now - {f for f, runs in model.items() if runs[1] is None}):
            model.setdefault(finding, [f"r{n}", None])
            if model[finding][1] is not None:  # found again after it was resolved: a new row
                model[(*finding, n)] = model.pop(finding)
                model[finding] = [f"r{n}", None]
    read_last = {*full[0], *(f[0] for f in full[1])}
    for finding, runs in model.items():
        if runs[1] is None and finding[0] not in read_last:
            runs[1] = f"r{len(days)}"
    assert sorted((*f[:4], *runs) for f, runs in model.items()) == sorted(by_key)
    assert not any("0101901234" in r[3] for r in by_key)


@settings(max_examples=100, deadline=None)
@given(ranges=st.lists(st.tuples(st.text(alphabet="abcÅ", max_size=3), st.text(alphabet="abcÅ", max_size=3)),
                       max_size=5), key=st.text(alphabet="abcÅ", max_size=3))
def test_a_key_is_in_a_gap_of_the_cover_exactly_when_no_range_holds_it(ranges, key):
    """Property: `FindingsCover.gaps` and the chunks' ranges share no key and leave none out (the end of a full
    read looks at a key exactly when no chunk looked at its range)."""
    from delivery.state import FindingsCover

    cover = FindingsCover(ranges=[(min(a, b), max(a, b)) for a, b in ranges])
    in_range = any(low <= key <= high for low, high in cover.ranges)
    in_gaps = [(after, before) for after, before in cover.gaps()
               if (after is None or key > after) and (before is None or key < before)]
    assert len(in_gaps) == (0 if in_range else 1)


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(max_size=4), max_size=30), read=st.lists(st.text(max_size=4), max_size=30))
def test_a_keys_hash_is_found_in_the_sorted_read_hashes_as_isin_finds_it(keys, read):
    """Property: `sorted_hashes` of a run's chunks is `np.unique` of them, and `_hashed_in` (a binary search in
    it) answers what `np.isin` answers, for keys read and not read, and with no hashes at all."""
    from delivery.state import _hashed_in, sorted_hashes

    parts = [np.array([hash(k) for k in read[i:i + 7]], dtype=np.int64) for i in range(0, len(read), 7)]
    hashes = sorted_hashes(parts)
    assert hashes.tolist() == np.unique(np.array([hash(k) for k in read], dtype=np.int64)).tolist()
    expected = np.isin(np.array([hash(k) for k in keys], dtype=np.int64), hashes)
    assert _hashed_in(keys, hashes).tolist() == expected.tolist() == [k in set(read) for k in keys]

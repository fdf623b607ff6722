"""The set-based ledger (issue 9) decides and writes exactly what the record-by-record one did, the
phase timings reach the run summary, and the benchmark's scaled source is a faithful copy.

Not timed: the benchmark (`make bench`) measures; these tests pin behaviour.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cycle.pipeline import _classify
from cycle.timing import PhaseTimer
from delivery.state import StateStore, ledger
from reports.summary import format_summary, run_summary
from transforms import mapping
from transforms.registry import get_area

AREA = get_area(1)


def _reference_classify(entries: dict[str, dict], in_flight: set[str], records: pd.DataFrame):
    """The record-by-record classification the set-based one replaced (cycle.pipeline before issue 9)."""
    counts: Counter = Counter()
    send, refused = [], set()
    for row in records[["record_key", "action", "content_hash"]].itertuples(index=False):
        entry = entries.get(row.record_key)
        if row.record_key in in_flight:
            counts["pending"] += 1
            send.append(False)
        elif row.action == mapping.ANNUL:
            delivered = entry is not None and entry["receiver_state"] == "active"
            counts["to_annul" if delivered else "unchanged"] += 1
            send.append(delivered)
        elif entry is not None and entry["accepted_hash"] == row.content_hash and entry["receiver_state"] == "active":
            counts["unchanged"] += 1
            send.append(False)
        elif entry is not None and entry["rejected_hash"] == row.content_hash:
            counts["rejected_unchanged"] += 1
            refused.add(row.record_key)
            send.append(False)
        else:
            counts["to_update" if entry is not None and entry["accepted_hash"] else "to_create"] += 1
            send.append(True)
    return records.loc[send, "record_key"].tolist(), counts, refused


_hash = st.sampled_from(["h1", "h2", None])
_entry = st.one_of(st.none(), st.fixed_dictionaries({
    "receiver_state": st.sampled_from(["active", "annulled", None]), "accepted_hash": _hash,
    "rejected_hash": _hash}))
_record = st.tuples(_entry, st.booleans(), st.sampled_from([mapping.CREATE_OR_UPDATE, mapping.ANNUL]),
                    st.sampled_from(["h1", "h2"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(_record, min_size=1, max_size=30))
def test_the_set_based_diff_classifies_as_the_record_by_record_one(tmp_path_factory, rows):
    state = StateStore(f"sqlite:///{tmp_path_factory.mktemp('diff') / 'state.sqlite'}")
    keys = [f"K{i:03d}" for i in range(len(rows))]
    entries = {k: e for k, (e, *_rest) in zip(keys, rows, strict=True) if e is not None}
    flying = {k for k, (_e, f, *_rest) in zip(keys, rows, strict=True) if f}
    with state.begin() as conn:
        for key, entry in entries.items():
            conn.execute(ledger.insert().values(area=1, record_key=key, record_id=key, status="accepted",
                                                updated_at=pd.Timestamp.now(tz="UTC").to_pydatetime(), **entry))
    if flying:
        members = pd.DataFrame({"record_key": sorted(flying), "record_id": sorted(flying), "content_hash": "x",
                                "action": mapping.CREATE_OR_UPDATE, "masked_person": None})
        state.add_batch(batch_id="b-open", area=1, run_id="r0", staged_path="-", payload_sha256="-",
                        payload_created="-", members=members)
    records = pd.DataFrame({"record_key": keys, "action": [r[2] for r in rows], "content_hash": [r[3] for r in rows]},
                           index=range(100, 100 + len(rows)))
    to_send, counts, refused = _classify(state, AREA, records)
    want_send, want_counts, want_refused = _reference_classify(entries, flying, records)
    assert to_send["record_key"].tolist() == want_send
    assert counts == +want_counts and refused == want_refused


@pytest.fixture
def store(tmp_path) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}")


def _batch(state: StateStore, batch_id: str, rows: list[tuple[str, str, str]]) -> None:
    members = pd.DataFrame({"record_key": [r[0] for r in rows], "record_id": [f"id-{r[0]}" for r in rows],
                            "content_hash": [r[1] for r in rows], "action": [r[2] for r in rows],
                            "masked_person": "010190-****"})
    state.add_batch(batch_id=batch_id, area=1, run_id="r", staged_path="-", payload_sha256="-", payload_created="-",
                    members=members)


def test_a_bulk_receipt_keeps_what_a_rejection_keeps_and_annuls_without_forgetting_the_hash(store):
    C, A = mapping.CREATE_OR_UPDATE, mapping.ANNUL
    _batch(store, "b1", [("k1", "h1", C), ("k2", "h1", C), ("k3", "h1", C)])
    ok = ("ACCEPTED", None, None)
    assert store.apply_receipt("b1", run_id="r1", outcome="accepted", message_id="m1", event_date="d",
                               record_results={"id-k1": ok, "id-k2": ok,
                                               "id-k3": ("REJECTED", "2001", "cpr 0101901234 wrong")}) == (2, 1)
    _batch(store, "b2", [("k1", "h2", C), ("k2", "h1", A), ("k3", "h2", C), ("k4", "h1", C)])
    assert store.apply_receipt("b2", run_id="r2", outcome="partially_accepted", message_id="m2", event_date="d",
                               record_results={"id-k1": ("REJECTED", "2002", "no"), "id-k2": ok, "id-k3": ok}) == (2, 2)
    frame = store.ledger_rows(1)
    rows = frame.astype(object).where(frame.notna(), None).set_index("record_key")
    assert rows.loc["k1", ["status", "receiver_state", "accepted_hash", "rejected_hash"]].tolist() == [
        "rejected", "active", "h1", "h2"]  # the receiver still holds h1
    assert rows.loc["k2", ["status", "receiver_state", "accepted_hash", "rejected_hash"]].tolist() == [
        "annulled", "annulled", "h1", None]
    assert rows.loc["k3", ["status", "receiver_state", "accepted_hash", "rejected_hash"]].tolist() == [
        "accepted", "active", "h2", None]
    assert rows.loc["k4", ["status", "error_code", "error_text"]].tolist() == ["rejected", "missing", "no receipt line"]
    assert rows.loc["k4", "receiver_state"] is None and rows.loc["k4", "accepted_hash"] is None
    assert set(rows["last_batch_id"]) == {"b2"}
    assert "0101901234" not in str(frame.to_dict())
    quarantined = {q["record_key"]: q for q in store.open_quarantine(1)}
    assert set(quarantined) == {"k3", "k1", "k4"}  # k3 from r1 is still open: released only by a prepare
    assert quarantined["k1"]["first_seen_run"] == "r2"
    # a second receipt for the same batch is refused: stored once
    assert store.apply_receipt("b2", run_id="r3", outcome="accepted", message_id="m3", event_date="d",
                               record_results={}) is None


def test_a_released_quarantine_entry_that_comes_back_is_first_seen_again(store):
    errors = pd.DataFrame({"record_key": ["k1"], "rule": "r", "field": "f", "paragraph": "p", "severity": "error",
                           "message": "m"})
    store.quarantine_rows("r1", 1, errors, {})
    assert store.release_quarantine("r2", 1) == 1
    store.quarantine_rows("r3", 1, errors.assign(message="m2"), {})
    (entry,) = store.open_quarantine(1)
    assert (entry["first_seen_run"], entry["last_seen_run"], entry["released_run"]) == ("r3", "r3", None)
    assert entry["findings"][0]["message"] == "m2"


def test_phase_timer_adds_up_repeats():
    timer = PhaseTimer()
    for _ in range(3):
        with timer.phase("map"):
            pass
    with pytest.raises(ValueError), timer.phase("send"):
        raise ValueError
    assert list(timer.seconds) == ["map", "send"] and all(v >= 0 for v in timer.seconds_rounded().values())


def test_prepare_and_deliver_record_their_phases_in_the_run_summary(tmp_path, monkeypatch):
    from cycle.pipeline import deliver_area, prepare_area
    from delivery.client import AmsClient
    from receiver.server import start_in_thread
    from tests.test_delivery_faults import demo_settings

    settings_ = demo_settings(tmp_path, monkeypatch, persons=150, defect_rate=0.05)
    receiver = start_in_thread(tmp_path / "receiver.sqlite")
    try:
        prepare_area(1, run_id="r1", period_end=date(2026, 11, 28), settings=settings_)
        deliver_area(1, run_id="r1", settings=settings_, client=AmsClient(receiver.wsdl_url, insecure_for_tests=True))
    finally:
        receiver.stop()
    (row,) = settings_.state().run_rows("r1")
    assert {"extract", "map", "contract", "quality", "hash", "diff", "payload", "send", "receipt"} <= set(
        row["counts"]["phases"])
    assert row["counts"]["peak_rss_mib"] > 0
    assert "Time per phase" in format_summary(run_summary("r1", settings_))


def test_the_scaled_source_copies_the_demo_with_its_own_persons_and_keys(tmp_path):
    from demo.scale import change_measures, scale_source
    from transforms.source import create_engine_from_url, extract_frame

    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    made = scale_source(url, 500, base_persons=150)
    assert made["copies"] >= 2 and made["measures"] == made["area1_about"]
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        persons = conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT cpr) FROM persons")).one()
        assert persons[0] == persons[1] or persons[1] > 0.95 * persons[0]  # new serials per copy
    frame = extract_frame(engine, AREA)
    engine.dispose()
    records = mapping.map_records(AREA, frame)
    assert len(records.records) == made["measures"] and records.out_of_scope.empty
    assert records.records["record_key"].is_unique
    assert change_measures(url, 0.1) >= made["measures"] * 0.08


def test_a_day_without_change_stores_no_finding_and_a_fix_resolves_one(tmp_path, monkeypatch):
    from cycle.pipeline import prepare_area
    from tests.test_delivery_faults import demo_settings
    from transforms.source import create_engine_from_url

    settings_ = demo_settings(tmp_path, monkeypatch, persons=150, defect_rate=0.1)
    day = date(2026, 11, 28)
    first = prepare_area(1, run_id="r1", period_end=day, settings=settings_)
    state = settings_.state()
    found = state.run_findings("r1")
    assert first["findings_stored"] == len(found) > 0
    second = prepare_area(1, run_id="r2", period_end=day, settings=settings_)
    assert second.get("findings_stored", 0) == 0
    again = state.run_findings("r2")
    columns = ["record_key", "rule", "field", "message"]
    assert again[columns].sort_values(columns).values.tolist() == found[columns].sort_values(columns).values.tolist()
    # ... and its report does not store the same findings.csv again: one copy, two names
    from reports.summary import write_run_report

    write_run_report("r1", settings_)
    write_run_report("r2", settings_)
    runs = settings_.reports_dir / "runs"
    assert (runs / "r1" / "findings.csv").read_bytes() == (runs / "r2" / "findings.csv").read_bytes()
    assert (runs / "r1" / "findings.csv").stat().st_ino == (runs / "r2" / "findings.csv").stat().st_ino
    # a record leaves the source: from the next run on, its findings no longer hold
    gone = found["record_key"].iloc[0]
    engine = create_engine_from_url(settings_.source_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM measures WHERE measure_id = :k"), {"k": gone})
    engine.dispose()
    third = prepare_area(1, run_id="r3", period_end=day, settings=settings_)
    assert third["findings_stored"] == (found["record_key"] == gone).sum()
    assert gone not in set(state.run_findings("r3")["record_key"])
    assert gone in set(state.run_findings("r1")["record_key"])  # what held then is kept

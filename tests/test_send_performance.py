"""The faster `send` phase (issue 9) does what the slower one did: the receiver's batched record writes
store and answer exactly what its record-at-a-time writes did; the client's receipt parser reads what
the element-by-element one read.

Not timed: `bench/send.py` and `make bench` measure; these tests pin behaviour.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import date
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from delivery.client import RecordReceipt, parse_receipt
from receiver.app import ReceiverApp, build_receipt
from receiver.store import ReceiverStore, StoredBatch
from transforms import payload
from transforms.identifiers import CPR_BAD_DATE, cpr_status
from transforms.payload import ERR_RECORD_AREA, ERR_UNKNOWN_CPR, ERR_UNKNOWN_RECORD, ERROR_TEXTS, build_batch
from transforms.registry import RECORD_ID_ELEMENT, VERSION_BY_NAMESPACE

CPR_OK = "0101901234"
CPR_BAD = "3102901234"  # 31 February
IDS = [str(uuid.UUID(int=i + 1)) for i in range(4)]


def _reference_submit(app: ReceiverApp, element: etree._Element) -> list[tuple[str, str, int | None, str | None]]:
    """The record-at-a-time writes of ReceiverApp.submit_batch before issue 9 (outcomes only; no batch row)."""
    ns = payload.namespace_of(element)
    area = VERSION_BY_NAMESPACE[ns].area(int(element.findtext(f"{payload.q('BatchHeader', ns)}/"
                                                              f"{payload.q('DataArea', ns)}")))
    batch_id = element.findtext(f"{payload.q('BatchHeader', ns)}/{payload.q('BatchIdentifier', ns)}").strip()
    cpr_tags = [payload.q(f.element, ns) for f in area.fields if f.kind in ("cpr", "cpr_list")]
    rid_tag, annul_tag = payload.q(RECORD_ID_ELEMENT, ns), payload.q(payload.ANNULMENT_ELEMENT, ns)
    outcomes: list[tuple[str, str, int | None, str | None]] = []
    with app.store.transaction() as tx:
        for rec in element.find(payload.q("Records", ns)):
            record_id = (rec.findtext(rid_tag) or "").strip()
            if rec.tag == annul_tag:
                if tx.annul_record(record_id, area.number, batch_id, "now"):
                    outcomes.append((record_id, payload.RECORD_ACCEPTED, None, None))
                else:
                    outcomes.append((record_id, payload.RECORD_REJECTED, ERR_UNKNOWN_RECORD,
                                     ERROR_TEXTS[ERR_UNKNOWN_RECORD]))
                continue
            bad = [el for el in rec.iter(*cpr_tags) if cpr_status((el.text or "").strip()) == CPR_BAD_DATE]
            if bad:
                outcomes.append((record_id, payload.RECORD_REJECTED, ERR_UNKNOWN_CPR,
                                 f"{ERROR_TEXTS[ERR_UNKNOWN_CPR]} ({etree.QName(bad[0]).localname}: "
                                 "the birth date does not exist)"))
                continue
            record_xml = etree.tostring(rec, method="c14n", exclusive=True)
            if tx.upsert_record(record_id, area.number, batch_id, record_xml, "now") is None:
                outcomes.append((record_id, payload.RECORD_REJECTED, ERR_RECORD_AREA, ERROR_TEXTS[ERR_RECORD_AREA]))
            else:
                outcomes.append((record_id, payload.RECORD_ACCEPTED, None, None))
        tx.insert_batch(StoredBatch(batch_id, area.number, "-", b"<r/>", "now", len(outcomes)))
    return outcomes


def _cv_batch(rows: list[tuple[str, str, str]], batch_id: str) -> bytes:
    frame = pd.DataFrame([{"record_id": rid, "action": action, "person_cpr": cpr, "municipality_code": "101",
                           "held_on": date(2024, 2, day + 1), "cv_status": "1"}
                          for day, (rid, action, cpr) in enumerate(rows)])
    return build_batch(5, frame, batch_id=batch_id, sender_municipality="101", run_id="test")


def _stored(store: ReceiverStore) -> list[tuple[object, ...]]:
    return [(r.record_id, r.area, r.batch_id, r.status, r.version, r.payload_xml, r.resends)
            for r in store.records()]


row = st.tuples(st.sampled_from(IDS), st.sampled_from(["CREATE_OR_UPDATE", "CREATE_OR_UPDATE", "ANNUL"]),
                st.sampled_from([CPR_OK, CPR_OK, CPR_BAD]))
before = st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from([3, 5]), st.booleans()), max_size=4)


@settings(max_examples=60)
@given(before=before, batches=st.lists(st.lists(row, min_size=1, max_size=12), min_size=1, max_size=3))
def test_batched_record_writes_equal_record_at_a_time(before: list[tuple[str, int, bool]],
                                                      batches: list[list[tuple[str, str, str]]]) -> None:
    """Records of another area, records sent twice in one batch, annulments of records the same batch
    created, unknown annulments and impossible CPR numbers: the same outcomes, the same stored rows."""
    with tempfile.TemporaryDirectory() as tmp:
        apps = [ReceiverApp(ReceiverStore(Path(tmp) / f"{name}.sqlite")) for name in ("new", "old")]
        for app in apps:
            with app.store.transaction() as tx:
                for record_id, area, annulled in before:
                    tx.upsert_record(record_id, area, "before", f"<x>{record_id}</x>".encode(), "then")
                    if annulled:
                        tx.annul_record(record_id, area, "before", "then")
        for number, rows in enumerate(batches):
            batch_id = str(uuid.UUID(int=1000 + number))
            xml = _cv_batch(rows, batch_id)
            new = parse_receipt(etree.fromstring(apps[0].submit_batch(etree.fromstring(xml), 0.0)))
            old = _reference_submit(apps[1], etree.fromstring(xml))
            assert [(r.record_id, r.status, r.error_code, r.error_text) for r in new.records] == old
            assert _stored(apps[0].store) == _stored(apps[1].store)


def _reference_parse_records(element: etree._Element) -> list[RecordReceipt]:
    """parse_receipt's records before issue 9 (findtext per field)."""
    ns = payload.namespace_of(element)
    q = lambda local: f"{{{ns}}}{local}"  # noqa: E731
    records = []
    for rr in element.find(q("RecordReceipts")).iter(q("RecordReceipt")):
        code = rr.findtext(q("ErrorCode"))
        records.append(RecordReceipt(rr.findtext(q(RECORD_ID_ELEMENT)).strip(), rr.findtext(q("Status")).strip(),
                                     int(code) if code is not None else None, rr.findtext(q("ErrorText"))))
    return records


@settings(max_examples=40)
@given(st.lists(st.tuples(st.sampled_from(IDS), st.booleans(), st.sampled_from([None, "", "Ukendt", " x "])),
                max_size=8))
def test_receipt_parser_reads_what_findtext_read(outcomes: list[tuple[str, bool, str | None]]) -> None:
    rows = [(rid, payload.RECORD_ACCEPTED if ok else payload.RECORD_REJECTED, None if ok else 1010,
             None if ok else text) for rid, ok, text in outcomes]
    element = etree.fromstring(build_receipt("SubmitBatchResponse", IDS[0], rows))
    assert parse_receipt(element).records == _reference_parse_records(element)

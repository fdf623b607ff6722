"""The local AMS receiver over raw HTTP (no client library), its store, and its process management."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import requests
from lxml import etree

from receiver.server import ReceiverHandle, ReceiverProcess, start_in_thread
from receiver.store import RECORD_ACTIVE, RECORD_ANNULLED, ReceiverStore, StoredBatch
from transforms import payload
from transforms.payload import NAMESPACE, SOAP_ENV_NS, build_batch, q

SOAP = f"{{{SOAP_ENV_NS}}}"
CPR_OK = "0101901234"
CPR_BAD_DATE = "3102901234"  # 31 February: well-formed, impossible birth date


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverHandle]:
    handle = start_in_thread(tmp_path / "receiver.sqlite", control=True)
    yield handle
    handle.stop()


def cv_batch(rows: list[tuple[str, str, str | None]], batch_id: str | None = None) -> tuple[str, bytes]:
    """An area 5 batch from (record_id, action, cpr) rows."""
    frame = pd.DataFrame([
        {"record_id": rid, "action": action, "person_cpr": cpr, "municipality_code": "101",
         "held_on": date(2024, 2, 1), "cv_status": "1"}
        for rid, action, cpr in rows])
    batch_id = batch_id or str(uuid.uuid4())
    return batch_id, build_batch(5, frame, batch_id=batch_id, sender_municipality="101", run_id="test")


def envelope(body: bytes) -> bytes:
    inner = body.split(b"?>", 1)[1] if body.startswith(b"<?xml") else body
    return (b'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<s:Body>" + inner + b"</s:Body></s:Envelope>")


def post(handle: ReceiverHandle | ReceiverProcess, body: bytes, action: str = "SubmitBatch") -> requests.Response:
    return requests.post(handle.url, data=envelope(body), timeout=10, headers={
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{payload.soap_action(action)}"'})


def answer(response: requests.Response) -> etree._Element:
    doc = etree.fromstring(response.content)
    assert doc.tag == f"{SOAP}Envelope"
    return doc.find(f"{SOAP}Body")[0]


def fault_of(response: requests.Response) -> tuple[int, str]:
    assert response.status_code == 500
    fault = answer(response)
    assert fault.tag == f"{SOAP}Fault"
    detail = fault.find(f"detail/{q('ServiceFault')}")
    return int(detail.findtext(q("ErrorCode"))), detail.findtext(q("ErrorText"))


# --- serving the contract ------------------------------------------------------------------------


def test_serves_wsdl_with_its_own_address_and_the_xsd(receiver: ReceiverHandle) -> None:
    for url in (receiver.wsdl_url, receiver.base_url + "/ams.wsdl"):
        reply = requests.get(url, timeout=5)
        assert reply.status_code == 200
        doc = etree.fromstring(reply.content)
        address = doc.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
        assert address.get("location") == receiver.url
    xsd = requests.get(receiver.base_url + "/ams-reporting-v1.xsd", timeout=5)
    assert xsd.status_code == 200 and xsd.content == payload.XSD_PATH.read_bytes()
    assert requests.get(receiver.base_url + "/_health", timeout=5).status_code == 200
    assert requests.get(receiver.base_url + "/nothing", timeout=5).status_code == 404


def test_submit_over_raw_http(receiver: ReceiverHandle) -> None:
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    batch_id, body = cv_batch([(ok, "CREATE_OR_UPDATE", CPR_OK), (bad, "CREATE_OR_UPDATE", CPR_BAD_DATE)])
    reply = post(receiver, body)
    assert reply.status_code == 200
    response = answer(reply)
    assert response.tag == q("SubmitBatchResponse")
    assert not payload.payload_problems(response)
    assert response.findtext(q("BatchStatus")) == "PARTIALLY_ACCEPTED"
    statuses = {r.findtext(q("RecordIdentifier")): (r.findtext(q("Status")), r.findtext(q("ErrorCode")))
                for r in response.iter(q("RecordReceipt"))}
    assert statuses == {ok: ("ACCEPTED", None), bad: ("REJECTED", "1010")}
    rejected = [r for r in response.iter(q("RecordReceipt")) if r.findtext(q("Status")) == "REJECTED"][0]
    assert "Ukendt personnummer" in rejected.findtext(q("ErrorText"))
    assert CPR_BAD_DATE not in reply.text

    records = requests.get(receiver.base_url + "/_records?area=5", timeout=5).json()
    assert records == [{"record_id": ok, "area": 5, "batch_id": batch_id, "status": "ACTIVE", "version": 1}]
    assert requests.get(receiver.base_url + "/_records?area=1", timeout=5).json() == []
    stored = receiver.store.record(ok)
    assert stored is not None and b"CvInterview" in stored.payload_xml and b"soap" not in stored.payload_xml
    batches = requests.get(receiver.base_url + "/_batches", timeout=5).json()
    assert [b["batch_id"] for b in batches] == [batch_id]

    receipt_request = (f'<GetBatchReceiptRequest xmlns="{NAMESPACE}"><BatchIdentifier>{batch_id}'
                       "</BatchIdentifier></GetBatchReceiptRequest>").encode()
    again = answer(post(receiver, receipt_request, "GetBatchReceipt"))
    assert again.tag == q("GetBatchReceiptResponse")
    assert again.findtext(f"{q('ServiceReceipt')}/{q('MessageIdentifier')}") == response.findtext(
        f"{q('ServiceReceipt')}/{q('MessageIdentifier')}")


def test_schema_invalid_request_gets_fault_1014_without_the_value(receiver: ReceiverHandle) -> None:
    _, body = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", "98765432")])
    code, text = fault_of(post(receiver, body))
    assert code == 1014
    assert text.startswith("Failed to validate message")
    assert "PersonCivilRegistrationIdentifier" in text and "CvInterview[1]" in text
    assert "98765432" not in text
    assert receiver.store.counts() == {"batches": 0, "records": 0}


@pytest.mark.parametrize("data", [b"not xml at all", b"<a>unclosed", b'<x xmlns="urn:other"/>'])
def test_garbage_gets_fault_1014(receiver: ReceiverHandle, data: bytes) -> None:
    reply = requests.post(receiver.url, data=data, timeout=5, headers={"Content-Type": "text/xml"})
    assert fault_of(reply)[0] == 1014


ENTITY_REQUESTS = {
    "internal-entity": b'<!DOCTYPE s:Envelope [<!ENTITY batch "00000000-0000-4000-8000-000000000000">]>',
    "external-entity": b'<!DOCTYPE s:Envelope [<!ENTITY batch SYSTEM "file:///etc/hostname">]>',
    "undefined-entity": b"",
}


@pytest.mark.parametrize("doctype", ENTITY_REQUESTS.values(), ids=ENTITY_REQUESTS.keys())
def test_entity_references_and_doctypes_get_fault_1014(receiver: ReceiverHandle, doctype: bytes) -> None:
    """An entity reference used to make the schema validator raise (HTML 500 with a traceback)."""
    data = (b'<?xml version="1.0" encoding="UTF-8"?>' + doctype +
            b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            b'<GetBatchReceiptRequest xmlns="' + NAMESPACE.encode() + b'"><BatchIdentifier>&batch;'
            b"</BatchIdentifier></GetBatchReceiptRequest></s:Body></s:Envelope>")
    reply = requests.post(receiver.url, data=data, timeout=5, headers={"Content-Type": "text/xml"})
    assert reply.headers["Content-Type"].startswith("text/xml")
    code, text = fault_of(reply)
    assert code == 1014 and len(text) < 300, text
    assert ("document type declaration" if doctype else "Entity 'batch' not defined") in text
    assert "Traceback" not in reply.text and "<html" not in reply.text.lower()


def test_validation_that_raises_is_fault_1014(tmp_path: Path) -> None:
    """Whatever the validator trips on (here an entity node in the tree, which makes lxml's schema
    validation raise) is a fault 1014 with a short reason."""
    from receiver.app import ReceiverApp, ReceiverFault

    element = etree.Element(q("GetBatchReceiptRequest"))
    etree.SubElement(element, q("BatchIdentifier")).append(etree.Entity("batch"))
    with pytest.raises(ReceiverFault) as info:
        ReceiverApp._validate(element)
    assert info.value.code == 1014 and "could not be validated" in info.value.text


def test_request_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    handle = start_in_thread(tmp_path / "r.sqlite", max_request_bytes=4096)
    try:
        lookup = envelope((f'<GetBatchReceiptRequest xmlns="{NAMESPACE}"><BatchIdentifier>{uuid.uuid4()}'
                           "</BatchIdentifier></GetBatchReceiptRequest>").encode())
        padded = lookup + b" " * (4096 - len(lookup))  # exactly the limit: read and answered
        assert len(padded) == 4096
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        assert fault_of(requests.post(handle.url, data=padded, timeout=5, headers=headers))[0] == 1020
        for data in (padded + b" ", iter([padded, b" "])):  # one byte over; and chunked, without a length
            reply = requests.post(handle.url, data=data, timeout=5, headers=headers)
            assert reply.status_code == 413
            detail = answer(reply).find(f"detail/{q('ServiceFault')}")
            assert detail.findtext(q("ErrorCode")) == "1014"
            assert "larger than this receiver accepts (4096 bytes)" in detail.findtext(q("ErrorText"))
    finally:
        handle.stop()


def test_control_endpoint_is_off_unless_asked(tmp_path: Path) -> None:
    with start_in_thread(tmp_path / "r.sqlite") as handle:
        control = handle.base_url + "/_control"
        assert requests.post(control, json={"mode": "error500", "count": 5}, timeout=5).status_code == 404
        assert requests.get(control, timeout=5).status_code == 404
        _, body = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
        assert post(handle, body).status_code == 200  # nothing was injected
        assert handle.app.misbehaviour.state()["mode"] == "ok"


def test_unknown_operation_and_batch(receiver: ReceiverHandle) -> None:
    assert fault_of(post(receiver, f'<Nonsense xmlns="{NAMESPACE}"/>'.encode()))[0] == 1014
    unknown = (f'<GetBatchReceiptRequest xmlns="{NAMESPACE}"><BatchIdentifier>{uuid.uuid4()}'
               "</BatchIdentifier></GetBatchReceiptRequest>").encode()
    assert fault_of(post(receiver, unknown, "GetBatchReceipt"))[0] == 1020


def test_batch_id_reused_with_other_content_gets_1030(receiver: ReceiverHandle) -> None:
    batch_id, first = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
    _, second = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)], batch_id=batch_id)
    assert post(receiver, first).status_code == 200
    code, text = fault_of(post(receiver, second))
    assert code == 1030 and batch_id in text
    assert receiver.store.counts() == {"batches": 1, "records": 1}


def test_record_of_another_area_is_rejected(receiver: ReceiverHandle) -> None:
    rid = str(uuid.uuid4())
    post(receiver, cv_batch([(rid, "CREATE_OR_UPDATE", CPR_OK)])[1])
    frame = pd.DataFrame([{"record_id": rid, "action": "CREATE_OR_UPDATE", "person_cpr": CPR_OK,
                           "municipality_code": "101", "held_on": date(2024, 1, 1), "interview_form": "1",
                           "visitation_category": "1", "visitation_rules": "2014"}])
    body = build_batch(3, frame, batch_id=str(uuid.uuid4()), sender_municipality="101", run_id="t")
    response = answer(post(receiver, body))
    assert response.findtext(q("BatchStatus")) == "REJECTED"
    assert response.findtext(f"{q('RecordReceipts')}/{q('RecordReceipt')}/{q('ErrorCode')}") == "1041"
    assert receiver.store.record(rid).area == 5


def test_concurrent_identical_submissions_are_stored_once(receiver: ReceiverHandle) -> None:
    rid = str(uuid.uuid4())
    _, body = cv_batch([(rid, "CREATE_OR_UPDATE", CPR_OK)])
    replies: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: replies.append(post(receiver, body))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in replies] == [200] * 4
    assert len({r.content for r in replies}) == 1
    assert receiver.store.record(rid).version == 1
    assert receiver.store.counts() == {"batches": 1, "records": 1}


def test_control_endpoint(receiver: ReceiverHandle) -> None:
    control = receiver.base_url + "/_control"
    assert requests.post(control, json={"mode": "nonsense"}, timeout=5).status_code == 400
    state = requests.post(control, json={"mode": "busy", "count": 2}, timeout=5).json()
    assert state == {"mode": "busy", "count": 2, "delay": 30.0, "operation": "SubmitBatch", "then": [], "held": []}
    _, body = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
    assert fault_of(post(receiver, body))[0] == 3001
    assert requests.get(control, timeout=5).json()["count"] == 1
    requests.post(control, json={"mode": "ok"}, timeout=5)
    assert post(receiver, body).status_code == 200
    assert receiver.store.counts()["batches"] == 1
    # A misbehaviour can target the lookup instead; a reset forgets every batch.
    assert requests.post(control, json={"mode": "nonsense", "operation": "Other"}, timeout=5).status_code == 400
    state = requests.post(control, json={"mode": "signature_refused", "operation": "GetBatchReceipt",
                                         "reset": True}, timeout=5).json()
    assert state["operation"] == "GetBatchReceipt" and receiver.store.counts() == {"batches": 0, "records": 0}
    assert post(receiver, body).status_code == 200  # SubmitBatch is not targeted
    # Steps combine: the next SubmitBatch is busy, the one after it has its signature refused.
    requests.post(control, json={"mode": "busy", "then": [{"mode": "signature_refused"}]}, timeout=5)
    _, other = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
    assert [fault_of(post(receiver, other))[0] for _ in range(2)] == [3001, 1050]
    assert post(receiver, other).status_code == 200


def test_slow_reply_stores_the_batch_at_once_and_answers_late(receiver: ReceiverHandle) -> None:
    """A sender that dies while the reply is held never learns the outcome; the batch is stored all the same."""
    import threading

    control = receiver.base_url + "/_control"
    requests.post(control, json={"mode": "slow_reply", "count": 1, "delay": 1.5}, timeout=5)
    batch_id, body = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
    replies: list[requests.Response] = []
    started = time.monotonic()
    sender = threading.Thread(target=lambda: replies.append(post(receiver, body)))
    sender.start()
    deadline = time.monotonic() + 5
    while not requests.get(control, timeout=5).json()["held"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.get(control, timeout=5).json()["held"] == [batch_id]
    assert receiver.store.batch(batch_id) is not None and not replies  # stored, not yet answered
    sender.join(timeout=10)
    assert replies[0].status_code == 200 and time.monotonic() - started >= 1.5
    assert requests.get(control, timeout=5).json()["held"] == []
    assert post(receiver, cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])[1]).status_code == 200


def test_verify_hook_can_refuse_a_message(tmp_path: Path) -> None:
    from receiver.app import ReceiverFault

    seen: list[str] = []

    def verify(envelope: etree._Element, headers: object) -> None:
        seen.append(etree.QName(envelope).localname)
        raise ReceiverFault(1014, "signature missing")

    handle = start_in_thread(tmp_path / "r.sqlite", verify=verify)
    try:
        _, body = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)])
        code, text = fault_of(post(handle, body))
        assert code == 1014 and "signature missing" in text and seen == ["Envelope"]
    finally:
        handle.stop()


# --- the store -----------------------------------------------------------------------------------


def test_store_versions_and_annulments(tmp_path: Path) -> None:
    store = ReceiverStore(tmp_path / "s.sqlite")
    with store.transaction() as tx:
        assert tx.upsert_record("r1", 5, "b1", b"<x/>", "t1") == 1
        assert tx.upsert_record("r1", 5, "b2", b"<y/>", "t2") == 2
        assert tx.upsert_record("r1", 3, "b2", b"<z/>", "t2") is None
        assert tx.annul_record("r1", 5, "b3", "t3") is True
        assert tx.annul_record("r1", 5, "b4", "t4") is True  # twice: fine, no new version
        assert tx.annul_record("r2", 5, "b3", "t3") is False
        tx.insert_batch(StoredBatch("b1", 5, "sha", b"<r/>", "t1", 1))
    record = store.record("r1")
    assert (record.status, record.version, record.batch_id, record.payload_xml) == (RECORD_ANNULLED, 3, "b3", b"<y/>")
    assert store.records(5, status=RECORD_ANNULLED) == [record]
    assert store.records(5, status=RECORD_ACTIVE) == []
    assert store.batch("b1").response_xml == b"<r/>"
    assert store.batch("nope") is None
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.upsert_record("r9", 5, "b9", b"<x/>", "t")
        raise RuntimeError("rolled back")
    assert store.record("r9") is None
    assert ReceiverStore(tmp_path / "s.sqlite").counts() == {"batches": 1, "records": 1}


# --- as its own process --------------------------------------------------------------------------


def test_receiver_process_start_serve_stop(tmp_path: Path) -> None:
    db = tmp_path / "proc.sqlite"
    with ReceiverProcess(db, control=True, max_request_bytes=100_000) as proc:
        assert proc.port and proc.port_file.read_text().strip() == str(proc.port)
        assert requests.get(proc.base_url + "/_health", timeout=5).status_code == 200
        assert requests.post(proc.url, data=b" " * 100_001, timeout=5).status_code == 413  # --max-request-mb
        rid = str(uuid.uuid4())
        _, body = cv_batch([(rid, "CREATE_OR_UPDATE", CPR_OK)])
        assert answer(post(proc, body)).findtext(q("BatchStatus")) == "ACCEPTED"
        pid, process = proc.pid, proc.process
        requests.post(proc.base_url + "/_control", json={"mode": "timeout", "delay": 60}, timeout=5)
        with pytest.raises(requests.Timeout):
            requests.post(proc.url, data=envelope(body), timeout=0.5)
    assert pid is not None and process.poll() is not None  # stopped, even with a request hanging
    assert ReceiverStore(db).record(rid).version == 1
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", 0))


def test_receiver_process_reports_a_failed_start(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()  # a directory cannot be opened as a database
    with pytest.raises(RuntimeError, match="exited"):
        ReceiverProcess(tmp_path / "dir.sqlite", startup_timeout=20).start()


def test_command_line_help_runs() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "receiver.server", "--help"], capture_output=True, text=True,
                         timeout=30, check=True)
    assert "--port-file" in out.stdout
    assert "--control" in out.stdout and "--no-control" not in out.stdout and "--max-request-mb" in out.stdout
    assert "TEST ONLY" in out.stdout and "--test-only-skip-check" in out.stdout


def test_stored_rows_read_by_attribute_or_key(receiver: ReceiverHandle) -> None:
    rid = str(uuid.uuid4())
    batch_id, body = cv_batch([(rid, "CREATE_OR_UPDATE", CPR_OK)])
    post(receiver, body)
    record = ReceiverStore(receiver.db_path).records(5)[0]
    assert record["record_id"] == record.record_id == rid and record["version"] == 1
    assert receiver.store.batch(batch_id)["record_count"] == 1
    with pytest.raises(KeyError):
        record["nothing"]


@pytest.mark.parametrize("text", [
    "Ukendt CPR-nummer", "", "a & b < c > d \"quoted\" 'single'", "æøå ÆØÅ é", "tab\there\nnew line\r\nend",
    "emoji \U0001F600 and \u00a0 nbsp", "]]> cdata end", "&amp; already escaped",
])
def test_receipt_written_as_text_is_what_lxml_writes(text: str) -> None:
    """build_receipt writes the receipt as text: byte for byte what lxml writes, for any text it carries."""
    from receiver.app import _build_receipt_tree, build_receipt

    outcomes = [(str(uuid.uuid4()), payload.RECORD_ACCEPTED, None, None),
                (text, payload.RECORD_REJECTED, 1010, text), ("id-3", payload.RECORD_REJECTED, 1040, None)]
    for rows in (outcomes, outcomes[:1], outcomes[1:], []):
        for namespace in (NAMESPACE, "urn:x:a&b"):
            args = ("SubmitBatchResponse", text, rows, namespace)
            fast = build_receipt(*args, message_id="m-1", event_date="2026-11-30T12:00:00.000Z")
            assert fast == _build_receipt_tree(*args, "m-1", "2026-11-30T12:00:00.000Z")
            assert etree.fromstring(fast) is not None


def test_receipt_with_a_control_character_is_refused_as_before() -> None:
    from receiver.app import build_receipt

    with pytest.raises(ValueError):
        build_receipt("SubmitBatchResponse", "b-1", [("id-1", payload.RECORD_REJECTED, 1010, "bell \x07")])

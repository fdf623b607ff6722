"""The zeep client against the real local receiver on loopback: receipts, idempotency, misbehaviour."""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import requests
from lxml import etree

from delivery.client import (
    AccessClosed,
    AmsClient,
    BusinessFault,
    DeliveryError,
    Receipt,
    ServiceBusy,
    TransientDeliveryError,
)
from receiver.server import ReceiverHandle, create_server, start_in_thread
from transforms import payload
from transforms.payload import build_batch

CPR_OK = "0101901234"
CPR_OK2 = "0202851234"
CPR_BAD_DATE = "3102901234"  # 31 February


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverHandle]:
    handle = start_in_thread(tmp_path / "receiver.sqlite", control=True)
    yield handle
    handle.stop()


@pytest.fixture
def client(receiver: ReceiverHandle) -> AmsClient:
    return AmsClient(receiver.wsdl_url, timeout=10)


def misbehave(receiver: ReceiverHandle, mode: str, **kwargs: object) -> None:
    reply = requests.post(receiver.base_url + "/_control", json={"mode": mode, **kwargs}, timeout=5)
    assert reply.status_code == 200, reply.text


def cv_batch(rows: list[tuple[str, str, str | None]], batch_id: str | None = None) -> tuple[str, bytes]:
    """An area 5 batch from (record_id, action, cpr) rows, validated like the pipeline does."""
    frame = pd.DataFrame([
        {"record_id": rid, "action": action, "person_cpr": cpr, "municipality_code": "101",
         "held_on": date(2024, 2, 1), "cv_status": "1"}
        for rid, action, cpr in rows])
    batch_id = batch_id or str(uuid.uuid4())
    xml = build_batch(5, frame, batch_id=batch_id, sender_municipality="101", run_id="test",
                      created=datetime(2024, 3, 1, tzinfo=UTC))
    payload.validate_payload(xml)
    return batch_id, xml


def new_batch(*cprs: str) -> tuple[str, list[str], bytes]:
    ids = [str(uuid.uuid4()) for _ in cprs]
    batch_id, xml = cv_batch([(rid, "CREATE_OR_UPDATE", cpr) for rid, cpr in zip(ids, cprs, strict=True)])
    return batch_id, ids, xml


def start_rewriting(db_path: Path, rewrite: Callable[[bytes], bytes], *, chunked: bool = False) -> ReceiverHandle:
    """The real receiver behind a WSGI middleware that rewrites every answer's bytes (a receiver that
    answers wrongly). `chunked`: send the answer without a Content-Length."""
    server, app = create_server(db_path)

    def middleware(environ: dict, start_response: Callable) -> list[bytes]:
        kept: list[tuple[str, list[tuple[str, str]]]] = []
        body = rewrite(b"".join(app(environ, lambda status, headers, exc_info=None: kept.append((status, headers)))))
        status, headers = kept[0]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, headers if chunked else [*headers, ("Content-Length", str(len(body)))])
        return [body]

    server.app = middleware
    return ReceiverHandle(server, app, "127.0.0.1")


def c14n_request(request_bytes: bytes) -> bytes:
    body = etree.fromstring(request_bytes).find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    return etree.tostring(body[0], method="c14n", exclusive=True)


# --- receipts ------------------------------------------------------------------------------------


def test_submit_returns_a_receipt_per_record(receiver: ReceiverHandle, client: AmsClient) -> None:
    batch_id, (ok, bad), xml = new_batch(CPR_OK, CPR_BAD_DATE)
    receipt = client.submit(xml)
    assert isinstance(receipt, Receipt)
    assert receipt.batch_id == batch_id
    assert receipt.batch_status == "PARTIALLY_ACCEPTED"
    uuid.UUID(receipt.message_id)
    assert receipt.event_date.tzinfo is not None
    assert abs((datetime.now(UTC) - receipt.event_date).total_seconds()) < 60
    by_id = {r.record_id: r for r in receipt.records}
    assert by_id[ok].status == "ACCEPTED" and by_id[ok].error_code is None
    assert by_id[bad].status == "REJECTED" and by_id[bad].error_code == 1010
    assert "Ukendt personnummer" in by_id[bad].error_text
    assert [r.record_id for r in receipt.accepted] == [ok]
    assert [r.record_id for r in receipt.rejected] == [bad]

    # The exact bytes exchanged, for the archive: the payload's content went on the wire unchanged.
    assert c14n_request(receipt.request_bytes) == etree.tostring(etree.fromstring(xml), method="c14n",
                                                                  exclusive=True)
    assert b"<SubmitBatchResponse" in receipt.response_bytes
    assert receipt.message_id.encode() in receipt.response_bytes

    stored = receiver.store.records(5)
    assert [(r.record_id, r.status, r.version, r.batch_id) for r in stored] == [(ok, "ACTIVE", 1, batch_id)]
    assert receiver.store.batch(batch_id).record_count == 2


def test_resubmitting_a_batch_returns_the_same_receipt_and_stores_nothing(
        receiver: ReceiverHandle, client: AmsClient) -> None:
    batch_id, ids, xml = new_batch(CPR_OK, CPR_OK2)
    first = client.submit(xml)
    counts = receiver.store.counts()
    second = client.submit(xml)
    assert second.message_id == first.message_id and second.event_date == first.event_date
    assert second.records == first.records and second.batch_status == "ACCEPTED"
    assert second.response_bytes == first.response_bytes
    assert receiver.store.counts() == counts == {"batches": 1, "records": 2}
    assert [r.version for r in receiver.store.records(5)] == [1, 1]

    # A batch id used again for other content is a business fault, not a silent overwrite.
    _, other = cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)], batch_id=batch_id)
    with pytest.raises(BusinessFault) as exc:
        client.submit(other)
    assert exc.value.code == 1030 and batch_id in str(exc.value)
    assert exc.value.request_bytes and exc.value.response_bytes


def test_same_record_in_a_new_batch_is_an_update_and_annulment_annuls(
        receiver: ReceiverHandle, client: AmsClient) -> None:
    _, (rid,), xml = new_batch(CPR_OK)
    client.submit(xml)
    second_id, second = cv_batch([(rid, "CREATE_OR_UPDATE", CPR_OK2)])
    assert client.submit(second).batch_status == "ACCEPTED"
    record = receiver.store.record(rid)
    assert (record.version, record.batch_id, record.status) == (2, second_id, "ACTIVE")
    assert CPR_OK2.encode() in record.payload_xml

    unknown = str(uuid.uuid4())
    annul_id, annul = cv_batch([(rid, "ANNUL", None), (unknown, "ANNUL", None)])
    receipt = client.submit(annul)
    assert receipt.batch_status == "PARTIALLY_ACCEPTED"
    assert {r.record_id: (r.status, r.error_code) for r in receipt.records} == {
        rid: ("ACCEPTED", None), unknown: ("REJECTED", 1040)}
    record = receiver.store.record(rid)
    assert (record.status, record.version, record.batch_id) == ("ANNULLED", 3, annul_id)
    assert receiver.store.record(unknown) is None


def test_get_batch_receipt_known_and_unknown(client: AmsClient) -> None:
    batch_id, _, xml = new_batch(CPR_OK)
    sent = client.submit(xml)
    fetched = client.get_batch_receipt(batch_id)
    assert fetched is not None
    assert (fetched.message_id, fetched.batch_id, fetched.batch_status, fetched.records) == (
        sent.message_id, sent.batch_id, sent.batch_status, sent.records)
    assert b"<GetBatchReceiptRequest" in fetched.request_bytes or b":GetBatchReceiptRequest" in fetched.request_bytes
    assert client.get_batch_receipt(str(uuid.uuid4())) is None


def test_a_receipt_for_another_batch_is_refused(tmp_path: Path) -> None:
    """GetBatchReceipt answered with another batch's receipt (valid, well-formed): not taken as the
    receipt of the batch asked about."""
    other = str(uuid.uuid4())

    def answer_for_another_batch(body: bytes) -> bytes:
        if b"<GetBatchReceiptResponse" not in body:
            return body
        return re.sub(rb"<BatchIdentifier>[^<]*</BatchIdentifier>",
                      f"<BatchIdentifier>{other}</BatchIdentifier>".encode(), body)

    with start_rewriting(tmp_path / "receiver.sqlite", answer_for_another_batch) as receiver:
        client = AmsClient(receiver.wsdl_url, timeout=10)
        batch_id, _, xml = new_batch(CPR_OK)
        assert client.submit(xml).batch_id == batch_id  # SubmitBatch is answered correctly
        with pytest.raises(DeliveryError, match="the receipt of another batch") as exc:
            client.get_batch_receipt(batch_id)
    error = exc.value
    assert not isinstance(error, TransientDeliveryError | BusinessFault)
    assert batch_id in str(error) and other in str(error) and error.operation == "GetBatchReceipt"
    assert other.encode() in error.response_bytes and error.request_bytes


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_reply_larger_than_the_limit_is_not_read(tmp_path: Path, chunked: bool) -> None:
    padding = b"<!--" + b"x" * 300_000 + b"-->"

    def too_much(body: bytes) -> bytes:
        return body + padding if b"<SubmitBatchResponse" in body else body

    with start_rewriting(tmp_path / "receiver.sqlite", too_much, chunked=chunked) as receiver:
        client = AmsClient(receiver.wsdl_url, timeout=10, max_reply_bytes=100_000)  # the XSD is ~43 kB
        batch_id, _, xml = new_batch(CPR_OK)
        with pytest.raises(DeliveryError, match="larger than the limit of 100000 bytes") as exc:
            client.submit(xml)
        assert not isinstance(exc.value, TransientDeliveryError)
        assert "may have been received" in str(exc.value) and exc.value.request_bytes
        assert ("declares" in str(exc.value)) is not chunked
        assert client.get_batch_receipt(batch_id).batch_status == "ACCEPTED"  # small replies still pass
        with pytest.raises(DeliveryError, match="could not load the WSDL.*larger than the limit"):
            AmsClient(receiver.wsdl_url, timeout=10, max_reply_bytes=10_000, cache=False)


def test_lookup_of_an_unknown_batch_is_not_logged_as_a_problem(client: AmsClient,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="delivery.client")
    assert client.get_batch_receipt(str(uuid.uuid4())) is None
    faults = [r for r in caplog.records if "SOAP fault" in r.getMessage()]
    assert [(r.levelno, "1020" in r.getMessage()) for r in faults] == [(logging.DEBUG, True)]
    caplog.clear()
    batch_id, _, xml = new_batch(CPR_OK)
    client.submit(xml)
    with pytest.raises(BusinessFault):
        client.submit(cv_batch([(str(uuid.uuid4()), "CREATE_OR_UPDATE", CPR_OK)], batch_id=batch_id)[1])
    faults = [r for r in caplog.records if "SOAP fault" in r.getMessage()]
    assert [(r.levelno, "1030" in r.getMessage()) for r in faults] == [(logging.WARNING, True)]


def test_client_from_the_wsdl_on_disk_with_endpoint_override(receiver: ReceiverHandle) -> None:
    client = AmsClient(payload.WSDL_PATH, endpoint=receiver.url, timeout=5)
    assert client.endpoint == receiver.url
    _, _, xml = new_batch(CPR_OK)
    assert client.submit(xml).batch_status == "ACCEPTED"


# --- misbehaviour --------------------------------------------------------------------------------


def test_error500_is_transient_and_stores_nothing(receiver: ReceiverHandle, client: AmsClient) -> None:
    misbehave(receiver, "error500")
    batch_id, _, xml = new_batch(CPR_OK)
    with pytest.raises(TransientDeliveryError, match="HTTP 500") as exc:
        client.submit(xml)
    assert exc.value.http_status == 500 and exc.value.request_bytes
    assert receiver.store.counts() == {"batches": 0, "records": 0}
    assert client.get_batch_receipt(batch_id) is None
    assert client.submit(xml).batch_status == "ACCEPTED"  # count 1: the next call is served


def test_timeout_is_transient_and_stores_nothing(receiver: ReceiverHandle) -> None:
    client = AmsClient(receiver.wsdl_url, timeout=1)
    misbehave(receiver, "timeout", delay=10)
    batch_id, _, xml = new_batch(CPR_OK)
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="no answer within 1 s") as exc:
        client.submit(xml)
    assert time.monotonic() - started < 5
    assert not isinstance(exc.value, BusinessFault)
    assert client.get_batch_receipt(batch_id) is None
    assert receiver.store.counts()["batches"] == 0


def test_dropped_reply_is_transient_but_the_batch_was_stored(receiver: ReceiverHandle, client: AmsClient) -> None:
    misbehave(receiver, "drop_reply")
    batch_id, (rid,), xml = new_batch(CPR_OK)
    with pytest.raises(TransientDeliveryError, match="connection failed"):
        client.submit(xml)
    assert receiver.store.record(rid).version == 1
    receipt = client.get_batch_receipt(batch_id)
    assert receipt is not None and receipt.batch_status == "ACCEPTED"
    # Sending it again after all is harmless: the stored receipt, nothing stored twice.
    assert client.submit(xml).message_id == receipt.message_id
    assert receiver.store.record(rid).version == 1


def test_schema_fault_is_a_business_fault(receiver: ReceiverHandle, client: AmsClient) -> None:
    misbehave(receiver, "schema_fault")
    _, _, xml = new_batch(CPR_OK)
    with pytest.raises(BusinessFault) as exc:
        client.submit(xml)
    assert exc.value.code == 1014 and "Failed to validate message" in str(exc.value)
    assert receiver.store.counts()["batches"] == 0


def test_access_closed_holds_until_reset(receiver: ReceiverHandle, client: AmsClient) -> None:
    batch_id, _, xml = new_batch(CPR_OK)
    misbehave(receiver, "access_closed")
    for _ in range(2):
        with pytest.raises(AccessClosed, match="§ 48") as exc:
            client.submit(xml)
        assert exc.value.code == 2001
    with pytest.raises(AccessClosed):
        client.get_batch_receipt(batch_id)
    misbehave(receiver, "ok")
    assert client.submit(xml).batch_status == "ACCEPTED"


def test_busy_is_transient(receiver: ReceiverHandle, client: AmsClient) -> None:
    misbehave(receiver, "busy", count=2)
    _, _, xml = new_batch(CPR_OK)
    for _ in range(2):
        with pytest.raises(ServiceBusy) as exc:
            client.submit(xml)
        assert isinstance(exc.value, TransientDeliveryError) and exc.value.code == 3001
    assert client.submit(xml).batch_status == "ACCEPTED"


def test_connection_refused_is_transient(receiver: ReceiverHandle) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    client = AmsClient(payload.WSDL_PATH, endpoint=f"http://127.0.0.1:{free_port}/ams", timeout=2)
    _, _, xml = new_batch(CPR_OK)
    with pytest.raises(TransientDeliveryError, match="connection failed"):
        client.submit(xml)
    with pytest.raises(TransientDeliveryError, match="could not load the WSDL"):
        AmsClient(f"http://127.0.0.1:{free_port}/ams?wsdl", timeout=2)


def test_not_a_batch_is_refused_before_sending(client: AmsClient) -> None:
    with pytest.raises(DeliveryError, match="not well-formed"):
        client.submit(b"<SubmitBatchRequest")
    with pytest.raises(DeliveryError, match="root element is Other"):
        client.submit(b"<Other/>")


# --- personal data -------------------------------------------------------------------------------


def test_no_cpr_in_logs_or_error_messages(receiver: ReceiverHandle, client: AmsClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert logging.getLogger("zeep.transports").getEffectiveLevel() >= logging.INFO
    _, _, xml = new_batch(CPR_OK, CPR_BAD_DATE)
    client.submit(xml)
    client.submit(xml)

    # A payload the pipeline would have refused: the receiver's fault names the element, not the value.
    frame = pd.DataFrame([{"record_id": str(uuid.uuid4()), "action": "CREATE_OR_UPDATE", "person_cpr": "12345678",
                           "municipality_code": "101", "held_on": date(2024, 2, 1), "cv_status": "1"}])
    bad = build_batch(5, frame, batch_id=str(uuid.uuid4()), sender_municipality="101", run_id="t")
    with pytest.raises(BusinessFault) as exc:
        client.submit(bad)
    assert exc.value.code == 1014 and "PersonCivilRegistrationIdentifier" in str(exc.value)
    for secret in (CPR_OK, CPR_BAD_DATE, "12345678"):
        assert secret not in caplog.text
        assert secret not in str(exc.value)


def test_wsdl_errors_are_reported(receiver: ReceiverHandle, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="HTTP 404") as exc:
        AmsClient(receiver.base_url + "/missing.wsdl", timeout=2)
    assert not isinstance(exc.value, TransientDeliveryError)
    broken = tmp_path / "broken.wsdl"
    broken.write_text("<definitions")
    with pytest.raises(DeliveryError, match="could not load the WSDL"):
        AmsClient(broken, timeout=2)

"""The local AMS receiver as a WSGI application (werkzeug): SOAP 1.1 over HTTP, per the project's WSDL.

POST /ams                    SubmitBatch and GetBatchReceipt (document/literal)
GET  /ams?wsdl, /ams.wsdl    the WSDL, its soap:address pointing at this receiver
GET  /ams-reporting-v1.xsd   the XSD the WSDL imports
GET  /_health                200 when serving
GET  /_records?area=N        JSON: the stored records (no content), for tests and the demo
GET  /_batches               JSON: the stored batches (no content)
POST /_control               JSON {"mode": ..., "count": N, "delay": s}: misbehave on purpose (tests)

Every request is validated against the XSD (fault 1014), SubmitBatch is idempotent on the batch
id (same content: the stored receipt again; other content: fault 1030), and a record whose CPR
number has an impossible birth date is rejected with 1010 "Ukendt personnummer". The log has one
line per request with batch id, area and counts, never payload content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from receiver.store import ReceiverStore, StoredBatch
from transforms import payload
from transforms.identifiers import CPR_BAD_DATE, cpr_status
from transforms.payload import (
    ANNULMENT_ELEMENT,
    ERR_ACCESS_CLOSED,
    ERR_BATCH_REUSED,
    ERR_BUSY,
    ERR_RECORD_AREA,
    ERR_SCHEMA,
    ERR_UNKNOWN_BATCH,
    ERR_UNKNOWN_CPR,
    ERR_UNKNOWN_RECORD,
    ERROR_TEXTS,
    GUID_PATTERN,
    NAMESPACE,
    SOAP_ENV_NS,
    WSDL_SOAP_NS,
    q,
)
from transforms.registry import AREA_BY_NUMBER, RECORD_ID_ELEMENT

log = logging.getLogger("receiver")

SOAP_PATH = "/ams"
_SOAP = f"{{{SOAP_ENV_NS}}}"
_ENVELOPE_START = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n"
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
)
_ENVELOPE_END = b"</soap:Body></soap:Envelope>"
_XML = "text/xml; charset=utf-8"
_GUID = re.compile(GUID_PATTERN)
MAX_ERROR_TEXT = 3900

#: Misbehaviour modes of POST /_control (fault injection for tests).
MODES = ("ok", "error500", "timeout", "drop_reply", "schema_fault", "access_closed", "busy")

#: Signature verification hook: called with the parsed envelope and the HTTP headers before the
#: body is processed; it rejects a message by raising ReceiverFault. None: no verification.
Verifier = Callable[[etree._Element, Headers], None]


class ReceiverFault(Exception):
    """A SOAP fault with the agency's error code (ServiceFault detail)."""

    def __init__(self, code: int, detail: str | None = None, *, server_side: bool = False) -> None:
        text = ERROR_TEXTS.get(code, "Error")
        if detail:
            text = f"{text}: {detail}"
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text[:MAX_ERROR_TEXT]
        self.server_side = server_side


class _DropConnection(Exception):
    """Close the connection without an answer (misbehaviours timeout and drop_reply)."""


@dataclass
class Misbehaviour:
    """What the next SubmitBatch calls do wrong; access_closed holds for every call until reset."""

    mode: str = "ok"
    count: int = 0
    delay: float = 30.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, mode: str, count: int = 1, delay: float = 30.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        with self._lock:
            self.mode, self.count, self.delay = mode, max(int(count), 0), float(delay)
            if mode == "access_closed":
                self.count = 0  # holds for every call until reset: no count
            elif mode == "ok" or self.count == 0:
                self.mode, self.count = "ok", 0

    def take(self, operation: str) -> str | None:
        """The misbehaviour for this call, if any (consumes one of `count`)."""
        with self._lock:
            if self.mode == "access_closed":
                return self.mode
            if self.mode == "ok" or operation != "SubmitBatch":
                return None
            mode = self.mode
            self.count -= 1
            if self.count <= 0:
                self.mode, self.count = "ok", 0
            return mode

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "count": self.count, "delay": self.delay}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def fault_envelope(fault: ReceiverFault) -> bytes:
    """A SOAP 1.1 fault with a ServiceFault detail."""
    env = etree.Element(f"{_SOAP}Envelope", nsmap={"soap": SOAP_ENV_NS})
    body = etree.SubElement(env, f"{_SOAP}Body")
    node = etree.SubElement(body, f"{_SOAP}Fault")
    etree.SubElement(node, "faultcode").text = "soap:Server" if fault.server_side else "soap:Client"
    etree.SubElement(node, "faultstring").text = f"{fault.code} {fault.text}"
    detail = etree.SubElement(node, "detail")
    service_fault = etree.SubElement(detail, q("ServiceFault"), nsmap={None: NAMESPACE})
    etree.SubElement(service_fault, q("ErrorCode")).text = str(fault.code)
    etree.SubElement(service_fault, q("ErrorText")).text = fault.text
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def build_receipt(tag: str, batch_id: str, outcomes: list[tuple[str, str, int | None, str | None]]) -> bytes:
    """A SubmitBatchResponse (or GetBatchReceiptResponse) with a fresh ServiceReceipt."""
    root = etree.Element(q(tag), nsmap={None: NAMESPACE})
    receipt = etree.SubElement(root, q("ServiceReceipt"))
    etree.SubElement(receipt, q("MessageIdentifier")).text = str(uuid.uuid4())
    etree.SubElement(receipt, q("EventDate")).text = _iso(_now())
    etree.SubElement(root, q("BatchIdentifier")).text = batch_id
    accepted = sum(1 for _, status, _, _ in outcomes if status == payload.RECORD_ACCEPTED)
    if accepted == len(outcomes):
        status = payload.BATCH_ACCEPTED
    elif accepted == 0:
        status = payload.BATCH_REJECTED
    else:
        status = payload.BATCH_PARTIALLY_ACCEPTED
    etree.SubElement(root, q("BatchStatus")).text = status
    receipts = etree.SubElement(root, q("RecordReceipts"))
    sub = etree.SubElement
    rr_tag, rid_tag, st_tag = q("RecordReceipt"), q(RECORD_ID_ELEMENT), q("Status")
    code_tag, text_tag = q("ErrorCode"), q("ErrorText")
    for record_id, record_status, code, text in outcomes:
        rr = sub(receipts, rr_tag)
        sub(rr, rid_tag).text = record_id
        sub(rr, st_tag).text = record_status
        if code is not None:
            sub(rr, code_tag).text = str(code)
        if text is not None:
            sub(rr, text_tag).text = text
    return etree.tostring(root)


def _renamed(response_xml: bytes, tag: str) -> bytes:
    root = etree.fromstring(response_xml, payload.xml_parser())
    root.tag = q(tag)
    return etree.tostring(root)


def _batch_id_of(element: etree._Element | None) -> str:
    """The batch id of a request, for the log, when it looks like a GUID ("-" otherwise)."""
    if element is None:
        return "-"
    text = (element.findtext(f"{q('BatchHeader')}/{q('BatchIdentifier')}")
            or element.findtext(q("BatchIdentifier")) or "").strip()
    return text if _GUID.fullmatch(text) else "-"


class ReceiverApp:
    """The WSGI application. `verify` is the hook for WS-Security signature verification (not
    implemented yet); `control` enables POST /_control."""

    def __init__(self, store: ReceiverStore, *, verify: Verifier | None = None, control: bool = True) -> None:
        self.store = store
        self.verify = verify
        self.control_enabled = control
        self.misbehaviour = Misbehaviour()
        self.stopping = threading.Event()  # set on shutdown: interrupts the 'timeout' misbehaviour

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            if self.stopping.is_set():  # a kept-alive connection outliving stop(): close it
                raise _DropConnection()
            response = self.dispatch(request)
        except _DropConnection:
            sock = environ.get("werkzeug.socket")
            if sock is None:
                return Response(b"", status=502)(environ, start_response)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise ConnectionAbortedError("reply dropped on purpose") from None
        return response(environ, start_response)

    # ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == SOAP_PATH and method == "POST":
            return self.soap(request)
        if method in ("GET", "HEAD"):
            if (path == SOAP_PATH and "wsdl" in (k.lower() for k in request.args)) or path == "/ams.wsdl":
                return Response(self.wsdl(request.host_url.rstrip("/") + SOAP_PATH), content_type=_XML)
            if path == f"/{payload.XSD_NAME}":
                return Response(payload.XSD_PATH.read_bytes(), content_type=_XML)
            if path == "/_health":
                return Response("ok\n", content_type="text/plain")
            if path == "/_records":
                area = request.args.get("area", type=int)
                return self._json([r.summary() for r in self.store.records(area)])
            if path == "/_batches":
                return self._json([{"batch_id": b.batch_id, "area": b.area, "record_count": b.record_count,
                                    "received_at": b.received_at} for b in self.store.batches()])
            if path == "/_control" and self.control_enabled:
                return self._json(self.misbehaviour.state())
        if path == "/_control" and method == "POST" and self.control_enabled:
            return self.control(request)
        return Response("not found\n", status=404, content_type="text/plain")

    @staticmethod
    def _json(data: object, status: int = 200) -> Response:
        return Response(json.dumps(data), status=status, content_type="application/json")

    @staticmethod
    def wsdl(address: str) -> bytes:
        """The WSDL with its soap:address pointing at `address`."""
        doc = etree.parse(str(payload.WSDL_PATH), payload.xml_parser())
        for node in doc.iter(f"{{{WSDL_SOAP_NS}}}address"):
            node.set("location", address)
        return etree.tostring(doc, xml_declaration=True, encoding="UTF-8")

    def control(self, request: Request) -> Response:
        try:
            data = json.loads(request.get_data() or b"{}")
            self.misbehaviour.set(str(data.get("mode", "ok")), int(data.get("count", 1)),
                                  float(data.get("delay", 30.0)))
        except (ValueError, TypeError, AttributeError) as exc:
            return self._json({"error": str(exc)}, status=400)
        log.info("control: %s", self.misbehaviour.state())
        return self._json(self.misbehaviour.state())

    # ---------------------------------------------------------------------------------------------
    def soap(self, request: Request) -> Response:
        started = time.monotonic()
        operation, element = "-", None
        try:
            envelope = self._parse(request.get_data(cache=False))
            body = envelope.find(f"{_SOAP}Body")
            if body is None or len(body) == 0:
                raise ReceiverFault(ERR_SCHEMA, "the SOAP envelope has no Body content")
            element = body[0]
            if self.verify is not None:
                self.verify(envelope, request.headers)
            qname = etree.QName(element)
            operation = qname.localname.removesuffix("Request")
            if qname.namespace != NAMESPACE or operation not in payload.OPERATIONS:
                raise ReceiverFault(ERR_SCHEMA, f"unknown operation element {qname.localname}")
            mode = self.misbehaviour.take(operation)
            if mode is not None:
                misbehaved = self._misbehave(mode, operation, element, started)
                if misbehaved is not None:
                    return misbehaved
            problems = payload.payload_problems(element)
            if problems:
                raise ReceiverFault(ERR_SCHEMA, "; ".join(problems))
            if operation == "SubmitBatch":
                return self._soap_response(self.submit_batch(element, started))
            return self._soap_response(self.get_batch_receipt(element, started))
        except ReceiverFault as fault:
            log.info("%s batch=%s fault=%d (%.0f ms)", operation, _batch_id_of(element), fault.code,
                     (time.monotonic() - started) * 1000)
            return Response(fault_envelope(fault), status=500, content_type=_XML)

    @staticmethod
    def _parse(data: bytes) -> etree._Element:
        try:
            envelope = etree.fromstring(data, payload.xml_parser())
        except etree.XMLSyntaxError as exc:
            raise ReceiverFault(ERR_SCHEMA, f"not well-formed XML: line {exc.lineno}: "
                                f"{payload.clean_message(exc.msg)}") from None
        if envelope.tag != f"{_SOAP}Envelope":
            raise ReceiverFault(ERR_SCHEMA, "not a SOAP 1.1 envelope")
        return envelope

    @staticmethod
    def _soap_response(body_xml: bytes) -> Response:
        return Response(_ENVELOPE_START + body_xml + _ENVELOPE_END, content_type=_XML)

    def _misbehave(self, mode: str, operation: str, element: etree._Element, started: float) -> Response | None:
        """Fault injection; returns a response, raises, or returns None to go on (drop_reply)."""
        batch_id = _batch_id_of(element)
        log.info("%s batch=%s misbehaving: %s", operation, batch_id, mode)
        if mode == "access_closed":
            raise ReceiverFault(ERR_ACCESS_CLOSED)
        if mode == "busy":
            raise ReceiverFault(ERR_BUSY, server_side=True)
        if mode == "schema_fault":
            raise ReceiverFault(ERR_SCHEMA, "injected by the receiver's fault injection")
        if mode == "error500":
            return Response("Internal Server Error\n", status=500, content_type="text/plain")
        if mode == "timeout":
            self.stopping.wait(self.misbehaviour.delay)
            raise _DropConnection()
        if mode == "drop_reply":
            self.submit_batch(element, started)
            raise _DropConnection()
        return None

    # ---------------------------------------------------------------------------------------------
    def submit_batch(self, element: etree._Element, started: float) -> bytes:
        """Store a validated SubmitBatchRequest; returns the SubmitBatchResponse element's XML."""
        header = element.find(q("BatchHeader"))
        batch_id = (header.findtext(q("BatchIdentifier")) or "").strip()
        area = AREA_BY_NUMBER[int(header.findtext(q("DataArea")) or 0)]
        records = element.find(q("Records"))
        digest = hashlib.sha256(etree.tostring(element, method="c14n", exclusive=True)).hexdigest()
        now = _iso(_now())
        cpr_tags = [q(f.element) for f in area.fields if f.kind in ("cpr", "cpr_list")]
        rid_tag, annul_tag = q(RECORD_ID_ELEMENT), q(ANNULMENT_ELEMENT)
        outcomes: list[tuple[str, str, int | None, str | None]] = []
        with self.store.transaction() as tx:
            existing = tx.batch(batch_id)
            if existing is not None:
                if existing.request_sha256 != digest:
                    raise ReceiverFault(ERR_BATCH_REUSED, f"batch {batch_id} was received on "
                                        f"{existing.received_at} with other content")
                log.info("SubmitBatch batch=%s area=%d records=%d: known batch, stored receipt returned "
                         "(%.0f ms)", batch_id, area.number, existing.record_count,
                         (time.monotonic() - started) * 1000)
                return existing.response_xml
            for rec in records:
                record_id = (rec.findtext(rid_tag) or "").strip()
                if rec.tag == annul_tag:
                    if tx.annul_record(record_id, area.number, batch_id, now):
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
                record_xml = etree.tostring(rec, method="c14n", exclusive=True)  # without the envelope's ns
                version = tx.upsert_record(record_id, area.number, batch_id, record_xml, now)
                if version is None:
                    outcomes.append((record_id, payload.RECORD_REJECTED, ERR_RECORD_AREA,
                                     ERROR_TEXTS[ERR_RECORD_AREA]))
                else:
                    outcomes.append((record_id, payload.RECORD_ACCEPTED, None, None))
            response_xml = build_receipt("SubmitBatchResponse", batch_id, outcomes)
            tx.insert_batch(StoredBatch(batch_id, area.number, digest, response_xml, now, len(outcomes)))
        accepted = sum(1 for o in outcomes if o[1] == payload.RECORD_ACCEPTED)
        log.info("SubmitBatch batch=%s area=%d records=%d accepted=%d rejected=%d (%.0f ms)", batch_id,
                 area.number, len(outcomes), accepted, len(outcomes) - accepted,
                 (time.monotonic() - started) * 1000)
        return response_xml

    def get_batch_receipt(self, element: etree._Element, started: float) -> bytes:
        batch_id = (element.findtext(q("BatchIdentifier")) or "").strip()
        stored = self.store.batch(batch_id)
        if stored is None:
            raise ReceiverFault(ERR_UNKNOWN_BATCH, f"no batch {batch_id} has been received")
        log.info("GetBatchReceipt batch=%s area=%d records=%d (%.0f ms)", batch_id, stored.area,
                 stored.record_count, (time.monotonic() - started) * 1000)
        return _renamed(stored.response_xml, "GetBatchReceiptResponse")


__all__ = ["MODES", "Misbehaviour", "ReceiverApp", "ReceiverFault", "Verifier", "build_receipt",
           "fault_envelope"]

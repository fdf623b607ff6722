"""The zeep client for the agency's reporting service (and the local AMS receiver).

Build one AmsClient per task: it loads and caches the WSDL, and every call has a timeout. A batch is
sent as built and validated by transforms.payload: the client wraps the SubmitBatchRequest in a SOAP
envelope and posts it through zeep's transport, whose `post_xml` records the exact request and
response bytes for the archive. Answers are checked against the XSD and mapped to a Receipt, or to
one of the DeliveryError classes below, whose messages are for operations staff and carry no
payload content (a CPR-like number in a server's fault text is masked).

WS-Security: `signing_key` + `signing_cert` (PEM paths or PEM text) sign every request with an X.509
signature (delivery.security.RequestSignature: BinarySecurityToken, RSA-SHA256, SHA-256 digests,
Body and Timestamp signed). The receiver does not sign its answers: they are verified only when a
certificate for answers is configured (see delivery.security). Any other zeep `wsse` object can be
passed as `wsse`; it is applied to outgoing envelopes and verifies answers that are not faults (an
unsigned fault would otherwise surface as an AttributeError, STACK.md). A request refused for its
signature (fault 1050) raises SignatureRefused, a BusinessFault.

TLS: `verify_tls` (True, False or a CA bundle path) and `client_cert` (mutual TLS) go to the requests
session that loads the WSDL and posts the requests. A server certificate that does not verify is a
DeliveryError (a configuration problem, not retried), not a TransientDeliveryError.

Fail closed (DESIGN.md, principle 10): a client with a plain-HTTP WSDL URL or endpoint, without a
request signature, or with verify_tls=False is refused with SecurityConfigError, unless the switch
`insecure_for_tests` (default: environment variable AMS_INSECURE_FOR_TESTS=1) is on; then a WARNING
is logged once per process. Replies (and WSDL/XSD documents) longer than `max_reply_bytes` (64 MiB)
are not read: DeliveryError.

`client_from_config` builds a client from a mapping (an Airflow connection's extras) with the
environment as fallback for the keys and certificates (AMS_SIGNING_KEY, AMS_SIGNING_CERT,
AMS_CA_BUNDLE).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from lxml import etree
from zeep import Client, Settings
from zeep import exceptions as zeep_exceptions
from zeep.cache import InMemoryCache
from zeep.transports import Transport
from zeep.wsdl.utils import etree_to_string
from zeep.wsse.signature import MemorySignature

from delivery.security import (
    PRIVATE_KEY,
    PemSource,
    RequestSignature,
    SecurityConfigError,
    configure_session,
    make_signature,
    security_settings,
)
from transforms.identifiers import mask_cpr_in_text
from transforms.payload import (
    ERR_ACCESS_CLOSED,
    ERR_BUSY,
    ERR_SIGNATURE,
    ERR_UNKNOWN_BATCH,
    NAMESPACE,
    SOAP_ENV_NS,
    namespace_of,
    payload_problems,
    q,
    soap_action,
    version_of,
    xml_parser,
)
from transforms.registry import RECORD_ID_ELEMENT

log = logging.getLogger(__name__)

_SOAP = f"{{{SOAP_ENV_NS}}}"
_MAX_TEXT = 1000

#: "1" lets AmsClient use plain HTTP, unsigned requests or unverified TLS: tests only.
ENV_INSECURE_FOR_TESTS = "AMS_INSECURE_FOR_TESTS"
_INSECURE_WARNED: set[str] = set()  # insecure settings already warned about (once per process)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery that did not produce a receipt. `request_bytes`/`response_bytes`: what was exchanged,
    for the archive (None when nothing was sent or nothing came back)."""

    def __init__(self, message: str, *, operation: str = "", request_bytes: bytes | None = None,
                 response_bytes: bytes | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes
        self.http_status = http_status


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: connection refused or reset, time-out, HTTP 5xx without a business
    fault, an empty or dropped reply, service busy (3001). After a time-out or a dropped reply the
    batch may have arrived: ask for its receipt (get_batch_receipt) before sending it again."""


class ServiceBusy(TransientDeliveryError):
    """Fault 3001: the service is busy."""

    def __init__(self, code: int, text: str, *, where: str = "", **kwargs: Any) -> None:
        super().__init__(f"{where or 'AMS'}: the service is busy (fault {code}: {text}); try again later",
                         **kwargs)
        self.code = code
        self.text = text


class BusinessFault(DeliveryError):
    """The agency refused the message (1014 schema, 1030 batch id reused, ...): resending the same
    message will fail again. `code` is None for a SOAP client fault without a ServiceFault detail."""

    def __init__(self, code: int | None, text: str, *, where: str = "", **kwargs: Any) -> None:
        label = f"fault {code}" if code is not None else "a SOAP fault"
        super().__init__(f"{where or 'AMS'}: refused with {label}: {text}", **kwargs)
        self.code = code
        self.text = text


class SignatureRefused(BusinessFault):
    """Fault 1050: the agency refused the request's WS-Security signature (missing, invalid, not
    SHA-256, or an untrusted certificate). A configuration problem, not a problem of the batch's
    records: fix the signing key and certificate, then send the batch again."""


class AccessClosed(DeliveryError):
    """Fault 2001: the agency has closed the municipality's access (§ 48). Stop delivering until the
    agency reopens it; nothing is lost, the ledger keeps what is undelivered."""

    def __init__(self, code: int, text: str, *, where: str = "", **kwargs: Any) -> None:
        super().__init__(f"{where or 'AMS'}: the agency has closed access (fault {code}: {text}); "
                         "deliveries are paused until the agency reopens it (§ 48)", **kwargs)
        self.code = code
        self.text = text


def _safe(text: str | None) -> str:
    """Server-supplied text made fit for logs: CPR-like numbers masked, length capped."""
    if not text:
        return ""
    cleaned = mask_cpr_in_text(" ".join(text.split())) or ""
    return cleaned if len(cleaned) <= _MAX_TEXT else cleaned[:_MAX_TEXT] + " ..."


# --------------------------------------------------------------------------------------------------
# Receipts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordReceipt:
    record_id: str
    status: str  # ACCEPTED or REJECTED
    error_code: int | None = None
    error_text: str | None = None


@dataclass
class Receipt:
    """The receiver's answer to a batch, with the exact bytes exchanged (for the archive)."""

    message_id: str
    event_date: datetime
    batch_id: str
    batch_status: str  # ACCEPTED, PARTIALLY_ACCEPTED or REJECTED
    records: list[RecordReceipt]
    request_bytes: bytes = field(repr=False, default=b"")
    response_bytes: bytes = field(repr=False, default=b"")

    @property
    def accepted(self) -> list[RecordReceipt]:
        return [r for r in self.records if r.status == "ACCEPTED"]

    @property
    def rejected(self) -> list[RecordReceipt]:
        return [r for r in self.records if r.status != "ACCEPTED"]


def parse_receipt(element: etree._Element, request_bytes: bytes = b"", response_bytes: bytes = b"") -> Receipt:
    """A Receipt from a SubmitBatchResponse or GetBatchReceiptResponse element (validated), in any
    interface version's namespace."""
    ns = namespace_of(element)

    def q(local: str) -> str:
        return f"{{{ns}}}{local}"

    service_receipt = element.find(q("ServiceReceipt"))
    records = []
    rr_tag, rid_tag, st_tag = q("RecordReceipt"), q(RECORD_ID_ELEMENT), q("Status")
    code_tag, text_tag = q("ErrorCode"), q("ErrorText")
    for rr in element.find(q("RecordReceipts")).iter(rr_tag):
        # One pass over the children (findtext per field walked them four times): the first of each.
        found: dict[Any, str] = {}
        for child in rr:
            if child.tag not in found:
                found[child.tag] = child.text or ""
        code = found.get(code_tag)
        records.append(RecordReceipt(found[rid_tag].strip(), found[st_tag].strip(),
                                     int(code) if code is not None else None, found.get(text_tag)))
    return Receipt(
        message_id=service_receipt.findtext(q("MessageIdentifier")).strip(),
        event_date=datetime.fromisoformat(service_receipt.findtext(q("EventDate")).strip()),
        batch_id=element.findtext(q("BatchIdentifier")).strip(),
        batch_status=element.findtext(q("BatchStatus")).strip(),
        records=records,
        request_bytes=request_bytes,
        response_bytes=response_bytes,
    )


# --------------------------------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------------------------------


#: The largest reply (and WSDL or XSD document) the client reads; a receipt of a 5,000-record batch is
#: well under 5 MiB.
MAX_REPLY_BYTES = 64 * 1024 * 1024


class ReplyTooLarge(Exception):
    """A reply longer than the transport's `max_reply_bytes` (raised by CapturingTransport)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"declares {declared} bytes" if declared is not None else "goes on past that"
        super().__init__(f"the reply is larger than the limit of {limit} bytes (it {size}); it was not read")
        self.limit = limit


class CapturingTransport(Transport):
    """zeep's transport, recording the exact bytes of the last request and response (per thread), and
    reading no reply (nor WSDL/XSD document) longer than `max_reply_bytes`: the body is streamed and
    the read stops past the limit (ReplyTooLarge).

    Egress plugins see the envelope before it is signed; this is the last step before the wire.
    """

    def __init__(self, *args: Any, max_reply_bytes: int = MAX_REPLY_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_reply_bytes <= 0:
            raise ValueError("max_reply_bytes must be positive")
        self.max_reply_bytes = max_reply_bytes
        self._exchange = threading.local()

    def post_xml(self, address: str, envelope: etree._Element, headers: dict[str, str]) -> requests.Response:
        message = etree_to_string(envelope)
        self._exchange.request = message
        self._exchange.response = None
        response = self.session.post(address, data=message, headers=headers, timeout=self.operation_timeout,
                                     stream=True)
        self._read_capped(response)
        self._exchange.response = response.content
        return response

    def _load_remote_data(self, url: str) -> bytes:
        response = self.session.get(url, timeout=self.load_timeout, stream=True)
        self._read_capped(response)
        response.raise_for_status()
        return response.content

    def _read_capped(self, response: requests.Response) -> None:
        """Read a streamed response's body into `response.content`, at most `max_reply_bytes`."""
        limit = self.max_reply_bytes
        try:
            declared = int(response.headers.get("Content-Length", ""))
        except ValueError:
            declared = None
        try:
            if declared is not None and declared > limit:
                raise ReplyTooLarge(limit, declared)
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise ReplyTooLarge(limit)
                chunks.append(chunk)
            response._content = b"".join(chunks)
        finally:
            response.close()

    @property
    def last_request(self) -> bytes | None:
        return getattr(self._exchange, "request", None)

    @property
    def last_response(self) -> bytes | None:
        return getattr(self._exchange, "response", None)


def quiet_zeep_logging() -> None:
    """At DEBUG zeep.transports logs whole envelopes, CPR numbers included: keep it at INFO or above."""
    logger = logging.getLogger("zeep.transports")
    if logger.level < logging.INFO:  # NOTSET (0) would inherit a DEBUG root
        logger.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------


class AmsClient:
    """The reporting service's client. Build once, use for many calls (thread-safe for calls)."""

    def __init__(self, wsdl: str | Path, endpoint: str | None = None, timeout: float = 30.0, *,
                 session: requests.Session | None = None, wsse: Any = None, plugins: list[Any] | None = None,
                 cache: bool = True, signing_key: PemSource | None = None, signing_cert: PemSource | None = None,
                 signing_key_password: bytes | str | None = None, verify_tls: bool | str | Path | None = None,
                 client_cert: str | Path | tuple[str | Path, str | Path] | None = None,
                 insecure_for_tests: bool | None = None, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        """`signing_key`/`signing_cert`: sign every request (PEM paths or PEM text, both or neither).
        `verify_tls`: True (the system's CAs), False (no check: tests only) or a CA bundle path; None
        keeps the session's setting. `client_cert`: a PEM path (certificate and key) or a (certificate,
        key) pair of paths, for mutual TLS. `max_reply_bytes`: the longest reply read (DeliveryError
        beyond it).

        Fails closed: plain-HTTP WSDL or endpoint URLs, an unsigned client and verify_tls=False raise
        SecurityConfigError, unless `insecure_for_tests` is true (default: the environment variable
        AMS_INSECURE_FOR_TESTS is "1"), for tests against a local receiver only."""
        quiet_zeep_logging()
        self.timeout = timeout
        self.insecure_for_tests = insecure_switch(insecure_for_tests)
        if (signing_key is None) != (signing_cert is None):
            raise SecurityConfigError("give both signing_key and signing_cert, or neither")
        self.signature: RequestSignature | None = None
        if signing_key is not None and signing_cert is not None:
            self.signature = make_signature(signing_key, signing_cert, signing_key_password)
            wsse = [*(wsse if isinstance(wsse, list) else [wsse] if wsse else []), self.signature]
        signed = any(isinstance(w, MemorySignature) for w in (wsse if isinstance(wsse, list) else [wsse]))
        insecure = self._refuse_insecure([("WSDL URL", str(wsdl)), ("endpoint", endpoint)], signed, verify_tls)
        if verify_tls is not None or client_cert is not None:
            session = configure_session(session or requests.Session(), verify_tls, client_cert)
        self.transport = CapturingTransport(cache=InMemoryCache() if cache else None, timeout=timeout,
                                            operation_timeout=timeout, session=session,
                                            max_reply_bytes=max_reply_bytes)
        settings = Settings(strict=True, xml_huge_tree=True)
        try:
            self.zeep = Client(str(wsdl), transport=self.transport, settings=settings, wsse=wsse,
                               plugins=plugins or [])
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            cls = TransientDeliveryError if status >= 500 else DeliveryError
            raise cls(f"could not load the WSDL from {wsdl}: HTTP {status}", http_status=status) from None
        except ReplyTooLarge as exc:
            raise DeliveryError(f"could not load the WSDL from {wsdl}: {exc}") from None
        except requests.RequestException as exc:
            if _certificate_refused(exc):
                raise DeliveryError(f"could not load the WSDL from {wsdl}: {_tls_problem(exc)}") from None
            raise TransientDeliveryError(f"could not load the WSDL from {wsdl}: {_describe(exc)}") from None
        except (OSError, etree.XMLSyntaxError, ValueError, zeep_exceptions.Error) as exc:
            raise DeliveryError(f"could not load the WSDL from {wsdl}: {type(exc).__name__}: "
                                f"{_safe(str(exc))}") from None
        default = self.zeep.service
        binding = default._binding
        self.service = self.zeep.create_service(binding.name.text, endpoint) if endpoint else default
        self._binding = self.service._binding
        self.endpoint: str = self.service._binding_options["address"]
        if not endpoint:  # the address came from the WSDL
            insecure += self._refuse_insecure([("endpoint", self.endpoint)], True, None)
        text = "; ".join(insecure)
        if text and text not in _INSECURE_WARNED:
            _INSECURE_WARNED.add(text)
            log.warning("INSECURE delivery allowed by %s (tests only, never in production): %s",
                        ENV_INSECURE_FOR_TESTS, text)

    def _refuse_insecure(self, urls: list[tuple[str, str | None]], signed: bool,
                         verify_tls: bool | str | Path | None) -> list[str]:
        """Refuse (SecurityConfigError) what would let someone on the network path read the CPR numbers
        or forge a receipt, unless the insecure switch for tests is on; returns what is insecure."""
        problems = []
        for what, url in urls:
            if url and urlsplit(url).scheme.lower() == "http":
                problems.append(f"the {what} {_safe(url)} is plain HTTP (anyone on the network path can "
                                "read every CPR number sent and forge a receipt): use an https:// URL (the "
                                "connection ams_receiver's scheme is https unless set otherwise)")
        if not signed:
            problems.append("requests would not be signed (the agency cannot tell them from forged ones): set "
                            f"the connection extras {PRIVATE_KEY} (or signing_key, a file path) and signing_cert, "
                            "or AMS_SIGNING_KEY and AMS_SIGNING_CERT")
        if verify_tls is False:
            problems.append("TLS certificate verification is off (verify_tls=false), so any server can pose as "
                            "the agency: remove verify_tls, or give the agency's CA in ca_bundle (AMS_CA_BUNDLE)")
        if problems and not self.insecure_for_tests:
            raise SecurityConfigError(
                f"AMS client refused: {'; '.join(problems)}. {ENV_INSECURE_FOR_TESTS}=1 (or insecure_for_tests=True) "
                "allows this for tests against a local receiver only, never in production.")
        return problems

    # ---------------------------------------------------------------------------------------------
    def submit(self, batch_xml: bytes) -> Receipt:
        """Send a SubmitBatchRequest built and validated by transforms.payload; returns the receipt.
        The batch is sent in its own interface version (its namespace, § 49), whatever the WSDL's."""
        try:
            root = etree.fromstring(batch_xml, xml_parser())
        except etree.XMLSyntaxError as exc:
            raise DeliveryError(f"the batch is not well-formed XML (line {exc.lineno}); it was not sent",
                                operation="SubmitBatch") from None
        version = version_of(root)
        if etree.QName(root).localname != "SubmitBatchRequest" or version is None:
            raise DeliveryError(f"the batch's root element is {etree.QName(root).localname} in namespace "
                                f"{namespace_of(root) or '(none)'}, not the SubmitBatchRequest of a known interface "
                                "version; it was not sent", operation="SubmitBatch")
        ns = version.namespace
        batch_id = (root.findtext(f"{q('BatchHeader', ns)}/{q('BatchIdentifier', ns)}") or "").strip()
        envelope = etree.Element(f"{_SOAP}Envelope", nsmap={"soap-env": SOAP_ENV_NS})
        etree.SubElement(envelope, f"{_SOAP}Body").append(root)
        headers = {"SOAPAction": f'"{soap_action("SubmitBatch", version)}"', "Content-Type": "text/xml; charset=utf-8"}
        element, request_bytes, response_bytes = self._call("SubmitBatch", envelope, headers, batch_id)
        return self._receipt_for(batch_id, "SubmitBatch", element, request_bytes, response_bytes)

    def get_batch_receipt(self, batch_id: str) -> Receipt | None:
        """The receipt of a batch sent before, or None when the receiver has never seen it (1020)."""
        operation = self._binding.get("GetBatchReceipt")
        serialized = operation.create(BatchIdentifier=batch_id)
        self._binding._set_http_headers(serialized, operation)
        try:
            element, request_bytes, response_bytes = self._call(
                "GetBatchReceipt", serialized.content, dict(serialized.headers), batch_id)
        except BusinessFault as fault:
            if fault.code == ERR_UNKNOWN_BATCH:
                log.info("GetBatchReceipt batch=%s: unknown to AMS", batch_id)
                return None
            raise
        return self._receipt_for(batch_id, "GetBatchReceipt", element, request_bytes, response_bytes)

    def _receipt_for(self, batch_id: str, operation: str, element: etree._Element, request_bytes: bytes,
                     response_bytes: bytes) -> Receipt:
        """The answer's receipt, which must be the receipt of the batch asked about."""
        receipt = parse_receipt(element, request_bytes, response_bytes)
        if receipt.batch_id != batch_id:
            raise DeliveryError(
                f"{operation} of batch {batch_id} to {self.endpoint}: AMS answered with the receipt of another "
                f"batch ({_safe(receipt.batch_id)}); the answer was not used. The service answered wrongly: "
                "report it to the agency", operation=operation, request_bytes=request_bytes,
                response_bytes=response_bytes)
        return receipt

    # ---------------------------------------------------------------------------------------------
    def _call(self, operation: str, envelope: etree._Element, headers: dict[str, str],
              batch_id: str) -> tuple[etree._Element, bytes, bytes]:
        """Post an envelope; returns the validated answer element and the bytes exchanged."""
        started = time.monotonic()
        operation_obj = self._binding.get(operation)
        envelope, headers = self._egress(envelope, headers, operation_obj)
        where = f"{operation} of batch {batch_id} to {self.endpoint}"
        try:
            response = self.transport.post_xml(self.endpoint, envelope, headers)
        except requests.Timeout:
            raise TransientDeliveryError(
                f"{where}: no answer within {self.timeout:g} s; the batch may have been received, ask for "
                "its receipt before sending it again", operation=operation,
                request_bytes=self.transport.last_request) from None
        except requests.ConnectionError as exc:
            if _certificate_refused(exc):
                raise DeliveryError(f"{where}: {_tls_problem(exc)}", operation=operation,
                                    request_bytes=self.transport.last_request) from None
            reason = _describe(exc)
            if isinstance(exc, requests.exceptions.SSLError):
                reason += "; if the server requires a TLS client certificate, check client_cert"
            hint = ("nothing was sent" if "Refused" in reason or "NameResolution" in reason or "resolve" in reason
                    else "the batch may have been received, ask for its receipt before sending it again")
            raise TransientDeliveryError(f"{where}: connection failed ({reason}); {hint}", operation=operation,
                                         request_bytes=self.transport.last_request) from None
        except requests.RequestException as exc:
            raise DeliveryError(f"{where}: {_describe(exc)}", operation=operation,
                                request_bytes=self.transport.last_request) from None
        except ReplyTooLarge as exc:
            raise DeliveryError(f"{where}: {exc}; the batch may have been received. Check the endpoint; "
                                "max_reply_bytes raises the limit", operation=operation,
                                request_bytes=self.transport.last_request) from None
        request_bytes = self.transport.last_request or b""
        response_bytes = response.content or b""
        context = {"operation": operation, "request_bytes": request_bytes, "response_bytes": response_bytes,
                   "http_status": response.status_code}
        element = self._answer(where, response, context)
        elapsed = (time.monotonic() - started) * 1000
        ns = namespace_of(element)
        log.info("%s batch=%s status=%s records=%d (%.0f ms)", operation, batch_id,
                 element.findtext(q("BatchStatus", ns)), len(element.find(q("RecordReceipts", ns))), elapsed)
        return element, request_bytes, response_bytes

    def _egress(self, envelope: etree._Element, headers: dict[str, str], operation: Any) -> tuple[Any, Any]:
        """zeep's egress steps for an envelope built here: plugins, WS-Security, extra headers."""
        from zeep import plugins

        client = self.zeep
        envelope, headers = plugins.apply_egress(client, envelope, headers, operation,
                                                 self.service._binding_options)
        for wsse in (client.wsse if isinstance(client.wsse, list) else [client.wsse] if client.wsse else []):
            envelope, headers = wsse.apply(envelope, headers)
        if client.settings.extra_http_headers:
            headers.update(client.settings.extra_http_headers)
        return envelope, headers

    def _answer(self, where: str, response: requests.Response, context: dict[str, Any]) -> etree._Element:
        status = response.status_code
        content = response.content or b""
        doc = None
        if content.strip():
            try:
                doc = etree.fromstring(content, xml_parser())
            except etree.XMLSyntaxError:
                doc = None
        body = doc.find(f"{_SOAP}Body") if doc is not None and doc.tag == f"{_SOAP}Envelope" else None
        if body is None or len(body) == 0:
            what = "an empty reply" if not content.strip() else "a reply that is not a SOAP message"
            if status >= 500 or not content.strip():
                raise TransientDeliveryError(f"{where}: HTTP {status} with {what}", **context)
            raise DeliveryError(f"{where}: HTTP {status} with {what}", **context)
        fault = body.find(f"{_SOAP}Fault")
        if fault is not None:
            raise self._fault(where, fault, status, context)
        if self.zeep.wsse is not None:
            self._verify(doc, where, context)
        if status != 200:
            cls = TransientDeliveryError if status >= 500 else DeliveryError
            raise cls(f"{where}: HTTP {status} without a fault", **context)
        element = body[0]
        expected = {"SubmitBatch": "SubmitBatchResponse", "GetBatchReceipt": "GetBatchReceiptResponse"}
        if etree.QName(element).localname != expected[context["operation"]] or version_of(element) is None:
            raise DeliveryError(f"{where}: unexpected answer {etree.QName(element).localname}", **context)
        problems = payload_problems(element)
        if problems:
            raise DeliveryError(f"{where}: the receipt does not validate against the XSD: "
                                + "; ".join(problems[:5]), **context)
        return element

    def _verify(self, doc: etree._Element, where: str, context: dict[str, Any]) -> None:
        wsses = self.zeep.wsse if isinstance(self.zeep.wsse, list) else [self.zeep.wsse]
        try:
            for wsse in wsses:
                if hasattr(wsse, "verify"):
                    wsse.verify(doc)
        except Exception as exc:  # zeep raises several types here (SignatureVerificationFailed, ...)
            raise DeliveryError(f"{where}: the answer's signature does not verify ({type(exc).__name__})",
                                **context) from None

    @staticmethod
    def _fault(where: str, fault: etree._Element, status: int, context: dict[str, Any]) -> DeliveryError:
        faultcode = (fault.findtext("faultcode") or "").strip()
        faultstring = _safe(fault.findtext("faultstring"))
        detail = fault.find("detail")
        # The detail is in the namespace of the request's interface version.
        service_fault = next((el for el in (detail if detail is not None else ()) if isinstance(el.tag, str)
                              and etree.QName(el).localname == "ServiceFault"), None)
        code: int | None = None
        text = faultstring
        if service_fault is not None:
            ns = namespace_of(service_fault)
            raw = (service_fault.findtext(q("ErrorCode", ns)) or "").strip()
            code = int(raw) if raw.lstrip("-").isdigit() else None
            text = _safe(service_fault.findtext(q("ErrorText", ns))) or faultstring
        # 1020 "unknown batch" is the expected answer to GetBatchReceipt for a batch that never arrived.
        expected = code == ERR_UNKNOWN_BATCH and context.get("operation") == "GetBatchReceipt"
        log.log(logging.DEBUG if expected else logging.WARNING, "%s: SOAP fault %s (HTTP %s)", where,
                code if code is not None else faultcode, status)
        if code == ERR_ACCESS_CLOSED:
            return AccessClosed(code, text, where=where, **context)
        if code == ERR_BUSY:
            return ServiceBusy(code, text, where=where, **context)
        if code == ERR_SIGNATURE:
            return SignatureRefused(code, text, where=where, **context)
        if code is None and faultcode.split(":")[-1] == "Server":
            return TransientDeliveryError(f"{where}: server fault without an error code: {text}", **context)
        return BusinessFault(code, text, where=where, **context)


def _certificate_refused(exc: BaseException) -> bool:
    """The client refused the server's TLS certificate (unknown CA, wrong host name, expired): a
    configuration problem that retrying does not fix; nothing was sent."""
    if not isinstance(exc, requests.exceptions.SSLError):
        return False
    inner: BaseException | None = exc
    for _ in range(10):
        if inner is None:
            break
        if isinstance(inner, ssl.SSLCertVerificationError):
            return True
        inner = inner.__cause__ or inner.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _tls_problem(exc: BaseException) -> str:
    return (f"TLS: the server's certificate could not be verified ({_describe(exc)}); nothing was sent. "
            "Check verify_tls / ca_bundle (AMS_CA_BUNDLE) and the server's certificate")


def client_from_config(config: Mapping[str, Any], env: Mapping[str, str] | None = None, **kwargs: Any) -> AmsClient:
    """An AmsClient from a mapping, e.g. an Airflow connection's extras:

        wsdl (required), endpoint, timeout (seconds, default 30),
        private_key (PEM text or path; masked by Airflow) or signing_key (a path only; env
        AMS_SIGNING_KEY), signing_cert (path or PEM text; env AMS_SIGNING_CERT),
        private_key_passphrase or signing_key_password (env AMS_SIGNING_KEY_PASSWORD),
        ca_bundle (path or PEM text; env AMS_CA_BUNDLE), verify_tls (default true),
        client_cert, client_key (paths, mutual TLS), max_reply_bytes.

    `env` defaults to os.environ; other keyword arguments go to AmsClient (session, plugins,
    insecure_for_tests, ...). Raises delivery.security.SecurityConfigError (a ValueError) for unusable
    or insecure settings (see AmsClient).
    """
    env = os.environ if env is None else env
    wsdl = config.get("wsdl")
    if not wsdl:
        raise SecurityConfigError("the configuration has no 'wsdl'")
    timeout = config.get("timeout")
    settings = security_settings(config, env)
    if config.get("max_reply_bytes") not in (None, ""):
        kwargs.setdefault("max_reply_bytes", int(config["max_reply_bytes"]))
    kwargs.setdefault("insecure_for_tests", insecure_switch(None, env))
    return AmsClient(wsdl, endpoint=config.get("endpoint") or None,
                     timeout=float(timeout) if timeout not in (None, "") else 30.0, **settings, **kwargs)


def insecure_switch(value: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """The insecure-for-tests switch: `value` when given, else AMS_INSECURE_FOR_TESTS == "1"."""
    if value is not None:
        return bool(value)
    return (os.environ if env is None else env).get(ENV_INSECURE_FOR_TESTS, "").strip() == "1"


def client_from_connection(host: str | None, port: int | str | None, schema: str | None,
                           extra: Mapping[str, Any], *, conn_id: str = "ams_receiver", **kwargs: Any) -> AmsClient:
    """An AmsClient from an Airflow connection's fields (`ams_receiver`): host, port, schema = path
    (default `ams`); extras as for client_from_config, plus `scheme` (https, the default). The WSDL and
    endpoint default to <scheme>://<host>:<port>/<schema>(?wsdl)."""
    extra = dict(extra)
    extra.pop("tls", None)  # an older spelling of https; https is the default now
    scheme = str(extra.pop("scheme", None) or "https").strip().lower()
    if scheme not in ("https", "http"):
        raise SecurityConfigError(f"Airflow connection '{conn_id}': extra scheme={scheme!r} is not a web service "
                                  "scheme; use https (the default)")
    base = f"{scheme}://{host}{f':{port}' if port else ''}/{schema or 'ams'}"
    extra.setdefault("wsdl", f"{base}?wsdl")
    extra.setdefault("endpoint", base)
    return client_from_config(extra, **kwargs)


def _describe(exc: BaseException) -> str:
    """A short reason for a requests error (its innermost cause), no URLs' query strings or payloads."""
    inner: BaseException = exc
    for _ in range(10):
        if inner.__context__ is None:
            break
        inner = inner.__context__
    reason = str(inner) or type(inner).__name__
    return _safe(f"{type(inner).__name__}: {reason}")[:300]


__all__ = [
    "NAMESPACE",
    "AccessClosed",
    "AmsClient",
    "BusinessFault",
    "CapturingTransport",
    "DeliveryError",
    "ENV_INSECURE_FOR_TESTS",
    "MAX_REPLY_BYTES",
    "Receipt",
    "RecordReceipt",
    "ServiceBusy",
    "SignatureRefused",
    "TransientDeliveryError",
    "client_from_config",
    "client_from_connection",
    "insecure_switch",
    "parse_receipt",
]

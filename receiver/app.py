"""The local AMS receiver as a WSGI application (werkzeug): SOAP 1.1 over HTTP, per the project's WSDL.

POST /ams                    SubmitBatch and GetBatchReceipt (document/literal)
GET  /ams?wsdl, /ams.wsdl    the first interface version's WSDL, its soap:address pointing at this receiver
GET  /ams?wsdl&version=v2, /ams-v2.wsdl   another interface version's WSDL (§ 49; same endpoint)
GET  /ams-reporting-<v>.xsd  the XSD each WSDL imports
GET  /_health                200 when serving
GET  /_records?area=N        JSON: the stored records (no content), for tests and the demo
GET  /_batches               JSON: the stored batches (no content)
GET  /_control               JSON: the misbehaviour in force, and "held": batches whose reply slow_reply holds
POST /_control               JSON {"mode": ..., "count": N, "delay": s, "operation": "SubmitBatch" |
                             "GetBatchReceipt" | "any", "reset": bool}: misbehave on purpose (tests;
                             only with control=True)

Every request is validated against the XSD of its namespace, i.e. of its interface version (fault
1014; the answer is in the request's namespace): a request that cannot be read (not
well-formed, a document type declaration or entity reference, anything the parser or the validator
trips on) is fault 1014 with a short reason, never a traceback. A request body larger than
`max_request_bytes` (64 MiB by default) is refused before it is read or parsed: HTTP 413 with fault
1014. The fault-injection endpoint /_control is off unless asked for (`control=True`, `--control`).
SubmitBatch is idempotent on the batch
id (same content: the stored receipt again; other content: fault 1030), and a record whose CPR
number has an impossible birth date is rejected with 1010 "Ukendt personnummer". The log has one
line per request with batch id, area and counts, never payload content.

TEST ONLY: `test_only_skip_checks` (`--test-only-skip-check` on the command line) turns a check off,
so that tests can prove that the conformance run (§ 46) notices a receiver that accepts what it must
refuse. Never use it for anything else.

WS-Security: with a `verify` hook (SignatureVerifier, `--trust-cert` on the command line) every
request must carry an X.509 signature (BinarySecurityToken, RSA-SHA256 or ECDSA-SHA256, SHA-256
digests) over its soap:Body by one of the trusted certificates; otherwise fault 1050 "Signature
missing or invalid" with the reason. The receiver does not sign its answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lxml import etree
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from receiver.store import ReceiverStore, StoredBatch
from transforms import payload
from transforms.identifiers import CPR_BAD_DATE, UNKNOWN_CPR, cpr_status
from transforms.payload import (
    ANNULMENT_ELEMENT,
    ERR_ACCESS_CLOSED,
    ERR_BATCH_REUSED,
    ERR_BUSY,
    ERR_RECORD_AREA,
    ERR_SCHEMA,
    ERR_SIGNATURE,
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
from transforms.registry import RECORD_ID_ELEMENT, V1, VERSION_BY_NAME, VERSION_BY_NAMESPACE, InterfaceVersion

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
#: The largest request body read (a 5,000-record batch is a few MiB).
MAX_REQUEST_BYTES = 64 * 1024 * 1024

#: Checks that a TEST-ONLY option can turn off (test_only_skip_checks): a receiver that accepts what it
#: must refuse, for testing the conformance run (§ 46).
TEST_ONLY_SKIPPABLE_CHECKS = ("cpr-birth-date",)

_CPR_FORMAT = re.compile(r"^\d{6}-?\d{4}$")  # transforms.identifiers' format check


def bad_birth_date(value: str) -> bool:
    """`cpr_status(value) == CPR_BAD_DATE` (a well-formed CPR number whose birth date does not exist),
    computed directly for ASCII text: stdnum's date and century rules without its per-character
    cleaning, five times faster on the receiver's one pass over a batch's numbers."""
    if len(value) == 10 and value.isascii() and value.isdigit():  # the usual form: the date's answer kept
        if value == UNKNOWN_CPR:
            return False
        key = value[:7]  # day, month, year, century digit
        bad = _BAD_BY_DATE.get(key)
        if bad is None:
            if len(_BAD_BY_DATE) >= _BAD_BY_DATE_MAX:
                _BAD_BY_DATE.clear()
            bad = _BAD_BY_DATE[key] = _bad_date(value)
        return bad
    if not value.isascii():
        return cpr_status(value) == CPR_BAD_DATE
    if not _CPR_FORMAT.match(value):
        return False
    digits = value.replace("-", "").strip()
    if digits == UNKNOWN_CPR:
        return False
    return _bad_date(digits)


_BAD_BY_DATE: dict[str, bool] = {}  # bad_birth_date's answer by a number's first seven digits
_BAD_BY_DATE_MAX = 200_000


def _bad_date(digits: str) -> bool:
    """The birth date of a ten-digit CPR number does not exist (stdnum's century rules)."""
    year, century = int(digits[4:6]), digits[6]
    if century in "5678" and year >= 58:
        year += 1800
    elif century in "0123" or (century in "49" and year >= 37):
        year += 1900
    else:
        year += 2000
    try:
        date(year, int(digits[2:4]), int(digits[0:2]))
    except ValueError:
        return True
    return False


#: Misbehaviour modes of POST /_control (fault injection for tests).
MODES = ("ok", "error500", "timeout", "drop_reply", "slow_reply", "schema_fault", "access_closed", "busy",
         "signature_refused")
#: The operations a misbehaviour can target ("any": both).
TARGETS = ("SubmitBatch", "GetBatchReceipt", "any")

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


# --------------------------------------------------------------------------------------------------
# WS-Security signature verification
# --------------------------------------------------------------------------------------------------

WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
X509_TOKEN = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64_ENCODING = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
#: Accepted signature methods and digests: SHA-256 only (SHA-1 is refused).
SIGNATURE_METHODS = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": "RSA-SHA256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": "ECDSA-SHA256",
}
DIGEST_METHODS = {"http://www.w3.org/2001/04/xmlenc#sha256": "SHA-256"}
_WSU_ID = f"{{{WSU_NS}}}Id"


def _algorithm(node: etree._Element | None) -> str:
    return (node.get("Algorithm") or "").strip() if node is not None else ""


def _short(uri: str) -> str:
    return (uri.rsplit("#", 1)[-1] or uri)[:80] if uri else "none"


class _Invalid(Exception):
    """Why a signature is refused (the text goes into fault 1050)."""


class SignatureVerifier:
    """The receiver's `verify` hook: a request must carry a WS-Security X.509 signature that

    - is in the soap:Header's single wsse:Security element, one ds:Signature, exclusive C14N;
    - uses RSA-SHA256 (or ECDSA-SHA256) and SHA-256 digests: SHA-1 is refused;
    - covers the soap:Body by a `#wsu:Id` reference, the Id unique in the message (no signature
      wrapping), with no transforms but exclusive C14N;
    - names its certificate by a wsse:BinarySecurityToken (X509v3) reference, or ds:X509Data;
    - was made with one of the trusted certificates (pinned: the same certificate, compared by its
      SHA-256 fingerprint), valid now;
    - verifies: every reference's digest and the signature value. A signature of the one shape zeep
      makes (SignedInfo: CanonicalizationMethod, SignatureMethod, References each with one exc-C14N
      Transform, DigestMethod, DigestValue; no InclusiveNamespaces) is verified here: each signed node
      canonicalised once by lxml (exclusive C14N without comments, as XML-DSig prescribes for a
      `#id` reference), SHA-256, and the canonical SignedInfo's signature checked by `cryptography`;
      whatever does not verify so, or has another shape, is left to xmlsec (`xmlsec_only=True`: every
      signature), so every refusal is xmlsec's (tests/test_send_performance.py);
    - when a wsu:Timestamp is present (required with `require_timestamp`): it is signed and has not
      expired, allowing `clock_skew` seconds.

    Anything else is fault 1050 with a readable reason. Faults never contain payload content.
    """

    def __init__(self, trusted_cert_pem_paths: Iterable[str | Path], *, require_timestamp: bool = False,
                 clock_skew: float = 300.0, clock: Callable[[], datetime] | None = None,
                 xmlsec_only: bool = False) -> None:
        self.xmlsec_only = xmlsec_only
        self.trusted: dict[bytes, x509.Certificate] = {}
        for item in trusted_cert_pem_paths:
            path = Path(item)
            try:
                data = path.read_bytes()
                certs = x509.load_pem_x509_certificates(data)
            except OSError as exc:
                raise ValueError(f"trusted certificate {path}: {exc.strerror or type(exc).__name__}") from None
            except ValueError:
                raise ValueError(f"trusted certificate {path}: no PEM certificate in the file") from None
            for cert in certs:
                self.trusted[cert.fingerprint(hashes.SHA256())] = cert
        if not self.trusted:
            raise ValueError("SignatureVerifier needs at least one trusted certificate")
        self.require_timestamp = require_timestamp
        self.clock_skew = timedelta(seconds=clock_skew)
        self.clock = clock or _now

    def __call__(self, envelope: etree._Element, headers: Headers | None = None, *,
                 canonical: dict[etree._Element, bytes] | None = None) -> None:
        """`canonical`: when given, receives each signed node's exclusive C14N (without comments) that
        the verification digested, when the signature verified here (not by xmlsec): the receiver
        reuses the Body's instead of canonicalising the same tree again."""
        try:
            self.check(envelope, canonical=canonical)
        except _Invalid as exc:
            log.warning("signature refused: %s", exc)
            raise ReceiverFault(ERR_SIGNATURE, str(exc)) from None

    # ---------------------------------------------------------------------------------------------
    def check(self, envelope: etree._Element, *,
              canonical: dict[etree._Element, bytes] | None = None) -> x509.Certificate:
        """Raises _Invalid with the reason; returns the signer's certificate. `canonical`: see __call__."""
        if envelope.getroottree().docinfo.doctype:
            raise _Invalid("a signed message may not have a document type declaration")
        header = envelope.find(f"{_SOAP}Header")
        securities = header.findall(f"{{{WSSE_NS}}}Security") if header is not None else []
        if not securities:
            raise _Invalid("the request is not signed (no wsse:Security header)")
        if len(securities) > 1:
            raise _Invalid("more than one wsse:Security header")
        security = securities[0]
        signatures = security.findall(f"{{{DS_NS}}}Signature")
        if len(signatures) != 1:
            raise _Invalid("the request is not signed (no ds:Signature in the wsse:Security header)"
                           if not signatures else "more than one ds:Signature in the wsse:Security header")
        signature = signatures[0]
        signed_info = signature.find(f"{{{DS_NS}}}SignedInfo")
        if signed_info is None:
            raise _Invalid("the ds:Signature has no SignedInfo")
        c14n = _algorithm(signed_info.find(f"{{{DS_NS}}}CanonicalizationMethod"))
        if c14n != EXC_C14N:
            raise _Invalid(f"canonicalization {_short(c14n)} is not accepted: use exclusive C14N")
        method = _algorithm(signed_info.find(f"{{{DS_NS}}}SignatureMethod"))
        if method not in SIGNATURE_METHODS:
            raise _Invalid(f"signature method {_short(method)} is not accepted: use RSA-SHA256")

        ids = self._ids(envelope)
        bodies = envelope.findall(f"{_SOAP}Body")
        if len(bodies) != 1:
            raise _Invalid("the envelope must have exactly one soap:Body")
        body_id = bodies[0].get(_WSU_ID)
        references = signed_info.findall(f"{{{DS_NS}}}Reference")
        if not references:
            raise _Invalid("the signature has no references")
        signed: list[etree._Element] = []
        for ref in references:
            uri = ref.get("URI") or ""
            if not uri.startswith("#") or len(uri) < 2:
                raise _Invalid(f"reference URI {uri[:80]!r} is not accepted: refer to a wsu:Id (#id)")
            digest = _algorithm(ref.find(f"{{{DS_NS}}}DigestMethod"))
            if digest not in DIGEST_METHODS:
                raise _Invalid(f"digest method {_short(digest)} is not accepted: use SHA-256")
            for transform in ref.iterfind(f"{{{DS_NS}}}Transforms/{{{DS_NS}}}Transform"):
                if _algorithm(transform) != EXC_C14N:
                    raise _Invalid(f"reference transform {_short(_algorithm(transform))} is not accepted")
            owners = ids.get(uri[1:], [])
            if len(owners) != 1:
                raise _Invalid(f"reference {uri[:80]} does not name exactly one element "
                               f"({len(owners)} carry that id)")
            node, attribute = owners[0]
            if attribute != _WSU_ID:
                raise _Invalid(f"reference {uri[:80]} must name a wsu:Id")
            signed.append(node)
        if not body_id or all(node is not bodies[0] for node in signed):
            raise _Invalid("the signature does not cover the soap:Body")

        cert = self._signer(signature, security, ids)
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint not in self.trusted:
            raise _Invalid(f"the signer's certificate ({_describe_cert(cert)}) is not trusted")
        now = self.clock()
        if not cert.not_valid_before_utc - self.clock_skew <= now <= cert.not_valid_after_utc + self.clock_skew:
            raise _Invalid(f"the signer's certificate ({_describe_cert(cert)}) is not valid now (valid "
                           f"{_iso(cert.not_valid_before_utc)} to {_iso(cert.not_valid_after_utc)})")
        self._check_timestamp(security, signed, now)

        if not self.xmlsec_only and _verified_here(signature, signed, cert, canonical):
            return cert
        try:
            key = xmlsec.Key.from_memory(cert.public_bytes(Encoding.DER), xmlsec.KeyFormat.CERT_DER, None)
            ctx = xmlsec.SignatureContext()
            for node in signed:
                ctx.register_id(node, "Id", WSU_NS)
            ctx.key = key
            ctx.verify(signature)
        except xmlsec.Error:
            raise _Invalid(_NOT_VERIFIED) from None
        return cert

    @staticmethod
    def _ids(envelope: etree._Element) -> dict[str, list[tuple[etree._Element, str]]]:
        """Every id-like attribute (wsu:Id, xml:id, Id, ID, id) by value, to refuse duplicates."""
        found: dict[str, list[tuple[etree._Element, str]]] = {}
        for attr in envelope.xpath("//@*[local-name()='Id' or local-name()='ID' or local-name()='id']"):
            found.setdefault(str(attr).strip(), []).append((attr.getparent(), attr.attrname))
        return found

    @staticmethod
    def _signer(signature: etree._Element, security: etree._Element,
                ids: dict[str, list[tuple[etree._Element, str]]]) -> x509.Certificate:
        key_info = signature.find(f"{{{DS_NS}}}KeyInfo")
        if key_info is None:
            raise _Invalid("the signature has no KeyInfo naming its certificate")
        token_ref = key_info.find(f"{{{WSSE_NS}}}SecurityTokenReference")
        ref = token_ref.find(f"{{{WSSE_NS}}}Reference") if token_ref is not None else None
        encoded: str | None = None
        if ref is not None:
            uri = ref.get("URI") or ""
            owners = ids.get(uri[1:], []) if uri.startswith("#") else []
            if len(owners) != 1:
                raise _Invalid("the signature's token reference does not name exactly one BinarySecurityToken")
            token = owners[0][0]
            if token.tag != f"{{{WSSE_NS}}}BinarySecurityToken" or token.getparent() is not security:
                raise _Invalid("the signature's token reference does not name a BinarySecurityToken of the "
                               "wsse:Security header")
            if token.get("ValueType") != X509_TOKEN or token.get("EncodingType", BASE64_ENCODING) != BASE64_ENCODING:
                raise _Invalid("the BinarySecurityToken is not a base64 X509v3 certificate")
            encoded = token.text
        else:
            holder = token_ref if token_ref is not None else key_info
            encoded = holder.findtext(f"{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")
        if not encoded or not encoded.strip():
            raise _Invalid("the signature does not carry its certificate (expected a BinarySecurityToken)")
        try:
            return x509.load_der_x509_certificate(base64.b64decode("".join(encoded.split()), validate=True))
        except (ValueError, binascii.Error):
            raise _Invalid("the signer's certificate cannot be read") from None

    def _check_timestamp(self, security: etree._Element, signed: list[etree._Element], now: datetime) -> None:
        stamps = security.findall(f"{{{WSU_NS}}}Timestamp")
        if not stamps:
            if self.require_timestamp:
                raise _Invalid("the request has no wsu:Timestamp")
            return
        if len(stamps) > 1:
            raise _Invalid("more than one wsu:Timestamp")
        stamp = stamps[0]
        if all(node is not stamp for node in signed):
            raise _Invalid("the wsu:Timestamp is not signed")
        created, expires = (_parse_time(stamp.findtext(f"{{{WSU_NS}}}{name}")) for name in ("Created", "Expires"))
        if created is not None and created - self.clock_skew > now:
            raise _Invalid(f"the request was created in the future ({_iso(created)})")
        if expires is not None and expires + self.clock_skew < now:
            raise _Invalid(f"the signature has expired (wsu:Timestamp Expires {_iso(expires)})")


_NOT_VERIFIED = ("the signature does not verify: the signed content was changed after signing, or it was signed "
                 "with another key")


def _children(node: etree._Element) -> list[etree._Element]:
    return [child for child in node if isinstance(child.tag, str)]


def _base64(text: str | None) -> bytes | None:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (ValueError, binascii.Error):
        return None


def _verified_here(signature: etree._Element, signed: list[etree._Element], cert: x509.Certificate,
                   canonical: dict[etree._Element, bytes] | None = None) -> bool:
    """XML-DSig core validation of a signature of zeep's shape (SignatureVerifier.check has checked the
    algorithms and resolved the references to `signed`, in order): True when every digest and the
    signature value verify; False otherwise (another shape, or anything that does not verify): then
    xmlsec decides, so a refusal is always xmlsec's, and only what verifies is accepted here. `canonical`
    (when given) receives each signed node's canonical bytes, only when True is returned."""
    ds = f"{{{DS_NS}}}"
    parts = _children(signature)
    if [p.tag for p in parts[:2]] != [f"{ds}SignedInfo", f"{ds}SignatureValue"] or any(
            p.tag != f"{ds}KeyInfo" for p in parts[2:]):
        return False
    signed_info = parts[0]
    info = _children(signed_info)
    references = info[2:]
    if (len(info) < 3 or info[0].tag != f"{ds}CanonicalizationMethod" or info[1].tag != f"{ds}SignatureMethod"
            or len(info[0]) or len(info[1]) or len(references) != len(signed)):
        return False
    digests: list[bytes] = []
    for ref in references:
        children = _children(ref)
        if ref.tag != f"{ds}Reference" or [c.tag for c in children] != [f"{ds}Transforms", f"{ds}DigestMethod",
                                                                         f"{ds}DigestValue"]:
            return False
        transforms = _children(children[0])
        if (len(transforms) != 1 or transforms[0].tag != f"{ds}Transform" or len(transforms[0])
                or _algorithm(transforms[0]) != EXC_C14N or len(children[1])):
            return False
        digest = _base64(children[2].text)
        if digest is None:
            return False
        digests.append(digest)
    value = _base64(parts[1].text)
    if value is None:
        return False
    key = cert.public_key()
    method = SIGNATURE_METHODS.get(_algorithm(info[1]))
    if not ((method == "RSA-SHA256" and isinstance(key, rsa.RSAPublicKey))
            or (method == "ECDSA-SHA256" and isinstance(key, ec.EllipticCurvePublicKey))):
        return False
    forms: list[bytes] = []
    for node, digest in zip(signed, digests, strict=True):
        form = etree.tostring(node, method="c14n", exclusive=True, with_comments=False)
        own = hashlib.sha256(form).digest()
        if not hmac.compare_digest(own, digest):
            return False
        forms.append(form)
    data = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(value, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            size = (key.curve.key_size + 7) // 8
            if len(value) != 2 * size:
                return False
            r, s = int.from_bytes(value[:size], "big"), int.from_bytes(value[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    if canonical is not None:
        canonical.update(zip(signed, forms, strict=True))
    return True


# --------------------------------------------------------------------------------------------------
# Canonical forms cut from one canonicalisation
# --------------------------------------------------------------------------------------------------

XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"


def _plain(element: etree._Element) -> bool:
    """No comment and no processing instruction in the subtree: in its canonical form every `<` then
    starts a tag (C14N writes `<` in text and attribute values as `&lt;`), and the form is the same with
    and without comments."""
    return next(element.iter(etree.Comment, etree.ProcessingInstruction), None) is None


def element_c14n_from_body(element: etree._Element, body_c14n: bytes | None) -> bytes | None:
    """`etree.tostring(element, method="c14n", exclusive=True)` cut out of `body_c14n`, the exclusive
    C14N (without comments) of its parent soap:Body that the signature verification made, or None when
    the cut could differ from it (then canonicalise the element).

    Only for a request element that validated against the XSD (every element in the interface's
    namespace, no attribute but xsi:*), plain (no comment or PI) and the Body's only content (no text
    around it). Exclusive C14N renders on an element the namespaces it visibly uses that its nearest
    rendered ancestor did not render with the same value: the Body renders only its own prefix and its
    attributes' (it is prefixed: no default namespace). When none of those namespaces is the element's
    or xsi's, the element's subtree renders the same inside the Body as on its own."""
    body = element.getparent()
    if (body_c14n is None or body is None or body.prefix is None or len(body) != 1 or body.text
            or element.tail):
        return None
    rendered = {etree.QName(body).namespace, *(etree.QName(key).namespace for key in body.attrib)}
    if payload.namespace_of(element) in rendered or XSI_NS in rendered:
        return None
    end = f"</{body.prefix}:{etree.QName(body).localname}>".encode()
    start = body_c14n.find(b"<", 1)  # the Body's start tag has no raw `<` (C14N escapes it in values)
    if start < 0 or not body_c14n.endswith(end):
        return None
    return body_c14n[start:len(body_c14n) - len(end)]


def record_c14n_from_element(element_c14n: bytes, element: etree._Element, records: etree._Element,
                             children: list[etree._Element]) -> list[bytes] | None:
    """Each child of `records` (`children`, in order) as `etree.tostring(record, method="c14n",
    exclusive=True)`, cut out of the request element's exclusive C14N `element_c14n`, or None when the
    cut could differ (then canonicalise each record).

    Only for a request element that validated against the XSD (Records its last child, not inside the
    BatchHeader) and is plain (no comment or PI: every `<` in the form starts a tag). The cut is made
    when the element renders only the default namespace (`<SubmitBatchRequest xmlns="...">`), Records
    nothing (`<Records>`) and each record nothing (`<MeasureRecord>`: unprefixed, no attribute): a
    record on its own then renders that default namespace on itself and the rest of its subtree as it
    is inside the element (the same namespace context all the way down). The records must be of one
    kind (an annulment among them: None); Records' content is split at each record's end tag, each
    part must be whitespace (C14N writes space, tab and line feed as they are) and the record's start
    tag, and `<MeasureRecord` must occur once per record (no record holds another of its name, so
    each end tag split at is a record's own)."""
    namespace = payload.namespace_of(element)
    local = etree.QName(element).localname
    if not element_c14n.startswith(f'<{local} xmlns="{namespace}">'.encode()):
        return None
    records_tag = f"<{etree.QName(records).localname}>".encode()
    pos = element_c14n.find(records_tag)  # the first: the BatchHeader has no Records
    close = element_c14n.rfind(b"</" + records_tag[1:])  # the last: nothing follows Records but space
    if pos < 0 or close < pos or element_c14n[close + len(records_tag) + 1:].strip(b" \t\n") != (
            f"</{local}>".encode()):
        return None
    pos += len(records_tag)
    if not children:
        return [] if not element_c14n[pos:close].strip(b" \t\n") else None
    tag = children[0].tag
    if not isinstance(tag, str) or any(child.tag != tag for child in children):
        return None
    name = etree.QName(tag).localname.encode()
    opening, bare, closing = b"<" + name + b">", b"<" + name, b"</" + name + b">"
    content = element_c14n[pos:close]
    pieces = content.split(closing)
    if (len(pieces) != len(children) + 1 or pieces[-1].strip(b" \t\n")
            or content.count(bare) != len(children)):
        return None
    declaration = f' xmlns="{namespace}"'.encode()
    forms: list[bytes] = []
    join, skip = b"".join, len(bare)
    for piece in pieces[:-1]:
        at = piece.find(opening)
        if at < 0 or (at and piece[:at].strip(b" \t\n")):
            return None
        forms.append(join((bare, declaration, memoryview(piece)[at + skip:], closing)))
    return forms


def _bad_cpr_numbers(records: etree._Element, cpr_tags: list[str]) -> dict[etree._Element, etree._Element]:
    """For each child of `records` with a CPR number (an element of `cpr_tags`) whose birth date does not
    exist, the first such element: what `[el for el in record.iter(*cpr_tags) if bad_birth_date(...)]`
    gives each record (with no tags, as iter() does: every element, the record's own included), in one
    pass over the batch."""
    found: dict[etree._Element, etree._Element] = {}
    for el in records.iter(*cpr_tags):
        if el is records or not bad_birth_date((el.text or "").strip()):
            continue
        record = el
        parent = record.getparent()
        while parent is not None and parent is not records:
            record, parent = parent, parent.getparent()
        if parent is records:
            found.setdefault(record, el)
    return found


def _parse_time(text: str | None) -> datetime | None:
    if not text or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _Invalid("the wsu:Timestamp has an unreadable time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _describe_cert(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value)[:80] if names else "no CN"
    return f"CN={name}, SHA-256 {cert.fingerprint(hashes.SHA256()).hex(':').upper()[:23]}..."


class _DropConnection(Exception):
    """Close the connection without an answer (misbehaviours timeout and drop_reply)."""


@dataclass
class Misbehaviour:
    """What the next calls of `operation` (SubmitBatch by default) do wrong; access_closed holds for
    every call until reset. `drop_reply` processes the call, then closes the connection unanswered;
    `slow_reply` processes it and answers after `delay` seconds (a sender killed meanwhile never learns
    the outcome: the batches held so are listed under "held").
    `then` queues further steps, taken when this one is used up: faults that combine (a dropped
    reply, then a refused lookup)."""

    mode: str = "ok"
    count: int = 0
    delay: float = 30.0
    operation: str = "SubmitBatch"
    queue: list[tuple[str, int, str]] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # batch ids whose reply `slow_reply` is holding back
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, mode: str, count: int = 1, delay: float = 30.0, operation: str = "SubmitBatch",
            then: list[dict[str, Any]] | None = None) -> None:
        steps = [(mode, count, operation)] + [(str(t.get("mode", "ok")), int(t.get("count", 1)),
                                               str(t.get("operation", "SubmitBatch"))) for t in then or []]
        for step_mode, _, step_operation in steps:
            if step_mode not in MODES:
                raise ValueError(f"unknown mode {step_mode!r}; known: {', '.join(MODES)}")
            if step_operation not in TARGETS:
                raise ValueError(f"unknown operation {step_operation!r}; known: {', '.join(TARGETS)}")
        with self._lock:
            self.delay = float(delay)
            self.queue = steps[1:]
            self._start(*steps[0])

    def _start(self, mode: str, count: int, operation: str) -> None:
        self.mode, self.count, self.operation = mode, max(int(count), 0), operation
        if mode == "access_closed":
            self.count = 0  # holds for every call until reset: no count
        elif mode == "ok" or self.count == 0:
            self.mode, self.count = "ok", 0
            if self.queue:
                self._start(*self.queue.pop(0))

    def take(self, operation: str) -> str | None:
        """The misbehaviour for this call, if any (consumes one of `count`)."""
        with self._lock:
            if self.mode == "access_closed":
                return self.mode
            if self.mode == "ok" or self.operation not in (operation, "any"):
                return None
            mode = self.mode
            self.count -= 1
            if self.count <= 0:
                self.mode, self.count = "ok", 0
                if self.queue:
                    self._start(*self.queue.pop(0))
            return mode

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "count": self.count, "delay": self.delay, "operation": self.operation,
                    "then": [{"mode": m, "count": c, "operation": o} for m, c, o in self.queue],
                    "held": list(self.held)}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def fault_envelope(fault: ReceiverFault, namespace: str = NAMESPACE) -> bytes:
    """A SOAP 1.1 fault with a ServiceFault detail (in the namespace of the request's interface version)."""
    env = etree.Element(f"{_SOAP}Envelope", nsmap={"soap": SOAP_ENV_NS})
    body = etree.SubElement(env, f"{_SOAP}Body")
    node = etree.SubElement(body, f"{_SOAP}Fault")
    etree.SubElement(node, "faultcode").text = "soap:Server" if fault.server_side else "soap:Client"
    etree.SubElement(node, "faultstring").text = f"{fault.code} {fault.text}"
    detail = etree.SubElement(node, "detail")
    service_fault = etree.SubElement(detail, q("ServiceFault", namespace), nsmap={None: namespace})
    etree.SubElement(service_fault, q("ErrorCode", namespace)).text = str(fault.code)
    etree.SubElement(service_fault, q("ErrorText", namespace)).text = fault.text
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def server_error_envelope() -> bytes:
    """A SOAP 1.1 server fault without a ServiceFault code: the receiver failed, not the request."""
    env = etree.Element(f"{_SOAP}Envelope", nsmap={"soap": SOAP_ENV_NS})
    node = etree.SubElement(etree.SubElement(env, f"{_SOAP}Body"), f"{_SOAP}Fault")
    etree.SubElement(node, "faultcode").text = "soap:Server"
    etree.SubElement(node, "faultstring").text = "internal error of the receiver; try again later"
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def build_receipt(tag: str, batch_id: str, outcomes: list[tuple[str, str, int | None, str | None]],
                  namespace: str = NAMESPACE, *, message_id: str | None = None, event_date: str | None = None) -> bytes:
    """A SubmitBatchResponse (or GetBatchReceiptResponse) with a fresh ServiceReceipt, in `namespace`.

    Written as text: byte for byte what `_build_receipt_tree` (lxml) writes, a twentieth of its time for
    5,000 records (tests/test_receiver.py compares the two)."""
    message_id = message_id or str(uuid.uuid4())
    event_date = event_date or _iso(_now())
    status = _batch_status(outcomes)
    xmlns = payload.xml_text(namespace).replace('"', "&quot;")
    parts = [f'<{tag} xmlns="{xmlns}"><ServiceReceipt><MessageIdentifier>'
             f"{payload.xml_text(message_id)}</MessageIdentifier><EventDate>{payload.xml_text(event_date)}</EventDate></ServiceReceipt>"
             f"<BatchIdentifier>{payload.xml_text(batch_id)}</BatchIdentifier><BatchStatus>{status}</BatchStatus>"
             + ("<RecordReceipts>" if outcomes else "<RecordReceipts/>")]
    add = parts.append
    ids = payload.xml_texts([outcome[0] for outcome in outcomes])  # raises as xml_text for what XML cannot carry
    statuses: dict[str, str] = {}
    for record_id, (_, record_status, code, text) in zip(ids, outcomes, strict=True):
        status_text = statuses.get(record_status)
        if status_text is None:
            status_text = statuses[record_status] = payload.xml_text(record_status)
        add(f"<RecordReceipt><{RECORD_ID_ELEMENT}>{record_id}</{RECORD_ID_ELEMENT}><Status>{status_text}</Status>")
        if code is not None:
            add(f"<ErrorCode>{code}</ErrorCode>")
        if text is not None:
            add(f"<ErrorText>{payload.xml_text(text)}</ErrorText>")
        add("</RecordReceipt>")
    parts.append(f"</RecordReceipts></{tag}>" if outcomes else f"</{tag}>")
    # payload.xml_text escapes as lxml does, and raises as lxml does for what XML cannot carry
    return "".join(parts).encode("ascii", "xmlcharrefreplace")  # as lxml writes non-ASCII text: &#230;


def _batch_status(outcomes: list[tuple[str, str, int | None, str | None]]) -> str:
    accepted = sum(1 for _, status, _, _ in outcomes if status == payload.RECORD_ACCEPTED)
    if accepted == len(outcomes):
        return payload.BATCH_ACCEPTED
    if accepted == 0:
        return payload.BATCH_REJECTED
    return payload.BATCH_PARTIALLY_ACCEPTED


def _build_receipt_tree(tag: str, batch_id: str, outcomes: list[tuple[str, str, int | None, str | None]],
                        namespace: str, message_id: str, event_date: str) -> bytes:
    """build_receipt with lxml (what it writes as text)."""
    def q(local: str) -> str:
        return payload.q(local, namespace)

    root = etree.Element(q(tag), nsmap={None: namespace})
    receipt = etree.SubElement(root, q("ServiceReceipt"))
    etree.SubElement(receipt, q("MessageIdentifier")).text = message_id
    etree.SubElement(receipt, q("EventDate")).text = event_date
    etree.SubElement(root, q("BatchIdentifier")).text = batch_id
    etree.SubElement(root, q("BatchStatus")).text = _batch_status(outcomes)
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


def _renamed(response_xml: bytes, tag: str, namespace: str) -> bytes:
    """A stored answer as another answer element, in `namespace` (a batch sent in one interface version
    may be asked about in another: the answer's structure is the same in every version)."""
    stored = etree.fromstring(response_xml, payload.xml_parser())
    root = etree.Element(q(tag, namespace), nsmap={None: namespace})
    root.extend(stored)
    for el in root.iter():
        el.tag = q(etree.QName(el).localname, namespace)
    etree.cleanup_namespaces(root)
    return etree.tostring(root)


def _batch_id_of(element: etree._Element | None) -> str:
    """The batch id of a request, for the log, when it looks like a GUID ("-" otherwise)."""
    if element is None:
        return "-"
    ns = payload.namespace_of(element)
    text = (element.findtext(f"{q('BatchHeader', ns)}/{q('BatchIdentifier', ns)}")
            or element.findtext(q("BatchIdentifier", ns)) or "").strip()
    return text if _GUID.fullmatch(text) else "-"


class ReceiverApp:
    """The WSGI application. `verify` is the hook for WS-Security signature verification
    (SignatureVerifier, or None: no verification); `control` enables POST /_control (fault injection,
    for tests: off by default); `max_request_bytes` caps a SOAP request's body;
    `test_only_skip_checks` (TEST ONLY) turns checks of TEST_ONLY_SKIPPABLE_CHECKS off."""

    def __init__(self, store: ReceiverStore, *, verify: Verifier | None = None, control: bool = False,
                 max_request_bytes: int = MAX_REQUEST_BYTES, test_only_skip_checks: Iterable[str] = ()) -> None:
        if max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        self.store = store
        self.verify = verify
        self.control_enabled = control
        self.max_request_bytes = max_request_bytes
        self.skipped_checks = frozenset(test_only_skip_checks)
        unknown = self.skipped_checks - set(TEST_ONLY_SKIPPABLE_CHECKS)
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(sorted(unknown))}; the test-only option can skip "
                             f"{', '.join(TEST_ONLY_SKIPPABLE_CHECKS)}")
        if self.skipped_checks:
            log.warning("TEST ONLY: this receiver skips the check(s) %s and accepts what it must refuse",
                        ", ".join(sorted(self.skipped_checks)))
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
        except Exception as exc:  # a bug or a store failure: a SOAP server fault, no traceback to the caller
            log.error("%s %s: internal error (%s)", request.method, request.path, type(exc).__name__)
            response = Response(server_error_envelope(), status=500, content_type=_XML)
        return response(environ, start_response)

    # ---------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == SOAP_PATH and method == "POST":
            return self.soap(request)
        if method in ("GET", "HEAD"):
            wsdl_version = self._wsdl_version(request)
            if wsdl_version is not None:
                return Response(self.wsdl(request.host_url.rstrip("/") + SOAP_PATH, wsdl_version), content_type=_XML)
            for version in VERSION_BY_NAME.values():
                if path == f"/{version.xsd_name}":
                    return Response((payload.SCHEMA_DIR / version.xsd_name).read_bytes(), content_type=_XML)
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
    def _wsdl_version(request: Request) -> InterfaceVersion | None:
        """Which version's WSDL a GET asks for: /ams?wsdl (first version), /ams?wsdl&version=v2,
        /ams.wsdl, /ams-v2.wsdl; None when the request is not for a WSDL (or names no known version)."""
        path = request.path
        if path == SOAP_PATH and "wsdl" in (k.lower() for k in request.args):
            return VERSION_BY_NAME.get(request.args.get("version") or V1.name)
        if path.startswith("/ams") and path.endswith(".wsdl"):
            return VERSION_BY_NAME.get(path.removeprefix("/ams").removesuffix(".wsdl").lstrip("-") or V1.name)
        return None

    @staticmethod
    def wsdl(address: str, version: InterfaceVersion = V1) -> bytes:
        """A version's WSDL with its soap:address pointing at `address`."""
        doc = etree.parse(str(payload.SCHEMA_DIR / version.wsdl_name), payload.xml_parser())
        for node in doc.iter(f"{{{WSDL_SOAP_NS}}}address"):
            node.set("location", address)
        return etree.tostring(doc, xml_declaration=True, encoding="UTF-8")

    def control(self, request: Request) -> Response:
        try:
            data = json.loads(request.get_data() or b"{}")
            if data.get("reset"):  # tests: forget every batch and record (a fresh receiver)
                self.store.reset()
            self.misbehaviour.set(str(data.get("mode", "ok")), int(data.get("count", 1)),
                                  float(data.get("delay", 30.0)), str(data.get("operation", "SubmitBatch")),
                                  then=list(data.get("then") or []))
        except (ValueError, TypeError, AttributeError) as exc:
            return self._json({"error": str(exc)}, status=400)
        log.info("control: %s", self.misbehaviour.state())
        return self._json(self.misbehaviour.state())

    # ---------------------------------------------------------------------------------------------
    def soap(self, request: Request) -> Response:
        started = time.monotonic()
        operation, element, namespace = "-", None, NAMESPACE
        status = 500
        try:
            data = self._body(request)
            if data is None:
                status = 413
                raise ReceiverFault(ERR_SCHEMA, f"the request is larger than this receiver accepts "
                                    f"({self.max_request_bytes} bytes); send smaller batches")
            envelope = self._parse(data)
            body = envelope.find(f"{_SOAP}Body")
            if body is None or len(body) == 0:
                raise ReceiverFault(ERR_SCHEMA, "the SOAP envelope has no Body content")
            element = body[0]
            canonical: dict[etree._Element, bytes] = {}
            if isinstance(self.verify, SignatureVerifier):
                self.verify(envelope, request.headers, canonical=canonical)  # keeps the Body's C14N
            elif self.verify is not None:
                self.verify(envelope, request.headers)
            qname = etree.QName(element)
            operation = qname.localname.removesuffix("Request")
            if qname.namespace not in VERSION_BY_NAMESPACE:
                raise ReceiverFault(ERR_SCHEMA, f"unknown interface namespace {qname.namespace or '(none)'}; known: "
                                    + ", ".join(VERSION_BY_NAMESPACE))
            namespace = qname.namespace
            if operation not in payload.OPERATIONS:
                raise ReceiverFault(ERR_SCHEMA, f"unknown operation element {qname.localname}")
            mode = self.misbehaviour.take(operation)
            if mode is not None:
                misbehaved = self._misbehave(mode, operation, element, started)
                if misbehaved is not None:
                    return misbehaved
            self._validate(element)
            if operation == "SubmitBatch":
                return self._soap_response(self.submit_batch(element, started, body_c14n=canonical.get(body),
                                                             validated=True))
            return self._soap_response(self.get_batch_receipt(element, started))
        except ReceiverFault as fault:
            log.info("%s batch=%s fault=%d (%.0f ms)", operation, _batch_id_of(element), fault.code,
                     (time.monotonic() - started) * 1000)
            return Response(fault_envelope(fault, namespace), status=status, content_type=_XML)

    def _body(self, request: Request) -> bytes | None:
        """The request body, or None when it is larger than max_request_bytes (not read, not parsed)."""
        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        data = request.stream.read(limit + 1)  # a chunked body has no Content-Length
        return None if len(data) > limit else data

    @staticmethod
    def _parse(data: bytes) -> etree._Element:
        try:
            envelope = etree.fromstring(data, payload.xml_parser())
        except etree.XMLSyntaxError as exc:
            raise ReceiverFault(ERR_SCHEMA, f"not well-formed XML: line {exc.lineno}: "
                                f"{payload.clean_message(exc.msg)}") from None
        except Exception as exc:  # anything else the parser trips on: a fault, never a traceback
            raise ReceiverFault(ERR_SCHEMA, f"the request could not be read ({type(exc).__name__})") from None
        if envelope.getroottree().docinfo.doctype or envelope.getroottree().docinfo.internalDTD is not None:
            raise ReceiverFault(ERR_SCHEMA, "a SOAP message may not have a document type declaration (DOCTYPE)")
        if envelope.tag != f"{_SOAP}Envelope":
            raise ReceiverFault(ERR_SCHEMA, "not a SOAP 1.1 envelope")
        if next(envelope.iter(etree.Entity), None) is not None:
            raise ReceiverFault(ERR_SCHEMA, "the request contains an entity reference; send the characters "
                                "themselves")
        return envelope

    @staticmethod
    def _validate(element: etree._Element) -> None:
        """Fault 1014 with the schema's problems, or a short reason when validation itself fails."""
        try:
            problems = payload.payload_problems(element)
        except Exception as exc:  # e.g. lxml's "Internal error in XML Schema validation"
            log.warning("schema validation failed on a request: %s", type(exc).__name__)
            raise ReceiverFault(ERR_SCHEMA, f"the request could not be validated ({type(exc).__name__})") from None
        if problems:
            raise ReceiverFault(ERR_SCHEMA, "; ".join(problems))

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
        if mode == "signature_refused":
            raise ReceiverFault(ERR_SIGNATURE, "injected by the receiver's fault injection")
        if mode == "error500":
            return Response("Internal Server Error\n", status=500, content_type="text/plain")
        if mode == "timeout":
            self.stopping.wait(self.misbehaviour.delay)
            raise _DropConnection()
        if mode == "drop_reply":
            if operation == "SubmitBatch":
                self.submit_batch(element, started)
            raise _DropConnection()
        if mode == "slow_reply":
            self._validate(element)
            body = (self.submit_batch(element, started) if operation == "SubmitBatch"
                    else self.get_batch_receipt(element, started))
            with self.misbehaviour._lock:
                self.misbehaviour.held.append(batch_id)
            try:
                self.stopping.wait(self.misbehaviour.delay)
            finally:
                with self.misbehaviour._lock:
                    self.misbehaviour.held.remove(batch_id)
            return self._soap_response(body)
        return None

    # ---------------------------------------------------------------------------------------------
    def submit_batch(self, element: etree._Element, started: float, *, body_c14n: bytes | None = None,
                     validated: bool = False) -> bytes:
        """Store a validated SubmitBatchRequest; returns the SubmitBatchResponse element's XML (in the
        request's interface version).

        `validated`: the element was validated against the XSD here; then the request's digest and each
        record's canonical form are cut out of one canonicalisation (the Body's that the signature
        verification made, `body_c14n`, or the element's) where that gives the same bytes
        (element_c14n_from_body, record_c14n_from_element); otherwise each is canonicalised on its own."""
        ns = payload.namespace_of(element)
        interface = VERSION_BY_NAMESPACE[ns]

        def q(local: str) -> str:
            return payload.q(local, ns)

        header = element.find(q("BatchHeader"))
        batch_id = (header.findtext(q("BatchIdentifier")) or "").strip()
        area = interface.area(int(header.findtext(q("DataArea")) or 0))
        records = element.find(q("Records"))
        check_cpr = "cpr-birth-date" not in self.skipped_checks
        plain = validated and _plain(element)
        element_c14n = element_c14n_from_body(element, body_c14n) if plain else None
        if element_c14n is None:
            element_c14n = etree.tostring(element, method="c14n", exclusive=True)
        digest = hashlib.sha256(element_c14n).hexdigest()
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
            # The record id is a record's first child (the XSD's sequence): read it so when it is.
            items = [(((rec[0].text or "") if len(rec) and rec[0].tag == rid_tag
                       else (rec.findtext(rid_tag) or "")).strip(), rec) for rec in records]
            # The records are written in their order, as one record at a time would write them, but in
            # runs of one statement: a record id stored under another area is refused up front (the
            # areas stored before the batch, and those this batch gives its new records), and an
            # annulment first writes what came before it.
            stored_area = tx.record_areas(rid for rid, rec in items if rec.tag != annul_tag)
            # Each record's first CPR number with an impossible birth date, in one pass over the batch.
            bad_cpr = _bad_cpr_numbers(records, cpr_tags) if check_cpr else {}
            forms = (record_c14n_from_element(element_c14n, element, records, [rec for _, rec in items])
                     if plain else None)
            pending: list[tuple[str, int, str, bytes, str]] = []
            for index, (record_id, rec) in enumerate(items):
                if rec.tag == annul_tag:
                    if pending:
                        tx.upsert_records(pending)
                        pending.clear()
                    if tx.annul_record(record_id, area.number, batch_id, now):
                        outcomes.append((record_id, payload.RECORD_ACCEPTED, None, None))
                    else:
                        outcomes.append((record_id, payload.RECORD_REJECTED, ERR_UNKNOWN_RECORD,
                                         ERROR_TEXTS[ERR_UNKNOWN_RECORD]))
                    continue
                bad = bad_cpr.get(rec)
                if bad is not None:
                    outcomes.append((record_id, payload.RECORD_REJECTED, ERR_UNKNOWN_CPR,
                                     f"{ERROR_TEXTS[ERR_UNKNOWN_CPR]} ({etree.QName(bad).localname}: "
                                     "the birth date does not exist)"))
                    continue
                if stored_area.setdefault(record_id, area.number) != area.number:
                    outcomes.append((record_id, payload.RECORD_REJECTED, ERR_RECORD_AREA,
                                     ERROR_TEXTS[ERR_RECORD_AREA]))
                    continue
                record_xml = (forms[index] if forms is not None  # without the envelope's ns
                              else etree.tostring(rec, method="c14n", exclusive=True))
                pending.append((record_id, area.number, batch_id, record_xml, now))
                outcomes.append((record_id, payload.RECORD_ACCEPTED, None, None))
            if pending:
                tx.upsert_records(pending)
            response_xml = build_receipt("SubmitBatchResponse", batch_id, outcomes, ns)
            tx.insert_batch(StoredBatch(batch_id, area.number, digest, response_xml, now, len(outcomes)))
        accepted = sum(1 for o in outcomes if o[1] == payload.RECORD_ACCEPTED)
        log.info("SubmitBatch batch=%s area=%d records=%d accepted=%d rejected=%d (%.0f ms)", batch_id,
                 area.number, len(outcomes), accepted, len(outcomes) - accepted,
                 (time.monotonic() - started) * 1000)
        return response_xml

    def get_batch_receipt(self, element: etree._Element, started: float) -> bytes:
        ns = payload.namespace_of(element)
        batch_id = (element.findtext(q("BatchIdentifier", ns)) or "").strip()
        stored = self.store.batch(batch_id)
        if stored is None:
            raise ReceiverFault(ERR_UNKNOWN_BATCH, f"no batch {batch_id} has been received")
        log.info("GetBatchReceipt batch=%s area=%d records=%d (%.0f ms)", batch_id, stored.area,
                 stored.record_count, (time.monotonic() - started) * 1000)
        return _renamed(stored.response_xml, "GetBatchReceiptResponse", ns)


__all__ = ["MODES", "TEST_ONLY_SKIPPABLE_CHECKS", "Misbehaviour", "ReceiverApp", "ReceiverFault",
           "SignatureVerifier", "Verifier", "build_receipt", "fault_envelope"]

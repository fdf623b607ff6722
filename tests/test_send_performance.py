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


# --- the request signature -------------------------------------------------------------------------

_WSU_ID = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id"
_DS = "http://www.w3.org/2000/09/xmldsig#"


def _envelope(body: bytes) -> etree._Element:
    env = etree.Element(f"{{{payload.SOAP_ENV_NS}}}Envelope", nsmap={"soap-env": payload.SOAP_ENV_NS})
    etree.SubElement(env, f"{{{payload.SOAP_ENV_NS}}}Body").append(etree.fromstring(body, payload.xml_parser()))
    return env


# Comments, processing instructions, attributes in other namespaces, xml:lang, entities and characters
# that canonicalisation escapes: what the two canonicalisations must treat alike.
_AWKWARD = ('<a:Req xmlns:a="urn:a" xmlns:b="urn:b" xmlns:unused="urn:u" b:x="1 &amp; 2" z="&#x9;tab">'
            '<!-- a comment --><?pi data?><a:T xml:lang="da">ÆØÅ &lt;&gt; &#13; "q"</a:T>'
            '<b:U a:y="&quot;"/><a:V>\r\n</a:V></a:Req>').encode()


def _xmlsec_values(signed: etree._Element) -> tuple[list[str], str]:
    """The digests and signature value xmlsec computes for the signed envelope's own SignedInfo."""
    import xmlsec

    from delivery.security import load_pem

    env = etree.fromstring(etree.tostring(signed))
    signature = env.find(f".//{{{_DS}}}Signature")
    for node in signature.iter(f"{{{_DS}}}DigestValue", f"{{{_DS}}}SignatureValue"):
        node.text = ""
    ctx = xmlsec.SignatureContext()
    for node in env.iter():
        if node.get(_WSU_ID):
            ctx.register_id(node, "Id", _WSU_ID[1:].split("}")[0])
    ctx.key = xmlsec.Key.from_memory(load_pem(_PKI.client_key), xmlsec.KeyFormat.PEM, None)
    ctx.sign(signature)
    return ([d.text for d in signature.iter(f"{{{_DS}}}DigestValue")],
            "".join(signature.findtext(f"{{{_DS}}}SignatureValue").split()))


_PKI_DIR = tempfile.TemporaryDirectory(prefix="ams-sig-test-")


def _pki():  # type: ignore[no-untyped-def]
    from delivery.security import generate_test_pki

    return generate_test_pki(Path(_PKI_DIR.name), name="AMS signature test")


_PKI = _pki()


def test_signature_is_xmlsecs_and_verifies_at_the_receiver() -> None:
    """The digests and the RSA signature value computed here are xmlsec's, byte for byte, for a real
    batch and for awkward XML; the receiver's verifier (xmlsec) and zeep's accept the signature."""
    from zeep.wsse.signature import _make_verify_key, _verify_envelope_with_key

    from delivery.security import load_pem, make_signature
    from receiver.app import SignatureVerifier

    signature = make_signature(_PKI.client_key, _PKI.client_cert)
    assert not signature.xmlsec_signing
    verifier = SignatureVerifier([_PKI.client_cert])
    batch = _cv_batch([(IDS[0], "CREATE_OR_UPDATE", CPR_OK), (IDS[1], "ANNUL", CPR_OK)], IDS[2])
    for body in (batch, _AWKWARD):
        env, _ = signature.apply(_envelope(body), {})
        env = etree.fromstring(etree.tostring(env))  # as the receiver reads it
        digests, value = _xmlsec_values(env)
        sig = env.find(f".//{{{_DS}}}Signature")
        assert [d.text for d in sig.iter(f"{{{_DS}}}DigestValue")] == digests
        assert "".join(sig.findtext(f"{{{_DS}}}SignatureValue").split()) == value
        verifier.check(env)
        _verify_envelope_with_key(env, _make_verify_key(load_pem(_PKI.client_cert)))
        # the structure zeep's signing gives (apart from the random ids and the values)
        old_env, _ = make_signature(_PKI.client_key, _PKI.client_cert).__class__(
            load_pem(_PKI.client_key), load_pem(_PKI.client_cert), xmlsec_signing=True).apply(_envelope(body), {})
        assert [(e.tag, sorted(e.attrib)) for e in old_env.iter()] == [(e.tag, sorted(e.attrib)) for e in env.iter()]


def test_a_changed_body_or_an_ec_key_signature() -> None:
    """Tampering after signing is refused; an ECDSA key signs r || s that xmlsec verifies."""
    import datetime as dt

    import pytest
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from delivery.security import make_signature
    from receiver.app import ReceiverFault, SignatureVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    folder = Path(_PKI_DIR.name)
    (folder / "ec.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for signing_key, cert_path in ((key_pem, folder / "ec.pem"), (_PKI.client_key, _PKI.client_cert)):
        signature = make_signature(signing_key, cert_path)
        assert not signature.xmlsec_signing
        verifier = SignatureVerifier([cert_path])
        env, _ = signature.apply(_envelope(_AWKWARD), {})
        signed = etree.tostring(env)
        verifier(etree.fromstring(signed))
        with pytest.raises(ReceiverFault):
            assert signed.count(b"tab") == 1
            verifier(etree.fromstring(signed.replace(b"tab", b"tub")))


def _signed_request() -> bytes:
    from delivery.security import make_signature

    env, _ = make_signature(_PKI.client_key, _PKI.client_cert).apply(_envelope(_AWKWARD), {})
    return etree.tostring(env)


def _mutations(signed: bytes) -> dict[str, bytes]:
    digest = signed.split(b"<DigestValue>")[1].split(b"</DigestValue>")[0]
    value = signed.split(b"<SignatureValue>")[1][:20]
    return {
        "unchanged": signed,
        "body text": signed.replace(b"tab", b"tub"),
        "comment in the body (not digested)": signed.replace(b"<a:V>", b"<!-- x --><a:V>"),
        "digest value": signed.replace(digest, digest[:5] + (b"A" if digest[5:6] != b"A" else b"B") + digest[6:]),
        "signature value": signed.replace(value, value[:3] + (b"A" if value[3:4] != b"A" else b"B") + value[4:]),
        "whitespace in SignedInfo": signed.replace(b"<SignedInfo>\n", b"<SignedInfo>\n ", 1),
        "timestamp": signed.replace(b"<wsu:Created>2", b"<wsu:Created>1", 1),
        "inclusive namespaces (another shape)": signed.replace(
            b'<Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>',
            b'<Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"><ec:InclusiveNamespaces '
            b'xmlns:ec="http://www.w3.org/2001/10/xml-exc-c14n#" PrefixList="unused"/></Transform>', 1),
        "body attribute": signed.replace(b'z="', b'zz="', 1),
    }


def test_receiver_verification_answers_as_xmlsec() -> None:
    """The receiver's own verification accepts exactly what xmlsec accepts, and refuses with xmlsec's
    reason: unchanged, tampered and other-shaped requests."""
    from receiver.app import SignatureVerifier, _Invalid, _verified_here

    signed = _signed_request()
    fast, slow = SignatureVerifier([_PKI.client_cert]), SignatureVerifier([_PKI.client_cert], xmlsec_only=True)
    outcomes = {}
    for name, request in _mutations(signed).items():
        assert name == "unchanged" or request != signed, name
        answers = []
        for verifier in (fast, slow):
            try:
                verifier.check(etree.fromstring(request))
                answers.append("verified")
            except _Invalid as exc:
                answers.append(str(exc))
        assert answers[0] == answers[1], name
        outcomes[name] = answers[0]
    assert outcomes["unchanged"] == outcomes["comment in the body (not digested)"] == "verified"
    assert all("does not verify" in outcomes[n] for n in (
        "body text", "digest value", "signature value", "whitespace in SignedInfo", "timestamp", "body attribute",
        "inclusive namespaces (another shape)"))  # the last: SignedInfo changed after signing
    # the request as the client signs it is verified here, not by xmlsec
    env = etree.fromstring(signed)
    ds = "{http://www.w3.org/2000/09/xmldsig#}"
    signature = env.find(f".//{ds}Signature")
    ids = {node.get(_WSU_ID): node for node in env.iter() if node.get(_WSU_ID)}
    nodes = [ids[ref.get("URI")[1:]] for ref in signature.iter(f"{ds}Reference")]
    cert = fast.check(env)
    assert _verified_here(signature, nodes, cert) is True


_cpr_like = st.one_of(
    st.from_regex(r"[0-9]{6}-?[0-9]{4}", fullmatch=True),
    st.builds(lambda d, m, y, s: f"{d:02d}{m:02d}{y:02d}{s:04d}", st.integers(0, 39), st.integers(0, 14),
              st.integers(0, 99), st.integers(0, 9999)),
    st.sampled_from(["0000000000", "000000-0000", "2902004000", "2902001000", "2902584000", "2902375000",
                     "2902003000", "2902005000", "2902009000", "2902963000",
                     "١٢٣٤٥٦٧٨٩٠", "0101901234 ", ""]),
    st.text(max_size=12),
)


@settings(max_examples=500)
@given(_cpr_like)
def test_bad_birth_date_is_cpr_status_bad_date(value: str) -> None:
    from receiver.app import bad_birth_date

    value = value.strip()  # as the receiver passes it
    expected = cpr_status(value) == CPR_BAD_DATE
    assert bad_birth_date(value) == expected
    assert bad_birth_date(value) == expected  # again: the answer kept per birth date
    if len(value) == 10 and value.isascii() and value.isdigit():  # another number of the same birth date
        other = value[:7] + ("000" if value[7:] != "000" else "001")
        assert bad_birth_date(other) == (cpr_status(other) == CPR_BAD_DATE)


def test_kept_write_connection_sees_other_writers_and_recovers(tmp_path: Path) -> None:
    """The store's kept write connection sees what another store (process) on the file wrote, a failed
    transaction leaves nothing behind, and the next one works on a fresh connection."""
    import pytest

    one, two = ReceiverStore(tmp_path / "r.sqlite"), ReceiverStore(tmp_path / "r.sqlite")
    with one.transaction() as tx:
        tx.upsert_record("a", 5, "b1", b"<a/>", "t")
    with two.transaction() as tx:
        assert tx.record_areas(["a", "b"]) == {"a": 5}
        tx.upsert_record("b", 3, "b2", b"<b/>", "t")
    with one.transaction() as tx:
        assert tx.record_areas(["a", "b", "c"]) == {"a": 5, "b": 3}
    kept = one._writer
    with pytest.raises(RuntimeError), one.transaction() as tx:
        tx.upsert_record("c", 5, "b3", b"<c/>", "t")
        raise RuntimeError("rolled back")
    assert one._writer is None and one.record("c") is None
    with one.transaction() as tx:
        tx.upsert_record("c", 5, "b4", b"<c/>", "t")
    assert one._writer is not None and one._writer is not kept
    assert [r.record_id for r in two.records()] == ["a", "b", "c"]
    one.close()
    two.close()


def _variants(batch: bytes) -> list[tuple[str, bytes, bool]]:
    """(what, a SOAP Body's content, whether the cuts must be made) — the client's shape and shapes where a
    cut could differ from canonicalising on its own."""
    text = batch.decode("utf-8").split("?>", 1)[1].strip()
    ns = payload.NAMESPACE
    prefixed = text.replace(f'xmlns="{ns}"', f'xmlns:p="{ns}"').replace("<", "<p:").replace("<p:/", "</p:")
    return [
        ("as built", text.encode(), True),
        ("no whitespace", text.replace("\n", "").encode(), True),
        ("prefixed", prefixed.encode(), False),
        ("a comment in a record", text.replace("</RecordIdentifier>", "</RecordIdentifier><!-- x </CvInterview> -->",
                                               1).encode(), False),
        ("a PI", text.replace("<Records>", "<Records><?pi <CvInterview>?>", 1).encode(), False),
        ("a carriage return between records", text.replace("\n<", "&#13;<", 3).encode(), False),
        ("xsi on a record", text.replace("<CvInterview>", f'<CvInterview xmlns:xsi="{XSI}" xsi:type="x">',
                                         1).encode(), False),
        ("Body's prefix in the batch", text.replace(f'xmlns="{ns}"', f'xmlns="{ns}" xmlns:soap-env="urn:other"',
                                                    1).encode(), True),
    ]


XSI = "http://www.w3.org/2001/XMLSchema-instance"


def test_canonical_forms_cut_from_one_canonicalisation_are_lxmls() -> None:
    """The receiver's digest and stored records cut out of the Body's canonical form are what canonicalising
    each on its own gives, or are not cut (None): the client's shape, whitespace, prefixes, comments, PIs,
    a carriage return between records, xsi attributes, a Body with attributes of the batch's namespace or
    of xsi."""
    from delivery.security import make_signature
    from receiver.app import SignatureVerifier, element_c14n_from_body, record_c14n_from_element

    signature = make_signature(_PKI.client_key, _PKI.client_cert)
    verifier = SignatureVerifier([_PKI.client_cert])
    batch = _cv_batch([(IDS[0], "CREATE_OR_UPDATE", CPR_OK), (IDS[1], "CREATE_OR_UPDATE", CPR_BAD),
                       (IDS[3], "CREATE_OR_UPDATE", CPR_OK)], IDS[2])
    mixed = _cv_batch([(IDS[0], "CREATE_OR_UPDATE", CPR_OK), (IDS[1], "ANNUL", CPR_OK)], IDS[2])
    cases = _variants(batch) + [("with an annulment", mixed.split(b"?>", 1)[1].strip(), False)]
    for body_attr in (None, (f"{{{payload.NAMESPACE}}}x", "1"), (f"{{{XSI}}}nil", "false")):
        for what, content, cut in cases:
            env, _ = signature.apply(_envelope(content), {})
            if body_attr is not None:  # after signing: not verified, canonicalised as such below
                env.find(f"{{{payload.SOAP_ENV_NS}}}Body").set(*body_attr)
            env = etree.fromstring(etree.tostring(env), payload.xml_parser())  # as the receiver reads it
            body = env.find(f"{{{payload.SOAP_ENV_NS}}}Body")
            element = body[0]
            canonical: dict[etree._Element, bytes] = {}
            if body_attr is None:
                verifier(env, None, canonical=canonical)
                assert body in canonical, what
                body_c14n = canonical[body]
            else:
                body_c14n = etree.tostring(body, method="c14n", exclusive=True, with_comments=False)
            reference = etree.tostring(element, method="c14n", exclusive=True)
            plain = next(element.iter(etree.Comment, etree.ProcessingInstruction), None) is None
            cut_element = element_c14n_from_body(element, body_c14n) if plain else None
            assert cut_element in (None, reference), (what, body_attr)
            records = element.find(payload.q("Records"))
            forms = record_c14n_from_element(reference, element, records, list(records)) if plain else None
            if forms is not None:
                assert forms == [etree.tostring(r, method="c14n", exclusive=True) for r in records], what
            if body_attr is None and cut:
                assert cut_element is not None and forms is not None, what  # the fast path is taken
            if body_attr is not None and body_attr[0].startswith(f"{{{payload.NAMESPACE}}}"):
                assert cut_element is None, what


def test_receiver_stores_the_canonical_records_and_digest(tmp_path: Path) -> None:
    """Through the WSGI application with a signed request: the stored records and the batch's digest are
    each element's own exclusive C14N (the cut path), and a reused batch id with other content is 1030."""
    from werkzeug.test import Client

    from delivery.security import make_signature
    from receiver.app import SignatureVerifier

    signature = make_signature(_PKI.client_key, _PKI.client_cert)
    app = ReceiverApp(ReceiverStore(tmp_path / "r.sqlite"), verify=SignatureVerifier([_PKI.client_cert]))
    batch = _cv_batch([(IDS[0], "CREATE_OR_UPDATE", CPR_OK), (IDS[1], "CREATE_OR_UPDATE", CPR_BAD),
                       (IDS[3], "CREATE_OR_UPDATE", CPR_OK)], IDS[2])
    env, _ = signature.apply(_envelope(batch), {})
    request = etree.tostring(env, xml_declaration=True, encoding="utf-8")
    answer = Client(app).post("/ams", data=request, headers={"Content-Type": "text/xml; charset=utf-8"})
    assert answer.status_code == 200, answer.data[:300]
    element = etree.fromstring(batch, payload.xml_parser())
    records = {(r.findtext(payload.q(RECORD_ID_ELEMENT)) or "").strip(): r
               for r in element.find(payload.q("Records"))}
    stored = app.store.records()
    assert [r.record_id for r in stored] == [IDS[0], IDS[3]]  # IDS[1]: an impossible birth date
    for row in stored:
        assert row.payload_xml == etree.tostring(records[row.record_id], method="c14n", exclusive=True)
    import hashlib

    assert app.store.batch(IDS[2]).request_sha256 == hashlib.sha256(
        etree.tostring(element, method="c14n", exclusive=True)).hexdigest()
    other = batch.replace(CPR_OK.encode(), b"0202901234", 1)
    env, _ = signature.apply(_envelope(other), {})
    answer = Client(app).post("/ams", data=etree.tostring(env, xml_declaration=True, encoding="utf-8"),
                              headers={"Content-Type": "text/xml; charset=utf-8"})
    assert answer.status_code == 500 and b"1030" in answer.data

"""WS-Security and TLS between the client and the local receiver, on loopback with real servers.

Every certificate and key is generated at test time into pytest's tmp_path (delivery.security.
generate_test_pki); nothing is committed, and the last test checks that no private key landed in the
repository.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests
from lxml import etree
from zeep.wsse.signature import BinarySignature

from delivery.client import (
    AmsClient,
    BusinessFault,
    DeliveryError,
    SignatureRefused,
    TransientDeliveryError,
    client_from_config,
)
from delivery.security import (
    PkiPaths,
    RequestSignature,
    SecurityConfigError,
    generate_test_pki,
    load_pem,
    make_signature,
    security_settings,
)
from receiver.app import DS_NS, WSSE_NS, WSU_NS, SignatureVerifier
from receiver.server import REPO_ROOT, ReceiverHandle, ReceiverProcess, start_in_thread
from transforms import payload
from transforms.payload import ERR_SIGNATURE, build_batch, q
from transforms.registry import RECORD_ID_ELEMENT

SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
WSU_ID = f"{{{WSU_NS}}}Id"
CPR_OK = "0101901234"
STARTED = time.time()


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """Another CA and signing certificate: well-formed, but trusted by nobody."""
    return generate_test_pki(tmp_path_factory.mktemp("rogue"), name="Rogue")


@pytest.fixture
def receiver(tmp_path: Path, pki: PkiPaths) -> Iterator[ReceiverHandle]:
    handle = start_in_thread(tmp_path / "receiver.sqlite", trust_certs=[pki.client_cert])
    yield handle
    handle.stop()


@pytest.fixture
def tls_receiver(tmp_path: Path, pki: PkiPaths) -> Iterator[ReceiverHandle]:
    handle = start_in_thread(tmp_path / "tls.sqlite", trust_certs=[pki.client_cert], tls_cert=pki.server_cert,
                             tls_key=pki.server_key)
    yield handle
    handle.stop()


def signed_client(url: str, pki: PkiPaths, **kwargs: object) -> AmsClient:
    return AmsClient(url, timeout=10, signing_key=pki.client_key, signing_cert=pki.client_cert, **kwargs)


def new_batch(record_id: str | None = None) -> tuple[str, str, bytes]:
    """An area 5 batch with one record, validated like the pipeline does: (batch id, record id, xml)."""
    record_id = record_id or str(uuid.uuid4())
    frame = pd.DataFrame([{"record_id": record_id, "action": "CREATE_OR_UPDATE", "person_cpr": CPR_OK,
                           "municipality_code": "101", "held_on": date(2024, 2, 1), "cv_status": "1"}])
    batch_id = str(uuid.uuid4())
    xml = build_batch(5, frame, batch_id=batch_id, sender_municipality="101", run_id="test",
                      created=datetime(2024, 3, 1, tzinfo=UTC))
    payload.validate_payload(xml)
    return batch_id, record_id, xml


def post(handle: ReceiverHandle, data: bytes) -> requests.Response:
    return requests.post(handle.url, data=data, timeout=10,
                         headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"SubmitBatch"'})


def fault_of(response: requests.Response) -> tuple[int, str]:
    detail = etree.fromstring(response.content).find(f"{SOAP}Body/{SOAP}Fault/detail/{q('ServiceFault')}")
    return int(detail.findtext(q("ErrorCode"))), detail.findtext(q("ErrorText"))


def refused(call: object, *args: object) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as info:
        call(*args)  # type: ignore[operator]
    fault = info.value
    assert isinstance(fault, BusinessFault) and fault.code == ERR_SIGNATURE == 1050
    assert "Signature missing or invalid" in str(fault) and CPR_OK not in str(fault)
    return fault


# --- signatures ----------------------------------------------------------------------------------


def test_signed_request_is_accepted(receiver: ReceiverHandle, pki: PkiPaths) -> None:
    client = signed_client(receiver.wsdl_url, pki)
    batch_id, record_id, xml = new_batch()
    receipt = client.submit(xml)
    assert receipt.batch_status == "ACCEPTED" and [r.record_id for r in receipt.accepted] == [record_id]
    assert receiver.store.record(record_id).version == 1
    assert b"BinarySecurityToken" in receipt.request_bytes
    # GetBatchReceipt is signed too; the unsigned answer does not trip zeep's response verification.
    again = client.get_batch_receipt(batch_id)
    assert again is not None and again.message_id == receipt.message_id
    assert b"BinarySecurityToken" in again.request_bytes and b"Security" not in again.response_bytes
    assert client.get_batch_receipt(str(uuid.uuid4())) is None  # fault 1020 still maps to None


def test_signature_is_sha256_and_covers_body_and_timestamp(receiver: ReceiverHandle, pki: PkiPaths) -> None:
    receipt = signed_client(receiver.wsdl_url, pki).submit(new_batch()[2])
    envelope = etree.fromstring(receipt.request_bytes)
    security = envelope.find(f"{SOAP}Header/{{{WSSE_NS}}}Security")
    signed_info = security.find(f"{{{DS_NS}}}Signature/{{{DS_NS}}}SignedInfo")
    method = signed_info.find(f"{{{DS_NS}}}SignatureMethod").get("Algorithm")
    digests = [d.get("Algorithm") for d in signed_info.iter(f"{{{DS_NS}}}DigestMethod")]
    assert method == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    assert digests == ["http://www.w3.org/2001/04/xmlenc#sha256"] * 2
    assert b"sha1" not in receipt.request_bytes.lower()
    uris = {r.get("URI") for r in signed_info.iter(f"{{{DS_NS}}}Reference")}
    body = envelope.find(f"{SOAP}Body")
    timestamp = security.find(f"{{{WSU_NS}}}Timestamp")
    assert uris == {"#" + body.get(WSU_ID), "#" + timestamp.get(WSU_ID)}
    created = datetime.fromisoformat(timestamp.findtext(f"{{{WSU_NS}}}Created").replace("Z", "+00:00"))
    expires = datetime.fromisoformat(timestamp.findtext(f"{{{WSU_NS}}}Expires").replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60 and expires - created == timedelta(minutes=5)
    # The payload went out unchanged under the signature.
    assert etree.tostring(body[0], method="c14n", exclusive=True) == etree.tostring(
        etree.fromstring(payload_of(receipt.request_bytes)), method="c14n", exclusive=True)


def payload_of(request_bytes: bytes) -> bytes:
    return etree.tostring(etree.fromstring(request_bytes).find(f"{SOAP}Body")[0])


def test_unsigned_request_is_refused(receiver: ReceiverHandle) -> None:
    client = AmsClient(receiver.wsdl_url, timeout=10)
    batch_id, _, xml = new_batch()
    fault = refused(client.submit, xml)
    assert "not signed" in fault.text and fault.request_bytes and fault.response_bytes
    refused(client.get_batch_receipt, batch_id)
    assert receiver.store.counts() == {"batches": 0, "records": 0}


def test_request_signed_by_an_untrusted_certificate_is_refused(receiver: ReceiverHandle, rogue: PkiPaths) -> None:
    fault = refused(signed_client(receiver.wsdl_url, rogue).submit, new_batch()[2])
    assert "not trusted" in fault.text and "CN=Rogue municipality signing" in fault.text
    assert receiver.store.counts()["batches"] == 0


def test_sha1_signature_is_refused(receiver: ReceiverHandle, pki: PkiPaths) -> None:
    sha1 = BinarySignature(str(pki.client_key), str(pki.client_cert))  # zeep's defaults: RSA-SHA1, SHA1
    fault = refused(AmsClient(receiver.wsdl_url, timeout=10, wsse=sha1).submit, new_batch()[2])
    assert "rsa-sha1 is not accepted" in fault.text


def test_request_changed_after_signing_is_refused(receiver: ReceiverHandle, pki: PkiPaths) -> None:
    _, record_id, xml = new_batch()
    signed = signed_client(receiver.wsdl_url, pki).submit(xml).request_bytes
    other_id = str(uuid.uuid4())
    tampered = signed.replace(record_id.encode(), other_id.encode())
    assert tampered != signed and len(tampered) == len(signed)
    response = post(receiver, tampered)
    code, text = fault_of(response)
    assert response.status_code == 500 and code == 1050 and "does not verify" in text
    assert receiver.store.record(other_id) is None
    # The timestamp is signed too: a replay with a later expiry is refused the same way.
    stamp = etree.fromstring(signed).findtext(f".//{{{WSU_NS}}}Expires").encode()
    later = stamp.replace(stamp[:4], str(int(stamp[:4]) + 1).encode())
    assert fault_of(post(receiver, signed.replace(stamp, later)))[0] == 1050
    # The untouched bytes still pass (same batch again: the stored receipt).
    assert post(receiver, signed).status_code == 200


@pytest.mark.parametrize("same_id", [False, True], ids=["body-without-id", "duplicate-id"])
def test_signature_wrapping_is_refused(receiver: ReceiverHandle, pki: PkiPaths, same_id: bool) -> None:
    """The signed Body moved into the header and another Body put in its place: the signature still
    verifies over the moved element, so the receiver must check what it covers."""
    _, record_id, xml = new_batch()
    signed = signed_client(receiver.wsdl_url, pki).submit(xml).request_bytes
    envelope = etree.fromstring(signed)
    body = envelope.find(f"{SOAP}Body")
    forged = copy.deepcopy(body)
    other_id = str(uuid.uuid4())
    forged.find(f".//{q(RECORD_ID_ELEMENT)}").text = other_id
    if not same_id:
        del forged.attrib[WSU_ID]
    envelope.remove(body)
    wrapper = etree.SubElement(envelope.find(f"{SOAP}Header"), "{urn:attacker}Wrapper")
    wrapper.append(body)
    envelope.append(forged)
    code, text = fault_of(post(receiver, etree.tostring(envelope)))
    assert code == 1050
    assert ("does not name exactly one element" if same_id else "does not cover the soap:Body") in text
    assert receiver.store.record(other_id) is None


def test_timestamp_expiry_and_requirement(tmp_path: Path, pki: PkiPaths) -> None:
    later = SignatureVerifier([pki.client_cert], clock=lambda: datetime.now(UTC) + timedelta(minutes=20))
    with start_in_thread(tmp_path / "a.sqlite", verify=later) as handle:
        fault = refused(signed_client(handle.wsdl_url, pki).submit, new_batch()[2])
        assert "expired" in fault.text
    strict = SignatureVerifier([pki.client_cert], require_timestamp=True)
    with start_in_thread(tmp_path / "b.sqlite", verify=strict) as handle:
        no_stamp = make_signature(pki.client_key, pki.client_cert, timestamp_ttl=None)
        fault = refused(AmsClient(handle.wsdl_url, timeout=10, wsse=no_stamp).submit, new_batch()[2])
        assert "no wsu:Timestamp" in fault.text
        assert signed_client(handle.wsdl_url, pki).submit(new_batch()[2]).batch_status == "ACCEPTED"


def test_response_verification_only_with_a_response_certificate(pki: PkiPaths, rogue: PkiPaths) -> None:
    """The client does not verify unsigned answers; with a certificate for answers, it verifies
    signed ones and can require them."""
    _, _, xml = new_batch()
    envelope = etree.Element(f"{SOAP}Envelope")
    etree.SubElement(envelope, f"{SOAP}Body").append(etree.fromstring(xml))
    unsigned = copy.deepcopy(envelope)
    server_side = make_signature(pki.client_key, pki.client_cert)
    server_side.apply(envelope, {})  # stands in for a signing server
    envelope = etree.fromstring(etree.tostring(envelope))
    make_signature(pki.client_key, pki.client_cert).verify(unsigned)
    make_signature(rogue.client_key, rogue.client_cert).verify(envelope)  # no response_cert: not checked
    make_signature(rogue.client_key, rogue.client_cert, response_cert=pki.client_cert).verify(envelope)
    from zeep.exceptions import SignatureVerificationFailed

    with pytest.raises(SignatureVerificationFailed):
        make_signature(pki.client_key, pki.client_cert, response_cert=rogue.client_cert).verify(envelope)
    with pytest.raises(SignatureVerificationFailed):
        make_signature(pki.client_key, pki.client_cert, response_cert=pki.client_cert,
                       require_signed_response=True).verify(unsigned)


def test_ecdsa_key_with_a_password(tmp_path: Path) -> None:
    """An EC signing key, encrypted, given as PEM text with its password: ECDSA-SHA256 is accepted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EC signer")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path = tmp_path / "ec.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"s3cret"))
    with start_in_thread(tmp_path / "ec.sqlite", trust_certs=[cert_path]) as handle:
        with pytest.raises(SecurityConfigError, match="needs a password"):
            AmsClient(handle.wsdl_url, signing_key=key_pem, signing_cert=cert_path)
        client = AmsClient(handle.wsdl_url, timeout=10, signing_key=key_pem, signing_cert=cert_path,
                           signing_key_password="s3cret")
        receipt = client.submit(new_batch()[2])
    assert receipt.batch_status == "ACCEPTED"
    assert b"xmldsig-more#ecdsa-sha256" in receipt.request_bytes


# --- TLS -----------------------------------------------------------------------------------------


def test_https_with_the_ca_bundle(tls_receiver: ReceiverHandle, pki: PkiPaths, rogue: PkiPaths,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls_receiver.url.startswith("https://127.0.0.1:")
    # requests lets REQUESTS_CA_BUNDLE override a session's CA bundle: the client must not.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(rogue.ca_cert))
    client = signed_client(tls_receiver.wsdl_url, pki, verify_tls=pki.ca_cert, cache=False)
    assert client.endpoint == tls_receiver.url
    _, record_id, xml = new_batch()
    assert client.submit(xml).batch_status == "ACCEPTED"
    assert tls_receiver.store.record(record_id).version == 1


def test_https_without_the_ca_is_refused(tls_receiver: ReceiverHandle, pki: PkiPaths) -> None:
    with pytest.raises(DeliveryError) as info:  # the WSDL is fetched over HTTPS
        signed_client(tls_receiver.wsdl_url, pki, cache=False)
    assert not isinstance(info.value, TransientDeliveryError)
    assert "certificate could not be verified" in str(info.value)
    # A WSDL from a file and an HTTPS endpoint: the POST is refused before anything is sent.
    client = signed_client(str(payload.WSDL_PATH), pki, endpoint=tls_receiver.url)
    with pytest.raises(DeliveryError, match="nothing was sent") as info:
        client.submit(new_batch()[2])
    assert not isinstance(info.value, (TransientDeliveryError, BusinessFault))
    assert tls_receiver.store.counts()["batches"] == 0
    with pytest.raises(requests.ConnectionError):  # plain HTTP is not served on the TLS port
        requests.get(tls_receiver.base_url.replace("https:", "http:") + "/_health", timeout=5)


def test_mutual_tls(tmp_path: Path, pki: PkiPaths) -> None:
    with start_in_thread(tmp_path / "m.sqlite", trust_certs=[pki.client_cert], tls_cert=pki.server_cert,
                         tls_key=pki.server_key, tls_client_ca=pki.ca_cert) as handle:
        wsdl = str(payload.WSDL_PATH)
        client = signed_client(wsdl, pki, endpoint=handle.url, verify_tls=pki.ca_cert,
                               client_cert=(pki.client_cert, pki.client_key))
        assert client.submit(new_batch()[2]).batch_status == "ACCEPTED"
        without = signed_client(wsdl, pki, endpoint=handle.url, verify_tls=pki.ca_cert)
        with pytest.raises(DeliveryError):
            without.submit(new_batch()[2])
        assert handle.store.counts()["batches"] == 1


def test_receiver_process_with_tls_and_trusted_certificate(tmp_path: Path, pki: PkiPaths) -> None:
    with ReceiverProcess(tmp_path / "proc.sqlite", trust_certs=[pki.client_cert], tls_cert=pki.server_cert,
                         tls_key=pki.server_key) as proc:
        assert proc.url.startswith("https://")
        client = signed_client(proc.wsdl_url, pki, verify_tls=pki.ca_cert, cache=False)
        _, record_id, xml = new_batch()
        assert client.submit(xml).batch_status == "ACCEPTED"
        refused(AmsClient(proc.wsdl_url, timeout=10, verify_tls=pki.ca_cert).submit, new_batch()[2])
        tail = proc.log_tail()
    assert "signatures required, 1 trusted certificate(s)" in tail and "https://" in tail
    assert "fault=1050" in tail and CPR_OK not in tail


# --- configuration -------------------------------------------------------------------------------


def test_client_from_config_with_pem_text(tls_receiver: ReceiverHandle, pki: PkiPaths) -> None:
    one_line = pki.client_key.read_text().strip().replace("\n", "\\n")  # as pasted into a JSON extra
    config = {"wsdl": tls_receiver.wsdl_url, "endpoint": tls_receiver.url, "timeout": "10",
              "private_key": one_line, "signing_cert": pki.client_cert.read_text(),
              "ca_bundle": pki.ca_cert.read_text()}
    client = client_from_config(config, env={}, cache=False)
    assert isinstance(client.signature, RequestSignature) and client.timeout == 10
    assert client.submit(new_batch()[2]).batch_status == "ACCEPTED"
    # Under the name signing_key (which Airflow shows in clear) PEM text is refused; a path is fine.
    config.pop("private_key")
    with pytest.raises(SecurityConfigError, match="signing_key holds PEM text") as info:
        client_from_config({**config, "signing_key": one_line}, env={})
    assert "'private_key'" in str(info.value) and "file path" in str(info.value) and "BEGIN" not in str(info.value)
    client = client_from_config({**config, "signing_key": str(pki.client_key)}, env={}, cache=False)
    assert client.submit(new_batch()[2]).batch_status == "ACCEPTED"


def test_client_from_config_with_environment_paths(tls_receiver: ReceiverHandle, pki: PkiPaths,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMS_SIGNING_KEY", str(pki.client_key))
    monkeypatch.setenv("AMS_SIGNING_CERT", str(pki.client_cert))
    monkeypatch.setenv("AMS_CA_BUNDLE", str(pki.ca_cert))
    client = client_from_config({"wsdl": tls_receiver.wsdl_url, "signing_key": ""}, cache=False)
    assert client.signature is not None and client.transport.session.verify == str(pki.ca_cert)
    assert client.submit(new_batch()[2]).batch_status == "ACCEPTED"
    # Without any keys the client is refused; with the switch for tests it is built unsigned, and the
    # receiver refuses it.
    unsigned = {"wsdl": tls_receiver.wsdl_url, "ca_bundle": str(pki.ca_cert)}
    with pytest.raises(SecurityConfigError, match="would not be signed"):
        client_from_config(unsigned, env={})
    plain = client_from_config(unsigned, env={"AMS_INSECURE_FOR_TESTS": "1"})
    assert plain.signature is None
    refused(plain.submit, new_batch()[2])


def test_configuration_errors_never_show_key_material(pki: PkiPaths, rogue: PkiPaths, tmp_path: Path) -> None:
    key_text = pki.client_key.read_text()
    secret_line = key_text.splitlines()[1]
    cases = [
        ({"signing_key": str(pki.client_key)}, "signing_cert is missing"),
        ({"signing_cert": str(pki.client_cert)}, "private_key (or signing_key) is missing"),
        ({"private_key": key_text, "signing_cert": rogue.client_cert.read_text()}, "does not belong"),
        ({"signing_key": str(tmp_path / "absent.pem"), "signing_cert": str(pki.client_cert)}, "no such file"),
        ({"private_key": key_text[:200], "signing_cert": str(pki.client_cert)}, "no readable private key"),
        ({"signing_key": key_text, "signing_cert": str(pki.client_cert)}, "shows that extra in clear"),
        ({"private_key": key_text, "signing_key": str(pki.client_key), "signing_cert": str(pki.client_cert)},
         "both private_key and signing_key are set"),
        ({"private_key": key_text, "signing_cert": str(pki.client_cert), "private_key_passphrase": "x",
          "signing_key_password": "y"}, "both private_key_passphrase and signing_key_password"),
        ({"ca_bundle": key_text}, "holds a private key"),
        ({"ca_bundle": str(pki.ca_cert), "verify_tls": "false"}, "choose one"),
        ({"client_cert": key_text}, "give a file path"),
        ({}, "has no 'wsdl'"),
    ]
    for extra, expected in cases:
        config = {"wsdl": str(payload.WSDL_PATH), **extra} if extra else {}
        with pytest.raises(SecurityConfigError) as info:
            client_from_config(config, env={})
        assert expected in str(info.value), (extra.keys(), str(info.value))
        assert secret_line not in str(info.value) and "BEGIN" not in str(info.value)
    assert security_settings({"verify_tls": "false"}, env={})["verify_tls"] is False
    assert load_pem(key_text.replace("\n", "\\n")) == key_text.encode()


# --- fail closed: no plain HTTP, no unsigned requests (unless the switch for tests is on) -----------


def test_plain_http_unsigned_and_unverified_are_refused_without_the_switch(
        receiver: ReceiverHandle, tls_receiver: ReceiverHandle, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_INSECURE_FOR_TESTS", raising=False)
    assert receiver.url.startswith("http://")
    cases = [
        (lambda: signed_client(receiver.wsdl_url, pki), "the WSDL URL http://"),
        (lambda: signed_client(str(payload.WSDL_PATH), pki, endpoint=receiver.url), "the endpoint http://"),
        # A WSDL file whose soap:address is plain HTTP (the project's WSDL says http://localhost/ams).
        (lambda: signed_client(str(payload.WSDL_PATH), pki), "the endpoint http://localhost/ams"),
        (lambda: AmsClient(tls_receiver.wsdl_url, timeout=10, verify_tls=pki.ca_cert), "would not be signed"),
        (lambda: signed_client(tls_receiver.wsdl_url, pki, verify_tls=False), "verification is off"),
        (lambda: client_from_config({"wsdl": receiver.wsdl_url, "signing_key": str(pki.client_key),
                                     "signing_cert": str(pki.client_cert)}, env={}), "plain HTTP"),
    ]
    for build, expected in cases:
        with pytest.raises(SecurityConfigError) as info:
            build()
        message = str(info.value)
        assert expected in message, message
        assert "AMS_INSECURE_FOR_TESTS=1" in message and "never in production" in message
    # Without the switch, HTTPS with a verified server and a signature works.
    client = signed_client(tls_receiver.wsdl_url, pki, verify_tls=pki.ca_cert, cache=False)
    assert client.insecure_for_tests is False and client.submit(new_batch()[2]).batch_status == "ACCEPTED"
    assert receiver.store.counts()["batches"] == 0


def test_the_insecure_switch_allows_it_and_warns_once(receiver: ReceiverHandle, pki: PkiPaths,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import delivery.client as client_module

    monkeypatch.setattr(client_module, "_INSECURE_WARNED", set())
    monkeypatch.setenv("AMS_INSECURE_FOR_TESTS", "0")
    with pytest.raises(SecurityConfigError):
        AmsClient(receiver.wsdl_url, timeout=10)
    caplog.set_level(logging.WARNING, logger="delivery.client")
    for _ in range(3):
        client = AmsClient(receiver.wsdl_url, timeout=10, insecure_for_tests=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "INSECURE" in warnings[0] and "plain HTTP" in warnings[0], warnings
    assert "would not be signed" in warnings[0]
    refused(client.submit, new_batch()[2])  # the receiver itself still wants a signature
    monkeypatch.setenv("AMS_INSECURE_FOR_TESTS", "1")
    assert signed_client(receiver.wsdl_url, pki).submit(new_batch()[2]).batch_status == "ACCEPTED"
    assert client_from_config({"wsdl": receiver.wsdl_url}, env={"AMS_INSECURE_FOR_TESTS": "1"}).signature is None


def test_receiver_connection_defaults_to_https_with_a_masked_private_key(
        tls_receiver: ReceiverHandle, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Airflow connection without a scheme: HTTPS; the key as PEM text under private_key."""
    import json

    from ams_reporting.hooks import AmsReceiverHook

    monkeypatch.delenv("AMS_INSECURE_FOR_TESTS", raising=False)
    host, port = tls_receiver.base_url.split("://", 1)[1].rsplit(":", 1)
    extra = {"timeout": 10, "private_key": pki.client_key.read_text(), "signing_cert": str(pki.client_cert),
             "ca_bundle": str(pki.ca_cert)}
    conn = {"conn_type": "http", "host": host, "port": int(port), "schema": "ams", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AMS_RECEIVER", json.dumps(conn))
    client = AmsReceiverHook().get_client()
    assert client.endpoint == tls_receiver.url and client.endpoint.startswith("https://")
    assert client.submit(new_batch()[2]).batch_status == "ACCEPTED"
    monkeypatch.setenv("AIRFLOW_CONN_AMS_RECEIVER", json.dumps({**conn, "extra": {**extra, "scheme": "http"}}))
    with pytest.raises(SecurityConfigError, match="plain HTTP"):
        AmsReceiverHook().get_client()


def test_airflow_masks_the_key_extras() -> None:
    """Airflow's secrets masker hides connection extras by name: the key and its password must use
    names it hides (it matches a sensitive word anywhere in the name); signing_key is shown in clear,
    which is why PEM text is refused under that name."""
    import airflow  # noqa: F401  (configures the masker's sensitive names)
    from airflow.sdk._shared.secrets_masker import redact, should_hide_value_for_key

    from delivery.security import PRIVATE_KEY, PRIVATE_KEY_PASSPHRASE

    for name in (PRIVATE_KEY, PRIVATE_KEY_PASSPHRASE, "signing_key_password"):
        assert should_hide_value_for_key(name), name
    assert not should_hide_value_for_key("signing_key") and not should_hide_value_for_key("signing_cert")
    shown = redact({PRIVATE_KEY: "pem text of the key", PRIVATE_KEY_PASSPHRASE: "s3cret-pass",
                    "signing_cert": "/etc/ams/cert.pem"})
    assert shown == {PRIVATE_KEY: "***", PRIVATE_KEY_PASSPHRASE: "***", "signing_cert": "/etc/ams/cert.pem"}


def test_receiver_security_options_are_checked(tmp_path: Path, pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        start_in_thread(tmp_path / "x.sqlite", tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="not both"):
        start_in_thread(tmp_path / "x.sqlite", trust_certs=[pki.client_cert], verify=lambda e, h: None)
    with pytest.raises(ValueError, match="at least one"):
        SignatureVerifier([])
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        SignatureVerifier([tmp_path / "not-a-cert.pem"])
    with pytest.raises(ValueError, match="absent.pem"):
        SignatureVerifier([tmp_path / "absent.pem"])
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "receiver.server", "--help"], capture_output=True, text=True,
                         timeout=30, check=True, cwd=REPO_ROOT)
    assert all(opt in out.stdout for opt in ("--trust-cert", "--tls-cert", "--tls-key", "--tls-client-ca"))


def test_trial_pki_command_names_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m delivery.security DIR --server-name ams-receiver` (make trial-pki): the TLS certificate
    is valid for the compose service's host name, and the keys are readable by their owner only."""
    from cryptography import x509

    from delivery.security import main

    assert main([str(tmp_path / "trial"), "--server-name", "ams-receiver", "--days", "2"]) == 0
    assert "Wrote a test PKI" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "trial" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert set(names) == {"localhost", "ams-receiver"}
    assert (tmp_path / "trial" / "client-key.pem").stat().st_mode & 0o077 == 0


def test_no_private_key_is_written_inside_the_repository(pki: PkiPaths, rogue: PkiPaths) -> None:
    for paths in (pki, rogue):
        assert not paths.directory.resolve().is_relative_to(REPO_ROOT)
        assert paths.client_key.stat().st_mode & 0o077 == 0 and paths.server_key.stat().st_mode & 0o077 == 0
    marker = b"PRIVATE " + b"KEY-----"
    found = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "node_modules", "__pycache__", ".ruff_cache",
                                                ".pytest_cache", ".mypy_cache", ".hypothesis")]
        for name in files:
            path = Path(folder, name)
            try:
                if path.stat().st_size < 1_000_000 and marker in path.read_bytes():
                    found.append(str(path.relative_to(REPO_ROOT)))
            except OSError:
                continue
    assert found == []

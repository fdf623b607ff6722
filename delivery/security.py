"""WS-Security for the delivery client: X.509 request signatures (SHA-256), PEM loading, test PKI.

Every request to the agency is signed with the municipality's signing certificate: a
wsse:BinarySecurityToken carries the certificate, and a ds:Signature (RSA-SHA256 or ECDSA-SHA256,
SHA-256 digests, exclusive C14N) covers the soap:Body and a wsu:Timestamp. zeep's signature classes
default to SHA-1; `RequestSignature` fixes the algorithms.

Responses: the agency's answers (and the local receiver's) are not signed. zeep's signature classes
would verify every answer with the client's own certificate and fail on an unsigned one, so
`RequestSignature.verify` checks an answer only when a certificate for the answers is configured
(`response_cert`): a signed answer must then verify against it, and an unsigned answer is refused
only with `require_signed_response=True`. Faults are never verified (the client checks for a fault
first, STACK.md).

Keys and certificates come from configuration as file paths or as PEM text (an environment variable
or an Airflow connection extra; "\\n" escapes are undone). In a connection's extras the key goes
under `private_key` and its password under `private_key_passphrase`, names Airflow's secrets masker
hides; `signing_key` (shown in clear) is accepted as a file path only. Error messages name the setting
and the path, never the PEM content. `generate_test_pki` makes a throw-away CA, a TLS server
certificate for 127.0.0.1/localhost (and any other server names given) and a client signing
certificate, for tests, the demo and a trial deployment: write it to a temporary or ignored folder,
never into the repository (`python -m delivery.security DIR --server-name NAME` writes one).
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from zeep import ns
from zeep.exceptions import SignatureVerificationFailed
from zeep.wsse.signature import BinarySignature, MemorySignature, _make_verify_key, _verify_envelope_with_key
from zeep.wsse.utils import WSU, ensure_id, get_security_header, get_timestamp

log = logging.getLogger(__name__)

#: What a key or certificate may be given as: a path, or the PEM text itself.
PemSource = str | bytes | os.PathLike[str]

#: Environment variables read by `client_settings_from_env` / `delivery.client.client_from_config`.
ENV_SIGNING_KEY = "AMS_SIGNING_KEY"
ENV_SIGNING_CERT = "AMS_SIGNING_CERT"
ENV_SIGNING_KEY_PASSWORD = "AMS_SIGNING_KEY_PASSWORD"
ENV_CA_BUNDLE = "AMS_CA_BUNDLE"

#: Connection extras for the signing key and its password. Airflow's secrets masker hides an extra
#: whose name contains "private_key" or "passphrase"; it shows "signing_key" in clear, so that name
#: is accepted for a file path only.
PRIVATE_KEY = "private_key"
PRIVATE_KEY_PASSPHRASE = "private_key_passphrase"

DIGEST_SHA256 = xmlsec.Transform.SHA256
TIMESTAMP_TTL = 300  # seconds a signed request stays valid (wsu:Timestamp Expires)


class SecurityConfigError(ValueError):
    """A key, certificate or TLS setting that cannot be used. The message names the setting (and the
    path), never key material."""


# --------------------------------------------------------------------------------------------------
# PEM loading
# --------------------------------------------------------------------------------------------------


def is_pem_text(value: object) -> bool:
    if isinstance(value, bytes):
        return b"-----BEGIN " in value
    return isinstance(value, str) and "-----BEGIN " in value


def load_pem(value: PemSource, what: str = "PEM") -> bytes:
    """The PEM bytes of `value`: PEM text (str or bytes) as is, anything else read as a file path."""
    if is_pem_text(value):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if "\\n" in text and "\n" not in text.strip():  # one-line PEM from an env var or a JSON extra
            text = text.replace("\\n", "\n")
        return text.strip().encode("ascii") + b"\n"
    if isinstance(value, bytes):
        raise SecurityConfigError(f"{what}: the value is neither PEM text nor a file path")
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecurityConfigError(f"{what}: no such file: {path}") from None
    except OSError as exc:
        raise SecurityConfigError(f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"{what}: {path} is not a PEM file")
    return data


def load_certificate(value: PemSource, what: str = "certificate") -> x509.Certificate:
    """The first certificate of a PEM path or text."""
    data = load_pem(value, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise SecurityConfigError(f"{what}: no readable X.509 certificate in the PEM"
                                  f"{'' if is_pem_text(value) else f' file {value!s}'}") from None


def load_private_key(value: PemSource, password: bytes | str | None = None,
                     what: str = "signing key") -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    data = load_pem(value, what)
    secret = password.encode() if isinstance(password, str) else password
    where = "" if is_pem_text(value) else f" in {value!s}"
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:  # encrypted without a password, or a password for an unencrypted key
        raise SecurityConfigError(f"{what}: the private key{where} is encrypted and needs a password "
                                  "(or a password was given for an unencrypted key)") from None
    except ValueError:
        raise SecurityConfigError(f"{what}: no readable private key{where} (or a wrong password)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SecurityConfigError(f"{what}: only RSA and EC keys can sign, not {type(key).__name__}")
    return key


def signature_method_for(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Any:
    """The SHA-256 signature transform for a key type (RSA-SHA256 or ECDSA-SHA256)."""
    return xmlsec.Transform.ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else xmlsec.Transform.RSA_SHA256


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as colon-separated hex (for logs and messages)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def describe_certificate(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else cert.subject.rfc4514_string()[:120]
    return f"CN={common_name}, SHA-256 {fingerprint(cert)[:23]}..."


# --------------------------------------------------------------------------------------------------
# The signature
# --------------------------------------------------------------------------------------------------


_X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
_BASE64_BINARY = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"


def _exc_c14n(node: etree._Element) -> bytes:
    """Exclusive C14N without comments of a subtree: what a `#id` reference with the exc-c14n transform
    digests, and what an exc-c14n CanonicalizationMethod signs (XML-DSig 4.3.3.3, 6.6.1)."""
    return etree.tostring(node, method="c14n", exclusive=True, with_comments=False)


def _base64_lines(data: bytes) -> str:
    """Base64 in lines of 64 characters, as xmlsec writes it."""
    text = base64.b64encode(data).decode("ascii")
    return "\n".join(text[i:i + 64] for i in range(0, len(text), 64))


class RequestSignature(BinarySignature):
    """zeep's BinarySignature with SHA-256 algorithms, a signed wsu:Timestamp, and response
    verification only where it makes sense (see the module docstring).

    The signature is the one zeep and xmlsec make (the same template, references, transforms and
    BinarySecurityToken), but its digests and signature value are computed here: lxml canonicalises
    each signed node once (a 5,000-record Body in about a quarter of the time xmlsec's node-set
    canonicalisation takes), hashlib digests it, and `cryptography` signs the canonical SignedInfo
    with the key loaded once. RSA PKCS#1 v1.5 is deterministic: the signature value is byte for byte
    xmlsec's (tests/test_send_performance.py). `xmlsec_signing=True` signs with xmlsec as zeep does.
    """

    def __init__(self, key_data: bytes, cert_data: bytes, password: bytes | str | None = None, *,
                 signature_method: Any = None, digest_method: Any = DIGEST_SHA256,
                 timestamp_ttl: int | None = TIMESTAMP_TTL, response_cert: bytes | None = None,
                 require_signed_response: bool = False, xmlsec_signing: bool = False) -> None:
        secret = password.encode() if isinstance(password, str) else password
        key = load_private_key(key_data, secret)
        if signature_method is None:
            signature_method = signature_method_for(key)
        # BinarySignature's own __init__ reads files; the key and certificate are in memory here.
        MemorySignature.__init__(self, key_data, cert_data, secret, signature_method, digest_method)
        self.timestamp_ttl = timestamp_ttl
        self.response_cert = response_cert
        self.require_signed_response = require_signed_response
        self._key = key
        self._cert_base64 = _base64_lines(load_certificate(cert_data).public_bytes(serialization.Encoding.DER)) + "\n"
        supported = ((signature_method == xmlsec.Transform.RSA_SHA256 and isinstance(key, rsa.RSAPrivateKey))
                     or (signature_method == xmlsec.Transform.ECDSA_SHA256
                         and isinstance(key, ec.EllipticCurvePrivateKey)))
        self.xmlsec_signing = xmlsec_signing or not supported or digest_method != DIGEST_SHA256

    def apply(self, envelope: etree._Element, headers: dict[str, str]) -> tuple[etree._Element, dict[str, str]]:
        if self.timestamp_ttl:
            security = get_security_header(envelope)
            if security.find(f"{{{ns.WSU}}}Timestamp") is None:
                now = dt.datetime.now(dt.UTC)
                security.append(WSU.Timestamp(
                    WSU.Created(get_timestamp(now, zulu_timestamp=True)),
                    WSU.Expires(get_timestamp(now + dt.timedelta(seconds=self.timestamp_ttl), zulu_timestamp=True)),
                ))
        if self.xmlsec_signing:
            return super().apply(envelope, headers)  # signs the Body and the Timestamp
        self._sign(envelope)
        return envelope, headers

    def _sign(self, envelope: etree._Element) -> None:
        """zeep's _sign_envelope_with_key_binary (the Body and the Timestamp signed, the certificate in a
        BinarySecurityToken), with the digests and the signature value computed here."""
        dsig = ns.DS
        signature = xmlsec.template.create(envelope, xmlsec.Transform.EXCL_C14N, self.signature_method)
        key_info = xmlsec.template.ensure_key_info(signature)
        key_info.text = "\n"  # as the X509Data zeep has xmlsec fill in, then moves to the token, leaves it
        security = get_security_header(envelope)
        security.insert(0, signature)
        targets = [envelope.find(f"{{{etree.QName(envelope).namespace}}}Body")]
        timestamp = security.find(f"{{{ns.WSU}}}Timestamp")
        if timestamp is not None:
            targets.append(timestamp)
        for target in targets:
            ref = xmlsec.template.add_reference(signature, self.digest_method, uri="#" + ensure_id(target))
            xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
            digest = hashlib.sha256(_exc_c14n(target)).digest()
            ref.find(f"{{{dsig}}}DigestValue").text = base64.b64encode(digest).decode("ascii")
        signed_info = _exc_c14n(signature.find(f"{{{dsig}}}SignedInfo"))
        if isinstance(self._key, rsa.RSAPrivateKey):
            value = self._key.sign(signed_info, padding.PKCS1v15(), hashes.SHA256())
        else:  # XML-DSig's ECDSA value is r || s, each as long as the curve's order (RFC 4050)
            r, s = decode_dss_signature(self._key.sign(signed_info, ec.ECDSA(hashes.SHA256())))
            size = (self._key.curve.key_size + 7) // 8
            value = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        signature.find(f"{{{dsig}}}SignatureValue").text = _base64_lines(value)
        token_ref = etree.SubElement(key_info, f"{{{ns.WSSE}}}SecurityTokenReference")
        ref = etree.SubElement(token_ref, f"{{{ns.WSSE}}}Reference", {"ValueType": _X509V3})
        token = etree.Element(f"{{{ns.WSSE}}}BinarySecurityToken",
                              {"ValueType": _X509V3, "EncodingType": _BASE64_BINARY})
        ref.attrib["URI"] = "#" + ensure_id(token)
        token.text = self._cert_base64
        security.insert(1, token)

    def verify(self, envelope: etree._Element) -> etree._Element:
        signature = envelope.find(f"{{{ns.SOAP_ENV_11}}}Header/{{{ns.WSSE}}}Security/{{{ns.DS}}}Signature")
        if signature is None:
            if self.require_signed_response:
                raise SignatureVerificationFailed("the answer is not signed")
            return envelope
        if self.response_cert is None:
            log.debug("the answer is signed, but no certificate for answers is configured: not verified")
            return envelope
        _verify_envelope_with_key(envelope, _make_verify_key(self.response_cert))
        return envelope


def make_signature(signing_key: PemSource, signing_cert: PemSource, password: bytes | str | None = None, *,
                   response_cert: PemSource | None = None, require_signed_response: bool = False,
                   timestamp_ttl: int | None = TIMESTAMP_TTL) -> RequestSignature:
    """The zeep `wsse` object that signs requests with SHA-256, from PEM paths or PEM text. Checks that
    the key and the certificate belong together, and warns when the certificate is not valid now."""
    key = load_private_key(signing_key, password)
    key_pem = load_pem(signing_key, "signing key")
    cert_pem = load_pem(signing_cert, "signing certificate")
    cert = load_certificate(cert_pem, "signing certificate")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, public)
            != key.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise SecurityConfigError("the signing key does not belong to the signing certificate "
                                  f"({describe_certificate(cert)})")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        log.warning("the signing certificate (%s) is not valid now (valid %s to %s): the agency will refuse "
                    "the requests", describe_certificate(cert), cert.not_valid_before_utc, cert.not_valid_after_utc)
    if password is not None:
        # xmlsec wants the key unencrypted in memory; it never leaves this process.
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    response_pem = load_pem(response_cert, "response certificate") if response_cert is not None else None
    return RequestSignature(key_pem, cert_pem, None, signature_method=signature_method_for(key),
                            response_cert=response_pem, require_signed_response=require_signed_response,
                            timestamp_ttl=timestamp_ttl)


# --------------------------------------------------------------------------------------------------
# TLS settings for requests
# --------------------------------------------------------------------------------------------------

_TEMP_FILES: list[str] = []


def _remove_temp_files() -> None:
    for name in _TEMP_FILES:
        try:
            os.unlink(name)
        except OSError:
            pass


atexit.register(_remove_temp_files)


def ca_bundle_path(value: PemSource) -> str:
    """A CA bundle as a path for requests' `verify`: a path as is (checked), PEM text written to a
    temporary file (certificates only, nothing secret; removed at exit)."""
    if not is_pem_text(value):
        path = Path(value).expanduser()  # type: ignore[arg-type]
        if not path.is_file():
            raise SecurityConfigError(f"CA bundle: no such file: {path}")
        return str(path)
    data = load_pem(value, "CA bundle")
    if b"PRIVATE KEY" in data:
        raise SecurityConfigError("CA bundle: the PEM holds a private key; give only certificates")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SecurityConfigError("CA bundle: no readable certificate in the PEM text") from None
    fd, name = tempfile.mkstemp(prefix="ams-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    _TEMP_FILES.append(name)
    return name


def tls_verify_setting(value: bool | str | os.PathLike[str] | None) -> bool | str | None:
    """requests' `verify` from a bool, a CA bundle path, PEM text, or the words true/false."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0", ""):
        return value.strip().lower() in ("true", "yes", "1", "")
    return ca_bundle_path(value)


def configure_session(session: requests.Session, verify: bool | str | os.PathLike[str] | None = None,
                      client_cert: str | os.PathLike[str] | tuple[Any, Any] | None = None) -> requests.Session:
    """Set requests' `verify` and `cert` on a session, and keep that `verify` when REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE is set: requests lets those variables override a session's CA bundle (requests
    issue #3829), which would silently drop the configured CA. Proxies from the environment still apply."""
    if verify is not None:
        session.verify = os.fspath(verify) if isinstance(verify, os.PathLike) else verify
    if client_cert is not None:
        session.cert = (tuple(os.fspath(p) for p in client_cert) if isinstance(client_cert, tuple)  # type: ignore[assignment]
                        else os.fspath(client_cert))
    if getattr(session, "_ams_verify_pinned", False):
        return session
    original = session.merge_environment_settings

    def merge_environment_settings(url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        settings = original(url, proxies, stream, verify, cert)
        if verify is None and session.verify is not True:  # a CA path or False, set on purpose
            settings["verify"] = session.verify
        return settings

    session.merge_environment_settings = merge_environment_settings  # type: ignore[method-assign]
    session._ams_verify_pinned = True  # type: ignore[attr-defined]
    return session


def _setting(config: Mapping[str, Any], key: str, env: Mapping[str, str], env_name: str | None) -> Any:
    value = config.get(key)
    if value in (None, "") and env_name:
        value = env.get(env_name) or None
    return value


def _one_of(config: Mapping[str, Any], names: tuple[str, str]) -> tuple[str, Any]:
    """The value of whichever of two alternative keys is set: (key, value); both set is an error."""
    given = [(name, config.get(name)) for name in names if config.get(name) not in (None, "")]
    if len(given) > 1:
        raise SecurityConfigError(f"both {names[0]} and {names[1]} are set: give one of them")
    return given[0] if given else (names[0], None)


def _signing_key(config: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """The signing key from `private_key` (PEM text or a path: Airflow masks the extra by its name) or
    `signing_key` (a file path only: Airflow shows that extra in clear), else AMS_SIGNING_KEY."""
    name, key = _one_of(config, (PRIVATE_KEY, "signing_key"))
    if name == "signing_key" and is_pem_text(key):
        raise SecurityConfigError(
            "signing_key holds PEM text, and Airflow shows that extra in clear in the UI and the logs: put "
            f"the key under the extra '{PRIVATE_KEY}' (masked), give signing_key as a file path, or keep the key "
            f"in a secrets backend or the environment variable {ENV_SIGNING_KEY}")
    return key if key is not None else env.get(ENV_SIGNING_KEY) or None


def security_settings(config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """AmsClient's security keyword arguments from a config mapping (an Airflow connection's extras)
    with the environment as fallback: private_key (PEM text or path) or signing_key (a path) /
    AMS_SIGNING_KEY, signing_cert / AMS_SIGNING_CERT, private_key_passphrase (or signing_key_password) /
    AMS_SIGNING_KEY_PASSWORD, ca_bundle / AMS_CA_BUNDLE (path or PEM text), verify_tls (bool, default
    true), client_cert and client_key (paths, for mutual TLS)."""
    env = os.environ if env is None else env
    key = _signing_key(config, env)
    cert = _setting(config, "signing_cert", env, ENV_SIGNING_CERT)
    if bool(key) != bool(cert):
        missing = "signing_cert" if key else f"{PRIVATE_KEY} (or signing_key)"
        raise SecurityConfigError(f"{missing} is missing: give both {PRIVATE_KEY} and signing_cert (or "
                                  f"{ENV_SIGNING_KEY} and {ENV_SIGNING_CERT}), or neither")
    password = _one_of(config, (PRIVATE_KEY_PASSPHRASE, "signing_key_password"))[1]
    ca_bundle = _setting(config, "ca_bundle", env, ENV_CA_BUNDLE)
    verify = tls_verify_setting(config.get("verify_tls"))
    if ca_bundle:
        if verify is False:
            raise SecurityConfigError("ca_bundle is set but verify_tls is false: choose one")
        verify = ca_bundle_path(ca_bundle)
    client_cert = config.get("client_cert") or None
    client_key = config.get("client_key") or None
    if client_key and not client_cert:
        raise SecurityConfigError("client_key is set without client_cert")
    for name, value in (("client_cert", client_cert), ("client_key", client_key)):
        if value and is_pem_text(value):
            raise SecurityConfigError(f"{name}: give a file path (requests reads the TLS client key from a file)")
    return {
        "signing_key": key,
        "signing_cert": cert,
        "signing_key_password": password if password is not None else env.get(ENV_SIGNING_KEY_PASSWORD) or None,
        "verify_tls": verify,
        "client_cert": (str(client_cert), str(client_key)) if client_key else client_cert,
    }


# --------------------------------------------------------------------------------------------------
# Test PKI
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PkiPaths:
    """Files written by generate_test_pki (keys are unencrypted PEM, mode 0600)."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DK"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AMS reporting test PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, issuer_key: rsa.RSAPrivateKey,
           days: int, *, ca: bool = False, server: bool = False, client: bool = False,
           server_names: tuple[str, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=client, key_encipherment=server, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), *(x509.DNSName(n) for n in server_names),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]),
            critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    if secret:
        os.chmod(path, 0o600)
    return path


def generate_test_pki(directory: str | os.PathLike[str], *, name: str = "AMS test", days: int = 30,
                      key_size: int = 2048, server_names: Iterable[str] = ()) -> PkiPaths:
    """A throw-away PKI in `directory`: a CA (its key is not written), a TLS server certificate for
    localhost/127.0.0.1/::1 (and the DNS names `server_names`) and a client signing certificate, each
    with its key. For tests, the demo and a trial only: never commit the folder."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)

    def new_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)

    ca_key, server_key, client_key = new_key(), new_key(), new_key()
    ca_name = _name(f"{name} CA")
    ca_cert = _issue(f"{name} CA", ca_key, ca_name, ca_key, days, ca=True)
    names = tuple(n for n in server_names if n and n != "localhost")
    server_cert = _issue(names[0] if names else "localhost", server_key, ca_name, ca_key, days, server=True,
                         server_names=names)
    client_cert = _issue(f"{name} municipality signing", client_key, ca_name, ca_key, days, client=True)

    def key_pem(key: rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    return PkiPaths(
        directory=folder,
        ca_cert=_write(folder / "ca.pem", ca_cert.public_bytes(pem)),
        server_cert=_write(folder / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(folder / "server-key.pem", key_pem(server_key), secret=True),
        client_cert=_write(folder / "client.pem", client_cert.public_bytes(pem)),
        client_key=_write(folder / "client-key.pem", key_pem(client_key), secret=True),
    )


def main(argv: list[str] | None = None) -> int:
    """Write a throw-away PKI for a trial deployment (docker-compose's trial receiver)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m delivery.security",
                                     description="Write a throw-away test PKI (CA, TLS server and signing "
                                                 "certificates with their keys). For tests and trials only.")
    parser.add_argument("directory", help="folder to write into (never one that is committed)")
    parser.add_argument("--server-name", action="append", default=[], metavar="NAME",
                        help="DNS name of the TLS server certificate besides localhost (repeatable)")
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    paths = generate_test_pki(args.directory, name="AMS trial", days=args.days, server_names=args.server_name)
    print(f"Wrote a test PKI to {paths.directory}: ca.pem, server.pem, server-key.pem, client.pem, "
          "client-key.pem (keys readable by the owner only)")
    return 0


__all__ = [
    "ENV_CA_BUNDLE",
    "ENV_SIGNING_CERT",
    "ENV_SIGNING_KEY",
    "ENV_SIGNING_KEY_PASSWORD",
    "PRIVATE_KEY",
    "PRIVATE_KEY_PASSPHRASE",
    "PemSource",
    "PkiPaths",
    "RequestSignature",
    "SecurityConfigError",
    "ca_bundle_path",
    "configure_session",
    "describe_certificate",
    "fingerprint",
    "generate_test_pki",
    "is_pem_text",
    "load_certificate",
    "load_pem",
    "load_private_key",
    "make_signature",
    "security_settings",
    "tls_verify_setting",
]


if __name__ == "__main__":
    raise SystemExit(main())

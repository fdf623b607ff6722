"""The file channel (§ 51): a batch delivered as one XML file in the agency's SFTP inbox.

`SftpFileDropClient` has the interface of `delivery.client.AmsClient` (`submit`, `get_batch_receipt`),
so `cycle.pipeline.deliver_area` and its ledger work unchanged:

- `submit(payload)` uploads the batch as `<remote_dir>/<batch_id>.xml`, atomically: the bytes go to
  `<batch_id>.xml.part` and are then renamed (SFTP rename never replaces an existing file). When
  `<batch_id>.xml` is already there with the same SHA-256, nothing is uploaded (idempotent on the
  batch id); with other content it is refused like the web service refuses a reused batch id (1030).
  Nothing else is written on the server.
- `get_batch_receipt(batch_id)` looks the file up: if it is there, the batch arrived (an in-doubt
  batch is recognised, not uploaded again) and the same receipt is returned; otherwise None.

A file drop has no answer from the agency, so the receipt is made here: every record of the file
ACCEPTED, a deterministic message id (uuid5 of batch id and SHA-256), the event date is the file's
modification time on the server, `request_bytes` the exact file, `response_bytes` a small
`FileDropReceipt` XML (below). The agency's later processing of the file is outside this channel.

Errors map to the delivery error classes: connection refused/reset/dropped and time-outs are
TransientDeliveryError (retried by the pipeline, which asks first); permission denied on the inbox is
AccessClosed (§ 48); a wrong host key, a refused login or a missing inbox folder are configuration
problems (DeliveryError, not retried). Messages carry no payload content.

Connection: an Airflow SFTP connection (default `ams_sftp`) through the SFTP provider's SFTPHook
(host, port, login, extra `key_file` or `private_key`, `host_key` or `no_host_key_check`,
`conn_timeout`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from delivery.client import AccessClosed, BusinessFault, DeliveryError, Receipt, RecordReceipt, TransientDeliveryError
from transforms.identifiers import mask_cpr
from transforms.payload import (
    ERR_ACCESS_CLOSED,
    ERR_BATCH_REUSED,
    ERR_SCHEMA,
    GUID_PATTERN,
    PayloadError,
    q,
    validate_payload,
    version_of,
    xml_parser,
)
from transforms.registry import RECORD_ID_ELEMENT

log = logging.getLogger(__name__)

#: Namespace of the FileDropReceipt this client writes into the archive (not part of the agency's XSD).
RECEIPT_NAMESPACE = "urn:dk:ams:employment-reporting:file-drop:v1"
#: uuid5 namespace of file-drop message ids: uuid5(ns, "<batch_id>:<sha256>").
MESSAGE_NAMESPACE = uuid.UUID("6a0f3c52-51d5-5b8e-9a4e-5f0c2d1e5151")
DEFAULT_CONN_ID = "ams_sftp"
DEFAULT_REMOTE_DIR = "inbox"
PART_SUFFIX = ".part"

_GUID = re.compile(GUID_PATTERN)
_CPR_LIKE = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")


def _safe(text: object) -> str:
    """An error text fit for logs: CPR-like numbers masked, one line, capped."""
    cleaned = _CPR_LIKE.sub(lambda m: mask_cpr(m.group(0)), " ".join(str(text).split()))
    return cleaned[:500]


def message_id(batch_id: str, digest: str) -> str:
    """The receipt's message id: the same file gives the same id on every call."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{batch_id}:{digest}"))


class InboxClosed(AccessClosed):
    """The SFTP server refused access to the inbox (permission denied): treated as closed access (§ 48)."""

    def __init__(self, text: str, *, where: str = "", **kwargs: Any) -> None:
        DeliveryError.__init__(
            self, f"{where or 'SFTP'}: permission denied ({text}); the agency has closed access to the inbox or "
            "not opened it to us; deliveries are paused until the agency reopens it (§ 48)", **kwargs)
        self.code = ERR_ACCESS_CLOSED
        self.text = text


def _parse_batch(payload: bytes, where: str) -> tuple[str, list[str], str]:
    """(batch id, record ids, data area) of a SubmitBatchRequest."""
    try:
        root = etree.fromstring(payload, xml_parser())
    except etree.XMLSyntaxError as exc:
        raise DeliveryError(f"{where}: the batch is not well-formed XML (line {exc.lineno}); it was not sent",
                            operation="SubmitBatch") from None
    version = version_of(root)  # the batch's interface version (§ 49): the file keeps its namespace
    if etree.QName(root).localname != "SubmitBatchRequest" or version is None:
        raise DeliveryError(f"{where}: the file's root element is {etree.QName(root).localname}, not the "
                            "SubmitBatchRequest of a known interface version", operation="SubmitBatch")
    ns = version.namespace
    header = root.find(q("BatchHeader", ns))
    batch_id = (header.findtext(q("BatchIdentifier", ns)) if header is not None else "") or ""
    area = (header.findtext(q("DataArea", ns)) if header is not None else "") or ""
    records = root.find(q("Records", ns))
    ids = [] if records is None else [
        (child.findtext(q(RECORD_ID_ELEMENT, ns)) or "").strip() for child in records if isinstance(child.tag, str)]
    return batch_id.strip(), ids, area.strip()


def _check_batch_id(batch_id: str, where: str) -> str:
    if not _GUID.fullmatch(batch_id or ""):
        raise DeliveryError(f"{where}: the batch identifier is not a GUID; it cannot name a file",
                            operation="SubmitBatch")
    return batch_id


def receipt_document(*, message: str, batch_id: str, area: str, file_name: str, remote_path: str, digest: str,
                     size: int, records: int, delivered: datetime) -> bytes:
    """The FileDropReceipt stored in the archive as the batch's "response"."""
    root = etree.Element(f"{{{RECEIPT_NAMESPACE}}}FileDropReceipt", nsmap={None: RECEIPT_NAMESPACE})
    for tag, text in (
        ("MessageIdentifier", message),
        ("BatchIdentifier", batch_id),
        ("DataArea", area),
        ("Channel", "SFTP (§ 51)"),
        ("FileName", file_name),
        ("RemotePath", remote_path),
        ("SHA256", digest),
        ("SizeBytes", str(size)),
        ("RecordCount", str(records)),
        ("DeliveredDateTime", delivered.astimezone(UTC).isoformat(timespec="seconds")),
    ):
        etree.SubElement(root, f"{{{RECEIPT_NAMESPACE}}}{tag}").text = text
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


class SftpFileDropClient:
    """Delivers batches as files to the agency's SFTP inbox; the interface of delivery.client.AmsClient."""

    # One batch at a time (cycle.pipeline._Lanes): the inbox's receipts are read by file listing, and the
    # channel is for small municipalities (§ 51).
    parallel_safe = False

    def __init__(self, sftp_conn_id: str = DEFAULT_CONN_ID, remote_dir: str = DEFAULT_REMOTE_DIR,
                 timeout: float = 30.0) -> None:
        """`remote_dir`: the inbox, relative to the login folder or absolute. `timeout`: seconds for the
        connection (unless the connection's extra sets `conn_timeout`) and for every SFTP request."""
        self.sftp_conn_id = sftp_conn_id
        self.remote_dir = (remote_dir or "").rstrip("/") or ("/" if (remote_dir or "").startswith("/") else "")
        self.timeout = timeout
        self._hook: Any = None

    # ---------------------------------------------------------------------------------------------
    def submit(self, payload: bytes) -> Receipt:
        """Upload one SubmitBatchRequest as `<batch_id>.xml` (idempotent on the batch id); returns the receipt."""
        batch_id, record_ids, area = _parse_batch(payload, "SFTP upload")
        _check_batch_id(batch_id, "SFTP upload")
        try:
            validate_payload(payload)
        except PayloadError as exc:  # the file drop gives no answer: refuse here what the agency would refuse
            raise BusinessFault(ERR_SCHEMA, "the batch does not validate against the XSD; it was not uploaded: "
                                + ("; ".join(exc.problems[:5]) or str(exc)), where=f"SFTP upload of batch {batch_id}",
                                operation="SubmitBatch") from None
        where = f"SFTP upload of batch {batch_id} to {self._describe('SubmitBatch')}"
        digest = hashlib.sha256(payload).hexdigest()
        final, part = self._path(f"{batch_id}.xml"), self._path(f"{batch_id}.xml{PART_SUFFIX}")
        started = time.monotonic()
        with self._session("SubmitBatch", where, payload) as sftp:
            existing = self._stat(sftp, final)
            if existing is not None:
                return self._existing(sftp, final, batch_id, digest, where, payload, "already in the inbox")
            self._hook.store_file(part, io.BytesIO(payload), confirm=True)
            try:
                sftp.rename(part, final)  # SFTP rename does not replace an existing file
            except PermissionError:
                self._remove_quietly(sftp, part)
                raise
            except OSError:
                if self._stat(sftp, final) is None:
                    raise
                self._remove_quietly(sftp, part)  # another upload of the same batch won the race
                return self._existing(sftp, final, batch_id, digest, where, payload, "placed by a concurrent upload")
            attrs = self._stat(sftp, final)
            if attrs is None or (attrs.st_size is not None and attrs.st_size != len(payload)):
                raise TransientDeliveryError(f"{where}: the file is not in the inbox with the size sent after the "
                                             "rename; ask for its receipt before sending it again",
                                             operation="SubmitBatch", request_bytes=payload)
        receipt = self._receipt(batch_id, area, record_ids, payload, digest, attrs.st_mtime)
        log.info("SFTP upload batch=%s file=%s records=%d bytes=%d sha256=%s (%.0f ms)", batch_id, final,
                 len(record_ids), len(payload), digest[:12], (time.monotonic() - started) * 1000)
        return receipt

    def get_batch_receipt(self, batch_id: str) -> Receipt | None:
        """The receipt of a batch whose file is in the inbox, or None when it never arrived."""
        _check_batch_id(batch_id, "SFTP lookup")
        where = f"SFTP lookup of batch {batch_id} at {self._describe('GetBatchReceipt')}"
        final = self._path(f"{batch_id}.xml")
        with self._session("GetBatchReceipt", where, None) as sftp:
            attrs = self._stat(sftp, final)
            if attrs is None:
                log.info("SFTP lookup batch=%s: not in the inbox", batch_id)
                return None
            data = self._download(final)
        found_id, record_ids, area = _parse_batch(data, where)
        if found_id != batch_id:
            raise DeliveryError(f"{where}: {final} holds batch {found_id or '(none)'}, not {batch_id}",
                                operation="GetBatchReceipt")
        log.info("SFTP lookup batch=%s: in the inbox (%d bytes, %d records)", batch_id, len(data), len(record_ids))
        return self._receipt(batch_id, area, record_ids, data, hashlib.sha256(data).hexdigest(), attrs.st_mtime)

    def close(self) -> None:
        """Nothing stays open between calls; kept for symmetry with clients that pool connections."""

    # ---------------------------------------------------------------------------------------------
    def _existing(self, sftp: Any, final: str, batch_id: str, digest: str, where: str, payload: bytes,
                  why: str) -> Receipt:
        data = self._download(final)
        found = hashlib.sha256(data).hexdigest()
        if found != digest:
            raise BusinessFault(ERR_BATCH_REUSED, f"{final} is already in the inbox with other content "
                                f"(SHA-256 {found[:12]}..., this batch {digest[:12]}...); a batch id may not be reused",
                                where=where, operation="SubmitBatch", request_bytes=payload)
        _, record_ids, area = _parse_batch(data, where)
        attrs = self._stat(sftp, final)
        log.info("SFTP upload batch=%s: %s with the same SHA-256; nothing uploaded", batch_id, why)
        return self._receipt(batch_id, area, record_ids, data, digest, attrs.st_mtime if attrs else None)

    def _receipt(self, batch_id: str, area: str, record_ids: list[str], data: bytes, digest: str,
                 mtime: float | None) -> Receipt:
        delivered = datetime.fromtimestamp(mtime, UTC) if mtime is not None else datetime.now(UTC)
        message = message_id(batch_id, digest)
        file_name = f"{batch_id}.xml"
        response = receipt_document(message=message, batch_id=batch_id, area=area, file_name=file_name,
                                    remote_path=self._path(file_name), digest=digest, size=len(data),
                                    records=len(record_ids), delivered=delivered)
        return Receipt(message_id=message, event_date=delivered, batch_id=batch_id, batch_status="ACCEPTED",
                       records=[RecordReceipt(rid, "ACCEPTED") for rid in record_ids], request_bytes=data,
                       response_bytes=response)

    def _path(self, name: str) -> str:
        return posixpath.join(self.remote_dir, name) if self.remote_dir else name

    def _describe(self, operation: str) -> str:
        hook = self._get_hook(operation)
        return f"{hook.remote_host}:{hook.port}/{self.remote_dir or '.'}"

    def _get_hook(self, operation: str) -> Any:
        """The provider's SFTPHook, built once (it reads the connection); a missing connection is a DeliveryError."""
        if self._hook is None:
            from airflow.exceptions import AirflowException
            from airflow.providers.sftp.hooks.sftp import SFTPHook

            try:
                # One connection attempt per call: the pipeline retries, and asks before it re-sends.
                hook = SFTPHook(ssh_conn_id=self.sftp_conn_id, conn_retry_attempts=1)
            except (AirflowException, ValueError) as exc:
                raise DeliveryError(f"the SFTP connection '{self.sftp_conn_id}' is missing or not usable: "
                                    f"{type(exc).__name__}: {_safe(exc)}; nothing was sent",
                                    operation=operation) from None
            if hook.conn_timeout is None:
                hook.conn_timeout = max(1, round(self.timeout))  # paramiko takes any number; typed int
            self._hook = hook
        return self._hook

    @staticmethod
    def _stat(sftp: Any, path: str) -> Any | None:
        try:
            return sftp.stat(path)
        except FileNotFoundError:
            return None

    def _download(self, path: str) -> bytes:
        buffer = io.BytesIO()
        self._hook.retrieve_file(path, buffer)
        return buffer.getvalue()

    @staticmethod
    def _remove_quietly(sftp: Any, path: str) -> None:
        try:
            sftp.remove(path)
        except (OSError, EOFError) as exc:  # pragma: no cover - best effort on a failing server
            log.warning("could not remove %s: %s", path, _safe(exc))

    @contextmanager
    def _session(self, operation: str, where: str, request: bytes | None) -> Iterator[Any]:
        """An SFTP session through the provider's hook; every failure mapped to a delivery error."""
        import paramiko
        from airflow.exceptions import AirflowException

        context: dict[str, Any] = {"operation": operation, "request_bytes": request}
        try:
            with self._get_hook(operation).get_managed_conn() as sftp:
                channel = sftp.get_channel()
                if channel is not None:
                    channel.settimeout(self.timeout)
                yield sftp
        except DeliveryError:
            raise
        except PermissionError as exc:
            raise InboxClosed(_safe(exc.strerror or exc), where=where, **context) from None
        except FileNotFoundError as exc:
            raise DeliveryError(f"{where}: the inbox folder '{self.remote_dir}' does not exist on the server "
                                f"({_safe(exc.strerror or exc)}); check extra 'remote_dir' of connection "
                                f"'{self.sftp_conn_id}'", **context) from None
        except paramiko.BadHostKeyException:
            raise DeliveryError(f"{where}: the server's host key does not match the configured one; nothing was "
                                "sent. Check the host key of the connection before trusting the server",
                                **context) from None
        except paramiko.AuthenticationException as exc:
            raise DeliveryError(f"{where}: the server refused our login ({_safe(exc)}); nothing was sent. Check "
                                f"the login and key of connection '{self.sftp_conn_id}'; if they are right, the "
                                "agency may have closed access (§ 48)", **context) from None
        except TimeoutError as exc:
            raise TransientDeliveryError(f"{where}: no answer within {self.timeout:g} s ({_safe(exc) or 'timeout'}); "
                                         "the file may have arrived, ask for its receipt before sending it again",
                                         **context) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            refused = isinstance(exc, ConnectionRefusedError | paramiko.ssh_exception.NoValidConnectionsError)
            hint = ("nothing was sent" if refused else
                    "the file may have arrived, ask for its receipt before sending it again")
            raise TransientDeliveryError(f"{where}: connection failed ({type(exc).__name__}: {_safe(exc)}); {hint}",
                                         **context) from None
        except AirflowException as exc:
            raise DeliveryError(f"{where}: the SFTP connection '{self.sftp_conn_id}' is not usable: {_safe(exc)}",
                                **context) from None


__all__ = ["RECEIPT_NAMESPACE", "InboxClosed", "SftpFileDropClient", "message_id", "receipt_document"]

"""Encrypted storage of payloads: the staging area between tasks and the archive of what was sent.

Both hold CPR numbers (they hold the payload), so both are encrypted at rest with Fernet (AES-128-CBC
with HMAC-SHA256; `cryptography`). Keys: `AMS_ARCHIVE_KEY` (one or more Fernet keys, comma-separated,
newest first) or a key file (`AMS_ARCHIVE_KEY_FILE`, one key per line, newest first). The newest
key encrypts; every listed key decrypts (MultiFernet), so a key is rotated by putting a new one in
front and running `ams-report rotate-archive-key`. Each manifest names the key by its id (the first
12 hex digits of the key's SHA-256). Losing the keys means losing the archive: production keeps them
in a secrets backend. Outside the demo and the tests a missing key is an error, never a new key
(`AMS_CREATE_ARCHIVE_KEY=1`, set by the demo and the test suite, allows creating one).

Where: `Settings.archive_dir`, the object store's `archive/` (AMS_OBJECT_STORE_URL; default AMS_HOME), or
AMS_ARCHIVE_DIR; per municipality under `<archive>/<kommunekode>/`. The functions here take any folder of
the store (delivery.objectstore: pathlib.Path, UPath, ObjectStoragePath), so s3:// works like a disk.

Archive layout, one folder per batch (the day is the day its receipt was stored):
    <archive>/area<N>/<YYYY-MM-DD>/<batch_id>/payload.xml.gz.enc   the exact SubmitBatchRequest sent
                                              receipt.xml.gz.enc   the receiver's answer with the receipt
                                              lookup-request.xml.gz.enc   the GetBatchReceipt request, when
                                                   the receipt was recovered (receipt.xml is then its answer)
                                              manifest.json        written last
The manifest holds SHA-256 checksums of the plaintext and of the stored files, the record counts,
the batch id, the run id and the key id; `verify_archive` detects any change, and, given the state
store's batches, any archived batch that is missing and any folder no batch owns.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from delivery import failpoints
from delivery.objectstore import StorePath, remove_tree, tail, write_atomic

PAYLOAD_FILE = "payload.xml.gz.enc"
RECEIPT_FILE = "receipt.xml.gz.enc"
LOOKUP_REQUEST_FILE = "lookup-request.xml.gz.enc"
MANIFEST = "manifest.json"


class ArchiveKeyMissing(RuntimeError):
    """No archive key is configured (and creating one was not allowed)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(key: bytes) -> str:
    return sha256(key.strip())[:12]


def load_keys(key_file: Path | None = None, *, create: bool | None = None) -> list[bytes]:
    """The Fernet keys, newest first: AMS_ARCHIVE_KEY, else the key file. With `create` (default:
    AMS_CREATE_ARCHIVE_KEY=1) a missing key file is created with one new key (mode 0600)."""
    if os.environ.get("AMS_ARCHIVE_KEY"):
        return [k.strip().encode() for k in os.environ["AMS_ARCHIVE_KEY"].split(",") if k.strip()]
    path = Path(os.environ.get("AMS_ARCHIVE_KEY_FILE") or key_file or "var/keys/archive.key")
    if create is None:
        create = os.environ.get("AMS_CREATE_ARCHIVE_KEY", "") in ("1", "true", "yes")
    if not path.exists():
        if not create:
            raise ArchiveKeyMissing(
                f"No archive key: AMS_ARCHIVE_KEY is not set and the key file {path} does not exist. The staged "
                "payloads and the archive are encrypted with it, and a new key cannot read what an old one "
                "wrote, so none is made up. Set AMS_ARCHIVE_KEY (from your secrets backend) or "
                "AMS_ARCHIVE_KEY_FILE; see docs/operations.md, 'The archive key'.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
    keys = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
    if not keys:
        raise ArchiveKeyMissing(f"The archive key file {path} is empty")
    return keys


def load_key(key_file: Path | None = None, *, create: bool | None = None) -> bytes:
    """The newest key (see load_keys)."""
    return load_keys(key_file, create=create)[0]


@dataclass
class Vault:
    """Encrypts with the newest key and decrypts with any of `keys` (one key or a list, newest first)."""

    keys: bytes | list[bytes]

    def __post_init__(self) -> None:
        given = [self.keys] if isinstance(self.keys, bytes | str) else list(self.keys)
        self._keys: list[bytes] = [k.encode() if isinstance(k, str) else k for k in given]
        self._fernet = MultiFernet([Fernet(k) for k in self._keys])
        self._newest = Fernet(self._keys[0])

    @property
    def key_id(self) -> str:
        """The id of the key that encrypts (the newest)."""
        return key_id(self._keys[0])

    def seal(self, data: bytes) -> bytes:
        return self._fernet.encrypt(gzip.compress(data, compresslevel=6, mtime=0))  # 9 costs 3x for ~3 %

    def open(self, blob: bytes) -> bytes:
        return gzip.decompress(self._fernet.decrypt(blob))

    def open_keeping(self, blob: bytes) -> tuple[bytes, bool]:
        """The blob opened, and whether it is as `seal` would write it now (sealed with the newest key):
        then it can be stored as it is, without compressing and encrypting its plaintext again."""
        try:
            return gzip.decompress(self._newest.decrypt(blob)), True
        except InvalidToken:
            if len(self._keys) == 1:
                raise
        return gzip.decompress(self._fernet.decrypt(blob)), False

    def rotate(self, blob: bytes) -> bytes:
        """The blob re-encrypted with the newest key."""
        return self._fernet.rotate(blob)

    def write(self, path: StorePath, data: bytes) -> str:
        """Seal data into path atomically; return the SHA-256 of the stored file."""
        return _write_atomic(path, self.seal(data))

    def read(self, path: StorePath) -> bytes:
        return self.open(path.read_bytes())


def _write_atomic(path: StorePath, blob: bytes) -> str:
    write_atomic(path, blob)
    return sha256(blob)


def archive_folder(archive_dir: StorePath, archive_path: str) -> StorePath:
    """An archived batch's folder under `archive_dir`, from the `archive_path` the state DB recorded
    (area/day/batch id at its end): the configured root wins, whatever scheme wrote the path."""
    folder = archive_dir
    for part in tail(archive_path or "", 3):
        folder = folder / part
    return folder


def archive_batch(vault: Vault, archive_dir: StorePath, *, area: int, batch_id: str, run_id: str, request: bytes,
                  response: bytes, record_count: int, accepted: int, rejected: int, receipt_id: str,
                  lookup_request: bytes | None = None, day: date | None = None,
                  sealed: dict[str, bytes] | None = None, digests: dict[str, str] | None = None) -> StorePath:
    """Archive the exact bytes sent (`request`: the SubmitBatchRequest) and received for one batch, and
    the GetBatchReceipt exchange when the receipt was recovered, with a checksum manifest written last.
    Writing the same batch again replaces its folder's files (idempotent).

    `sealed` (file name -> blob): a file's plaintext already sealed with the vault's newest key (the staged
    blob, `Vault.open_keeping`); it is stored as it is instead of being compressed and encrypted again.
    `digests` (file name -> SHA-256 of its plaintext): checksums the caller has checked already."""
    folder = archive_dir / f"area{area}" / (day or date.today()).isoformat() / batch_id
    contents = {PAYLOAD_FILE: request, RECEIPT_FILE: response}
    if lookup_request is not None:
        contents[LOOKUP_REQUEST_FILE] = lookup_request
    failpoints.point("archive.write")
    sealed, digests = sealed or {}, digests or {}
    files = {name: {"plaintext_sha256": digests.get(name) or sha256(data),
                    "stored_sha256": _write_atomic(folder / name, sealed[name]) if name in sealed
                    else vault.write(folder / name, data)}
             for name, data in contents.items()}
    manifest = {
        "batch_id": batch_id,
        "run_id": run_id,
        "area": area,
        "receipt_message_id": receipt_id,
        "recovered": lookup_request is not None,
        "archived_at": datetime.now(UTC).isoformat(),
        "key_id": vault.key_id,
        "records": {"sent": record_count, "accepted": accepted, "rejected": rejected},
        "files": files,
    }
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return folder


def _check_folder(vault: Vault, folder: StorePath) -> tuple[dict | None, list[str]]:
    """The folder's manifest and the problems found in it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, [f"{folder}: {MANIFEST} is missing"]
    except ValueError:
        return None, [f"{folder}: {MANIFEST} is not valid JSON"]
    problems: list[str] = []
    for name, sums in manifest.get("files", {}).items():
        path = folder / name
        if not path.exists():
            problems.append(f"{folder}: {name} is missing")
            continue
        blob = path.read_bytes()
        if sha256(blob) != sums["stored_sha256"]:
            problems.append(f"{folder}: {name} was changed after archiving (stored checksum differs)")
            continue
        try:
            plain = vault.open(blob)
        except (InvalidToken, OSError):
            problems.append(f"{folder}: {name} cannot be decrypted with the configured key(s)")
            continue
        if sha256(plain) != sums["plaintext_sha256"]:
            problems.append(f"{folder}: {name} content checksum differs")
    return manifest, problems


def verify_archive(vault: Vault, archive_dir: StorePath, batches: Iterable[dict] | None = None,
                   retention_days: int | None = None) -> list[str]:
    """Check every archived batch against its manifest; return the problems found (empty: all good).

    With `batches` (the state store's rows) the archive is also checked against the ledger: every
    archived batch has its folder, whose payload is the batch's payload (SHA-256 recorded when it was
    built); an acknowledged batch not yet archived is reported (its folder, if a failed attempt left
    one, is rewritten when it is archived); a folder no batch owns is an orphan. Batches older than
    `retention_days` may be gone."""
    problems: list[str] = []
    folders = sorted((p for p in archive_dir.glob("area*/*/*") if p.is_dir()), key=str) if archive_dir.exists() else []
    by_id = None if batches is None else {b["batch_id"]: b for b in batches}
    for folder in folders:
        if by_id is not None:
            owner = by_id.get(folder.name)
            if owner is None or owner["status"] not in ("archived", "acknowledged") or (
                    owner["status"] == "archived" and tail(owner["archive_path"] or "", 3) != tail(str(folder), 3)):
                problems.append(f"{folder}: an orphan folder: no archived batch in the state database owns it")
                continue
            if owner["status"] == "acknowledged":
                continue  # an archive attempt in progress or failed: reported below, rewritten when archived
        problems += _check_folder(vault, folder)[1]
    if by_id is None:
        return problems
    cutoff = datetime.now(UTC) - timedelta(days=retention_days) if retention_days is not None else None
    for batch in by_id.values():
        label = f"area {batch['area']} batch {batch['batch_id']}"
        if batch["status"] == "acknowledged":
            if "payload lost before archiving" in (batch.get("last_error") or ""):
                problems.append(f"{label}: acknowledged, but its staged payload was lost before it was archived: "
                                "the receiver holds the batch, the exact bytes sent are not archived "
                                "(docs/operations.md, 'Batch and area states')")
            else:
                problems.append(f"{label}: acknowledged but not archived yet (the next deliver or report task "
                                "finishes it; if it stays, see docs/operations.md)")
            continue
        if batch["status"] != "archived":
            continue
        folder = archive_folder(archive_dir, batch["archive_path"] or "")
        archived_at = batch.get("archived_at")
        if cutoff is not None and archived_at is not None and _aware(archived_at) < cutoff:
            continue
        if not (folder / MANIFEST).exists():
            problems.append(f"{label}: archived, but its archive folder {folder} is missing")
            continue
        manifest, _ = _check_folder(vault, folder)
        if manifest is None:
            continue
        payload = manifest.get("files", {}).get(PAYLOAD_FILE, {})
        if manifest.get("batch_id") != batch["batch_id"]:
            problems.append(f"{label}: the folder's manifest names batch {manifest.get('batch_id')}")
        elif batch.get("payload_sha256") and payload.get("plaintext_sha256") != batch["payload_sha256"]:
            problems.append(f"{label}: the archived payload is not the payload that was built and sent")
    return problems


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rotate_archive(vault: Vault, archive_dir: StorePath) -> int:
    """Re-encrypt every archived file with the newest key and update the manifests; returns the
    number of files rewritten. Plaintext checksums do not change."""
    count = 0
    for manifest_path in sorted(archive_dir.glob("area*/*/*/manifest.json"), key=str):
        manifest = json.loads(manifest_path.read_text())
        for name, sums in manifest.get("files", {}).items():
            path = manifest_path.parent / name
            sums["stored_sha256"] = _write_atomic(path, vault.rotate(path.read_bytes()))
            count += 1
        manifest["key_id"] = vault.key_id
        _write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return count


def apply_retention(archive_dir: StorePath, keep_days: int, today: date | None = None) -> list[StorePath]:
    """Delete day folders older than keep_days; return what was removed."""
    cutoff = (today or date.today()) - timedelta(days=keep_days)
    removed = []
    for day in sorted(archive_dir.glob("area*/*"), key=str):
        try:
            day_date = date.fromisoformat(day.name)
        except ValueError:
            continue
        if day_date < cutoff:
            remove_tree(day)
            removed.append(day)
    return removed

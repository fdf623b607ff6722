"""Encrypted storage of payloads: the staging area between tasks and the archive of what was sent.

Both hold CPR numbers (they hold the payload), so both are encrypted at rest with Fernet (AES-128-CBC
with HMAC-SHA256; `cryptography`). The key comes from `AMS_ARCHIVE_KEY` (a Fernet key) or a key file
(`AMS_ARCHIVE_KEY_FILE`); the demo creates a key file under var/ on first use. Losing the key means
losing the archive: production keeps it in a secrets backend.

Archive layout, one folder per batch:
    <archive>/area<N>/<YYYY-MM-DD>/<batch_id>/payload.xml.gz.enc
                                              receipt.xml.gz.enc
                                              manifest.json
The manifest holds SHA-256 checksums of the plaintext and of the stored files, the record counts,
the batch id and the run id; `verify_archive` detects any change.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_key(key_file: Path | None = None) -> bytes:
    """The Fernet key: AMS_ARCHIVE_KEY, else the key file (created with mode 0600 when missing)."""
    if os.environ.get("AMS_ARCHIVE_KEY"):
        return os.environ["AMS_ARCHIVE_KEY"].encode()
    path = Path(os.environ.get("AMS_ARCHIVE_KEY_FILE") or key_file or "var/keys/archive.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
    return path.read_bytes().strip()


@dataclass
class Vault:
    """Encrypts and decrypts gzip-compressed blobs with one key."""

    key: bytes

    def seal(self, data: bytes) -> bytes:
        return Fernet(self.key).encrypt(gzip.compress(data, mtime=0))

    def open(self, blob: bytes) -> bytes:
        return gzip.decompress(Fernet(self.key).decrypt(blob))

    def write(self, path: Path, data: bytes) -> str:
        """Seal data into path atomically; return the SHA-256 of the stored file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = self.seal(data)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        return sha256(blob)

    def read(self, path: Path) -> bytes:
        return self.open(path.read_bytes())


def archive_batch(vault: Vault, archive_dir: Path, *, area: int, batch_id: str, run_id: str, request: bytes,
                  response: bytes, record_count: int, accepted: int, rejected: int, receipt_id: str) -> Path:
    """Archive the exact bytes sent and received for one batch, with a checksum manifest."""
    folder = archive_dir / f"area{area}" / date.today().isoformat() / batch_id
    manifest = {
        "batch_id": batch_id,
        "run_id": run_id,
        "area": area,
        "receipt_message_id": receipt_id,
        "archived_at": datetime.now(UTC).isoformat(),
        "records": {"sent": record_count, "accepted": accepted, "rejected": rejected},
        "files": {
            "payload.xml.gz.enc": {"plaintext_sha256": sha256(request),
                                   "stored_sha256": vault.write(folder / "payload.xml.gz.enc", request)},
            "receipt.xml.gz.enc": {"plaintext_sha256": sha256(response),
                                   "stored_sha256": vault.write(folder / "receipt.xml.gz.enc", response)},
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


def verify_archive(vault: Vault, archive_dir: Path) -> list[str]:
    """Check every archived batch against its manifest; return the problems found (empty: all good)."""
    problems: list[str] = []
    for manifest_path in sorted(archive_dir.glob("area*/*/*/manifest.json")):
        folder = manifest_path.parent
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            problems.append(f"{folder}: manifest.json is not valid JSON")
            continue
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
                problems.append(f"{folder}: {name} cannot be decrypted with this key")
                continue
            if sha256(plain) != sums["plaintext_sha256"]:
                problems.append(f"{folder}: {name} content checksum differs")
    return problems


def apply_retention(archive_dir: Path, keep_days: int, today: date | None = None) -> list[Path]:
    """Delete day folders older than keep_days; return what was removed."""
    cutoff = (today or date.today()) - timedelta(days=keep_days)
    removed = []
    for day in sorted(archive_dir.glob("area*/*")):
        try:
            day_date = date.fromisoformat(day.name)
        except ValueError:
            continue
        if day_date < cutoff:
            shutil.rmtree(day)
            removed.append(day)
    return removed

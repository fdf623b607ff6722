"""The encrypted archive: round trip, manifest checksums, tamper detection, retention."""

import hashlib
import json
from datetime import date

import pytest
from cryptography.fernet import Fernet, InvalidToken

from delivery.archive import Vault, apply_retention, archive_batch, load_key, verify_archive

PAYLOAD = b"<SubmitBatchRequest><PersonCivilRegistrationIdentifier>0101901234</PersonCivilRegistrationIdentifier>"


@pytest.fixture
def vault():
    return Vault(Fernet.generate_key())


def _archive(vault, tmp_path):
    return archive_batch(vault, tmp_path, area=1, batch_id="b-1", run_id="run-1", request=PAYLOAD,
                         response=b"<receipt/>", record_count=1, accepted=1, rejected=0, receipt_id="r-1")


def test_archive_is_encrypted_and_verifiable(vault, tmp_path):
    folder = _archive(vault, tmp_path)
    stored = (folder / "payload.xml.gz.enc").read_bytes()
    assert b"0101901234" not in stored  # encrypted at rest
    assert vault.read(folder / "payload.xml.gz.enc") == PAYLOAD
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["batch_id"] == "b-1" and manifest["run_id"] == "run-1" and manifest["records"]["sent"] == 1
    assert verify_archive(vault, tmp_path) == []


def test_verify_detects_tampering_and_a_wrong_key(vault, tmp_path):
    folder = _archive(vault, tmp_path)
    path = folder / "receipt.xml.gz.enc"
    blob = path.read_bytes()
    path.write_bytes(blob[:20] + (b"A" if blob[20:21] != b"A" else b"B") + blob[21:])  # always a change
    problems = verify_archive(vault, tmp_path)
    assert len(problems) == 1 and "receipt.xml.gz.enc was changed" in problems[0]
    other = verify_archive(Vault(Fernet.generate_key()), tmp_path)
    assert any("cannot be decrypted" in p for p in other)


def test_verify_detects_a_missing_file(vault, tmp_path):
    folder = _archive(vault, tmp_path)
    (folder / "payload.xml.gz.enc").unlink()
    assert verify_archive(vault, tmp_path) == [f"{folder}: payload.xml.gz.enc is missing"]


def test_retention_removes_old_days_only(vault, tmp_path):
    folder = _archive(vault, tmp_path)
    old = tmp_path / "area1" / "2020-01-01" / "b-0"
    old.mkdir(parents=True)
    removed = apply_retention(tmp_path, keep_days=30, today=date.today())
    assert removed == [old.parent] and folder.exists()


def test_key_from_environment_or_created_file(tmp_path, monkeypatch):
    monkeypatch.delenv("AMS_ARCHIVE_KEY", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_KEY_FILE", raising=False)
    key_file = tmp_path / "keys" / "archive.key"
    key = load_key(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600 and load_key(key_file) == key
    monkeypatch.setenv("AMS_ARCHIVE_KEY", Fernet.generate_key().decode())
    assert load_key(key_file) != key


def test_retention_setting_is_applied_by_the_pipeline(vault, tmp_path, monkeypatch):
    from cycle.pipeline import Settings, apply_archive_retention

    monkeypatch.setenv("AMS_ARCHIVE_DIR", str(tmp_path / "archive"))
    old = tmp_path / "archive" / "area1" / "2020-01-01" / "b-0"
    old.mkdir(parents=True)
    assert apply_archive_retention(Settings(home=tmp_path)) == []  # unset: keep everything
    assert apply_archive_retention(Settings(home=tmp_path, archive_retention_days=365)) == [old.parent]


def test_a_missing_key_is_an_error_outside_the_demo(tmp_path, monkeypatch):
    from delivery.archive import ArchiveKeyMissing

    monkeypatch.delenv("AMS_ARCHIVE_KEY", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_KEY_FILE", raising=False)
    monkeypatch.delenv("AMS_CREATE_ARCHIVE_KEY", raising=False)
    with pytest.raises(ArchiveKeyMissing, match="No archive key.*AMS_ARCHIVE_KEY"):
        load_key(tmp_path / "keys" / "archive.key")
    assert not (tmp_path / "keys" / "archive.key").exists()  # no key made up


def test_keys_rotate_without_losing_the_archive(tmp_path, monkeypatch):
    from delivery.archive import key_id, rotate_archive

    old, new = Fernet.generate_key(), Fernet.generate_key()
    folder = _archive(Vault(old), tmp_path)
    both = Vault([new, old])  # the new key in front, the old one still listed
    assert both.read(folder / "payload.xml.gz.enc") == PAYLOAD
    assert rotate_archive(both, tmp_path) == 2
    assert verify_archive(Vault(new), tmp_path) == []  # the old key can go
    assert json.loads((folder / "manifest.json").read_text())["key_id"] == key_id(new)
    monkeypatch.setenv("AMS_ARCHIVE_KEY", f"{new.decode()},{old.decode()}")
    assert load_key() == new


def test_a_staged_blob_sealed_with_the_newest_key_is_archived_as_it_is(tmp_path):
    """The archive stores a staged blob under the newest key byte for byte (no second gzip + encryption);
    one sealed with an older key (staged before a rotation) is sealed anew. Both verify, and the manifest's
    checksums are those of the plaintext and of the stored file, as when every file was sealed here."""
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before, after = Vault(old), Vault([new, old])
    staged_new, staged_old = after.seal(PAYLOAD), before.seal(b"<receipt/>")
    assert after.open_keeping(staged_new) == (PAYLOAD, True)
    assert after.open_keeping(staged_old) == (b"<receipt/>", False)
    with pytest.raises(InvalidToken):
        Vault(Fernet.generate_key()).open_keeping(staged_new)
    folder = archive_batch(after, tmp_path, area=1, batch_id="b-1", run_id="run-1", request=PAYLOAD,
                           response=b"<receipt/>", record_count=1, accepted=1, rejected=0, receipt_id="r-1",
                           sealed={"payload.xml.gz.enc": staged_new})
    assert (folder / "payload.xml.gz.enc").read_bytes() == staged_new
    assert Vault(new).read(folder / "receipt.xml.gz.enc") == b"<receipt/>"  # sealed anew with the newest key
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest["files"]
    assert files["payload.xml.gz.enc"]["plaintext_sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert files["payload.xml.gz.enc"]["stored_sha256"] == hashlib.sha256(staged_new).hexdigest()
    assert manifest["key_id"] == after.key_id
    assert verify_archive(after, tmp_path) == [] and verify_archive(Vault(new), tmp_path) == []

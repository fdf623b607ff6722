"""The archive, the reports and the Data Docs in object storage (issue 10): AMS_OBJECT_STORE_URL.

A `file://` store outside AMS_HOME (the whole cycle, Data Docs included, then `ams-report
verify-archive` as a separate process), an fsspec `memory://` store (the path API only: no local file
behind it), and Airflow's ObjectStoragePath as the root the Airflow layer builds. Per municipality the
archive and the reports live under <root>/<kommunekode>/, and the operator's overview lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import date

import pytest
from cryptography.fernet import Fernet
from upath import UPath

from cycle.pipeline import Settings, deliver_area, prepare_area
from delivery.archive import PAYLOAD_FILE, Vault, apply_retention, archive_batch, rotate_archive, verify_archive
from delivery.client import AmsClient
from receiver.store import ReceiverStore
from reports.summary import write_run_report
from tests.test_delivery_faults import AREA, PERIOD_END, demo_settings
from transforms.registry import REPO_ROOT

if str(REPO_ROOT / "plugins") not in sys.path:  # the Airflow plugins folder, as Airflow puts it on the path
    sys.path.insert(0, str(REPO_ROOT / "plugins"))


@pytest.fixture
def receiver(tmp_path):
    from receiver.server import start_in_thread

    handle = start_in_thread(tmp_path / "receiver.sqlite")
    yield handle
    handle.stop()


def _cycle(settings: Settings, receiver, run_id: str = "run-1") -> dict:
    prepare_area(AREA, run_id=run_id, period_end=PERIOD_END, settings=settings)
    deliver_area(AREA, run_id=run_id, settings=settings, client=AmsClient(receiver.wsdl_url, timeout=10))
    return write_run_report(run_id, settings)


def test_a_file_store_outside_ams_home_holds_archive_reports_and_data_docs(tmp_path, monkeypatch, receiver):
    demo_settings(tmp_path, monkeypatch, persons=200, defect_rate=0.05)
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("AMS_ARCHIVE_KEY", key)
    store = tmp_path / "bucket"
    monkeypatch.setenv("AMS_OBJECT_STORE_URL", store.as_uri())
    home = tmp_path / "worker-home"
    settings = Settings(home=home, source_url=f"sqlite:///{tmp_path / 'source.sqlite'}",
                        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}", batch_size=50, data_docs=True)
    assert isinstance(settings.archive_dir, UPath) and str(settings.archive_dir).startswith("file://")
    totals = _cycle(settings, receiver)
    assert totals["delivered"] > 0
    batches = settings.state().all_batches()
    assert batches and all(b["status"] == "archived" for b in batches)
    for batch in batches:  # the exact bytes the receiver digested are in the store's archive
        folder = next((store / "archive").glob(f"area{AREA}/*/{batch['batch_id']}"))
        assert (folder / "manifest.json").is_file()
        assert ReceiverStore(receiver.db_path).batch(batch["batch_id"]) is not None
        assert Vault(key.encode()).read(folder / PAYLOAD_FILE)
    assert (store / "reports" / "index.html").is_file()
    assert (store / "reports" / "runs" / "run-1" / "index.html").is_file()
    assert (store / "reports" / "data_docs" / "index.html").is_file()  # built locally, copied to the store
    assert "../../data_docs/validations/" in (store / "reports" / "runs" / "run-1" / "index.html").read_text()
    assert not (home / "archive").exists() and not (home / "reports").exists() and not (home / "staging").exists()
    env = {**os.environ, "AMS_HOME": str(tmp_path / "another-home"), "AMS_STATE_URL": settings.state_url,
           "PYTHONPATH": str(REPO_ROOT)}
    verified = subprocess.run([sys.executable, "-m", "cli.main", "verify-archive"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "archive OK" in verified.stdout
    manifest = next((store / "archive").glob("area*/*/*/manifest.json"))
    (manifest.parent / PAYLOAD_FILE).write_bytes(b"tampered")
    broken = subprocess.run([sys.executable, "-m", "cli.main", "verify-archive"], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "changed after archiving" in broken.stdout


def test_the_archive_works_on_a_memory_store_through_the_path_api():
    """No local file behind the store: archive, verify, rotate and retention through UPath alone."""
    root = UPath(f"memory://ams-{uuid.uuid4().hex}/archive")
    old, new = Fernet.generate_key(), Fernet.generate_key()
    vault = Vault(old)
    folder = archive_batch(vault, root, area=1, batch_id="b-1", run_id="r-1", request=b"<request/>",
                           response=b"<receipt/>", record_count=1, accepted=1, rejected=0, receipt_id="m-1",
                           day=date(2020, 1, 2))
    batch = {"batch_id": "b-1", "area": 1, "status": "archived", "archive_path": str(folder),
             "payload_sha256": hashlib.sha256(b"<request/>").hexdigest(), "archived_at": None}
    assert verify_archive(vault, root, [batch]) == []
    assert vault.read(folder / PAYLOAD_FILE) == b"<request/>"
    rotated = Vault([new, old])
    assert rotate_archive(rotated, root) == 2
    assert verify_archive(Vault(new), root, [batch]) == []  # the new key alone opens it now
    (folder / PAYLOAD_FILE).write_bytes(b"x")
    assert any("changed after archiving" in p for p in verify_archive(Vault(new), root, [batch]))
    assert [p.name for p in apply_retention(root, 30, today=date(2020, 3, 1))] == ["2020-01-02"]
    assert not folder.exists()
    assert any("archive folder" in p and "missing" in p for p in verify_archive(Vault(new), root, [batch]))


def test_per_municipality_folders_the_overview_and_the_ui_on_a_memory_store(tmp_path, monkeypatch):
    """Two municipalities (tenants) report into one memory:// store: each its own archive and report
    folder, the overview lists both, the UI app serves the overview and each municipality's pages."""
    from ams_reporting.ui import create_app
    from fastapi.testclient import TestClient

    from receiver.server import start_in_thread

    demo_settings(tmp_path, monkeypatch, persons=150, defect_rate=0.05)
    monkeypatch.setenv("AMS_ARCHIVE_KEY", Fernet.generate_key().decode())
    root = UPath(f"memory://ams-{uuid.uuid4().hex}")
    for code in ("101", "147"):
        settings = Settings(home=tmp_path / f"home-{code}", source_url=f"sqlite:///{tmp_path / 'source.sqlite'}",
                            state_url=f"sqlite:///{tmp_path / f'state-{code}.sqlite'}", batch_size=50,
                            data_docs=False, tenant=code, object_store=root)
        receiver = start_in_thread(tmp_path / f"receiver-{code}.sqlite")  # each municipality its agency test db
        try:
            _cycle(settings, receiver, run_id=f"run-{code}")
        finally:
            receiver.stop()
        assert str(settings.archive_dir).endswith(f"/archive/{code}")
        assert str(settings.reports_dir).endswith(f"/reports/{code}")
        assert verify_archive(settings.vault(), settings.archive_dir, settings.state().all_batches()) == []
    for code in ("101", "147"):
        assert list((root / "archive" / code).glob(f"area{AREA}/*/*/manifest.json"))
        card = json.loads((root / "reports" / code / "latest.json").read_text())
        assert card["run_id"] == f"run-{code}" and card["status"] == "delivered"
        assert card["in_doubt"] == 0 and card["unarchived"] == 0
        assert (root / "reports" / code / "runs" / f"run-{code}" / "index.html").is_file()
    assert not list((root / "archive").glob("area*"))  # nothing outside the municipalities' folders
    overview = (root / "reports" / "index.html").read_text()
    assert 'href="101/"' in overview and "København" in overview
    assert 'href="147/"' in overview and "Frederiksberg" in overview
    assert 'href="147/runs/run-147/"' in overview

    client = TestClient(create_app(reports_dir=root / "reports", require_login=False))
    first = client.get("/")
    assert first.status_code == 200 and "all municipalities" in first.text and "Frederiksberg" in first.text
    own = client.get("/147/")
    assert own.status_code == 200 and "run-147" in own.text and "run-101" not in own.text
    page = client.get("/147/runs/run-147/")
    assert page.status_code == 200 and "run-147" in page.text
    assert client.get("/147/runs/run-147/quarantine.csv").status_code == 200
    assert client.get("/101/runs/run-147/").status_code == 404  # another municipality's run is not there
    assert client.get("/999/").status_code == 404  # a municipality without reports
    assert client.get("/abc/").status_code == 404
    assert client.get("/147/runs/..%2F..%2F101/index.html").status_code == 404


def test_airflow_object_storage_path_is_a_root_the_plain_code_works_on(tmp_path, monkeypatch, receiver):
    """The Airflow layer's root (hooks.object_store_root: ObjectStoragePath, credentials by connection id)."""
    from airflow.sdk import ObjectStoragePath
    from ams_reporting.hooks import object_store_root

    demo_settings(tmp_path, monkeypatch, persons=100, defect_rate=0.0)
    monkeypatch.setenv("AMS_ARCHIVE_KEY", Fernet.generate_key().decode())
    monkeypatch.delenv("AMS_OBJECT_STORE_URL", raising=False)
    assert object_store_root() is None  # no URL: today's AMS_HOME folders
    monkeypatch.setenv("AMS_OBJECT_STORE_URL", (tmp_path / "osp").as_uri())
    root = object_store_root()
    assert isinstance(root, ObjectStoragePath)
    settings = Settings(home=tmp_path / "home", source_url=f"sqlite:///{tmp_path / 'source.sqlite'}",
                        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}", batch_size=50, data_docs=False,
                        object_store=root)
    _cycle(settings, receiver)
    assert list((tmp_path / "osp" / "archive").glob("area*/*/*/manifest.json"))
    assert (tmp_path / "osp" / "reports" / "runs" / "run-1" / "index.html").is_file()
    assert verify_archive(settings.vault(), settings.archive_dir, settings.state().all_batches()) == []


def test_without_a_store_url_the_layout_is_todays(tmp_path, monkeypatch):
    monkeypatch.delenv("AMS_OBJECT_STORE_URL", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_DIR", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.archive_dir == tmp_path / "archive"
    assert settings.reports_dir == tmp_path / "reports" == settings.reports_root
    assert settings.data_docs_build_dir == tmp_path / "reports" / "data_docs"

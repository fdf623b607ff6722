"""The file channel (§ 51) against a real SFTP server on loopback (asyncssh, keys made at test time).

Channel rules per area; a full area-1 cycle through prepare_area + deliver_area with the SFTP client
(one file per batch, equal to the archived payload, ledger accepted); a re-run sends nothing; an
in-doubt batch is recognised in the inbox and not uploaded twice; permission denied is AccessClosed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import threading
from datetime import date
from pathlib import Path

import asyncssh
import pytest

from cycle.pipeline import AreaDeliveryStopped, Settings, deliver_area, prepare_area
from delivery.archive import PAYLOAD_FILE
from delivery.client import AccessClosed, BusinessFault, TransientDeliveryError
from demo import synthetic
from transforms.registry import REPO_ROOT
from transforms.source import create_engine_from_url, create_source_schema

if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from ams_reporting.hooks import ChannelNotAllowed, channel_for_area, client_for_area  # noqa: E402
from ams_reporting.sftp import SftpFileDropClient, message_id  # noqa: E402

from tests.support import free_port

AREA = 1
PERIOD_END = date(2026, 11, 28)


# --- the SFTP server ------------------------------------------------------------------------------


class SftpTestServer:
    """asyncssh SFTP server in a background thread with its own event loop, rooted (chroot) in `root`.

    `closed = True` makes it answer permission denied to every file operation (the inbox closed);
    `write_opens` lists every path opened for writing (an upload).
    """

    def __init__(self, root: Path, keys: Path) -> None:
        self.root = root
        self.closed = False
        self.write_opens: list[str] = []
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key_file = keys / "client_ed25519"
        client_key.write_private_key(str(self.client_key_file))
        authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
        server = self

        class InboxServer(asyncssh.SFTPServer):
            def __init__(self, chan):
                super().__init__(chan, chroot=os.fsencode(server.root))

            def _guard(self, path: bytes) -> None:
                if server.closed:
                    raise asyncssh.SFTPPermissionDenied(f"permission denied: {path.decode()}")

            def open(self, path, pflags, attrs):
                self._guard(path)
                if pflags & asyncssh.FXF_WRITE:
                    server.write_opens.append(path.decode())
                return super().open(path, pflags, attrs)

            def stat(self, path):
                self._guard(path)
                return super().stat(path)

            def lstat(self, path):
                self._guard(path)
                return super().lstat(path)

            def rename(self, oldpath, newpath):
                self._guard(newpath)
                return super().rename(oldpath, newpath)

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sftp-test-server", daemon=True)
        self.thread.start()

        async def listen():
            return await asyncssh.create_server(
                asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
                sftp_factory=InboxServer, allow_scp=False)

        self.acceptor = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = self.acceptor.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            self.acceptor.close()
            await self.acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.inbox.iterdir())}

    def uploads(self) -> list[str]:
        return [p for p in self.write_opens if p.endswith(".part")]


def _connection(port: int, key_file: Path, remote_dir: str = "inbox") -> str:
    return json.dumps({"conn_type": "sftp", "host": "127.0.0.1", "port": port, "login": "ams",
                       "extra": {"key_file": str(key_file), "no_host_key_check": True, "look_for_keys": False,
                                 "remote_dir": remote_dir, "conn_timeout": 5, "timeout": 10}})




@pytest.fixture
def sftp_server(tmp_path, monkeypatch):
    root = tmp_path / "sftp-root"
    (root / "inbox").mkdir(parents=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    server = SftpTestServer(root, keys)
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SFTP", _connection(server.port, server.client_key_file))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory) -> Path:
    """A small demo source database, made once and copied per test."""
    path = tmp_path_factory.mktemp("source") / "source.sqlite"
    engine = create_engine_from_url(f"sqlite:///{path}")
    create_source_schema(engine)
    synthetic.generate(engine, persons=300)
    engine.dispose()
    return path


@pytest.fixture
def settings(tmp_path, demo_source, monkeypatch) -> Settings:
    monkeypatch.delenv("AMS_ARCHIVE_KEY", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_KEY_FILE", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_DIR", raising=False)
    source = tmp_path / "source.sqlite"
    shutil.copy(demo_source, source)
    return Settings(home=tmp_path / "var", source_url=f"sqlite:///{source}",
                    state_url=f"sqlite:///{tmp_path / 'state.sqlite'}", batch_size=50, data_docs=False,
                    delivery_attempts=2, backoff_seconds=0.01)


def _prepare(settings: Settings, run_id: str) -> dict:
    return prepare_area(AREA, run_id=run_id, period_end=PERIOD_END, settings=settings)


def _staged(settings: Settings, batch_id: str) -> bytes:
    return settings.vault().open(settings.state().staged_blob(batch_id, PAYLOAD_FILE) or b"")


# --- channel selection ----------------------------------------------------------------------------


@pytest.mark.parametrize(("area", "paragraph"), [(3, "§ 17, stk. 2"), (4, "§ 22, stk. 2"), (5, "§ 28, stk. 2")])
def test_web_service_only_areas_refuse_sftp(monkeypatch, area, paragraph):
    monkeypatch.setenv(f"AMS_CHANNEL_AREA{area}", "sftp")
    with pytest.raises(ChannelNotAllowed) as caught:
        client_for_area(area)
    message = str(caught.value)
    assert f"area {area}" in message and "may only be delivered by web service" in message
    assert paragraph in message and "§ 51" in message


def test_other_web_service_areas_and_unknown_values_are_refused(monkeypatch):
    monkeypatch.setenv("AMS_CHANNEL_AREA6", "sftp")
    with pytest.raises(ChannelNotAllowed, match="area 6 .*may only be delivered by web service"):
        channel_for_area(6)
    monkeypatch.setenv("AMS_CHANNEL_AREA1", "ftp")
    with pytest.raises(ChannelNotAllowed, match="AMS_CHANNEL_AREA1='ftp' is not a delivery channel"):
        channel_for_area(1)


def test_channel_defaults_to_web_service(monkeypatch):
    from ams_reporting import hooks

    monkeypatch.delenv("AMS_CHANNEL_AREA1", raising=False)
    monkeypatch.setenv("AMS_CHANNEL_AREA3", "WebService")
    sentinel = object()
    monkeypatch.setattr(hooks.AmsReceiverHook, "get_client", lambda self: sentinel)
    assert channel_for_area(1) == "webservice" and client_for_area(1) is sentinel
    assert client_for_area(3) is sentinel


def test_area1_accepts_sftp_with_the_connection_remote_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AMS_CHANNEL_AREA1", "sftp")
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SFTP", _connection(2222, tmp_path / "key", remote_dir="/upload/ams"))
    client = client_for_area(1)
    assert isinstance(client, SftpFileDropClient)
    assert client.sftp_conn_id == "ams_sftp" and client.remote_dir == "/upload/ams" and client.timeout == 10


def test_sftp_without_connection_says_what_to_create(monkeypatch):
    monkeypatch.setenv("AMS_CHANNEL_AREA2", "sftp")
    monkeypatch.delenv("AIRFLOW_CONN_AMS_SFTP", raising=False)
    with pytest.raises(RuntimeError, match="no Airflow connection 'ams_sftp'"):
        client_for_area(2)


# --- the client against the server ----------------------------------------------------------------


def test_full_area1_cycle_through_the_file_channel(sftp_server, settings, monkeypatch):
    monkeypatch.setenv("AMS_CHANNEL_AREA1", "sftp")
    prepared = _prepare(settings, "run-1")
    batch_ids = prepared["batches"]
    assert len(batch_ids) >= 2
    staged = {b: _staged(settings, b) for b in batch_ids}

    result = deliver_area(AREA, run_id="run-1", settings=settings, client=client_for_area(AREA))
    assert result["batches_sent"] == len(batch_ids) and result.get("recovered", 0) == 0

    # One file per batch, nothing else in the inbox (no .part left), each the exact staged payload.
    files = sftp_server.files()
    assert sorted(files) == sorted(f"{b}.xml" for b in batch_ids)
    assert len(sftp_server.uploads()) == len(batch_ids)
    state = settings.state()
    vault = settings.vault()
    for batch_id in batch_ids:
        data = files[f"{batch_id}.xml"]
        assert data == staged[batch_id]
        batch = state.batch(batch_id)
        assert (batch["status"], batch["outcome"]) == ("archived", "accepted")
        assert batch["receipt_message_id"] == message_id(batch_id, hashlib.sha256(data).hexdigest())
        folder = Path(batch["archive_path"])
        assert vault.read(folder / "payload.xml.gz.enc") == data
        receipt_xml = vault.read(folder / "receipt.xml.gz.enc")
        assert b"FileDropReceipt" in receipt_xml and hashlib.sha256(data).hexdigest().encode() in receipt_xml
    ledger = state.ledger_rows(AREA)
    members = set()
    for batch_id in batch_ids:
        members |= set(state.batch_members(batch_id)["record_id"])
    assert members and set(ledger.loc[ledger["status"].isin(["accepted", "annulled"]), "record_id"]) == members
    assert result["accepted"] == len(members) and result.get("rejected", 0) == 0

    # A re-run with nothing changed at the source sends nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in sftp_server.inbox.iterdir()}
    again = _prepare(settings, "run-2")
    assert again["batches"] == []
    assert deliver_area(AREA, run_id="run-2", settings=settings, client=client_for_area(AREA)).get(
        "batches_sent", 0) == 0
    assert {p.name: p.stat().st_mtime_ns for p in sftp_server.inbox.iterdir()} == mtimes
    assert len(sftp_server.uploads()) == len(batch_ids)


def test_in_doubt_batch_is_recognised_not_uploaded_again(sftp_server, settings):
    batch_ids = _prepare(settings, "run-1")["batches"]
    first = batch_ids[0]
    payload = _staged(settings, first)
    # The worker uploaded the file and died before the ledger heard of it: the batch is 'sent'.
    target = sftp_server.inbox / f"{first}.xml"
    target.write_bytes(payload)
    os.utime(target, (1_700_000_000, 1_700_000_000))
    settings.state().mark_sending(first)

    client = SftpFileDropClient("ams_sftp", "inbox")
    result = deliver_area(AREA, run_id="run-1", settings=settings, client=client)
    assert result["recovered"] == 1 and result["batches_sent"] == len(batch_ids) - 1
    assert target.stat().st_mtime == 1_700_000_000  # not written again
    assert not [p for p in sftp_server.write_opens if first in p]
    assert len(sftp_server.uploads()) == len(batch_ids) - 1
    batch = settings.state().batch(first)
    assert (batch["status"], batch["outcome"]) == ("archived", "accepted")
    assert batch["receipt_event_date"].startswith("2023-11-14")  # the file's time on the server
    assert len(list(sftp_server.inbox.iterdir())) == len(batch_ids)


def test_lost_reply_after_upload_is_resolved_by_asking_first(sftp_server, settings):
    """The upload went through but the task did not learn it (connection dropped after the rename)."""

    class ReplyLost(SftpFileDropClient):
        lost = 0

        def submit(self, payload: bytes):
            receipt = super().submit(payload)
            if not self.lost:
                self.lost += 1
                raise TransientDeliveryError("connection reset after the upload")
            return receipt

    batch_ids = _prepare(settings, "run-1")["batches"]
    result = deliver_area(AREA, run_id="run-1", settings=settings, client=ReplyLost())
    assert result["recovered"] == 1 and result["batches_sent"] == len(batch_ids) - 1
    assert len(sftp_server.uploads()) == len(batch_ids)  # each batch uploaded exactly once
    assert sorted(sftp_server.files()) == sorted(f"{b}.xml" for b in batch_ids)


def test_submit_is_idempotent_on_the_batch_id(sftp_server, settings):
    batch_id = _prepare(settings, "run-1")["batches"][0]
    payload = _staged(settings, batch_id)
    client = SftpFileDropClient()
    first = client.submit(payload)
    assert first.batch_status == "ACCEPTED" and first.request_bytes == payload
    assert first.records and all(r.status == "ACCEPTED" for r in first.records)
    again = client.submit(payload)
    assert again.message_id == first.message_id and again.response_bytes == first.response_bytes
    assert len(sftp_server.uploads()) == 1
    looked_up = client.get_batch_receipt(batch_id)
    assert looked_up is not None and looked_up.message_id == first.message_id
    assert looked_up.records == first.records and looked_up.request_bytes == payload
    assert client.get_batch_receipt("00000000-0000-4000-8000-000000000000") is None

    other = payload.replace(b"<RunIdentifier>run-1<", b"<RunIdentifier>run-X<")
    assert other != payload
    with pytest.raises(BusinessFault) as caught:
        client.submit(other)
    assert caught.value.code == 1030
    assert sftp_server.files()[f"{batch_id}.xml"] == payload
    assert [p.name for p in sftp_server.inbox.iterdir()] == [f"{batch_id}.xml"]


def test_permission_denied_is_access_closed(sftp_server, settings):
    batch_ids = _prepare(settings, "run-1")["batches"]
    sftp_server.closed = True
    client = SftpFileDropClient()
    with pytest.raises(AccessClosed, match="§ 48"):
        client.submit(_staged(settings, batch_ids[0]))
    with pytest.raises(AccessClosed):
        client.get_batch_receipt(batch_ids[0])
    with pytest.raises(AreaDeliveryStopped, match=r"closed access \(§ 48\)"):
        deliver_area(AREA, run_id="run-1", settings=settings, client=client)
    assert list(sftp_server.inbox.iterdir()) == []
    # The upload was refused, but the batch was handed over: it stays in doubt (asked about first next
    # time), never back to `built`, which a preparation would rebuild.
    assert settings.state().batch(batch_ids[0])["status"] == "unknown"

    sftp_server.closed = False  # access restored: clearing the task delivers everything once
    result = deliver_area(AREA, run_id="run-1", settings=settings, client=client)
    assert result["batches_sent"] == len(batch_ids)
    assert sorted(sftp_server.files()) == sorted(f"{b}.xml" for b in batch_ids)


def test_connection_refused_is_transient(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_AMS_SFTP", _connection(free_port(), tmp_path / "no-key"))
    with pytest.raises(TransientDeliveryError, match="connection failed"):
        SftpFileDropClient().get_batch_receipt("00000000-0000-4000-8000-000000000000")


def test_missing_inbox_is_a_configuration_error(sftp_server, settings):
    from delivery.client import DeliveryError

    batch_id = _prepare(settings, "run-1")["batches"][0]
    client = SftpFileDropClient(remote_dir="nowhere")
    with pytest.raises(DeliveryError, match="'nowhere' does not exist") as caught:
        client.submit(_staged(settings, batch_id))
    assert not isinstance(caught.value, TransientDeliveryError)

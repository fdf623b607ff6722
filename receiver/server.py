"""Run the local AMS receiver: as its own process (`python -m receiver.server`), in a thread, or as a
managed subprocess (ReceiverProcess, for tests and the demo).

    python -m receiver.server --host 127.0.0.1 --port 0 --db var/receiver.sqlite --port-file var/port

Port 0 picks a free port; the actual port is written to --port-file once the socket listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from receiver.app import SOAP_PATH, ReceiverApp, Verifier
from receiver.store import ReceiverStore

log = logging.getLogger("receiver")
REPO_ROOT = Path(__file__).resolve().parents[1]


class _QuietHandler(WSGIRequestHandler):
    """The application logs one line per request itself; werkzeug's access line is dropped."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def create_server(db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                  verify: Verifier | None = None, control: bool = True) -> tuple[BaseWSGIServer, ReceiverApp]:
    """A threaded WSGI server bound (and listening) on host:port, not yet serving."""
    app = ReceiverApp(ReceiverStore(db_path), verify=verify, control=control)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
    return server, app


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class ReceiverHandle:
    """A receiver serving in a background thread of this process (see start_in_thread)."""

    def __init__(self, server: BaseWSGIServer, app: ReceiverApp, host: str) -> None:
        self.server = server
        self.app = app
        self.store = app.store
        self.db_path = app.store.path
        self.port = server.server_port
        self.base_url = _base_url(host, self.port)
        self.url = self.base_url + SOAP_PATH
        self.wsdl_url = self.url + "?wsdl"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"ams-receiver-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.app.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                    verify: Verifier | None = None, control: bool = True) -> ReceiverHandle:
    """Start a receiver in a daemon thread; returns a handle with .url, .wsdl_url, .store, .stop()."""
    server, app = create_server(db_path, host, port, verify=verify, control=control)
    return ReceiverHandle(server, app, host)


class ReceiverProcess:
    """The receiver as a subprocess (`python -m receiver.server`), started and stopped reliably.

        with ReceiverProcess(tmp_path / "receiver.sqlite") as receiver:
            client = AmsClient(receiver.wsdl_url)
    """

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                 startup_timeout: float = 30.0, log_path: str | Path | None = None,
                 python: str = sys.executable) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.python = python
        self._workdir = tempfile.TemporaryDirectory(prefix="ams-receiver-")
        self.port_file = Path(self._workdir.name) / "port"
        self.log_path = Path(log_path) if log_path else Path(self._workdir.name) / "receiver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not running")
        return _base_url(self.host, self.port)

    @property
    def url(self) -> str:
        return self.base_url + SOAP_PATH

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Self:
        if self.process is not None:
            raise RuntimeError("already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [self.python, "-m", "receiver.server", "--host", self.host, "--port", str(self.requested_port),
               "--db", str(self.db_path), "--port-file", str(self.port_file)]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the receiver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.port is None and self.port_file.exists():
                text = self.port_file.read_text().strip()
                self.port = int(text) if text.isdigit() else None
            if self.port is not None:
                try:
                    with urllib.request.urlopen(self.base_url + "/_health", timeout=2) as reply:
                        if reply.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"the receiver did not become ready in {self.startup_timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; always reaps the process."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self.port = None

    def close(self) -> None:
        self.stop()
        self._workdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.kill()


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ams-receiver", description="The local AMS receiver (SOAP over HTTP)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--db", required=True, help="SQLite database file")
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--no-control", action="store_true", help="disable POST /_control (fault injection)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    server, app = create_server(args.db, args.host, args.port, control=not args.no_control)

    def _terminate(signum: int, frame: FrameType | None) -> Any:
        raise KeyboardInterrupt  # serve_forever returns and closes the socket

    signal.signal(signal.SIGTERM, _terminate)
    if args.port_file:
        _write_port_file(Path(args.port_file), server.server_port)
    log.info("AMS receiver listening on %s (db %s)", _base_url(args.host, server.server_port) + SOAP_PATH,
             args.db)
    try:
        server.serve_forever()
    finally:
        app.stopping.set()
        log.info("AMS receiver stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

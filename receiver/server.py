"""Run the local AMS receiver: as its own process (`python -m receiver.server`), in a thread, or as a
managed subprocess (ReceiverProcess, for tests and the demo).

    python -m receiver.server --host 127.0.0.1 --port 0 --db var/receiver.sqlite --port-file var/port

Port 0 picks a free port; the actual port is written to --port-file once the socket listens.

Security options (the same as keyword arguments of start_in_thread and ReceiverProcess):

    --trust-cert PATH            (repeatable) require a WS-Security signature by one of these
                                 certificates on every SOAP request (fault 1050 otherwise)
    --tls-cert PATH --tls-key PATH   serve HTTPS (TLS 1.2+) with this certificate (chain) and key
    --tls-client-ca PATH         with TLS: require a client certificate issued by this CA (mutual TLS;
                                 start_in_thread and the command line only)

Other options:

    --control                    enable POST /_control (fault injection, for tests; off by default)
    --max-request-mb N           refuse request bodies larger than N MiB (default 64) with HTTP 413
TEST ONLY (never in a demo or a deployment):

    --test-only-skip-check NAME  turn a check off (e.g. cpr-birth-date), so that the receiver accepts a
                                 record it must refuse: proves that `ams-report conformance` (§ 46)
                                 reports such a receiver as failing
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from receiver.app import (
    MAX_REQUEST_BYTES,
    SOAP_PATH,
    TEST_ONLY_SKIPPABLE_CHECKS,
    ReceiverApp,
    SignatureVerifier,
    Verifier,
)
from receiver.store import ReceiverStore

log = logging.getLogger("receiver")
REPO_ROOT = Path(__file__).resolve().parents[1]


class _QuietHandler(WSGIRequestHandler):
    """The application logs one line per request itself; werkzeug's access line is dropped."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def tls_context(cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> ssl.SSLContext:
    """The server's TLS context: TLS 1.2 or later, the certificate (chain) and key from PEM files;
    with `client_ca`, a client certificate issued by that CA is required (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context


def _verifier(verify: Verifier | None, trust_certs: Iterable[str | Path] | None) -> Verifier | None:
    trusted = list(trust_certs or [])
    if trusted and verify is not None:
        raise ValueError("give either verify or trust_certs, not both")
    return SignatureVerifier(trusted) if trusted else verify


def create_server(db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                  verify: Verifier | None = None, control: bool = False,
                  trust_certs: Iterable[str | Path] | None = None, tls_cert: str | Path | None = None,
                  tls_key: str | Path | None = None, tls_client_ca: str | Path | None = None,
                  max_request_bytes: int = MAX_REQUEST_BYTES,
                  test_only_skip_checks: Iterable[str] = ()) -> tuple[BaseWSGIServer, ReceiverApp]:
    """A threaded WSGI server bound (and listening) on host:port, not yet serving. `trust_certs`:
    PEM files of the certificates whose signatures are accepted (a SignatureVerifier; unsigned
    requests are refused). `tls_cert` + `tls_key`: serve HTTPS. `control`: enable POST /_control
    (fault injection, tests only). `max_request_bytes`: larger request bodies get HTTP 413.
    `test_only_skip_checks`: TEST ONLY."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("give both tls_cert and tls_key, or neither")
    if tls_client_ca is not None and tls_cert is None:
        raise ValueError("tls_client_ca needs tls_cert and tls_key")
    context = tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    app = ReceiverApp(ReceiverStore(db_path), verify=_verifier(verify, trust_certs), control=control,
                      max_request_bytes=max_request_bytes, test_only_skip_checks=test_only_skip_checks)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler, ssl_context=context)
    return server, app


def _base_url(host: str, port: int, tls: bool = False) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class ReceiverHandle:
    """A receiver serving in a background thread of this process (see start_in_thread)."""

    def __init__(self, server: BaseWSGIServer, app: ReceiverApp, host: str) -> None:
        self.server = server
        self.app = app
        self.store = app.store
        self.db_path = app.store.path
        self.port = server.server_port
        self.tls = server.ssl_context is not None
        self.base_url = _base_url(host, self.port, self.tls)
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
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                    verify: Verifier | None = None, control: bool = False,
                    trust_certs: Iterable[str | Path] | None = None, tls_cert: str | Path | None = None,
                    tls_key: str | Path | None = None, tls_client_ca: str | Path | None = None,
                    max_request_bytes: int = MAX_REQUEST_BYTES,
                    test_only_skip_checks: Iterable[str] = ()) -> ReceiverHandle:
    """Start a receiver in a daemon thread; returns a handle with .url, .wsdl_url, .store, .stop().
    Options: see create_server."""
    server, app = create_server(db_path, host, port, verify=verify, control=control, trust_certs=trust_certs,
                                tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
                                max_request_bytes=max_request_bytes, test_only_skip_checks=test_only_skip_checks)
    return ReceiverHandle(server, app, host)


class ReceiverProcess:
    """The receiver as a subprocess (`python -m receiver.server`), started and stopped reliably.

        with ReceiverProcess(tmp_path / "receiver.sqlite") as receiver:
            client = AmsClient(receiver.wsdl_url)
    """

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                 startup_timeout: float = 30.0, log_path: str | Path | None = None,
                 python: str = sys.executable, trust_certs: Iterable[str | Path] | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None, control: bool = False,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        self.db_path = Path(db_path)
        self.control = control
        self.max_request_bytes = max_request_bytes
        self.trust_certs = [Path(p).resolve() for p in trust_certs or []]
        self.tls_cert = Path(tls_cert).resolve() if tls_cert else None
        self.tls_key = Path(tls_key).resolve() if tls_key else None
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
        return _base_url(self.host, self.port, self.tls_cert is not None)

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
        for cert in self.trust_certs:
            cmd += ["--trust-cert", str(cert)]
        if self.tls_cert and self.tls_key:
            cmd += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if self.control:
            cmd.append("--control")
        if self.max_request_bytes != MAX_REQUEST_BYTES:
            cmd += ["--max-request-mb", repr(self.max_request_bytes / 2**20)]
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
        # A readiness probe on loopback: the server's certificate is not checked here (clients do).
        probe_tls = None
        if self.tls_cert:
            probe_tls = ssl.create_default_context()
            probe_tls.check_hostname = False
            probe_tls.verify_mode = ssl.CERT_NONE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the receiver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.port is None and self.port_file.exists():
                text = self.port_file.read_text().strip()
                self.port = int(text) if text.isdigit() else None
            if self.port is not None:
                try:
                    with urllib.request.urlopen(self.base_url + "/_health", timeout=2, context=probe_tls) as reply:
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
    parser.add_argument("--control", action="store_true",
                        help="enable POST /_control (fault injection, for tests; off by default)")
    parser.add_argument("--max-request-mb", type=float, default=MAX_REQUEST_BYTES / 2**20, metavar="N",
                        help="refuse request bodies larger than N MiB with HTTP 413 (default %(default)g)")
    parser.add_argument("--trust-cert", action="append", default=[], metavar="PATH",
                        help="PEM certificate whose WS-Security signatures are accepted (repeatable); when "
                             "given, unsigned requests are refused with fault 1050")
    parser.add_argument("--tls-cert", metavar="PATH", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", metavar="PATH",
                        help="with TLS: require client certificates issued by this CA (mutual TLS)")
    parser.add_argument("--test-only-skip-check", action="append", default=[], metavar="NAME",
                        choices=TEST_ONLY_SKIPPABLE_CHECKS,
                        help="TEST ONLY: turn a check off so the receiver accepts what it must refuse (for testing "
                             "the conformance run); never use it in a demo or a deployment")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.max_request_mb <= 0:
        parser.error("--max-request-mb must be positive")

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    try:
        server, app = create_server(args.db, args.host, args.port, control=args.control,
                                    trust_certs=args.trust_cert, tls_cert=args.tls_cert, tls_key=args.tls_key,
                                    tls_client_ca=args.tls_client_ca,
                                    max_request_bytes=max(1, int(args.max_request_mb * 2**20)),
                                    test_only_skip_checks=args.test_only_skip_check)
    except (ValueError, ssl.SSLError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.filename is None:
            raise  # e.g. the port is taken: the traceback says so
        log.error("cannot start the receiver: %s", exc)
        return 2

    def _terminate(signum: int, frame: FrameType | None) -> Any:
        raise KeyboardInterrupt  # serve_forever returns and closes the socket

    if not args.tls_cert and args.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("plain HTTP on %s: anyone on the network can read the CPR numbers sent; give --tls-cert and "
                    "--tls-key, or bind to 127.0.0.1", args.host)
    signal.signal(signal.SIGTERM, _terminate)
    if args.port_file:
        _write_port_file(Path(args.port_file), server.server_port)
    log.info("AMS receiver listening on %s (db %s)%s%s%s",
             _base_url(args.host, server.server_port, bool(args.tls_cert)) + SOAP_PATH, args.db,
             f"; signatures required, {len(args.trust_cert)} trusted certificate(s)" if args.trust_cert else "",
             "; mutual TLS" if args.tls_client_ca else "",
             "; fault injection on (POST /_control)" if args.control else "")
    try:
        server.serve_forever()
    finally:
        app.stopping.set()
        app.store.close()
        log.info("AMS receiver stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

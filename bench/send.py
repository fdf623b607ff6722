"""The `send` phase alone: archived SubmitBatch payloads posted to a local receiver, client and receiver
timed (and profiled) apart.

    .venv/bin/python bench/send.py --home /work/bench/send [--batches 10] [--profile client|receiver]

`--home` is a `bench/cycle.py` work folder after a run: its archived payloads (`var/archive`, decrypted with
its `archive.key`) are the batches sent. Each batch is sent under a fresh batch id (the payload is otherwise
unchanged) to a fresh receiver (TLS, signatures required, SQLite), the way `bench/cycle.py` runs it:

- **client**: `AmsClient.submit` against a receiver in its own process (what the `send` phase measures);
- **receiver**: the receiver's WSGI application called in this process with the signed requests the client
  sent (no socket, no TLS): what the receiver spends per batch.

`--profile client` / `--profile receiver` prints the top of a cProfile of that part. `--rounds N` sends the
batches N times, each round under fresh record ids too (new records: the receiver's table grows as in a
1,000,000-record run) and prints each round's CPU per batch. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _payloads(home: Path, limit: int) -> list[bytes]:
    from cryptography.fernet import Fernet, MultiFernet

    keys = [line.strip() for line in (home / "archive.key").read_text().splitlines() if line.strip()]
    fernet = MultiFernet([Fernet(k) for k in keys])
    files = sorted((home / "var" / "archive").rglob("payload.xml.gz.enc"))[:limit]
    if not files:
        raise SystemExit(f"no archived payloads under {home / 'var' / 'archive'}: run bench/cycle.py --home {home}")
    return [gzip.decompress(fernet.decrypt(f.read_bytes())) for f in files]


def _fresh_id(payload: bytes) -> bytes:
    """The payload under a new batch id (a fresh receiver would do; this keeps one receiver per run)."""
    start = payload.index(b"<BatchIdentifier>") + len(b"<BatchIdentifier>")
    end = payload.index(b"</BatchIdentifier>", start)
    return payload[:start] + str(uuid.uuid4()).encode() + payload[end:]


def _fresh_records(payload: bytes, seed: int) -> bytes:
    """The payload with fresh record ids (deterministic in `seed`): new records for the receiver."""
    import re

    counter = iter(range(10**9))
    return re.sub(rb"<RecordIdentifier>[^<]*</RecordIdentifier>",
                  lambda m: b"<RecordIdentifier>" + str(uuid.UUID(int=(seed << 64) + next(counter) + 1)).encode()
                  + b"</RecordIdentifier>", payload)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc): robust where wall time is not (a
    shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile_top(profile: cProfile.Profile, limit: int = 30) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(limit)
    text = out.getvalue()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(limit)
    return text + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="a bench/cycle.py work folder after a run")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--profile", choices=("client", "receiver"), default=None)
    parser.add_argument("--rounds", type=int, default=1,
                        help="send the batches this many times, each round with fresh record ids")
    args = parser.parse_args(argv)

    from delivery.client import client_from_connection
    from delivery.security import generate_test_pki
    from receiver.app import ReceiverApp, SignatureVerifier
    from receiver.server import ReceiverProcess
    from receiver.store import ReceiverStore

    base = _payloads(Path(args.home), args.batches)
    rounds = [[_fresh_id(p) for p in base]]
    for number in range(1, args.rounds):
        rounds.append([_fresh_id(_fresh_records(p, number)) for p in base])
    payloads = [p for batches in rounds for p in batches]
    records = sum(p.count(b"<RecordIdentifier>") for p in payloads)
    size = sum(len(p) for p in payloads)
    print(f"{len(payloads)} batches, {records:,} records, {size / 2**20:.1f} MiB of payload"
          + (f" ({args.rounds} rounds of {len(base)})" if args.rounds > 1 else ""))
    per_round = len(base)
    with tempfile.TemporaryDirectory(prefix="ams-send-bench-") as tmp:
        work = Path(tmp)
        pki = generate_test_pki(work / "pki", name="AMS send bench")
        extra = {"scheme": "https", "timeout": 300, "ca_bundle": str(pki.ca_cert),
                 "signing_key": str(pki.client_key), "signing_cert": str(pki.client_cert)}
        requests_sent: list[bytes] = []
        with ReceiverProcess(work / "receiver.sqlite", trust_certs=[pki.client_cert], tls_cert=pki.server_cert,
                             tls_key=pki.server_key) as receiver:
            client = client_from_connection("127.0.0.1", receiver.port, "ams", extra)
            profile = cProfile.Profile() if args.profile == "client" else None
            started = time.perf_counter()
            cpu, receiver_cpu = time.process_time(), _cpu_seconds(receiver.pid or 0)
            if profile:
                profile.enable()
            marks = [(time.process_time(), _cpu_seconds(receiver.pid or 0))]
            for number, payload in enumerate(payloads, 1):
                receipt = client.submit(payload)
                requests_sent.append(receipt.request_bytes)
                assert len(receipt.records) == payload.count(b"<RecordIdentifier>")
                if args.rounds > 1 and number % per_round == 0:
                    marks.append((time.process_time(), _cpu_seconds(receiver.pid or 0)))
            if profile:
                profile.disable()
            for number, (before, after) in enumerate(zip(marks, marks[1:], strict=False), 1):
                print(f"  round {number}: CPU per batch: client {(after[0] - before[0]) / per_round * 1000:.0f} ms, "
                      f"receiver process {(after[1] - before[1]) / per_round * 1000:.0f} ms")
            sent = time.perf_counter() - started
            cpu, receiver_cpu = time.process_time() - cpu, _cpu_seconds(receiver.pid or 0) - receiver_cpu
        print(f"client (submit, receiver in its own process): {sent:.2f} s, {records / sent:,.0f} records/s, "
              f"{sent / len(payloads) * 1000:.0f} ms per batch; CPU per batch: client "
              f"{cpu / len(payloads) * 1000:.0f} ms, receiver process {receiver_cpu / len(payloads) * 1000:.0f} ms")
        if profile:
            print(_profile_top(profile))

        from werkzeug.test import EnvironBuilder

        app = ReceiverApp(ReceiverStore(work / "receiver-inproc.sqlite"),
                          verify=SignatureVerifier([pki.client_cert]))
        profile = cProfile.Profile() if args.profile == "receiver" else None
        took = took_cpu = 0.0
        round_cpu = []
        for number, request in enumerate(requests_sent, 1):
            environ = EnvironBuilder(path="/ams", method="POST", data=request,
                                     headers={"Content-Type": "text/xml; charset=utf-8"}).get_environ()
            status: list[str] = []

            def start_response(code: str, headers: object, *rest: object, status: list[str] = status) -> None:
                status.append(code)

            started, cpu = time.perf_counter(), time.process_time()
            if profile:
                profile.enable()
            body = b"".join(app(environ, start_response))
            if profile:
                profile.disable()
            took += time.perf_counter() - started
            took_cpu += time.process_time() - cpu
            assert status[0].startswith("200"), (status, body[:300])
            if args.rounds > 1 and number % per_round == 0:
                round_cpu.append(took_cpu - sum(round_cpu))
        for number, spent in enumerate(round_cpu, 1):
            print(f"  round {number}: receiver CPU {spent / per_round * 1000:.0f} ms per batch")
        print(f"receiver (its WSGI app in this process): {took:.2f} s, {records / took:,.0f} records/s, "
              f"{took / len(payloads) * 1000:.0f} ms per batch; CPU {took_cpu / len(payloads) * 1000:.0f} ms per batch")
        if profile:
            print(_profile_top(profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

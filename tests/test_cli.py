"""The README's main command, as a user runs it: `ams-report demo` (what `make run` calls), twice,
then the archive check and the summary, in a fresh AMS_HOME."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AMS_"))}
    env.update({"AMS_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")})
    return subprocess.run([str(Path(sys.executable).with_name("ams-report")), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_demo_twice_then_verify_and_summary(tmp_path):
    home = tmp_path / "var"
    first = _cli(["demo", "--persons", "300"], home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "Created the demo source database" in out and "TLS; requests must be signed" in out
    rows = re.findall(r"^([1-8])\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+delivered$", out, re.M)
    assert [r[0] for r in rows] == [str(n) for n in range(1, 9)]  # one row per area
    for _, extracted, delivered, annulled, quarantined, unchanged, outstanding, _ in rows:
        assert int(extracted) == int(delivered) + int(annulled) + int(quarantined) + int(unchanged)
        assert int(outstanding) == 0
    assert sum(int(r[2]) for r in rows) > 0 and "Receipts (ServiceReceipt.MessageIdentifier):" in out
    assert (home / "reports" / "index.html").exists()

    second = _cli(["demo"], home)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "Nothing new to send" in second.stdout

    with sqlite3.connect(home / "source" / "demo.sqlite") as conn:
        cprs = {r[0] for r in conn.execute("SELECT cpr FROM persons") if r[0] != "0000000000"}
    for result in (first, second):
        assert not [c for c in cprs if c in result.stdout or c in result.stderr]

    assert _cli(["verify-archive"], home).returncode == 0
    summary = _cli(["summary"], home)
    assert summary.returncode == 0 and "Nothing new to send" in summary.stdout
    payload = next((home / "archive").rglob("payload.xml.gz.enc"))
    blob = payload.read_bytes()
    payload.write_bytes(blob[:20] + (b"A" if blob[20:21] != b"A" else b"B") + blob[21:])  # always a change
    tampered = _cli(["verify-archive"], home)
    assert tampered.returncode == 1 and "was changed after archiving" in tampered.stdout


def test_demo_of_several_municipalities_on_one_machine(tmp_path):
    """`ams-report demo --municipalities 101,147`: a tenants file, a source and a DAG per municipality, one
    receiver. Both deliver (their record ids do not collide at the one receiver: it holds every record each
    summary counts as delivered), each has its own report folder, and the overview links both."""
    home = tmp_path / "var"
    result = _cli(["demo", "--municipalities", "101,147", "--persons", "200"], home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "=== 101 København (employment_reporting_101) ===" in out
    assert "=== 147 Frederiksberg (employment_reporting_147) ===" in out
    delivered = 0
    for block in out.split("=== ")[1:]:
        rows = re.findall(r"^([1-8])\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+delivered$", block, re.M)
        assert [r[0] for r in rows] == [str(n) for n in range(1, 9)]
        delivered += sum(int(r[2]) + int(r[3]) for r in rows)
    assert delivered > 0
    with sqlite3.connect(home / "receiver" / "receiver.sqlite") as conn:
        held, resent = conn.execute("SELECT COUNT(*), COALESCE(SUM(resends), 0) FROM records").fetchone()
    assert (held, resent) == (delivered, 0)
    overview = (home / "reports" / "index.html").read_text()
    assert 'href="101/"' in overview and 'href="147/"' in overview
    assert (home / "reports" / "101" / "index.html").exists() and (home / "archive" / "147").is_dir()
    for code in ("101", "147"):
        with sqlite3.connect(home / "source" / f"demo_{code}.sqlite") as conn:
            cprs = {r[0] for r in conn.execute("SELECT cpr FROM persons") if r[0] != "0000000000"}
        assert not [c for c in cprs if c in out or c in result.stderr]
    bad = _cli(["demo", "--municipalities", "101,9999"], tmp_path / "bad")
    assert bad.returncode == 2 and "9999" in bad.stderr and "kommunekode" in bad.stderr

"""The test before go-live (§ 46): `ams-report conformance` against the real local receiver on loopback,
through the real zeep client, and against a receiver that accepts a record it must refuse (test-only)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

from cli import main as cli
from delivery.conformance import DEFECTS, certification_records, kind_columns
from receiver.server import start_in_thread
from receiver.store import ReceiverStore
from transforms.registry import V1, V2_SAMPLE

CONN_ID = "ams_test_endpoint"


def connection(monkeypatch, receiver, **extra: object) -> None:
    host, port = receiver.base_url.split("://", 1)[1].rsplit(":", 1)
    extra = {"timeout": 10, "scheme": "http", **extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "http", "host": host, "port": int(port), "schema": "ams", "extra": extra}))


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Path:
    """AMS_HOME in tmp_path; the production state database must never be created by a conformance run."""
    monkeypatch.setenv("AMS_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("AMS_STATE_URL", raising=False)
    monkeypatch.delenv("AMS_SOURCE_URL", raising=False)
    return tmp_path


def synthetic_cprs() -> set[str]:
    cprs: set[str] = set()
    for records in certification_records(V1, Path(tempfile.mkdtemp())).values():
        for column in ("person_cpr", "person_cprs"):
            if column in records:
                for value in records[column]:
                    cprs.update([value] if isinstance(value, str) else value or ())
    return cprs


def test_the_certification_set_covers_every_area_and_record_kind(tmp_path: Path) -> None:
    sets = certification_records(V1, tmp_path)
    assert sorted(sets) == list(range(1, 9))
    for number, records in sets.items():
        columns = kind_columns(V1.area(number))
        assert len(records) == (len(records.drop_duplicates(columns)) if columns else 1)
    assert set(sets[4]["kind"]) == {"basic", "no_cvr"}  # CVR or SE number (§ 19 nr. 2)
    assert set(sets[6]["kind"]) == {"EMPLOYMENT", "EDUCATION"}  # § 30 nr. 1-2
    assert set(sets[7]["kind"]) == {"per_person+PERSON", "per_slot+SLOT"}  # § 36
    assert {k.split("+")[-1] for k in sets[8]["kind"]} == {"TEACHING_MATERIAL", "WORK_TOOLS"}  # § 42, stk. 1
    assert len(sets[1]) >= 4 and len(sets[2]) >= 4  # courses, company-directed, state, job plans ...


@pytest.mark.parametrize("version", [V1, V2_SAMPLE], ids=lambda v: v.name)
def test_conformance_passes_against_the_local_receiver(env: Path, monkeypatch, capsys, version) -> None:
    receiver = start_in_thread(env / "receiver.sqlite")
    try:
        connection(monkeypatch, receiver, test_endpoint=True)
        code = cli.main(["conformance", "--receiver", CONN_ID, "--interface", version.name,
                         "--out", str(env / "report")])
    finally:
        receiver.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((env / "report" / "conformance.json").read_text(encoding="utf-8"))
    assert report["passed"] and report["failed_checks"] == 0 and report["interface_version"] == version.name
    ids = [c["id"] for c in report["checks"]]
    assert ids == [f"area{n}.{step}" for n in range(1, 9) for step in ("create", "update", "annul")] + [
        d.id for d in DEFECTS]
    for check in report["checks"]:
        assert re.fullmatch(r"[0-9a-f]{64}", check["payload_sha256"]) and re.fullmatch(r"[0-9a-f]{64}",
                                                                                       check["request_sha256"])
        if check["id"].startswith("area"):
            assert check["receipt_id"] and all(r["status"] == "ACCEPTED" for r in check["records"])
    assert "the test before go-live PASSED" in out
    html = (env / "report" / "conformance.html").read_text(encoding="utf-8")
    assert "PASSED" in html and html.count('class="pass"') == len(ids)
    # Synthetic CPR numbers too are shown masked only; production state and source were never touched.
    texts = out + html + json.dumps(report)
    assert not [cpr for cpr in synthetic_cprs() if cpr in texts]
    assert not (env / "var" / "state").exists() and not (env / "var" / "source").exists()


def test_a_receiver_that_accepts_what_it_must_refuse_fails_the_report(env: Path, monkeypatch, capsys) -> None:
    receiver = start_in_thread(env / "receiver.sqlite", test_only_skip_checks=["cpr-birth-date"])
    try:
        connection(monkeypatch, receiver, test_endpoint=True)
        code = cli.main(["conformance", "--receiver", CONN_ID, "--out", str(env / "report")])
    finally:
        receiver.stop()
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((env / "report" / "conformance.json").read_text(encoding="utf-8"))
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not report["passed"] and [c["id"] for c in failed] == ["defect.cpr_birth_date"]
    assert failed[0]["outcome"].startswith("ACCEPTED what must be refused")
    assert "FAILED: defect.cpr_birth_date" in out
    html = (env / "report" / "conformance.html").read_text(encoding="utf-8")
    assert "FAILED" in html and html.count('class="fail"') == 1


def test_a_connection_not_marked_as_test_endpoint_is_refused(env: Path, monkeypatch, capsys) -> None:
    receiver = start_in_thread(env / "receiver.sqlite")
    try:
        connection(monkeypatch, receiver)
        assert cli.main(["conformance", "--receiver", CONN_ID, "--out", str(env / "report")]) == 2
        assert ReceiverStore(receiver.db_path).batches() == []  # nothing was sent
    finally:
        receiver.stop()
    assert "not marked as a test endpoint" in capsys.readouterr().err
    assert not (env / "report").exists()

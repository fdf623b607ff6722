"""Interface versions (§ 49): the 40 working days' notice, the versions in the registry, the payload and
the receiver of each version, and the pipeline's switch on the effective date (real receiver, real zeep
client, real pipeline on a synthetic source)."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import requests
from lxml import etree

from cycle.pipeline import AreaDeliveryStopped, Settings, deliver_area, prepare_area
from delivery.archive import PAYLOAD_FILE
from delivery.client import AmsClient, BusinessFault
from delivery.interface_change import describe_change, field_changes, xsd_differences
from receiver.server import ReceiverHandle, start_in_thread
from receiver.store import ReceiverStore
from tests.test_delivery_faults import demo_settings
from transforms import payload
from transforms.payload import PayloadError, build_batch, generate_xsd, q, validate_payload
from transforms.registry import AREAS, INTERFACE_EFFECTIVE_ENV, V1, V2_SAMPLE, version_in_force
from transforms.workdays import NONWORKING_DAYS_ENV, WorkingDayCalendar, check_notice

CPR_OK = "0101901234"

# --- 40 Danish working days (§ 49) --------------------------------------------------------------


def test_notice_across_easter_one_day_short_and_exactly_long_enough() -> None:
    # 2 March 2026 to 1 May 2026: Maundy Thursday, Good Friday and Easter Monday (2, 3, 6 April) do not count.
    short = check_notice(date(2026, 3, 2), date(2026, 4, 30))
    assert not short.valid and short.working_days == 39
    assert [d for d, _ in short.skipped] == [date(2026, 4, 2), date(2026, 4, 3), date(2026, 4, 6)]
    enough = check_notice(date(2026, 3, 2), date(2026, 5, 1))
    assert enough.valid and enough.working_days == 40
    assert short.earliest_effective == enough.earliest_effective == date(2026, 5, 1)
    assert "TOO SHORT by 1 working day" in short.describe() and "VALID" in enough.describe()


def test_notice_across_christmas_one_day_short_and_exactly_long_enough() -> None:
    # 3-30 November: 20 weekdays; 1-30 December: 22 weekdays less Christmas Eve and Christmas Day = 20.
    short = check_notice(date(2026, 11, 2), date(2026, 12, 30))
    enough = check_notice(date(2026, 11, 2), date(2026, 12, 31))
    assert (short.valid, short.working_days) == (False, 39)
    assert (enough.valid, enough.working_days) == (True, 40)
    assert dict(enough.skipped) == {date(2026, 12, 24): "Christmas Eve (Juleaftensdag)",
                                    date(2026, 12, 25): "Christmas Day"}
    # A municipality that counts Christmas Eve as a working day may go live a day earlier.
    counting_eve = WorkingDayCalendar.from_env({NONWORKING_DAYS_ENV: ""})
    assert check_notice(date(2026, 11, 2), date(2026, 12, 30), counting_eve).valid


def test_which_days_count() -> None:
    calendar = WorkingDayCalendar()
    assert not calendar.is_working_day(date(2023, 5, 5))  # Store Bededag 2023: still a holiday
    assert calendar.is_working_day(date(2024, 4, 26))  # abolished from 2024: a working day
    assert calendar.why_not_working(date(2026, 6, 5)) == "Constitution Day (Grundlovsdag)"
    assert calendar.why_not_working(date(2026, 12, 31)) == "New Year's Eve (Nytårsaftensdag)"
    assert calendar.why_not_working(date(2026, 11, 28)) == "Saturday"
    assert calendar.is_working_day(date(2026, 5, 1))  # 1 May is not a holiday in Denmark
    with pytest.raises(ValueError, match="MM-DD"):
        WorkingDayCalendar.from_env({NONWORKING_DAYS_ENV: "24/12"})


def test_interface_change_command(tmp_path, monkeypatch, capsys) -> None:
    from cli import main as cli

    monkeypatch.setenv("AMS_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("AMS_STATE_URL", raising=False)
    args = ["interface-change", "--from", "v1", "--to", "v2", "--announced", "2026-03-02"]
    assert cli.main([*args, "--effective", "2026-04-30"]) == 1
    out = capsys.readouterr().out
    assert "TOO SHORT by 1 working day" in out and "Earliest lawful effective date for this notice: 2026-05-01" in out
    assert "area 3: renamed interview_form: element InterviewFormIdentifier -> InterviewFormCode" in out
    assert "FollowUpInterviewRecord: + InterviewIdentifier" in out and "SAMPLE" in out
    assert "nothing delivered yet" in out and not (tmp_path / "var" / "state").exists()
    assert cli.main([*args, "--effective", "2026-05-01"]) == 0
    assert "VALID" in capsys.readouterr().out


# --- the versions in the registry --------------------------------------------------------------


def test_sample_v2_adds_removes_and_renames_in_area_3_only() -> None:
    assert V2_SAMPLE.sample and V2_SAMPLE.based_on is V1
    changes = {(c.area, c.change, c.field) for c in field_changes(V1, V2_SAMPLE)}
    assert changes == {(3, "added", "interview_id"), (3, "removed", "visitation_rules"),
                       (3, "renamed", "interview_form")}
    assert V2_SAMPLE.area(3).field("interview_form").element == "InterviewFormCode"
    assert all(V2_SAMPLE.area(a.number) is a for a in AREAS if a.number != 3)
    assert V1.areas() == AREAS


def test_version_in_force_follows_the_schedule() -> None:
    assert version_in_force(date(2099, 1, 1), {}) is V1  # the sample is never in force unless scheduled
    schedule = {INTERFACE_EFFECTIVE_ENV: "v2=2027-03-01"}
    assert version_in_force(date(2027, 2, 28), schedule) is V1
    assert version_in_force(date(2027, 3, 1), schedule) is V2_SAMPLE
    with pytest.raises(ValueError, match="v9=2027-03-01"):
        version_in_force(date(2027, 3, 1), {INTERFACE_EFFECTIVE_ENV: "v9=2027-03-01"})


def test_every_versions_schema_files_are_in_sync() -> None:
    for path, text in payload.schema_files():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run ams-report docs"
    diff = xsd_differences(generate_xsd(V1), generate_xsd(V2_SAMPLE))
    assert "FollowUpInterviewRecord: + InterviewIdentifier (ams:KeyType minOccurs=1 maxOccurs=1)" in diff
    assert any(line.startswith("FollowUpInterviewRecord: - VisitationCategoryRulesVersion") for line in diff)


def followup_frame(version=V1) -> pd.DataFrame:
    row = {"record_id": str(uuid.uuid4()), "action": "CREATE_OR_UPDATE", "person_cpr": CPR_OK,
           "municipality_code": "101", "held_on": date(2027, 2, 1), "interview_form": "1",
           "visitation_category": "1", "visitation_rules": "2014", "interview_id": "F-1"}
    return pd.DataFrame([{k: v for k, v in row.items() if k in ("record_id", "action", *version.area(3).field_names)}])


def test_a_batch_is_in_one_version_and_validates_only_against_it() -> None:
    v2 = build_batch(3, followup_frame(V2_SAMPLE), batch_id=str(uuid.uuid4()), sender_municipality="101",
                     run_id="t", version=V2_SAMPLE)
    validate_payload(v2)
    root = etree.fromstring(v2)
    assert root.tag == q("SubmitBatchRequest", V2_SAMPLE.namespace)
    record = root.find(q("Records", V2_SAMPLE.namespace))[0]
    assert record.findtext(q("InterviewIdentifier", V2_SAMPLE.namespace)) == "F-1"
    assert record.find(q("VisitationCategoryRulesVersion", V2_SAMPLE.namespace)) is None
    # A record in v1's shape inside a v2 batch: the batch would mix versions, and does not validate.
    record.find(q("InterviewFormCode", V2_SAMPLE.namespace)).tag = q("InterviewFormIdentifier", V2_SAMPLE.namespace)
    with pytest.raises(PayloadError, match="ams-reporting-v2.xsd"):
        validate_payload(etree.tostring(root))
    foreign = etree.tostring(root).replace(V2_SAMPLE.namespace.encode(), b"urn:example:v9")
    with pytest.raises(PayloadError, match="not an interface version"):
        validate_payload(foreign)


# --- receiver and client, both versions ---------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path):
    handle = start_in_thread(tmp_path / "receiver.sqlite")
    yield handle
    handle.stop()


def test_receiver_serves_and_validates_both_versions(receiver: ReceiverHandle) -> None:
    for url, version in ((receiver.wsdl_url, V1), (receiver.url + "?wsdl&version=v2", V2_SAMPLE),
                         (receiver.base_url + "/ams-v2.wsdl", V2_SAMPLE)):
        wsdl = etree.fromstring(requests.get(url, timeout=5).content)
        assert wsdl.get("targetNamespace") == version.namespace
    xsd = requests.get(f"{receiver.base_url}/{V2_SAMPLE.xsd_name}", timeout=5)
    assert xsd.content == (payload.SCHEMA_DIR / V2_SAMPLE.xsd_name).read_bytes()

    client = AmsClient(receiver.wsdl_url, timeout=10)  # the v1 WSDL: a batch is sent in its own version
    for version in (V1, V2_SAMPLE):
        batch_id = str(uuid.uuid4())
        xml = build_batch(3, followup_frame(version), batch_id=batch_id, sender_municipality="101", run_id="t",
                          version=version)
        receipt = client.submit(xml)
        assert receipt.batch_status == "ACCEPTED"
        assert client.get_batch_receipt(batch_id).message_id == receipt.message_id
        stored = ReceiverStore(receiver.db_path).records(3)[-1]
        assert stored.payload_xml.count(version.namespace.encode()) >= 1
    bad = etree.fromstring(build_batch(3, followup_frame(V2_SAMPLE), batch_id=str(uuid.uuid4()),
                                       sender_municipality="101", run_id="t", version=V2_SAMPLE))
    element = next(bad.iter(q("InterviewIdentifier", V2_SAMPLE.namespace)))
    element.getparent().remove(element)
    with pytest.raises(BusinessFault) as refused:
        client.submit(etree.tostring(bad))
    assert refused.value.code == 1014 and "InterviewIdentifier" in str(refused.value)


# --- the pipeline switches on the effective date -------------------------------------------------

SWITCH = date(2026, 3, 2)  # before today: shows the version comes from the run's date, not the clock
DAY_BEFORE = date(2026, 3, 1)
AREA = 3


def staged_namespaces(settings: Settings) -> set[str]:
    vault, state = settings.vault(), settings.state()
    return {etree.QName(etree.fromstring(vault.open(state.staged_blob(b["batch_id"], PAYLOAD_FILE) or b""))).namespace
            for b in state.outstanding_batches(AREA)}


def test_switch_on_the_effective_date_and_rerun_of_the_day_before(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(INTERFACE_EFFECTIVE_ENV, f"v2={SWITCH.isoformat()}")
    settings = demo_settings(tmp_path, monkeypatch, persons=300, defect_rate=0.0, batch_size=40,
                             delivery_attempts=2, backoff_seconds=0.01)
    receiver = start_in_thread(tmp_path / "receiver.sqlite", control=True)
    try:
        client = AmsClient(receiver.wsdl_url, timeout=10)
        # The day before the switch: built in v1; its delivery fails (the receiver answers HTTP 500).
        prepared = prepare_area(AREA, run_id="day-before", period_end=DAY_BEFORE, settings=settings)
        assert prepared["interface_version"] == "v1" and prepared["batches"]
        assert staged_namespaces(settings) == {V1.namespace}
        requests.post(f"{receiver.base_url}/_control", json={"mode": "error500", "count": 100}, timeout=5)
        with pytest.raises(AreaDeliveryStopped):
            deliver_area(AREA, run_id="day-before", settings=settings, client=client)
        requests.post(f"{receiver.base_url}/_control", json={"mode": "ok"}, timeout=5)

        # Re-running the day before, on or after the switch: still that day's version, v1.
        rerun = prepare_area(AREA, run_id="day-before", period_end=DAY_BEFORE, settings=settings)
        assert rerun["interface_version"] == "v1"
        delivered = deliver_area(AREA, run_id="day-before", settings=settings, client=client)
        assert delivered["accepted"] > 0 and not delivered.get("rejected")
        stored = ReceiverStore(receiver.db_path).records(AREA)
        assert stored and all(b"InterviewFormIdentifier" in r.payload_xml for r in stored)
        accepted = len(stored)

        # What the change means, read from the ledger: every delivered area 3 record is sent again.
        text, notice = describe_change(V1, V2_SAMPLE, date(2026, 1, 2), SWITCH, settings.state_url)
        assert notice.valid and f"area 3: {accepted} record(s)" in text

        # The effective date: the whole run is built in v2, and the delivered records go again as updates.
        switched = prepare_area(AREA, run_id="switch-day", period_end=SWITCH, settings=settings)
        assert switched["interface_version"] == "v2"
        assert staged_namespaces(settings) == {V2_SAMPLE.namespace}  # no batch mixes versions
        assert switched["to_update"] == accepted
        deliver_area(AREA, run_id="switch-day", settings=settings, client=client)
        stored = {r.record_id: r for r in ReceiverStore(receiver.db_path).records(AREA)}
        assert len(stored) >= accepted
        updated = [r for r in stored.values() if r.version == 2]
        assert len(updated) == accepted
        assert all(b"InterviewIdentifier" in r.payload_xml and b"InterviewFormCode" in r.payload_xml
                   and b"VisitationCategoryRulesVersion" not in r.payload_xml for r in updated)
        # A second run on the switch day finds nothing new: v2 content is now the ledger's.
        again = prepare_area(AREA, run_id="switch-day-2", period_end=SWITCH, settings=settings)
        assert not again["batches"]
    finally:
        receiver.stop()

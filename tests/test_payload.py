"""The payload contract: XSD/WSDL generated from the registry, batches built and validated."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from transforms import payload
from transforms.identifiers import make_cvr
from transforms.payload import NAMESPACE, PayloadError, build_batch, generate_xsd, q, validate_payload
from transforms.registry import AREAS, INTERFACE_VERSIONS, RECORD_ID_ELEMENT, V2_SAMPLE, Area, get_area

XS = "{http://www.w3.org/2001/XMLSchema}"
CPR = "0101901234"
CPR2 = "0202851234"
CREATED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

#: One valid value per field kind (the records frame's types, docs/architecture.md).
SAMPLE = {
    "cpr": CPR,
    "cpr_list": (CPR, CPR2),
    "municipality": "101",
    "jobcentre": "10100",
    "cvr": make_cvr("1234567"),
    "pnr": "1000000001",
    "se": "12345678",
    "key": "K-1",
    "date": date(2024, 1, 15),
    "hours": 37.0,
    "count": 3,
    "text": "Tømrer & snedker <lærling>",
    "code": "A1",
    "bool": True,
}


def records_frame(area: Area) -> pd.DataFrame:
    """Three rows: every field set; only the always-required fields set; an annulment."""
    full = {f.name: SAMPLE[f.kind] for f in area.fields}
    required_only = {f.name: (SAMPLE[f.kind] if f.required is True else None) for f in area.fields}
    annul = dict.fromkeys(area.field_names)
    rows = []
    for action, values in (("CREATE_OR_UPDATE", full), ("CREATE_OR_UPDATE", required_only), ("ANNUL", annul)):
        rows.append({"record_key": f"k{len(rows)}", "record_id": str(uuid.uuid4()), "action": action, **values})
    return pd.DataFrame(rows)


def build(area: Area, frame: pd.DataFrame, **kwargs: object) -> bytes:
    args = {"batch_id": str(uuid.uuid4()), "sender_municipality": "101", "run_id": "manual__2024-03-01",
            "created": CREATED}
    args.update(kwargs)
    return build_batch(area, frame, **args)  # type: ignore[arg-type]


def parse(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


# --- the generated contract ---------------------------------------------------------------------


def test_schema_files_in_sync_with_registry() -> None:
    assert payload.XSD_PATH.read_text(encoding="utf-8") == generate_xsd(), (
        "schemas/ams-reporting-v1.xsd is stale: run python -m transforms.payload")
    assert payload.WSDL_PATH.read_text(encoding="utf-8") == payload.generate_wsdl(), (
        "schemas/ams-reporting-v1.wsdl is stale: run python -m transforms.payload")


def test_xsd_compiles_and_is_deterministic() -> None:
    assert generate_xsd() == generate_xsd()
    etree.XMLSchema(etree.fromstring(generate_xsd().encode()))
    root = etree.fromstring(generate_xsd().encode())
    assert root.get("targetNamespace") == NAMESPACE
    assert root.get("elementFormDefault") == "qualified"


@pytest.mark.parametrize("area", AREAS, ids=lambda a: a.code)
def test_record_type_follows_registry(area: Area) -> None:
    root = etree.fromstring(generate_xsd().encode())
    ctype = root.find(f"{XS}complexType[@name='{area.record_type}']")
    assert ctype is not None
    elements = ctype.findall(f"{XS}sequence/{XS}element")
    assert elements[0].get("name") == RECORD_ID_ELEMENT
    assert elements[0].get("type") == "ams:GuidType"
    assert len(elements) == len(area.fields) + 1
    for el, f in zip(elements[1:], area.fields, strict=True):
        expected = payload.PERSONS_ELEMENT if f.kind == "cpr_list" else f.element
        assert el.get("name") == expected
        assert el.get("type") == f"ams:{payload.KIND_TYPES[f.kind]}"
        assert el.get("minOccurs", "1") == ("1" if f.required is True else "0")
        doc = el.findtext(f"{XS}annotation/{XS}documentation")
        assert doc.startswith(f.paragraph)
        if f.description:
            assert f.description in doc
    records_choice = root.find(f"{XS}complexType[@name='RecordsType']/{XS}sequence/{XS}choice")
    assert records_choice.find(f"{XS}element[@name='{area.record_element}']").get("type") == f"ams:{area.record_type}"


def test_every_element_is_documented_and_kinds_have_types() -> None:
    root = etree.fromstring(generate_xsd().encode())
    for el in root.iter(f"{XS}element"):
        assert el.findtext(f"{XS}annotation/{XS}documentation"), el.get("name")
    simple = {t.get("name") for t in root.iter(f"{XS}simpleType")}
    complex_ = {t.get("name") for t in root.iter(f"{XS}complexType")}
    for kind, type_name in payload.KIND_TYPES.items():
        assert type_name in (complex_ if kind == "cpr_list" else simple), kind
    persons = root.find(f"{XS}complexType[@name='PersonsType']/{XS}sequence/{XS}element")
    assert persons.get("name") == "PersonCivilRegistrationIdentifier"
    assert persons.get("maxOccurs") == "unbounded"
    cpr = root.find(f"{XS}simpleType[@name='CprNumberType']/{XS}restriction/{XS}pattern")
    assert cpr.get("value") == r"\d{10}"
    assert root.find(f"{XS}simpleType[@name='CodeType']/{XS}restriction/{XS}enumeration") is None
    for name in ("SubmitBatchRequest", "SubmitBatchResponse", "GetBatchReceiptRequest",
                 "GetBatchReceiptResponse", "ServiceFault"):
        assert root.find(f"{XS}element[@name='{name}']") is not None, name


def test_wsdl_loads_in_zeep_from_disk() -> None:
    from zeep import Client, Settings

    client = Client(str(payload.WSDL_PATH), settings=Settings(strict=True))
    binding = client.service._binding
    assert set(binding._operations) == {"SubmitBatch", "GetBatchReceipt"}
    assert binding.get("SubmitBatch").soapaction == payload.soap_action("SubmitBatch")
    assert client.service._binding_options["address"] == payload.DEFAULT_ENDPOINT
    assert client.get_element(q("SubmitBatchRequest")) is not None


def test_write_schema_to_another_directory(tmp_path) -> None:
    written = payload.write_schema(tmp_path)
    assert [p.name for p in written] == [name for v in INTERFACE_VERSIONS for name in (v.xsd_name, v.wsdl_name)]
    assert (tmp_path / payload.XSD_NAME).read_text(encoding="utf-8") == generate_xsd()
    assert (tmp_path / V2_SAMPLE.xsd_name).read_text(encoding="utf-8") == generate_xsd(V2_SAMPLE)
    assert payload.main(["--check"]) == 0


# --- building batches ----------------------------------------------------------------------------


@pytest.mark.parametrize("area", AREAS, ids=lambda a: a.code)
def test_build_batch_validates_for_every_area(area: Area) -> None:
    frame = records_frame(area)
    xml = build(area, frame, batch_id="6f1c1d2e-0000-4000-8000-000000000001")
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    validate_payload(xml)

    root = parse(xml)
    header = root.find(q("BatchHeader"))
    assert header.findtext(q("DataArea")) == str(area.number)
    assert header.findtext(q("RecordCount")) == "3"
    assert header.findtext(q("CreatedDateTime")) == "2024-03-01T12:00:00Z"
    full, required_only, annul = list(root.find(q("Records")))
    assert full.tag == q(area.record_element) and required_only.tag == q(area.record_element)
    assert annul.tag == q(payload.ANNULMENT_ELEMENT)
    assert [c.tag for c in annul] == [q(RECORD_ID_ELEMENT)]
    assert annul.findtext(q(RECORD_ID_ELEMENT)) == frame.record_id[2]
    assert full.findtext(q(RECORD_ID_ELEMENT)) == frame.record_id[0]

    expected_full = [RECORD_ID_ELEMENT] + [
        payload.PERSONS_ELEMENT if f.kind == "cpr_list" else f.element for f in area.fields]
    assert [etree.QName(c).localname for c in full] == expected_full
    expected_min = [RECORD_ID_ELEMENT] + [
        payload.PERSONS_ELEMENT if f.kind == "cpr_list" else f.element for f in area.fields if f.required is True]
    assert [etree.QName(c).localname for c in required_only] == expected_min

    for f in area.fields:
        if f.kind == "cpr_list":
            persons = full.find(q(payload.PERSONS_ELEMENT))
            assert [p.text for p in persons] == [CPR, CPR2]
            assert all(p.tag == q(f.element) for p in persons)
            continue
        text = full.findtext(q(f.element))
        expected = {"date": "2024-01-15", "hours": "37.00", "bool": "true", "count": "3"}.get(
            f.kind, SAMPLE[f.kind])
        assert text == expected, f.name


def test_build_batch_is_deterministic_and_missing_values_are_omitted() -> None:
    area = get_area(6)
    frame = records_frame(area)
    assert build(area, frame, batch_id="6f1c1d2e-0000-4000-8000-000000000002") == build(
        area, frame, batch_id="6f1c1d2e-0000-4000-8000-000000000002")

    frame = records_frame(get_area(1)).iloc[:1].copy()
    frame["weekly_hours"] = [float("nan")]
    frame["end_date"] = [pd.NaT]
    frame["team_id"] = [pd.NA]
    frame["job_title"] = ["   "]
    root = parse(build(get_area(1), frame))
    record = root.find(q("Records"))[0]
    for element in ("HoursPerWeek", "EndDate", "TeamIdentifier", "JobTitleText"):
        assert record.find(q(element)) is None, element


def test_value_formatting() -> None:
    area = get_area(7)
    frame = records_frame(area).iloc[:2].copy()
    frame["start_date"] = ["2024-02-01", pd.Timestamp("2024-02-02 13:45")]
    frame["granted_hours"] = [Decimal("12.5"), 7]
    frame["avg_paid_hours"] = ["4.125", 2.005]
    frame["persons_paid"] = [2.0, None]
    frame["person_cprs"] = [[CPR], (CPR, None, CPR2)]
    root = parse(build(area, frame))
    first, second = root.find(q("Records"))
    assert first.findtext(q("StartDate")) == "2024-02-01"
    assert second.findtext(q("StartDate")) == "2024-02-02"
    assert first.findtext(q("GrantedMentorHours")) == "12.50"
    assert second.findtext(q("GrantedMentorHours")) == "7.00"
    assert first.findtext(q("AveragePaidHoursPerPerson")) == "4.12"  # banker's rounding of a Decimal
    assert first.findtext(q("PersonsPaidCount")) == "2"
    assert second.find(q("PersonsPaidCount")) is None
    assert [p.text for p in first.find(q("Persons"))] == [CPR]
    assert [p.text for p in second.find(q("Persons"))] == [CPR, CPR2]

    area2 = get_area(2)
    frame2 = records_frame(area2).iloc[:2].copy()
    frame2["open_offer"] = [False, "true"]
    root2 = parse(build(area2, frame2))
    assert [r.findtext(q("OpenOfferIndicator")) for r in root2.find(q("Records"))] == ["false", "true"]


def test_build_batch_refuses_bad_frames() -> None:
    area = get_area(5)
    frame = records_frame(area)
    with pytest.raises(PayloadError, match="record_id"):
        build(area, frame.drop(columns=["record_id"]))
    bad_action = frame.copy()
    bad_action.loc[0, "action"] = "DELETE"
    with pytest.raises(PayloadError, match="DELETE"):
        build(area, bad_action)
    with pytest.raises(PayloadError, match="cv_status"):
        build(area, frame.drop(columns=["cv_status"]))
    control = frame.copy()
    control.loc[0, "cv_status"] = "A\x01"
    with pytest.raises(PayloadError, match="CvApprovalStatusCode") as exc:
        build(area, control)
    assert control.record_id[0] in str(exc.value)
    # An all-annulment frame needs no field columns.
    annul_only = frame.loc[frame.action == "ANNUL", ["record_id", "action"]]
    validate_payload(build(area, annul_only))


# --- validation ---------------------------------------------------------------------------------


def test_bad_cpr_is_reported_without_its_digits() -> None:
    area = get_area(3)
    frame = records_frame(area).iloc[:1].copy()
    frame["person_cpr"] = ["12345678"]
    xml = build(area, frame)
    with pytest.raises(PayloadError) as exc:
        validate_payload(xml)
    message = str(exc.value)
    assert "PersonCivilRegistrationIdentifier" in message
    assert frame.record_id[0] in message
    assert "line 5: " in message  # declaration, root, header, Records, the record
    assert "12345678" not in message
    assert not re.search(r"\d{8}", message.replace(frame.record_id[0], ""))
    assert exc.value.problems and "pattern" in exc.value.problems[0]


def test_missing_required_element_is_named() -> None:
    area = get_area(4)
    frame = records_frame(area).iloc[:1].copy()
    frame["held_on"] = [None]
    frame["person_cpr"] = ["0101901234"]
    with pytest.raises(PayloadError) as exc:
        validate_payload(build(area, frame))
    message = str(exc.value)
    assert "InterviewDate" in message and "Missing child element" in message
    assert "AbsenceInterview[1]" in message
    assert "0101901234" not in message


def test_invalid_values_never_leak() -> None:
    area = get_area(1)
    frame = records_frame(area).iloc[:1].copy()
    frame["employment_goal"] = ["x" * 201]
    frame["weekly_hours"] = [-1.0]
    frame["start_date"] = ["2024-02-30"]
    frame["provider_cvr"] = ["0999999999"]
    with pytest.raises(PayloadError) as exc:
        validate_payload(build(area, frame))
    message = str(exc.value)
    for element in ("EmploymentGoalText", "HoursPerWeek", "StartDate", "ProviderCVRnumberIdentifier"):
        assert element in message
    for value in ("xxxxxxxxxx", "-1.00", "2024-02-30", "0999999999"):
        assert value not in message


def test_batch_level_checks() -> None:
    area = get_area(5)
    frame = records_frame(area)
    xml = build(area, frame)
    root = parse(xml)
    root.find(q("BatchHeader")).find(q("RecordCount")).text = "7"
    with pytest.raises(PayloadError, match="RecordCount: declares 7 records, the batch holds 3"):
        validate_payload(etree.tostring(root))

    root = parse(xml)
    root.find(q("BatchHeader")).find(q("DataArea")).text = "3"
    with pytest.raises(PayloadError, match="do not belong to DataArea 3"):
        validate_payload(etree.tostring(root))

    duplicate = frame.copy()
    duplicate.loc[1, "record_id"] = duplicate.record_id[0]
    with pytest.raises(PayloadError, match="UniqueRecordIdentifier") as exc:
        validate_payload(build(area, duplicate))
    assert duplicate.record_id[0] in str(exc.value)  # the record's path names it; the value is not repeated

    with pytest.raises(PayloadError, match="not well-formed"):
        validate_payload(b"<SubmitBatchRequest>")


def test_fifty_thousand_records_build_and_validate_in_seconds() -> None:
    area = get_area(1)
    row = {f.name: SAMPLE[f.kind] for f in area.fields}
    n = 50_000
    frame = pd.DataFrame([row] * n)
    frame.insert(0, "record_id", [str(uuid.UUID(int=i + 1)) for i in range(n)])
    frame.insert(1, "action", "CREATE_OR_UPDATE")
    started = time.perf_counter()
    xml = build(area, frame)
    built = time.perf_counter() - started
    validate_payload(xml)
    validated = time.perf_counter() - started - built
    assert parse(xml).find(q("BatchHeader")).findtext(q("RecordCount")) == str(n)
    assert built < 15, f"building took {built:.1f} s"
    assert validated < 10, f"validation took {validated:.1f} s"


# --- the text writer against lxml's element-by-element build --------------------------------------


def _lxml_build(area: Area, frame: pd.DataFrame, *, batch_id: str, sender_municipality: str, run_id: str,
                created: datetime) -> bytes:
    """The payload as the element-by-element lxml build wrote it before the text writer (the reference)."""
    missing = payload._missing_check()
    n = len(frame)
    record_ids = [None if missing(v) else str(v).strip() for v in frame["record_id"].tolist()]
    actions = [None if missing(v) else str(v).strip().upper() for v in frame["action"].tolist()]
    specs = []
    for f in area.fields:
        if f.name in frame.columns:
            column = payload._format_column(f.kind, frame[f.name], missing)
            specs.append((payload.PERSONS_ELEMENT, f.element, column) if f.kind == "cpr_list"
                         else (f.element, None, column))
    root = etree.Element("SubmitBatchRequest")
    root.text = "\n"
    header = etree.SubElement(root, "BatchHeader")
    header.tail = "\n"
    for tag, text in (("BatchIdentifier", batch_id), ("DataArea", str(area.number)),
                      ("SenderMunicipalityCode", sender_municipality), ("RunIdentifier", run_id),
                      ("CreatedDateTime", payload._datetime_text(created)), ("RecordCount", str(n))):
        etree.SubElement(header, tag).text = text
    records_el = etree.SubElement(root, "Records")
    records_el.text = "\n"
    records_el.tail = "\n"
    sub = etree.SubElement
    for i, (rid, action, *values) in enumerate(zip(record_ids, actions, *[c for _, _, c in specs], strict=True)):
        if rid is None:
            raise PayloadError(f"records frame for {area.code}: row {i + 1} has no record_id")
        if action == payload.ACTION_ANNUL:
            rec = sub(records_el, payload.ANNULMENT_ELEMENT)
            sub(rec, RECORD_ID_ELEMENT).text = rid
            rec.tail = "\n"
            continue
        rec = sub(records_el, area.record_element)
        rec.tail = "\n"
        sub(rec, RECORD_ID_ELEMENT).text = rid
        try:
            for (tag, inner, _), value in zip(specs, values, strict=True):
                if value is None:
                    continue
                if inner is None:
                    sub(rec, tag).text = value
                else:
                    wrapper = sub(rec, tag)
                    for item in value:
                        sub(wrapper, inner).text = item
        except ValueError:
            raise PayloadError(f"record {rid}: {tag} holds characters that XML cannot carry "
                               "(control characters?)") from None
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return xml.replace(b"<SubmitBatchRequest>", f'<SubmitBatchRequest xmlns="{NAMESPACE}">'.encode(), 1)


def _outcome(function, *args, **kwargs) -> tuple[str, object]:
    try:
        return "bytes", function(*args, **kwargs)
    except PayloadError as exc:
        return "error", str(exc)


_TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["A1", "  K-7 ", "Tømrer & snedker <lærling>", "a]]>b", "x\r\ny", "tab\there", "\u2028",
                     "emoji \U0001F600", "ctl\x01", "nul\x00", "\ufffe", "del\x7f\x85", "", "   ", "'q\"", "&amp;"]),
    st.text(alphabet=st.characters(max_codepoint=0x1FFFF, exclude_categories=("Cs",)), max_size=8),
)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_text_writer_gives_lxmls_bytes(data) -> None:
    """Every area, any text (escapes, control characters, non-ASCII, blanks), annulments, missing values
    and person lists: the same bytes as lxml's element-by-element build, or the same error."""
    area = data.draw(st.sampled_from(AREAS), label="area")
    n = data.draw(st.integers(0, 6), label="rows")
    rows = []
    for i in range(n):
        row = {"record_id": str(uuid.UUID(int=i + 1)), "action": data.draw(st.sampled_from(
            ["CREATE_OR_UPDATE", "ANNUL", " create_or_update "]))}
        for f in area.fields:
            if f.kind == "cpr_list":
                row[f.name] = data.draw(st.one_of(st.none(), st.lists(_TEXTS, max_size=3).map(tuple), _TEXTS))
            elif f.kind in ("date", "hours", "count", "bool") and data.draw(st.booleans()):
                row[f.name] = SAMPLE[f.kind]
            else:
                row[f.name] = data.draw(_TEXTS)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["record_id", "action", *area.field_names])
    if n and data.draw(st.booleans()):
        frame.loc[data.draw(st.integers(0, n - 1)), "record_id"] = None
    header = {"batch_id": str(uuid.UUID(int=99)), "sender_municipality": "101", "run_id": "run & <1>",
              "created": CREATED}
    assert _outcome(build_batch, area, frame, **header) == _outcome(_lxml_build, area, frame, **header)


def test_text_writer_gives_lxmls_bytes_for_the_bench_mix() -> None:
    area = get_area(1)
    frame = pd.concat([records_frame(area)] * 50, ignore_index=True)
    frame["record_id"] = [str(uuid.UUID(int=i + 1)) for i in range(len(frame))]
    header = {"batch_id": str(uuid.UUID(int=7)), "sender_municipality": "101", "run_id": "r", "created": CREATED}
    assert build_batch(area, frame, **header) == _lxml_build(area, frame, **header)

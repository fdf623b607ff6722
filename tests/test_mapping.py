"""Mapping rules per area (transforms.mapping), without Airflow or a database."""

from datetime import date

import pandas as pd
import pytest

from transforms.contracts import check_contract
from transforms.mapping import ANNUL, content_hashes, map_records, record_id, strip_not_applicable
from transforms.registry import get_area

CPR = "0101901234"


def measure(**overrides) -> dict:
    row = dict(
        record_key="M1", person_cpr=CPR, municipality_code="101", responsible_jobcentre="10101",
        registering_jobcentre="10102", measure_id="M1", measure_type="VP", start_date="2025-01-06",
        end_date="2025-03-28", weekly_hours=37, activation_type="02", jobplan_id="J1",
        jobplan_created_on="2024-12-01", jobplan_revised_on=None, employment_goal="Lager", job_order_id="O1",
        job_order_type="PRAKTIK", provider_cvr="13748136", provider_pnr="1003456789", ministry_area=None,
        job_title="Lagermedarbejder", course_type=None, team_id=None, location_code="60", worksite_address=None,
        main_benefit="20", open_offer=0, target_group="LAB2-1", insured=1, target_group_at_end="LAB2-1",
        insured_at_end=1, updated_at="2025-01-06", deleted_at=None, reconciles=1,
    )
    row.update(overrides)
    return row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


@pytest.mark.parametrize(("group", "insured", "area"), [
    ("LAB2-1", 1, 1), ("LAB2-1", 0, 1),  # dagpenge recipients: area 1 (§ 2 nr. 1)
    ("LAB2-8", 1, 1), ("LAB2-8", 0, 2),  # § 2 nr. 2 / § 8: a-kasse membership decides
    ("LAB2-3", 0, 2), ("IL-INTRO", 0, 2), ("BESKAEFTIGET", 0, 1),
])
def test_measure_goes_to_area_1_or_2_by_target_group_and_membership(group, insured, area):
    source = frame(measure(target_group=group, insured=insured, target_group_at_end=group, insured_at_end=insured))
    one, two = map_records(get_area(1), source), map_records(get_area(2), source)
    assert (len(one.records), len(two.records)) == ((1, 0) if area == 1 else (0, 1))
    assert len(one.out_of_scope) + len(two.out_of_scope) == 1  # reported in exactly one area: never lost


def test_status_change_during_a_measure_keeps_the_start_dates_area_and_warns():
    source = frame(measure(target_group="LAB2-8", insured=1, target_group_at_end="LAB2-8", insured_at_end=0))
    mapped = map_records(get_area(1), source)
    assert len(mapped.records) == 1 and bool(mapped.records.at[0, "status_changed"])
    findings = check_contract(get_area(1), mapped.records)
    assert findings[["rule", "severity"]].values.tolist() == [["scope.status_changed", "warning"]]


def test_measure_without_target_group_is_quarantined_in_area_2():
    source = frame(measure(target_group=None, insured=None))
    assert len(map_records(get_area(1), source).records) == 0
    mapped = map_records(get_area(2), source)
    rules = set(check_contract(get_area(2), mapped.records)["rule"])
    assert "scope.no_target_group" in rules


def test_area_2_records_self_supporting_as_such_and_open_offer():
    source = frame(measure(target_group="LAB2-3", insured=0, target_group_at_end="LAB2-3", insured_at_end=0,
                           main_benefit=None, open_offer=1))
    rec = map_records(get_area(2), source).records.iloc[0]
    assert rec["main_benefit"] == "99" and rec["open_offer"] is True


def test_area_2_worksite_address_required_when_provider_cvr_or_pnr_missing():
    area = get_area(2)
    base = dict(target_group="LAB2-3", insured=0, target_group_at_end="LAB2-3", insured_at_end=0)
    missing = map_records(area, frame(measure(**base, provider_pnr=None))).records
    found = check_contract(area, missing)
    assert ("worksite_address", "required.missing") in set(zip(found["field"], found["rule"], strict=True))
    given = map_records(area, frame(measure(**base, provider_pnr=None, worksite_address="Vej 1, 2300 Kbh S")))
    assert check_contract(area, given.records).empty


def test_company_directed_fields_required_and_course_fields_not_applicable():
    area = get_area(1)
    records = map_records(area, frame(measure(job_order_type=None, course_type="AMU"))).records
    found = check_contract(area, records)
    assert set(zip(found["rule"], found["field"], found["severity"], strict=True)) == {
        ("required.missing", "job_order_type", "error"), ("field.not_applicable", "course_type", "warning")}
    assert strip_not_applicable(area, records).at[0, "course_type"] is None  # never sent


def test_course_requires_course_type_and_team():
    area = get_area(1)
    records = map_records(area, frame(measure(measure_type="VO", job_order_type=None, job_title=None,
                                              job_order_id=None, course_type=None, team_id=None))).records
    found = check_contract(area, records)
    assert {("required.missing", "course_type"), ("required.missing", "team_id")} <= set(
        zip(found["rule"], found["field"], strict=True))


def test_state_wage_subsidy_requires_ministry_area():
    area = get_area(1)
    records = map_records(area, frame(measure(measure_type="LTS", job_order_type="LOENTILSKUD"))).records
    assert ("required.missing", "ministry_area") in set(
        zip(check_contract(area, records)["rule"], check_contract(area, records)["field"], strict=True))


def test_follow_up_interview_visitation_rules_follow_the_date():
    area = get_area(3)
    source = frame(
        dict(record_key="I1", person_cpr=CPR, municipality_code="101", held_on="2013-05-01", interview_form="1",
             visitation_category="2"),
        dict(record_key="I2", person_cpr=CPR, municipality_code="101", held_on="2025-05-01", interview_form="6",
             visitation_category="2"),
    )
    assert map_records(area, source).records["visitation_rules"].tolist() == ["2005", "2014"]


def test_cv_interviews_only_for_section_24_groups():
    area = get_area(5)
    source = frame(
        dict(record_key="C1", person_cpr=CPR, municipality_code="101", held_on="2025-05-01", cv_status="GODKENDT",
             target_group="LAB2-2"),
        dict(record_key="C2", person_cpr=CPR, municipality_code="101", held_on="2025-05-01", cv_status="GODKENDT",
             target_group="LAB2-1"),
        dict(record_key="C3", person_cpr=CPR, municipality_code="101", held_on="2025-05-01", cv_status="KLAR",
             target_group="IL-LEDIG"),
    )
    mapped = map_records(area, source)
    assert mapped.records["record_key"].tolist() == ["C1", "C3"]
    assert mapped.out_of_scope["record_key"].tolist() == ["C2"]


def test_absence_interview_needs_exactly_one_of_cvr_and_se_for_the_contract():
    area = get_area(4)
    source = frame(
        dict(record_key="A1", person_cpr=CPR, employer_cvr="13748136", employer_se=None, held_on="2025-01-02"),
        dict(record_key="A2", person_cpr=CPR, employer_cvr=None, employer_se="13748136", held_on="2025-01-02"),
        dict(record_key="A3", person_cpr=CPR, employer_cvr=None, employer_se=None, held_on="2025-01-02"),
    )
    found = check_contract(area, map_records(area, source).records)
    assert found[["record_key", "rule", "field"]].values.tolist() == [["A3", "required.missing", "employer_se"]]


def test_mentor_grant_persons_per_person_and_per_slot():
    area = get_area(7)
    source = frame(
        dict(record_key="G1", municipality_code="101", basis="PERSON", company_cvr="13748136",
             company_pnr="1003456789", start_date="2025-01-01", end_date="2025-06-30", granted_hours=40,
             persons_paid=None, avg_paid_hours=None, person_cprs=CPR),
        dict(record_key="G2", municipality_code="101", basis="SLOT", company_cvr="13748136",
             company_pnr="1003456789", start_date="2025-01-01", end_date="2025-06-30", granted_hours=None,
             persons_paid=2, avg_paid_hours=7.5, person_cprs=f"{CPR},0202924321"),
    )
    records = map_records(area, source).records
    assert records["person_cprs"].tolist() == [(CPR,), (CPR, "0202924321")]
    assert check_contract(area, records).empty
    wrong = map_records(area, source.assign(basis=["SLOT", "PERSON"])).records
    found = check_contract(area, wrong)
    assert {("G1", "persons_paid"), ("G2", "granted_hours")} <= set(
        zip(found["record_key"], found["field"], strict=True))


def test_record_id_is_stable_and_deleted_rows_become_annulments():
    area = get_area(1)
    records = map_records(area, frame(measure(deleted_at="2025-04-01"))).records
    assert records.at[0, "action"] == ANNUL
    assert records.at[0, "record_id"] == record_id(area, "M1") == record_id(area, "M1")
    assert record_id(area, "M1") != record_id(get_area(2), "M1")


def test_content_hash_changes_with_payload_fields_only():
    area = get_area(1)
    base = strip_not_applicable(area, map_records(area, frame(measure())).records)
    same = strip_not_applicable(area, map_records(area, frame(measure(updated_at="2026-01-01"))).records)
    changed = strip_not_applicable(area, map_records(area, frame(measure(weekly_hours=30))).records)
    h = content_hashes(area, base)[0]
    assert h == content_hashes(area, same)[0] and h != content_hashes(area, changed)[0]


def test_types_are_normalised_and_bad_values_kept_for_the_contract():
    area = get_area(1)
    records = map_records(area, frame(measure(start_date="2025-02-30", weekly_hours="lots",
                                              municipality_code=101.0))).records
    assert records.at[0, "municipality_code"] == "101"
    assert records.at[0, "end_date"] == date(2025, 3, 28)
    found = check_contract(area, records)
    assert {("format.date", "start_date"), ("format.number", "weekly_hours")} <= set(
        zip(found["rule"], found["field"], strict=True))
    assert not found["message"].str.contains(CPR).any() and found["message"].str.contains("010190-\\*\\*\\*\\*").all()


# --- the column-at-a-time fast paths against the value-by-value rules -----------------------------

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from transforms import mapping  # noqa: E402

_ANY_VALUE = st.one_of(
    st.none(), st.text(max_size=6), st.sampled_from([" 101 ", "", "  ", "2025-01-06", "x", "0101901234"]),
    st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=False), st.booleans(), st.dates(),
)


def _one_by_one(convert, values):
    """The value-by-value memo the fast paths replace: keyed by (type, value), NaN and lists not kept."""
    memo: dict = {}
    out = []
    for value in values:
        try:
            key = (type(value), value)
            hit = memo.get(key, memo)
        except TypeError:
            out.append(convert(value))
            continue
        if hit is memo:
            hit = convert(value)
            if not mapping._is_missing(value):
                memo[key] = hit
        out.append(hit)
    return out


@settings(max_examples=300, deadline=None)
@given(values=st.one_of(st.lists(_ANY_VALUE, max_size=12),
                        st.lists(st.one_of(st.none(), st.sampled_from(["a", " a", "b ", "", " "])), max_size=12),
                        st.lists(st.one_of(st.none(), st.dates()), max_size=12),
                        st.lists(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(0, 2)), max_size=12)),
       kind=st.sampled_from(["text", "cpr", "date", "hours", "count", "bool", "cpr_list"]))
@example(values=[float("nan")], kind="text")  # a column of NaN alone: factorised to no uniques (found by CI)
@example(values=[float("nan"), None], kind="hours")
def test_memoised_equals_converting_each_value(values: list, kind: str) -> None:
    """Factorised or memoised, every value converts as the value-by-value memo did (type included: 1 vs 1.0
    vs True)."""
    for convert in (mapping._NORMALISE[kind], mapping._canonical):
        got, want = mapping._memoised(convert, values), _one_by_one(convert, values)
        assert [type(v) for v in got] == [type(v) for v in want]
        assert [repr(v) for v in got] == [repr(v) for v in want]


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(max_size=12), max_size=8),
       municipality=st.one_of(st.none(), st.sampled_from(["101", "147"])), number=st.sampled_from([1, 2, 5, 7]))
def test_record_ids_equal_record_id(keys: list[str], municipality: str | None, number: int) -> None:
    area = get_area(number)
    assert mapping.record_ids(area, keys, municipality) == [record_id(area, k, municipality) for k in keys]

"""The synthetic demo data: deterministic, idempotent, realistic, with exactly the planted defects."""

from __future__ import annotations

import hashlib
import re
from datetime import date

import pytest
import sqlalchemy as sa

from demo.synthetic import CV_SCOPE_GROUPS, DEFECT_KINDS, generate, main
from transforms import codelists
from transforms.identifiers import (
    CPR_BAD_DATE,
    CPR_NO_MODULUS11,
    CPR_UNKNOWN,
    CPR_VALID,
    cpr_status,
    cvr_status,
    pnr_status,
    se_status,
)
from transforms.registry import AREAS, Area, get_area
from transforms.rules import RULE_BY_ID
from transforms.source import SOURCE_KEYS, SOURCE_TABLES, create_engine_from_url, extract_frame

MUNICIPALITIES = codelists.municipality_codes()


def _content_hash(engine: sa.Engine) -> dict[str, str]:
    hashes = {}
    with engine.connect() as conn:
        for table, columns in SOURCE_TABLES.items():
            rows = conn.execute(
                sa.text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(SOURCE_KEYS[table])}")
            ).all()
            hashes[table] = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def demo2000(tmp_path_factory):
    """persons=2000, defect_rate 0.05: (engine, DemoData, {area number: source frame})."""
    url = f"sqlite:///{tmp_path_factory.mktemp('demo2000') / 'source.sqlite'}"
    engine = create_engine_from_url(url)
    data = generate(engine, persons=2000, defect_rate=0.05)
    frames = {area.number: extract_frame(engine, area) for area in AREAS}
    yield engine, data, frames
    engine.dispose()


def _in_area(area: Area, row: dict) -> bool:
    """The scope the mapping applies: the measure area from the group on the start date; § 24."""
    if area.number in (1, 2):
        group = row["target_group"]
        return group is not None and codelists.target_group_area(group, bool(row["insured"])) == area.number
    if area.number == 5:
        return row["target_group"] in CV_SCOPE_GROUPS
    return True


def _conditions(area: Area, row: dict) -> dict[str, bool]:
    category = codelists.measure_category(row["measure_type"]) if "measure_type" in row else None
    company, course = category == "company", category == "course"
    return {
        "jobplan": bool(row.get("jobplan_id")),
        "company_directed": company,
        "state_wage_subsidy": company and row.get("measure_type") in codelists.state_employer_types(),
        "course": course,
        "has_provider": company or course,
        "address_needed": company and not (row.get("provider_cvr") and row.get("provider_pnr")),
        "no_cvr": not row.get("employer_cvr"),
        "per_person": row.get("basis") == "PERSON",
        "per_slot": row.get("basis") == "SLOT",
        "company_receives": bool(row.get("company_cvr")),
    }


def _problems(area: Area, row: dict, reference_date: date) -> set[str]:
    """The rule ids a source row breaks, by this test's own reading of the rule catalogue."""
    found: set[str] = set()
    conditions = _conditions(area, row)
    on = date.fromisoformat(row[area.date_field]) if row[area.date_field] else None
    for f in area.fields:
        if f.source.startswith("derived") or f.name == "main_benefit":  # None is recorded as 99
            continue
        value = row[f.name]
        required = f.required if isinstance(f.required, bool) else conditions[f.required]
        if value is None:
            if required:
                found.add("required.missing")
            continue
        if f.only_when and not conditions[f.only_when]:
            found.add("field.not_applicable")
        if f.kind in ("cpr", "cpr_list"):
            statuses = {cpr_status(v) for v in value.split(",")}
            found |= {"cpr.bad_date"} if CPR_BAD_DATE in statuses else set()
            found |= {"cpr.unknown"} if CPR_UNKNOWN in statuses else set()
            if statuses - {CPR_VALID, CPR_NO_MODULUS11, CPR_BAD_DATE, CPR_UNKNOWN}:
                found.add("format.cpr")
        elif f.kind == "cvr" and cvr_status(value) != "valid":
            found.add("cvr.bad_checksum" if cvr_status(value) == "bad_checksum" else "format.cvr")
        elif f.kind == "pnr" and pnr_status(value) != "valid":
            found.add("format.pnr")
        elif f.kind == "se" and se_status(value) != "valid":
            found.add("format.se" if se_status(value) == "bad_format" else "se.no_modulus11")
        elif f.kind == "municipality" and value not in MUNICIPALITIES:
            found.add("municipality.unknown")
        elif f.kind == "jobcentre" and not (re.fullmatch(r"\d{5}", value) and value[:3] in MUNICIPALITIES):
            found.add("jobcentre.unknown_municipality")
        elif f.kind == "code" and on and not codelists.is_valid(f.codelist, value, on):
            found.add("code.invalid")
        elif f.kind == "hours" and not 0 <= value <= (60 if f.name == "weekly_hours" else 99.99):
            found.add("hours.out_of_range")
        elif f.kind == "date" and f.name != "end_date" and date.fromisoformat(value) > reference_date:
            found.add("dates.future")
    if row.get("start_date") and row.get("end_date") and row["start_date"] > row["end_date"]:
        found.add("dates.start_after_end")
    if row.get("jobplan_revised_on") and row.get("jobplan_created_on"):
        if row["jobplan_revised_on"] < row["jobplan_created_on"]:
            found.add("jobplan.revised_before_created")
    if area.number == 4 and bool(row["employer_cvr"]) == bool(row["employer_se"]):
        found.add("employer.cvr_or_se")
    if area.number == 7:
        persons = len(row["person_cprs"].split(",")) if row["person_cprs"] else 0
        if (row["basis"] == "PERSON" and persons != 1) or (row["basis"] == "SLOT" and persons < 1):
            found.add("mentor.persons")
    return found


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_content_and_idempotent(tmp_path):
    first = create_engine_from_url(f"sqlite:///{tmp_path / 'a.sqlite'}")
    second = create_engine_from_url(f"sqlite:///{tmp_path / 'b.sqlite'}")
    data_a = generate(first, persons=300, seed=7, defect_rate=0.05)
    data_b = generate(second, persons=300, seed=7, defect_rate=0.05)
    assert _content_hash(first) == _content_hash(second)
    assert data_a.defects == data_b.defects and data_a.counts == data_b.counts

    again = generate(first, persons=300, seed=7, defect_rate=0.05)  # same database, second run
    assert _content_hash(first) == _content_hash(second)
    assert again.defects == data_a.defects
    with first.connect() as conn:
        for table, rows in data_a.counts.items():
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == rows, table

    generate(second, persons=300, seed=8, defect_rate=0.05)
    assert _content_hash(first) != _content_hash(second)
    first.dispose()
    second.dispose()


def test_arguments_are_checked(sqlite_url):
    engine = create_engine_from_url(sqlite_url)
    with pytest.raises(ValueError, match="municipality"):
        generate(engine, persons=10, municipality="411")  # Christiansø is not a municipality
    with pytest.raises(ValueError):
        generate(engine, persons=0)
    with pytest.raises(ValueError):
        generate(engine, persons=10, defect_rate=1.5)
    engine.dispose()


def test_no_defects_at_rate_zero(demo_db, tmp_path):
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'clean.sqlite'}")
    data = generate(engine, persons=300, defect_rate=0.0)
    assert data.defects == []
    for area in AREAS:
        for row in extract_frame(engine, area).to_dict("records"):
            if _in_area(area, row):
                assert not _problems(area, row, data.reference_date), (area.code, row["record_key"])
    engine.dispose()


# ------------------------------------------------------------------------------------------------ content
def test_every_area_and_every_defect_kind(demo2000):
    _, data, frames = demo2000
    for area in AREAS:
        in_scope = [r for r in frames[area.number].to_dict("records") if _in_area(area, r)]
        assert len(in_scope) >= 10, area.code
    assert set(DEFECT_KINDS) <= set(RULE_BY_ID)
    assert {d.rule for d in data.defects} == set(DEFECT_KINDS)
    assert len({(d.area, d.record_key) for d in data.defects}) == len(data.defects)  # one per record
    assert {d.area for d in data.defects} == {a.number for a in AREAS}
    assert data.reporting_municipality == "101"
    for rule in ("cpr.bad_date", "cvr.bad_checksum", "municipality.unknown", "dates.future"):
        assert len({d.area for d in data.defects if d.rule == rule}) >= 3, rule  # spread across areas


def test_planted_defects_are_exactly_what_the_records_break(demo2000):
    """Each defective record breaks its planted rule and nothing else; every other record is clean."""
    _, data, frames = demo2000
    planted = {(d.area, d.record_key): d for d in data.defects}
    for area in AREAS:
        frame = frames[area.number]
        keys = set(frame["record_key"])
        for defect in data.defects_in(area.number):
            assert defect.record_key in keys
            assert defect.field in area.field_names
        for row in frame.to_dict("records"):
            defect = planted.get((area.number, row["record_key"]))
            if defect is None and not _in_area(area, row):
                continue
            expected = {defect.rule} if defect else set()
            assert _problems(area, row, data.reference_date) == expected, (area.code, row["record_key"])
            if defect:
                assert row["deleted_at"] is None and _in_area(area, row)
                assert row["municipality_code" if area.number != 4 else "record_key"] is not None


def test_cprs_are_valid_except_planted_ones(demo2000):
    engine, data, _ = demo2000
    cpr_defects = [d for d in data.defects if d.rule.startswith("cpr.")]
    with engine.connect() as conn:
        cprs = [r[0] for r in conn.execute(sa.text("SELECT cpr FROM persons"))]
    statuses = [cpr_status(c) for c in cprs]
    bad = [s for s in statuses if s not in (CPR_VALID, CPR_NO_MODULUS11)]
    assert len(bad) == len(cpr_defects)
    assert statuses.count(CPR_NO_MODULUS11) > 0  # issued without modulus 11 since 2007
    assert any(c.startswith("0") for c in cprs)


def test_dates_lie_in_the_window(demo2000):
    engine, data, frames = demo2000
    first, last = data.window_start.isoformat(), data.reference_date.isoformat()
    assert first >= max(a.phase_in for a in AREAS).isoformat()
    planted = {d.record_key for d in data.defects}  # keys are unique across tables (M..., FU..., ...)
    for area in AREAS:
        for row in frames[area.number].to_dict("records"):
            if row["record_key"] in planted:
                continue
            for f in area.fields:
                if f.kind == "date" and row[f.name]:
                    assert first <= row[f.name] <= last, (area.code, row["record_key"], f.name)
            assert row["updated_at"][:10] <= last
            assert row["deleted_at"] is None or row["updated_at"] <= row["deleted_at"] <= f"{last} 23:59:59"
    with engine.connect() as conn:
        for table, column in (("payments", "period_to"), ("benefits", "valid_from"), ("jobplans", "created_on")):
            low, high = conn.execute(sa.text(f"SELECT MIN({column}), MAX({column}) FROM {table}")).one()
            assert first <= low and high <= last, table


def test_proportions_and_shapes(demo2000):
    engine, data, frames = demo2000
    measures = frames[1]
    with engine.connect() as conn:
        measure_persons = conn.execute(sa.text("SELECT COUNT(DISTINCT person_id) FROM measures")).scalar_one()
        jobcentres = [r[0] for r in conn.execute(sa.text("SELECT responsible_jobcenter FROM measures"))]
    assert 0.5 <= measure_persons / data.persons <= 0.7
    pairs = zip(measures["target_group"], measures["insured"], strict=True)
    areas = [codelists.target_group_area(group, bool(insured)) for group, insured in pairs]
    assert 0.25 <= areas.count(1) / len(areas) <= 0.45
    changed = ((measures["target_group"] != measures["target_group_at_end"])
               | (measures["insured"] != measures["insured_at_end"])).mean()
    assert 0.05 <= changed <= 0.15
    assert 0.03 <= measures["deleted_at"].notna().mean() <= 0.08
    assert 0.8 <= measures["jobplan_id"].notna().mean() <= 0.95
    assert measures["jobplan_revised_on"].notna().sum() > 0
    assert 0.85 <= measures["reconciles"].mean() < 1.0
    assert all(jc[:3] in MUNICIPALITIES and len(jc) == 5 for jc in jobcentres if jc[:3] not in ("411", "999"))
    home = (measures["municipality_code"] == "101").mean()
    assert 0.95 <= home < 1.0  # a few rows of neighbouring municipalities

    area2 = frames[2]
    assert area2["worksite_address"].notna().sum() > 0
    assert area2["main_benefit"].isna().sum() > 0 and area2["main_benefit"].notna().mean() > 0.7
    cv = frames[5]
    in_scope = cv["target_group"].isin(CV_SCOPE_GROUPS)
    assert 0.3 <= in_scope.mean() <= 0.9  # a mix of persons in and out of § 24's groups
    assert frames[3]["reconciles"].mean() >= 0.85 and frames[6]["reconciles"].mean() >= 0.75
    absence = frames[4]
    assert absence["employer_se"].notna().sum() > 0 and absence["employer_cvr"].notna().mean() > 0.7
    mentor = frames[7]
    assert set(mentor["basis"]) == {"PERSON", "SLOT"}
    slots = mentor[mentor["basis"] == "SLOT"]
    assert all(len(c.split(",")) >= 2 for c in slots["person_cprs"])
    assert set(frames[6]["scheme"]) == {"EMPLOYMENT", "EDUCATION"}
    aids = frames[8]
    assert set(aids["aid_kind"]) == {"TEACHING_MATERIAL", "WORK_TOOLS"}
    assert 0 < aids["company_cvr"].notna().mean() < 0.7


def test_other_reporting_municipality(tmp_path):
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'aarhus.sqlite'}")
    data = generate(engine, persons=300, municipality="751", defect_rate=0.0)
    frame = extract_frame(engine, 1)
    region = {r["kode"]: r["region"] for r in codelists.rows("municipalities")}
    assert data.reporting_municipality == "751"
    assert (frame["municipality_code"] == "751").mean() > 0.9
    assert {region[c] for c in frame["municipality_code"]} == {region["751"]}
    pairs = zip(frame["responsible_jobcentre"], frame["municipality_code"], strict=True)
    assert all(jobcentre.startswith(municipality) for jobcentre, municipality in pairs)
    engine.dispose()


def test_cli_prints_counts_and_no_cpr(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert main(["--url", url, "--persons", "150", "--seed", "3", "--defect-rate", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "measures" in out and "planted defects" in out
    assert not re.search(r"\d{6}-?\d{4}", out)


@pytest.mark.postgres
def test_generate_on_postgres(pg_engine, sqlite_url):
    data_pg = generate(pg_engine, persons=200, defect_rate=0.05)
    generate(pg_engine, persons=200, defect_rate=0.05)  # idempotent there too
    lite = create_engine_from_url(sqlite_url)
    data_lite = generate(lite, persons=200, defect_rate=0.05)
    assert data_pg.counts == data_lite.counts and data_pg.defects == data_lite.defects
    with pg_engine.connect() as conn:
        for table, rows in data_pg.counts.items():
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == rows, table
    lite.dispose()


def test_defect_helpers(demo_db):
    _, data = demo_db
    assert sum(len(data.defects_in(a.number)) for a in AREAS) == len(data.defects)
    assert sum(data.defect_summary().values()) == len(data.defects)
    some = data.defects[0]
    assert some.record_key in data.defect_keys(some.area, some.rule)
    assert get_area(some.area).number == some.area

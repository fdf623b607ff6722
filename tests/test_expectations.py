"""The data-quality layer (expectations/): exact findings per quality rule, Data Docs without raw CPR."""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from expectations.checks import area_checks, classify_cprs, prepare_frame
from expectations.runner import FINDING_COLUMNS, run_quality
from transforms.identifiers import cpr_status, mask_cpr
from transforms.registry import AREAS, get_area
from transforms.rules import RULES

PERIOD_END = date(2011, 12, 31)
CVR = "13748136"  # valid (DOMAIN.md)
BAD_CVR = "13748137"
NO_MOD11 = "12345678"  # 8 digits, fails the CVR check: an SE number gives a warning


def cprs(ddmmyy: str, count: int) -> list[str]:
    """Different CPR numbers with a valid modulus-11 check digit (digit 7 in 0-3: born in the 1900s)."""
    stems = (f"{ddmmyy}{serial:03d}" for serial in range(100, 1000))
    valid = (stem + last for stem in stems for last in "0123456789" if cpr_status(stem + last) == "valid")
    return [next(valid) for _ in range(count)]


P = cprs("010185", 20)  # twenty people
BAD_DATE = "3102901234"  # 31 February
NO_MODULUS = next(P[0][:9] + d for d in "0123456789" if cpr_status(P[0][:9] + d) == "no_modulus11")
UNKNOWN = "0000000000"


def frame(area: int, base: dict, rows: dict[str, dict]) -> pd.DataFrame:
    """A records frame (docs/architecture.md): one row per key, `base` overridden by the row's values."""
    out = []
    for key, changes in rows.items():
        row = {"record_key": key, "action": "CREATE_OR_UPDATE", **base, **changes}
        out.append({"record_key": key, **{f: row.get(f) for f in get_area(area).field_names},
                    "action": row["action"], "reconciles": row.get("reconciles", True)})
    return pd.DataFrame(out, dtype=object)


def found(result) -> set[tuple[str, str]]:
    return set(zip(result.findings["record_key"], result.findings["rule"], strict=True))


def run(area: int, records: pd.DataFrame, **kwargs):
    return run_quality(area, records, period_end=PERIOD_END, run_id="test", **kwargs)


AREA1 = {
    "municipality_code": "101", "responsible_jobcentre": "10101", "registering_jobcentre": "10102",
    "measure_type": "VP", "start_date": date(2011, 3, 1), "end_date": date(2011, 6, 30), "weekly_hours": 37.0,
    "activation_type": "02", "jobplan_id": "JP1", "jobplan_created_on": date(2011, 2, 1),
    "jobplan_revised_on": date(2011, 2, 15), "employment_goal": "Job som lagermedarbejder",
    "job_order_type": "PRAKTIK", "provider_cvr": CVR, "provider_pnr": "1003456789", "job_title": "Lager",
}


def area1_frame() -> pd.DataFrame:
    rows = {
        "clean": {"person_cpr": P[0]},
        "clean-hyphen": {"person_cpr": f"{P[1][:6]}-{P[1][6:]}"},
        "bad-date": {"person_cpr": BAD_DATE},
        "unknown": {"person_cpr": UNKNOWN},
        "no-mod11": {"person_cpr": NO_MODULUS},
        "municipality": {"person_cpr": P[2], "municipality_code": "999"},
        "jobcentre": {"person_cpr": P[3], "responsible_jobcentre": "99901"},
        "code": {"person_cpr": P[4], "activation_type": "ZZ"},
        "cvr": {"person_cpr": P[5], "provider_cvr": BAD_CVR},
        "start-after-end": {"person_cpr": P[6], "start_date": date(2011, 7, 1)},
        "future": {"person_cpr": P[7], "jobplan_revised_on": date(2012, 1, 15)},
        "phase-in": {"person_cpr": P[8], "start_date": date(2009, 12, 1), "jobplan_created_on": date(2009, 11, 1),
                     "jobplan_revised_on": None},
        "hours": {"person_cpr": P[9], "weekly_hours": 61.0},
        "revised": {"person_cpr": P[10], "jobplan_revised_on": date(2011, 1, 15)},
        "overlap-a": {"person_cpr": P[11]},
        "overlap-b": {"person_cpr": P[11], "start_date": date(2011, 6, 30), "end_date": date(2011, 8, 31)},
        "same-person-other-type": {"person_cpr": P[11], "measure_type": "LTP"},
        "same-person-later": {"person_cpr": P[11], "start_date": date(2011, 7, 1), "end_date": date(2011, 7, 31),
                              "measure_type": "LTP"},
        "reconcile": {"person_cpr": P[12], "reconciles": 0},
        "annulled": {"person_cpr": BAD_DATE, "action": "ANNUL"},
    }
    return frame(1, AREA1, rows)


AREA1_EXPECTED = {
    ("bad-date", "cpr.bad_date"), ("unknown", "cpr.unknown"), ("no-mod11", "cpr.no_modulus11"),
    ("municipality", "municipality.unknown"), ("jobcentre", "jobcentre.unknown_municipality"),
    ("code", "code.invalid"), ("cvr", "cvr.bad_checksum"), ("start-after-end", "dates.start_after_end"),
    ("future", "dates.future"), ("phase-in", "dates.before_phase_in"), ("phase-in", "code.invalid"),
    ("hours", "hours.out_of_range"),
    ("revised", "jobplan.revised_before_created"), ("overlap-a", "measure.overlap"),
    ("overlap-b", "measure.overlap"), ("reconcile", "reconcile.no_benefit_or_payment"),
}


# --- the checks and the masked frame ---------------------------------------------------------------


def test_every_area_has_a_suite_whose_columns_the_frame_provides():
    quality = {r.id for r in RULES if "quality" in r.engines}
    used = set()
    for area in AREAS:
        checks = area_checks(area)
        empty = pd.DataFrame({"record_key": ["k"], **{f: [None] for f in area.field_names}}, dtype=object)
        prepared = prepare_frame(area, empty, period_end=PERIOD_END)
        assert {c.column for c in checks} <= set(prepared.columns), area.code
        assert len({c.id for c in checks}) == len(checks), area.code
        for c in checks:
            assert c.rule in quality and c.paragraph, c
            assert c.field in area.field_names, c
        used |= {c.rule for c in checks}
    assert used == quality  # every quality rule of the catalogue is checked somewhere


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text("0123456789-", min_size=9, max_size=12),
                          st.text("0123456789", min_size=10, max_size=10), st.text(max_size=12)), max_size=40))
def test_vectorised_cpr_classification_agrees_with_the_identifier_rules(values):
    status, masked, _ = classify_cprs(pd.Series(values, dtype=object))
    for value, s, m in zip(values, status, masked, strict=True):
        try:
            want = cpr_status(value)
        except (TypeError, ValueError):
            want = "bad_format"
        assert s == want, value
        assert m == mask_cpr(value), value


def test_every_leap_day_and_century_digit_agrees():
    values = [f"{d:02d}02{y:02d}{c}000" for d in (28, 29, 30) for y in range(100) for c in range(10)]
    status, _, _ = classify_cprs(pd.Series(values, dtype=object))
    assert list(status) == [cpr_status(v) for v in values]


def test_the_validation_frame_is_masked_and_keeps_no_free_text():
    prepared = prepare_frame(get_area(1), area1_frame(), period_end=PERIOD_END)
    assert "annulled" not in set(prepared["record_key"])  # an annulment sends no fields: nothing to check
    assert "employment_goal" not in prepared and "job_title" not in prepared
    text = prepared.astype(str).to_csv()
    assert all(raw not in text for raw in (*P, BAD_DATE, NO_MODULUS))
    assert prepared.set_index("record_key").loc["clean-hyphen", "person_cpr"] == f"{P[1][:6]}-****"


# --- exact findings per area -------------------------------------------------------------------------


def test_area1_findings_are_exact():
    result = run(1, area1_frame())
    assert found(result) == AREA1_EXPECTED
    assert list(result.findings.columns) == FINDING_COLUMNS
    assert result.rows == 19
    # a record before the phase-in date also precedes its code lists (valid from 2010-01-04)
    assert (result.findings.query("record_key == 'phase-in'")["rule"] == "code.invalid").sum() == 3
    by_key = result.findings.set_index(["record_key", "rule"])
    assert by_key.loc[("bad-date", "cpr.bad_date"), "message"] == (
        "person_cpr 310290-****: impossible birth date or century (cpr.bad_date, § 3 nr. 1)")
    assert by_key.loc[("bad-date", "cpr.bad_date"), "severity"] == "error"
    assert by_key.loc[("no-mod11", "cpr.no_modulus11"), "severity"] == "warning"
    assert "overlaps measure overlap-b" in by_key.loc[("overlap-a", "measure.overlap"), "message"]
    assert by_key.loc[("overlap-b", "measure.overlap"), "paragraph"] == "§ 3 nr. 5"
    assert by_key.loc[("phase-in", "dates.before_phase_in"), "paragraph"] == "§ 50, stk. 1"
    assert by_key.loc[("code", "code.invalid"), "message"] == (
        "activation_type ZZ: not in the code list 'activation_types' valid on the record's start_date "
        "(2011-03-01) (code.invalid, § 3 nr. 9)")
    assert by_key.loc[("future", "dates.future"), "message"].startswith(
        "jobplan_revised_on 2012-01-15: after the end")
    assert result.error_keys == {k for k, r in AREA1_EXPECTED} - {"no-mod11", "unknown", "reconcile"}
    stats = result.statistics.set_index(["rule", "field"])
    assert stats.loc[("measure.overlap", "measure_type"), "unexpected"] == 2
    assert stats.loc[("cpr.bad_date", "person_cpr"), "evaluated"] == 19
    assert not stats.loc[("cpr.bad_date", "person_cpr"), "success"]
    assert stats.loc[("cpr.unknown", "person_cpr"), "severity"] == "warning"


AREA2 = {
    "municipality_code": "147", "measure_type": "LTO", "start_date": date(2011, 2, 1), "end_date": date(2011, 4, 30),
    "weekly_hours": 30.0, "main_benefit": "10", "open_offer": False, "location_code": "61",
    "provider_cvr": CVR, "provider_pnr": "1003456789", "job_title": "Kontor", "ministry_area": None,
}


def test_area2_findings_are_exact():
    rows = {
        "clean": {"person_cpr": P[0]},
        "benefit": {"person_cpr": P[1], "main_benefit": "77"},
        "location": {"person_cpr": P[2], "location_code": "ZZ"},
        "hours": {"person_cpr": P[3], "weekly_hours": -1.0},
        "cvr": {"person_cpr": P[4], "provider_cvr": BAD_CVR},
        "overlap-a": {"person_cpr": P[5]},
        "overlap-b": {"person_cpr": P[5], "start_date": date(2011, 3, 1), "end_date": date(2011, 3, 31)},
        "unknown-a": {"person_cpr": UNKNOWN},  # 0000000000 is not one person: no overlap
        "unknown-b": {"person_cpr": UNKNOWN},
        "future": {"person_cpr": P[6], "start_date": date(2012, 2, 1), "end_date": date(2012, 3, 1)},
    }
    result = run(2, frame(2, AREA2, rows))
    assert found(result) == {
        ("benefit", "code.invalid"), ("location", "code.invalid"), ("hours", "hours.out_of_range"),
        ("cvr", "cvr.bad_checksum"), ("overlap-a", "measure.overlap"), ("overlap-b", "measure.overlap"),
        ("unknown-a", "cpr.unknown"), ("unknown-b", "cpr.unknown"),
        ("future", "dates.future"),  # the start date; a planned end after the period is normal
    }
    assert (result.findings["rule"] == "dates.future").sum() == 1
    assert set(result.findings.loc[result.findings["record_key"] == "future", "field"]) == {"start_date"}


def test_area3_code_lists_follow_the_record_date():
    base = {"municipality_code": "101", "interview_form": "1", "visitation_category": "2",
            "visitation_rules": "2005", "held_on": date(2011, 5, 2)}
    rows = {
        "clean": {"person_cpr": P[0]},
        "rules-2014": {"person_cpr": P[1], "visitation_category": "3", "held_on": date(2014, 7, 1)},
        "category": {"person_cpr": P[2], "visitation_category": "7"},
        "form": {"person_cpr": P[3], "interview_form": "9"},
        "phase-in": {"person_cpr": P[4], "held_on": date(2009, 10, 1)},  # § 50, stk. 3: from 5 October 2009
        "on-phase-in": {"person_cpr": P[5], "held_on": date(2009, 10, 5)},
        "no-date": {"person_cpr": P[6], "held_on": None},  # the contract's finding; any listed code passes
    }
    result = run_quality(3, frame(3, base, rows), period_end=date(2014, 12, 31), run_id="test")
    assert found(result) == {("category", "code.invalid"), ("form", "code.invalid"),
                             ("phase-in", "dates.before_phase_in"), ("phase-in", "code.invalid")}
    # before 2009-10-05 the interview-form list was not yet valid either
    code = result.findings.query("record_key == 'phase-in' and rule == 'code.invalid'")
    assert code["field"].tolist() == ["interview_form"] and "(2009-10-01)" in code["message"].iat[0]


def test_area4_employer_is_exactly_one_of_cvr_and_se():
    base = {"held_on": date(2011, 4, 4)}
    rows = {
        "cvr": {"person_cpr": P[0], "employer_cvr": CVR},
        "se": {"person_cpr": P[1], "employer_se": CVR},
        "both": {"person_cpr": P[2], "employer_cvr": CVR, "employer_se": CVR},
        "neither": {"person_cpr": P[3]},
        "bad-cvr": {"person_cpr": P[4], "employer_cvr": BAD_CVR},
        "se-no-mod11": {"person_cpr": P[5], "employer_se": NO_MOD11},
        "bad-date": {"person_cpr": BAD_DATE, "employer_cvr": CVR},
    }
    result = run(4, frame(4, base, rows))
    assert found(result) == {("both", "employer.cvr_or_se"), ("neither", "employer.cvr_or_se"),
                             ("bad-cvr", "cvr.bad_checksum"), ("se-no-mod11", "se.no_modulus11"),
                             ("bad-date", "cpr.bad_date")}
    messages = result.findings.set_index(["record_key", "rule"])["message"]
    assert messages[("both", "employer.cvr_or_se")] == (
        "employer_cvr 13748136: CVR number and SE number: both given; give exactly one "
        "(employer.cvr_or_se, § 19 nr. 2)")
    assert "none given" in messages[("neither", "employer.cvr_or_se")]
    assert result.findings.set_index("rule").loc["se.no_modulus11", "severity"] == "warning"


def test_area7_mentor_persons_hours_and_listed_cprs():
    base = {"municipality_code": "101", "company_cvr": CVR, "company_pnr": "1003456789",
            "start_date": date(2011, 2, 1), "end_date": date(2011, 6, 30)}
    person = {"basis": "PERSON", "granted_hours": 120.0}
    slot = {"basis": "SLOT", "persons_paid": 3, "avg_paid_hours": 10.0}
    rows = {
        "person": {**person, "person_cprs": (P[0],)},
        "slot": {**slot, "person_cprs": (P[1], P[2], P[3])},
        "person-two": {**person, "person_cprs": (P[4], P[5])},
        "slot-none": {**slot, "person_cprs": ()},
        "person-missing": {**person, "person_cprs": None},
        "bad-in-list": {**slot, "person_cprs": (P[6], BAD_DATE, UNKNOWN)},
        "granted": {**person, "person_cprs": (P[7],), "granted_hours": 2500.0},
        "avg": {**slot, "person_cprs": (P[8],), "avg_paid_hours": 61.0},
        "phase-in": {**person, "person_cprs": (P[9],), "start_date": date(2010, 12, 1)},  # § 50, stk. 7: 2011
    }
    result = run(7, frame(7, base, rows))
    assert found(result) == {
        ("person-two", "mentor.persons"), ("slot-none", "mentor.persons"), ("person-missing", "mentor.persons"),
        ("bad-in-list", "cpr.bad_date"), ("bad-in-list", "cpr.unknown"), ("granted", "hours.out_of_range"),
        ("avg", "hours.out_of_range"), ("phase-in", "dates.before_phase_in"),
    }
    messages = result.findings.set_index(["record_key", "rule"])["message"]
    assert messages[("bad-in-list", "cpr.bad_date")] == (
        "person_cprs 310290-****: impossible birth date or century (cpr.bad_date, § 37 nr. 10)")
    assert "basis PERSON names 2 person(s)" in messages[("person-two", "mentor.persons")]
    assert messages[("granted", "hours.out_of_range")].startswith(
        "granted_hours 2500: must be between 0.5 and 2000 hours (")


def test_clean_frames_give_no_findings():
    clean = {
        1: frame(1, AREA1, {f"k{i}": {"person_cpr": P[i]} for i in range(5)}),
        2: frame(2, AREA2, {f"k{i}": {"person_cpr": P[i]} for i in range(5)}),
        4: frame(4, {"held_on": date(2011, 1, 10), "employer_cvr": CVR}, {"k": {"person_cpr": P[0]}}),
        7: frame(7, {"municipality_code": "461", "basis": "SLOT", "company_cvr": CVR, "company_pnr": "1003456789",
                     "start_date": date(2011, 1, 1), "end_date": date(2011, 3, 31), "persons_paid": 2,
                     "avg_paid_hours": 8.5}, {"k": {"person_cprs": (P[0], P[1])}}),
    }
    for area, records in clean.items():
        result = run(area, records)
        assert result.findings.empty, result.findings.to_dict("records")
        assert result.statistics["success"].all()


def test_an_empty_frame_gives_no_findings():
    result = run(1, area1_frame().iloc[0:0])
    assert result.findings.empty and result.rows == 0
    assert list(result.findings.columns) == FINDING_COLUMNS


def test_severity_override_changes_findings(monkeypatch):
    records = area1_frame()
    assert run(1, records).findings.set_index("record_key").loc["no-mod11", "severity"] == "warning"
    monkeypatch.setenv("AMS_RULE_SEVERITY", "cpr.no_modulus11=error,measure.overlap=warning")
    result = run(1, records)
    findings = result.findings.set_index(["record_key", "rule"])
    assert findings.loc[("no-mod11", "cpr.no_modulus11"), "severity"] == "error"
    assert findings.loc[("overlap-a", "measure.overlap"), "severity"] == "warning"
    assert "no-mod11" in result.error_keys and "overlap-a" not in result.error_keys
    assert result.statistics.set_index("rule").loc["cpr.no_modulus11", "severity"] == "error"


# --- Data Docs and personal data ---------------------------------------------------------------------


def raw_cprs(*frames: pd.DataFrame) -> set[str]:
    """Every raw CPR number in the fixtures, with and without the hyphen (the unknown 0000000000 aside)."""
    out = set()
    for f in frames:
        for column in ("person_cpr", "person_cprs"):
            for value in f.get(column, []):
                for number in (value if isinstance(value, tuple) else (value,)):
                    digits = str(number).replace("-", "") if number else ""
                    if len(digits) == 10 and digits != UNKNOWN:
                        out |= {digits, f"{digits[:6]}-{digits[6:]}"}
    return out


def leaks(folder: Path, numbers: set[str]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            hits += [f"{path}: {n}" for n in numbers if n.encode() in content]
    return hits


def test_data_docs_are_built_without_raw_cpr(tmp_path, caplog):
    records1 = area1_frame()
    records7 = frame(7, {"municipality_code": "101", "basis": "SLOT", "company_cvr": CVR, "company_pnr": "1003456789",
                         "start_date": date(2011, 1, 1), "end_date": date(2011, 3, 31), "persons_paid": 2,
                         "avg_paid_hours": 8.5}, {"k1": {"person_cprs": (P[3], BAD_DATE)}, "k2": {"person_cprs": ()}})
    numbers = raw_cprs(records1, records7)
    assert BAD_DATE in numbers and NO_MODULUS in numbers and len(numbers) > 20
    docs = tmp_path / "docs"
    with caplog.at_level(logging.DEBUG):
        first = run(1, records1, data_docs_dir=docs)
        second = run_quality(1, records1, period_end=PERIOD_END, run_id="second", data_docs_dir=docs)
        seventh = run(7, records7, data_docs_dir=docs)
    assert first.docs_index == second.docs_index == seventh.docs_index == docs / "index.html"
    assert found(first) == found(second) == AREA1_EXPECTED
    assert {"k1", "k2"} <= set(seventh.findings["record_key"])
    pages = {p.relative_to(docs / "validations").parts[:2] for p in (docs / "validations").rglob("*.html")}
    assert pages == {("area1_insured_measures", "test-area1"), ("area1_insured_measures", "second-area1"),
                     ("area7_mentor_support", "test-area7")}
    assert (docs / "expectations" / "area1_insured_measures.html").exists()
    assert (docs / "gx" / "great_expectations.yml").exists()
    index = (docs / "index.html").read_text()
    assert "test-area1" in index and "second-area1" in index and "test-area7" in index
    assert leaks(docs, numbers) == []
    messages = "\n".join([*first.findings["message"], *seventh.findings["message"]])
    assert not [n for n in numbers if n in messages]
    assert not [n for n in numbers if n in caplog.text]


def test_the_leak_check_would_catch_a_raw_cpr(tmp_path):
    (tmp_path / "page.html").write_text(f"<td>{BAD_DATE}</td>")
    assert leaks(tmp_path, raw_cprs(area1_frame()))


def test_a_thousand_rows_run_quickly():
    rng = np.random.default_rng(7)
    n = 1000
    starts = [date(2011, 1, 3) + pd.Timedelta(days=int(d)) for d in rng.integers(0, 200, n)]
    rows = {f"M{i:05d}": {"person_cpr": P[i % 20], "measure_type": ("VP", "LTP", "LTO", "VO")[i % 4],
                          "start_date": s, "end_date": s + pd.Timedelta(days=20)}
            for i, s in enumerate(starts)}
    records = frame(1, AREA1, rows)
    run(1, records.head(5))  # warm the cached context and suite
    started = time.perf_counter()
    result = run(1, records)
    elapsed = time.perf_counter() - started
    assert result.rows == n
    assert set(result.findings["rule"]) <= {"measure.overlap"}
    assert elapsed < 10, f"{elapsed:.1f} s for {n} rows"

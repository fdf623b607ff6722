"""Counts that mean what the README says (issue 11, item 4).

- `warn` counts records sent with a warning, not quarantined (or unchanged) records with one;
- "quarantined, by rule" counts records, not findings;
- a CPR number written `DDMMYY-SSSS` or with spaces is normalised once, where records are mapped, so
  the contract and the data-quality suite agree on it;
- count and hours fields have the bounds the registry declares, checked by both layers alike.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from cycle.pipeline import Settings, prepare_area
from expectations.runner import run_quality
from reports.summary import format_summary
from transforms.contracts import check_contract
from transforms.fields_doc import render
from transforms.identifiers import cpr_status
from transforms.mapping import map_records
from transforms.registry import AREAS, Bounds, Field, get_area
from transforms.source import create_engine_from_url, create_source_schema


def _cprs(ddmmyy: str, status: str, count: int) -> list[str]:
    candidates = (f"{ddmmyy}{serial:04d}" for serial in range(1000, 10000))
    found = (c for c in candidates if cpr_status(c) == status)
    return [next(found) for _ in range(count)]


VALID = _cprs("150375", "valid", 6)
NO_MOD11 = _cprs("160476", "no_modulus11", 2)


def hyphenated(cpr: str) -> str:
    return f"{cpr[:6]}-{cpr[6:]}"


# --- CPR numbers as case systems write them -------------------------------------------------------


@pytest.mark.parametrize("written", [hyphenated(VALID[0]), f"  {VALID[0]} ", f" {hyphenated(VALID[0])}\t"])
def test_a_cpr_number_with_hyphen_or_spaces_is_normalised_where_records_are_mapped(written):
    area = get_area(3)
    source = pd.DataFrame([{"record_key": "I1", "person_cpr": written, "municipality_code": "101",
                            "held_on": "2012-05-14", "interview_form": "1", "visitation_category": "2",
                            "reconciles": 1, "updated_at": "2012-05-14", "deleted_at": None}])
    records = map_records(area, source).records
    assert records.at[0, "person_cpr"] == VALID[0]
    assert check_contract(area, records).empty  # no format.cpr
    quality = run_quality(area, records, period_end=date(2012, 12, 31), run_id="t")
    assert quality.findings.empty


def test_a_cpr_list_is_normalised_too_and_a_malformed_number_still_fails_the_contract():
    area = get_area(7)
    source = pd.DataFrame([
        {"record_key": "G1", "municipality_code": "101", "basis": "SLOT", "company_cvr": "13748136",
         "company_pnr": "1003456789", "start_date": "2025-01-01", "end_date": "2025-03-31", "granted_hours": None,
         "persons_paid": 2, "avg_paid_hours": 4.5, "person_cprs": f"{hyphenated(VALID[1])}, {VALID[2]} ",
         "reconciles": 1, "updated_at": "2025-01-01", "deleted_at": None},
        {"record_key": "G2", "municipality_code": "101", "basis": "PERSON", "company_cvr": "13748136",
         "company_pnr": "1003456789", "start_date": "2025-01-01", "end_date": "2025-03-31", "granted_hours": 40,
         "persons_paid": None, "avg_paid_hours": None, "person_cprs": f"{VALID[3][:5]}-{VALID[3][5:]}",
         "reconciles": 1, "updated_at": "2025-01-01", "deleted_at": None},
    ])
    records = map_records(area, source).records
    assert records.at[0, "person_cprs"] == (VALID[1], VALID[2])
    found = check_contract(area, records)
    assert list(zip(found["record_key"], found["rule"], strict=True)) == [("G2", "format.cpr")]
    assert "DDMMYY-SSSS" not in found.at[0, "message"]  # the rule no longer contradicts what it accepts


# --- bounds of count and hours fields: declared in the registry, checked by both layers -----------


def test_number_fields_must_declare_their_bounds_and_only_they():
    with pytest.raises(ValueError, match="declare their bounds"):
        Field("n", "N", "§ 1", "t.n", "count")
    with pytest.raises(ValueError, match="declare their bounds"):
        Field("d", "D", "§ 1", "t.d", "date", bounds=Bounds(0, 1, "x"))
    numbers = [(a, f) for a in AREAS for f in a.fields if f.kind in ("hours", "count")]
    assert {f.name for _, f in numbers} == {"weekly_hours", "granted_hours", "persons_paid", "avg_paid_hours"}
    assert get_area(7).field("persons_paid").bounds.low == 1
    assert all(f.bounds.low > 0 for _, f in numbers)  # "more than 0" is what a count or amount of hours means


def test_the_field_reference_lists_each_range():
    page = render()
    for area in AREAS:
        for f in area.fields:
            if f.bounds is not None:
                assert f"{f.range_text}: {f.bounds.why}" in page, (area.code, f.name)
    assert "at least 1: a slot grant pays for at least one person" in page


_MENTOR = {"municipality_code": "101", "company_cvr": "13748136", "company_pnr": "1003456789",
           "start_date": date(2025, 1, 1), "end_date": date(2025, 3, 31), "reconciles": True}


def _mentor_records(rows: dict[str, dict]) -> pd.DataFrame:
    area = get_area(7)
    out = []
    for key, row in rows.items():
        full = {"granted_hours": None, "persons_paid": None, "avg_paid_hours": None, **_MENTOR, **row}
        out.append({"record_key": key, "record_id": key, "action": "CREATE_OR_UPDATE",
                    **{f: full.get(f) for f in area.field_names}, "reconciles": True,
                    "cond__per_person": full["basis"] == "PERSON", "cond__per_slot": full["basis"] == "SLOT"})
    return pd.DataFrame(out, dtype=object)


@pytest.mark.parametrize(("field", "basis", "bad", "good"), [
    ("persons_paid", "SLOT", 0, 1),
    ("avg_paid_hours", "SLOT", 0.0, 0.5),
    ("avg_paid_hours", "SLOT", 60.5, 60.0),
    ("granted_hours", "PERSON", 0.0, 2000.0),
    ("granted_hours", "PERSON", 2000.5, 0.5),
])
def test_both_layers_check_the_registry_bounds_and_word_them_alike(field, basis, bad, good):
    area = get_area(7)
    base = {"basis": basis, "person_cprs": (VALID[4],),
            **({"persons_paid": 1, "avg_paid_hours": 4.0} if basis == "SLOT" else {"granted_hours": 40.0})}
    records = _mentor_records({"bad": {**base, field: bad}, "good": {**base, field: good}})
    rule = "count.out_of_range" if field == "persons_paid" else "hours.out_of_range"
    contract = check_contract(area, records)
    quality = run_quality(area, records, period_end=date(2025, 12, 31), run_id="t").findings
    for layer in (contract, quality):
        hits = layer[layer["rule"] == rule]
        assert hits["record_key"].tolist() == ["bad"] and hits["field"].tolist() == [field]
    assert contract.loc[contract["rule"] == rule, "message"].tolist() == \
        quality.loc[quality["rule"] == rule, "message"].tolist()
    assert f"{field} {bad:g}: must be {area.field(field).range_text}" in quality.loc[
        quality["rule"] == rule, "message"].iloc[0]


def test_weekly_hours_of_zero_are_out_of_range_in_both_layers():
    area = get_area(6)
    rows = []
    for key, hours in (("zero", 0.0), ("half", 0.5), ("sixty", 60.0), ("over", 60.25)):
        rows.append({"record_key": key, "record_id": key, "action": "CREATE_OR_UPDATE", "person_cpr": VALID[5],
                     "municipality_code": "101", "scheme": "EMPLOYMENT", "company_cvr": "13748136",
                     "company_pnr": "1003456789", "start_date": date(2025, 1, 1), "end_date": date(2025, 6, 30),
                     "weekly_hours": hours, "reconciles": True})
    records = pd.DataFrame(rows, dtype=object)
    contract = check_contract(area, records)
    quality = run_quality(area, records, period_end=date(2025, 12, 31), run_id="t").findings
    for layer in (contract, quality):
        assert set(layer.loc[layer["rule"] == "hours.out_of_range", "record_key"]) == {"zero", "over"}
    assert not contract["message"].str.contains(VALID[5]).any()


def test_a_changed_bound_changes_both_layers(monkeypatch):
    """The layers read the one declaration: tighten it, and both follow."""
    from transforms import contracts

    area = get_area(7)
    tighter = replace(area, fields=tuple(
        replace(f, bounds=Bounds(2, None, "test")) if f.name == "persons_paid" else f for f in area.fields))
    records = _mentor_records({"one": {"basis": "SLOT", "persons_paid": 1, "avg_paid_hours": 4.0,
                                       "person_cprs": (VALID[4],)}})
    contracts.schema.cache_clear()
    assert check_contract(area, records).empty
    assert set(check_contract(tighter, records)["rule"]) == {"count.out_of_range"}
    quality = run_quality(tighter, records, period_end=date(2025, 12, 31), run_id="t").findings
    assert set(quality["rule"]) == {"count.out_of_range"}


# --- the pipeline's counts --------------------------------------------------------------------------

_SOURCE = """
INSERT INTO persons (person_id, cpr) VALUES (1, '{ok}'), (2, '{warn}'), (3, '{warn_bad}'), (4, '{hyphen}'),
    (5, '{mentor}');
INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, amount) VALUES
    (1, 1, NULL, '2012-01-01', '2012-12-31', 1000.0), (2, 2, NULL, '2012-01-01', '2012-12-31', 1000.0),
    (3, 3, NULL, '2012-01-01', '2012-12-31', 1000.0), (4, 4, NULL, '2012-01-01', '2012-12-31', 1000.0);
INSERT INTO followup_interviews (interview_id, person_id, municipality_code, held_on, interview_form,
                                 visitation_category) VALUES
    ('OK', 1, '101', '2012-05-14', '1', '2'),
    ('WARN', 2, '101', '2012-05-14', '1', '2'),
    ('WARN-AND-BAD', 3, '101', '2012-05-14', '8', '7'),
    ('HYPHEN', 4, '101', '2012-05-14', '2', '3');
INSERT INTO mentor_grants (grant_id, municipality_code, basis, company_cvr, company_pnr, start_date, end_date,
                           granted_hours, persons_paid, avg_paid_hours) VALUES
    ('SLOT-0', '101', 'SLOT', '13748136', '1003456789', '2025-01-01', '2025-03-31', NULL, 0, 4.5);
INSERT INTO mentor_grant_persons (grant_id, person_id) VALUES ('SLOT-0', 5);
"""


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """Areas 3 and 7 prepared twice from a small source; returns (settings, first, second)."""
    monkeypatch.setenv("AMS_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.delenv("AMS_ARCHIVE_KEY", raising=False)
    monkeypatch.delenv("AMS_ARCHIVE_KEY_FILE", raising=False)
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    engine = create_engine_from_url(url)
    create_source_schema(engine)
    script = _SOURCE.format(ok=VALID[0], warn=NO_MOD11[0], warn_bad=NO_MOD11[1], hyphen=hyphenated(VALID[1]),
                            mentor=VALID[2])
    with engine.begin() as conn:
        for statement in filter(str.strip, script.split(";")):
            conn.execute(sa.text(statement))
    engine.dispose()
    settings = Settings(home=tmp_path / "var", source_url=url, state_url=f"sqlite:///{tmp_path / 'state.sqlite'}",
                        data_docs=False)
    first = {a: prepare_area(a, run_id="r1", period_end=date(2025, 12, 31), settings=settings) for a in (3, 7)}
    return settings, first


def test_warn_counts_records_sent_with_a_warning_not_quarantined_ones(counted):
    settings, first = counted
    area3 = first[3]
    assert area3["extracted"] == 4 and area3["quarantined"] == 1  # WARN-AND-BAD
    assert area3["with_warnings"] == 1  # WARN; WARN-AND-BAD has the same warning but is held back
    assert area3["to_create"] == 3  # OK, WARN and HYPHEN (its CPR number is fine once normalised)
    findings = settings.state().run_findings("r1")
    assert not (findings["rule"] == "format.cpr").any()
    warned = set(findings.loc[findings["severity"] == "warning", "record_key"])
    assert {"WARN", "WARN-AND-BAD"} <= warned


def test_quarantined_by_rule_counts_records_not_findings(counted):
    settings, _ = counted
    state = settings.state()
    findings = state.run_findings("r1")
    bad_codes = findings[(findings["record_key"] == "WARN-AND-BAD") & (findings["rule"] == "code.invalid")]
    assert len(bad_codes) == 2  # interview_form and visitation_category: two findings ...
    rows = {r["area"]: r for r in state.run_rows("r1")}
    assert rows[3]["counts"]["rules"]["code.invalid:error"] == 1  # ... one record
    summary = {"run_id": "r1", "open_quarantine": 2, "archive_dir": "a", "reports_dir": "r",
               "areas": [{"area": 3, "extracted": 4, "delivered": 3, "annulled": 0, "quarantined": 1, "unchanged": 0,
                          "outstanding": 0, "warnings": 1, "status": "delivered", "receipts": [], "message": "",
                          "rules": rows[3]["counts"]["rules"]}],
               "totals": {"extracted": 4, "delivered": 3, "annulled": 0, "quarantined": 1, "unchanged": 0,
                          "outstanding": 0, "warnings": 1}}
    text = format_summary(summary)
    assert "Quarantined records, by rule" in text and "area 3 code.invalid: 1" in text


def test_a_range_checked_by_both_layers_is_one_finding(counted):
    settings, first = counted
    assert first[7]["quarantined"] == 1
    findings = settings.state().run_findings("r1")
    slot = findings[findings["record_key"] == "SLOT-0"]
    assert slot["rule"].tolist().count("count.out_of_range") == 1
    assert slot.loc[slot["rule"] == "count.out_of_range", "message"].iloc[0].startswith(
        "persons_paid 0: must be at least 1 (")
    (entry,) = [q for q in settings.state().open_quarantine() if q["record_key"] == "SLOT-0"]
    assert [f["rule"] for f in entry["findings"]].count("count.out_of_range") == 1


def test_an_unchanged_record_with_a_warning_is_not_counted_again(counted):
    settings, _ = counted
    second = prepare_area(3, run_id="r2", period_end=date(2025, 12, 31), settings=settings)
    # nothing was delivered in r1 (no receiver here): the three records are sent again, WARN among them
    assert second["with_warnings"] == 1
    state = settings.state()
    for batch in state.outstanding_batches(3):  # pretend the receiver accepted them
        results = {rid: ("ACCEPTED", None, None) for rid in state.batch_members(batch["batch_id"])["record_id"]}
        state.apply_receipt(batch["batch_id"], run_id="r2", outcome="accepted", message_id="m",
                            event_date="2025-12-31", record_results=results)
    third = prepare_area(3, run_id="r3", period_end=date(2025, 12, 31), settings=settings)
    assert third["unchanged"] == 3 and third["with_warnings"] == 0

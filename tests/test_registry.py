"""The registry is the one source: generated artefacts stay in sync, and it is internally sound."""

from transforms import codelists
from transforms.fields_doc import FIELDS_DOC, render
from transforms.registry import AREAS, SFTP, WEBSERVICE
from transforms.rules import RULE_BY_ID, field_rules


def test_field_reference_is_up_to_date():
    assert FIELDS_DOC.read_text(encoding="utf-8") == render(), "docs/fields.md is stale: run `make docs`"


def test_every_field_is_traced_to_a_paragraph_and_a_source():
    for area in AREAS:
        for f in area.fields:
            assert f.paragraph.startswith("§"), (area.code, f.name)
            assert f.source and f.element[0].isupper(), (area.code, f.name)
            for rule in field_rules(area, f):
                assert rule in RULE_BY_ID, (area.code, f.name, rule)


def test_names_are_unique_and_conditions_exist():
    for area in AREAS:
        assert len(set(area.field_names)) == len(area.fields), area.code
        assert len({f.element for f in area.fields if f.kind != "cpr_list"}) == len(
            [f for f in area.fields if f.kind != "cpr_list"]), area.code
        names = {c.name for c in area.conditions}
        for f in area.fields:
            if isinstance(f.required, str):
                assert f.required in names, (area.code, f.name)
            if f.only_when:
                assert f.only_when in names, (area.code, f.name)
        assert area.query_path.exists() or any(area.query_path.parent.glob(area.query_path.stem + ".*.sql"))


def test_code_fields_name_existing_lists():
    for area in AREAS:
        for f in area.fields:
            if f.kind == "code":
                assert codelists.codes(f.codelist), (area.code, f.name)


def test_channels_follow_the_regulation():
    # §§ 17, 22 and 28: areas 3, 4 and 5 by web service only; § 51: areas 1 and 2 could also go as files.
    for area in AREAS:
        assert WEBSERVICE in area.channels
        assert (SFTP in area.channels) == (area.number in (1, 2))


def test_phase_in_dates_follow_section_50():
    dates = {a.number: a.phase_in.isoformat() for a in AREAS}
    assert dates[3] == "2009-10-05" and dates[5] == "2009-08-01" and dates[6] == "2009-08-01"
    assert dates[7] == dates[8] == "2011-01-01" and dates[1] == dates[2] == "2010-01-04"


def test_code_lists_name_their_source_and_validity():
    for name in ("measure_types", "activation_types", "benefit_types", "interview_forms", "visitation_categories",
                 "cv_statuses", "job_order_types", "course_types", "ministry_areas", "location_codes",
                 "target_groups"):
        for row in codelists.rows(name):
            assert row["source"].strip() and row["valid_from"], (name, row["code"])
    assert len(codelists.municipality_codes()) == 98
    assert "411" not in codelists.municipality_codes()  # Christiansø is not a municipality

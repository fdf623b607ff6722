"""The catalogue of data rules: one id, engine, default severity and explanation each.

The pandera contract (transforms.contracts) enforces the `contract` rules, the Great Expectations
suites (expectations/) the `quality` rules. Findings carry the rule id, so quarantine entries, the
analysts' report and the planted defects of the demo data all speak the same names.

Severity is configuration: `AMS_RULE_SEVERITY="cpr.unknown=error,reconcile.no_benefit_or_payment=error"`
overrides the defaults below. Errors quarantine a row; warnings let it through and are reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    engine: str  # "contract" (pandera), "quality" (Great Expectations), both ("contract, quality") or "delivery"
    severity: str
    title: str  # what the rule demands, in words for analysts
    basis: str  # where the rule comes from (paragraph or DOMAIN.md source)

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(self.engine.split(", "))


RULES: tuple[Rule, ...] = (
    # Types and formats: the record contract (pandera).
    Rule("required.missing", "contract", ERROR, "A field the regulation requires here is empty",
         "the field's paragraph"),
    Rule("field.not_applicable", "contract", WARNING,
         "A field is filled where the regulation does not ask for it; it is not sent", "the field's paragraph"),
    Rule("format.cpr", "contract", ERROR,
         "CPR number is not 10 digits (a hyphen after the birth date and surrounding spaces are removed first)",
         "DOMAIN.md, cpr.dk"),
    Rule("format.cvr", "contract", ERROR, "CVR number is not 8 digits without a leading zero", "DOMAIN.md"),
    Rule("format.pnr", "contract", ERROR, "P-number is not 10 digits", "DOMAIN.md, erhvervsstyrelsen.dk"),
    Rule("format.se", "contract", ERROR, "SE number is not 8 digits", "DOMAIN.md"),
    Rule("format.municipality", "contract", ERROR, "Municipality code is not 3 digits", "DOMAIN.md"),
    Rule("format.jobcentre", "contract", ERROR, "Job-centre code is not 5 digits", "STAR SubJobcenter"),
    Rule("format.date", "contract", ERROR, "Not a valid date", "the field's paragraph"),
    Rule("format.number", "contract", ERROR, "Not a number", "the field's paragraph"),
    Rule("format.text", "contract", ERROR, "Text too long (200 characters at most)", "the project's XSD"),
    # Ranges: declared per field in the registry (Field.bounds); both layers check them, and the
    # pipeline keeps one finding per record, rule and field.
    Rule("hours.out_of_range", "contract, quality", ERROR,
         "Hours outside the field's range (e.g. weekly hours 0.5-60; see the field's bounds)",
         "the field's paragraph and meaning (docs/fields.md, bounds)"),
    Rule("count.out_of_range", "contract, quality", ERROR,
         "Count outside the field's range (e.g. a slot grant pays for at least 1 person)",
         "the field's paragraph and meaning (docs/fields.md, bounds)"),
    Rule("scope.no_target_group", "contract", ERROR,
         "No target group on the measure's start date: area 1 or 2 cannot be decided", "§ 2, § 8"),
    Rule("scope.status_changed", "contract", WARNING,
         "Target group or a-kasse membership changed during the measure; reported in the area of its start date",
         "§ 2, § 8"),
    # Meaning: the data-quality suites (Great Expectations).
    Rule("cpr.bad_date", "quality", ERROR, "CPR number has an impossible birth date or century",
         "cpr.dk, 'Opbygning af CPR-nummeret'"),
    Rule("cpr.unknown", "quality", WARNING, "CPR number is 0000000000 ('required but unknown')",
         "STAR service documentation"),
    Rule("cpr.no_modulus11", "quality", WARNING,
         "CPR number fails modulus 11 (valid since 2007; shown for information)",
         "cpr.dk, 'Personnumre uden kontrolciffer'"),
    Rule("cvr.bad_checksum", "quality", ERROR, "CVR number fails the modulus-11 check", "erhvervsstyrelsen.dk"),
    Rule("se.no_modulus11", "quality", WARNING, "SE number fails the CVR check (not a proven rule)", "DOMAIN.md"),
    Rule("municipality.unknown", "quality", ERROR, "Not one of the 98 municipality codes",
         "reference/municipalities.csv"),
    Rule("jobcentre.unknown_municipality", "quality", ERROR,
         "Job-centre code does not start with a municipality code", "STAR SubJobcenter"),
    Rule("code.invalid", "quality", ERROR, "Value is not in the code list valid on the record's date", "reference/"),
    Rule("dates.start_after_end", "quality", ERROR, "Start date is after the end date", "the area's paragraph"),
    Rule("dates.future", "quality", ERROR, "Date (other than a planned end date) lies after the reporting period",
         "§ 4 (continuous registration)"),
    Rule("dates.before_phase_in", "quality", ERROR, "Dated before the area's phase-in date", "§ 50"),
    Rule("jobplan.revised_before_created", "quality", ERROR, "Job plan revised before it was created",
         "§ 3 nr. 11-12, § 9 nr. 10-11"),
    Rule("measure.overlap", "quality", ERROR,
         "Another measure of the same type for the same person overlaps this one", "§ 3 nr. 5, § 9 nr. 3"),
    Rule("employer.cvr_or_se", "quality", ERROR, "Give exactly one of CVR number and SE number", "§ 19 nr. 2"),
    Rule("mentor.persons", "quality", ERROR,
         "Mentor grant per person must name exactly one person; per slot at least one", "§ 37 nr. 10"),
    Rule("reconcile.no_benefit_or_payment", "quality", WARNING,
         "No benefit or payment for the person in the record's period", "§§ 4, 10, 15, 20, 26, 32, 38, 43"),
    # From the receiver (delivery): the agency's business faults.
    Rule("receiver.rejected", "delivery", ERROR, "The receiver rejected the record", "§ 46 (interface description)"),
)

RULE_BY_ID = {r.id: r for r in RULES}


def severity(rule_id: str) -> str:
    """The rule's severity, after the AMS_RULE_SEVERITY overrides."""
    overrides = {}
    for item in os.environ.get("AMS_RULE_SEVERITY", "").split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            overrides[key.strip()] = value.strip()
    value = overrides.get(rule_id, RULE_BY_ID[rule_id].severity)
    if value not in (ERROR, WARNING):
        raise ValueError(f"AMS_RULE_SEVERITY: {rule_id}={value!r}; use 'error' or 'warning'")
    return value


# Which rules guard a field, by its kind and role: the field reference (docs/fields.md) reads this.
_KIND_RULES = {
    "cpr": ("format.cpr", "cpr.bad_date", "cpr.unknown", "cpr.no_modulus11"),
    "cpr_list": ("format.cpr", "cpr.bad_date", "mentor.persons"),
    "municipality": ("format.municipality", "municipality.unknown"),
    "jobcentre": ("format.jobcentre", "jobcentre.unknown_municipality"),
    "cvr": ("format.cvr", "cvr.bad_checksum"),
    "pnr": ("format.pnr",),
    "se": ("format.se", "se.no_modulus11"),
    "key": ("format.text",),
    "text": ("format.text",),
    "code": ("format.text", "code.invalid"),
    "date": ("format.date", "dates.future"),  # not on end_date: see field_rules
    "hours": ("format.number", "hours.out_of_range"),
    "count": ("format.number", "count.out_of_range"),
    "bool": ("format.number",),
}
_NAME_RULES = {
    "start_date": ("dates.start_after_end",),
    "end_date": ("dates.start_after_end",),
    "jobplan_revised_on": ("jobplan.revised_before_created",),
    "employer_cvr": ("employer.cvr_or_se",),
    "employer_se": ("employer.cvr_or_se",),
    "measure_type": ("measure.overlap",),
}


def field_rules(area, f) -> list[str]:  # (Area, Field) -> rule ids; untyped to keep this module import-free
    found = list(_KIND_RULES[f.kind]) + list(_NAME_RULES.get(f.name, ()))
    if f.name == "end_date":
        found.remove("dates.future")  # a planned end after the period is normal
    if f.required:
        found.insert(0, "required.missing")
    if f.only_when:
        found.append("field.not_applicable")
    if f.name == area.date_field:
        found.append("dates.before_phase_in")
    if f.name == area.person_field and area.reconciliation_paragraph and area.number in (1, 2, 3, 5, 6):
        found.append("reconcile.no_benefit_or_payment")
    return list(dict.fromkeys(found))


def range_rule(f) -> str:  # (Field) -> the rule that checks its bounds
    """`hours.out_of_range` or `count.out_of_range`: the rule of a numeric field's registry bounds."""
    return f"{f.kind}.out_of_range"


def range_problem(f) -> str:  # (Field) -> what a value outside its bounds is told, in both layers
    """e.g. "must be at least 1 (a slot grant pays for at least one person ...)"."""
    return f"must be {f.range_text} ({f.bounds.why})"

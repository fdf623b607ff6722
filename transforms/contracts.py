"""The record contracts: one pandera schema per area, built from the registry.

The contract enforces what a record must look like before anything looks at what it means: types,
formats of the identifiers (DOMAIN.md), and the regulation's required-when clauses ("for company-
directed measures: ..."). Meaning (valid dates in CPR numbers, code lists, cross-field rules) is the
data-quality suites' job (expectations/).

Failures come back as the findings frame of docs/architecture.md. pandera's own failure cases hold
the offending values, CPR numbers included, so they never leave this module: messages are rebuilt
from the rule, the field and the masked person.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import numpy as np
import pandas as pd
import pandera.pandas as pa

from transforms import rules
from transforms.identifiers import mask_cpr
from transforms.mapping import condition_column
from transforms.registry import Area, Field

FINDING_COLUMNS = ["record_key", "rule", "field", "paragraph", "severity", "message"]

_FORMATS = {
    "cpr": ("format.cpr", r"\d{10}"),
    "municipality": ("format.municipality", r"\d{3}"),
    "jobcentre": ("format.jobcentre", r"\d{5}"),
    "cvr": ("format.cvr", r"[1-9]\d{7}"),
    "pnr": ("format.pnr", r"\d{10}"),
    "se": ("format.se", r"\d{8}"),
}
_MAX_TEXT = 200
_MAX_KEY = 64


def _empty(value: object) -> bool:
    return value is None or value == () or (isinstance(value, float) and value != value)


def _missing(values: pd.Series) -> pd.Series:
    """Vectorised `_empty` (None, NaN, or an empty person list): a check runs on every row."""
    missing = values.isna()
    if values.dtype == object and len(values) and isinstance(values.iloc[0], tuple):
        missing |= values.map(len) == 0
    return missing


def _element_check(f: Field) -> pa.Check | None:
    """The format rule of a field's kind, as an element-wise check that passes on empty values."""
    if f.kind in _FORMATS:
        rule, pattern = _FORMATS[f.kind]
        return pa.Check(
            lambda s, p=pattern: s.isna() | s.astype("string").str.fullmatch(p).fillna(False).astype(bool),
            name=f"{rule}|{f.name}", ignore_na=False,
        )
    if f.kind == "date":
        return pa.Check(lambda s: s.map(lambda v: _empty(v) or isinstance(v, date)).astype(bool),
                        name=f"format.date|{f.name}", ignore_na=False)
    if f.kind in ("hours", "count"):
        return pa.Check(
            lambda s: s.map(lambda v: _empty(v) or (isinstance(v, (int, float)) and not isinstance(v, bool)))
            .astype(bool),
            name=f"format.number|{f.name}", ignore_na=False,
        )
    if f.kind in ("text", "key", "code"):
        limit = _MAX_TEXT if f.kind == "text" else _MAX_KEY
        return pa.Check(lambda s, n=limit: s.map(lambda v: _empty(v) or len(str(v)) <= n).astype(bool),
                        name=f"format.text|{f.name}", ignore_na=False)
    if f.kind == "bool":
        return pa.Check(lambda s: s.map(lambda v: _empty(v) or isinstance(v, bool)).astype(bool),
                        name=f"format.number|{f.name}", ignore_na=False)
    if f.kind == "cpr_list":
        return pa.Check(
            lambda s: s.map(lambda v: all(isinstance(x, str) and len(x) == 10 and x.isdigit() for x in v))
            .astype(bool),
            name=f"format.cpr|{f.name}", ignore_na=False,
        )
    return None


def _bounds_check(f: Field) -> pa.Check | None:
    """The registry's bounds of a count or hours field (the quality suite checks the same bounds).

    Passes on empty values and on values that are not numbers: `format.number` reports those.
    """
    bounds = f.bounds
    if bounds is None:
        return None

    def inside(value: object) -> bool:
        if _empty(value) or isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return bounds.contains(value)

    return pa.Check(lambda s: s.map(inside).astype(bool), name=f"{rules.range_rule(f)}|{f.name}", ignore_na=False)


def _required_check(f: Field) -> pa.Check:
    """§ ...: the field is required (always, or when its condition holds)."""
    if f.required is True:
        return pa.Check(lambda df, n=f.name: ~_missing(df[n]), name=f"required.missing|{f.name}", ignore_na=False)
    cond = condition_column(str(f.required))
    return pa.Check(lambda df, n=f.name, c=cond: ~(df[c].astype(bool) & _missing(df[n])),
                    name=f"required.missing|{f.name}", ignore_na=False)


def _not_applicable_check(f: Field) -> pa.Check:
    cond = condition_column(str(f.only_when))
    return pa.Check(lambda df, n=f.name, c=cond: df[c].astype(bool) | _missing(df[n]),
                    name=f"field.not_applicable|{f.name}", ignore_na=False)


def _flag_check(column: str, rule_id: str, field: str) -> pa.Check:
    return pa.Check(lambda df: ~df[column].fillna(False).astype(bool), name=f"{rule_id}|{field}", ignore_na=False)


@lru_cache(maxsize=16)
def schema(area: Area) -> pa.DataFrameSchema:
    """The pandera contract of one area's records."""
    columns = {
        "record_key": pa.Column(nullable=False, unique=True),
        "record_id": pa.Column(nullable=False),
        "action": pa.Column(checks=pa.Check.isin(["CREATE_OR_UPDATE", "ANNUL"]), nullable=False),
    }
    for f in area.fields:
        checks = [c for c in (_element_check(f), _bounds_check(f)) if c is not None]
        columns[f.name] = pa.Column(checks=checks, nullable=True)
    wide = [_required_check(f) for f in area.fields if f.required]
    wide += [_not_applicable_check(f) for f in area.fields if f.only_when]
    if area.number in (1, 2):
        wide.append(_flag_check("no_target_group", "scope.no_target_group", "person_cpr"))
        wide.append(_flag_check("status_changed", "scope.status_changed", "person_cpr"))
    return pa.DataFrameSchema(columns, checks=wide, strict=False, coerce=False, name=f"{area.code} record contract")


def _paragraph(area: Area, rule_id: str, field_name: str) -> str:
    """The field's paragraph; for a required-when field also the paragraph of its condition."""
    if rule_id.startswith("scope."):
        return rules.RULE_BY_ID[rule_id].basis
    if field_name not in area.field_names:
        return area.paragraph
    f = area.field(field_name)
    if isinstance(f.required, str):
        return f"{f.paragraph} ({area.condition(f.required).paragraph})"
    return f.paragraph


def _message(area: Area, rule_id: str, field_name: str, person: str, value: object = None) -> str:
    rule = rules.RULE_BY_ID[rule_id]
    where = f" [{person}]" if person else ""
    try:
        f = area.field(field_name)
    except KeyError:
        return f"{rule.title} ({rule_id}, {area.paragraph}){where}"
    if f.bounds is not None and rule_id == rules.range_rule(f):  # worded as the quality suite words it
        return f"{field_name} {value:g}: {rules.range_problem(f)} ({rule_id}, {f.paragraph}){where}"
    extra = ""
    if rule_id == "required.missing" and isinstance(f.required, str):
        extra = f" when: {area.condition(f.required).description}"
    if rule_id == "field.not_applicable" and f.only_when:
        extra = f" (applies only when: {area.condition(f.only_when).description})"
    return f"{field_name}: {rule.title}{extra} ({rule_id}, {f.paragraph}){where}"


def _is_range(area: Area, rule_id: str, field_name: str) -> bool:
    """A range finding: its message quotes the value."""
    try:
        f = area.field(field_name)
    except KeyError:
        return False
    return f.bounds is not None and rule_id == rules.range_rule(f)


def check_contract(area: Area, records: pd.DataFrame) -> pd.DataFrame:
    """Validate records against the area's contract; return every failure as a finding."""
    if records.empty:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    try:
        schema(area).validate(records, lazy=True)
        return pd.DataFrame(columns=FINDING_COLUMNS)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    # Column operations over the failure cases; a message is worded once per rule, field and person
    # (and value, for the ranges), not once per case. A chunk has many cases (one per record and failed
    # check) of few checks: each distinct check name is split once (a split per case took ~5 s at 1M).
    codes, names = pd.factorize(cases["check"].astype(str))
    ours = np.array(["|" in name for name in names], dtype=bool)
    rule = np.array([name.split("|", 1)[0] for name in names], dtype=object)
    field = np.array([name.split("|", 1)[-1] for name in names], dtype=object)
    keep = cases["index"].notna().to_numpy() & (codes >= 0) & ours[codes]
    codes, index = codes[keep], cases["index"].to_numpy()[keep]
    found = pd.DataFrame({"record_key": records["record_key"].reindex(index).to_numpy(),
                          "rule": rule[codes], "field": field[codes], "index": index})
    found = found.drop_duplicates(["record_key", "rule", "field"], ignore_index=True)
    masked: dict[object, str] = {}
    if area.person_field:
        raw = records[area.person_field].reindex(found["index"].to_numpy()).tolist()
        persons = [masked.setdefault(p, mask_cpr(p)) if isinstance(p, str) else mask_cpr(p) for p in raw]
    else:
        persons = [""] * len(found)
    out = []
    worded: dict[tuple, str] = {}
    about: dict[tuple[str, str], tuple[str, str]] = {}  # (rule, field) -> (paragraph, severity)
    for key, rule_id, field_name, at, person in zip(found["record_key"], found["rule"], found["field"],
                                                     found["index"], persons, strict=True):
        value = records.at[at, field_name] if (field_name in records.columns and _is_range(area, rule_id, field_name)
                                               ) else None
        words = (rule_id, field_name, person, value)
        message = worded.get(words) if value is None or value == value else None
        if message is None:
            message = worded.setdefault(words, _message(area, rule_id, field_name, person, value))
        where = about.get((rule_id, field_name))
        if where is None:
            where = about.setdefault((rule_id, field_name), (_paragraph(area, rule_id, field_name),
                                                             rules.severity(rule_id)))
        out.append({"record_key": key, "rule": rule_id, "field": field_name, "paragraph": where[0],
                    "severity": where[1], "message": message})
    return pd.DataFrame(out, columns=FINDING_COLUMNS)

"""The data-quality checks of an area and the masked frame they run on (engine 'quality').

`area_checks(area)` lists one `Check` per (rule, field), read from the registry by field kind;
`prepare_frame` computes, in Python and vectorised, the columns those checks test. The frame is a
MASKED copy of the records: CPR numbers become `DDMMYY-****`, free text is left out, and every
derived column holds a status, a flag or a record key, so nothing personal reaches Great
Expectations, its results or Data Docs. Codes, dates and hours stay as they are (not personal).

Derived columns are named `<field>__<check>`. Flags are nullable booleans: True passes, False is
a finding, <NA> is "not applicable here" (an empty or malformed value, which the contract reports).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from transforms import codelists
from transforms.identifiers import (
    CPR_BAD_DATE,
    CPR_BAD_FORMAT,
    CPR_MISSING,
    CPR_NO_MODULUS11,
    CPR_UNKNOWN,
    CPR_VALID,
    cpr_status,
    cvr_status,
    mask_cpr,
    se_status,
)
from transforms.registry import NUMBER_KINDS, Area
from transforms.rules import range_problem, range_rule

#: Separator of several masked CPR numbers (and their statuses) in one cell (kind cpr_list).
LIST_SEP = "; "

_CPR_RULES = (
    ("cpr.bad_date", CPR_BAD_DATE, "impossible birth date or century"),
    ("cpr.unknown", CPR_UNKNOWN, "'required but unknown' (0000000000)"),
    ("cpr.no_modulus11", CPR_NO_MODULUS11, "fails modulus 11 (valid since 2007; for information)"),
)
_CPR_WEIGHTS = np.array([4, 3, 2, 7, 6, 5, 4, 3, 2, 1])
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


@dataclass(frozen=True)
class Check:
    """One quality rule applied to one field: the expectation and how a finding reads."""

    rule: str  # transforms.rules id (engine 'quality')
    field: str  # the record field a finding names
    paragraph: str
    column: str  # the validation-frame column the expectation tests
    expect: str  # "true" | "not_in" | "between" | "null" | "no_match" (expectations.suites)
    args: tuple = ()  # value set, (min, max) or (regex,)
    problem: str = ""  # message text; str.format over the row's masked values and `period_end`
    cpr_status: str | None = None  # for the CPR rules: the status the rule flags

    @property
    def id(self) -> str:
        return f"{self.rule}@{self.field}"


def _paragraphs(area: Area, *names: str) -> str:
    return ", ".join(dict.fromkeys(area.field(n).paragraph for n in names))


def _has(area: Area, *names: str) -> bool:
    return all(n in area.field_names for n in names)


def _reconcile_field(area: Area) -> str:
    return area.person_field or (area.cpr_fields[0] if area.cpr_fields else area.date_field)


def area_checks(area: Area) -> tuple[Check, ...]:
    """Every quality check of an area, from its fields' kinds and the cross-field rules that apply."""
    checks: list[Check] = []
    for f in area.fields:
        col = f"{f.name}__"
        if f.kind in ("cpr", "cpr_list"):
            for rule, status, text in _CPR_RULES:
                if f.kind == "cpr":
                    checks.append(Check(rule, f.name, f.paragraph, col + "status", "not_in", (status,), text, status))
                else:
                    regex = rf"(?:^|; ){status}(?:;|$)"
                    checks.append(Check(rule, f.name, f.paragraph, col + "status", "no_match", (regex,), text, status))
        elif f.kind == "municipality":
            checks.append(Check("municipality.unknown", f.name, f.paragraph, col + "known", "true",
                                problem="not one of the 98 municipality codes"))
        elif f.kind == "jobcentre":
            checks.append(Check("jobcentre.unknown_municipality", f.name, f.paragraph, col + "municipality_known",
                                "true", problem="does not start with a municipality code"))
        elif f.kind == "cvr":
            checks.append(Check("cvr.bad_checksum", f.name, f.paragraph, col + "status", "not_in", ("bad_checksum",),
                                "fails the CVR modulus-11 check"))
        elif f.kind == "se":
            checks.append(Check("se.no_modulus11", f.name, f.paragraph, col + "status", "not_in", ("no_modulus11",),
                                "fails the CVR modulus-11 check (not a proven rule for SE numbers)"))
        elif f.kind == "code":
            checks.append(Check("code.invalid", f.name, f.paragraph, col + "in_codelist", "true",
                                problem=f"not in the code list '{f.codelist}' valid on the record's "
                                f"{area.date_field} ({{{area.date_field}}})"))
        elif f.kind in NUMBER_KINDS and f.bounds is not None:  # the registry's bounds, as the contract
            checks.append(Check(range_rule(f), f.name, f.paragraph, f.name, "between", (f.bounds.low, f.bounds.high),
                                range_problem(f)))
        elif f.kind == "date":
            if f.name != "end_date":  # a planned end after the period is normal for a running measure or grant
                checks.append(Check("dates.future", f.name, f.paragraph, col + "not_future", "true",
                                    problem="after the end of the reporting period ({period_end})"))
            if f.name == area.date_field:
                checks.append(Check("dates.before_phase_in", f.name, area.phase_in_paragraph,
                                    col + "not_before_phase_in", "true",
                                    problem=f"before the area's phase-in date {area.phase_in.isoformat()}"))
    if _has(area, "start_date", "end_date"):
        checks.append(Check("dates.start_after_end", "start_date", _paragraphs(area, "start_date", "end_date"),
                            "start_date__not_after_end", "true", problem="after end_date {end_date}"))
    if _has(area, "jobplan_created_on", "jobplan_revised_on"):
        checks.append(Check("jobplan.revised_before_created", "jobplan_revised_on",
                            _paragraphs(area, "jobplan_created_on", "jobplan_revised_on"),
                            "jobplan_revised_on__not_before_created", "true",
                            problem="before jobplan_created_on {jobplan_created_on}"))
    if area.person_field and _has(area, "measure_type", "start_date", "end_date"):
        checks.append(Check("measure.overlap", "measure_type", _paragraphs(area, "measure_type"),
                            "measure_type__overlaps_with", "null",
                            problem="overlaps measure {measure_type__overlaps_with} of the same type "
                            "for the same person"))
    if _has(area, "employer_cvr", "employer_se"):
        checks.append(Check("employer.cvr_or_se", "employer_cvr", _paragraphs(area, "employer_cvr", "employer_se"),
                            "employer_cvr__cvr_or_se", "in", ("one",),
                            problem="CVR number and SE number: {employer_cvr__cvr_or_se} given; give exactly one"))
    for f in area.fields:
        if f.kind == "cpr_list" and _has(area, "basis"):
            checks.append(Check("mentor.persons", f.name, f.paragraph, f"{f.name}__persons_ok", "true",
                                problem="basis {basis} names {" + f.name + "__count} person(s); a PERSON grant "
                                "names exactly one, a SLOT grant at least one"))
    field = _reconcile_field(area)
    checks.append(Check("reconcile.no_benefit_or_payment", field, area.reconciliation_paragraph, "reconciles",
                        "true", problem="no benefit or payment for the person in the record's period"))
    return tuple(checks)


# --- vectorised helpers -------------------------------------------------------------------------


def _text(values: pd.Series) -> np.ndarray:
    """Object array of str or None (codes and identifiers arrive as text; NaN/NA become None)."""
    out = values.astype(object).to_numpy(copy=True)
    missing = pd.isna(out)
    out[missing] = None
    if pd.api.types.infer_dtype(out, skipna=True) not in ("string", "empty"):
        for i in np.flatnonzero(~missing):
            if not isinstance(out[i], str):
                out[i] = str(out[i])
    return out


def _per_unique(values: np.ndarray, fn: Callable[[str | None], object]) -> np.ndarray:
    """fn applied once per distinct value (identifiers and codes repeat a lot)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=object)
    mapped[:-1] = [fn(u) for u in uniques]
    mapped[-1] = fn(None)  # code -1 (missing) picks the last entry
    return mapped[codes]


def _flag(passes: np.ndarray, applicable: np.ndarray) -> pd.arrays.BooleanArray:
    return pd.arrays.BooleanArray(np.asarray(passes, dtype=bool), ~np.asarray(applicable, dtype=bool))


def _days(values: pd.Series) -> np.ndarray:
    """Dates as float days since 1970 (NaN when empty or not a date: the contract's format.date)."""
    stamps = pd.to_datetime(values.astype(object), errors="coerce")
    days = stamps.to_numpy(dtype="datetime64[D]").astype("int64").astype(float)
    days[pd.isna(stamps).to_numpy()] = np.nan
    return days


def _day(d: date) -> float:
    return float(np.datetime64(d, "D").astype("int64"))


def classify_cprs(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(status, masked, digits) per value; status as `identifiers.cpr_status`, masked as `mask_cpr`.

    Well-formed ASCII numbers (the bulk) are classified with numpy; anything else goes through
    `identifiers.cpr_status` itself, so the two agree (tests/test_expectations.py checks it).
    `digits` is the 10-digit number where the status is valid or no_modulus11, else None: it only
    groups a person's rows (measure.overlap) and never leaves this module.
    """
    text = _text(values)
    n = len(text)
    status = np.full(n, CPR_MISSING, dtype=object)
    masked = np.full(n, "(none)", dtype=object)
    digits = np.full(n, None, dtype=object)
    present = pd.notna(text)
    # DDMMYYSSSS or DDMMYY-SSSS in ASCII digits: the fast path
    length = np.fromiter((len(v) if v is not None else 0 for v in text), dtype=np.int64, count=n)
    chars = np.where((length == 10) | (length == 11), text, "").astype("U11").view(np.uint32).reshape(n, 11)
    hyphen = (length == 11) & (chars[:, 6] == ord("-"))
    d = np.where(hyphen[:, None], np.delete(chars, 6, axis=1), chars[:, :10]).astype(np.int64) - ord("0")
    fast = ((length == 10) | hyphen) & ((d >= 0) & (d <= 9)).all(axis=1)
    if fast.any():
        d = d[fast]
        day, month, yy, c7 = d[:, 0] * 10 + d[:, 1], d[:, 2] * 10 + d[:, 3], d[:, 4] * 10 + d[:, 5], d[:, 6]
        year = np.where(
            np.isin(c7, (5, 6, 7, 8)) & (yy >= 58), 1800 + yy,
            np.where(np.isin(c7, (0, 1, 2, 3)) | (np.isin(c7, (4, 9)) & (yy >= 37)), 1900 + yy, 2000 + yy),
        )
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        last_day = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
        good_date = (month >= 1) & (month <= 12) & (day >= 1) & (day <= last_day)
        unknown = (d == 0).all(axis=1)
        modulus = (d @ _CPR_WEIGHTS) % 11 == 0
        st = np.where(unknown, CPR_UNKNOWN, np.where(~good_date, CPR_BAD_DATE,
                                                      np.where(modulus, CPR_VALID, CPR_NO_MODULUS11)))
        plain = (d + ord("0")).astype(np.uint32).copy().view("U10").ravel()
        status[fast] = st
        masked[fast] = np.char.add(plain.astype("U6"), "-****").astype(object)
        person = np.isin(st, (CPR_VALID, CPR_NO_MODULUS11))
        digits[np.flatnonzero(fast)[person]] = plain[person].astype(object)
    slow = present & ~fast
    if slow.any():
        status[slow] = _per_unique(text[slow], _safe_cpr_status)
        masked[slow] = _per_unique(text[slow], mask_cpr)
    return status, masked, digits


def _truthy(value: object) -> bool | None:
    """The `reconciles` input: bool, 0/1 or text; None when the area does not reconcile."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "f", "no", "n")
    return bool(value)


def _safe_cpr_status(value: str | None) -> str:
    try:
        return cpr_status(value)
    except (TypeError, ValueError):  # e.g. a trailing newline passes the regex but not the checksum
        return CPR_BAD_FORMAT


def _code_flags(codes: np.ndarray, on_days: np.ndarray, name: str) -> pd.arrays.BooleanArray:
    """True where the code is in the list valid on the date (`codelists.is_valid`, vectorised)."""
    index, uniques = pd.factorize(codes, use_na_sentinel=True)
    position = {code: i for i, code in enumerate(uniques)}
    ok = np.zeros(len(codes), dtype=bool)
    for entry in codelists.load(name):
        i = position.get(entry.code)
        if i is None:
            continue
        hit = (index == i) & (on_days >= _day(entry.valid_from))
        if entry.valid_to is not None:
            hit &= on_days <= _day(entry.valid_to)
        ok |= hit
    undated = np.isnan(on_days) & (index >= 0)  # no date to test: the contract reports it; accept any code
    ok[undated] = np.isin(codes[undated], list(codelists.codes(name)))
    return _flag(ok, index >= 0)


def _overlaps(keys: np.ndarray, person: np.ndarray, kind: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per row the key of one other row of the same person and kind whose [start, end] overlaps, else None.

    Rows without a usable person, kind or period (or with start after end) take no part.
    """
    out = np.full(len(keys), None, dtype=object)
    use = np.flatnonzero(pd.notna(person) & pd.notna(kind) & (start <= end))  # NaN compares False
    if len(use) < 2:
        return out
    p, _ = pd.factorize(person[use])
    k, _ = pd.factorize(kind[use])
    order = np.lexsort((end[use], start[use], k, p))
    p, k, s, e, row = p[order], k[order], start[use][order], end[use][order], use[order]
    new_group = np.r_[True, (p[1:] != p[:-1]) | (k[1:] != k[:-1])]
    group = np.cumsum(new_group)
    same_next, same_prev = np.r_[~new_group[1:], False], ~new_group
    # sorted by start: a row overlaps a later one iff it overlaps the next one ...
    with_next = same_next & (e >= np.r_[s[1:], np.inf])
    # ... and an earlier one iff it starts before the latest end so far (a running max per group:
    # offsetting each group above the previous one lets one cumulative max serve all groups)
    offset = group * (np.nanmax(np.abs(e)) * 2 + 2)
    running = np.maximum.accumulate(e + offset) - offset
    position = np.arange(len(e))
    holder = np.maximum.accumulate(np.where(e == running, position, -1))  # where that max was reached
    with_prev = same_prev & (s <= np.r_[-np.inf, running[:-1]])
    other_pos = np.where(with_next, position + 1, np.where(with_prev, np.r_[-1, holder[:-1]], -1))
    other = np.where(other_pos >= 0, row[np.clip(other_pos, 0, None)], -1)
    hit = other >= 0
    out[row[hit]] = keys[other[hit]]
    return out


# --- the frame ------------------------------------------------------------------------------------


def prepare_frame(area: Area, records: pd.DataFrame, *, period_end: date) -> pd.DataFrame:
    """The masked validation frame of an area's records frame (docs/architecture.md, "Records frame").

    Rows with action ANNUL are left out: an annulment sends no fields, so there is nothing to check.
    """
    if "action" in records.columns:
        records = records[records["action"].astype(object) != "ANNUL"]
    records = records.reset_index(drop=True)
    n = len(records)

    def column(name: str) -> pd.Series:
        return records[name] if name in records.columns else pd.Series([None] * n, dtype=object)

    out: dict[str, Any] = {"record_key": _text(column("record_key"))}
    digits_of: dict[str, np.ndarray] = {}
    days_of: dict[str, np.ndarray] = {}
    texts: dict[str, np.ndarray] = {}
    municipalities = codelists.municipality_codes()
    date_days = _days(column(area.date_field))
    for f in area.fields:
        values = column(f.name)
        col = f"{f.name}__"
        if f.kind == "cpr":
            status, masked, digits_of[f.name] = classify_cprs(values)
            out[f.name] = masked
            out[col + "status"] = pd.Categorical(status)
        elif f.kind == "cpr_list":
            lists = [tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else () for v in values.astype(object)]
            flat = pd.Series([c for cprs in lists for c in cprs], dtype=object)
            status, masked, _ = classify_cprs(flat)
            bounds = np.cumsum([0] + [len(cprs) for cprs in lists])
            out[f.name] = [LIST_SEP.join(masked[a:b]) or None for a, b in zip(bounds, bounds[1:], strict=False)]
            out[col + "status"] = [LIST_SEP.join(status[a:b]) or None for a, b in zip(bounds, bounds[1:], strict=False)]
            out[col + "count"] = np.diff(bounds)
        elif f.kind == "text":
            continue  # free text may hold personal data, and no quality rule reads it
        elif f.kind == "date":
            days_of[f.name] = _days(values)
            out[f.name] = values.astype(object).where(values.notna(), None).to_numpy()
        elif f.kind in ("hours", "count"):
            out[f.name] = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        elif f.kind == "bool":
            out[f.name] = values.astype(object).where(values.notna(), None).to_numpy()
        else:
            texts[f.name] = out[f.name] = _text(values)
        if f.kind == "municipality":
            known = _per_unique(texts[f.name], lambda v: None if v is None or not re.fullmatch(r"\d{3}", v)
                                else v in municipalities)
            out[col + "known"] = pd.array(known, dtype="boolean")
        elif f.kind == "jobcentre":
            known = _per_unique(texts[f.name], lambda v: None if v is None or not re.fullmatch(r"\d{5}", v)
                                else v[:3] in municipalities)
            out[col + "municipality_known"] = pd.array(known, dtype="boolean")
        elif f.kind == "cvr":
            out[col + "status"] = pd.Categorical(_per_unique(texts[f.name], cvr_status))
        elif f.kind == "se":
            out[col + "status"] = pd.Categorical(_per_unique(texts[f.name], se_status))
        elif f.kind == "code":
            out[col + "in_codelist"] = _code_flags(texts[f.name], date_days, f.codelist or "")
        elif f.kind == "date":
            d = days_of[f.name]
            known_date = ~np.isnan(d)
            out[col + "not_future"] = _flag(d <= _day(period_end), known_date)
            if f.name == area.date_field:
                out[col + "not_before_phase_in"] = _flag(d >= _day(area.phase_in), known_date)

    if _has(area, "start_date", "end_date"):
        s, e = days_of["start_date"], days_of["end_date"]
        out["start_date__not_after_end"] = _flag(s <= e, ~np.isnan(s) & ~np.isnan(e))
    if _has(area, "jobplan_created_on", "jobplan_revised_on"):
        c, r = days_of["jobplan_created_on"], days_of["jobplan_revised_on"]
        out["jobplan_revised_on__not_before_created"] = _flag(r >= c, ~np.isnan(c) & ~np.isnan(r))
    if "overlaps_with" in records.columns:
        # From the source query: overlaps across the whole table, whatever chunk the other row is in.
        out["measure_type__overlaps_with"] = np.array(
            [None if pd.isna(v) else str(v) for v in records["overlaps_with"].tolist()], dtype=object)
    elif area.person_field and _has(area, "measure_type", "start_date", "end_date"):
        out["measure_type__overlaps_with"] = _overlaps(
            out["record_key"], digits_of[area.person_field], texts["measure_type"],
            days_of["start_date"], days_of["end_date"])
    if _has(area, "employer_cvr", "employer_se"):
        given = pd.notna(texts["employer_cvr"]).astype(int) + pd.notna(texts["employer_se"]).astype(int)
        out["employer_cvr__cvr_or_se"] = pd.Categorical(np.array(["none", "one", "both"])[given])
    for f in area.fields:
        if f.kind == "cpr_list" and _has(area, "basis"):
            count, basis = out[f"{f.name}__count"], texts["basis"]
            ok = np.where(basis == "PERSON", count == 1, count >= 1)
            out[f"{f.name}__persons_ok"] = _flag(ok, np.isin(basis, ["PERSON", "SLOT"]))
    reconciles = _per_unique(column("reconciles").astype(object).to_numpy(), _truthy)
    out["reconciles"] = pd.array(reconciles, dtype="boolean")
    return pd.DataFrame(out)

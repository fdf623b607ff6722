"""Source frame -> records frame, driven by the registry (DESIGN.md, "The flow").

What is generic (every area): type normalisation by field kind, the record id, the action
(create/update or annul), the required-when condition flags. What differs between areas is data in
`DERIVATIONS` and `SCOPES` below, keyed by the area number: no per-area copy of the pipeline.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from transforms import codelists
from transforms.identifiers import canonical_cpr
from transforms.registry import Area

#: Namespace of the record and batch GUIDs: uuid5 of it and a stable key gives the same id on every
#: run, so sending a record again is an update at the receiver (DOMAIN.md: ids the caller sets).
ID_NAMESPACE = uuid.UUID("8f1c4a56-3f0e-5a55-9c1e-2010a0b0e104")

CREATE_OR_UPDATE = "CREATE_OR_UPDATE"
ANNUL = "ANNUL"

SELF_SUPPORTING = "99"  # § 9 nr. 7: "self-supporting" is recorded as such (reference/benefit_types.csv)
CV_INTERVIEW_GROUPS = frozenset({"LAB2-2", "IL-LEDIG"})  # § 24 nr. 1-2

_TEXT_KINDS = {"municipality", "jobcentre", "cvr", "pnr", "se", "key", "text", "code"}


@dataclass
class MappedChunk:
    records: pd.DataFrame  # the records frame (docs/architecture.md)
    out_of_scope: pd.DataFrame  # record_key, reason: rows of the source that belong to no record here


def record_id(area: Area, record_key: str, municipality: str | None = None) -> str:
    """The record's GUID: uuid5 of the area and the source key, and of the municipality when the
    deployment serves several (`municipality`, a kommunekode): their case systems may use the same keys,
    and the agency's one receiver must not take one municipality's record for another's. Without it
    (the single-municipality deployment) the ids are those of every earlier run."""
    name = f"{area.code}:{record_key}" if municipality is None else f"{municipality}:{area.code}:{record_key}"
    return str(uuid.uuid5(ID_NAMESPACE, name))


def record_ids(area: Area, record_keys: list, municipality: str | None = None) -> list[str]:
    """record_id of every key (a column at a time): uuid5's bytes (SHA-1 of the namespace and the name,
    version 5, RFC 4122 variant) without a UUID object per key; tests/test_mapping.py proves it equal."""
    prefix = f"{area.code}:" if municipality is None else f"{municipality}:{area.code}:"
    namespace, sha1 = ID_NAMESPACE.bytes, hashlib.sha1
    out = []
    for key in record_keys:
        digest = bytearray(sha1(namespace + f"{prefix}{key}".encode()).digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x50
        digest[8] = (digest[8] & 0x3F) | 0x80
        x = digest.hex()
        out.append(f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}")
    return out


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _text(value: object) -> object:
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric column read as float: 101.0 -> "101"
    return str(value).strip()


def _date(value: object) -> object:
    """A date, or the raw text when it is no date (the contract reports it: format.date)."""
    if _is_missing(value):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return text


def _number(value: object) -> object:
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _count(value: object) -> object:
    number = _number(value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def _bool(value: object) -> object:
    if _is_missing(value):
        return None
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "t", "yes", "y", "ja"):
            return True
        if lowered in ("0", "false", "f", "no", "n", "nej"):
            return False
        return value
    return bool(value)


def _cpr(value: object) -> object:
    """A CPR number as 10 digits: `010190-1234` and ` 0101901234 ` become `0101901234` (DOMAIN.md)."""
    text = _text(value)
    return None if text is None else canonical_cpr(str(text))


def _cpr_list(value: object) -> object:
    if _is_missing(value):
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(canonical_cpr(str(v).strip()) for v in value if not _is_missing(v))
    return tuple(canonical_cpr(part.strip()) for part in str(value).split(",") if part.strip())


def _memoised(convert: Callable[[Any], object], values: list) -> list:
    """`convert` of every value, computed once per distinct value (codes, dates and hours repeat a lot).
    Keyed by (type, value): 1, 1.0 and True are distinct inputs; unhashable values are converted as
    they come, and so is NaN (it never equals itself).

    A column of one plain type (str, date, int or float; None beside it) is factorised by pandas in C
    (equal values of one type: the same key as above); the rest goes value by value."""
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if convert is _text and kinds <= {str}:  # _text of a str or None, without a call per value
        return [None if v is None else (v.strip() or None) for v in values]
    if len(kinds) == 1 and kinds <= _FACTORISABLE:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        lookup = [convert(u) for u in uniques.tolist()]
        # -1 (None, NaN) has no entry: a column of NaN alone has no uniques at all
        out = [lookup[c] if c >= 0 else None for c in codes.tolist()]
        for i in np.flatnonzero(codes < 0).tolist():  # None, NaN: converted as they are
            out[i] = convert(values[i])
        return out
    memo: dict[tuple[type, object], object] = {}
    out = []
    append = out.append
    for value in values:
        try:
            key = (type(value), value)
            hit = memo.get(key, memo)
        except TypeError:  # a list
            append(convert(value))
            continue
        if hit is memo:
            hit = convert(value)
            if not _is_missing(value):  # NaN, NA, NaT: never equal to themselves
                memo[key] = hit
        append(hit)
    return out


_NONE = type(None)
_FACTORISABLE = frozenset({str, date, int, float})


_NORMALISE: dict[str, Callable[[object], object]] = {
    **{kind: _text for kind in _TEXT_KINDS},
    "cpr": _cpr,
    "date": _date,
    "hours": _number,
    "count": _count,
    "bool": _bool,
    "cpr_list": _cpr_list,
}


# --- required-when conditions (the "for ..." clauses), one predicate per condition name ----------


def _measure_types(kind: str) -> Callable[[pd.DataFrame], pd.Series]:
    def predicate(frame: pd.DataFrame) -> pd.Series:
        wanted = {
            "company": codelists.company_types,
            "course": codelists.course_types,
            "state": codelists.state_employer_types,
        }[kind]()
        return frame["measure_type"].isin(wanted)

    return predicate


def _present(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda frame: frame[column].map(lambda v: not _is_missing(v))


CONDITIONS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "jobplan": _present("jobplan_id"),
    "company_directed": _measure_types("company"),
    "course": _measure_types("course"),
    "state_wage_subsidy": _measure_types("state"),
    "has_provider": lambda f: _measure_types("company")(f) | _measure_types("course")(f),
    "address_needed": lambda f: _measure_types("company")(f)
    & (f["provider_cvr"].map(_is_missing) | f["provider_pnr"].map(_is_missing)),
    "no_cvr": lambda f: f["employer_cvr"].map(_is_missing),
    "per_person": lambda f: f["basis"] == "PERSON",
    "per_slot": lambda f: f["basis"] == "SLOT",
    "company_receives": _present("company_cvr"),
}


def condition_column(name: str) -> str:
    return f"cond__{name}"


# --- scopes: which source rows an area reports (§ 2, § 8, § 24) ----------------------------------


def _measure_area(frame: pd.DataFrame, *, at: str = "") -> pd.Series:
    groups, insured = frame[f"target_group{at}"], frame[f"insured{at}"]

    def area_of(pair: tuple[object, object]) -> int | None:
        g, i = pair
        return None if _is_missing(g) else codelists.target_group_area(str(g), bool(_bool(i)))

    # The code list is searched once per distinct (group, insured) pair, not once per row.
    return pd.Series(_memoised(area_of, list(zip(groups, insured, strict=True))), index=frame.index,
                     dtype=object)


def _scope_measures(wanted: int) -> Callable[[pd.DataFrame], pd.Series]:
    """Area 1 or 2 by target group and a-kasse membership on the start date (§ 2, § 8).

    A measure whose person changes status during the measure stays in the area of its start date
    (the person group "taking part in the measure" is fixed when it is granted); the change is
    shown as the warning `scope.status_changed`. A measure with no target group on its start date
    cannot be placed: area 2 takes it and quarantines it (`scope.no_target_group`), so it is not lost.
    """

    def reason(frame: pd.DataFrame) -> pd.Series:
        areas = _measure_area(frame)
        placed = areas.map(lambda a: 2 if a is None else a)
        return placed.map(lambda a: None if a == wanted else f"reported in area {a} (§ 2 / § 8)")

    return reason


def _scope_cv(frame: pd.DataFrame) -> pd.Series:
    return frame["target_group"].map(
        lambda g: None if g in CV_INTERVIEW_GROUPS else "person outside § 24's groups on the interview date"
    )


SCOPES: dict[int, Callable[[pd.DataFrame], pd.Series]] = {
    1: _scope_measures(1),
    2: _scope_measures(2),
    5: _scope_cv,
}


# --- derivations: fields the source does not hold as such ---------------------------------------


def _derive_measures(frame: pd.DataFrame) -> pd.DataFrame:
    if "target_group_at_end" in frame and "insured_at_end" in frame:
        start, end = _measure_area(frame), _measure_area(frame, at="_at_end")
        frame["status_changed"] = [
            s is not None and e is not None and s != e for s, e in zip(start, end, strict=True)
        ]
    frame["no_target_group"] = frame["target_group"].map(_is_missing)
    return frame


def _derive_uninsured(frame: pd.DataFrame) -> pd.DataFrame:
    frame = _derive_measures(frame)
    frame["main_benefit"] = pd.Series(
        [SELF_SUPPORTING if _is_missing(v) else v for v in frame["main_benefit"].tolist()], index=frame.index,
        dtype=object)
    if "reconciles" in frame:
        # A self-supporting person has no benefit by definition: nothing to reconcile against (§ 10).
        frame.loc[frame["main_benefit"] == SELF_SUPPORTING, "reconciles"] = 1
    jobplan_from = os.environ.get("AMS_AREA2_JOBPLAN_FROM")  # § 50, stk. 2
    if jobplan_from:
        before = frame["start_date"].map(lambda d: isinstance(d, date) and d < date.fromisoformat(jobplan_from))
        for name in ("jobplan_id", "jobplan_created_on", "jobplan_revised_on", "employment_goal"):
            frame.loc[before, name] = None
    return frame


def _derive_followup(frame: pd.DataFrame) -> pd.DataFrame:
    frame["visitation_rules"] = frame["held_on"].map(
        lambda d: codelists.visitation_rules_version(d) if isinstance(d, date) else None
    )
    return frame


DERIVATIONS: dict[int, Callable[[pd.DataFrame], pd.DataFrame]] = {
    1: _derive_measures,
    2: _derive_uninsured,
    3: _derive_followup,
}

#: Columns the mapping keeps beside the fields, for the checks (never sent).
CHECK_INPUTS = ("reconciles", "status_changed", "no_target_group", "overlaps_with")


def map_records(area: Area, source: pd.DataFrame, municipality: str | None = None) -> MappedChunk:
    """Map one chunk of an area's source frame to its records frame (`municipality`: see record_id)."""
    frame = source.copy()
    # Plain objects like every other column (pandas would infer its str dtype, whose values every later step
    # iterating the keys gets one by one through the extension array).
    frame["record_key"] = pd.Series(_memoised(_text, frame["record_key"].tolist()), index=frame.index, dtype=object)
    for f in area.fields:
        if f.name not in frame.columns:  # the source key as a field (an interface version may ask for it)
            frame[f.name] = frame["record_key"] if f.name == area.key_column else None
        # Built as an object Series on purpose: letting pandas infer would turn None into NaN and 3 into
        # 3.0 depending on a chunk's other rows, and the content hash must not depend on neighbours.
        frame[f.name] = pd.Series(_memoised(_NORMALISE[f.kind], frame[f.name].tolist()), index=frame.index,
                                  dtype=object)
    for extra in ("target_group", "target_group_at_end"):
        if extra in frame.columns:
            frame[extra] = pd.Series(_memoised(_text, frame[extra].tolist()), index=frame.index, dtype=object)

    scope = SCOPES.get(area.number)
    if scope is not None and len(frame):
        reasons = scope(frame)
        out = frame.loc[reasons.notna(), ["record_key"]].assign(reason=reasons[reasons.notna()])
        frame = frame.loc[reasons.isna()].copy()
    else:
        out = pd.DataFrame({"record_key": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})

    derive = DERIVATIONS.get(area.number)
    if derive is not None and len(frame):
        frame = derive(frame)

    for condition in area.conditions:
        frame[condition_column(condition.name)] = (
            CONDITIONS[condition.name](frame).astype(bool) if len(frame) else pd.Series(dtype=bool)
        )

    deleted = frame["deleted_at"].map(lambda v: not _is_missing(v)) if "deleted_at" in frame else None
    frame["action"] = pd.Series(CREATE_OR_UPDATE, index=frame.index, dtype=object)
    if deleted is not None and len(frame):
        frame.loc[deleted.astype(bool), "action"] = ANNUL
    frame["record_id"] = pd.Series(record_ids(area, frame["record_key"].tolist(), municipality), index=frame.index,
                                   dtype=object)

    keep = ["record_key", "record_id", "action", *area.field_names]
    keep += [condition_column(c.name) for c in area.conditions]
    keep += [c for c in CHECK_INPUTS if c in frame.columns]
    return MappedChunk(frame[keep].reset_index(drop=True), out.reset_index(drop=True))


def strip_not_applicable(area: Area, records: pd.DataFrame) -> pd.DataFrame:
    """Blank the fields the regulation does not ask for on a record ("only where ..."): never sent."""
    records = records.copy()
    for f in area.fields:
        if f.only_when and len(records):
            keep = records[condition_column(f.only_when)].astype(bool).tolist()
            records[f.name] = pd.Series([v if k else None for v, k in zip(records[f.name].tolist(), keep,
                                                                            strict=True)],
                                        index=records.index, dtype=object)
    return records


def _canonical(value: object) -> str:
    if _is_missing(value) or value == ():
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "|".join(sorted(str(v) for v in value))
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def content_hashes(area: Area, records: pd.DataFrame) -> pd.Series:
    """SHA-256 over the action and the payload fields: what decides 'changed since last delivery'.

    Column by column: each column's canonical text is computed once per distinct value, then the
    texts of a row are joined and hashed (the same bytes as joining value by value)."""
    columns = ["action", *area.field_names]
    texts = [_memoised(_canonical, records[c].tolist()) for c in columns]
    sha = hashlib.sha256
    return pd.Series(
        [sha("\x1f".join(row).encode()).hexdigest() for row in zip(*texts, strict=True)] if len(records) else [],
        index=records.index,
        dtype=object,
    )

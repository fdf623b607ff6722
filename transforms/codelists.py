"""Versioned code lists from reference/ (DOMAIN.md, "Code lists").

A code is valid on a date when a row of its list has valid_from <= date <= valid_to (empty valid_to:
still valid). The directory can be replaced through `AMS_REFERENCE_DIR`, so a municipality can drop in
the agency's real lists without code changes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from transforms.registry import REFERENCE_DIR


@dataclass(frozen=True)
class Code:
    code: str
    valid_from: date
    valid_to: date | None
    row: dict[str, str]

    def valid_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


def reference_dir() -> Path:
    return Path(os.environ.get("AMS_REFERENCE_DIR", REFERENCE_DIR))


@lru_cache(maxsize=64)
def _load(directory: str, name: str) -> tuple[Code, ...]:
    path = Path(directory) / f"{name}.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    codes = []
    for row in rows:
        valid_from = date.fromisoformat(row["valid_from"]) if row.get("valid_from") else date(1900, 1, 1)
        valid_to = date.fromisoformat(row["valid_to"]) if row.get("valid_to") else None
        codes.append(Code(row["code"] if "code" in row else row["kode"], valid_from, valid_to, row))
    return tuple(codes)


def load(name: str) -> tuple[Code, ...]:
    """All rows of reference/<name>.csv."""
    return _load(str(reference_dir()), name)


def codes(name: str) -> set[str]:
    """Every code the list has ever held."""
    return {c.code for c in load(name)}


def is_valid(name: str, code: str, on: date) -> bool:
    return any(c.code == code and c.valid_on(on) for c in load(name))


def rows(name: str) -> list[dict[str, str]]:
    return [c.row for c in load(name)]


def municipality_codes() -> set[str]:
    """The 98 municipalities (reference/municipalities.csv, column `kode`)."""
    return codes("municipalities")


def measure_category(measure_type: str) -> str | None:
    for c in load("measure_types"):
        if c.code == measure_type:
            return c.row["category"]
    return None


def state_employer_types() -> set[str]:
    return {c.code for c in load("measure_types") if c.row.get("state_employer") == "true"}


def course_types() -> set[str]:
    return {c.code for c in load("measure_types") if c.row["category"] == "course"}


def company_types() -> set[str]:
    return {c.code for c in load("measure_types") if c.row["category"] == "company"}


def target_group_area(target_group: str, insured: bool) -> int | None:
    """Area 1 or 2 for a target group and a-kasse membership (§ 2, § 8); None if unknown."""
    for c in load("target_groups"):
        if c.code == target_group:
            return int(c.row["area_insured"] if insured else c.row["area_uninsured"])
    return None


def visitation_rules_version(held_on: date) -> str:
    """The sickness-benefit rules a visitation category follows on a date (2005 or 2014)."""
    for c in load("visitation_categories"):
        if c.valid_on(held_on):
            return c.row["rules_version"]
    return "2005"

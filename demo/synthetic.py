"""The deterministic synthetic demo data for the source contract, with planted defects.

`generate(engine)` fills every table of the source contract (DESIGN.md) with Danish-realistic data
for one reporting municipality: valid CPR numbers (century digit rules; a share without modulus 11,
as issued since 2007), CVR numbers passing modulus 11, 10-digit P-numbers, job-centre codes of
kommunekode + 2 digits, and code values from reference/ valid on each record's date. Every date
lies in the two years before `reference_date` (and after every phase-in date of § 50).

The same seed gives the same content: `random.Random(seed)` and a seeded `Faker('da_DK')` drive
everything and no clock is read. A second run deletes the first run's rows, so it is idempotent.

Defects: each reportable record (live, of the reporting municipality, in its area's scope) gets,
with probability `defect_rate`, exactly one defect of a known kind (a rule id of transforms.rules);
`DemoData.defects` lists them with the record field that was changed. The kind is the one least
planted so far in the record's area, so the kinds spread across areas; with `defect_rate > 0` every
kind is planted at least once where a record allows it. Defects are independent: a CPR defect sits
on a person with exactly one record, a job-plan defect on a plan that one measure uses, and a
mentor grant gets its extra person from the persons without records.

No Airflow import: this module is plain Python. Nothing here prints or logs a CPR number.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from faker import Faker
from sqlalchemy.engine import Engine

from transforms import codelists
from transforms.identifiers import (
    CPR_BAD_DATE,
    CPR_NO_MODULUS11,
    CPR_VALID,
    UNKNOWN_CPR,
    cpr_status,
    make_cvr,
)
from transforms.registry import AREAS
from transforms.rules import RULE_BY_ID
from transforms.source import (
    SOURCE_TABLES,
    create_engine_from_url,
    create_source_schema,
    insert_rows,
    source_url_from_env,
)

DEFAULT_SEED = 20100104
DEFAULT_REFERENCE_DATE = date(2026, 10, 31)
DEFAULT_MUNICIPALITY = "101"  # København


def seed_for(municipality: str) -> int:
    """The default seed of a municipality's demo source: DEFAULT_SEED for the demo's own municipality
    (today's data, unchanged), a seed of its own for every other, so that several municipalities'
    sources (tenants) hold distinct, yet deterministic, data with the same shape and record keys."""
    return DEFAULT_SEED if municipality == DEFAULT_MUNICIPALITY else DEFAULT_SEED + 1000 * int(municipality)
WINDOW_DAYS = 730  # the data covers the two years up to the reference date
LATEST_PHASE_IN = max(a.phase_in for a in AREAS)

#: The defect kinds planted, as rule ids of transforms.rules.
DEFECT_KINDS = (
    "cpr.bad_date",
    "cpr.unknown",
    "cvr.bad_checksum",
    "format.pnr",
    "municipality.unknown",
    "jobcentre.unknown_municipality",
    "code.invalid",
    "required.missing",
    "dates.start_after_end",
    "hours.out_of_range",
    "jobplan.revised_before_created",
    "employer.cvr_or_se",
    "mentor.persons",
    "dates.future",
)
assert all(kind in RULE_BY_ID for kind in DEFECT_KINDS)

#: § 24: CV interviews are reported for these groups only.
CV_SCOPE_GROUPS = ("LAB2-2", "IL-LEDIG")

# Target groups with weights; insured None: either (area 1 regardless of membership).
_AREA1_GROUPS = (("LAB2-1", True, 70), ("LAB2-8", True, 10), ("VOKSENUDD", None, 8), ("BESKAEFTIGET", None, 12))
_AREA2_GROUPS = (
    ("LAB2-2", False, 30), ("LAB2-3", False, 18), ("LAB2-4", False, 7), ("LAB2-5", False, 8),
    ("LAB2-6", False, 2), ("LAB2-8", False, 6), ("LAB2-9", False, 9), ("LAB2-10", False, 7),
    ("IL-INTRO", False, 5), ("IL-LEDIG", False, 5), ("IL-SELV", False, 3),
)
_CV_GROUPS = (
    ("LAB2-2", False, 50), ("IL-LEDIG", False, 15), ("LAB2-3", False, 12), ("LAB2-1", True, 10),
    ("LAB2-5", False, 6), ("LAB2-9", False, 7),
)
_OTHER_GROUPS = _AREA1_GROUPS + _AREA2_GROUPS + (("LAB2-7", None, 10),)

#: Main benefit (hovedydelse, reference/benefit_types.csv) of a target group; None: no listed benefit
#: (the person is self-supporting for § 9 nr. 7). The list is partial: revalidering (LAB2-4), the
#: young (LAB2-9), ressourceforløb (LAB2-10) and integration benefit (IL-LEDIG) use 10 as a stand-in.
BENEFIT_BY_GROUP: dict[str, str | None] = {
    "LAB2-1": "20", "LAB2-2": "10", "LAB2-3": "10", "LAB2-4": "10", "LAB2-5": "42", "LAB2-6": None,
    "LAB2-7": None, "LAB2-8": None, "LAB2-9": "10", "LAB2-10": "10", "IL-INTRO": "50", "IL-LEDIG": "10",
    "IL-SELV": None, "VOKSENUDD": None, "BESKAEFTIGET": None,
}
_MONTHLY_AMOUNT = {"10": (11_500, 16_500), "12": (14_000, 21_000), "20": (18_000, 19_900),
                   "42": (15_000, 17_500), "50": (7_000, 12_500), None: (4_000, 19_000)}

_GOALS = ("Job som {}", "Ordinær beskæftigelse som {}", "Uddannelse og derefter job som {}",
          "Fast job på nedsat tid som {}", "Opkvalificering til job som {}")


@dataclass(frozen=True)
class PlantedDefect:
    """One planted defect: the record (area + source key) and the rule it breaks.

    `field` is the record field the finding names: the field that was changed, or for the rules
    over two fields the one the check reports (`start_date` for dates.start_after_end, where the end
    date was moved; `employer_cvr` for employer.cvr_or_se). CPR defects name `person_cpr`, or
    `person_cprs` in area 7.
    """

    area: int
    record_key: str
    rule: str
    field: str


@dataclass
class DemoData:
    """What `generate` wrote: row counts per table and the planted defects."""

    reporting_municipality: str
    seed: int
    persons: int
    reference_date: date
    window_start: date
    counts: dict[str, int]
    defects: list[PlantedDefect]

    def defects_in(self, area: int) -> list[PlantedDefect]:
        return [d for d in self.defects if d.area == area]

    def defect_keys(self, area: int, rule: str | None = None) -> set[str]:
        return {d.record_key for d in self.defects if d.area == area and (rule is None or d.rule == rule)}

    def defect_summary(self) -> dict[str, int]:
        """Planted defects per rule id."""
        return dict(sorted(Counter(d.rule for d in self.defects).items()))


@dataclass
class _Company:
    cvr: str
    se: str
    pnrs: list[str]
    sector: str  # private, public, state, education
    ministry: str | None = None


@dataclass
class _Person:
    pid: int
    row: dict[str, Any]
    segments: list[list[Any]] = field(default_factory=list)  # [valid_from, valid_to, group, insured]

    def group_on(self, day: date) -> tuple[str, bool] | None:
        for start, end, group, insured in reversed(self.segments):
            if start <= day and (end is None or day <= end):
                return group, insured
        return None


@dataclass
class _Rec:
    """A reportable record while the data is built: its row, area and what the defects need."""

    area: int
    key: str
    row: dict[str, Any]
    persons: list[int]
    category: str = ""  # measures: course / company; mentor grants: PERSON / SLOT
    last_of_type: bool = True  # measures: no later measure of the same type for the person
    home: bool = True  # of the reporting municipality
    defect: str | None = None


_Option = tuple[str, Callable[[], str]]  # (rule, apply() -> the field changed)


class _Builder:
    def __init__(self, persons: int, seed: int, defect_rate: float, reference_date: date, municipality: str):
        if persons < 1:
            raise ValueError("persons must be at least 1")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError("defect_rate must be between 0 and 1")
        self.n_persons = persons
        self.seed = seed
        self.defect_rate = defect_rate
        self.ref = reference_date
        self.ws = max(reference_date - timedelta(days=WINDOW_DAYS - 1), LATEST_PHASE_IN)
        if (self.ref - self.ws).days < 180:
            raise ValueError(f"reference_date {reference_date} leaves less than 180 days after {LATEST_PHASE_IN}")
        if municipality not in codelists.municipality_codes():
            raise ValueError(f"{municipality!r} is not a municipality code (reference/municipalities.csv)")
        self.municipality = municipality
        self.neighbours = self._neighbours(municipality)
        self.rng = random.Random(seed)
        self.fake = Faker("da_DK")
        self.fake.seed_instance(seed)
        self.tables: dict[str, list[dict[str, Any]]] = {name: [] for name in SOURCE_TABLES}
        self.people: list[_Person] = []
        self.recs: list[_Rec] = []
        self.keys: Counter[str] = Counter()
        self.used_ids: set[str] = set()
        self._valid_cache: dict[tuple[str, date], list[str]] = {}
        self._lists: dict[str, tuple[codelists.Code, ...]] = {}
        self.course_types = sorted(codelists.course_types())
        self.company_types = sorted(codelists.company_types())
        self.state_types = codelists.state_employer_types()
        self.group_areas = {(c.code, insured): codelists.target_group_area(c.code, insured)
                            for c in codelists.load("target_groups") for insured in (False, True)}
        self.jobplans: dict[str, dict[str, Any]] = {}
        self.jobplan_uses: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _neighbours(municipality: str) -> list[str]:
        rows = codelists.rows("municipalities")
        region = next(r["region"] for r in rows if r["kode"] == municipality)
        same = [r["kode"] for r in rows if r["region"] == region and r["kode"] != municipality]
        return sorted(same, key=lambda code: (abs(int(code) - int(municipality)), code))[:3]

    def _int(self, low: int, high: int) -> int:
        """randint's range, from one random() call (the hot paths call it often)."""
        return low + int(self.rng.random() * (high - low + 1))

    def _day(self, first: date, last: date) -> date:
        if last <= first:
            return first
        return first + timedelta(days=self._int(0, (last - first).days))

    def _stamp(self, day: date, lag_days: int = 14) -> datetime:
        """updated_at: on or a little after `day`, in working hours, never after the reference date."""
        day = min(self.ref, max(self.ws, day) + timedelta(days=self._int(0, lag_days)))
        return datetime.combine(day, time()) + timedelta(seconds=self._int(7 * 3600, 18 * 3600 - 1))

    def _deleted(self, updated_at: datetime) -> datetime:
        last = datetime.combine(self.ref, time(23, 59, 59))
        room = max(60, int((last - updated_at).total_seconds()))
        return updated_at + timedelta(seconds=self.rng.randint(60, room))

    def _key(self, prefix: str) -> str:
        self.keys[prefix] += 1
        return f"{prefix}{self.keys[prefix]:07d}"

    def _weighted(self, options: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
        return self.rng.choices(options, weights=[o[-1] for o in options])[0]

    def _valid_codes(self, name: str, day: date) -> list[str]:
        cache_key = (name, day)
        if cache_key not in self._valid_cache:
            if name not in self._lists:
                self._lists[name] = codelists.load(name)
            self._valid_cache[cache_key] = sorted({c.code for c in self._lists[name] if c.valid_on(day)})
        return self._valid_cache[cache_key]

    def _code(self, name: str, day: date, preferred: dict[str, int] | None = None) -> str:
        """A code of reference/<name>.csv valid on `day`, the preferred ones first when valid."""
        valid = self._valid_codes(name, day)
        if not valid:
            raise ValueError(f"reference/{name}.csv has no code valid on {day}")
        if preferred:
            candidates = [(code, weight) for code, weight in preferred.items() if code in valid]
            if candidates:
                return self._weighted(candidates)[0]
        return self.rng.choice(valid)

    def _group(self, options: Sequence[tuple[str, bool | None, int]]) -> tuple[str, bool]:
        group, insured, _ = self._weighted(options)
        if insured is None:
            insured = self.rng.random() < 0.6
        elif group != "LAB2-8" and not insured and self.rng.random() < 0.05:
            insured = True  # a-kasse members outside LAB2-1/LAB2-8: still area 2
        return group, insured

    def _new_id(self, make: Callable[[], str | None]) -> str:
        while True:
            value = make()
            if value is not None and value not in self.used_ids:
                self.used_ids.add(value)
                return value

    def _new_cvr(self) -> str:
        return self._new_id(lambda: make_cvr(str(self.rng.randint(1_000_000, 9_999_999))))

    def _new_pnr(self) -> str:
        return self._new_id(lambda: f"1{self.rng.randint(0, 999_999_999):09d}")

    def _municipality(self) -> tuple[str, bool]:
        if self.neighbours and self.rng.random() < 0.02:
            return self.rng.choice(self.neighbours), False
        return self.municipality, True

    # ------------------------------------------------------------------------------------ CPR numbers
    def _cpr(self, birth: date, modulus11: bool) -> str:
        yy = birth.year % 100
        if birth.year < 2000:
            centuries = "0123" + ("49" if yy >= 37 else "")
        else:
            centuries = ("49" if yy <= 36 else "") + ("5678" if yy <= 57 else "")
        stem = birth.strftime("%d%m%y")
        weights = (4, 3, 2, 7, 6, 5, 4, 3, 2)
        while True:
            first9 = f"{stem}{self.rng.choice(centuries)}{self.rng.randint(0, 99):02d}"
            total = sum(w * int(d) for w, d in zip(weights, first9, strict=True))
            if modulus11:
                check = (-total) % 11
                if check == 10:
                    continue
            else:
                check = self.rng.choice([d for d in range(10) if (total + d) % 11])
            cpr = f"{first9}{check}"
            if cpr not in self.used_ids and cpr_status(cpr) in (CPR_VALID, CPR_NO_MODULUS11):
                self.used_ids.add(cpr)
                return cpr

    def _bad_cpr(self) -> str:
        """A CPR number whose birth date or century does not exist."""
        while True:
            variant = self.rng.randrange(3)
            yy = self.rng.randint(60, 99)
            if variant == 0:  # 31 February
                stem, century = f"3102{yy:02d}", self.rng.randint(0, 3)
            elif variant == 1:  # month 13
                stem, century = f"{self.rng.randint(1, 28):02d}13{yy:02d}", self.rng.randint(0, 3)
            else:  # 29 February 1900: century digit 0-3 puts 00 in the 1900s, not a leap year
                stem, century = "290200", self.rng.randint(0, 3)
            cpr = f"{stem}{century}{self.rng.randint(0, 999):03d}"
            if cpr not in self.used_ids and cpr_status(cpr) == CPR_BAD_DATE:
                self.used_ids.add(cpr)
                return cpr

    # ------------------------------------------------------------------------------------ build
    def build(self) -> None:
        self._companies()
        self._teams = [f"HOLD{self.rng.randint(100_000, 999_999)}" for _ in range(max(6, self.n_persons // 40))]
        for pid in range(1, self.n_persons + 1):
            self._person(pid)
        self._slot_grants()
        self._plant_defects()

    def _companies(self) -> None:
        n = max(40, self.n_persons // 10)
        sectors = (("private", 55), ("public", 25), ("state", 8), ("education", 12))
        self.companies: dict[str, list[_Company]] = {s: [] for s, _ in sectors}
        for i in range(n):
            sector = sectors[i % 4][0] if i < 4 * 3 else self._weighted(sectors)[0]
            cvr = self._new_cvr()
            se = cvr if self.rng.random() < 0.7 else self._new_cvr()
            pnrs = [self._new_pnr() for _ in range(self.rng.choice((1, 1, 2, 3)))]
            ministry = self._code("ministry_areas", self.ws) if sector == "state" else None
            self.companies[sector].append(_Company(cvr, se, pnrs, sector, ministry))

    def _company(self, *sectors: str) -> tuple[_Company, str]:
        company = self.rng.choice(self.companies[self.rng.choice(sectors)])
        return company, self.rng.choice(company.pnrs)

    def _person(self, pid: int) -> None:
        rng = self.rng
        birth = self._day(date(self.ref.year - 67, self.ref.month, 1), date(self.ref.year - 17, self.ref.month, 1))
        cpr = self._cpr(birth, modulus11=rng.random() >= 0.04)
        row = {"person_id": pid, "cpr": cpr, "updated_at": self._stamp(self._day(self.ws, self.ref), 0),
               "deleted_at": None}
        self.tables["persons"].append(row)
        person = _Person(pid, row)
        self.people.append(person)

        has_measures, followup = rng.random() < 0.60, rng.random() < 0.15
        absence, cv = rng.random() < 0.08, rng.random() < 0.20
        assistance, mentor, aid = rng.random() < 0.02, rng.random() < 0.03, rng.random() < 0.03

        if has_measures:
            group, insured = self._group(_AREA1_GROUPS if rng.random() < 0.35 else _AREA2_GROUPS)
        elif cv:
            group, insured = self._group(_CV_GROUPS)
        elif followup:
            group, insured = "LAB2-7", rng.random() < 0.5
        else:
            group, insured = self._group(_OTHER_GROUPS)

        periods = self._measure_periods() if has_measures else []
        cv_days = sorted(self._day(self.ws, self.ref) for _ in range(rng.choice((1, 1, 2)))) if cv else []
        needed = [start for start, _ in periods] + cv_days
        first = min(needed) if needed else self._day(self.ws, self.ref)
        person.segments = [[self._day(self.ws, first), None, group, insured]]
        if periods and rng.random() < 0.15 and (periods[-1][1] - periods[-1][0]).days >= 2:
            start, end = periods[-1]
            change = start + timedelta(days=rng.randint(1, (end - start).days))
            person.segments[0][1] = change - timedelta(days=1)
            person.segments.append([change, None, *self._changed_status(group, insured)])
        for seg in person.segments:
            self.tables["person_target_groups"].append({
                "person_id": pid, "valid_from": seg[0], "valid_to": seg[1], "target_group": seg[2],
                "insured": seg[3], "updated_at": self._stamp(seg[0], 3), "deleted_at": None,
            })

        benefit_rows = []
        unreconciled = has_measures and rng.random() < 0.03  # a few persons without benefits or payments
        if not unreconciled:
            for start, end, seg_group, _ in person.segments:
                code = BENEFIT_BY_GROUP.get(seg_group)
                if code:
                    benefit_rows.append({"person_id": pid, "valid_from": start, "valid_to": end,
                                         "benefit_code": code, "updated_at": self._stamp(start, 5),
                                         "deleted_at": None})
        self.tables["benefits"].extend(benefit_rows)

        has_records = bool(periods or cv or followup or absence or assistance or mentor or aid)
        if has_records:
            for b in benefit_rows:
                self._payments(pid, b["benefit_code"], max(b["valid_from"], self.ws), b["valid_to"] or self.ref)
        if periods:
            self._measures(person, periods, benefit_rows, pay_uncovered=not unreconciled)
        if followup:
            self._followups(person)
        if absence:
            self._absences(person)
        for day in cv_days:
            self._cv(person, day)
        if assistance:
            self._assistance(person)
        if mentor:
            self._person_grant(person)
        if aid:
            self._aid(person)

    def _measure_periods(self) -> list[tuple[date, date]]:
        rng = self.rng
        count = self._weighted(((1, 60), (2, 30), (3, 10)))[0]
        cursor = self.ws + timedelta(days=rng.randint(0, (self.ref - self.ws).days - 60))
        periods: list[tuple[date, date]] = []
        for i in range(count):
            start = cursor + timedelta(days=rng.randint(0, 60) if i else 0)
            if start > self.ref - timedelta(days=14):
                break
            end = min(start + timedelta(days=rng.randint(14, 182)), self.ref)
            periods.append((start, end))
            cursor = end + timedelta(days=1)
        return periods

    def _changed_status(self, group: str, insured: bool) -> tuple[str, bool]:
        if group == "LAB2-8":
            return group, not insured  # a-kasse membership ends or starts: the area changes
        area = self.group_areas.get((group, insured))
        while True:
            other_area = self.rng.random() < 0.5
            options = _AREA2_GROUPS if (area == 1) == other_area else _AREA1_GROUPS
            new = self._group(options)
            if new != (group, insured):
                return new

    def _payments(self, pid: int, code: str | None, first: date, last: date) -> None:
        """Monthly payments over [first, last], never after the reference date."""
        last = min(last, self.ref)
        low, high = _MONTHLY_AMOUNT.get(code, _MONTHLY_AMOUNT[None])
        month = first.replace(day=1)
        while month <= last:
            following = (month + timedelta(days=32)).replace(day=1)
            period_from, period_to = max(month, first), min(following - timedelta(days=1), last)
            self.keys["payment"] += 1
            self.tables["payments"].append({
                "payment_id": self.keys["payment"], "person_id": pid, "benefit_code": code,
                "period_from": period_from, "period_to": period_to,
                "amount": round(low + self.rng.random() * (high - low), 2),
                # booked by the nightly payment run after the period
                "updated_at": datetime.combine(min(self.ref, period_to + timedelta(days=1)), time(2, 15)),
                "deleted_at": None,
            })
            month = following

    def _jobplan(self, person: _Person, first_start: date) -> str:
        created = max(self.ws, first_start - timedelta(days=self.rng.randint(7, 60)))
        revised = None
        if self.rng.random() < 0.35 and created < self.ref:
            revised = created + timedelta(days=self.rng.randint(1, min(300, (self.ref - created).days)))
        key = self._key("JP")
        row = {"jobplan_id": key, "person_id": person.pid, "created_on": created, "revised_on": revised,
               "employment_goal": self.rng.choice(_GOALS).format(self.fake.job().lower()),
               "updated_at": self._stamp(revised or created, 2), "deleted_at": None}
        self.tables["jobplans"].append(row)
        self.jobplans[key] = row
        return key

    def _measures(self, person: _Person, periods: list[tuple[date, date]], benefit_rows: list[dict[str, Any]],
                  *, pay_uncovered: bool) -> None:
        """The person's measures; with `pay_uncovered`, most measures no benefit covers get payments."""
        rng = self.rng
        course_types, company_types, state_types = self.course_types, self.company_types, self.state_types
        jobplan_id = self._jobplan(person, periods[0][0]) if rng.random() < 0.9 else None
        types = []
        for _ in periods:
            if course_types and (not company_types or rng.random() < 0.35):
                types.append(rng.choice(course_types))
            else:
                preferred = {"VP": 45, "LTP": 25, "LTO": 18, "LTS": 12}
                weighted = [(t, preferred.get(t, 10)) for t in company_types]
                types.append(self._weighted(weighted)[0])
        for i, ((start, end), measure_type) in enumerate(zip(periods, types, strict=True)):
            group, insured = person.group_on(start) or ("LAB2-1", True)
            area = self.group_areas.get((group, insured)) or 2
            municipality, home = self._municipality()
            jc = municipality + rng.choice(("01", "01", "01", "01", "02", "02", "03"))
            registering = jc if rng.random() < 0.92 else municipality + rng.choice(("01", "02", "03"))
            course = measure_type in course_types
            key = self._key("M")
            row: dict[str, Any] = {
                "measure_id": key, "person_id": person.pid, "municipality_code": municipality,
                "responsible_jobcenter": jc, "registering_jobcenter": registering,
                "measure_type": measure_type, "start_date": start, "end_date": end,
                "open_offer": rng.random() < (0.25 if course else 0.05),
                "jobplan_id": jobplan_id if jobplan_id and rng.random() < 0.92 else None,
            }
            if course:
                company, pnr = self._company("education")
                row.update({
                    "activation_type": self._code("activation_types", start, {"01": 85, "03": 10, "04": 5}),
                    "weekly_hours": rng.randint(20, 74) / 2,
                    "course_type": self._code("course_types", start),
                    "team_id": rng.choice(self._teams),
                    "provider_cvr": company.cvr, "provider_pnr": pnr,
                })
            else:
                sectors = {"LTP": ("private",), "LTO": ("public",)}.get(measure_type, ("private", "public"))
                if measure_type in state_types:
                    sectors = ("state",)
                company, pnr = self._company(*sectors)
                wage = measure_type.startswith("LT")
                order_type = "UDDANNELSE" if group == "VOKSENUDD" else ("LOENTILSKUD" if wage else "PRAKTIK")
                location = {"private": "60", "public": "61", "state": "73"}[company.sector]
                row.update({
                    "activation_type": self._code("activation_types", start, {"02": 85, "03": 15}),
                    "weekly_hours": 37.0 if wage and rng.random() < 0.7 else rng.randint(30, 74) / 2,
                    "job_order_id": str(rng.randint(1_000_000, 9_999_999)) if rng.random() < 0.7 else None,
                    "job_order_type": self._code("job_order_types", start, {order_type: 1}),
                    "provider_cvr": company.cvr, "provider_pnr": pnr,
                    "ministry_area": (self._code("ministry_areas", start, {company.ministry or "": 1})
                                      if measure_type in state_types else None),
                    "job_title": self.fake.job(),
                    "location_code": self._code("location_codes", start, {location: 9, "62": 1}),
                })
                if area == 2 and rng.random() < 0.08:  # § 9 nr. 15: no CVR and/or P, a worksite address
                    row["provider_pnr"] = None
                    if rng.random() < 0.6:
                        row["provider_cvr"] = None
                    row["worksite_address"] = self.fake.address().replace("\n", ", ")
            if pay_uncovered and rng.random() < 0.9 and not any(
                    start <= (b["valid_to"] or self.ref) and b["valid_from"] <= end for b in benefit_rows):
                # no main benefit during the measure: the wage subsidy (12) or an allowance outside the list
                self._payments(person.pid, "12" if not course and measure_type.startswith("LT") else None, start, end)
            row["updated_at"] = self._stamp(start)
            row["deleted_at"] = self._deleted(row["updated_at"]) if rng.random() < 0.05 else None
            full = {column: row.get(column) for column in SOURCE_TABLES["measures"]}
            self.tables["measures"].append(full)
            if full["jobplan_id"]:
                self.jobplan_uses[full["jobplan_id"]] += 1
            last = measure_type not in types[i + 1 :]
            self.recs.append(_Rec(area, key, full, [person.pid], "course" if course else "company", last, home))

    def _live_rec(self, area: int, table: str, row: dict[str, Any], persons: list[int], category: str = "",
                  home: bool = True, deleted_share: float = 0.02) -> None:
        row["deleted_at"] = self._deleted(row["updated_at"]) if self.rng.random() < deleted_share else None
        full = {column: row.get(column) for column in SOURCE_TABLES[table]}
        self.tables[table].append(full)
        key = str(full[SOURCE_TABLES[table][0]])
        self.recs.append(_Rec(area, key, full, persons, category, True, home))

    def _followups(self, person: _Person) -> None:
        rng = self.rng
        sick_from = self._day(self.ws, self.ref - timedelta(days=30))
        sick_to = min(sick_from + timedelta(days=rng.randint(30, 300)), self.ref)
        if rng.random() < 0.95:
            self._payments(person.pid, None, sick_from, sick_to)  # sickness benefit: not in benefit_types
        days: list[date] = []
        day = sick_from + timedelta(days=rng.randint(14, 56))
        while day <= sick_to and len(days) < 4:
            days.append(day)
            day += timedelta(days=rng.randint(28, 56))
        for held_on in days or [sick_to]:
            municipality, home = self._municipality()
            row = {"interview_id": self._key("FU"), "person_id": person.pid, "municipality_code": municipality,
                   "held_on": held_on,
                   "interview_form": self._code("interview_forms", held_on,
                                                {"1": 50, "2": 25, "3": 15, "6": 7, "4": 3}),
                   "visitation_category": self._code("visitation_categories", held_on, {"1": 40, "2": 40, "3": 20}),
                   "updated_at": self._stamp(held_on, 5)}
            self._live_rec(3, "followup_interviews", row, [person.pid], home=home)

    def _absences(self, person: _Person) -> None:
        for _ in range(self.rng.choice((1, 1, 1, 2))):
            held_on = self._day(self.ws, self.ref)
            company, _ = self._company("private", "private", "public", "state")
            by_cvr = self.rng.random() < 0.85
            row = {"interview_id": self._key("AB"), "person_id": person.pid, "municipality_code": self.municipality,
                   "employer_cvr": company.cvr if by_cvr else None, "employer_se": None if by_cvr else company.se,
                   "held_on": held_on, "updated_at": self._stamp(held_on, 10)}
            self._live_rec(4, "absence_interviews", row, [person.pid])

    def _cv(self, person: _Person, held_on: date) -> None:
        municipality, home = self._municipality()
        row = {"interview_id": self._key("CV"), "person_id": person.pid, "municipality_code": municipality,
               "held_on": held_on,
               "cv_status": self._code("cv_statuses", held_on, {"GODKENDT": 55, "KLAR": 30, "IKKE_GODKENDT": 15}),
               "updated_at": self._stamp(held_on, 3)}
        self._live_rec(5, "cv_interviews", row, [person.pid], home=home)

    def _assistance(self, person: _Person) -> None:
        rng = self.rng
        scheme = "EMPLOYMENT" if rng.random() < 0.7 else "EDUCATION"
        company, pnr = self._company(*(("private", "public") if scheme == "EMPLOYMENT" else ("education",)))
        start = self._day(self.ws, self.ref - timedelta(days=30))
        end = min(start + timedelta(days=rng.randint(90, 365)), self.ref)
        if rng.random() < 0.9:
            self._payments(person.pid, None, start, end)  # the subsidy paid: not a benefit of the list
        municipality, home = self._municipality()
        row = {"grant_id": self._key("PA"), "person_id": person.pid, "municipality_code": municipality,
               "scheme": scheme, "company_cvr": company.cvr, "company_pnr": pnr, "start_date": start,
               "end_date": end, "weekly_hours": rng.randint(4, 40) / 2, "updated_at": self._stamp(start)}
        self._live_rec(6, "personal_assistance_grants", row, [person.pid], home=home)

    def _mentor_grant(self, basis: str, persons: list[int], **values: Any) -> None:
        company, pnr = self._company("private", "public", "education")
        municipality, home = self._municipality()
        row = {"grant_id": self._key("MG"), "municipality_code": municipality, "basis": basis,
               "company_cvr": company.cvr, "company_pnr": pnr, **values,
               "updated_at": self._stamp(values["start_date"])}
        for pid in persons:
            self.tables["mentor_grant_persons"].append(
                {"grant_id": row["grant_id"], "person_id": pid, "updated_at": row["updated_at"], "deleted_at": None})
        self._live_rec(7, "mentor_grants", row, list(persons), basis, home=home)

    def _person_grant(self, person: _Person) -> None:
        start = self._day(self.ws, self.ref - timedelta(days=30))
        end = min(start + timedelta(days=self.rng.randint(30, 180)), self.ref)
        self._mentor_grant("PERSON", [person.pid], start_date=start, end_date=end,
                           granted_hours=self.rng.randint(20, 180) / 2)

    def _slot_grants(self) -> None:
        count = max(1, round(self.n_persons * 0.004)) if self.n_persons >= 2 else 0
        for _ in range(count):
            persons = sorted(self.rng.sample(range(1, self.n_persons + 1), min(self.n_persons, self.rng.randint(2, 6))))
            start = self._day(self.ws, self.ref - timedelta(days=100)).replace(day=1)
            start = max(start, self.ws)
            end = min((start + timedelta(days=self.rng.choice((31, 92)))).replace(day=1) - timedelta(days=1), self.ref)
            self._mentor_grant("SLOT", persons, start_date=start, end_date=end, persons_paid=len(persons),
                               avg_paid_hours=self.rng.randint(4, 60) / 2)

    def _aid(self, person: _Person) -> None:
        kind = "TEACHING_MATERIAL" if self.rng.random() < 0.5 else "WORK_TOOLS"
        company_receives = self.rng.random() < (0.5 if kind == "WORK_TOOLS" else 0.2)
        company, pnr = self._company(*(("private", "public") if kind == "WORK_TOOLS" else ("education",)))
        approved = self._day(self.ws, self.ref)
        municipality, home = self._municipality()
        row = {"grant_id": self._key("AG"), "person_id": person.pid, "municipality_code": municipality,
               "aid_kind": kind, "company_cvr": company.cvr if company_receives else None,
               "company_pnr": pnr if company_receives else None, "approved_on": approved,
               "updated_at": self._stamp(approved, 5)}
        self._live_rec(8, "aid_grants", row, [person.pid], home=home)

    # ------------------------------------------------------------------------------------ defects
    def _plantable(self, rec: _Rec) -> bool:
        if rec.defect or rec.row["deleted_at"] is not None or not rec.home:
            return False
        if rec.area == 5:  # § 24: only interviews of these groups are reported
            status = self.people[rec.persons[0] - 1].group_on(rec.row["held_on"])
            return status is not None and status[0] in CV_SCOPE_GROUPS
        return True

    def _plant_defects(self) -> None:
        self.defects: list[PlantedDefect] = []
        if self.defect_rate <= 0:
            return
        self.record_count: Counter[int] = Counter(pid for rec in self.recs for pid in rec.persons)
        self.spare_persons = [p.pid for p in self.people if self.record_count[p.pid] == 0]
        self.rng.shuffle(self.spare_persons)
        self.cpr_defect_persons: set[int] = set()
        self.unknown_cpr_measures: list[tuple[str, date, date]] = []
        self.planted: Counter[Any] = Counter()
        for rec in self.recs:
            if not self._plantable(rec) or self.rng.random() >= self.defect_rate:
                continue
            options = self._options(rec)
            if options:
                ranked = sorted(options, key=lambda o: (self.planted[(o[0], rec.area)], self.planted[o[0]],
                                                        self.rng.random()))
                self._apply(rec, *ranked[0])
        for area in sorted({rec.area for rec in self.recs}):  # every area at least one defect
            if any(key[1] == area for key in self.planted if isinstance(key, tuple)):
                continue
            plantable = [rec for rec in self.recs if rec.area == area and self._plantable(rec) and self._options(rec)]
            if plantable:
                rec = self.rng.choice(plantable)
                options = self._options(rec)
                self._apply(rec, *min(options, key=lambda o: (self.planted[o[0]], self.rng.random())))
        for rule in DEFECT_KINDS:  # every kind at least once, where a record allows it
            if self.planted[rule]:
                continue
            candidates = [(rec, fn) for rec in self.recs if self._plantable(rec)
                          for r, fn in self._options(rec) if r == rule]
            if candidates:
                rec, fn = self.rng.choice(candidates)
                self._apply(rec, rule, fn)
        self.defects.sort(key=lambda d: (d.area, d.record_key))

    def _apply(self, rec: _Rec, rule: str, fn: Callable[[], str]) -> None:
        changed = fn()
        rec.defect = rule
        self.planted[rule] += 1
        self.planted[(rule, rec.area)] += 1
        self.defects.append(PlantedDefect(rec.area, rec.key, rule, changed))

    def _options(self, rec: _Rec) -> list[_Option]:
        """The defects a record can take without setting off another rule."""
        area, row, rng = rec.area, rec.row, self.rng
        options: list[_Option] = []

        def setter(column: str, make: Callable[[], Any], field_name: str | None = None) -> Callable[[], str]:
            def apply() -> str:
                row[column] = make()
                return field_name or column
            return apply

        def set_one(choices: Sequence[tuple[str, str, Any]]) -> Callable[[], str]:
            def apply() -> str:
                column, field_name, value = rng.choice(choices)
                row[column] = value
                return field_name
            return apply

        # CPR numbers live on persons: only a person with this one record.
        eligible = [p for p in rec.persons if self.record_count[p] == 1 and p not in self.cpr_defect_persons]
        if eligible:
            pid = min(eligible)
            cpr_field = "person_cprs" if area == 7 else "person_cpr"
            options.append(("cpr.bad_date", self._cpr_setter(pid, rec, unknown=False, field_name=cpr_field)))
            if area not in (1, 2) or self._unknown_cpr_ok(row):
                options.append(("cpr.unknown", self._cpr_setter(pid, rec, unknown=True, field_name=cpr_field)))

        cvr_column = {1: "provider_cvr", 2: "provider_cvr", 4: "employer_cvr"}.get(area, "company_cvr")
        if cvr_column in row and row[cvr_column] and not (area == 4 and row["employer_se"]):
            options.append(("cvr.bad_checksum", setter(cvr_column, lambda: _break_cvr(row[cvr_column]))))
        pnr_column = "provider_pnr" if area in (1, 2) else "company_pnr"
        if pnr_column in row and row[pnr_column]:
            options.append(("format.pnr", setter(pnr_column, lambda: row[pnr_column][1:])))
        if area != 4:
            options.append(("municipality.unknown",
                            setter("municipality_code", lambda: rng.choice(("411", "999", "957")))))
        if area == 1:
            options.append(("jobcentre.unknown_municipality", set_one((
                ("responsible_jobcenter", "responsible_jobcentre", "41101"),
                ("registering_jobcenter", "registering_jobcentre", "99902"),
            ))))

        if area == 1:
            invalid = [("activation_type", "activation_type", "ZZ")]
            if rec.category == "course":
                invalid.append(("course_type", "course_type", "ZZ"))
            options.append(("code.invalid", set_one(invalid)))
        elif area == 2 and rec.category == "company":
            options.append(("code.invalid", setter("location_code", lambda: "ZZ")))
        elif area == 3:
            options.append(("code.invalid", set_one((("interview_form", "interview_form", "9"),
                                                     ("visitation_category", "visitation_category", "7")))))
        elif area == 5:
            options.append(("code.invalid", setter("cv_status", lambda: "UKENDT")))

        missing: list[str] = {
            (1, "company"): ["job_order_type", "job_title"],
            (1, "course"): ["team_id", "course_type"],
            (2, "company"): ["location_code", "job_title"],
            (2, "course"): ["team_id"],
            (3, ""): ["interview_form", "visitation_category"],
            (5, ""): ["cv_status"],
            (6, ""): ["company_pnr"],
            (7, "PERSON"): ["granted_hours"],
            (7, "SLOT"): ["persons_paid", "avg_paid_hours"],
        }.get((area, rec.category), [])
        if missing:
            options.append(("required.missing", set_one([(c, c, None) for c in missing])))

        if area in (1, 2, 6, 7) and row["start_date"] and row["end_date"]:
            options.append(("dates.start_after_end",  # the end moves; findings name the start date
                            setter("end_date", lambda: row["start_date"] - timedelta(days=rng.randint(1, 30)),
                                   "start_date")))
        if area in (1, 2, 6):
            options.append(("hours.out_of_range", setter("weekly_hours", lambda: rng.choice((65.0, 72.5, 80.0, 95.0)))))
        jobplan_id = row.get("jobplan_id")
        if area == 1 and jobplan_id and self.jobplan_uses[jobplan_id] == 1:
            plan = self.jobplans[jobplan_id]

            def revise_early() -> str:
                plan["revised_on"] = plan["created_on"] - timedelta(days=rng.randint(3, 60))
                return "jobplan_revised_on"
            options.append(("jobplan.revised_before_created", revise_early))
        if area == 4:
            if row["employer_cvr"] and not row["employer_se"]:  # both given; findings name employer_cvr
                both = setter("employer_se", lambda: row["employer_cvr"], "employer_cvr")
                options.append(("employer.cvr_or_se", both))
            elif row["employer_se"] and not row["employer_cvr"]:
                options.append(("employer.cvr_or_se", setter("employer_cvr", self._new_cvr)))
        if area == 7 and rec.category == "PERSON" and len(rec.persons) == 1 and self.spare_persons:
            options.append(("mentor.persons", lambda: self._add_mentor_person(rec)))

        # A planned end date after the period is normal; a start (or an interview, an approval) is not.
        future = {1: "start_date", 2: "start_date", 3: "held_on", 4: "held_on", 5: "held_on", 6: "start_date",
                  7: "start_date", 8: "approved_on"}[area]
        if area in (1, 2) and not rec.last_of_type:
            future = ""  # a later measure of the same type would overlap
        if area in (1, 2) and future:
            # A later start must keep the person's status, or the measure would change area (§ 2, § 8).
            person = self.people[rec.persons[0] - 1]
            if person.group_on(row["start_date"]) != tuple(person.segments[-1][2:4]):
                future = ""
        if area == 5:
            last_group = self.people[rec.persons[0] - 1].segments[-1][2]
            future = future if last_group in CV_SCOPE_GROUPS else ""
        if future and row[future]:
            # well past the reference date, so it is still future for a pipeline run some time after it
            def move_to_future() -> str:
                start = self.ref + timedelta(days=rng.randint(400, 1100))
                if row.get("end_date") and future == "start_date":
                    row["end_date"] = start + (row["end_date"] - row["start_date"])  # keeps start <= end
                row[future] = start
                return future

            options.append(("dates.future", move_to_future))
        return options

    def _unknown_cpr_ok(self, row: dict[str, Any]) -> bool:
        """Two measures of one type with 0000000000 that overlap would look like one person's overlap."""
        return not any(t == row["measure_type"] and s <= row["end_date"] and row["start_date"] <= e
                       for t, s, e in self.unknown_cpr_measures)

    def _cpr_setter(self, pid: int, rec: _Rec, *, unknown: bool, field_name: str) -> Callable[[], str]:
        def apply() -> str:
            self.people[pid - 1].row["cpr"] = UNKNOWN_CPR if unknown else self._bad_cpr()
            self.cpr_defect_persons.add(pid)
            if unknown and rec.area in (1, 2):
                self.unknown_cpr_measures.append((rec.row["measure_type"], rec.row["start_date"], rec.row["end_date"]))
            return field_name
        return apply

    def _add_mentor_person(self, rec: _Rec) -> str:
        pid = self.spare_persons.pop()
        rec.persons.append(pid)
        self.record_count[pid] += 1
        self.tables["mentor_grant_persons"].append(
            {"grant_id": rec.key, "person_id": pid, "updated_at": rec.row["updated_at"], "deleted_at": None})
        return "person_cprs"


def _break_cvr(cvr: str) -> str:
    """The same CVR number with its check digit moved by one: modulus 11 fails."""
    return cvr[:-1] + str((int(cvr[-1]) + 1) % 10)


# ---------------------------------------------------------------------------------------------- writing
def _write(engine: Engine, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Replace the contract tables' content in one transaction (COPY on psycopg, else executemany)."""
    copy = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    with engine.begin() as conn:
        for name in reversed(SOURCE_TABLES):
            conn.execute(sa.text(f"DELETE FROM {name}"))
        for name, columns in SOURCE_TABLES.items():
            if not copy:
                insert_rows(conn, name, tables[name])
                continue
            driver_connection = conn.connection.driver_connection
            assert driver_connection is not None
            with driver_connection.cursor() as cursor:
                with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as stream:
                    for row in tables[name]:
                        stream.write_row(tuple(row.get(c) for c in columns))
        if engine.dialect.name == "postgresql":
            for name in SOURCE_TABLES:  # fresh statistics, or the planner misjudges the as-of joins
                conn.execute(sa.text(f"ANALYZE {name}"))


def generate(
    engine: Engine,
    *,
    persons: int = 5000,
    seed: int | None = None,
    defect_rate: float = 0.03,
    reference_date: date = DEFAULT_REFERENCE_DATE,
    municipality: str = DEFAULT_MUNICIPALITY,
) -> DemoData:
    """Create the source schema if needed and replace its content with the demo data (`seed` None: the
    municipality's own, seed_for)."""
    seed = seed_for(municipality) if seed is None else seed
    builder = _Builder(persons, seed, defect_rate, reference_date, municipality)
    builder.build()
    create_source_schema(engine)
    _write(engine, builder.tables)
    return DemoData(
        reporting_municipality=municipality,
        seed=seed,
        persons=persons,
        reference_date=reference_date,
        window_start=builder.ws,
        counts={name: len(rows) for name, rows in builder.tables.items()},
        defects=builder.defects,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.synthetic",
        description="Create the source contract's tables and fill them with the deterministic demo data.",
    )
    parser.add_argument("--url", help="source database URL (default: $AMS_SOURCE_URL or var/source/demo.sqlite)")
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=None,
                        help=f"default {DEFAULT_SEED} for {DEFAULT_MUNICIPALITY}, else one per municipality")
    parser.add_argument("--defect-rate", type=float, default=0.03)
    parser.add_argument("--reference-date", type=date.fromisoformat, default=DEFAULT_REFERENCE_DATE)
    parser.add_argument("--municipality", default=DEFAULT_MUNICIPALITY,
                        help="kommunekode of the reporting municipality (default 101, København)")
    args = parser.parse_args(argv)

    engine = create_engine_from_url(args.url or source_url_from_env())
    try:
        data = generate(engine, persons=args.persons, seed=args.seed, defect_rate=args.defect_rate,
                        reference_date=args.reference_date, municipality=args.municipality)
        target = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    print(f"demo data in {target}: municipality {data.reporting_municipality}, seed {data.seed}, "
          f"{data.window_start} .. {data.reference_date}")
    for table, rows in data.counts.items():
        print(f"  {table:<28}{rows:>9}")
    print(f"planted defects: {len(data.defects)}")
    for rule, count in data.defect_summary().items():
        print(f"  {rule:<34}{count:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

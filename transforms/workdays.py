"""Danish working days, for the 40 working days' notice of § 49.

§ 49: "... skal der ske underretning til Arbejdsmarkedsstyrelsen senest 40 arbejdsdage, inden
ændringen idriftsættes": the notice comes at least 40 working days before the change goes live.

A working day is Monday to Friday, except
- the public holidays of the `holidays` package's Danish calendar (category public: New Year's Day,
  Maundy Thursday, Good Friday, Easter Monday, Ascension Day, Whit Monday, Christmas Day and Boxing
  Day; Store Bededag until 2023 only: it was abolished as a holiday from 2024);
- the days that are not statutory holidays but on which public offices are closed by agreement or
  custom: Constitution Day (5 June), Christmas Eve (24 December) and New Year's Eve (31 December).
  Whether they count is not defined in the order, so they are a setting (AMS_NONWORKING_DAYS, as
  MM-DD, default "06-05,12-24,12-31"). Leaving them out is the cautious reading: a notice found
  long enough then holds under either reading.

Counting: the notice day and the go-live day are not counted; 40 working days must lie between them.
No Airflow import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

NOTICE_WORKING_DAYS = 40  # § 49
NONWORKING_DAYS_ENV = "AMS_NONWORKING_DAYS"
DEFAULT_NONWORKING_DAYS = ("06-05", "12-24", "12-31")
_NAMES = {"06-05": "Constitution Day (Grundlovsdag)", "12-24": "Christmas Eve (Juleaftensdag)",
          "12-31": "New Year's Eve (Nytårsaftensdag)"}


def nonworking_days(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The non-statutory days treated as non-working (MM-DD), from AMS_NONWORKING_DAYS or the default."""
    raw = (os.environ if env is None else env).get(NONWORKING_DAYS_ENV)
    if raw is None:
        return DEFAULT_NONWORKING_DAYS
    days = tuple(d.strip() for d in raw.split(",") if d.strip())
    for d in days:
        try:
            date.fromisoformat(f"2024-{d}")  # a leap year: 02-29 is allowed
        except ValueError:
            raise ValueError(f"{NONWORKING_DAYS_ENV}: {d!r} is not a day as MM-DD (e.g. 12-24)") from None
    return days


@lru_cache(maxsize=64)
def _public_holidays(year: int) -> dict[date, str]:
    import holidays

    return dict(holidays.Denmark(years=year, categories=("public",)).items())


@dataclass(frozen=True)
class WorkingDayCalendar:
    """Danish working days, with the non-statutory closing days given as MM-DD."""

    closed: tuple[str, ...] = DEFAULT_NONWORKING_DAYS

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WorkingDayCalendar:
        return cls(nonworking_days(env))

    def why_not_working(self, day: date) -> str | None:
        """Why `day` is not a working day (a holiday's name, "Saturday", ...), or None."""
        if day.weekday() >= 5:
            return day.strftime("%A")
        holiday = _public_holidays(day.year).get(day)
        if holiday:
            return holiday
        key = day.strftime("%m-%d")
        if key in self.closed:
            return _NAMES.get(key, f"closed day {key} ({NONWORKING_DAYS_ENV})")
        return None

    def is_working_day(self, day: date) -> bool:
        return self.why_not_working(day) is None

    def working_days_between(self, start: date, end: date) -> int:
        """Working days strictly after `start` and strictly before `end`."""
        count, day = 0, start + timedelta(days=1)
        while day < end:
            count += self.is_working_day(day)
            day += timedelta(days=1)
        return count

    def earliest_effective(self, notified: date, working_days: int = NOTICE_WORKING_DAYS) -> date:
        """The first day a change notified on `notified` may go live: the day after the 40th working day."""
        day, seen = notified, 0
        while seen < working_days:
            day += timedelta(days=1)
            seen += self.is_working_day(day)
        return day + timedelta(days=1)

    def skipped(self, start: date, end: date) -> list[tuple[date, str]]:
        """The weekdays strictly between `start` and `end` that do not count, with the reason."""
        out, day = [], start + timedelta(days=1)
        while day < end:
            reason = self.why_not_working(day) if day.weekday() < 5 else None
            if reason:
                out.append((day, reason))
            day += timedelta(days=1)
        return out


@dataclass(frozen=True)
class NoticeCheck:
    """The outcome of checking a notice against § 49."""

    notified: date
    effective: date
    working_days: int
    required: int
    earliest_effective: date
    skipped: tuple[tuple[date, str], ...]

    @property
    def valid(self) -> bool:
        return self.working_days >= self.required

    def describe(self) -> str:
        verdict = "VALID" if self.valid else f"TOO SHORT by {self.required - self.working_days} working day(s)"
        lines = [
            f"Notice of {self.notified.isoformat()} for {self.effective.isoformat()}: {self.working_days} working "
            f"days between them; § 49 requires {self.required}: {verdict}.",
            f"Earliest lawful effective date for this notice: {self.earliest_effective.isoformat()}.",
        ]
        if self.skipped:
            lines.append("Weekdays not counted: " + ", ".join(f"{d.isoformat()} {why}" for d, why in self.skipped))
        return "\n".join(lines)


def check_notice(notified: date, effective: date, calendar: WorkingDayCalendar | None = None,
                 required: int = NOTICE_WORKING_DAYS) -> NoticeCheck:
    """Check that `effective` lies at least `required` Danish working days after `notified` (§ 49)."""
    calendar = calendar or WorkingDayCalendar.from_env()
    if effective <= notified:
        days = 0
        skipped: list[tuple[date, str]] = []
    else:
        days = calendar.working_days_between(notified, effective)
        skipped = calendar.skipped(notified, effective)
    return NoticeCheck(notified, effective, days, required, calendar.earliest_effective(notified, required),
                       tuple(skipped))

"""Tenants: the municipalities one deployment reports for, from a YAML file (`AMS_TENANTS_FILE`).

Plain code (no Airflow import). `load_tenants(path)` reads and validates the file; every problem
names the entry (its place in the list and its kommunekode) and the field, and all problems of a file
are reported at once. Whether the named Airflow connections exist is checked where Airflow is
(plugins/ams_reporting/hooks.py when a task starts, and `ams-report tenants check`), so that one
municipality's missing connection fails that municipality's tasks only.

The file (docs/tenants.md; tenants.example.yaml):

    tenants:
      - kommunekode: "101"
        name: København                 # optional: reference/municipalities.csv
        source_conn_id: ams_source_101   # optional: ams_source_<kommunekode>
        receiver_conn_id: ams_receiver_101   # optional: ams_receiver_<kommunekode>
        sftp_conn_id: ams_sftp_101       # optional: ams_sftp_<kommunekode>; used by areas on sftp only
        schedule: "@daily"               # optional: a preset, a cron expression, or null (manual only)
        areas: [1, 2, 3, 4, 5, 6, 7, 8]  # optional: all eight
        channels: {1: sftp}              # optional: per area, webservice (default) or sftp (§ 51)
        alert_email: data@kk.dk          # optional: one address or a list; else AMS_ALERT_EMAIL
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycle.channels import ChannelNotAllowed, resolve_channel
from transforms import codelists
from transforms.registry import AREAS, WEBSERVICE

TENANTS_FILE_ENV = "AMS_TENANTS_FILE"
DAG_ID_PREFIX = "employment_reporting"
DEFAULT_SCHEDULE = "@daily"
ALL_AREAS = tuple(a.number for a in AREAS)

#: Airflow's schedule presets (a cron expression or null is also accepted).
SCHEDULE_PRESETS = frozenset({"@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly",
                              "@yearly", "@annually"})
FIELDS = ("kommunekode", "name", "source_conn_id", "receiver_conn_id", "sftp_conn_id", "schedule", "areas",
          "channels", "alert_email")
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
#: One field of a cron expression: numbers, names, ranges, steps, lists, * and ?.
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#LW]+$")


class TenantsError(ValueError):
    """The tenants file cannot be used; `problems` lists each one (entry, field, rule)."""

    def __init__(self, path: Path | str, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Tenant:
    """One municipality of the deployment."""

    kommunekode: str
    name: str
    source_conn_id: str
    receiver_conn_id: str
    sftp_conn_id: str
    schedule: str | None = DEFAULT_SCHEDULE
    areas: tuple[int, ...] = ALL_AREAS
    channels: Mapping[int, str] = field(default_factory=dict)  # area -> channel; absent: web service
    alert_email: tuple[str, ...] = ()

    @property
    def dag_id(self) -> str:
        return dag_id_for(self.kommunekode)

    @property
    def label(self) -> str:
        """How messages name the municipality: "101 København"."""
        return f"{self.kommunekode} {self.name}"

    def channel(self, area: int) -> str:
        return self.channels.get(area, WEBSERVICE)

    def connection_ids(self) -> dict[str, str]:
        """The Airflow connections this municipality needs (field -> connection id)."""
        needed = {"source_conn_id": self.source_conn_id, "receiver_conn_id": self.receiver_conn_id}
        if any(self.channel(a) != WEBSERVICE for a in self.areas):
            needed["sftp_conn_id"] = self.sftp_conn_id
        return needed


def dag_id_for(kommunekode: str) -> str:
    return f"{DAG_ID_PREFIX}_{kommunekode}"


def tenants_file() -> Path | None:
    """The tenants file named by AMS_TENANTS_FILE; None when unset (the single-municipality deployment)."""
    raw = os.environ.get(TENANTS_FILE_ENV, "").strip()
    return Path(raw) if raw else None


def _names() -> dict[str, str]:
    import csv

    with open(codelists.reference_dir() / "municipalities.csv", newline="", encoding="utf-8") as fh:
        return {row["kode"]: row["navn"] for row in csv.DictReader(fh)}


def _kommunekode(value: Any) -> str | None:
    """The kommunekode as the reference list writes it ("101"); None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return str(int(value.strip()))  # "0101" -> "101"
    return None


def _schedule_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        return f"{value!r} is not a schedule; use a preset such as '@daily', a cron expression or null"
    text = value.strip()
    if text.startswith("@"):
        if text not in SCHEDULE_PRESETS:
            return f"{text!r} is not one of Airflow's presets ({', '.join(sorted(SCHEDULE_PRESETS))})"
        return None
    parts = text.split()
    if len(parts) not in (5, 6) or not all(_CRON_FIELD.match(p) for p in parts):
        return f"{text!r} is not a cron expression (five fields: minute hour day month weekday) nor a preset"
    try:  # croniter comes with Airflow; without it the shape check above has to do
        from croniter import croniter
    except ImportError:
        return None
    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression"
    return None


def _parse_entry(index: int, raw: Any, names: dict[str, str], problems: list[str]) -> tuple[str | None,
                                                                                           Tenant | None]:
    """(the entry's kommunekode when it is a known one, the tenant when the entry has no problem)."""
    where = f"entry {index + 1}"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: is not a mapping of fields (kommunekode, receiver_conn_id, ...)")
        return None, None
    code = _kommunekode(raw.get("kommunekode"))
    if "kommunekode" not in raw:
        problems.append(f"{where}: field 'kommunekode' is missing (every entry names its municipality)")
    elif code is None:
        problems.append(f"{where}: field 'kommunekode' = {raw.get('kommunekode')!r} is not a kommunekode "
                        "(three digits, as in reference/municipalities.csv)")
    elif code not in names:
        problems.append(f"{where} (kommunekode {code}): field 'kommunekode': {code} is not a municipality "
                        "in reference/municipalities.csv")
        code = None
    else:
        where = f"{where} (kommunekode {code})"
    before = len(problems)

    def bad(name: str, message: str) -> None:
        problems.append(f"{where}: field '{name}' {message}")

    for key in raw:
        if key not in FIELDS:
            bad(str(key), f"is not a known field (known: {', '.join(FIELDS)})")

    kode = code or "?"
    conn_ids = {}
    for name, default in (("source_conn_id", f"ams_source_{kode}"), ("receiver_conn_id", f"ams_receiver_{kode}"),
                          ("sftp_conn_id", f"ams_sftp_{kode}")):
        value = raw.get(name, default)
        if name not in raw and code is None:
            continue  # its default depends on the kommunekode, which is wrong already
        if not isinstance(value, str) or not _CONN_ID.match(value):
            bad(name, f"= {value!r} is not an Airflow connection id (letters, digits, '_', '-', '.')")
        conn_ids[name] = str(value)

    display = raw.get("name")
    if display is not None and (not isinstance(display, str) or not display.strip()):
        bad("name", f"= {display!r} is not a name")
        display = None

    schedule = raw.get("schedule", DEFAULT_SCHEDULE)
    if (problem := _schedule_problem(schedule)) is not None:
        bad("schedule", f"is wrong: {problem}")
    schedule = schedule.strip() if isinstance(schedule, str) else schedule

    areas_raw = raw.get("areas", list(ALL_AREAS))
    areas: list[int] = []
    if not isinstance(areas_raw, list) or not areas_raw:
        bad("areas", f"= {areas_raw!r} is not a non-empty list of area numbers (1-8)")
    else:
        for value in areas_raw:
            if isinstance(value, bool) or not isinstance(value, int) or value not in ALL_AREAS:
                bad("areas", f"has {value!r}, which is not a data area (1-8)")
            elif value in areas:
                bad("areas", f"names area {value} twice")
            else:
                areas.append(value)

    channels: dict[int, str] = {}
    channels_raw = raw.get("channels", {}) or {}
    if not isinstance(channels_raw, Mapping):
        bad("channels", f"= {channels_raw!r} is not a mapping of area -> channel (e.g. {{1: sftp}})")
    else:
        for area_raw, value in channels_raw.items():
            area = int(area_raw) if isinstance(area_raw, int | str) and str(area_raw).strip().isdigit() else None
            if area is None or area not in ALL_AREAS:
                bad("channels", f"names {area_raw!r}, which is not a data area (1-8)")
                continue
            if areas and area not in areas:
                bad("channels", f"sets a channel for area {area}, which is not among the entry's areas")
                continue
            try:
                channels[area] = resolve_channel(
                    area, str(value), f"channels.{area}",
                    unset_hint=f"Remove channels.{area} or set it to 'webservice'.")
            except ChannelNotAllowed as exc:
                bad("channels", f"is not allowed: {exc}")

    emails_raw = raw.get("alert_email")
    emails: list[str] = []
    if emails_raw is not None:
        values = emails_raw if isinstance(emails_raw, list) else [emails_raw]
        for value in values:
            for one in (str(value).replace(";", ",").split(",") if isinstance(value, str) else [value]):
                if not isinstance(one, str) or not _EMAIL.match(one.strip()):
                    bad("alert_email", f"has {one!r}, which is not an e-mail address")
                else:
                    emails.append(one.strip())

    if code is None or len(problems) > before:
        return code, None
    return code, Tenant(kommunekode=code, name=display.strip() if display else names[code],
                  source_conn_id=conn_ids["source_conn_id"], receiver_conn_id=conn_ids["receiver_conn_id"],
                  sftp_conn_id=conn_ids["sftp_conn_id"], schedule=schedule, areas=tuple(areas),
                  channels={a: c for a, c in sorted(channels.items()) if c != WEBSERVICE},
                  alert_email=tuple(emails))


def parse_tenants(data: Any, path: Path | str = "<tenants>") -> tuple[list[Tenant], list[str]]:
    """The valid tenants of a parsed tenants file, and the problems (an entry with a problem is left out;
    a kommunekode or connection shared by two entries is a problem of both)."""
    entries = data.get("tenants") if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and set(data) - {"tenants"}:
        extra = ", ".join(sorted(str(k) for k in set(data) - {"tenants"}))
        return [], [f"top level: unknown key(s) {extra}; the file holds one key, 'tenants', a list of entries"]
    if not isinstance(entries, list) or not entries:
        return [], ["top level: the file must hold a non-empty list 'tenants:' of municipalities"]
    names = _names()
    problems: list[str] = []
    codes: list[str | None] = []
    parsed: list[tuple[int, Tenant | None]] = []
    for i, raw in enumerate(entries):
        code, tenant = _parse_entry(i, raw, names, problems)
        codes.append(code)
        parsed.append((i, tenant))
    # Duplicates, over the entries that are otherwise valid: a kommunekode appears once; each municipality
    # signs with its own certificate and reads its own case system, so no connection is shared.
    bad_index: set[int] = set()
    first_of: dict[str, int] = {}
    for i, code in enumerate(codes):  # over every entry with a known kommunekode, valid or not
        if code is None:
            continue
        if code in first_of:
            problems.append(f"entry {i + 1} (kommunekode {code}): field 'kommunekode' = {code!r} is already used by "
                            f"entry {first_of[code] + 1}; a municipality appears once")
            bad_index |= {i, first_of[code]}
        else:
            first_of[code] = i
    for name in ("source_conn_id", "receiver_conn_id", "sftp_conn_id"):
        seen: dict[str, int] = {}
        for i, tenant in parsed:
            if tenant is None:
                continue
            if name == "sftp_conn_id" and "sftp_conn_id" not in tenant.connection_ids():
                continue  # not used by this entry
            value = getattr(tenant, name)
            if value in seen:
                first = seen[value]
                other = parsed[first][1]
                assert other is not None
                why = "each municipality has its own connection (its own certificate and case system)"
                problems.append(f"entry {i + 1} (kommunekode {tenant.kommunekode}): field '{name}' = {value!r} "
                                f"is already used by entry {first + 1}; {why}")
                problems.append(  # both entries are off: each one's DAG says why
                    f"entry {first + 1} (kommunekode {other.kommunekode}): field '{name}' = {value!r} is also "
                    f"used by entry {i + 1}; {why}")
                bad_index |= {i, first}
            else:
                seen[value] = i
    tenants = [t for i, t in parsed if t is not None and i not in bad_index]
    return tenants, problems


def read_tenants(path: Path | str) -> tuple[list[Tenant], list[str]]:
    """parse_tenants on a file; an unreadable file is one problem."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [], [f"cannot read the file: {exc.strerror or exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return [], [f"is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"]
    return parse_tenants(data, path)


def load_tenants(path: Path | str) -> list[Tenant]:
    """The tenants of a file; raises TenantsError listing every problem."""
    tenants, problems = read_tenants(path)
    if problems:
        raise TenantsError(path, problems)
    return tenants


def find_tenant(kommunekode: str, path: Path | str | None = None) -> Tenant:
    """One municipality of the tenants file (AMS_TENANTS_FILE unless `path`); KeyError when it is not there
    or its entry has a problem (the message says which)."""
    where = path if path is not None else tenants_file()
    if where is None:
        raise KeyError(f"municipality {kommunekode}: {TENANTS_FILE_ENV} is not set, so there are no tenants")
    tenants, problems = read_tenants(where)
    code = _kommunekode(kommunekode) or kommunekode
    for tenant in tenants:
        if tenant.kommunekode == code:
            return tenant
    mine = [p for p in problems if f"kommunekode {code})" in p]
    raise KeyError(f"municipality {code} is not a valid entry of {where}"
                   + (": " + "; ".join(mine) if mine else ""))


_PROBLEM_CODE = re.compile(r"^entry \d+ \(kommunekode (\d+)\)")


def problems_by_kommunekode(problems: Sequence[str]) -> dict[str | None, list[str]]:
    """The problems grouped by the kommunekode of their entry (None: the entry's kommunekode is unknown,
    or the problem is about the whole file)."""
    out: dict[str | None, list[str]] = {}
    for problem in problems:
        match = _PROBLEM_CODE.match(problem)
        out.setdefault(match.group(1) if match else None, []).append(problem)
    return out

"""What an interface change (§ 49) means for this installation: the notice, the fields, the XSD, the ledger.

`ams-report interface-change --from v1 --to v2 --announced D --effective D` prints
- whether the notice is long enough (40 Danish working days, transforms.workdays) and the earliest
  lawful effective date;
- the fields each area gains, loses or renames (from the registry's interface versions);
- the differences between the two generated XSDs, element by element;
- the records already delivered that the new version sends again: every record accepted in an area
  whose fields change (its content hash covers the version's fields, so the first run in the new
  version sends it as an update); a renamed element alone sends nothing again.

It reads the state database (ledger) and writes nothing. No Airflow import here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from lxml import etree

from transforms.registry import AREAS, INTERFACE_EFFECTIVE_ENV, InterfaceVersion
from transforms.workdays import NoticeCheck, check_notice

XS = "{http://www.w3.org/2001/XMLSchema}"


@dataclass(frozen=True)
class FieldChange:
    area: int
    change: str  # added | removed | renamed
    field: str
    detail: str

    def describe(self) -> str:
        return f"area {self.area}: {self.change} {self.field}: {self.detail}"


def field_changes(old: InterfaceVersion, new: InterfaceVersion) -> list[FieldChange]:
    """The fields each area gains, loses or renames going from `old` to `new`."""
    changes = []
    for area in AREAS:
        before = {f.name: f for f in old.area(area.number).fields}
        after = {f.name: f for f in new.area(area.number).fields}
        for name, f in after.items():
            if name not in before:
                changes.append(FieldChange(area.number, "added", name, f"element {f.element} ({f.paragraph})"))
            elif before[name].element != f.element:
                changes.append(FieldChange(area.number, "renamed", name,
                                           f"element {before[name].element} -> {f.element}"))
        changes += [FieldChange(area.number, "removed", name, f"element {f.element} ({f.paragraph})")
                    for name, f in before.items() if name not in after]
    return changes


def _declarations(xsd: str) -> dict[str, dict[str, str]]:
    """complexType/simpleType name -> {child element or facet: its description}."""
    root = etree.fromstring(xsd.encode("utf-8"))
    out: dict[str, dict[str, str]] = {}
    for node in root:
        if node.tag == f"{XS}complexType":
            out[node.get("name")] = {
                el.get("name"): f"{el.get('type')} minOccurs={el.get('minOccurs', '1')} "
                                f"maxOccurs={el.get('maxOccurs', '1')}"
                for el in node.iter(f"{XS}element")}
        elif node.tag == f"{XS}simpleType":
            out[node.get("name")] = {f"{etree.QName(f).localname}[{i}]": f.get("value", "")
                                     for i, f in enumerate(node.iter()) if f.get("value") is not None}
        elif node.tag == f"{XS}element":
            out[f"element {node.get('name')}"] = {"type": node.get("type")}
    return out


def xsd_differences(old_xsd: str, new_xsd: str) -> list[str]:
    """The differences of two XSDs, type by type and element by element."""
    old_root, new_root = (etree.fromstring(x.encode("utf-8")) for x in (old_xsd, new_xsd))
    lines = [f"{attr}: {old_root.get(attr)} -> {new_root.get(attr)}" for attr in ("targetNamespace", "version")
             if old_root.get(attr) != new_root.get(attr)]
    before, after = _declarations(old_xsd), _declarations(new_xsd)
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            lines.append(f"{name}: removed")
            continue
        if name not in before:
            lines.append(f"{name}: added")
            continue
        for child in sorted(before[name].keys() | after[name].keys()):
            old, new = before[name].get(child), after[name].get(child)
            if old == new:
                continue
            if old is None:
                lines.append(f"{name}: + {child} ({new})")
            elif new is None:
                lines.append(f"{name}: - {child} ({old})")
            else:
                lines.append(f"{name}: {child}: {old} -> {new}")
    return lines


def resent_records(old: InterfaceVersion, new: InterfaceVersion,
                   accepted: Callable[[int], list[str]]) -> dict[int, list[str]]:
    """Per area whose field set changes: the record keys of the delivered records the new version sends again."""
    changed = sorted({c.area for c in field_changes(old, new) if c.change in ("added", "removed")})
    return {area: accepted(area) for area in changed}


def ledger_reader(state_url: str) -> tuple[Callable[[int], list[str]] | None, str]:
    """A function listing an area's accepted record keys in the ledger, read only; or None and why not."""
    if state_url.startswith("sqlite:///") and not Path(state_url.removeprefix("sqlite:///")).exists():
        return None, f"no state database at {state_url.removeprefix('sqlite:///')}: nothing delivered yet"
    from delivery.state import StateStore

    state = StateStore(state_url)

    def accepted(area: int) -> list[str]:
        rows = state.ledger_rows(area)
        return sorted(rows.loc[rows["status"] == "accepted", "record_key"]) if len(rows) else []

    return accepted, ""


def _keys(keys: list[str], shown: int = 10) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"source keys {', '.join(keys[:shown])}{more}" if keys else "none"


def describe_change(old: InterfaceVersion, new: InterfaceVersion, announced: date, effective: date,
                    state_url: str) -> tuple[str, NoticeCheck]:
    """The readable report of `ams-report interface-change`, and the notice check."""
    from transforms.payload import generate_xsd

    notice = check_notice(announced, effective)
    out = [f"Interface change {old.name} -> {new.name} (§ 49)"]
    if new.sample:
        out.append(f"NOTE: {new.name} is a SAMPLE version ({new.description}), not an interface the agency "
                   "announced.")
    out += ["", notice.describe(), ""]
    changes = field_changes(old, new)
    out.append("Fields:" if changes else "Fields: no change.")
    out += [f"  {c.describe()}" for c in changes]
    out += ["", f"XSD differences ({old.xsd_name} -> {new.xsd_name}):"]
    out += [f"  {line}" for line in xsd_differences(generate_xsd(old), generate_xsd(new))] or ["  none"]
    out += ["", "Records already delivered that the new version sends again (as updates, same record id):"]
    reader, why_not = ledger_reader(state_url)
    if reader is None:
        out.append(f"  {why_not}")
    else:
        resent = resent_records(old, new, reader)
        out += [f"  area {area}: {len(keys)} record(s): the area's fields change, so every accepted record's "
                f"content changes ({_keys(keys)})" for area, keys in resent.items()] or [
            "  none: no area's field set changes"]
        renamed = sorted({c.area for c in changes if c.change == "renamed"} - set(resent))
        if renamed:
            out.append(f"  (area(s) {', '.join(map(str, renamed))}: elements renamed only, nothing is sent again)")
    out += ["", "To switch on the effective date: set "
            f"{INTERFACE_EFFECTIVE_ENV}={new.name}={effective.isoformat()} on every worker"
            + (" (or add the date to the version in transforms/registry.py)" if not new.sample else "")
            + "; runs dated before it keep sending " + old.name + "."]
    if not notice.valid:
        out.append(f"The notice is too short: agree a date on or after {notice.earliest_effective.isoformat()} "
                   "before scheduling the switch.")
    return "\n".join(out), notice

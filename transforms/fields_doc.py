"""Generates docs/fields.md, the field reference: regulation paragraph -> source column -> record
field -> payload element -> the checks that guard it, for every area. Generated from the registry;
a test fails when the committed page is out of date (`make docs` regenerates it)."""

from __future__ import annotations

from pathlib import Path

from transforms.registry import AREAS, INTERFACE_VERSIONS, REPO_ROOT, WEBSERVICE
from transforms.rules import RULE_BY_ID, field_rules

FIELDS_DOC = REPO_ROOT / "docs" / "fields.md"


def _required(area, f) -> str:
    if f.required is True:
        return "always"
    if f.required:
        return f"when {area.condition(f.required).description}"
    return "optional"


def _range(f) -> str:
    """The field's bounds (counts and hours), checked by the contract and the quality suite alike."""
    return f"{f.range_text}: {f.bounds.why}" if f.bounds is not None else ""


def render() -> str:
    out = [
        "# Field reference",
        "",
        "Generated from `transforms/registry.py` by `make docs`; do not edit by hand.",
        "For every data area of the executive order: each field's paragraph, where it comes from in the",
        "source contract, its name in the records frame and in the payload (`schemas/ams-reporting-v1.xsd`),",
        "when it is required, the range of a count or hours field (from what the regulation's field means;",
        "the record contract and the data-quality suite both check it), and the rules that guard it",
        "(`transforms/rules.py`; severities are configurable).",
        "",
        "Every record also carries `RecordIdentifier` (a GUID the pipeline derives from the source key, so a",
        "re-send updates) and is either a record or an `Annulment` (deleted at the source after delivery).",
        "",
    ]
    out += [
        "## Interface versions (§ 49)",
        "",
        "The tables below are the first version's. Each later version states its changes; every version has its",
        "own namespace and `schemas/ams-reporting-<version>.xsd` and `.wsdl`. A run sends the version in force on",
        "its date (docs/operations.md, § 49).",
        "",
        "| version | effective | namespace | changes |",
        "|---|---|---|---|",
    ]
    for version in INTERFACE_VERSIONS:
        changes = [f"area {n}: adds `{f.name}` as `{f.element}`" for n, f, _ in version.added]
        changes += [f"area {n}: removes `{name}`" for n, name in version.removed]
        changes += [f"area {n}: `{name}` becomes `{element}`" for n, name, element in version.renamed]
        when = version.effective.isoformat() if version.effective else "not scheduled"
        label = f"{version.name} ({version.schema_version}){', SAMPLE' if version.sample else ''}"
        out.append(f"| {label} | {when} | `{version.namespace}` | {'; '.join(changes) or version.description} |")
    out.append("")
    for area in AREAS:
        channels = ", ".join("web service" if c == WEBSERVICE else "SFTP file (§ 51)" for c in area.channels)
        out += [
            f"## Area {area.number}: {area.title}",
            "",
            f"{area.chapter}, fields of {area.paragraph}. Payload element `{area.record_element}` "
            f"(type `{area.record_type}`). Source query `sql/{area.query}`.",
            "",
            f"- Reported from {area.phase_in.isoformat()} ({area.phase_in_paragraph}); "
            f"records are placed in time by `{area.date_field}`.",
            f"- Channels: {channels} ({area.channels_paragraph}).",
        ]
        if area.scope:
            out.append(f"- Who ({area.scope_paragraph}): {area.scope}.")
        if area.reconciliation_paragraph:
            out.append(f"- Consistency with grants and payments: {area.reconciliation_paragraph}.")
        out += [f"- {note}" for note in area.notes]
        out += [
            "",
            "| paragraph | source column | record field | payload element | required | range | checks |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in area.fields:
            checks = ", ".join(f"`{r}`" for r in field_rules(area, f))
            out.append(f"| {f.paragraph} | `{f.source}` | `{f.name}` | `{f.element}` | {_required(area, f)} | "
                       f"{_range(f)} | {checks} |")
        out.append("")
    out += ["## Rules", "", "| rule | engine | default severity | what it demands | basis |", "|---|---|---|---|---|"]
    out += [f"| `{r.id}` | {r.engine} | {r.severity} | {r.title} | {r.basis} |" for r in RULE_BY_ID.values()]
    out.append("")
    return "\n".join(out)


def write_fields_doc(path: Path = FIELDS_DOC) -> Path:
    path.write_text(render(), encoding="utf-8")
    return path

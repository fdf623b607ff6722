"""The test before go-live (§ 46): a certification set sent to the agency's test endpoint, and a report.

§ 46: the connection agreement fixes "test før ibrugtagning" (a test before go-live). The
certification set is:
- for every data area and every kind of record (the area's conditions and kind fields, registry),
  one synthetic record, sent as a create, then as an update (same record id, the date moved a day),
  then annulled; each batch must come back accepted, every record in it;
- one of each defect the receiver must refuse (DEFECTS), each of which must come back refused with
  its error code.

The records come from the project's synthetic generator (demo.synthetic, no defects), in a
throw-away database, mapped as the pipeline maps them: valid-looking but synthetic CPR numbers. The
run never opens the production source, state database (ledger) or archive. Record and batch ids are
fresh on every run, so a run can be repeated against the same test endpoint.

The report (JSON and HTML) lists what was sent (areas, kinds, record ids, masked persons), every
receipt or fault, pass or fail per check, and the SHA-256 of each payload as built and of each
request as sent: fit to attach to the connection agreement. No CPR number appears unmasked.
No Airflow import here.
"""

from __future__ import annotations

import html
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from lxml import etree

from delivery.archive import sha256
from transforms import mapping
from transforms.identifiers import mask_cpr
from transforms.payload import (
    ACTION_ANNUL,
    ERR_BATCH_REUSED,
    ERR_RECORD_AREA,
    ERR_SCHEMA,
    ERR_UNKNOWN_CPR,
    ERR_UNKNOWN_RECORD,
    build_batch,
    q,
    validate_payload,
)
from transforms.registry import Area, InterfaceVersion

#: The extra of the receiver connection that marks it as the agency's test endpoint.
TEST_ENDPOINT_FLAG = "test_endpoint"
SYNTHETIC_PERSONS = 400  # enough for every record kind of every area (a test checks the coverage)
#: Synthetic records are placed before this date (the generator's data window ends here).
REFERENCE_DATE = date(2026, 6, 30)
_RUN_NAMESPACE = uuid.UUID("0c7b6a3e-46f1-5c2d-8e9a-2010a46e4646")
#: A CPR number that is well-formed but whose birth date (31 February) does not exist.
IMPOSSIBLE_CPR = "3102901234"


class NotATestEndpoint(ValueError):
    """The receiver connection is not marked as the agency's test endpoint."""


@dataclass
class SentRecord:
    record_id: str
    kind: str
    action: str
    person: str  # masked
    status: str = ""
    error_code: int | None = None


@dataclass
class Check:
    id: str
    title: str
    area: int
    expected: str
    outcome: str = ""
    passed: bool = False
    batch_id: str = ""
    payload_sha256: str = ""  # the SubmitBatchRequest as built
    request_sha256: str = ""  # the SOAP request as sent (signed)
    receipt_id: str = ""
    records: list[SentRecord] = field(default_factory=list)


@dataclass
class ConformanceReport:
    connection_id: str
    endpoint: str
    interface_version: str
    started: str
    finished: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"regulation": "BEK 2010 § 46: test before go-live", "passed": self.passed,
                "passed_checks": sum(c.passed for c in self.checks), "failed_checks": sum(not c.passed for c in
                                                                                           self.checks),
                **asdict(self)}

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write conformance.json and conformance.html into `directory`; returns both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        json_path, html_path = directory / "conformance.json", directory / "conformance.html"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        html_path.write_text(render_html(self), encoding="utf-8")
        return json_path, html_path


# --------------------------------------------------------------------------------------------------
# The certification set
# --------------------------------------------------------------------------------------------------


def kind_columns(area: Area) -> list[str]:
    return [mapping.condition_column(c.name) for c in area.conditions] + list(area.kind_fields)


def _kind_label(area: Area, row: pd.Series) -> str:
    parts = [c.name for c in area.conditions if bool(row[mapping.condition_column(c.name)])]
    parts += [str(row[f]) for f in area.kind_fields]
    return "+".join(parts) or "basic"


def certification_records(version: InterfaceVersion, workdir: Path) -> dict[int, pd.DataFrame]:
    """One synthetic record per record kind of every area, in `version`, with a `kind` column."""
    from demo import synthetic
    from transforms.source import create_engine_from_url, extract_chunks

    engine = create_engine_from_url(f"sqlite:///{workdir / 'synthetic-source.sqlite'}")
    try:
        synthetic.generate(engine, persons=SYNTHETIC_PERSONS, defect_rate=0.0, reference_date=REFERENCE_DATE)
        out = {}
        for area in version.areas():
            frames = [mapping.map_records(area, chunk).records for chunk in extract_chunks(engine, area)]
            records = pd.concat(frames, ignore_index=True)
            records = mapping.strip_not_applicable(area, records[records["action"] != mapping.ANNUL])
            columns = kind_columns(area)
            picked = records.drop_duplicates(columns) if columns else records.head(1)
            picked = picked.assign(kind=[_kind_label(area, row) for _, row in picked.iterrows()])
            out[area.number] = picked.reset_index(drop=True)
    finally:
        engine.dispose()
    return out


def _fresh_ids(records: pd.DataFrame, run: str) -> pd.DataFrame:
    return records.assign(record_id=[str(uuid.uuid5(_RUN_NAMESPACE, f"{run}:{rid}")) for rid in records["record_id"]])


def _persons(area: Area, records: pd.DataFrame) -> list[str]:
    if area.person_field:
        return [mask_cpr(v) for v in records[area.person_field]]
    return [mask_cpr(v[0]) if v else "" for v in records[area.cpr_fields[0]]]


def _moved(area: Area, records: pd.DataFrame) -> pd.DataFrame:
    """The update: the same records with their date moved one day earlier."""
    column = area.date_field
    return records.assign(**{column: [d - timedelta(days=1) if isinstance(d, date) else d for d in records[column]]})


def _annulments(records: pd.DataFrame) -> pd.DataFrame:
    return records.assign(action=ACTION_ANNUL)


# --------------------------------------------------------------------------------------------------
# Defects the receiver must refuse, each built by spoiling a valid area 5 batch (_defect_payload)
# --------------------------------------------------------------------------------------------------


def _drop_first(root: etree._Element, ns: str, local: str) -> None:
    el = next(root.iter(q(local, ns)))
    el.getparent().remove(el)


def _set_header(root: etree._Element, ns: str, local: str, value: str) -> None:
    root.find(f"{q('BatchHeader', ns)}/{q(local, ns)}").text = value


@dataclass(frozen=True)
class Defect:
    id: str
    title: str
    expected_code: int
    batch_level: bool  # a SOAP fault for the batch, or a rejected record in the receipt


DEFECTS = (
    Defect("defect.schema", "a record without a required element (PersonCivilRegistrationIdentifier)", ERR_SCHEMA,
           True),
    Defect("defect.record_count", "a batch whose RecordCount differs from its records", ERR_SCHEMA, True),
    Defect("defect.other_area_in_batch", "a batch of one data area carrying a record of another", ERR_SCHEMA, True),
    Defect("defect.batch_reused", "a batch id sent again with other content", ERR_BATCH_REUSED, True),
    Defect("defect.cpr_birth_date", "a CPR number whose birth date does not exist (31 February)", ERR_UNKNOWN_CPR,
           False),
    Defect("defect.unknown_annulment", "an annulment of a record the receiver never had", ERR_UNKNOWN_RECORD, False),
    Defect("defect.record_id_of_other_area", "a record id already used in another data area", ERR_RECORD_AREA,
           False),
)


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


class _Runner:
    def __init__(self, client: Any, version: InterfaceVersion, sender: str, run: str) -> None:
        self.client, self.version, self.sender, self.run = client, version, sender, run

    def build(self, area: Area, records: pd.DataFrame, batch_id: str | None = None) -> tuple[str, bytes]:
        batch_id = batch_id or str(uuid.uuid4())
        xml = build_batch(area, records, batch_id=batch_id, sender_municipality=self.sender,
                          run_id=f"conformance-{self.run}", version=self.version)
        return batch_id, xml

    def send(self, check: Check, area: Area, records: pd.DataFrame, payload: bytes, batch_id: str,
             judge: Callable[[Any, Exception | None], tuple[bool, str]]) -> Check:
        from delivery.client import DeliveryError

        check.batch_id, check.payload_sha256 = batch_id, sha256(payload)
        check.records = [SentRecord(rid, kind, action, person) for rid, kind, action, person in zip(
            records["record_id"], records["kind"], records["action"], _persons(area, records), strict=True)]
        receipt, error = None, None
        try:
            receipt = self.client.submit(payload)
        except DeliveryError as exc:
            error = exc
            check.request_sha256 = sha256(exc.request_bytes) if exc.request_bytes else ""
        if receipt is not None:
            check.request_sha256 = sha256(receipt.request_bytes) if receipt.request_bytes else ""
            check.receipt_id = receipt.message_id
            results = {r.record_id: r for r in receipt.records}
            for sent in check.records:
                result = results.get(sent.record_id)
                sent.status = result.status if result else "MISSING"
                sent.error_code = result.error_code if result else None
        check.passed, check.outcome = judge(receipt, error)
        return check


def _all_accepted(receipt: Any, error: Exception | None) -> tuple[bool, str]:
    if receipt is None:
        return False, f"no receipt: {error}"
    refused = [r for r in receipt.records if r.status != "ACCEPTED"]
    outcome = f"batch {receipt.batch_status}, {len(receipt.records) - len(refused)} of {len(receipt.records)} " \
              f"record(s) accepted"
    if refused:
        outcome += "; refused: " + ", ".join(f"{r.record_id} ({r.error_code})" for r in refused)
    return receipt.batch_status == "ACCEPTED" and not refused, outcome


def _refused_with(code: int, batch_level: bool) -> Callable[[Any, Exception | None], tuple[bool, str]]:
    def judge(receipt: Any, error: Exception | None) -> tuple[bool, str]:
        from delivery.client import BusinessFault

        if error is not None:
            got = getattr(error, "code", None)
            if isinstance(error, BusinessFault):
                return batch_level and got == code, f"refused with fault {got}: {getattr(error, 'text', '')}"
            return False, f"no answer to judge: {error}"
        statuses = ", ".join(f"{r.status}{f' {r.error_code}' if r.error_code else ''}" for r in receipt.records)
        accepted = [r for r in receipt.records if r.status == "ACCEPTED"]
        verdict = f"batch {receipt.batch_status} ({statuses})"
        if accepted:
            verdict = f"ACCEPTED what must be refused: {verdict}"
        return (not batch_level and not accepted and all(r.error_code == code for r in receipt.records)), verdict

    return judge


def run_conformance(client: Any, *, connection_id: str, endpoint: str, version: InterfaceVersion,
                    sender_municipality: str, workdir: Path | None = None) -> ConformanceReport:
    """Send the certification set through `client` (an AmsClient for the test endpoint); the report."""
    run = uuid.uuid4().hex
    report = ConformanceReport(connection_id, endpoint, version.name, datetime.now(UTC).isoformat(timespec="seconds"))
    runner = _Runner(client, version, sender_municipality, run)
    with tempfile.TemporaryDirectory(prefix="ams-conformance-") as tmp:
        sets = certification_records(version, Path(workdir or tmp))
    created: dict[int, tuple[str, pd.DataFrame]] = {}
    for number, records in sets.items():
        area = version.area(number)
        records = _fresh_ids(records, run)
        for step, frame in (("create", records), ("update", _moved(area, records)), ("annul", _annulments(records))):
            batch_id, xml = runner.build(area, frame)
            validate_payload(xml)  # what is meant to pass is valid: a failure here is ours, not the receiver's
            check = Check(f"area{number}.{step}", f"Area {number} ({area.key}): {step} of every record kind",
                          number, "batch ACCEPTED, every record ACCEPTED")
            report.checks.append(runner.send(check, area, frame, xml, batch_id, _all_accepted))
            if step == "create":
                created[number] = (batch_id, records)
    report.checks += _defect_checks(runner, sets, created)
    report.finished = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def _defect_payload(defect: Defect, runner: _Runner, sets: dict[int, pd.DataFrame],
                    created: dict[int, tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, str, bytes]:
    """(records, batch id, payload) of one defect, on area 5 (CV interviews: the smallest record)."""
    version = runner.version
    ns, area = version.namespace, version.area(5)
    records, batch_id = sets[5].head(1).assign(record_id=[str(uuid.uuid4())]), None
    if defect.id == "defect.batch_reused":
        batch_id = created[5][0]
        records = _moved(area, _moved(area, created[5][1]))  # other content under the same batch id
    elif defect.id == "defect.cpr_birth_date":
        records = records.assign(person_cpr=[IMPOSSIBLE_CPR])
    elif defect.id == "defect.unknown_annulment":
        records = _annulments(records)
    elif defect.id == "defect.record_id_of_other_area":
        records = records.assign(record_id=[created[1][1]["record_id"].iloc[0]])
    batch_id, xml = runner.build(area, records, batch_id)
    root = etree.fromstring(xml)
    if defect.id == "defect.schema":
        _drop_first(root, ns, "PersonCivilRegistrationIdentifier")
    elif defect.id == "defect.record_count":
        _set_header(root, ns, "RecordCount", "7")
    elif defect.id == "defect.other_area_in_batch":
        _, foreign = runner.build(version.area(3), sets[3].head(1).assign(record_id=[str(uuid.uuid4())]))
        root.find(q("Records", ns)).append(etree.fromstring(foreign).find(q("Records", ns))[0])
        _set_header(root, ns, "RecordCount", "2")
    else:
        return records, batch_id, xml
    return records, batch_id, etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _defect_checks(runner: _Runner, sets: dict[int, pd.DataFrame],
                   created: dict[int, tuple[str, pd.DataFrame]]) -> list[Check]:
    """One check per DEFECT: each must come back refused with its code."""
    checks = []
    for defect in DEFECTS:
        records, batch_id, xml = _defect_payload(defect, runner, sets, created)
        kind = "fault" if defect.batch_level else "record REJECTED with"
        check = Check(defect.id, f"Must be refused: {defect.title}", 5, f"{kind} {defect.expected_code}")
        checks.append(runner.send(check, runner.version.area(5), records, xml, batch_id,
                                  _refused_with(defect.expected_code, defect.batch_level)))
    return checks


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------


def render_html(report: ConformanceReport) -> str:
    e = html.escape
    rows = []
    for c in report.checks:
        sent = "<br>".join(f"{e(r.action)} {e(r.kind)} <code>{e(r.record_id)}</code> {e(r.person)} &rarr; "
                           f"{e(r.status or '-')}{f' {r.error_code}' if r.error_code else ''}" for r in c.records)
        rows.append(
            f"<tr class=\"{'pass' if c.passed else 'fail'}\"><td>{'PASS' if c.passed else 'FAIL'}</td>"
            f"<td><code>{e(c.id)}</code><br>{e(c.title)}</td><td>{e(c.expected)}</td><td>{e(c.outcome)}</td>"
            f"<td><code>{e(c.batch_id)}</code><br>receipt <code>{e(c.receipt_id or '-')}</code></td>"
            f"<td><code>{e(c.payload_sha256)}</code><br><code>{e(c.request_sha256 or '-')}</code></td>"
            f"<td>{sent}</td></tr>")
    verdict = "PASSED" if report.passed else "FAILED"
    failed = sum(not c.passed for c in report.checks)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Conformance test (§ 46): {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}tr.pass td:first-child{{background:#cfc}}
tr.fail td:first-child{{background:#fcc;font-weight:bold}}code{{font-size:85%}}</style></head><body>
<h1>Test before go-live (BEK 2010, § 46): {verdict}</h1>
<p>Receiver connection <code>{e(report.connection_id)}</code> at <code>{e(report.endpoint)}</code>, interface
version <code>{e(report.interface_version)}</code>; started {e(report.started)}, finished {e(report.finished)}.
{len(report.checks)} checks, {failed} failed.</p>
<p>Every record is synthetic (CPR numbers shown masked). Each area's records, one per record kind, are
created, updated and annulled; each defect must be refused. SHA-256: of the payload as built (first
line) and of the SOAP request as sent (second line).</p>
<table><tr><th>result</th><th>check</th><th>expected</th><th>outcome</th><th>batch / receipt</th>
<th>SHA-256</th><th>records sent &rarr; receipt</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""

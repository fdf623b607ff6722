"""The reporting cycle of one data area, as plain functions the DAG's tasks call.

prepare_area: extract (in chunks) -> map -> contract -> data quality -> quarantine -> ledger diff
              -> payload batches, staged encrypted. Safe to re-run: unsent batches are rebuilt with the
              same deterministic ids.
deliver_area: in-doubt batches are looked up at the receiver first; then every staged batch is sent,
              its receipt stored in the ledger, and the exact bytes archived.
write_report: the run summary for operations and analysts.

No Airflow import here; configuration arrives as `Settings`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

from delivery.archive import Vault, apply_retention, archive_batch, load_key, sha256
from delivery.state import StateStore
from transforms import mapping
from transforms.contracts import FINDING_COLUMNS, check_contract
from transforms.identifiers import mask_cpr
from transforms.registry import REPO_ROOT, Area, get_area

log = logging.getLogger(__name__)

BATCH_NAMESPACE = uuid.UUID("1f6b0c2e-8d7a-5e0b-a2a1-0b4610f02010")


class AreaDeliveryStopped(RuntimeError):
    """Delivery for an area cannot go on without a person acting (access closed, retries exhausted)."""


@dataclass
class Settings:
    """Where things are and how big the steps are. `from_env` reads the AMS_* variables."""

    home: Path = REPO_ROOT / "var"
    source_url: str = ""
    state_url: str = ""
    batch_size: int = 5000
    chunksize: int = 50_000
    sender_municipality: str = "101"
    data_docs: bool = True
    archive_retention_days: int | None = None  # None: keep everything
    delivery_attempts: int = 4
    backoff_seconds: float = 1.0

    def __post_init__(self) -> None:
        self.home = Path(self.home)

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("AMS_HOME", REPO_ROOT / "var"))
        return cls(
            home=home,
            source_url=os.environ.get("AMS_SOURCE_URL", f"sqlite:///{home / 'source' / 'demo.sqlite'}"),
            state_url=os.environ.get("AMS_STATE_URL", f"sqlite:///{home / 'state' / 'state.sqlite'}"),
            batch_size=int(os.environ.get("AMS_BATCH_SIZE", 5000)),
            chunksize=int(os.environ.get("AMS_CHUNK_SIZE", 50_000)),
            sender_municipality=os.environ.get("AMS_SENDER_MUNICIPALITY", "101"),
            data_docs=os.environ.get("AMS_DATA_DOCS", "1") not in ("0", "false", "no"),
            archive_retention_days=int(os.environ["AMS_ARCHIVE_RETENTION_DAYS"])
            if os.environ.get("AMS_ARCHIVE_RETENTION_DAYS") else None,
            delivery_attempts=int(os.environ.get("AMS_DELIVERY_ATTEMPTS", 4)),
            backoff_seconds=float(os.environ.get("AMS_BACKOFF_SECONDS", 1.0)),
        )

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def archive_dir(self) -> Path:
        return Path(os.environ.get("AMS_ARCHIVE_DIR", self.home / "archive"))

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def vault(self) -> Vault:
        return Vault(load_key(self.home / "keys" / "archive.key"))

    def state(self) -> StateStore:
        if self.state_url.startswith("sqlite:///"):
            Path(self.state_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return StateStore(self.state_url)


def _empty_findings() -> pd.DataFrame:
    return pd.DataFrame(columns=FINDING_COLUMNS)


def _quality(area: Area, records: pd.DataFrame, period_end: date, run_id: str, docs_dir: Path | None):
    from expectations.runner import run_quality  # GX is heavy: import only where it runs

    return run_quality(area, records, period_end=period_end, run_id=run_id, data_docs_dir=docs_dir)


def _batch_id(area: Area, run_id: str, members: pd.DataFrame) -> str:
    """Deterministic within a run: the same records with the same content give the same batch id on
    every try of the run (a cleared task rebuilds the same batches). A later run that sends records
    again (e.g. after `ams-report requeue`) gets new ids, which the receiver does not confuse with the
    batch it answered before."""
    digest = sha256("\n".join(f"{k}:{h}" for k, h in zip(members["record_key"], members["content_hash"],
                                                          strict=True)).encode())
    return str(uuid.uuid5(BATCH_NAMESPACE, f"{area.code}:{run_id}:{digest}"))


def _masked_persons(area: Area, records: pd.DataFrame) -> pd.Series:
    if area.person_field:
        return records[area.person_field].map(mask_cpr)
    first = records["person_cprs"].map(lambda v: v[0] if v else None)
    return first.map(mask_cpr)


class _BatchWriter:
    """Collects records to send and stages them as XSD-valid, encrypted payload batches."""

    def __init__(self, area: Area, run_id: str, settings: Settings, state: StateStore, vault: Vault):
        self.area, self.run_id, self.settings, self.state, self.vault = area, run_id, settings, state, vault
        self.pending: list[pd.DataFrame] = []
        self.pending_rows = 0
        self.batch_ids: list[str] = []

    def add(self, records: pd.DataFrame) -> None:
        if records.empty:
            return
        self.pending.append(records)
        self.pending_rows += len(records)
        while self.pending_rows >= self.settings.batch_size:
            self._flush(self.settings.batch_size)

    def close(self) -> list[str]:
        while self.pending_rows:
            self._flush(self.settings.batch_size)
        return self.batch_ids

    def _flush(self, size: int) -> None:
        from transforms.payload import build_batch, validate_payload

        frame = pd.concat(self.pending, ignore_index=True)
        batch, rest = frame.iloc[:size], frame.iloc[size:]
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)
        batch_id = _batch_id(self.area, self.run_id, batch)
        payload = build_batch(self.area, batch, batch_id=batch_id,
                              sender_municipality=self.settings.sender_municipality, run_id=self.run_id)
        validate_payload(payload)  # nothing leaves that the XSD does not accept
        path = self.settings.staging_dir / self.area.code / f"{batch_id}.xml.gz.enc"
        self.vault.write(path, payload)
        members = batch[["record_key", "record_id", "content_hash", "action"]].assign(
            masked_person=_masked_persons(self.area, batch).to_numpy())
        self.state.add_batch(batch_id=batch_id, area=self.area.number, run_id=self.run_id, staged_path=str(path),
                             payload_sha256=sha256(payload), members=members)
        self.batch_ids.append(batch_id)


def _classify(state: StateStore, area: Area, records: pd.DataFrame) -> tuple[pd.DataFrame, Counter, set[str]]:
    """Split validated records into what must be sent and what is unchanged since the last delivery."""
    counts: Counter = Counter()
    keys = records["record_key"].tolist()
    ledger = state.ledger_for(area.number, keys)
    in_flight = state.in_flight_keys(area.number, keys)
    send = []
    refused: set[str] = set()
    for row in records[["record_key", "action", "content_hash"]].itertuples(index=False):
        entry = ledger.get(row.record_key)
        if row.record_key in in_flight:
            counts["pending"] += 1  # its batch's outcome is not known yet: the delivery resolves it first
            send.append(False)
        elif row.action == mapping.ANNUL:
            # § 4 / principle 4: a record deleted at the source after delivery is annulled at the receiver.
            delivered = entry is not None and entry["status"] == "accepted"
            counts["to_annul" if delivered else "unchanged"] += 1
            send.append(delivered)
        elif entry is not None and entry["accepted_hash"] == row.content_hash and entry["status"] == "accepted":
            counts["unchanged"] += 1
            send.append(False)
        elif entry is not None and entry["rejected_hash"] == row.content_hash:
            counts["rejected_unchanged"] += 1  # the receiver refused this exact content: stays in quarantine
            refused.add(row.record_key)
            send.append(False)
        else:
            counts["to_update" if entry is not None and entry["accepted_hash"] else "to_create"] += 1
            send.append(True)
    return records.loc[send], counts, refused


def prepare_area(area_ref: int | str, *, run_id: str, period_end: date, settings: Settings) -> dict:
    """Extract, check and stage one area's batches. Returns small counts (fit for XCom)."""
    from transforms.source import create_engine_from_url, extract_chunks

    area = get_area(area_ref)
    state = settings.state()
    state.start_area_run(run_id, area.number)
    discarded = state.discard_unsent_batches(area.number)
    for old in discarded:
        Path(old["staged_path"]).unlink(missing_ok=True)
    vault = settings.vault()
    writer = _BatchWriter(area, run_id, settings, state, vault)
    docs_dir = settings.reports_dir / "data_docs" if settings.data_docs else None
    counts: Counter = Counter()
    rules: Counter = Counter()
    quarantined_keys: set[str] = set()
    rejected_by_receiver: set[str] = set()
    docs_index = None
    engine = create_engine_from_url(settings.source_url)
    try:
        for index, chunk in enumerate(extract_chunks(engine, area, chunksize=settings.chunksize)):
            mapped = mapping.map_records(area, chunk)
            counts["out_of_scope"] += len(mapped.out_of_scope)
            records = mapped.records
            counts["extracted"] += len(records)
            live = records[records["action"] != mapping.ANNUL]
            findings = [check_contract(area, live)]
            if len(live):
                result = _quality(area, live, period_end, f"{run_id}-{index}", docs_dir)
                findings.append(result.findings)
                docs_index = result.docs_index or docs_index
            found = pd.concat([f for f in findings if len(f)], ignore_index=True) if any(
                len(f) for f in findings) else _empty_findings()
            # A range is checked by both layers (registry bounds): one finding per record, rule and field.
            found = found.drop_duplicates(["record_key", "rule", "field"], ignore_index=True)
            state.record_findings(run_id, area.number, found)
            # Records, not findings: one record with three bad codes counts once for code.invalid.
            rules.update(f"{r.rule}:{r.severity}" for r in
                         found.drop_duplicates(["record_key", "rule", "severity"]).itertuples())
            errors = found[found["severity"] == "error"]
            bad = set(errors["record_key"])
            persons = dict(zip(live["record_key"], _masked_persons(area, live), strict=True))
            state.quarantine_rows(run_id, area.number, errors, persons)
            quarantined_keys |= bad
            counts["quarantined"] += len(bad)

            good = mapping.strip_not_applicable(area, records[~records["record_key"].isin(bad)])
            good = good.assign(content_hash=mapping.content_hashes(area, good))
            to_send, classified, refused = _classify(state, area, good)
            counts.update(classified)
            # "warn": records sent for delivery with a warning (quarantined and unchanged ones are not).
            warned = set(found.loc[found["severity"] == "warning", "record_key"])
            sent = to_send.loc[to_send["action"] != mapping.ANNUL, "record_key"]
            counts["with_warnings"] += int(sent.isin(warned).sum())
            rejected_by_receiver |= refused
            writer.add(to_send)
        batch_ids = writer.close()
    finally:
        engine.dispose()
    # Records the receiver refused stay in quarantine until their content changes.
    state.release_quarantine(run_id, area.number, keep=rejected_by_receiver)
    counts["quarantined"] += counts.pop("rejected_unchanged", 0)
    counts["batches_staged"] = len(batch_ids)
    summary = {"area": area.number, **{k: int(v) for k, v in counts.items()}}
    state.update_area_run(run_id, area.number, status="prepared", counts={**summary, "rules": dict(rules)},
                          data_docs=str(docs_index) if docs_index else None)
    log.info("area %s prepared: %s", area.number, json.dumps(summary, sort_keys=True))
    return {"area": area.number, "batches": batch_ids, **summary}


# --- delivery -------------------------------------------------------------------------------------


def _apply(state: StateStore, settings: Settings, vault: Vault, batch: dict, receipt, run_id: str) -> dict:
    """Store the receipt (ledger first), quarantine rejected records, then archive and unstage."""
    results = {r.record_id: (r.status, None if r.error_code is None else str(r.error_code), r.error_text)
               for r in receipt.records}
    accepted, rejected = state.apply_receipt(
        batch["batch_id"], run_id=run_id, batch_status=str(receipt.batch_status).lower(),
        message_id=receipt.message_id, event_date=str(receipt.event_date), record_results=results)
    members = state.batch_members(batch["batch_id"])
    refused = members[members["record_id"].map(lambda rid: results.get(rid, ("REJECTED",))[0] != "ACCEPTED")]
    if len(refused):
        errors = pd.DataFrame({
            "record_key": refused["record_key"],
            "rule": "receiver.rejected",
            "field": "",
            "paragraph": "§ 46",
            "severity": "error",
            "message": [f"The receiver rejected the record: {results.get(r, (None, 'missing', 'no receipt line'))[1]} "
                        f"{results.get(r, (None, None, ''))[2] or ''} (receiver.rejected, § 46) [{p}]"
                        for r, p in zip(refused["record_id"], refused["masked_person"], strict=True)],
        })
        state.quarantine_rows(run_id, batch["area"], errors,
                              dict(zip(refused["record_key"], refused["masked_person"], strict=True)))
        state.record_findings(run_id, batch["area"], errors)
    request = receipt.request_bytes or vault.read(Path(batch["staged_path"]))
    folder = archive_batch(vault, settings.archive_dir, area=batch["area"], batch_id=batch["batch_id"], run_id=run_id,
                           request=request, response=receipt.response_bytes or b"", record_count=batch["record_count"],
                           accepted=accepted, rejected=rejected, receipt_id=receipt.message_id)
    state.mark_batch(batch["batch_id"], str(receipt.batch_status).lower(), archive_path=str(folder))
    Path(batch["staged_path"]).unlink(missing_ok=True)
    annulled = int((members["action"] == "ANNUL").sum())
    return {"accepted": accepted, "rejected": rejected, "annulled": min(annulled, accepted)}


def deliver_area(area_ref: int | str, *, run_id: str, settings: Settings, client) -> dict:
    """Send every outstanding batch of one area; in-doubt batches are looked up at the receiver first."""
    from delivery.client import AccessClosed, BusinessFault, SignatureRefused, TransientDeliveryError

    area = get_area(area_ref)
    state = settings.state()
    vault = settings.vault()
    counts: Counter = Counter()
    receipts: list[str] = []
    try:
        for batch in state.outstanding_batches(area.number):
            label = f"area {area.number} batch {batch['batch_id']}"
            try:
                receipt, recovered = _send(client, state, vault, batch, settings, label)
            except AccessClosed as exc:
                state.mark_batch(batch["batch_id"], "built", last_error=str(exc))
                raise AreaDeliveryStopped(
                    f"Area {area.number}: the agency has closed access (§ 48): {exc}. Nothing more is sent for "
                    "this area. Contact the agency; when access is restored, clear this task in the Airflow UI."
                ) from exc
            except SignatureRefused as exc:
                # Our signing key or certificate is wrong: the records are fine, so keep the batch.
                state.mark_batch(batch["batch_id"], "built", last_error=str(exc))
                raise AreaDeliveryStopped(
                    f"Area {area.number}: the receiver refused our WS-Security signature: {exc}. Check the signing "
                    "key and certificate (AMS_SIGNING_KEY / AMS_SIGNING_CERT or the connection's extras), then "
                    "clear this task.") from exc
            except BusinessFault as exc:
                # Schema or validation codes are not retried: the batch's records go to quarantine.
                counts.update(_apply(state, settings, vault, batch, _rejected_receipt(state, batch, exc), run_id))
                counts["batches_rejected"] += 1
                continue
            except TransientDeliveryError as exc:
                state.mark_batch(batch["batch_id"], "unknown", last_error=str(exc))
                raise AreaDeliveryStopped(
                    f"Area {area.number}: batch {batch['batch_id']} could not be delivered after "
                    f"{settings.delivery_attempts} attempts ({exc}). Clear this task to try again: the receiver "
                    "is asked about the batch first, so nothing is sent twice.") from exc
            counts.update(_apply(state, settings, vault, batch, receipt, run_id))
            counts["recovered" if recovered else "batches_sent"] += 1
            receipts.append(receipt.message_id)
    except AreaDeliveryStopped as exc:
        state.update_area_run(run_id, area.number, status="delivery_failed", message=str(exc), finished=True)
        raise
    summary = {k: int(v) for k, v in counts.items()}
    state.update_area_run(run_id, area.number, status="delivered", message="", finished=True)
    return {"area": area.number, "receipts": receipts, **summary}


def _send(client, state: StateStore, vault: Vault, batch: dict, settings: Settings, label: str):
    """Send one batch; returns (receipt, recovered). Before any re-send, the receiver is asked first.

    A batch is in doubt when an earlier try may have reached the receiver (status sent/unknown, or a
    time-out or dropped reply in this call): GetBatchReceipt tells whether it arrived, so a batch is
    never sent again once the receiver has it (DESIGN.md, principle 3).
    """
    from delivery.client import TransientDeliveryError

    payload = vault.read(Path(batch["staged_path"]))
    in_doubt = batch["status"] in ("sent", "unknown")
    for attempt in range(1, settings.delivery_attempts + 1):
        try:
            if in_doubt:
                receipt = client.get_batch_receipt(batch["batch_id"])
                if receipt is not None:
                    log.info("%s: the receiver already had it; receipt %s recovered", label, receipt.message_id)
                    return receipt, True
            state.mark_sending(batch["batch_id"])
            in_doubt = True
            return client.submit(payload), False
        except TransientDeliveryError as exc:
            if attempt == settings.delivery_attempts:
                raise
            pause = settings.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("%s: transient fault (%s); attempt %d of %d, retrying in %.1f s",
                        label, exc, attempt, settings.delivery_attempts, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def apply_archive_retention(settings: Settings) -> list[Path]:
    """Delete archived day folders older than AMS_ARCHIVE_RETENTION_DAYS (unset: keep everything)."""
    if settings.archive_retention_days is None or not settings.archive_dir.exists():
        return []
    removed = apply_retention(settings.archive_dir, settings.archive_retention_days)
    for folder in removed:
        log.info("archive retention: removed %s (older than %d days)", folder, settings.archive_retention_days)
    return removed


def _rejected_receipt(state: StateStore, batch: dict, fault):
    """A business fault rejects the whole batch: a receipt-like object so the ledger records why."""
    from delivery.client import Receipt, RecordReceipt

    members = state.batch_members(batch["batch_id"])
    return Receipt(
        message_id=f"fault-{fault.code}", event_date=datetime.now(UTC), batch_id=batch["batch_id"],
        batch_status="REJECTED",
        records=[RecordReceipt(rid, "REJECTED", fault.code, fault.text) for rid in members["record_id"]],
        request_bytes=getattr(fault, "request_bytes", b"") or b"",
        response_bytes=getattr(fault, "response_bytes", b"") or b"")

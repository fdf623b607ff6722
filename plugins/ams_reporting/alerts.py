"""One failure callback for every task: an e-mail naming the area, the run and what to do.

`on_failure(context)` is every task's `on_failure_callback` (dags/employment_reporting.py). It builds
a message from the context (DAG, task, area, run, logical date, the exception text, the runbook's
advice for that step, the log link) and e-mails it to `AMS_ALERT_EMAIL` (comma-separated) through
the SMTP provider's SmtpHook, connection `AMS_ALERT_SMTP_CONN_ID` (default `smtp_default`). Without
recipients it only logs: local runs stay quiet. In a tenant's DAG (employment_reporting_<kommunekode>)
the alert names the municipality (kommunekode and name) and goes to its `alert_email` from the tenants
file (AMS_ALERT_EMAIL when it has none).

Personal data: the exception text is already masked by the pipeline; every CPR-like number in the
message is masked again (DDMMYY-****) before it is logged or sent.

The callback never raises: an error while building or sending the alert is logged and swallowed, so
the task's own failure stays what Airflow shows. Callbacks do not fire when someone marks a task
failed in the UI (STACK.md).
"""

from __future__ import annotations

import html
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cycle.tenants import DAG_ID_PREFIX, Tenant, find_tenant
from transforms.identifiers import mask_cpr_in_text
from transforms.registry import Area, enabled_areas, get_area

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[AMS reporting]"
RECIPIENTS_ENV = "AMS_ALERT_EMAIL"
SMTP_CONN_ENV = "AMS_ALERT_SMTP_CONN_ID"
SENDER_ENV = "AMS_ALERT_FROM"
DEFAULT_SMTP_CONN_ID = "smtp_default"
RUNBOOK = "docs/operations.md"
MAX_EXCEPTION_CHARS = 3000

_AREA_LABEL = re.compile(r"\barea\s*(\d+)\b", re.IGNORECASE)

STEP_NAMES = {"prepare": "preparation", "deliver": "delivery", "report": "run report"}

ACTION_DELIVER = (
    "1. Check the agency's service status and the network (for an area on the file channel: the SFTP "
    "server and the connection ams_sftp).\n"
    "2. Then clear this task instance: Grid view -> the red area.deliver task of this area -> Clear "
    "(from the shell, the failed deliveries of that day only: airflow tasks clear employment_reporting "
    "-t '^area\\.deliver$' --only-failed --downstream -s <date> -e <date> --yes).\n"
    "Clearing is safe: the delivery first asks the receiver about every batch whose outcome is unknown, so "
    "nothing is sent twice and nothing is lost."
)
ACTION_ACCESS_CLOSED = (
    "The agency has closed our access (§ 48). Nothing more is sent for this area; the ledger keeps everything "
    "that is not delivered.\n"
    "1. Contact the agency about the access.\n"
    "2. When access is restored, clear this task instance (Grid view -> area.deliver -> Clear)."
)
ACTION_PREPARE = (
    "1. Check the source connection ams_source: does the case-system database answer, do the source views "
    "exist?\n"
    "2. Fix the cause, then clear area.prepare of this area (Grid view -> the task -> Clear). Batches never "
    "sent are rebuilt byte-identically; batches that may have reached the receiver are kept."
)
ACTION_REPORT = (
    "The run summary could not be written. Check the state database (AMS_STATE_URL) and the disk under "
    "AMS_HOME, then clear the report task. Deliveries are not affected."
)
ACTION_OTHER = "Read the task's log, fix the cause, then clear the task instance."


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str
    log_url: str | None = None


def mask_text(text: object) -> str:
    """Every CPR-like run of digits (DDMMYY-XXXX or 10 digits) masked to DDMMYY-****."""
    return mask_cpr_in_text(str(text)) or ""


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    try:
        if isinstance(obj, Mapping):
            return obj.get(name, default)
        return getattr(obj, name, default)
    except Exception:  # a property that cannot be computed here (e.g. log_url without a base URL)
        return default


def area_of(context: Mapping[str, Any]) -> Area | None:
    """The data area of a failed task: params['area'], the rendered map index ('area1 ...'), or the
    map index (the DAG maps over the enabled areas in registry order: index i -> enabled_areas()[i])."""
    params = context.get("params") or {}
    ti = context.get("task_instance") or context.get("ti")
    candidates = []
    if _get(params, "area") is not None:
        candidates.append(_get(params, "area"))
    rendered = _get(ti, "rendered_map_index")
    if isinstance(rendered, str) and (match := _AREA_LABEL.search(rendered)):
        candidates.append(int(match.group(1)))
    for ref in candidates:
        try:
            return get_area(ref if isinstance(ref, int) else str(ref).strip())
        except (KeyError, ValueError):
            continue
    index = _get(ti, "map_index", -1)
    if isinstance(index, int) and index >= 0:
        areas = enabled_areas()
        if index < len(areas):
            return areas[index]
    return None


def _exception_text(exception: object) -> str:
    if exception is None:
        return "(no exception in the callback's context)"
    if isinstance(exception, BaseException):
        text = f"{type(exception).__name__}: {exception}"
    else:
        text = str(exception)
    text = mask_text(text.strip())
    return text if len(text) <= MAX_EXCEPTION_CHARS else text[:MAX_EXCEPTION_CHARS] + " ..."


def _what_to_do(step: str, exception_text: str, dag_id: str = DAG_ID_PREFIX, tenant: Tenant | None = None) -> str:
    if step == "deliver":
        closed = "closed access" in exception_text or "§ 48" in exception_text
        text = ACTION_ACCESS_CLOSED if closed else ACTION_DELIVER
    else:
        text = {"prepare": ACTION_PREPARE, "report": ACTION_REPORT}.get(step, ACTION_OTHER)
    if tenant is not None:  # this municipality's DAG and connections
        text = (text.replace("airflow tasks clear employment_reporting ", f"airflow tasks clear {dag_id} ")
                .replace("connection ams_source", f"connection {tenant.source_conn_id}")
                .replace("connection ams_sftp", f"connection {tenant.sftp_conn_id}"))
    return text


def tenant_of(context: Mapping[str, Any]) -> Tenant | None:
    """The municipality of a failed task of a tenant's DAG (employment_reporting_<kommunekode>), from the
    tenants file; None for the single-municipality DAG, or when the entry cannot be read (then the
    alert still names the kommunekode, from the DAG id)."""
    dag_id = str(_dag_id(context))
    prefix = DAG_ID_PREFIX + "_"
    if not dag_id.startswith(prefix):
        return None
    try:
        return find_tenant(dag_id.removeprefix(prefix))
    except (KeyError, OSError, ValueError):
        return None


def _dag_id(context: Mapping[str, Any]) -> str:
    ti = context.get("task_instance") or context.get("ti")
    return _get(ti, "dag_id") or _get(context.get("dag"), "dag_id") or DAG_ID_PREFIX


def _municipality(dag_id: str, tenant: Tenant | None) -> str | None:
    if tenant is not None:
        return tenant.label
    prefix = DAG_ID_PREFIX + "_"
    return f"{dag_id.removeprefix(prefix)} (no valid entry in the tenants file)" if dag_id.startswith(prefix) else None


def build_alert(context: Mapping[str, Any]) -> Alert:
    """The alert's subject and plain-text body for a failure context (every CPR-like number masked)."""
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    dag_id = _dag_id(context)
    tenant = tenant_of(context)
    municipality = _municipality(dag_id, tenant)
    who = f"{municipality}: " if municipality else ""
    task_id = _get(ti, "task_id") or _get(context.get("task"), "task_id") or "?"
    run_id = context.get("run_id") or _get(ti, "run_id") or _get(dag_run, "run_id") or "?"
    logical_date = context.get("logical_date") or _get(dag_run, "logical_date")
    map_index = _get(ti, "map_index", -1)
    step = str(task_id).rsplit(".", 1)[-1]
    area = area_of(context)
    exception_text = _exception_text(context.get("exception"))
    what = STEP_NAMES.get(step, f"task {task_id}")
    if area is not None:
        subject = f"{SUBJECT_PREFIX} {who}area {area.number} ({area.key}) {what} failed - run {run_id}"
    else:
        subject = f"{SUBJECT_PREFIX} {who}{what} failed - run {run_id}"
    log_url = _get(ti, "log_url")
    lines = [
        subject.removeprefix(SUBJECT_PREFIX).strip(),
        "",
        *([f"Municipality: {municipality}"] if municipality else []),
        f"DAG:          {dag_id}",
        f"Task:         {task_id}",
        f"Area:         {f'{area.number} {area.key} - {area.title}' if area else '-'}",
        f"Map index:    {map_index if isinstance(map_index, int) and map_index >= 0 else '-'}",
        f"Run:          {run_id}",
        f"Logical date: {logical_date if logical_date is not None else '- (no logical date: asset or manual run)'}",
        f"Try:          {_get(ti, 'try_number', '-')}",
        "",
        "What happened:",
        exception_text,
        "",
        "What to do:",
        _what_to_do(step, exception_text, dag_id, tenant),
        "",
        f"Runbook: {RUNBOOK}, 'Re-running a failed delivery'.",
    ]
    body = mask_text("\n".join(lines))  # everything but the log link, which is the scheduler's URL
    if log_url:
        body += f"\nTask log: {log_url}"
    return Alert(subject=mask_text(subject), body=body + "\n", log_url=log_url)


def recipients(tenant: Tenant | None = None) -> list[str]:
    """The alert's addresses: the municipality's alert_email (tenants file), else AMS_ALERT_EMAIL."""
    if tenant is not None and tenant.alert_email:
        return list(tenant.alert_email)
    return [a.strip() for a in os.environ.get(RECIPIENTS_ENV, "").replace(";", ",").split(",") if a.strip()]


def _html(alert: Alert) -> str:
    text = html.escape(alert.body.removesuffix(f"\nTask log: {alert.log_url}\n") if alert.log_url else alert.body)
    link = (f'<p><a href="{html.escape(alert.log_url, quote=True)}">Open the task log</a></p>'
            if alert.log_url else "")
    return f'<pre style="font-family: monospace">{text}</pre>{link}'


def send_alert(alert: Alert, to: list[str], conn_id: str | None = None) -> None:
    """E-mail the alert through the SMTP provider (raises on failure; on_failure catches)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    conn_id = conn_id or os.environ.get(SMTP_CONN_ENV) or DEFAULT_SMTP_CONN_ID
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        sender = os.environ.get(SENDER_ENV) or hook.from_email or f"ams-reporting@{socket.getfqdn()}"
        hook.send_email_smtp(to=to, subject=alert.subject, html_content=_html(alert), from_email=sender)


def on_failure(context: Mapping[str, Any]) -> None:
    """Every task's failure callback: log the alert, and e-mail it when AMS_ALERT_EMAIL is set. Never raises."""
    try:
        alert = build_alert(context)
    except Exception:
        log.exception("AMS reporting: a task failed, and its alert could not be built (run %s); see the task log",
                      mask_text(context.get("run_id") if isinstance(context, Mapping) else "?"))
        return
    log.error("%s\n%s", alert.subject, alert.body)
    try:
        to = recipients(tenant_of(context))
    except Exception:  # never raise from the callback; fall back to the deployment's address
        log.exception("AMS reporting: the municipality's alert address could not be read")
        to = recipients()
    if not to:
        log.info("no alert e-mail: %s is not set", RECIPIENTS_ENV)
        return
    conn_id = os.environ.get(SMTP_CONN_ENV) or DEFAULT_SMTP_CONN_ID
    try:
        send_alert(alert, to, conn_id)
    except Exception as exc:
        log.error("AMS reporting: the alert e-mail to %s could not be sent through connection %s "
                  "(%s: %s); the task's failure stands, see above", ", ".join(to), conn_id, type(exc).__name__,
                  mask_text(exc), exc_info=True)
        return
    log.info("alert e-mail sent to %s", ", ".join(to))

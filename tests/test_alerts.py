"""The failure callback against a real SMTP server on loopback (aiosmtpd).

Callbacks do not fire when a task is marked failed in the UI, and their errors land in the
scheduler's log (STACK.md): so the callback is called here directly, with a realistic context.
"""

from __future__ import annotations

import email
import html
import json
import logging
import sys
from email.message import Message
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller

from transforms.registry import REPO_ROOT

if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from ams_reporting import alerts  # noqa: E402

from tests.support import free_port

CPR = "0101901234"
RUN_ID = "scheduled__2026-11-27T00:00:00+00:00"
LOG_URL = "http://localhost:8080/dags/employment_reporting/runs/x/tasks/area.deliver?map_index=0"


class Inbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"




def _smtp_connection(port: int) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@kommune.example",
                                 "retry_limit": 0, "timeout": 5}})


@pytest.fixture
def smtp_server(monkeypatch):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    monkeypatch.setenv("AMS_ALERT_SMTP_CONN_ID", "ams_alert_smtp")
    monkeypatch.setenv("AIRFLOW_CONN_AMS_ALERT_SMTP", _smtp_connection(controller.port))
    monkeypatch.setenv("AMS_ALERT_EMAIL", "drift@kommune.example, jobcenter-it@kommune.example")
    monkeypatch.delenv("AMS_AREAS", raising=False)
    yield inbox
    controller.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                         for r in self.records)


@pytest.fixture
def alert_log():
    """The callback's log records (a handler on its logger: Airflow's logging setup may bypass caplog)."""
    logger = logging.getLogger("ams_reporting.alerts")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class FailException(Exception):
    """Stands in for AirflowFailException (same shape: a message)."""


def _context(task_id: str = "area.deliver", map_index: int = 0, message: str | None = None, **extra) -> dict:
    ti = SimpleNamespace(task_id=task_id, map_index=map_index, dag_id="employment_reporting", run_id=RUN_ID,
                         try_number=1, log_url=LOG_URL)
    text = message or (f"Area 1: batch 5f0c... could not be delivered after 4 attempts (connection refused; record "
                       f"of person {CPR} and {CPR[:6]}-{CPR[6:]}). Clear this task to try again")
    return {"task_instance": ti, "ti": ti, "run_id": RUN_ID, "logical_date": "2026-11-27T00:00:00+00:00",
            "exception": FailException(text), "params": {}, **extra}


def _body(message: Message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/html"]
    return html.unescape(parts[0].get_payload(decode=True).decode("utf-8"))


def test_delivery_failure_sends_one_email_naming_area_run_and_action(smtp_server, alert_log):
    alerts.on_failure(_context())
    assert len(smtp_server.messages) == 1
    rcpts, message = smtp_server.messages[0]
    assert rcpts == ["drift@kommune.example", "jobcenter-it@kommune.example"]
    subject = message["Subject"]
    assert subject == f"[AMS reporting] area 1 (insured_measures) delivery failed - run {RUN_ID}"
    body = _body(message)
    for expected in ("employment_reporting", "area.deliver", "insured_measures", RUN_ID, "2026-11-27",
                     "Check the agency's service status", "clear this task instance", "--only-failed",
                     "asks the receiver about every batch", "docs/operations.md", LOG_URL):
        assert expected in body, expected
    assert "010190-****" in body
    assert CPR not in body and "010190-1234" not in body
    assert CPR not in alert_log.text and "010190-1234" not in alert_log.text


def test_access_closed_advice_and_area_from_rendered_map_index(smtp_server):
    context = _context(message="Area 5: the agency has closed access (§ 48): fault 2001 ...", map_index=3)
    context["task_instance"].rendered_map_index = "area5 cv_interviews"
    alerts.on_failure(context)
    (_, message), = smtp_server.messages
    assert "area 5 (cv_interviews) delivery failed" in message["Subject"]
    body = _body(message)
    assert "Contact the agency" in body and "§ 48" in body


def test_prepare_failure_points_at_the_source(smtp_server):
    alerts.on_failure(_context(task_id="area.prepare", map_index=1, message="OperationalError: no such table"))
    (_, message), = smtp_server.messages
    assert message["Subject"] == f"[AMS reporting] area 2 (uninsured_measures) preparation failed - run {RUN_ID}"
    assert "ams_source" in _body(message) and "clear area.prepare" in _body(message)


def test_no_recipients_means_no_email_and_no_error(smtp_server, monkeypatch, alert_log):
    monkeypatch.delenv("AMS_ALERT_EMAIL")
    alerts.on_failure(_context())
    assert smtp_server.messages == []
    assert "area 1 (insured_measures) delivery failed" in alert_log.text  # still in the task log
    assert CPR not in alert_log.text


def test_smtp_server_down_is_logged_not_raised(monkeypatch, alert_log):
    monkeypatch.setenv("AMS_ALERT_EMAIL", "drift@kommune.example")
    monkeypatch.delenv("AMS_ALERT_SMTP_CONN_ID", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", _smtp_connection(free_port()))  # nothing listens there
    alerts.on_failure(_context())  # must not raise
    errors = [r for r in alert_log.records if r.levelno >= logging.ERROR and "could not be sent" in r.getMessage()]
    assert errors and "smtp_default" in errors[0].getMessage()
    assert CPR not in alert_log.text


def test_a_broken_context_is_logged_not_raised(smtp_server, alert_log):
    class Exploding:
        def __getattr__(self, name):
            raise RuntimeError("boom")

    alerts.on_failure({"task_instance": Exploding(), "run_id": RUN_ID, "exception": FailException(CPR)})
    alerts.on_failure(None)  # type: ignore[arg-type]
    assert any(r.levelno >= logging.ERROR for r in alert_log.records)
    assert CPR not in alert_log.text


def test_report_task_without_area():
    alert = alerts.build_alert(_context(task_id="report", map_index=-1, message="disk full"))
    assert alert.subject == f"[AMS reporting] run report failed - run {RUN_ID}"
    assert "Area:         -" in alert.body and "AMS_STATE_URL" in alert.body

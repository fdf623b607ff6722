"""Task bodies: read the Airflow context and configuration, call the plain pipeline functions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from ams_reporting.hooks import TenantConfigError, client_for_area, settings, tenant
from cycle import pipeline
from transforms.registry import get_area

log = logging.getLogger(__name__)


def _label(area: int, kommunekode: str | None = None) -> str:
    """Names the mapped task in the UI: the area, and the municipality when there are several."""
    a = get_area(area)
    context = get_current_context()
    label = f"{a.code} {a.key}"
    if kommunekode is not None:
        try:
            label = f"{tenant(kommunekode).label}: {label}"
        except TenantConfigError:
            label = f"{kommunekode}: {label}"  # the task fails on it below, with the reason
    context["area_label"] = label  # type: ignore[typeddict-unknown-key]
    return context["run_id"]


def _period_end() -> datetime:
    """End of the data interval; runs without one (asset or manual triggers) use the current time."""
    context = get_current_context()
    end = context.get("data_interval_end")
    return end if end is not None else datetime.now(UTC)


def _what_to_do(exc: Exception) -> AirflowFailException:
    """The operator's message as the first ERROR line of the task's log, then a short failure."""
    log.error("%s", exc)
    return AirflowFailException(str(exc))


def _settings(kommunekode: str | None):
    try:
        return settings(kommunekode)
    except TenantConfigError as exc:
        raise _what_to_do(exc) from None


def prepare_task(area: int, kommunekode: str | None = None) -> dict:
    run_id = _label(area, kommunekode)
    config = _settings(kommunekode)
    try:
        return pipeline.prepare_area(area, run_id=run_id, period_end=_period_end().date(), settings=config)
    except pipeline.AreaDeliveryStopped as exc:
        raise _what_to_do(exc) from None


def deliver_task(area: int, kommunekode: str | None = None) -> dict:
    run_id = _label(area, kommunekode)
    config = _settings(kommunekode)
    try:
        # The client (web service, or SFTP files for areas 1 and 2, § 51) is built inside the delivery's
        # error handling: a receiver that is down is retried and reported like any failed call.
        return pipeline.deliver_area(area, run_id=run_id, settings=config,
                                     client=lambda: client_for_area(area, kommunekode))
    except pipeline.AreaDeliveryStopped as exc:
        raise _what_to_do(exc) from None


def report_task(kommunekode: str | None = None) -> dict:
    from cycle.pipeline import apply_archive_retention, finish_archives
    from reports.summary import write_run_report

    run_id = get_current_context()["run_id"]
    config = _settings(kommunekode)
    finish_archives(config, config.state(), config.vault())  # acknowledged batches a failed task left
    apply_archive_retention(config)
    return write_run_report(run_id, config)

"""Task bodies: read the Airflow context and configuration, call the plain pipeline functions."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from ams_reporting.hooks import client_for_area, settings
from delivery import pipeline
from transforms.registry import get_area


def _label(area: int) -> str:
    a = get_area(area)
    context = get_current_context()
    context["area_label"] = f"{a.code} {a.key}"  # type: ignore[typeddict-unknown-key]
    return context["run_id"]


def _period_end() -> datetime:
    """End of the data interval; runs without one (asset or manual triggers) use the current time."""
    context = get_current_context()
    end = context.get("data_interval_end")
    return end if end is not None else datetime.now(UTC)


def prepare_task(area: int) -> dict:
    run_id = _label(area)
    return pipeline.prepare_area(area, run_id=run_id, period_end=_period_end().date(), settings=settings())


def deliver_task(area: int) -> dict:
    run_id = _label(area)
    client = client_for_area(area)  # web service, or SFTP files for areas 1 and 2 (§ 51)
    try:
        return pipeline.deliver_area(area, run_id=run_id, settings=settings(), client=client)
    except pipeline.AreaDeliveryStopped as exc:
        raise AirflowFailException(str(exc)) from None


def report_task() -> dict:
    from delivery.pipeline import apply_archive_retention
    from delivery.report import write_run_report

    run_id = get_current_context()["run_id"]
    config = settings()
    apply_archive_retention(config)
    return write_run_report(run_id, config)

"""
### Employment-area reporting to the labour market agency

Reports the eight data areas of the executive order (BEK 2010, chapters 1-8) once a day. For each
area, a mapped task group runs two tasks:

- **prepare**: extracts the area from the source database in chunks, maps rows to the area's
  records, enforces the record contract (pandera) and the data-quality suite (Great
  Expectations), quarantines failing rows with every reason, and stages what changed since the
  last delivery as XSD-valid, encrypted payload batches;
- **deliver**: sends the staged batches to the agency's SOAP service, stores each receipt in the
  ledger before moving on, and archives the exact bytes sent and received.

**report** then writes the run summary (`var/reports/runs/<run_id>/`).

**Re-running a failed delivery:** clear the failed `deliver` task of that area (Grid view -> the
task -> Clear). It first asks the receiver about any batch whose outcome is unknown, so nothing is
sent twice and nothing is lost. See docs/operations.md.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task, task_group

from transforms.registry import enabled_areas

AREA_NUMBERS = [a.number for a in enabled_areas()]  # all eight, or AMS_AREAS
# A task whose worker died (no heartbeat for [scheduler] task_instance_heartbeat_timeout) is run again,
# on any worker: every task is idempotent (the ledger decides what is sent). A delivery that stops with
# the operator's message (AirflowFailException) is not retried.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("AMS_RETRY_DELAY_SECONDS", 300)))


def _alert(context) -> None:
    from ams_reporting.alerts import on_failure

    on_failure(context)


@dag(
    dag_id="employment_reporting",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": RETRY_DELAY, "on_failure_callback": _alert},
    tags=["ams", "reporting", "bek-2010"],
    doc_md=__doc__,
)
def employment_reporting():
    @task_group(group_id="area")
    def area_cycle(area: int):
        @task(map_index_template="{{ area_label }}")
        def prepare(area: int) -> dict:
            """Extract, map, check and stage one data area (no rows in XCom: counts and batch ids only)."""
            from ams_reporting.tasks import prepare_task

            return prepare_task(area)

        @task(map_index_template="{{ area_label }}")
        def deliver(prepared: dict) -> dict:
            """Send the area's staged batches; in-doubt batches are looked up at the receiver first."""
            from ams_reporting.tasks import deliver_task

            return deliver_task(prepared["area"])

        return deliver(prepare(area))

    cycles = area_cycle.expand(area=AREA_NUMBERS)

    @task(trigger_rule="all_done")
    def report() -> dict:
        """Write the run summary for operations and analysts."""
        from ams_reporting.tasks import report_task

        return report_task()

    @task(trigger_rule="one_failed", retries=0)
    def watcher() -> None:
        """Fails the run when any task failed: `report` runs regardless, so it cannot be the run's verdict."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("A task of this run failed; see the red task's log and docs/operations.md.")

    cycles >> report()
    cycles >> watcher()


employment_reporting()

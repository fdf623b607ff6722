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

import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task, task_group

from cycle.tenants import Tenant, dag_id_for, problems_by_kommunekode, read_tenants, tenants_file
from transforms.registry import enabled_areas

log = logging.getLogger(__name__)

AREA_NUMBERS = [a.number for a in enabled_areas()]  # all eight, or AMS_AREAS
# A task whose worker died (no heartbeat for [scheduler] task_instance_heartbeat_timeout) is run again,
# on any worker: every task is idempotent (the ledger decides what is sent). A delivery that stops with
# the operator's message (AirflowFailException) is not retried.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("AMS_RETRY_DELAY_SECONDS", 300)))

TENANT_DOC = """
### Employment-area reporting for {label}

Municipality **{label}** (kommunekode {kommunekode}), one of the municipalities of this deployment's
tenants file. Areas: {areas}. Source connection `{source}`, receiver connection `{receiver}`.
Pause, clear or backfill this DAG to act on this municipality only (docs/tenants.md).
"""


def _alert(context) -> None:
    from ams_reporting.alerts import on_failure

    on_failure(context)


def reporting_dag(dag_id: str, *, kommunekode: str | None, areas: list[int], schedule: str | None,
                  tags: list[str], doc_md: str | None):
    """One reporting DAG: a mapped task group per area (prepare -> deliver), then report and watcher.
    `kommunekode` None: the single-municipality DAG; else the tasks run for that tenant."""

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": RETRY_DELAY, "on_failure_callback": _alert},
        tags=tags,
        doc_md=doc_md,
    )
    def employment_reporting():
        @task_group(group_id="area")
        def area_cycle(area: int):
            @task(map_index_template="{{ area_label }}")
            def prepare(area: int, kommunekode: str | None) -> dict:
                """Extract, map, check and stage one data area (no rows in XCom: counts and batch ids only)."""
                from ams_reporting.tasks import prepare_task

                return prepare_task(area, kommunekode)

            @task(map_index_template="{{ area_label }}")
            def deliver(prepared: dict, kommunekode: str | None) -> dict:
                """Send the area's staged batches; in-doubt batches are looked up at the receiver first."""
                from ams_reporting.tasks import deliver_task

                return deliver_task(prepared["area"], kommunekode)

            return deliver(prepare(area, kommunekode), kommunekode)

        cycles = area_cycle.expand(area=areas)

        @task(trigger_rule="all_done")
        def report(kommunekode: str | None) -> dict:
            """Write the run summary for operations and analysts."""
            from ams_reporting.tasks import report_task

            return report_task(kommunekode)

        @task(trigger_rule="one_failed", retries=0)
        def watcher() -> None:
            """Fails the run when any task failed: `report` runs regardless, so it cannot be the run's verdict."""
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("A task of this run failed; see the red task's log and docs/operations.md.")

        cycles >> report(kommunekode)
        cycles >> watcher()

    return employment_reporting()


def tenant_dag(tenant: Tenant):
    return reporting_dag(
        tenant.dag_id, kommunekode=tenant.kommunekode, areas=list(tenant.areas), schedule=tenant.schedule,
        tags=["ams", "reporting", "bek-2010", tenant.kommunekode, tenant.name],
        doc_md=TENANT_DOC.format(label=tenant.label, kommunekode=tenant.kommunekode,
                                 areas=", ".join(map(str, tenant.areas)), source=tenant.source_conn_id,
                                 receiver=tenant.receiver_conn_id))


def configuration_error_dag(kommunekode: str, problems: list[str]):
    """A municipality whose entry has a problem: a DAG that says so (and fails when run), so the operator
    sees it in the UI while the other municipalities' DAGs run."""
    text = "\n".join(f"- {p}" for p in problems)

    @dag(dag_id=dag_id_for(kommunekode), schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         tags=["ams", "reporting", kommunekode, "configuration-error"],
         doc_md=f"### Municipality {kommunekode}: its entry in the tenants file has problems\n\n{text}\n\n"
                "Fix the file (docs/tenants.md; `ams-report tenants check`).",
         default_args={"on_failure_callback": _alert})
    def configuration_error():
        @task(retries=0)
        def configuration() -> None:
            """Fails with the problems of this municipality's entry in the tenants file."""
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"municipality {kommunekode}: the tenants file entry has problems: "
                                       + "; ".join(problems))

        configuration()

    return configuration_error()


if (path := tenants_file()) is None:
    reporting_dag("employment_reporting", kommunekode=None, areas=AREA_NUMBERS, schedule="@daily",
                  tags=["ams", "reporting", "bek-2010"], doc_md=__doc__)
else:
    # One DAG per municipality. A problem in one entry gives that municipality a DAG that shows it; only a
    # file that cannot be read at all (or has no entries) is an import error of this file.
    _tenants, _problems = read_tenants(path)
    _by_code = problems_by_kommunekode(_problems)
    if not _tenants and not [code for code in _by_code if code is not None]:
        raise RuntimeError(f"tenants file {path}: " + "; ".join(_problems))
    for _tenant in _tenants:
        tenant_dag(_tenant)
    for _code, _its in _by_code.items():
        if _code is not None and _code not in {t.kommunekode for t in _tenants}:
            log.error("tenants file %s: municipality %s is not scheduled: %s", path, _code, "; ".join(_its))
            configuration_error_dag(_code, _its)
    for _problem in _by_code.get(None, []):
        log.error("tenants file %s: %s", path, _problem)

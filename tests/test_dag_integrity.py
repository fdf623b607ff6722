"""DAG policy over one DagBag: no import errors, no work at parse time, docs and tags present."""

from unittest import mock

import pytest

from transforms.registry import AREAS


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # Parsing must not open a database connection or look up an Airflow connection (STACK.md).
    def refuse(*args, **kwargs):
        raise AssertionError("DAG parsing touched a database or a connection")

    with mock.patch("sqlalchemy.create_engine", side_effect=refuse), \
            mock.patch("airflow.sdk.BaseHook.get_connection", side_effect=refuse):
        from conftest import ROOT

        return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_employment_reporting_wires_every_area(dagbag):
    dag = dagbag.dags.get("employment_reporting")
    assert dag is not None
    assert {t.task_id for t in dag.tasks} == {"area.prepare", "area.deliver", "report", "watcher"}
    assert dag.doc_md and "Re-running a failed delivery" in dag.doc_md
    assert dag.max_active_runs == 1 and not dag.catchup
    group = dag.task_group_dict["area"]
    assert group._expand_input.value["area"] == [a.number for a in AREAS]


def test_every_task_has_a_doc_and_the_failure_callback(dagbag):
    for dag in dagbag.dags.values():
        assert dag.tags, dag.dag_id
        for t in dag.tasks:
            assert t.doc_md or t.doc, t.task_id
            assert t.on_failure_callback, t.task_id


def test_dag_modules_do_not_import_heavy_libraries_at_parse_time():
    import subprocess
    import sys

    code = ("import sys, runpy; runpy.run_path('dags/employment_reporting.py'); "
            "bad = [m for m in ('pandas', 'great_expectations', 'zeep', 'pandera') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

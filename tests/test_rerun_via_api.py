"""Operations' re-run, for real: `airflow standalone`, a delivery that fails, a clear through the
REST API (what the UI's Clear button calls), and the receiver then holds every record exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from demo import synthetic
from receiver.store import ReceiverStore
from tests.support import free_port
from transforms.source import create_engine_from_url, create_source_schema

pytestmark = pytest.mark.slow
DAG_ID = "employment_reporting"




def _wait(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except requests.RequestException:  # a busy API server on a small machine: ask again
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def standalone(tmp_path):
    """A running `airflow standalone` (API server, scheduler, DAG processor, triggerer) on loopback."""
    from receiver.server import start_in_thread

    receiver = start_in_thread(tmp_path / "receiver.sqlite", control=True)
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    engine = create_engine_from_url(source)
    create_source_schema(engine)
    synthetic.generate(engine, persons=300, defect_rate=0.03)
    engine.dispose()
    port = free_port()
    host_port = receiver.url.split("://", 1)[1].split("/", 1)[0]
    rhost, rport = host_port.rsplit(":", 1)
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "PYTHONPATH": str(ROOT / "plugins"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # standalone runs `airflow`
        "AMS_HOME": str(tmp_path / "var"),
        "AMS_SOURCE_URL": source,
        "AMS_STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite'}",
        "AMS_AREAS": "1",
        "AMS_DATA_DOCS": "0",
        "AMS_BATCH_SIZE": "50",
        "AMS_DELIVERY_ATTEMPTS": "2",
        "AMS_BACKOFF_SECONDS": "0.1",
        "AIRFLOW_CONN_AMS_RECEIVER": f'{{"conn_type": "http", "host": "{rhost}", "port": {rport}, '
                                     f'"schema": "ams", "extra": {{"timeout": 10, "scheme": "http"}}}}',
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log = (tmp_path / "standalone.log").open("wb")
    proc = subprocess.Popen([airflow, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ok(f"{base}/api/v2/monitor/health"), 180, "the API server")
        token = requests.get(f"{base}/auth/token", timeout=30).json()["access_token"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        yield base, session, receiver, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        receiver.stop()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _task_states(base, session, run_id) -> dict[str, str]:
    r = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", timeout=30)
    r.raise_for_status()
    return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in r.json()["task_instances"]}


def test_failed_delivery_is_cleared_through_the_rest_api(standalone):
    base, session, receiver, tmp_path = standalone
    _wait(lambda: session.get(f"{base}/api/v2/dags/{DAG_ID}", timeout=30).status_code == 200, 180,
          "the DAG to be parsed")
    requests.post(f"{receiver.base_url}/_control", json={"mode": "error500", "count": 1000}, timeout=5)
    session.patch(f"{base}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=30).raise_for_status()

    # Unpausing schedules the latest interval (catchup is off): that is the run to follow.
    def first_run():
        runs = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns", timeout=30).json()["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    run_id = _wait(first_run, 120, "the scheduled run")

    def finished():
        state = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=30).json()["state"]
        return state if state in ("success", "failed") else None

    assert _wait(finished, 300, "the first run", step=2) == "failed"
    states = _task_states(base, session, run_id)
    assert states["area.deliver[0]"] == "failed" and states["area.prepare[0]"] == "success"
    assert ReceiverStore(receiver.db_path).records(1) == []
    # The operator reads the task's log: the first ERROR line says what happened and what to do.
    log = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/area.deliver/logs/1",
                      params={"map_index": 0}, headers={"Accept": "application/json"}, timeout=30)
    log.raise_for_status()
    content = log.json()["content"]
    entries = content if isinstance(content, list) else [{"event": line} for line in str(content).splitlines()]
    errors = [str(e.get("event", "")) for e in entries if str(e.get("level", "")).lower() == "error"]
    assert errors, entries[-5:]
    assert errors[0].startswith("Area 1, batch ") and "no receipt after 2 attempts" in errors[0]
    assert "clear this task" in errors[0].lower()

    # The agency is back. Operations clear the failed delivery, as the UI's Clear button does.
    requests.post(f"{receiver.base_url}/_control", json={"mode": "ok"}, timeout=5)
    r = session.post(f"{base}/api/v2/dags/{DAG_ID}/clearTaskInstances", timeout=10, json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["area.deliver"], "only_failed": True,
        "include_downstream": True, "reset_dag_runs": True})
    r.raise_for_status()
    assert _wait(finished, 300, "the cleared run", step=2) == "success"

    from delivery.state import StateStore

    ledger = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}").ledger_rows(1)
    accepted = set(ledger.loc[ledger["status"] == "accepted", "record_id"])
    stored = ReceiverStore(receiver.db_path).records(1)
    assert accepted and {r["record_id"] for r in stored} == accepted
    assert len(stored) == len(accepted) and all(r["version"] == 1 for r in stored)

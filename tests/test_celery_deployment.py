"""The pipeline on a real Celery deployment made of processes (deployment/local_celery.py).

`airflow db migrate` on a fresh PostgreSQL database, then the API server, the scheduler, the DAG
processor and two `airflow celery worker` processes, each with its own working directory,
AIRFLOW_HOME and AMS_HOME (so that a shared disk cannot hide a bug); Redis as the broker, PostgreSQL
for the metadata, the Celery results and the pipeline's state. Each municipality has its own
synthetic source database and its own local AMS receiver (TLS, signed requests).

One scenario, asserted by the tests below: every municipality's DAG is triggered; the receiver holds
back its reply to the first batch (`slow_reply`), and the worker running that delivery is killed
with SIGKILL (its whole process tree, as a machine that dies). The scheduler notices the missing
heartbeats, the task runs again on the other worker, and the killed worker comes back. Then each
receiver must hold exactly what `dag.test()` (no executor, one process) delivers from the same
sources, record by record (ids and content), each record received exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import ROOT
from deployment.local_celery import (
    CeleryDeployment,
    Municipality,
    deployment_env,
    postgres_unreachable,
    redis_unreachable,
    start_municipalities,
)
from receiver.store import ReceiverStore

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CODES = ["101", "147", "151"]  # the municipalities of the deployment's tenants file
PERSONS = 300
SETTINGS = {"AMS_DATA_DOCS": "0", "AMS_BATCH_SIZE": "40", "AMS_DELIVERY_ATTEMPTS": "2",
            "AMS_BACKOFF_SECONDS": "0.2", "AMS_RETRY_DELAY_SECONDS": "1"}
HELD_REPLY_SECONDS = 90  # the receiver holds its answer this long: the worker dies meanwhile


@dataclass
class Outcome:
    """What the scenario left behind, for the tests to assert on."""

    cluster: CeleryDeployment
    municipalities: list[Municipality]
    runs: dict[str, str]
    states: dict[str, str]
    reference: dict[str, dict[str, bytes]]  # kommunekode -> record_id -> payload, from dag.test()
    killed_worker: int
    held: dict[str, Any]  # the batch whose reply was held: dag_id, area, map_index, batch_id
    reference_home: Path  # the reference run's AMS_HOME and state DB (reference/state.sqlite)


def _receiver(m: Municipality, path: str, body: dict | None = None) -> Any:
    """GET (or POST `body` to) the receiver's test endpoints, over its TLS."""
    url, verify = f"{m.receiver.base_url}{path}", m.connection_extra["ca_bundle"]
    r = (requests.post(url, json=body, timeout=10, verify=verify) if body is not None
         else requests.get(url, timeout=10, verify=verify))
    r.raise_for_status()
    return r.json()


def _control(m: Municipality, **body: Any) -> dict:
    return dict(_receiver(m, "/_control", body))


def _state(m: Municipality) -> dict:
    return dict(_receiver(m, "/_control"))


def _batches(m: Municipality) -> list[dict]:
    return list(_receiver(m, "/_batches"))


def _holdings(m: Municipality) -> dict[str, bytes]:
    return {r["record_id"]: r["payload_xml"] for r in ReceiverStore(m.receiver.db_path).records()}


def _reference_runs(tmp: Path, municipalities: list[Municipality], monkeypatch) -> dict[str, dict[str, bytes]]:
    """What dag.test() (no executor, one process) delivers from the same sources, with its own state DB
    and its own receivers: kommunekode -> record_id -> payload."""
    from airflow.dag_processing.dagbag import DagBag

    from cli.main import _receiver_connection, demo_receiver

    with ExitStack() as stack, monkeypatch.context() as mp:
        receivers = {m.code: stack.enter_context(demo_receiver(tmp / f"reference-receiver-{m.code}.sqlite"))
                     for m in municipalities}
        connections = {code: _receiver_connection(r.url, extra) for code, (r, extra) in receivers.items()}
        env = {**SETTINGS, **deployment_env(municipalities, tmp / "reference", connections),
               "AMS_HOME": str(tmp / "reference"), "AMS_STATE_URL": f"sqlite:///{tmp / 'reference' / 'state.sqlite'}"}
        for key, value in env.items():
            mp.setenv(key, value)
        dags = DagBag(dag_folder=str(ROOT / "dags")).dags
        for m in municipalities:
            run = dags[m.dag_id].test()
            assert run.state == "success", f"the reference run (dag.test) of {m.dag_id} ended {run.state}"
        return {code: {r["record_id"]: r["payload_xml"] for r in ReceiverStore(r.db_path).records()}
                for code, (r, _) in receivers.items()}


def _log_home(cluster: CeleryDeployment, dag_id: str, run_id: str, task_id: str, map_index: int,
              attempt: int) -> int | None:
    """Which worker wrote this try's task log (its own AIRFLOW_HOME): the worker that ran it."""
    mapped = [f"map_index={map_index}"] if map_index >= 0 else []
    relative = Path(f"dag_id={dag_id}", f"run_id={run_id}", f"task_id={task_id}", *mapped, f"attempt={attempt}.log")
    for i in range(1, cluster.workers + 1):
        if (cluster.root / f"worker-{i}" / "airflow" / "logs" / relative).exists():
            return i
    return None


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Any:
    for reason in (postgres_unreachable(), redis_unreachable()):
        if reason:
            pytest.skip(f"PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 are needed: {reason}")
    from transforms.registry import enabled_areas

    tmp = tmp_path_factory.mktemp("celery")
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())  # dag.test
    monkeypatch = pytest.MonkeyPatch()
    with ExitStack() as stack:
        stack.callback(monkeypatch.undo)
        municipalities = start_municipalities(stack, tmp, CODES, persons=PERSONS, control=True)
        reference = _reference_runs(tmp, municipalities, monkeypatch)

        cluster = CeleryDeployment(tmp / "cluster", workers=2, concurrency=2,
                                   env={**SETTINGS, **deployment_env(municipalities, tmp / "config")})
        stack.enter_context(cluster)
        dag_ids = [m.dag_id for m in municipalities]
        cluster.wait_for_dags(dag_ids)
        victim = municipalities[0]
        _control(victim, mode="slow_reply", count=1, delay=HELD_REPLY_SECONDS)
        runs = {dag_id: cluster.trigger(dag_id) for dag_id in dag_ids}
        try:
            held_batch = cluster.wait(lambda: (_state(victim)["held"] or [None])[0], 300,
                                      "the receiver to hold back its reply to a batch")
            area = next(b["area"] for b in _batches(victim) if b["batch_id"] == held_batch)
            map_index = [a.number for a in enabled_areas()].index(area)
            held = {"dag_id": victim.dag_id, "area": area, "map_index": map_index, "batch_id": held_batch}
            run_id = runs[victim.dag_id]
            killed = cluster.wait(lambda: _log_home(cluster, victim.dag_id, run_id, "area.deliver", map_index, 1),
                                  60, "the delivery's task log")
            cluster.kill_worker(killed)

            def retried() -> bool:
                ti = cluster.api("GET", f"/dags/{victim.dag_id}/dagRuns/{run_id}/taskInstances/area.deliver/"
                                 f"{map_index}")
                return ti["try_number"] >= 2 and ti["state"] in ("running", "success")

            cluster.wait(retried, 240, "the killed worker's delivery to run again", step=1)
            cluster.start_worker(killed)  # the machine comes back
            cluster.wait_worker_ready(killed)
            states = cluster.wait_for_runs(runs, timeout=900)
        except BaseException:
            print(cluster.diagnostics())
            raise
        yield Outcome(cluster, municipalities, runs, states, reference, killed, held, tmp / "reference")


def test_every_run_succeeds_on_celery(outcome):
    bad = {dag: state for dag, state in outcome.states.items() if state != "success"}
    assert not bad, f"runs that did not succeed: {bad}\n{outcome.cluster.diagnostics()}"


def test_tasks_ran_on_both_workers(outcome):
    """Each worker ran tasks (so prepare and deliver of an area may meet on different disks)."""
    cluster = outcome.cluster
    used = {i for i in range(1, cluster.workers + 1)
            if any(p.is_relative_to(cluster.root / f"worker-{i}") for p in cluster.task_logs())}
    assert used == {1, 2}, f"only workers {used} ran tasks"


def test_killed_delivery_ran_again_on_the_other_worker(outcome):
    held, cluster = outcome.held, outcome.cluster
    run_id = outcome.runs[held["dag_id"]]
    ti = cluster.api("GET", f"/dags/{held['dag_id']}/dagRuns/{run_id}/taskInstances/area.deliver/{held['map_index']}")
    assert ti["state"] == "success" and ti["try_number"] == 2, ti
    first = _log_home(cluster, held["dag_id"], run_id, "area.deliver", held["map_index"], 1)
    second = _log_home(cluster, held["dag_id"], run_id, "area.deliver", held["map_index"], 2)
    assert first == outcome.killed_worker and second not in (None, outcome.killed_worker), (first, second)


def test_only_the_killed_workers_tasks_ran_twice(outcome):
    """Every task retries once (for a lost worker), which would also hide a task that fails on Celery
    for another reason (a race between workers, a file on the other disk): none may have."""
    cluster, again = outcome.cluster, []
    for dag_id, run_id in outcome.runs.items():
        for ti in cluster.task_instances(dag_id, run_id):
            if ti["try_number"] > 1:
                first = _log_home(cluster, dag_id, run_id, ti["task_id"], ti["map_index"], 1)
                if first != outcome.killed_worker:
                    again.append(f"{dag_id} {ti['task_id']}[{ti['map_index']}] (first try on worker {first})")
    assert not again, "tasks that needed a second try without their worker dying:\n" + "\n".join(again)


def _mismatch(outcome: Outcome, m: Municipality, missing: list[str], extra: list[str]) -> str:
    """What a difference between the cluster's and the reference's receiver needs to be told apart: which
    areas, the batches either run left unfinished, and the cluster's tasks that ran again (this test failed
    once in a fresh clone's `make test` and passed on its rerun; the message then said only the counts)."""
    from collections import Counter

    from delivery.state import ARCHIVED, StateStore

    areas = {r.record_id: r.area for r in ReceiverStore(m.receiver.db_path).records()}
    ref_db = next(outcome.reference_home.parent.glob(f"reference-receiver-{m.code}.sqlite"), None)
    if ref_db is not None:
        areas.update({r.record_id: r.area for r in ReceiverStore(ref_db).records()})
    lines = [f"missing by area {dict(Counter(areas.get(r) for r in missing))}, "
             f"unexpected by area {dict(Counter(areas.get(r) for r in extra))}"]
    for label, url in (("reference", f"sqlite:///{outcome.reference_home / 'state.sqlite'}"),
                       ("cluster", outcome.cluster.state_url)):
        store = StateStore(url, tenant=m.code)
        batches = store.all_batches()
        store.engine.dispose()
        lines.append(f"{label}: {len(batches)} batches, not archived: "
                     f"{[(b['area'], b['status'], b['run_id']) for b in batches if b['status'] != ARCHIVED][:10]}")
    run_id = outcome.runs[m.dag_id]
    lines.append("cluster tasks tried more than once: " + str(
        [(ti["task_id"], ti["map_index"], ti["try_number"], ti["state"])
         for ti in outcome.cluster.task_instances(m.dag_id, run_id) if ti["try_number"] > 1]))
    return "\n".join(lines)


def test_receivers_hold_exactly_what_dag_test_delivers(outcome):
    for m in outcome.municipalities:
        got, want = _holdings(m), outcome.reference[m.code]
        assert want, f"municipality {m.code}: the reference run delivered nothing"
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        assert not missing and not extra, (f"municipality {m.code}: {len(missing)} record(s) missing "
                                           f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})\n"
                                           + _mismatch(outcome, m, missing, extra))
        differ = [rid for rid in want if got[rid] != want[rid]]
        assert not differ, f"municipality {m.code}: {len(differ)} record(s) with other content, e.g. {differ[:3]}"


def test_every_record_reached_the_receiver_exactly_once(outcome):
    held = outcome.held
    for m in outcome.municipalities:
        records = ReceiverStore(m.receiver.db_path).records()
        again = [r["record_id"] for r in records if r["version"] != 1 or r["resends"] != 0]
        assert records and not again, f"municipality {m.code}: received more than once: {again[:5]}"
    victim = next(m for m in outcome.municipalities if m.dag_id == held["dag_id"])
    in_held = [b for b in _batches(victim) if b["batch_id"] == held["batch_id"]]
    assert len(in_held) == 1 and in_held[0]["record_count"] > 0


def test_every_delivered_batch_is_archived(outcome):
    """Archiving needs the staged payload (in the state DB) and the archive (in the object store) where
    every worker reaches them: before both, a deliver on another worker than its prepare could not
    archive the bytes sent."""
    from delivery.state import ARCHIVED, StateStore

    for m in outcome.municipalities:
        store = StateStore(outcome.cluster.state_url, tenant=m.code)
        batches = store.all_batches()
        store.engine.dispose()
        left = [(b["area"], b["batch_id"], b["status"]) for b in batches if b["status"] != ARCHIVED]
        assert batches and not left, (f"municipality {m.code}: {len(left)} of {len(batches)} batches not archived, "
                                      f"e.g. {left[:3]}")

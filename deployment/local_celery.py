"""The pipeline on Airflow's CeleryExecutor, made of processes on this machine: what docker-compose.yml
runs in containers, for the Celery deployment test and `make bench-scale`.

    with CeleryDeployment(root, workers=2, env={...}) as cluster:
        run_id = cluster.trigger("employment_reporting")
        cluster.wait_for_runs({"employment_reporting": run_id})

It starts `airflow db migrate` on a fresh PostgreSQL database, then `airflow api-server`,
`airflow scheduler`, `airflow dag-processor` (the control plane, one AIRFLOW_HOME) and N
`airflow celery worker` processes, each with its OWN working directory, AIRFLOW_HOME and AMS_HOME:
the workers share nothing but the databases (metadata, Celery results, the pipeline's state) and
the broker, so a task that relies on a file another task wrote on "its" disk fails here as it would
on separate machines. The broker is a Redis database of its own (default 13; FLUSHDB at start).

Every process runs in its own session (process group): `stop()` ends each whole tree, also on
failure, and `kill_worker()` SIGKILLs one worker's tree, as a machine that dies. `diagnostics()`
gives the tail of every process log and of the task logs, for a failure message people can read.
No Airflow import here: everything goes through the command line and the REST API.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import psutil
import requests
import sqlalchemy as sa

from cli.main import _airflow_env, _free_port
from cycle.settings import Settings

#: The PostgreSQL server's maintenance URL (trust auth here; AMS_TEST_PG_URL points elsewhere).
PG_ADMIN_URL = os.environ.get("AMS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Redis on loopback; the database number is the deployment's own (the test and the benchmark differ).
REDIS_URL = os.environ.get("AMS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
FINISHED = ("success", "failed")
T = TypeVar("T")


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the server of `admin_url`."""
    return sa.make_url(admin_url).set(database=name, query={}).render_as_string(hide_password=False)


def postgres_unreachable(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when the PostgreSQL server answers; otherwise why not (for a test's skip reason)."""
    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any failure to connect: no server here
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    finally:
        engine.dispose()


def redis_unreachable(url: str = REDIS_URL) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        return None
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE `name` (it must not exist); returns its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE `name`, ending any session still connected (a killed worker's, say)."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """One started command in its own session; its log file holds stdout and stderr."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False  # on purpose (kill()): not a failure of the deployment

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and every descendant still running (Celery's pool, task supervisors, tasks)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pids(self) -> set[int]:
        return {p.pid for p in self.tree()}

    def kill(self) -> None:
        """SIGKILL the whole tree at once: the machine dies, nothing gets to clean up."""
        self.killed = True
        for proc in self.tree():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the process group, then SIGKILL to whatever of the tree is left after `timeout`."""
        if not self.alive():
            self.kill()  # the leader is gone; its children may not be
            return
        tree = self.tree()
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.kill()

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


@dataclass
class CeleryDeployment:
    """Airflow on Celery from local processes; see the module's docstring.

    `env`: settings every process gets (AMS_*, connections as AIRFLOW_CONN_*, AMS_TENANTS_FILE, ...);
    `worker_env(i)`: more for worker i. The pipeline's state DB is a fresh PostgreSQL database
    (`state_url`, passed as AMS_STATE_URL); so is Airflow's metadata DB, which is also the Celery
    result backend."""

    root: Path
    workers: int = 2
    concurrency: int = 2
    env: dict[str, str] = field(default_factory=dict)
    worker_env: Callable[[int], dict[str, str]] | None = None
    broker_db: int = 13
    pg_admin_url: str = PG_ADMIN_URL
    redis_url: str = REDIS_URL
    #: Seconds without a heartbeat before the scheduler declares a running task lost (Airflow's
    #: default is 300): a killed worker's task is failed, and retried elsewhere, this soon.
    heartbeat_timeout: int = 20
    startup_timeout: float = 300.0
    keep_databases: bool = False
    processes: dict[str, ManagedProcess] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        tag = uuid.uuid4().hex[:10]
        self.meta_db = f"ams_celery_meta_{tag}"
        self.state_db = f"ams_celery_state_{tag}"
        self.state_url = database_url(self.pg_admin_url, self.state_db)
        self.broker_url = f"{self.redis_url.rstrip('/')}/{self.broker_db}"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self._created: list[str] = []
        # One of each for every process: the scheduler signs the tasks' tokens and the API server checks
        # them; a batch one worker staged is read and archived by another with the same archive key.
        self._jwt_secret = secrets.token_urlsafe(32)
        self._api_secret = secrets.token_urlsafe(32)
        self._fernet_key = _fernet_key()
        self._archive_key = _fernet_key()

    # -- environment --------------------------------------------------------------------------------
    def _env(self, name: str, home: Path) -> dict[str, str]:
        meta = database_url(self.pg_admin_url, self.meta_db)
        settings = Settings(home=home / "var", source_url=self.env.get("AMS_SOURCE_URL", ""), state_url=self.state_url)
        env = _airflow_env(settings)
        # The test process's own Airflow and AMS settings must not leak into the deployment.
        for key in [k for k in env if k.startswith(("AIRFLOW__DATABASE__", "AMS_INSECURE"))]:
            del env[key]
        env.update({
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
            # Airflow would derive asyncpg (not installed) for its async engine: psycopg 3 does async too.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta,
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "ams_celery.CELERY_CONFIG",  # plugins/: warm workers
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "2",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__API__SECRET_KEY": self._api_secret,
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Runs come from trigger() only, and start at once: no schedule, no paused DAGs.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Each worker serves its own task logs; several on one machine need several ports.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AMS_HOME": str(home / "var"),
            "AMS_STATE_URL": self.state_url,
            # The shared object storage (archive, reports): a folder outside every worker's home stands in
            # for the S3-compatible bucket of a deployment (no S3 server here).
            "AMS_OBJECT_STORE_URL": (self.root / "object-store").as_uri(),
            "AMS_ARCHIVE_KEY": self._archive_key,
            "AMS_DEPLOYMENT_PROCESS": name,
        })
        env.update(self.env)
        return env

    def control_env(self) -> dict[str, str]:
        return self._env("control", self.root / "control")

    def _worker_home(self, i: int) -> Path:
        return self.root / f"worker-{i}"

    # -- processes ---------------------------------------------------------------------------------
    def _start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> ManagedProcess:
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).with_name("airflow"))
        with log_path.open("ab") as log:
            popen = subprocess.Popen([airflow, *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = ManagedProcess(name, popen, log_path)
        self.processes[name] = proc
        return proc

    def start(self) -> Self:
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        import redis

        self.root.mkdir(parents=True, exist_ok=True)
        for name in (self.meta_db, self.state_db):
            create_database(self.pg_admin_url, name)
            self._created.append(name)
        redis.Redis.from_url(self.broker_url).flushdb()  # our own database number: no one else's queue
        control = self.control_env()
        cwd = self.root / "control"
        migrate = self._start("db-migrate", ["db", "migrate"], control, cwd)
        if migrate.popen.wait(timeout=self.startup_timeout) != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.tail()}")
        for name, args in (("api-server", ["api-server"]), ("scheduler", ["scheduler"]),
                           ("dag-processor", ["dag-processor"])):
            self._start(name, args, control, cwd)
        for i in range(1, self.workers + 1):
            self.start_worker(i)
        self._wait(self._healthy, self.startup_timeout, "the API server to answer")
        token = self.session.get(f"{self.base_url}/auth/token", timeout=30).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        for i in range(1, self.workers + 1):
            self.wait_worker_ready(i)

    def start_worker(self, i: int) -> ManagedProcess:
        home = self._worker_home(i)
        env = self._env(f"worker-{i}", home)
        if self.worker_env is not None:
            env.update(self.worker_env(i))
        return self._start(f"worker-{i}", ["celery", "worker", "--celery-hostname", f"worker{i}@%h",
                                           "--concurrency", str(self.concurrency)], env, home)

    def wait_worker_ready(self, i: int) -> None:
        proc = self.processes[f"worker-{i}"]
        self._wait(lambda: " ready." in proc.log_path.read_text(errors="replace"), self.startup_timeout,
                   f"worker {i} to be ready")

    def worker(self, i: int) -> ManagedProcess:
        return self.processes[f"worker-{i}"]

    def kill_worker(self, i: int) -> None:
        self.worker(i).kill()

    def worker_of(self, pid: int) -> int | None:
        """Which worker's process tree holds `pid` (a task's process), or None."""
        for i in range(1, self.workers + 1):
            if pid in self.worker(i).pids():
                return i
        return None

    def stop(self) -> None:
        """Stop every process (workers first, then the control plane); drop the databases."""
        for name in sorted(self.processes, key=lambda n: not n.startswith("worker-")):
            try:
                self.processes[name].stop()
            except Exception as exc:  # go on: every other process must still be stopped
                print(f"stopping {name}: {exc}", file=sys.stderr)
        self.session.close()
        if not self.keep_databases:
            for name in self._created:
                try:
                    drop_database(self.pg_admin_url, name)
                except Exception as exc:
                    print(f"dropping database {name}: {exc}", file=sys.stderr)
            self._created.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- waiting and the REST API ------------------------------------------------------------------
    def _check_alive(self) -> None:
        dead = [p for name, p in self.processes.items()
                if name != "db-migrate" and not p.alive() and not p.killed]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with code {dead[0].popen.returncode}\n"
                               + self.diagnostics())

    def _wait(self, predicate: Callable[[], T | None], timeout: float, what: str, step: float = 1.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                value = predicate()
            except (requests.RequestException, OSError, ValueError, KeyError):
                value = None  # a busy API server on a small machine: ask again
            if value:
                return value
            time.sleep(step)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.diagnostics())

    def _healthy(self) -> bool:
        return self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).status_code == 200

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST API call (/api/v2/...), retried while the server is busy; the JSON answer."""
        last: Exception | None = None
        for _ in range(5):
            try:
                r = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=60, **kwargs)
                r.raise_for_status()
                return r.json()
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                time.sleep(2)
        raise RuntimeError(f"{method} {path}: {last}")

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 240) -> None:
        wanted = set(dag_ids)

        def parsed() -> bool:
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 1000})["dags"]}
            return wanted <= found

        self._wait(parsed, timeout, f"the DAGs {sorted(wanted)} to be parsed", step=2)

    def trigger(self, dag_id: str, run_id: str | None = None) -> str:
        body = {"logical_date": None, "dag_run_id": run_id or f"celery__{uuid.uuid4().hex[:12]}"}
        return str(self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_for_runs(self, runs: dict[str, str], timeout: float = 600) -> dict[str, str]:
        """Wait until every (dag_id -> run_id) has finished; returns dag_id -> final state."""
        def finished() -> dict[str, str] | None:
            states = {dag: self.run_state(dag, run) for dag, run in runs.items()}
            return states if all(s in FINISHED for s in states.values()) else None

        return self._wait(finished, timeout, f"the runs {runs} to finish", step=2)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                             params={"limit": 1000})["task_instances"])

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str, step: float = 0.5) -> T:
        return self._wait(predicate, timeout, what, step)

    # -- readable failures -------------------------------------------------------------------------
    def task_logs(self) -> list[Path]:
        """Every task log the workers wrote (each under its own AIRFLOW_HOME)."""
        found: list[Path] = []
        for i in range(1, self.workers + 1):
            found += sorted((self._worker_home(i) / "airflow" / "logs").rglob("*.log"))
        return found

    def diagnostics(self, lines: int = 25) -> str:
        """The tail of every process log, and of the task logs that hold an error."""
        parts = [f"--- {p.name} ({'running' if p.alive() else f'exit {p.popen.returncode}'}; {p.log_path}) ---\n"
                 + p.tail(lines) for p in self.processes.values()]
        for path in self.task_logs():
            text = path.read_text(errors="replace")
            if '"level":"error"' in text.replace(" ", "") or "ERROR" in text:
                parts.append(f"--- task log {path} ---\n" + _tail(path, lines))
        return "\n".join(parts)


# -- the municipalities a deployment reports for: a source database and a receiver each ------------
@dataclass
class Municipality:
    """One municipality of a test or benchmark: its synthetic source DB (PostgreSQL) and its local
    AMS receiver (a process, TLS and signed requests, as the agency's service)."""

    code: str
    dag_id: str
    source_url: str
    receiver: Any  # receiver.server.ReceiverProcess
    connection_extra: dict[str, str]

    def receiver_store(self) -> Any:
        """The receiver's database (receiver.store.ReceiverStore): what it holds."""
        from receiver.store import ReceiverStore

        return ReceiverStore(self.receiver.db_path)

    def receiver_connection(self) -> str:
        from cli.main import _receiver_connection

        return _receiver_connection(self.receiver.url, self.connection_extra)


def make_source(admin_url: str, name: str, *, persons: int, seed: int, municipality: str) -> str:
    """A fresh PostgreSQL database `name` with a synthetic case system of `persons` persons."""
    from demo import synthetic
    from transforms.source import create_engine_from_url

    url = create_database(admin_url, name)
    engine = create_engine_from_url(url)
    try:
        synthetic.generate(engine, persons=persons, seed=seed, defect_rate=0.03, municipality=municipality)
    finally:
        engine.dispose()
    return url


def start_municipalities(stack: Any, root: Path, codes: list[str], *, persons: int, tenants: bool = True,
                         admin_url: str = PG_ADMIN_URL, control: bool = False) -> list[Municipality]:
    """For each kommunekode: a source DB and a receiver, both ended by `stack` (a contextlib.ExitStack).
    `tenants`: the municipalities are tenants of a tenants file (DAG employment_reporting_<kommunekode>);
    False: one municipality, the single-municipality DAG employment_reporting."""
    from cli.main import demo_receiver

    if not tenants and len(codes) != 1:
        raise ValueError("without a tenants file a deployment reports for one municipality")
    tag = uuid.uuid4().hex[:8]
    out = []
    for n, code in enumerate(codes):
        name = f"ams_celery_src_{code}_{tag}"
        stack.callback(drop_database, admin_url, name)
        url = make_source(admin_url, name, persons=persons, seed=1000 + n, municipality=code)
        receiver, extra = stack.enter_context(demo_receiver(root / f"receiver-{code}.sqlite", control=control))
        dag_id = f"employment_reporting_{code}" if tenants else "employment_reporting"
        out.append(Municipality(code, dag_id, url, receiver, extra))
    return out


def deployment_env(municipalities: list[Municipality], folder: Path,
                   receivers: dict[str, str] | None = None) -> dict[str, str]:
    """The settings that name the municipalities' sources and receivers, for every process: a tenants
    file in `folder` (manual runs only: no schedule) and the connections `ams_source_<kommunekode>`,
    `ams_receiver_<kommunekode>` as AIRFLOW_CONN_* variables; or, for the single-municipality DAG,
    AMS_SOURCE_URL and `ams_receiver`. `receivers`: kommunekode -> another receiver connection (JSON)."""
    import json

    import yaml

    receivers = receivers or {}
    if [m.dag_id for m in municipalities] == ["employment_reporting"]:
        m = municipalities[0]
        return {"AMS_SOURCE_URL": m.source_url, "AMS_SENDER_MUNICIPALITY": m.code,
                "AIRFLOW_CONN_AMS_RECEIVER": receivers.get(m.code) or m.receiver_connection()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tenants.yaml"
    entries = [{"kommunekode": m.code, "source_conn_id": f"ams_source_{m.code}",
                "receiver_conn_id": f"ams_receiver_{m.code}", "schedule": None} for m in municipalities]
    path.write_text(yaml.safe_dump({"tenants": entries}, sort_keys=False), encoding="utf-8")
    env = {"AMS_TENANTS_FILE": str(path)}
    for m in municipalities:
        env[f"AIRFLOW_CONN_AMS_SOURCE_{m.code}"] = json.dumps({"conn_type": "generic",
                                                              "extra": {"sqlalchemy_url": m.source_url}})
        env[f"AIRFLOW_CONN_AMS_RECEIVER_{m.code}"] = receivers.get(m.code) or m.receiver_connection()
    return env

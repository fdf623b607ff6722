"""`ams-report`: the command line of the project.

    ams-report demo [--full]   one daily cycle on the embedded defaults (what `make run` does); --full
                               reads the whole source, not only what changed since the last run
    ams-report ui              the Airflow UI on the demo (what `make ui` does); Ctrl-C stops it
    ams-report summary [RUN]   the summary of a run (default: the latest)
    ams-report docs            regenerate the XSD and docs/fields.md from the registry, and the list of
                               the Data Docs' vendored assets (expectations/vendor/README.md)
    ams-report verify-archive  check every archived batch against its manifest and the state DB
    ams-report rotate-archive-key  re-encrypt the archive with the newest key (AMS_ARCHIVE_KEY)
    ams-report requeue --area N  re-send records the receiver refused, once its fault is fixed
    ams-report interface-change --from v1 --to v2 --announced DATE --effective DATE
                               check a § 49 notice (40 working days) and show what the change means
    ams-report conformance --receiver CONN_ID
                               the test before go-live (§ 46) against the agency's test endpoint
    ams-report tenants check [--file F] [--no-connections]
                               validate the tenants file (AMS_TENANTS_FILE) and that its connections exist
    ams-report tenants adopt KOMMUNEKODE
                               move the single-municipality state into that municipality's partition
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cycle.settings import Settings
from transforms.registry import REPO_ROOT

DAG_ID = "employment_reporting"


def _airflow_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(settings.home / "airflow"))
    env.update({
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # INFO: the tasks' own lines (counts, what to do) reach the run's log file, not only warnings.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "GX_ANALYTICS_ENABLED": "false",
        # The demo makes its own archive key on first use; in production a missing key is an error.
        "AMS_CREATE_ARCHIVE_KEY": env.get("AMS_CREATE_ARCHIVE_KEY", "1"),
        "AMS_HOME": str(settings.home),
        "AMS_SOURCE_URL": settings.source_url,
        "AMS_STATE_URL": settings.state_url,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    return env


def _airflow(args: list[str], env: dict[str, str], log_path: Path) -> int:
    airflow = str(Path(sys.executable).with_name("airflow"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.call([airflow, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def ensure_demo_source(settings: Settings, persons: int, municipality: str | None = None) -> bool:
    """Create and fill the demo source database once; later runs read what is there (fixes included).
    `municipality`: a source of that municipality (its own deterministic data), else the demo's."""
    from demo import synthetic
    from transforms.source import create_engine_from_url, create_source_schema

    path = Path(settings.source_url.removeprefix("sqlite:///"))
    if not settings.source_url.startswith("sqlite:///") or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine_from_url(settings.source_url)
    create_source_schema(engine)
    data = synthetic.generate(engine, persons=persons, municipality=municipality or synthetic.DEFAULT_MUNICIPALITY)
    engine.dispose()
    print(f"Created the demo source database {path}: {sum(data.counts.values())} rows, "
          f"{len(data.defects)} planted defects.")
    return True


def _receiver_connection(receiver_url: str, extra: dict | None) -> str:
    """The Airflow connection `ams_receiver` (JSON, for AIRFLOW_CONN_AMS_RECEIVER) of a receiver URL."""
    host_port = receiver_url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    scheme = receiver_url.split("://", 1)[0]
    return json.dumps({"conn_type": "http", "host": host, "port": int(port), "schema": "ams",
                       "extra": {"timeout": 30, "scheme": scheme, **(extra or {})}})


def run_cycle(settings: Settings, receiver_url: str, *, log_path: Path, connection_extra: dict | None = None,
              dag_id: str = DAG_ID, extra_env: dict[str, str] | None = None) -> str:
    """Run a reporting DAG once through `airflow dags test`; return the run id (read from `settings`'
    state, the municipality's partition when `settings.tenant` is set)."""
    env = _airflow_env(settings)
    env.update(extra_env or {})
    airflow_home = Path(env["AIRFLOW_HOME"])
    if not (airflow_home / "airflow.db").exists():
        print("Preparing Airflow's metadata database (first run only) ...")
        if _airflow(["db", "migrate"], env, log_path) != 0:
            raise SystemExit(f"airflow db migrate failed; see {log_path}")
    env["AIRFLOW_CONN_AMS_RECEIVER"] = _receiver_connection(receiver_url, connection_extra)
    before = set(settings.state().recent_runs(1000))
    print(f"Running one reporting cycle through Airflow (airflow dags test {dag_id}) ...")
    code = _airflow(["dags", "test", dag_id], env, log_path)
    after = [r for r in settings.state().recent_runs(1000) if r not in before]
    if code != 0 or not after:
        print(f"The Airflow run failed (exit code {code}). Its log, with each task's output: {log_path}\n")
        if after:
            _print_summary(settings, after[0])
        raise SystemExit(1)
    return after[0]


def _print_summary(settings: Settings, run_id: str) -> None:
    """Print a run's summary from the state DB: true in every state (failed, outstanding, killed), and
    read-only (the report task writes the run's report files)."""
    from reports.summary import format_summary, run_summary

    print(format_summary(run_summary(run_id, settings)))


@contextmanager
def demo_receiver(db: Path, *, control: bool = False) -> Iterator[tuple[Any, dict]]:
    """The local AMS receiver as in production: TLS, and a WS-Security signature required on every
    request. Its throw-away PKI is made anew in a temporary folder outside the repository and removed
    with it: no private key is ever written inside the project. Yields (receiver, connection extras)."""
    from delivery.security import generate_test_pki
    from receiver.server import ReceiverProcess

    with tempfile.TemporaryDirectory(prefix="ams-demo-pki-") as folder:
        pki = generate_test_pki(Path(folder), name="AMS demo")
        extra = {"ca_bundle": str(pki.ca_cert), "signing_key": str(pki.client_key),
                 "signing_cert": str(pki.client_cert)}
        with ReceiverProcess(db, trust_certs=[pki.client_cert], tls_cert=pki.server_cert, tls_key=pki.server_key,
                             control=control) as receiver:
            print(f"Local AMS receiver listening on {receiver.url} (TLS; requests must be signed"
                  + ("; fault injection on: POST /_control" if control else "") + ")")
            yield receiver, extra


def demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("AMS_CREATE_ARCHIVE_KEY", "1")  # the demo makes its archive key (delivery.archive)
    os.environ.setdefault("AMS_RETRY_DELAY_SECONDS", "0")  # `airflow dags test` would wait out a failed task's retry
    if args.full:
        os.environ["AMS_FULL_READ"] = "1"  # the Airflow run's tasks read it (Settings.from_env)
    if args.municipalities:
        return demo_municipalities(args, [code.strip() for code in args.municipalities.split(",") if code.strip()])
    settings = Settings.from_env()
    ensure_demo_source(settings, args.persons)
    log_path = settings.home / "logs" / "demo.log"
    receiver_db = settings.home / "receiver" / "receiver.sqlite"
    receiver_db.parent.mkdir(parents=True, exist_ok=True)
    with demo_receiver(receiver_db) as (receiver, extra):
        run_id = run_cycle(settings, receiver.url, log_path=log_path, connection_extra=extra)
    print("Local AMS receiver stopped.\n")
    _print_summary(settings, run_id)
    print(f"Airflow log of this run: {log_path}")
    return 0


def _connection_env(conn_id: str, value: str) -> dict[str, str]:
    """An Airflow connection given by the environment (AIRFLOW_CONN_<ID>)."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": value}


def demo_municipalities(args: argparse.Namespace, codes: list[str]) -> int:
    """Several municipalities on one machine: a tenants file of `codes` (var/tenants/demo-tenants.yaml), a
    demo source per municipality, one local receiver (the agency has one), and each municipality's DAG
    `employment_reporting_<kommunekode>` run once through `airflow dags test`."""
    import yaml

    from cycle.tenants import TenantsError, load_tenants

    base = Settings.from_env()
    tenants_path = base.home / "tenants" / "demo-tenants.yaml"
    tenants_path.parent.mkdir(parents=True, exist_ok=True)
    tenants_path.write_text("# Written by `ams-report demo --municipalities`: the demo's municipalities.\n"
                            + yaml.safe_dump({"tenants": [{"kommunekode": code} for code in codes]}, sort_keys=False))
    try:
        tenants = load_tenants(tenants_path)
    except TenantsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    os.environ["AMS_TENANTS_FILE"] = str(tenants_path)
    env: dict[str, str] = {"AMS_TENANTS_FILE": str(tenants_path)}
    per_tenant: dict[str, Settings] = {}
    for tenant in tenants:
        settings = Settings.from_env()
        settings.source_url = f"sqlite:///{base.home / 'source' / f'demo_{tenant.kommunekode}.sqlite'}"
        settings.tenant = settings.sender_municipality = tenant.kommunekode
        ensure_demo_source(settings, args.persons, tenant.kommunekode)
        env.update(_connection_env(tenant.source_conn_id, json.dumps(
            {"conn_type": "generic", "extra": {"sqlalchemy_url": settings.source_url}})))
        per_tenant[tenant.kommunekode] = settings
    log_path = base.home / "logs" / "demo.log"
    receiver_db = base.home / "receiver" / "receiver.sqlite"
    receiver_db.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, str | None] = {}
    with demo_receiver(receiver_db) as (receiver, extra):
        for tenant in tenants:
            env.update(_connection_env(tenant.receiver_conn_id, _receiver_connection(receiver.url, extra)))
        for tenant in tenants:
            print(f"\nMunicipality {tenant.label}:")
            try:  # one municipality's failure does not stop the others
                runs[tenant.kommunekode] = run_cycle(per_tenant[tenant.kommunekode], receiver.url, log_path=log_path,
                                                     connection_extra=extra, dag_id=tenant.dag_id, extra_env=env)
            except SystemExit:
                runs[tenant.kommunekode] = None
    print("Local AMS receiver stopped.")
    for tenant in tenants:
        run_id = runs[tenant.kommunekode]
        print(f"\n=== {tenant.label} ({tenant.dag_id}) ===")
        if run_id is None:
            print(f"The run failed; see {log_path}")
        else:
            _print_summary(per_tenant[tenant.kommunekode], run_id)
    print(f"\nOverview across municipalities: {base.reports_root / 'index.html'}")
    print(f"Tenants file of this demo: {tenants_path}\nAirflow log of these runs: {log_path}")
    return 0 if all(runs.values()) else 1


def ui(args: argparse.Namespace) -> int:
    """The Airflow UI on the demo, to try the operator's path: the demo source, the local receiver
    (TLS, signed requests) and `airflow standalone` with every setting made; Ctrl-C stops them all."""
    import requests

    settings = Settings.from_env()
    ensure_demo_source(settings, args.persons)
    env = _airflow_env(settings)
    home = Path(env["AIRFLOW_HOME"])
    base = f"http://127.0.0.1:{args.port}"
    env.update({
        "AIRFLOW__API__HOST": "127.0.0.1",  # the demo's UI is for this machine only
        "AIRFLOW__API__PORT": str(args.port),
        "AIRFLOW__API__BASE_URL": base,
        # The log servers' fixed default ports (8793, 8794) may be taken by another Airflow here.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # standalone runs `airflow`
    })
    log_path = settings.home / "logs" / "ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    receiver_db = settings.home / "receiver" / "receiver.sqlite"
    receiver_db.parent.mkdir(parents=True, exist_ok=True)
    stop = {"now": False}

    def _stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C too, explicitly: a process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and Python then raises no KeyboardInterrupt (Airflow would be left running).
    signal.signal(signal.SIGINT, _stop)
    with demo_receiver(receiver_db, control=args.control) as (receiver, extra):
        env["AIRFLOW_CONN_AMS_RECEIVER"] = _receiver_connection(receiver.url, extra)
        airflow = str(Path(sys.executable).with_name("airflow"))
        with log_path.open("ab") as log:
            # Its own process group: Ctrl-C reaches us, and we stop the scheduler, API server and
            # DAG processor standalone starts, all together.
            proc = subprocess.Popen([airflow, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            print(f"Starting Airflow (airflow standalone; its log: {log_path}) ...", flush=True)
            deadline = time.monotonic() + args.startup_timeout
            while not stop["now"]:
                if proc.poll() is not None:
                    print(f"airflow standalone exited with code {proc.returncode}; see {log_path}")
                    return 1
                try:
                    if requests.get(f"{base}/api/v2/monitor/health", timeout=3).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    print(f"Airflow did not answer within {args.startup_timeout} s; see {log_path}")
                    return 1
                time.sleep(1)
            else:
                return 0
            print(f"\nAirflow UI: {base}   (log in as admin; the password is in "
                  f"{home / 'simple_auth_manager_passwords.json.generated'})\n"
                  f"DAG: {DAG_ID}. Trigger it, watch it, clear a failed area.deliver: docs/operations.md.\n"
                  "Ctrl-C stops Airflow and the receiver.", flush=True)
            while not stop["now"] and proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            _stop_group(proc)
    print("Stopped Airflow and the local AMS receiver.")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def summary(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    runs = settings.state().recent_runs(1)
    run_id = args.run_id or (runs[0] if runs else None)
    if run_id is None:
        print("No run recorded yet: run `make run` first.")
        return 1
    _print_summary(settings, run_id)
    return 0


def docs(args: argparse.Namespace) -> int:
    from expectations.data_docs import VENDOR_DIR, vendor_readme
    from transforms.fields_doc import write_fields_doc
    from transforms.payload import write_schema

    write_schema()
    path = write_fields_doc()
    (VENDOR_DIR / "README.md").write_text(vendor_readme(), encoding="utf-8")
    print(f"Wrote the XSDs and WSDLs of every interface version (schemas/), {path} and {VENDOR_DIR / 'README.md'}")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Every archived batch against its manifest and the state DB: missing batches, orphan folders,
    acknowledged batches not archived yet."""
    from delivery.archive import verify_archive

    settings = Settings.from_env()
    problems = verify_archive(settings.vault(), settings.archive_dir, settings.state().all_batches(),
                              retention_days=settings.archive_retention_days)
    for p in problems:
        print(p)
    print("archive OK" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def rotate_key(args: argparse.Namespace) -> int:
    """Re-encrypt the archive with the newest archive key (the first of AMS_ARCHIVE_KEY or the key file)."""
    from delivery.archive import rotate_archive

    settings = Settings.from_env()
    vault = settings.vault()
    count = rotate_archive(vault, settings.archive_dir)
    print(f"Re-encrypted {count} archived file(s) with key {vault.key_id}. Older keys can be removed once "
          "`ams-report verify-archive` passes without them.")
    return 0


def requeue(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    settings.tenant = args.municipality
    count = settings.state().requeue_rejected(args.area)
    who = f"Municipality {args.municipality}, area" if args.municipality else "Area"
    print(f"{who} {args.area}: {count} record(s) the receiver refused will be sent again by the next run.")
    return 0


def airflow_connection_ids(settings: Settings) -> set[str] | None:
    """The ids of the Airflow connections that exist: AIRFLOW_CONN_<ID> variables and Airflow's store
    (`airflow connections list`); None when Airflow's store cannot be read."""
    found = {name.removeprefix("AIRFLOW_CONN_").lower() for name in os.environ if name.startswith("AIRFLOW_CONN_")}
    airflow = str(Path(sys.executable).with_name("airflow"))
    done = subprocess.run([airflow, "connections", "list", "--output", "json"], capture_output=True, text=True,
                          env=_airflow_env(settings))
    if done.returncode != 0:
        return None
    try:
        rows = json.loads(done.stdout[done.stdout.find("["):] or "[]")
    except json.JSONDecodeError:
        return None
    return found | {str(r.get("conn_id")).lower() for r in rows if isinstance(r, dict)}


def tenants_check(args: argparse.Namespace) -> int:
    """Validate the tenants file; then check that every connection it names exists (unless told not to)."""
    from cycle.tenants import TENANTS_FILE_ENV, read_tenants, tenants_file

    path = args.file or tenants_file()
    if path is None:
        print(f"No tenants file: set {TENANTS_FILE_ENV} or pass --file. Without one the deployment reports for "
              "one municipality (AMS_SENDER_MUNICIPALITY), as the demo does.", file=sys.stderr)
        return 2
    tenants, problems = read_tenants(path)
    if not args.no_connections and tenants:
        existing = airflow_connection_ids(Settings.from_env())
        if existing is None:
            problems.append("connections: Airflow's connection store could not be read (`airflow connections "
                            "list` failed); the connections were not checked")
        else:
            for t in tenants:
                for field, conn_id in t.connection_ids().items():
                    if conn_id.lower() not in existing:
                        problems.append(f"municipality {t.label}: field '{field}': there is no Airflow connection "
                                        f"'{conn_id}' (AIRFLOW_CONN_{conn_id.upper()} or in Airflow's store)")
    for t in tenants:
        channels = ", ".join(f"area {a} {c}" for a, c in t.channels.items()) or "web service"
        print(f"  {t.kommunekode:>3} {t.name:<20} {t.dag_id:<28} schedule {t.schedule or 'manual'}; areas "
              f"{','.join(map(str, t.areas))}; {channels}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"{path}: {len(tenants)} municipality(ies) ready" + (f", {len(problems)} problem(s)" if problems else ""))
    return 1 if problems else 0


def tenants_adopt(args: argparse.Namespace) -> int:
    """Move today's single-municipality state into one municipality's partition (docs/tenants.md)."""
    from delivery.state import adopt_unpartitioned

    settings = Settings.from_env()
    if args.kommunekode != settings.sender_municipality:
        print(f"Refused: the state to adopt was reported as municipality {settings.sender_municipality} "
              f"(AMS_SENDER_MUNICIPALITY), not {args.kommunekode}.", file=sys.stderr)
        return 2
    try:
        where = adopt_unpartitioned(settings.state_url, args.kommunekode)
    except ValueError as exc:
        print(f"Refused: {exc}", file=sys.stderr)
        return 1
    print(f"The single-municipality state is now municipality {args.kommunekode}'s: {where}. Its delivered "
          "records keep their ids.")
    return 0


def interface_change(args: argparse.Namespace) -> int:
    from delivery.interface_change import describe_change
    from transforms.registry import get_version

    text, notice = describe_change(get_version(args.old), get_version(args.new), args.announced, args.effective,
                                   Settings.from_env().state_url)
    print(text)
    return 0 if notice.valid else 1


def _connection_from_uri(uri: str) -> dict:
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    extra = json.loads(query.pop("__extra__")) if "__extra__" in query else query
    return {"conn_type": parts.scheme, "host": unquote(parts.hostname or ""), "port": parts.port,
            "schema": unquote(parts.path.lstrip("/")), "extra": extra}


def receiver_connection(conn_id: str, settings: Settings) -> dict:
    """An Airflow connection as a dict (conn_type, host, port, schema, extra): from AIRFLOW_CONN_<ID>
    (JSON or URI), else from Airflow's own store (`airflow connections get`)."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw is None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        done = subprocess.run([airflow, "connections", "get", conn_id, "--output", "json"], capture_output=True,
                              text=True, env=_airflow_env(settings))
        if done.returncode != 0:
            raise SystemExit(f"There is no Airflow connection '{conn_id}' (neither AIRFLOW_CONN_{conn_id.upper()} "
                             "nor in Airflow's store). Create it for the agency's test endpoint "
                             "(docs/operations.md, § 46).")
        raw = done.stdout.strip()
        found = json.loads(raw)
        conn = found[0] if isinstance(found, list) else found
    elif raw.lstrip().startswith("{"):
        conn = json.loads(raw)
    else:
        conn = _connection_from_uri(raw)
    extra = conn.get("extra") or {}
    conn["extra"] = json.loads(extra) if isinstance(extra, str) else dict(extra)
    return conn


def conformance(args: argparse.Namespace) -> int:
    from delivery.client import client_from_connection
    from delivery.conformance import TEST_ENDPOINT_FLAG, run_conformance
    from transforms.registry import get_version, version_in_force

    settings = Settings.from_env()
    conn = receiver_connection(args.receiver, settings)
    extra = conn["extra"]
    if str(extra.pop(TEST_ENDPOINT_FLAG, "")).strip().lower() not in ("true", "1", "yes"):
        print(f"Refused: the connection '{args.receiver}' is not marked as a test endpoint. The conformance run "
              f"(§ 46) sends synthetic records and defects, so it only goes to the agency's test endpoint: mark that "
              f'connection with the extra {{"{TEST_ENDPOINT_FLAG}": true}}. Never mark the production connection.',
              file=sys.stderr)
        return 2
    version = get_version(args.interface) if args.interface else version_in_force(datetime.now(UTC).date())
    client = client_from_connection(conn.get("host"), conn.get("port"), conn.get("schema"), extra)
    print(f"Conformance run (§ 46) against {client.endpoint} in interface version {version.name} ...")
    report = run_conformance(client, connection_id=args.receiver, endpoint=client.endpoint, version=version,
                             sender_municipality=settings.sender_municipality)
    out = args.out or settings.home / "conformance" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path, html_path = report.write(out)
    for check in report.checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.id:34} {check.outcome}")
    failed = [c.id for c in report.checks if not c.passed]
    print(f"{len(report.checks) - len(failed)} of {len(report.checks)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "; the test before go-live PASSED"))
    print(f"Report: {html_path} and {json_path}")
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ams-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="one daily cycle on the embedded defaults")
    p.add_argument("--persons", type=int, default=5000, help="size of the demo source (first run only)")
    p.add_argument("--municipalities", metavar="KODE,KODE,...",
                   help="several municipalities on this machine: a tenants file of these kommunekoder, a demo "
                        "source each, one DAG each (employment_reporting_<kommunekode>)")
    p.add_argument("--full", action="store_true",
                   help="read the whole source, not only what changed since the last run (the weekly safety "
                        "net does this by itself: AMS_FULL_READ_EVERY_DAYS, default 7)")
    p.set_defaults(func=demo)
    p = sub.add_parser("ui", help="the Airflow UI on the demo (airflow standalone and the local receiver)")
    p.add_argument("--port", type=int, default=8080, help="the Airflow UI's port")
    p.add_argument("--persons", type=int, default=5000, help="size of the demo source (first run only)")
    p.add_argument("--control", action="store_true",
                   help="let the local receiver take fault-injection commands (POST /_control), to try a re-run")
    p.add_argument("--startup-timeout", type=float, default=300)
    p.set_defaults(func=ui)
    p = sub.add_parser("summary", help="print a run's summary")
    p.add_argument("run_id", nargs="?")
    p.set_defaults(func=summary)
    sub.add_parser("docs", help="regenerate the XSD and docs/fields.md").set_defaults(func=docs)
    sub.add_parser("verify-archive", help="check the archive against its manifests and the state DB"
                   ).set_defaults(func=verify)
    sub.add_parser("rotate-archive-key", help="re-encrypt the archive with the newest archive key"
                   ).set_defaults(func=rotate_key)
    p = sub.add_parser("requeue", help="send an area's records the receiver refused again on the next run")
    p.add_argument("--area", type=int, required=True)
    p.add_argument("--municipality", metavar="KOMMUNEKODE", help="with a tenants file: the municipality")
    p.set_defaults(func=requeue)
    p = sub.add_parser("interface-change", help="check a § 49 notice and show what an interface change means")
    p.add_argument("--from", dest="old", required=True, metavar="VERSION", help="the version in force, e.g. v1")
    p.add_argument("--to", dest="new", required=True, metavar="VERSION", help="the announced version, e.g. v2")
    p.add_argument("--announced", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="the date of the notice")
    p.add_argument("--effective", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="the date the new version takes effect")
    p.set_defaults(func=interface_change)
    p = sub.add_parser("conformance", help="the test before go-live (§ 46) against the agency's test endpoint")
    p.add_argument("--receiver", required=True, metavar="CONN_ID",
                   help='the Airflow connection of the test endpoint (extra {"test_endpoint": true})')
    p.add_argument("--interface", metavar="VERSION", help="interface version (default: the one in force today)")
    p.add_argument("--out", type=Path, help="folder for the report (default var/conformance/<time>)")
    p.set_defaults(func=conformance)
    p = sub.add_parser("tenants", help="the municipalities of a tenants file (AMS_TENANTS_FILE)")
    tenants_sub = p.add_subparsers(dest="tenants_command", required=True)
    q = tenants_sub.add_parser("check", help="validate the tenants file and check its connections exist")
    q.add_argument("--file", type=Path, help="the tenants file (default: AMS_TENANTS_FILE)")
    q.add_argument("--no-connections", action="store_true", help="validate the file only")
    q.set_defaults(func=tenants_check)
    q = tenants_sub.add_parser("adopt", help="move the single-municipality state into a municipality's partition")
    q.add_argument("kommunekode")
    q.set_defaults(func=tenants_adopt)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

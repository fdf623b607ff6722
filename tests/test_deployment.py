"""docker-compose.yml and the Dockerfile stay correct (no Docker engine runs here: parse them)."""

import json
import re

import yaml

from conftest import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_airflow_3_components_on_postgres():
    services = _compose()["services"]
    assert {"postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        env = services[name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
        assert env["AMS_STATE_URL"].startswith("postgresql+psycopg://")
        assert "./dags:/opt/airflow/dags:ro" in services[name]["volumes"]
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-init"]["command"] == ["airflow", "db", "migrate"]


def _workers(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("command", [])[:3] == ["airflow", "celery", "worker"]}


def test_compose_runs_celery_with_redis_and_two_workers():
    services = _compose()["services"]
    workers = _workers(services)
    assert len(workers) == 2, f"two Celery workers expected, found {sorted(workers)}"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    airflow = [n for n, s in services.items() if s.get("command", [""])[0] == "airflow"]
    for name in airflow:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        # The archive and reports go to shared object storage, which must be set (no silent local default).
        assert env["AMS_OBJECT_STORE_URL"].startswith("${AMS_OBJECT_STORE_URL:?"), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name, worker in workers.items():
        assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy", name
        assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
        assert "inspect ping" in " ".join(worker["healthcheck"]["test"]), name
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_workers_share_no_volume_for_pipeline_data():
    """Workers share nothing but the databases and the object storage: no writable volume in common
    (the code and the trial PKI are mounted read-only), and none at all on AMS_HOME."""
    services = _compose()["services"]
    workers = _workers(services)
    writable = {name: {_mount(v)[0] for v in w.get("volumes", []) if not str(v).endswith(":ro")}
                for name, w in workers.items()}
    first, second = writable.values()
    assert not first & second, f"workers share writable volumes: {first & second}"
    for name, worker in workers.items():
        home = worker["environment"]["AMS_HOME"]
        assert all(_mount(v)[1] != home and not home.startswith(_mount(v)[1] + "/")
                   for v in worker.get("volumes", [])), f"{name}: AMS_HOME is on a volume"
    assert "ams-var" not in _compose().get("volumes", {}), "the shared var volume is back"


def test_compose_holds_no_secrets():
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "AMS_ARCHIVE_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "MINIO_ROOT_PASSWORD",
                "AIRFLOW_CONN_AMS_OBJECT_STORE"):
        for value in re.findall(rf"{key}: (\S+)", text):
            assert value.startswith("${"), f"{key} must come from the environment, not the file"


def _mount(volume: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; a source `${VAR:-default}` gives its default."""
    parts = volume.rsplit(":", 2)
    if parts[-1] in ("ro", "rw"):
        parts = parts[:-1]
    source, target = ":".join(parts[:-1]), parts[-1]
    default = re.fullmatch(r"\$\{\w+:-(.*)\}", source)
    return (default.group(1) if default else source), target


def test_compose_mounts_files_that_exist():
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = _mount(volume)[0]
            if source.startswith("./") and not source.startswith("./var/"):  # var/ is made by make (ignored)
                assert (ROOT / source).exists(), source


def _receivers() -> dict[str, list[str]]:
    return {name: [str(a) for a in service["command"]] for name, service in _compose()["services"].items()
            if "receiver.server" in service.get("command", [])}


def test_compose_trial_receiver_serves_tls_and_checks_signatures():
    """No receiver listens beyond loopback in plain HTTP, none takes fault injection, none is published
    on the host except on loopback."""
    services = _compose()["services"]
    assert _receivers(), "the trial receiver is gone: update this test"
    for name, command in _receivers().items():
        options = dict(zip(command, command[1:], strict=False))
        if options.get("--host", "127.0.0.1") not in ("127.0.0.1", "::1", "localhost"):
            assert "--tls-cert" in options and "--tls-key" in options, f"{name} serves plain HTTP on the network"
        assert "--trust-cert" in options, f"{name} does not check request signatures"
        assert "--control" not in command, f"{name} enables fault injection"
        mounts = {_mount(v)[1] for v in services[name].get("volumes", [])}
        for flag in ("--tls-cert", "--tls-key", "--trust-cert"):
            assert any(options[flag].startswith(m + "/") for m in mounts), f"{name}: {flag} is not on a mounted folder"
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} is published beyond loopback: {port}"


def test_compose_example_receiver_connection_uses_https_and_signs():
    text = (ROOT / "docker-compose.yml").read_text()
    examples = [json.loads(m) for m in re.findall(r"^\s*#\s*(\{\"conn_type\".*\})\s*$", text, re.M)]
    assert examples, "the example AIRFLOW_CONN_AMS_RECEIVER comment is gone: update this test"
    receiver_hosts = set(_receivers())
    for conn in examples:
        extra = conn["extra"]
        assert extra.get("scheme", "https") == "https" and "verify_tls" not in extra
        assert conn["host"] in receiver_hosts
        assert extra["signing_cert"] and (extra.get("signing_key") or extra.get("private_key"))
        assert "BEGIN" not in json.dumps(conn)  # paths, never key material in the file
    assert "http://ams-receiver" not in text


def test_dockerfile_uses_the_pinned_airflow_and_constraints():
    text = (ROOT / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"FROM apache/airflow:{pinned}-python3.11" in text
    assert "-c /opt/ams/constraints.txt" in text

"""docker-compose.yml and the Dockerfile stay correct (no Docker engine runs here: parse them)."""

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


def test_compose_holds_no_secrets():
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("POSTGRES_PASSWORD", "AMS_ARCHIVE_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        for value in re.findall(rf"{key}: (\S+)", text):
            assert value.startswith("${"), f"{key} must come from the environment, not the file"


def test_compose_mounts_files_that_exist():
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_dockerfile_uses_the_pinned_airflow_and_constraints():
    text = (ROOT / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"FROM apache/airflow:{pinned}-python3.11" in text
    assert "-c /opt/ams/constraints.txt" in text

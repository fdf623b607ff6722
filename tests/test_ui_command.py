"""`make ui` (`ams-report ui`): the Airflow UI on the demo comes up with the receiver and every setting
made, says where to log in, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=3, verify=False).status_code < 500
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_ui_starts_airflow_and_the_receiver_and_ctrl_c_stops_both(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMS_", "AIRFLOW_"))}
    env.update({"AMS_HOME": str(tmp_path / "var"), "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
                "PYTHONUNBUFFERED": "1"})
    command = [str(Path(sys.executable).with_name("ams-report")), "ui", "--port", str(port), "--persons", "150"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not any("Ctrl-C stops" in line for line in lines):
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            if ready:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    break
                lines.append(line.strip())
        output = "\n".join(lines)
        assert f"Airflow UI: http://127.0.0.1:{port}" in output, output
        assert "simple_auth_manager_passwords.json.generated" in output and "Ctrl-C stops" in output
        receiver_url = next(line.split(" on ", 1)[1].split(" ")[0] for line in lines if "receiver listening" in line)
        assert receiver_url.startswith("https://")
        assert _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health")
        assert _answers(receiver_url.replace("/ams", "/_health"))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0 and "Stopped Airflow and the local AMS receiver" in rest
        time.sleep(2)
        assert not _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health")
        assert not _answers(receiver_url.replace("/ams", "/_health"))
    finally:
        if proc.poll() is None:  # stop it the way a person would, so it stops what it started
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

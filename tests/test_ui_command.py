"""`make ui` (`ams-report ui`): the Airflow UI on the demo comes up with the receiver and every setting
made, says where to log in, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import free_port


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=3, verify=False).status_code < 500
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_ui_starts_airflow_and_the_receiver_and_ctrl_c_stops_both(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMS_", "AIRFLOW_"))}
    env.update({"AMS_HOME": str(tmp_path / "var"), "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
                "PYTHONUNBUFFERED": "1"})
    command = [str(Path(sys.executable).with_name("ams-report")), "ui", "--port", str(port), "--persons", "150"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in proc.stdout], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not any("Ctrl-C stops" in line for line in seen):
            try:
                seen.append(lines.get(timeout=5))
            except queue.Empty:
                if proc.poll() is not None:
                    break
        output = "\n".join(seen)

        assert f"Airflow UI: http://127.0.0.1:{port}" in output, output
        assert "simple_auth_manager_passwords.json.generated" in output and "Ctrl-C stops" in output
        receiver_url = next(line.split(" on ", 1)[1].split(" ")[0] for line in seen if "receiver listening" in line)
        assert receiver_url.startswith("https://")
        assert _answers(f"http://127.0.0.1:{port}/api/v2/monitor/health")
        assert _answers(receiver_url.replace("/ams", "/_health"))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0
        reader.join(timeout=10)
        rest = []
        while not lines.empty():
            rest.append(lines.get())
        assert "Stopped Airflow and the local AMS receiver." in rest
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

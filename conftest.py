"""Test-session environment, set before anything imports Airflow or Great Expectations.

Airflow gets its own home (and SQLite metadata DB) under a temporary folder, the project's dags/ and
plugins/, and no example DAGs; the pipeline's own state lives in per-test folders.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_HOME = Path(tempfile.mkdtemp(prefix="ams-test-airflow-"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
# Most tests talk to an in-thread receiver over plain HTTP without signatures: allow that here only.
# Tests of the fail-closed policy unset it (monkeypatch.delenv).
os.environ.setdefault("AMS_INSECURE_FOR_TESTS", "1")
os.environ.setdefault("NO_PROXY", "*")
# The tests make throw-away archive keys; outside the demo and the tests a missing key is an error.
os.environ.setdefault("AMS_CREATE_ARCHIVE_KEY", "1")
# Every task retries once (dags/: for a lost worker); dag.test() would wait the production delay (300 s)
# before the retry of a task that fails on purpose in a test.
os.environ.setdefault("AMS_RETRY_DELAY_SECONDS", "0")
for path in (ROOT / "plugins", ROOT / "dags"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

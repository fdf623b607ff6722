"""The AMS reporting plugin for Airflow 3.3: the analysts' data-quality pages in the Airflow UI.

A top-level module of the plugins folder, so Airflow's plugin manager finds it. It registers
- a FastAPI app (`fastapi_apps`), mounted by the API server at /ams-reports: the reports folder,
  read-only, behind Airflow's login (plugins/ams_reporting/ui.py);
- a nav link "AMS data quality" (`external_views`, destination "nav"): the UI shows the app in a
  frame at /plugin/ams-data-quality.

Importing this module builds the (empty-handed) app and touches no database and no file.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from ams_reporting.ui import APP_NAME, URL_PREFIX, create_app, external_view


class AmsReportingPlugin(AirflowPlugin):
    name = "ams_reporting"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": APP_NAME}]
    external_views = [external_view()]

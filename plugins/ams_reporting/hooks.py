"""Hooks: where the pipeline's configuration comes from inside Airflow.

The source database and the agency's service are Airflow Connections (`ams_source`,
`ams_receiver`), so production points them at the real systems without code changes; without a
connection the AMS_* environment (and the embedded demo defaults) apply.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from delivery.pipeline import Settings


def _connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


class AmsSourceHook(BaseHook):
    """The municipality's case-system database (any SQLAlchemy URL)."""

    conn_name_attr = "ams_source_conn_id"
    default_conn_name = "ams_source"
    conn_type = "generic"
    hook_name = "AMS source database"

    def __init__(self, conn_id: str = default_conn_name):
        super().__init__()
        self.conn_id = conn_id

    def sqlalchemy_url(self, fallback: str) -> str:
        conn = _connection(self.conn_id)
        if conn is None:
            return fallback
        extra = conn.extra_dejson
        if extra.get("sqlalchemy_url"):
            return extra["sqlalchemy_url"]
        driver = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg",
                  "mssql": "mssql+pyodbc", "oracle": "oracle+oracledb"}.get(conn.conn_type, conn.conn_type)
        auth = f"{conn.login}:{conn.password}@" if conn.password else (f"{conn.login}@" if conn.login else "")
        port = f":{conn.port}" if conn.port else ""
        return f"{driver}://{auth}{conn.host}{port}/{conn.schema or ''}"


class AmsReceiverHook(BaseHook):
    """The agency's SOAP service (or the local AMS receiver): WSDL, endpoint, time-out."""

    conn_name_attr = "ams_receiver_conn_id"
    default_conn_name = "ams_receiver"
    conn_type = "http"
    hook_name = "AMS web service"

    def __init__(self, conn_id: str = default_conn_name):
        super().__init__()
        self.conn_id = conn_id

    def get_client(self):
        from delivery.client import AmsClient

        conn = _connection(self.conn_id)
        if conn is None:
            wsdl = os.environ.get("AMS_WSDL_URL")
            if not wsdl:
                raise RuntimeError(
                    f"No Airflow connection '{self.conn_id}' and no AMS_WSDL_URL: the pipeline does not know "
                    "where to deliver. Create the connection (docs/operations.md, 'Configuration').")
            return AmsClient(wsdl, endpoint=os.environ.get("AMS_ENDPOINT_URL"),
                             timeout=float(os.environ.get("AMS_TIMEOUT", 30)))
        extra = conn.extra_dejson
        scheme = extra.get("scheme", "https" if extra.get("tls") else "http")
        base = f"{scheme}://{conn.host}{f':{conn.port}' if conn.port else ''}/{conn.schema or 'ams'}"
        return AmsClient(extra.get("wsdl", f"{base}?wsdl"), endpoint=extra.get("endpoint", base),
                         timeout=float(extra.get("timeout", 30)))


def settings() -> Settings:
    """Settings from the environment, with the source connection applied when it exists."""
    result = Settings.from_env()
    result.source_url = AmsSourceHook().sqlalchemy_url(result.source_url)
    return result

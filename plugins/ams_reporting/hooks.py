"""Hooks: where the pipeline's configuration comes from inside Airflow.

The source database and the agency's service are Airflow Connections (`ams_source`,
`ams_receiver`), so production points them at the real systems without code changes; without a
connection the AMS_* environment (and the embedded demo defaults) apply.

The delivery channel of each area is `AMS_CHANNEL_AREA<N>` (`webservice`, the default, or `sftp`),
checked against the channels the registry allows for the area: only areas 1 and 2 may use the file
channel (§ 51); areas 3, 4 and 5 are web service only (§§ 17, 22, 28, stk. 2). The file channel
uses the SFTP connection `ams_sftp` (extra `remote_dir`, default `inbox`).

With a tenants file (AMS_TENANTS_FILE, cycle/tenants.py) each municipality's tasks pass its
kommunekode: its own source, receiver and SFTP connections and channels from its entry, checked when
the task starts (a missing connection fails that municipality's task, not the DAG file).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from cycle.channels import CHANNEL_NAMES, ChannelNotAllowed, resolve_channel  # noqa: F401 (re-exported)
from cycle.settings import Settings
from cycle.tenants import Tenant, find_tenant
from transforms.registry import WEBSERVICE

log = logging.getLogger(__name__)


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
        """A zeep client with the connection's WSDL, endpoint, time-out, TLS trust and signing key.

        Extras (all optional): wsdl, endpoint, timeout, scheme (default "https"), ca_bundle, verify_tls,
        private_key (PEM text or a path; Airflow masks it) or signing_key (a file path only),
        private_key_passphrase, signing_cert, client_cert, client_key, max_reply_bytes. Certificates are
        paths or PEM text; AMS_SIGNING_KEY / AMS_SIGNING_CERT / AMS_CA_BUNDLE fill what is missing.
        The client refuses plain HTTP and unsigned requests unless AMS_INSECURE_FOR_TESTS=1 (tests only).
        """
        from delivery.client import client_from_config, client_from_connection

        conn = _connection(self.conn_id)
        if conn is None:
            wsdl = os.environ.get("AMS_WSDL_URL")
            if not wsdl:
                raise RuntimeError(
                    f"No Airflow connection '{self.conn_id}' and no AMS_WSDL_URL: the pipeline does not know "
                    "where to deliver. Create the connection (docs/operations.md, 'Configuration').")
            return client_from_config({"wsdl": wsdl, "endpoint": os.environ.get("AMS_ENDPOINT_URL"),
                                       "timeout": os.environ.get("AMS_TIMEOUT", 30)})
        return client_from_connection(conn.host, conn.port, conn.schema, conn.extra_dejson, conn_id=self.conn_id)


def object_store_root() -> Any | None:
    """The shared store's root as an ObjectStoragePath: AMS_OBJECT_STORE_URL with the credentials of the
    connection AMS_OBJECT_STORE_CONN_ID (none: the URL's own, e.g. file:// or an instance role); None
    when no URL is set (the local AMS_HOME, today's layout)."""
    url = os.environ.get("AMS_OBJECT_STORE_URL", "")
    if not url:
        return None
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url, conn_id=os.environ.get("AMS_OBJECT_STORE_CONN_ID") or None)


class TenantConfigError(RuntimeError):
    """A municipality of the tenants file cannot run: its entry or one of its connections is missing."""


def tenant(kommunekode: str) -> Tenant:
    """The municipality's entry in the tenants file (AMS_TENANTS_FILE), read again at every task start
    so that a fixed file takes effect without a restart."""
    try:
        return find_tenant(kommunekode)
    except KeyError as exc:
        raise TenantConfigError(str(exc.args[0])) from None


def _tenant_connection(who: Tenant, field: str, conn_id: str) -> Any:
    """A tenant's connection, or an error naming the municipality, the field and the connection: a
    tenant never falls back to the single-municipality defaults (that would report another
    municipality's data, or sign with another municipality's certificate)."""
    conn = _connection(conn_id)
    if conn is None:
        raise TenantConfigError(
            f"municipality {who.label}: there is no Airflow connection '{conn_id}' ({field} of its entry in "
            f"the tenants file). Create it (docs/tenants.md), or correct {field}; `ams-report tenants check` "
            "lists every missing connection. The other municipalities are not affected.")
    return conn


def settings(kommunekode: str | None = None) -> Settings:
    """Settings from the environment, with the source connection applied when it exists.

    For a municipality of the tenants file (`kommunekode`): its source connection (which must exist),
    sender_municipality = its kommunekode, and Settings.tenant set, so its state is its own partition."""
    result = Settings.from_env()
    result.object_store = object_store_root()
    if kommunekode is None:
        result.source_url = AmsSourceHook().sqlalchemy_url(result.source_url)
        return result
    who = tenant(kommunekode)
    _tenant_connection(who, "source_conn_id", who.source_conn_id)
    result.source_url = AmsSourceHook(who.source_conn_id).sqlalchemy_url("")
    result.sender_municipality = who.kommunekode
    result.tenant = who.kommunekode
    return result


# --- delivery channel per area --------------------------------------------------------------------

CHANNEL_ENV = "AMS_CHANNEL_AREA{number}"
SFTP_CONN_ID = "ams_sftp"


def channel_for_area(area_number: int) -> str:
    """The area's delivery channel: `AMS_CHANNEL_AREA<N>` (default web service), if the registry allows it."""
    variable = CHANNEL_ENV.format(number=area_number)
    return resolve_channel(area_number, os.environ.get(variable, ""), variable)


def client_for_area(area_number: int, kommunekode: str | None = None):
    """The delivery client of an area's channel: AmsClient (web service) or SftpFileDropClient (§ 51).
    For a municipality of the tenants file: its channel, its receiver (its certificate) or SFTP connection."""
    if kommunekode is not None:
        return _tenant_client(tenant(kommunekode), area_number)
    channel = channel_for_area(area_number)
    if channel == WEBSERVICE:
        return AmsReceiverHook().get_client()
    conn = _connection(SFTP_CONN_ID)
    if conn is None:
        raise RuntimeError(
            f"Area {area_number} is set to the file channel ({CHANNEL_ENV.format(number=area_number)}=sftp) but "
            f"there is no Airflow connection '{SFTP_CONN_ID}'. Create it (conn type sftp: host, port, login, extra "
            '{"key_file": ..., "host_key": ..., "remote_dir": "inbox"}) or switch the area back to webservice.')
    return _sftp_client(area_number, SFTP_CONN_ID, conn)


def _sftp_client(area_number: int, conn_id: str, conn: Any):
    from ams_reporting.sftp import DEFAULT_REMOTE_DIR, SftpFileDropClient

    extra = conn.extra_dejson
    remote_dir = extra.get("remote_dir") or DEFAULT_REMOTE_DIR
    log.info("area %s is delivered as files over SFTP (§ 51) to %s:%s/%s", area_number, conn.host, conn.port or 22,
             remote_dir)
    return SftpFileDropClient(conn_id, remote_dir=remote_dir, timeout=float(extra.get("timeout", 30)))


def _tenant_client(who: Tenant, area_number: int):
    if who.channel(area_number) == WEBSERVICE:
        _tenant_connection(who, "receiver_conn_id", who.receiver_conn_id)  # no fall-back to AMS_WSDL_URL
        return AmsReceiverHook(who.receiver_conn_id).get_client()
    conn = _tenant_connection(who, "sftp_conn_id", who.sftp_conn_id)
    return _sftp_client(area_number, who.sftp_conn_id, conn)

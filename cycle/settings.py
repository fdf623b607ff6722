"""Where the pipeline's things are and how big its steps are: `Settings`, read from the AMS_* variables.

Plain code (no Airflow import): the Airflow hooks (plugins/ams_reporting/hooks.py) apply connections on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from delivery.archive import Vault, load_keys
from delivery.state import StateStore, tenant_suffix
from transforms.registry import REPO_ROOT, Area


@dataclass
class Settings:
    """Where things are and how big the steps are. `from_env` reads the AMS_* variables."""

    home: Path = REPO_ROOT / "var"
    source_url: str = ""
    state_url: str = ""
    batch_size: int = 5000
    chunksize: int = 50_000
    sender_municipality: str = "101"
    data_docs: bool = True
    archive_retention_days: int | None = None  # None: keep everything
    delivery_attempts: int = 4
    backoff_seconds: float = 1.0
    lock_wait_seconds: float = 60.0
    full_read: bool = False  # read the whole source, not only its changes (`ams-report demo --full`)
    full_read_every_days: int = 7  # the safety net: a full read at least this often
    # The municipality (kommunekode) this run reports for when the deployment serves several (a tenants
    # file, AMS_TENANTS_FILE); None: the single-municipality layout, where nothing is partitioned.
    tenant: str | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("AMS_HOME", REPO_ROOT / "var"))
        return cls(
            home=home,
            source_url=os.environ.get("AMS_SOURCE_URL", f"sqlite:///{home / 'source' / 'demo.sqlite'}"),
            state_url=os.environ.get("AMS_STATE_URL", f"sqlite:///{home / 'state' / 'state.sqlite'}"),
            batch_size=int(os.environ.get("AMS_BATCH_SIZE", 5000)),
            chunksize=int(os.environ.get("AMS_CHUNK_SIZE", 50_000)),
            sender_municipality=os.environ.get("AMS_SENDER_MUNICIPALITY", "101"),
            data_docs=os.environ.get("AMS_DATA_DOCS", "1") not in ("0", "false", "no"),
            archive_retention_days=int(os.environ["AMS_ARCHIVE_RETENTION_DAYS"])
            if os.environ.get("AMS_ARCHIVE_RETENTION_DAYS") else None,
            delivery_attempts=int(os.environ.get("AMS_DELIVERY_ATTEMPTS", 4)),
            backoff_seconds=float(os.environ.get("AMS_BACKOFF_SECONDS", 1.0)),
            lock_wait_seconds=float(os.environ.get("AMS_LOCK_WAIT_SECONDS", 60)),
            full_read=os.environ.get("AMS_FULL_READ", "0").lower() in ("1", "true", "yes"),
            full_read_every_days=int(os.environ.get("AMS_FULL_READ_EVERY_DAYS", 7)),
        )

    @property
    def staging_dir(self) -> Path:
        # A tenant's own folder: a preparation removes the staging folders its own state does not know,
        # which must never be another municipality's payloads.
        return self.home / "staging" if self.tenant is None else self.home / "staging" / tenant_suffix(self.tenant)

    @property
    def archive_dir(self) -> Path:
        return Path(os.environ.get("AMS_ARCHIVE_DIR", self.home / "archive"))

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def vault(self) -> Vault:
        return Vault(load_keys(self.home / "keys" / "archive.key"))

    def batch_staging(self, area: Area, batch_id: str) -> Path:
        """The staging folder of one batch: its payload, then its receipt (and lookup), until archived."""
        return self.staging_dir / area.code / batch_id

    def state(self) -> StateStore:
        if self.state_url.startswith("sqlite:///"):
            Path(self.state_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return StateStore(self.state_url, tenant=self.tenant)  # a tenant's own partition (delivery.state)

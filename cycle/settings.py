"""Where the pipeline's things are and how big its steps are: `Settings`, read from the AMS_* variables.

Plain code (no Airflow import): the Airflow hooks (plugins/ams_reporting/hooks.py) apply connections on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delivery.archive import ArchiveKeyMissing, Vault, load_keys
from delivery.objectstore import StorePath, is_local, store_root
from delivery.state import StateStore
from transforms.registry import REPO_ROOT


@dataclass
class Settings:
    """Where things are and how big the steps are. `from_env` reads the AMS_* variables."""

    home: Path = REPO_ROOT / "var"
    source_url: str = ""
    state_url: str = ""
    batch_size: int = 5000
    chunksize: int = 25_000
    sender_municipality: str = "101"
    data_docs: bool = True
    archive_retention_days: int | None = None  # None: keep everything
    delivery_attempts: int = 4
    backoff_seconds: float = 1.0
    lock_wait_seconds: float = 60.0
    full_read: bool = False  # read the whole source, not only its changes (`ams-report demo --full`)
    full_read_every_days: int = 7  # the safety net: a full read at least this often
    # Prepare's second core (AMS_PREPARE_THREADS, docs/operations.md): each batch's XSD check and seal, and the
    # first chunk's read, in threads beside the task's own work. "auto" (the default): when a core is free as the
    # task starts (cycle.pipeline.threads_pay; 9-11 % off prepare on a quiet machine, a loss on a saturated one,
    # docs/performance.md); "on"; "off": everything on the task's one thread.
    prepare_threads: str = "auto"
    # Prepare's checks (map, contract, quality suite, hash) in a child process while the task stores the chunk
    # before (AMS_PREPARE_PROCESS, cycle.checks): "auto" (the default): for a full read when a core is free; "on";
    # "off": in the task's process. A daemonic process (a Celery prefork child) checks in its own process.
    prepare_process: str = "auto"
    # Batches on their way to the receiver at once (AMS_DELIVER_LANES, cycle.pipeline._Lanes): with 2 the task
    # signs and stores while the receiver works. 1: one batch at a time.
    deliver_lanes: int = 2
    # The municipality (kommunekode) this run reports for when the deployment serves several (a tenants
    # file, AMS_TENANTS_FILE); None: the single-municipality layout, where nothing is partitioned.
    tenant: str | None = None
    # The root of the archive, reports and Data Docs as a path object (the Airflow layer sets an
    # ObjectStoragePath with the AMS_OBJECT_STORE_CONN_ID credentials); None: AMS_OBJECT_STORE_URL, else home.
    object_store: Any = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)

    @classmethod
    def from_env(cls) -> Settings:
        """The AMS_* variables; one that is not set keeps the field's default above (stated once, there)."""
        home = Path(os.environ.get("AMS_HOME", cls.home))
        return cls(
            home=home,
            source_url=os.environ.get("AMS_SOURCE_URL", f"sqlite:///{home / 'source' / 'demo.sqlite'}"),
            state_url=os.environ.get("AMS_STATE_URL", f"sqlite:///{home / 'state' / 'state.sqlite'}"),
            batch_size=int(os.environ.get("AMS_BATCH_SIZE", cls.batch_size)),
            chunksize=int(os.environ.get("AMS_CHUNK_SIZE", cls.chunksize)),
            sender_municipality=os.environ.get("AMS_SENDER_MUNICIPALITY", cls.sender_municipality),
            data_docs=os.environ.get("AMS_DATA_DOCS", "1") not in ("0", "false", "no"),
            archive_retention_days=int(os.environ["AMS_ARCHIVE_RETENTION_DAYS"])
            if os.environ.get("AMS_ARCHIVE_RETENTION_DAYS") else None,
            delivery_attempts=int(os.environ.get("AMS_DELIVERY_ATTEMPTS", cls.delivery_attempts)),
            backoff_seconds=float(os.environ.get("AMS_BACKOFF_SECONDS", cls.backoff_seconds)),
            lock_wait_seconds=float(os.environ.get("AMS_LOCK_WAIT_SECONDS", cls.lock_wait_seconds)),
            full_read=os.environ.get("AMS_FULL_READ", "0").lower() in ("1", "true", "yes"),
            full_read_every_days=int(os.environ.get("AMS_FULL_READ_EVERY_DAYS", cls.full_read_every_days)),
            prepare_threads=os.environ.get("AMS_PREPARE_THREADS", cls.prepare_threads).lower(),
            prepare_process=os.environ.get("AMS_PREPARE_PROCESS", cls.prepare_process).lower(),
            deliver_lanes=int(os.environ.get("AMS_DELIVER_LANES", cls.deliver_lanes)),
        )

    @property
    def store(self) -> StorePath:
        """The shared store's root: what every worker reaches (archive/, reports/)."""
        return self.object_store if self.object_store is not None else store_root(self.home)

    def _tenant(self, root: StorePath) -> StorePath:
        return root / self.tenant if self.tenant else root

    @property
    def archive_dir(self) -> StorePath:
        """<store>/archive (AMS_ARCHIVE_DIR overrides), per municipality <archive>/<kommunekode>."""
        root = Path(os.environ["AMS_ARCHIVE_DIR"]) if os.environ.get("AMS_ARCHIVE_DIR") else self.store / "archive"
        return self._tenant(root)

    @property
    def reports_root(self) -> StorePath:
        """<store>/reports: every municipality's folder, and the operator's overview across them."""
        return self.store / "reports"

    @property
    def reports_dir(self) -> StorePath:
        """This run's report folder: <reports root>, per municipality <reports root>/<kommunekode>."""
        return self._tenant(self.reports_root)

    @property
    def data_docs_build_dir(self) -> Path:
        """Where Great Expectations builds the Data Docs (it writes only to a local folder): the report
        folder itself when that is local (today's layout), else a working folder on this worker whose
        tree is copied to <reports>/data_docs after every build."""
        if is_local(self.reports_dir):
            return Path(self.reports_dir) / "data_docs"
        return self._tenant(self.home / "work" / "data_docs")

    def vault(self) -> Vault:
        """The archive keys. Staged payloads (in the state DB) and the archive are read by every worker,
        so on several workers the key must be one shared secret (AMS_ARCHIVE_KEY from the secrets
        backend): a key file made up on one worker's disk could not open what another one wrote."""
        if multi_worker() and not os.environ.get("AMS_ARCHIVE_KEY") and not os.environ.get("AMS_ARCHIVE_KEY_FILE"):
            key_file = self.home / "keys" / "archive.key"
            if not key_file.exists():
                raise ArchiveKeyMissing(
                    f"No archive key: this deployment runs tasks on several workers ({multi_worker()}), and "
                    "AMS_ARCHIVE_KEY is not set. A key made up on this worker could not decrypt what the other "
                    "workers stage and archive, so none is made up. Set AMS_ARCHIVE_KEY on every worker from the "
                    "secrets backend (docs/operations.md, 'The archive key').")
        return Vault(load_keys(self.home / "keys" / "archive.key"))

    def state(self) -> StateStore:
        if self.state_url.startswith("sqlite:///"):
            Path(self.state_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return StateStore(self.state_url, tenant=self.tenant)


def multi_worker() -> str:
    """Why tasks may run on several workers ("" when they cannot): the Airflow executor distributes
    them (Celery, Kubernetes, Edge), or AMS_MULTI_WORKER=1 says so."""
    executor = os.environ.get("AIRFLOW__CORE__EXECUTOR", "")
    if any(name in executor for name in ("Celery", "Kubernetes", "Edge")):
        return f"AIRFLOW__CORE__EXECUTOR={executor}"
    if os.environ.get("AMS_MULTI_WORKER", "").lower() in ("1", "true", "yes"):
        return "AMS_MULTI_WORKER=1"
    return ""

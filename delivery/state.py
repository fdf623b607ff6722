"""The pipeline's own state: delivery ledger, batches, quarantine, findings and run counts.

Any SQLAlchemy database (`AMS_STATE_URL`; SQLite by default, PostgreSQL in production). The tables
are declared with SQLAlchemy Core so one definition serves every dialect.

Personal data: the state holds record keys, record GUIDs, content hashes and *masked* persons only.
The rows themselves travel between tasks as the staged payload, encrypted with the archive key before
it reaches this store (`ams_staged`, below): the state DB never sees a plaintext payload.

Staging (`ams_staged`): the encrypted payload of a batch, then its receipt (and lookup request), as
blobs keyed by (tenant, batch id, name). They live in the state DB, not on a worker's disk, so a
`deliver` on any worker reads what a `prepare` on another staged (shared-nothing workers, issue 10).
The payload is written in the transaction that records the batch as `built` (a batch row never exists
without its payload, nor a payload without its row); it is removed in the transaction that marks the
batch `archived`, with its unsent batch when a preparation discards it, and when the batch is `lost`.

Batch states (DESIGN.md, principle 3; docs/operations.md explains them for operators):
- `built`: staged, never sent. The only state a preparation may discard and rebuild.
- `sent`: written *before* the POST; the batch may have reached the receiver.
- `unknown`: a try failed without a receipt; it may have reached the receiver. `sent` and `unknown`
  are *in doubt*: the receiver is asked (GetBatchReceipt) before anything is sent again, and only its
  "unknown batch" answer means "not received". An in-doubt batch never goes back to `built`.
- `acknowledged`: the receipt is stored in the ledger; the archive is not written yet.
- `archived`: the exact payload, the receipt (and any lookup) are archived; staging is removed.
- `lost`: the receiver confirmed it never received the batch and its staged payload is gone; its
  records are free again and the next preparation stages them anew.
A record is *in flight* while it belongs to a `built`, `sent` or `unknown` batch: in-flight records
are not batched again, so a record is in at most one batch whose outcome is open.

Ledger: `receiver_state` follows the last *accepted* action (active / annulled / none), so a refused
update does not hide the version the receiver still holds (a later deletion is annulled).

Every text column is masked at this boundary (`mask_cpr_in_text`): no CPR number reaches the state
DB, whatever a source value, a check's message or a receiver's error text contained.

Writes that move a batch are guarded by its current status, and `area_lock` keeps two tasks of one
area apart (an advisory lock on PostgreSQL, a lock row elsewhere).
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from delivery import failpoints
from transforms.identifiers import mask_cpr_in_text

metadata = sa.MetaData()

ledger = sa.Table(
    "ams_ledger", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(36), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # the last answer: accepted | rejected | annulled
    # What the receiver holds, from the last *accepted* action: active | annulled | NULL (nothing).
    sa.Column("receiver_state", sa.String(16)),
    sa.Column("accepted_hash", sa.String(64)),  # content last accepted by the receiver
    sa.Column("rejected_hash", sa.String(64)),  # content the receiver rejected (not re-sent unchanged)
    sa.Column("last_batch_id", sa.String(36)),
    sa.Column("error_code", sa.String(16)),
    sa.Column("error_text", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

batches = sa.Table(
    "ams_batches", metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("area", sa.Integer, nullable=False, index=True),
    sa.Column("run_id", sa.String(250), nullable=False, index=True),  # the run that prepared it
    sa.Column("status", sa.String(24), nullable=False),  # built | sent | unknown | acknowledged | archived | lost
    sa.Column("outcome", sa.String(24)),  # the receipt's BatchStatus (lower case), or refused_<code>
    sa.Column("record_count", sa.Integer, nullable=False),
    sa.Column("annul_count", sa.Integer, nullable=False, default=0),
    sa.Column("staged_path", sa.Text),
    sa.Column("payload_sha256", sa.String(64)),
    sa.Column("payload_created", sa.String(40)),  # the payload's CreatedDateTime: a rebuild is byte-identical
    sa.Column("recovered", sa.Boolean),  # the receipt came from GetBatchReceipt (the reply was lost)
    sa.Column("receipt_message_id", sa.String(36)),
    sa.Column("receipt_event_date", sa.String(40)),
    sa.Column("archive_path", sa.Text),
    sa.Column("archived_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_run_id", sa.String(250), index=True),
    sa.Column("accepted_count", sa.Integer),
    sa.Column("rejected_count", sa.Integer),
    sa.Column("annulled_count", sa.Integer),  # accepted annulments
)

batch_records = sa.Table(
    "ams_batch_records", metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True, index=True),  # the ledger diff joins on it
    sa.Column("position", sa.Integer),  # the record's place in the payload (a rebuild keeps the order)
    sa.Column("record_id", sa.String(36), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("masked_person", sa.String(20)),
)

quarantine = sa.Table(
    "ams_quarantine", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("record_key", sa.String(64), primary_key=True),
    sa.Column("masked_person", sa.String(20)),
    sa.Column("findings", sa.Text, nullable=False),  # JSON list: rule, field, paragraph, severity, message
    sa.Column("status", sa.String(12), nullable=False),  # open | released
    sa.Column("first_seen_run", sa.String(250), nullable=False),
    sa.Column("last_seen_run", sa.String(250), nullable=False),
    sa.Column("released_run", sa.String(250)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

findings = sa.Table(
    "ams_findings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(250), nullable=False, index=True),
    sa.Column("area", sa.Integer, nullable=False),
    sa.Column("record_key", sa.String(64), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("field", sa.String(64)),
    sa.Column("paragraph", sa.String(120)),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # The run from which the finding no longer holds (fixed, changed or the record gone); NULL while it
    # holds. A finding is stored once, by the run that first found it (`run_id`), not again by every
    # run that finds it unchanged (issue 9): a run's findings are those that held when it ran.
    sa.Column("resolved_run", sa.String(250)),
    sa.Index("ix_ams_findings_area_key", "area", "record_key"),
)

run_areas = sa.Table(
    "ams_run_areas", metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("counts", sa.Text, nullable=False, default="{}"),  # JSON: extracted, quarantined, ...
    sa.Column("message", sa.Text),
    sa.Column("data_docs", sa.Text),
)

# Change detection (DESIGN.md principle 9): where the last read of an area's source got to. A read
# from `since` on sees every source row stamped at or after it; `period_end` and `fingerprint` (the
# interface version, code lists and rule settings) tell when the whole source must be read again.
watermarks = sa.Table(
    "ams_watermarks", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("since", sa.String(40)),  # the source's change mark before the last read
    sa.Column("period_end", sa.String(10), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("full_at", sa.DateTime(timezone=True), nullable=False),  # the last full read
    sa.Column("run_id", sa.String(250), nullable=False),
)

# The staged blobs of open batches (see the module docstring). `tenant` ("" without a tenants file)
# is part of the key, so two municipalities' batches can never share a staging row, whatever their ids.
staged = sa.Table(
    "ams_staged", metadata,
    sa.Column("tenant", sa.String(8), primary_key=True),
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(40), primary_key=True),  # payload.xml.gz.enc, receipt.xml.gz.enc, ...
    sa.Column("blob", sa.LargeBinary, nullable=False),  # Fernet token of the gzip'd bytes (Vault.seal)
    sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
)

#: What `staged_path` holds for a batch staged in the state DB (before issue 10: a file path).
STAGED_IN_DB = "state-db:ams_staged"

area_locks = sa.Table(
    "ams_area_locks", metadata,
    sa.Column("area", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String(250), nullable=False),  # host:pid:what
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
)

IN_DOUBT = ("sent", "unknown")
OUTSTANDING = ("built", *IN_DOUBT)
ACKNOWLEDGED = "acknowledged"
ARCHIVED = "archived"
LOST = "lost"


class AreaBusy(RuntimeError):
    """Another task holds the area's lock (a second run, a backfill, a zombie worker)."""


def _mask(values: dict, *names: str) -> dict:
    """The values with the named text columns masked (CPR-shaped numbers to DDMMYY-****)."""
    return {k: (mask_cpr_in_text(v) if k in names and v is not None else v) for k, v in values.items()}
_CHUNK = 500  # keys per IN (...) list: well under every dialect's bind-parameter limit


def now() -> datetime:
    return datetime.now(UTC)


def _insert_many(conn: Connection, table: sa.Table, values: dict[str, object], size: int = 50_000) -> int:
    """INSERT many rows into `table` in one executemany per `size` rows, as tuples handed to the driver
    (no dict per row, no per-row compile): `values` maps a column to a list (one value per row) or to one
    value for every row. Each column's bind processing (e.g. SQLite's DateTime text) is applied once per
    value, so the stored values are those of `table.insert()`. Returns the rows inserted."""
    lengths = {len(v) for v in values.values() if isinstance(v, list | tuple | np.ndarray | pd.Series)}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths for {table.name}: {sorted(lengths)}")
    count = lengths.pop() if lengths else 1
    if not count:
        return 0
    dialect = conn.dialect
    columns: list[list] = []
    for name, given in values.items():
        column = table.c[name]
        many = list(given) if isinstance(given, list | tuple | np.ndarray | pd.Series) else None
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        if many is None:
            one = process(given) if process is not None and given is not None else given
            columns.append([one] * count)
        else:
            columns.append([process(v) if v is not None else None for v in many] if process is not None else many)
    rows = list(zip(*columns, strict=True))
    if dialect.paramstyle == "qmark":
        marks = ", ".join("?" for _ in values)
    elif dialect.paramstyle in ("format", "pyformat"):
        marks = ", ".join("%s" for _ in values)
    else:  # another driver: SQLAlchemy's own executemany
        names = list(values)
        for start in range(0, count, size):
            conn.execute(table.insert(), [dict(zip(names, r, strict=True)) for r in rows[start:start + size]])
        return count
    quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in values)
    statement = f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({quoted}) VALUES ({marks})"
    for start in range(0, count, size):
        conn.exec_driver_sql(statement, rows[start:start + size])
    return count


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tenant_suffix(tenant: str) -> str:
    """The partition name of a municipality: "k0101" for kommunekode 101 (four digits sort well)."""
    return f"k{int(tenant):04d}"


def tenant_schema(base_schema: str, tenant: str) -> str:
    """The PostgreSQL schema of a municipality's state: `ams_k0101` beside the default schema `public`,
    `<schema>_k0101` when the state URL points at another schema (so two deployments, or two tests,
    sharing a database keep apart)."""
    prefix = "ams" if base_schema in ("", "public") else base_schema
    return f"{prefix}_{tenant_suffix(tenant)}"


def tenant_sqlite_path(path: str, tenant: str) -> str:
    """The SQLite file of a municipality's state: `state_k0101.sqlite` beside `state.sqlite`."""
    base, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        return f"{path}_{tenant_suffix(tenant)}"
    return f"{base}_{tenant_suffix(tenant)}.{ext}"


def partitioned_engine(engine: Engine, tenant: str) -> Engine:
    """An engine on the municipality's partition of the state database `engine` points at.

    PostgreSQL: a schema per municipality (created when missing), as the connection's search_path, so
    the Core tables and the few SQL texts here (temporary key table, findings and ledger reads) land in
    it unchanged. SQLite: a file per municipality. Other dialects are not partitioned here: the state
    URL must then name a database per municipality (docs/tenants.md)."""
    url = engine.url
    if engine.dialect.name == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return engine  # an in-memory database is private to its engine already
        return sa.create_engine(url.set(database=tenant_sqlite_path(database, tenant)))
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            base = conn.execute(sa.text("SELECT current_schema()")).scalar() or "public"
            schema = tenant_schema(base, tenant)
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        # Only the partition on the search_path: table lookups must not find the shared layout's tables.
        return sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    raise ValueError(f"the state database's dialect {engine.dialect.name!r} cannot be partitioned by municipality "
                     "here; use PostgreSQL or SQLite, or give each municipality its own AMS_STATE_URL")


def adopt_unpartitioned(url: str, tenant: str) -> str:
    """Move the single-municipality state (ledger, batches, quarantine, findings, runs, watermarks) into
    the partition of municipality `tenant`: for a deployment that moves from AMS_SENDER_MUNICIPALITY to
    a tenants file. Its delivered records keep their ids (the ledger's), so nothing is created twice at
    the receiver. Refused when the partition holds state already. Returns where the state now is."""
    engine = sa.create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            source = engine.url.database or ""
            if source in ("", ":memory:") or not os.path.exists(source):
                raise ValueError(f"there is no single-municipality state database at {source or url}")
            target = tenant_sqlite_path(source, tenant)
            if os.path.exists(target) and os.path.getsize(target) > 0 and _has_rows(sa.create_engine(
                    f"sqlite:///{target}")):
                raise ValueError(f"municipality {tenant} has state already ({target}); nothing was moved")
            os.replace(source, target)
            return target
        if engine.dialect.name != "postgresql":
            raise ValueError(f"adopting is done by hand on {engine.dialect.name!r}: copy the ams_* tables")
        with engine.begin() as conn:
            base = conn.execute(sa.text("SELECT current_schema()")).scalar() or "public"
            schema = tenant_schema(base, tenant)
            have = set(sa.inspect(conn).get_table_names(schema=base))
            names = [t.name for t in metadata.sorted_tables if t.name in have]
            if not names:
                raise ValueError(f"there is no single-municipality state in schema {base!r}")
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            there = set(sa.inspect(conn).get_table_names(schema=schema))
            for name in names:
                if name in there:
                    if conn.execute(sa.text(f'SELECT 1 FROM "{schema}"."{name}" LIMIT 1')).first() is not None:
                        raise ValueError(f"municipality {tenant} has state already (schema {schema}); nothing "
                                         "was moved")
                    conn.execute(sa.text(f'DROP TABLE "{schema}"."{name}"'))  # empty: made by a first parse
            for name in names:
                conn.execute(sa.text(f'ALTER TABLE "{base}"."{name}" SET SCHEMA "{schema}"'))
            return f"schema {schema}"
    finally:
        engine.dispose()


def _has_rows(engine: Engine) -> bool:
    try:
        have = set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            return any(conn.execute(sa.select(t).limit(1)).first() is not None
                       for t in metadata.sorted_tables if t.name in have)
    finally:
        engine.dispose()


#: The advisory lock key of the state database's DDL (schemas, tables, columns): "amsddl".
_DDL_LOCK_KEY = 0x616D7364646C


@contextmanager
def _ddl_lock(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, one process at a time creates the state database's schema, tables and columns:
    `CREATE ... IF NOT EXISTS` is not safe against a concurrent creator (a unique violation in the
    catalog), and Celery workers start their tasks at once on a fresh database. A session lock, released
    by the server if the process dies. Elsewhere (SQLite: one writer at a time anyway) nothing."""
    if engine.dialect.name != "postgresql":
        yield
        return
    # Its own unpooled connection, closed afterwards: the store's pool keeps no extra idle connection.
    locker = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        with locker.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _DDL_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _DDL_LOCK_KEY})
                conn.commit()
    finally:
        locker.dispose()


#: SQLite's page cache per connection of the state DB, in KiB (its default is 2 MiB). The ledger's, the
#: findings' and the batch members' key indexes take random keys: once an index outgrows the cache every
#: insert reads and spills pages, so each batch cost more the larger the ledger (issue 9). A bound on memory.
SQLITE_CACHE_KIB = 32 * 1024


def _sqlite_cache(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    finally:
        cursor.close()


class StateStore:
    """Ledger, batches and quarantine on one SQLAlchemy engine.

    `tenant` (a kommunekode) selects that municipality's partition (`partitioned_engine`); None is the
    single-municipality layout, unpartitioned, as before tenants existed."""

    def __init__(self, url_or_engine: str | Engine, tenant: str | None = None):
        self.engine = sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.tenant = tenant
        with _ddl_lock(self.engine):  # workers starting at once on a fresh database: one creates, all find
            if tenant is not None:
                base = self.engine
                self.engine = partitioned_engine(base, tenant)
            if self.engine.dialect.name == "sqlite" and not sa.event.contains(self.engine, "connect", _sqlite_cache):
                sa.event.listen(self.engine, "connect", _sqlite_cache)
            metadata.create_all(self.engine)
            self._add_missing_columns()
        if tenant is not None and isinstance(url_or_engine, str) and base is not self.engine:
            base.dispose()

    def _add_missing_columns(self) -> None:
        """A state DB made by an earlier version gets the nullable columns added since (no data changes)."""
        inspector = sa.inspect(self.engine)
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                have = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have and column.nullable:
                        kind = column.type.compile(dialect=self.engine.dialect)
                        conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                        if (table.name, column.name) == ("ams_findings", "resolved_run"):
                            # Before issue 9 every run stored all its findings: each row is its run's only.
                            conn.execute(findings.update().values(resolved_run=findings.c.run_id))

    # --- the area lock ----------------------------------------------------------------------------

    @contextmanager
    def area_lock(self, area: int, what: str, wait_seconds: float = 60.0) -> Iterator[None]:
        """Hold area `area` for one task: on PostgreSQL a session advisory lock (released by the server
        when the holder dies), elsewhere a lock row (taken over when its holder's process is gone).
        Waits up to `wait_seconds`, then raises AreaBusy naming the holder."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{what}"[:250]
        deadline = time.monotonic() + wait_seconds
        if self.engine.dialect.name == "postgresql":
            # Advisory locks are database-wide: a municipality's key differs from another's same area.
            name = f"ams-area-{area}" if self.tenant is None else f"ams-{self.tenant}-area-{area}"
            key = zlib.crc32(name.encode())
            conn = self.engine.connect()
            try:
                while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                    if time.monotonic() >= deadline:
                        raise AreaBusy(f"{self._whose()}area {area} is being processed by another task (PostgreSQL "
                                       f"advisory lock {key} is held); wait for it to finish, then clear this task")
                    time.sleep(0.5)
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            finally:
                conn.close()
            return
        while not self._take_lock_row(area, owner):
            if time.monotonic() >= deadline:
                holder = self.lock_holder(area)
                raise AreaBusy(f"{self._whose()}area {area} is being processed by another task ({holder}); wait for "
                               "it to finish, then clear this task")
            time.sleep(0.2)
        try:
            yield
        finally:
            with self.begin() as conn:
                conn.execute(area_locks.delete().where(area_locks.c.area == area, area_locks.c.owner == owner))

    def _whose(self) -> str:
        return "" if self.tenant is None else f"municipality {self.tenant}: "

    def lock_holder(self, area: int) -> str | None:
        with self.begin() as conn:
            row = conn.execute(sa.select(area_locks).where(area_locks.c.area == area)).first()
        return None if row is None else f"{row.owner}, since {row.acquired_at}"

    def _take_lock_row(self, area: int, owner: str) -> bool:
        with self.begin() as conn:
            row = conn.execute(sa.select(area_locks).where(area_locks.c.area == area)).first()
            if row is not None:
                if not _holder_is_gone(row.owner):
                    return False
                conn.execute(area_locks.delete().where(area_locks.c.area == area, area_locks.c.owner == row.owner))
            try:
                conn.execute(area_locks.insert().values(area=area, owner=owner, acquired_at=now()))
            except sa.exc.IntegrityError:
                return False
        return True

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- staging (encrypted blobs of open batches) --------------------------------------------------

    def _staged_key(self, batch_id: str, name: str | None = None):
        cond = [staged.c.tenant == (self.tenant or ""), staged.c.batch_id == batch_id]
        return sa.and_(*cond, staged.c.name == name) if name is not None else sa.and_(*cond)

    def stage(self, batch_id: str, name: str, blob: bytes, conn: Connection | None = None) -> None:
        """Store (or replace) one staged blob of a batch; in `conn`'s transaction when given."""
        if conn is None:
            with self.begin() as own:
                self.stage(batch_id, name, blob, own)
            return
        conn.execute(staged.delete().where(self._staged_key(batch_id, name)))
        conn.execute(staged.insert().values(tenant=self.tenant or "", batch_id=batch_id, name=name, blob=blob,
                                            staged_at=now()))

    def staged_blob(self, batch_id: str, name: str) -> bytes | None:
        """One staged blob, None when there is none."""
        with self.begin() as conn:
            blob = conn.execute(sa.select(staged.c.blob).where(self._staged_key(batch_id, name))).scalar()
        return None if blob is None else bytes(blob)

    def unstage(self, batch_id: str, name: str | None = None, conn: Connection | None = None) -> int:
        """Remove a batch's staged blobs (one, or all); returns how many were removed."""
        if conn is None:
            with self.begin() as own:
                return self.unstage(batch_id, name, own)
        return int(conn.execute(staged.delete().where(self._staged_key(batch_id, name))).rowcount or 0)

    def remove_stale_staging(self, area: int) -> int:
        """Remove staged blobs of this tenant whose batch (of `area`) is done or gone; returns how many."""
        open_ = sa.select(batches.c.batch_id).where(batches.c.status.in_((*OUTSTANDING, ACKNOWLEDGED)))
        of_area = sa.select(batches.c.batch_id).where(batches.c.area == area)
        with self.begin() as conn:
            result = conn.execute(staged.delete().where(
                staged.c.tenant == (self.tenant or ""), staged.c.batch_id.not_in(open_),
                sa.or_(staged.c.batch_id.in_(of_area), staged.c.batch_id.not_in(sa.select(batches.c.batch_id)))))
        return int(result.rowcount or 0)

    def staged_names(self, batch_id: str) -> list[str]:
        with self.begin() as conn:
            return sorted(conn.execute(sa.select(staged.c.name).where(self._staged_key(batch_id))).scalars())

    # --- runs -----------------------------------------------------------------------------------

    def start_area_run(self, run_id: str, area: int) -> None:
        with self.begin() as conn:
            conn.execute(run_areas.delete().where(run_areas.c.run_id == run_id, run_areas.c.area == area))
            conn.execute(run_areas.insert().values(
                run_id=run_id, area=area, status="preparing", started_at=now(), counts="{}"))

    def update_area_run(self, run_id: str, area: int, *, status: str | None = None, counts: dict | None = None,
                        message: str | None = None, data_docs: str | None = None, finished: bool = False) -> None:
        with self.begin() as conn:
            row = conn.execute(sa.select(run_areas.c.counts).where(
                run_areas.c.run_id == run_id, run_areas.c.area == area)).first()
            if row is None:
                conn.execute(run_areas.insert().values(run_id=run_id, area=area, status=status or "unknown",
                                                       started_at=now(), counts="{}"))
                merged: dict = {}
            else:
                merged = json.loads(row.counts or "{}")
            for key, value in (counts or {}).items():  # nested counts (phases) merge one level deep
                merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(
                    merged.get(key), dict) else value
            values: dict = {"counts": json.dumps(merged, sort_keys=True)}
            if status:
                values["status"] = status
            if message is not None:
                values["message"] = mask_cpr_in_text(message)
            if data_docs is not None:
                values["data_docs"] = data_docs
            if finished:
                values["finished_at"] = now()
            conn.execute(run_areas.update().where(
                run_areas.c.run_id == run_id, run_areas.c.area == area).values(**values))

    def run_rows(self, run_id: str) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(run_areas).where(run_areas.c.run_id == run_id)
                                .order_by(run_areas.c.area)).mappings().all()
        return [{**r, "counts": json.loads(r["counts"] or "{}")} for r in rows]

    def recent_runs(self, limit: int = 30) -> list[str]:
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at).label("t"))
                .group_by(run_areas.c.run_id).order_by(sa.desc("t")).limit(limit)).all()
        return [r.run_id for r in rows]

    # --- findings and quarantine ----------------------------------------------------------------

    def record_findings(self, run_id: str, area: int, frame: pd.DataFrame, read: Iterable[str] | None = None,
                        cover: FindingsCover | None = None) -> int:
        """Store what changed in the findings of the records `read` (default: those `frame` names): a
        new or changed finding is inserted, one that no longer holds gets `resolved_run`, an unchanged
        one is left alone, so a day with no change stores nothing. Returns the rows written.
        A set operation: the records' open findings are read at once (`_open_findings`) and compared in pandas.
        A full read passes one `cover` to all its chunks, and then to `resolve_findings_not_read`."""
        columns = ["record_key", "rule", "field", "paragraph", "severity", "message"]
        new = frame[columns].assign(message=_mask_texts(frame["message"])) if len(frame) else (
            pd.DataFrame(columns=columns))
        keys = list(dict.fromkeys([*(read if read is not None else []), *new["record_key"].tolist()]))
        if not keys:
            return 0
        with self.begin() as conn:
            old = pd.DataFrame(_open_findings(conn, area, keys, cover), columns=["id", *columns])
            if old.empty:  # the records' first findings (a first load, new records): all are added, in the
                gone, added = [], new.fillna("").sort_values(columns)  # order the merge gives them
            else:
                both = new.fillna("").merge(old.fillna(""), on=columns, how="outer", indicator=True)
                gone = both.loc[both["_merge"] == "right_only", "id"].astype(int).tolist()
                added = both.loc[both["_merge"] == "left_only", columns]
            for part in _chunks(gone):
                conn.execute(findings.update().where(findings.c.id.in_(part)).values(resolved_run=run_id))
            if len(added):
                self._insert_findings(conn, added.assign(run_id=run_id, area=area), masked=True)
        return len(gone) + len(added)

    def resolve_findings_not_read(self, run_id: str, area: int, read_hashes: np.ndarray,
                                  cover: FindingsCover | None = None) -> int:
        """After a full read: resolve the open findings of records the source no longer has. `read_hashes`
        holds hash(record_key) of every record read, sorted (8 bytes a record instead of the key).
        The keys looked at are those the read's chunks saw in their ranges and did not read (`cover`), and the
        area's keys outside those ranges, read off the (area, record_key) index alone; only the findings of
        keys not read are looked up in the table. Without `cover`, every key of the area is looked at.
        (Issue 9: reading every open finding's row was a look-up per finding, 42x the time for 10x the
        findings at 1M records on SQLite; scanning every key of the index at the end still grew 21x.)"""
        cover = cover or FindingsCover()
        not_read: list[str] = []
        gone: list[int] = []
        with self.begin() as conn:
            for after, before in cover.gaps():
                query = sa.select(findings.c.record_key).where(findings.c.area == area)
                if after is not None:
                    query = query.where(findings.c.record_key > after)
                if before is not None:
                    query = query.where(findings.c.record_key < before)
                result = conn.execution_options(stream_results=True, yield_per=50_000).execute(query.distinct())
                for rows in result.partitions():
                    keys = [r.record_key for r in rows]
                    not_read += [k for k, hit in zip(keys, _hashed_in(keys, read_hashes), strict=True) if not hit]
            unread = sorted(cover.unread)
            not_read += [k for k, hit in zip(unread, _hashed_in(unread, read_hashes), strict=True) if not hit]
            for part in _chunks(not_read):
                gone += conn.execute(sa.select(findings.c.id).where(
                    findings.c.area == area, findings.c.record_key.in_(part), findings.c.resolved_run.is_(None),
                    findings.c.run_id != run_id)).scalars().all()
            for part in _chunks(gone):
                conn.execute(findings.update().where(findings.c.id.in_(part)).values(resolved_run=run_id))
        return len(gone)

    @staticmethod
    def _insert_findings(conn: Connection, rows: pd.DataFrame, *, masked: bool = False,
                         resolved_run: str | None = None) -> None:
        rows = rows if masked else rows.assign(message=_mask_texts(rows["message"]))
        _insert_many(conn, findings, {
            **{c: _column(rows[c]) for c in ("run_id", "area", "record_key", "rule", "field", "paragraph", "severity",
                                             "message")}, "resolved_run": resolved_run})

    def quarantine_rows(self, run_id: str, area: int, errors: pd.DataFrame, persons: dict[str, str]) -> None:
        """Put (or keep) records in quarantine with every reason; `persons` maps key -> masked person."""
        if errors.empty:
            return
        with self.begin() as conn:
            self._quarantine(conn, run_id, area, errors, persons)

    @staticmethod
    def _quarantine(conn: Connection, run_id: str, area: int, errors: pd.DataFrame, persons: dict[str, str]) -> None:
        """Set operations, not a statement per record: the existing entries in one read per 500 keys,
        then one executemany INSERT for the new and one executemany UPDATE for the rest."""
        columns = ["rule", "field", "paragraph", "severity", "message"]
        keyed = errors.assign(record_key=errors["record_key"].astype(str))
        texts: dict[str, list[dict]] = {}
        for key, items in zip(keyed["record_key"], keyed[columns].to_dict("records"), strict=True):
            texts.setdefault(key, []).append(items)
        stamp = now()
        for keys in _chunks(sorted(texts)):
            existing = set(conn.execute(sa.select(quarantine.c.record_key).where(
                quarantine.c.area == area, quarantine.c.record_key.in_(keys))).scalars())
            rows = [{"b_key": key, "b_person": persons.get(key), "b_stamp": stamp,
                     "b_findings": mask_cpr_in_text(json.dumps(texts[key], ensure_ascii=False))} for key in keys]
            new = [r for r in rows if r["b_key"] not in existing]
            old = [r for r in rows if r["b_key"] in existing]
            if new:
                conn.execute(quarantine.insert(), [
                    dict(area=area, record_key=r["b_key"], masked_person=r["b_person"], findings=r["b_findings"],
                         status="open", first_seen_run=run_id, last_seen_run=run_id, released_run=None,
                         updated_at=stamp) for r in new])
            if old:
                # SET expressions read the row's old values: a released entry opens again as first seen now.
                # An open entry seen again as it was (a record read again, unchanged) keeps its stamp: only
                # `last_seen_run` moves, so the quarantine's state (tables.quarantine_state) says nothing
                # changed and a day without change gets its short report page.
                changed = sa.or_(quarantine.c.status != "open", quarantine.c.findings != sa.bindparam("b_findings"),
                                 quarantine.c.masked_person.is_distinct_from(sa.bindparam("b_person")))
                conn.execute(quarantine.update().where(
                    quarantine.c.area == area, quarantine.c.record_key == sa.bindparam("b_key")).values(
                    masked_person=sa.bindparam("b_person"), findings=sa.bindparam("b_findings"), status="open",
                    first_seen_run=sa.case((quarantine.c.status != "open", run_id),
                                           else_=quarantine.c.first_seen_run),
                    last_seen_run=run_id, released_run=None,
                    updated_at=sa.case((changed, sa.bindparam("b_stamp")), else_=quarantine.c.updated_at)), old)

    def release_quarantine(self, run_id: str, area: int, keep: Iterable[str] = (),
                           read_hashes: np.ndarray | None = None) -> int:
        """Release every open entry not seen with an error in this run (fixed or gone at the source).
        After a read of the changes only, `read_hashes` (hash(record_key) of the records read) limits it
        to the records read: one not read has not changed."""
        keep = set(keep)
        with self.begin() as conn:
            rows = conn.execute(sa.select(quarantine.c.record_key).where(
                quarantine.c.area == area, quarantine.c.status == "open",
                quarantine.c.last_seen_run != run_id)).all()
            released = [r.record_key for r in rows if r.record_key not in keep]
            if read_hashes is not None and released:
                read = _hashed_in(released, read_hashes)
                released = [k for k, r in zip(released, read, strict=True) if r]
            for keys in _chunks(released):
                conn.execute(quarantine.update().where(
                    quarantine.c.area == area, quarantine.c.record_key.in_(keys)).values(
                    status="released", released_run=run_id, updated_at=now()))
        return len(released)

    def standing_quarantine(self, run_id: str, area: int, read_hashes: np.ndarray) -> int:
        """After a read of the changes only: the open quarantine entries of records not read (unchanged at
        the source) stand, and are marked as still held back in this run (`last_seen_run`)."""
        with self.begin() as conn:
            keys = conn.execute(sa.select(quarantine.c.record_key).where(
                quarantine.c.area == area, quarantine.c.status == "open")).scalars().all()
            if not keys:
                return 0
            read = _hashed_in(keys, read_hashes)
            standing = [k for k, r in zip(keys, read, strict=True) if not r]
            for part in _chunks(standing):
                conn.execute(quarantine.update().where(quarantine.c.area == area, quarantine.c.record_key.in_(part))
                             .values(last_seen_run=run_id))
        return len(standing)

    def open_quarantine(self, area: int | None = None) -> list[dict]:
        q = sa.select(quarantine).where(quarantine.c.status == "open")
        if area is not None:
            q = q.where(quarantine.c.area == area)
        with self.begin() as conn:
            rows = conn.execute(q.order_by(quarantine.c.area, quarantine.c.record_key)).mappings().all()
        return [{**r, "findings": json.loads(r["findings"])} for r in rows]

    def run_findings(self, run_id: str) -> pd.DataFrame:
        """Every finding that held in the run's areas when the run ran: stored by it or by an earlier run
        and not resolved before it (runs ordered by their start), and the receiver's refusals of the run."""
        starts = (sa.select(run_areas.c.run_id, sa.func.min(run_areas.c.started_at).label("t"))
                  .group_by(run_areas.c.run_id).subquery())
        first, resolved = starts.alias("first"), starts.alias("resolved")
        with self.begin() as conn:
            at = conn.execute(sa.select(starts.c.t).where(starts.c.run_id == run_id)).scalar()
            areas = sa.select(run_areas.c.area).where(run_areas.c.run_id == run_id)
            query = (sa.select(findings).select_from(findings)
                     .join(first, first.c.run_id == findings.c.run_id, isouter=True)
                     .join(resolved, resolved.c.run_id == findings.c.resolved_run, isouter=True)
                     .where(findings.c.area.in_(areas), sa.or_(
                         findings.c.run_id == run_id,
                         sa.and_(first.c.t <= at, sa.or_(findings.c.resolved_run.is_(None), resolved.c.t > at))))
                     .order_by(findings.c.id))
            return pd.read_sql(query, conn)

    # --- ledger ---------------------------------------------------------------------------------

    def ledger_diff(self, area: int, keys: list[str]) -> pd.DataFrame:
        """For each key (in order): its ledger entry (record_id, receiver_state, accepted_hash, rejected_hash; None
        when it has none) and `in_flight` (it belongs to a built, sent or unknown batch).

        A set operation: the keys go into a temporary table (one executemany, COPY on PostgreSQL) and the
        ledger and the open batches are searched by it (`IN (SELECT ...)`: an index search per key, where
        a join lets SQLite scan the area's whole ledger per chunk), two statements per call."""
        out = pd.DataFrame({"record_key": pd.Series(keys, dtype=object)})
        if not keys:
            return out.assign(record_id=None, receiver_state=None, accepted_hash=None, rejected_hash=None,
                              in_flight=False)
        with self.begin() as conn:
            _load_keys(conn, list(dict.fromkeys(keys)))
            found = pd.DataFrame(conn.execute(sa.text(
                "SELECT l.record_key, l.record_id, l.receiver_state, l.accepted_hash, l.rejected_hash "
                "FROM ams_ledger l WHERE l.area = :area AND l.record_key IN (SELECT record_key FROM ams_diff_keys)"),
                {"area": area}).all(),
                columns=["record_key", "record_id", "receiver_state", "accepted_hash", "rejected_hash"])
            flying = set(conn.execute(sa.text(
                # Driven by the keys (the index on record_key), not by the area's batches: while a first
                # run stages, hundreds of its batches are open. `+b.area` keeps SQLite off the area index.
                "SELECT br.record_key FROM ams_batch_records br JOIN ams_batches b ON b.batch_id = br.batch_id "
                "WHERE +b.area = :area AND b.status IN ('built', 'sent', 'unknown') "
                "AND br.record_key IN (SELECT record_key FROM ams_diff_keys)"), {"area": area}).scalars())
            conn.execute(sa.text("DELETE FROM ams_diff_keys"))
        out = out.merge(found, on="record_key", how="left", sort=False)
        out = out.astype({c: object for c in ("record_id", "receiver_state", "accepted_hash", "rejected_hash")})
        out = out.where(out.notna(), None)
        return out.assign(in_flight=out["record_key"].isin(flying))

    def ledger_for(self, area: int, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self.begin() as conn:
            for part in _chunks(keys):
                for r in conn.execute(sa.select(ledger).where(
                        ledger.c.area == area, ledger.c.record_key.in_(part))).mappings():
                    out[r["record_key"]] = dict(r)
        return out

    def in_flight_keys(self, area: int, keys: list[str]) -> set[str]:
        """The keys that belong to a batch whose outcome is open (built, sent or unknown)."""
        return set(self.ledger_diff(area, keys).query("in_flight")["record_key"])

    # --- change detection ------------------------------------------------------------------------

    def watermark(self, area: int) -> dict | None:
        with self.begin() as conn:
            row = conn.execute(sa.select(watermarks).where(watermarks.c.area == area)).mappings().first()
        return dict(row) if row else None

    def set_watermark(self, area: int, *, since: str | None, period_end: str, fingerprint: str, run_id: str,
                      full: bool) -> None:
        """Where this run's read got to; a full read also dates the safety net (full_at)."""
        with self.begin() as conn:
            old = conn.execute(sa.select(watermarks.c.full_at).where(watermarks.c.area == area)).scalar()
            conn.execute(watermarks.delete().where(watermarks.c.area == area))
            conn.execute(watermarks.insert().values(
                area=area, since=since, period_end=period_end, fingerprint=fingerprint, run_id=run_id,
                full_at=now() if full or old is None else old))

    @staticmethod
    def _forget_watermark(conn: Connection, area: int) -> None:
        """The next preparation reads the whole source (records must be staged again)."""
        conn.execute(watermarks.delete().where(watermarks.c.area == area))

    def requeue_rejected(self, area: int) -> int:
        """Forget the receiver's refusals of an area, so the next run sends those records again
        (after a fault on the receiving side, e.g. a schema version mismatch, has been fixed). The next
        run reads the whole source: those records have not changed there."""
        with self.begin() as conn:
            self._forget_watermark(conn, area)
            result = conn.execute(ledger.update().where(
                ledger.c.area == area, ledger.c.status == "rejected", ledger.c.rejected_hash.is_not(None))
                .values(rejected_hash=None, updated_at=now()))
        return int(result.rowcount or 0)

    def ledger_rows(self, area: int) -> pd.DataFrame:
        with self.begin() as conn:
            return pd.read_sql(sa.select(ledger).where(ledger.c.area == area), conn)

    # --- batches --------------------------------------------------------------------------------

    def discard_unsent_batches(self, area: int) -> list[dict]:
        """Batches staged but never sent are rebuilt by the next preparation. The delete re-checks the
        status, so a batch that a delivery has meanwhile marked `sent` is never discarded."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(
                batches.c.area == area, batches.c.status == "built")).mappings().all()
            ids = [r["batch_id"] for r in rows]
            failpoints.point("state.discard")
            for part in _chunks(ids):
                conn.execute(staged.delete().where(staged.c.tenant == (self.tenant or ""), staged.c.batch_id.in_(
                    sa.select(batches.c.batch_id).where(batches.c.batch_id.in_(part), batches.c.status == "built"))))
                conn.execute(batch_records.delete().where(batch_records.c.batch_id.in_(
                    sa.select(batches.c.batch_id).where(batches.c.batch_id.in_(part), batches.c.status == "built"))))
                conn.execute(batches.delete().where(batches.c.batch_id.in_(part), batches.c.status == "built"))
        return [dict(r) for r in rows]

    def add_batch(self, *, batch_id: str, area: int, run_id: str, staged_path: str, payload_sha256: str,
                  payload_created: str, members: pd.DataFrame, payload: bytes | None = None,
                  payload_name: str = "payload.xml.gz.enc") -> bool:
        """Record a staged batch as `built`, with its encrypted `payload` staged in the same transaction;
        False when a batch with this id exists already (nothing is written then)."""
        with self.begin() as conn:
            existing = conn.execute(sa.select(batches.c.status).where(batches.c.batch_id == batch_id)).first()
            if existing is not None:
                return False
            conn.execute(batches.insert().values(
                batch_id=batch_id, area=area, run_id=run_id, status="built", record_count=len(members),
                annul_count=int((members["action"] == "ANNUL").sum()), staged_path=staged_path,
                payload_sha256=payload_sha256, payload_created=payload_created, attempts=0, created_at=now()))
            # In key order (each keeps its `position`, the payload's order): the key indexes are filled
            # page by page, not at random pages.
            order = np.argsort(members["record_key"].to_numpy(dtype=object), kind="stable")
            rows = members.iloc[order]
            _insert_many(conn, batch_records, {
                "batch_id": batch_id, **{c: _column(rows[c]) for c in (
                    "record_key", "record_id", "content_hash", "action", "masked_person")},
                "position": order.tolist()})
            if payload is not None:
                self.stage(batch_id, payload_name, payload, conn)
        return True

    def batches_in(self, area: int, statuses: Iterable[str]) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(
                batches.c.area == area, batches.c.status.in_(list(statuses)))
                .order_by(batches.c.created_at, batches.c.batch_id)).mappings().all()
        return [dict(r) for r in rows]

    def outstanding_batches(self, area: int) -> list[dict]:
        return self.batches_in(area, OUTSTANDING)

    def all_batches(self) -> list[dict]:
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).order_by(batches.c.area, batches.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

    def areas_with(self, status: str) -> list[int]:
        """The areas that have a batch in `status` (one small query, not a pass over every batch)."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches.c.area).where(batches.c.status == status).distinct()).all()
        return sorted(int(r.area) for r in rows)

    def batch_status_counts(self) -> dict[str, int]:
        """How many batches are in each state (all areas)."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches.c.status, sa.func.count()).group_by(batches.c.status)).all()
        return {status: int(n) for status, n in rows}

    def batch(self, batch_id: str) -> dict | None:
        with self.begin() as conn:
            row = conn.execute(sa.select(batches).where(batches.c.batch_id == batch_id)).mappings().first()
        return dict(row) if row else None

    def batch_members(self, batch_id: str) -> pd.DataFrame:
        with self.begin() as conn:
            return pd.read_sql(sa.select(batch_records).where(batch_records.c.batch_id == batch_id)
                               .order_by(batch_records.c.position), conn)

    def _move(self, batch_id: str, allowed: Iterable[str], status: str, **values: object) -> bool:
        """Move a batch to `status` only from one of the `allowed` states; False when it was elsewhere."""
        values = _mask(values, "last_error")
        with self.begin() as conn:
            result = conn.execute(batches.update().where(
                batches.c.batch_id == batch_id, batches.c.status.in_(list(allowed))).values(status=status, **values))
        return bool(result.rowcount)

    def mark_sending(self, batch_id: str, attempts: int | None = None) -> bool:
        """Written before the POST: after a crash the batch is in doubt and is looked up first.

        With `attempts` (the count the caller read) it is a claim: the row moves only if no other task
        has marked it sending since (compare-and-set on `attempts`; on PostgreSQL the second of two
        concurrent UPDATEs waits for the first's commit, re-reads the row and matches nothing). So two
        tasks can never both send a batch, even if the area lock were lost (docs/architecture.md)."""
        values: dict = {"status": "sent", "sent_at": now(), "attempts": batches.c.attempts + 1}
        where = [batches.c.batch_id == batch_id, batches.c.status.in_(OUTSTANDING)]
        if attempts is not None:
            where.append(batches.c.attempts == attempts)
        with self.begin() as conn:
            return bool(conn.execute(batches.update().where(*where).values(**values)).rowcount)

    def mark_in_doubt(self, batch_id: str, error: str) -> bool:
        """A try failed without a receipt: the batch may have arrived. Never back to `built`."""
        return self._move(batch_id, IN_DOUBT, "unknown", last_error=error)

    def note_error(self, batch_id: str, error: str) -> None:
        """Why the last try of a batch failed, without changing its state."""
        with self.begin() as conn:
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(
                last_error=mask_cpr_in_text(error)))

    def mark_lost(self, batch_id: str, reason: str) -> bool:
        """The receiver has never received the batch and its staged payload is gone: free its records.
        The next preparation reads the whole source, so they are staged again though unchanged there."""
        with self.begin() as conn:
            area = conn.execute(sa.select(batches.c.area).where(batches.c.batch_id == batch_id)).scalar()
            if area is not None:
                self._forget_watermark(conn, area)
        moved = self._move(batch_id, OUTSTANDING, LOST, last_error=reason)
        if moved:
            self.unstage(batch_id)  # what is left of it (a damaged payload) can never be sent
        return moved

    def mark_archived(self, batch_id: str, archive_path: str) -> bool:
        """Archived: the batch moves and its staged blobs go in one transaction (none left behind)."""
        with self.begin() as conn:
            result = conn.execute(batches.update().where(
                batches.c.batch_id == batch_id, batches.c.status == ACKNOWLEDGED).values(
                status=ARCHIVED, archive_path=archive_path, archived_at=now()))
            if result.rowcount:
                self.unstage(batch_id, conn=conn)
        return bool(result.rowcount)

    def apply_receipt(self, batch_id: str, *, run_id: str, outcome: str, message_id: str, event_date: str,
                      record_results: dict[str, tuple[str, str | None, str | None]], recovered: bool = False,
                      ) -> tuple[int, int] | None:
        """Store a receipt in one transaction: the ledger per record, the refused records in quarantine
        with the receiver's reason, and the batch as `acknowledged`. Only an outstanding batch takes a
        receipt (None otherwise: it was stored before). Returns (accepted, rejected).

        The ledger is written as set operations: the members that have a ledger row are found with one
        join, then one executemany UPDATE and one executemany INSERT. What a rejection keeps
        (accepted_hash, receiver_state) is kept by COALESCE with the row's old value."""
        batch = self.batch(batch_id)
        if batch is None or batch["status"] not in OUTSTANDING:
            return None
        with self.begin() as conn:  # tuples in payload order (no frame, no dict per member)
            members = conn.execute(sa.select(
                batch_records.c.record_key, batch_records.c.record_id, batch_records.c.content_hash,
                batch_records.c.action, batch_records.c.masked_person).where(batch_records.c.batch_id == batch_id)
                .order_by(batch_records.c.position)).all()
        area = batch["area"]
        stamp = now()
        rows: list[dict] = []
        refused: list[dict] = []
        accepted = rejected = annulled = 0
        missing = ("REJECTED", "missing", "no receipt line")
        for key, record_id, content_hash, action, masked_person in members:
            status, code, text = record_results.get(record_id, missing)
            if status == "ACCEPTED":
                accepted += 1
                is_annul = action == "ANNUL"
                annulled += is_annul
                rows.append({"b_key": key, "b_id": record_id, "b_stamp": stamp,
                             "b_status": "annulled" if is_annul else "accepted",
                             "b_receiver": "annulled" if is_annul else "active",
                             "b_accepted": None if is_annul else content_hash,  # None: keep the old one
                             "b_rejected": None, "b_code": None, "b_text": None})
            else:
                rejected += 1
                # The receiver keeps what it held before: receiver_state and accepted_hash stay (None: keep).
                rows.append({"b_key": key, "b_id": record_id, "b_stamp": stamp, "b_status": "rejected",
                             "b_receiver": None, "b_accepted": None, "b_rejected": content_hash, "b_code": code,
                             "b_text": mask_cpr_in_text(text)})
                refused.append({"record_key": key, "masked_person": masked_person, "code": code, "text": text})
        with self.begin() as conn:
            moved = conn.execute(batches.update().where(
                batches.c.batch_id == batch_id, batches.c.status.in_(OUTSTANDING)).values(status=ACKNOWLEDGED))
            if not moved.rowcount:
                return None  # another task stored it between the read and this write
            # IN (...) rather than a join: the ledger's key index is searched per member (a join lets
            # SQLite scan the whole area's ledger once per batch, quadratic over a large first run).
            have = set(conn.execute(sa.select(ledger.c.record_key).where(
                ledger.c.area == area, ledger.c.record_key.in_(
                    sa.select(batch_records.c.record_key).where(batch_records.c.batch_id == batch_id)))).scalars())
            old = [r for r in rows if r["b_key"] in have]
            new = [r for r in rows if r["b_key"] not in have]
            if old:
                old.sort(key=lambda r: r["b_key"])
                conn.execute(ledger.update().where(
                    ledger.c.area == area, ledger.c.record_key == sa.bindparam("b_key")).values(
                    record_id=sa.bindparam("b_id"), status=sa.bindparam("b_status"),
                    receiver_state=sa.func.coalesce(sa.bindparam("b_receiver", type_=sa.String),
                                                    ledger.c.receiver_state),
                    accepted_hash=sa.func.coalesce(sa.bindparam("b_accepted", type_=sa.String),
                                                   ledger.c.accepted_hash),
                    rejected_hash=sa.bindparam("b_rejected", type_=sa.String),
                    error_code=sa.bindparam("b_code", type_=sa.String),
                    error_text=sa.bindparam("b_text", type_=sa.Text),
                    last_batch_id=batch_id, updated_at=sa.bindparam("b_stamp")), old)
            if new:
                new.sort(key=lambda r: r["b_key"])  # in key order: the ledger's key index filled page by page
                _insert_many(conn, ledger, {
                    "area": area, "last_batch_id": batch_id, "updated_at": stamp,
                    **{column: [r[name] for r in new] for column, name in (
                        ("record_key", "b_key"), ("record_id", "b_id"), ("status", "b_status"),
                        ("receiver_state", "b_receiver"), ("accepted_hash", "b_accepted"),
                        ("rejected_hash", "b_rejected"), ("error_code", "b_code"), ("error_text", "b_text"))}})
            if refused:
                errors = pd.DataFrame({
                    "record_key": [r["record_key"] for r in refused],
                    "rule": "receiver.rejected", "field": "", "paragraph": "§ 46", "severity": "error",
                    "message": [f"The receiver rejected the record: {r['code']} {r['text'] or ''} "
                                f"(receiver.rejected, § 46) [{r['masked_person']}]" for r in refused]})
                self._quarantine(conn, run_id, area, errors, {r["record_key"]: r["masked_person"] for r in refused})
                # An event of this run, not a standing finding: resolved by the run that records it.
                self._insert_findings(conn, errors.assign(run_id=run_id, area=area), resolved_run=run_id)
            failpoints.point("state.apply_receipt")
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(
                outcome=outcome, receipt_message_id=message_id, receipt_event_date=event_date,
                acknowledged_at=now(), acknowledged_run_id=run_id, last_error=None, accepted_count=accepted,
                rejected_count=rejected, annulled_count=annulled, recovered=recovered))
        return accepted, rejected

    def batches_delivered_for(self, run_id: str) -> list[dict]:
        """The batches a run prepared that the receiver has answered (acknowledged or archived),
        whichever later run's delivery got the answer: a run's counts are about the records it
        extracted, so a batch an earlier run left in doubt counts for that earlier run."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(batches).where(
                batches.c.run_id == run_id, batches.c.status.in_((ACKNOWLEDGED, ARCHIVED)))
                .order_by(batches.c.area, batches.c.created_at)).mappings().all()
        return [dict(r) for r in rows]


def _column(values: pd.Series) -> list:
    """A frame's column as a list of Python values, a missing value (NaN, NA, None) as None."""
    out = values.astype(object).where(values.notna(), None).tolist()
    return out


def _load_keys(conn: Connection, keys: list[str]) -> None:
    """The session's temporary key table `ams_diff_keys`, holding exactly `keys` (COPY on PostgreSQL)."""
    conn.execute(sa.text("CREATE TEMPORARY TABLE IF NOT EXISTS ams_diff_keys (record_key VARCHAR(64) PRIMARY KEY)"))
    conn.execute(sa.text("DELETE FROM ams_diff_keys"))
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection  # psycopg 3
        assert driver is not None
        cursor = driver.cursor()
        with cursor.copy("COPY ams_diff_keys (record_key) FROM STDIN") as copy:
            for key in keys:
                copy.write_row((key,))
        return
    # Sorted: the key table's B-tree grows at its end (random order costs a page search per key), and
    # tuples straight to the driver. `keys` holds each key once (callers pass dict.fromkeys).
    if conn.dialect.paramstyle in ("qmark", "format", "pyformat"):
        marks = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(f"INSERT INTO ams_diff_keys (record_key) VALUES ({marks})", [(k,) for k in sorted(keys)])
    else:
        conn.execute(sa.text("INSERT INTO ams_diff_keys (record_key) VALUES (:k)"), [{"k": k} for k in sorted(keys)])


_OPEN_FINDINGS = ("SELECT f.id, f.record_key, f.rule, f.field, f.paragraph, f.severity, f.message "
                  "FROM ams_findings f WHERE f.area = :area AND f.resolved_run IS NULL AND ")


@dataclass
class FindingsCover:
    """Where a full read's chunks looked at the open findings, so that its end looks only elsewhere.

    `ranges`: the key ranges whose open findings a chunk read whole (SQLite's range path of `_open_findings`);
    `unread`: the keys in those ranges with open findings that the chunk did not read (another chunk read
    them, or the source no longer has them). An open finding older than the run with a key in a range was
    open when its chunk read the range (a resolved finding stays resolved), so it is either a key that chunk
    read or one in `unread`: `resolve_findings_not_read` needs the rest of the index only (`gaps`), and the
    chunks' ranges cover nearly all of it when the read is in key order, as full reads are."""
    ranges: list[tuple[str, str]] = field(default_factory=list)
    unread: set[str] = field(default_factory=set)

    def gaps(self) -> list[tuple[str | None, str | None]]:
        """The key intervals no range covers, as (after, before), both bounds exclusive, None for no bound."""
        gaps: list[tuple[str | None, str | None]] = []
        covered: str | None = None  # the highest key covered so far (None: nothing yet)
        for low, high in sorted(self.ranges):
            if covered is None:
                gaps.append((None, low))
                covered = high
            elif low > covered:
                gaps.append((covered, low))
            covered = max(covered, high)
        gaps.append((covered, None))
        return gaps


def _open_findings(conn: Connection, area: int, keys: list[str],
                   cover: FindingsCover | None = None) -> Sequence[sa.Row]:
    """The open findings of the records `keys` (each once).

    On SQLite, a chunk of a full read holds every record in its range of keys (the read is ordered by key), so
    its findings are one range of the findings' (area, record_key) index, read without loading the keys (issue
    9: the key table's 25,000 inserts and look-ups per chunk were a third of the findings' time at 1M records).
    A read of the changes is a few keys spread over the whole range: those go through the key table. The
    range's findings are counted first (the index alone), and read when they are at most a few per key.
    PostgreSQL loads the keys with COPY, and compares keys in the database's collation, not Python's order."""
    if conn.dialect.name == "sqlite":
        # BINARY, SQLite's comparison of these columns, is the order of the code points, Python's
        low, high = min(keys), max(keys)
        bounds = {"area": area, "low": low, "high": high}
        between = "f.record_key BETWEEN :low AND :high"
        # every finding in the range, resolved ones too: what reading the range costs (and the index alone)
        in_range = conn.execute(sa.text(f"SELECT COUNT(*) FROM ams_findings f WHERE f.area = :area AND {between}"),
                                bounds).scalar_one()
        if in_range <= _FINDINGS_PER_KEY * len(keys):
            wanted = set(keys)
            rows = conn.execute(sa.text(_OPEN_FINDINGS + between), bounds).all()
            if cover is not None:
                cover.ranges.append((low, high))
                cover.unread.update(r.record_key for r in rows if r.record_key not in wanted)
            return [r for r in rows if r.record_key in wanted]
    _load_keys(conn, keys)
    rows = conn.execute(sa.text(_OPEN_FINDINGS + "f.record_key IN (SELECT record_key FROM ams_diff_keys)"),
                        {"area": area}).all()
    conn.execute(sa.text("DELETE FROM ams_diff_keys"))
    return rows


#: Findings in a chunk's range of keys, per key read, up to which the range is read instead of the keys
#: looked up one by one (a range read costs a fraction of a look-up per row).
_FINDINGS_PER_KEY = 4


def sorted_hashes(parts: list[np.ndarray]) -> np.ndarray:
    """The hashes of `parts` (a run's chunks of read keys' hashes) sorted, each once: what `_hashed_in` searches.
    A sort and a comparison of neighbours: numpy 2.4's `np.unique` hashes instead, 0.67 s for a million int64
    against 0.007 s (issue 9: the `findings` phase grew 13x from 100k to 1M with it)."""
    if not parts:
        return np.empty(0, dtype=np.int64)
    hashes = np.sort(np.concatenate(parts))
    return hashes[np.concatenate(([True], hashes[1:] != hashes[:-1]))] if len(hashes) else hashes


def _hashed_in(keys: Sequence[str], read_hashes: np.ndarray) -> np.ndarray:
    """For each key, whether its hash is in `read_hashes` (sorted, each once: what the pipeline passes). A binary
    search per key; `np.isin` made the million hashes unique again on every call (0.7 s a call at 1M records)."""
    hashes = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
    if not len(read_hashes):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(read_hashes, hashes), len(read_hashes) - 1)
    return read_hashes[at] == hashes


def _mask_texts(texts: pd.Series) -> pd.Series:
    """`mask_cpr_in_text` of each text, computed once per distinct text (at 1M records the findings held 25,000
    distinct messages in 212,000)."""
    codes, uniques = pd.factorize(texts, use_na_sentinel=True)
    masked = np.array([mask_cpr_in_text(t) for t in uniques] + [None], dtype=object)
    return pd.Series(masked[codes], index=texts.index, name=texts.name)


def _holder_is_gone(owner: str) -> bool:
    """A lock row's holder on this host whose process no longer exists (killed, crashed)."""
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's task: only an operator can tell (docs/operations.md)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

"""The local AMS receiver's storage: SQLite (stdlib), WAL, one connection per operation.

Two tables: `batches` (one row per batch id, with the canonical request's SHA-256 and the response
sent, for idempotency and GetBatchReceipt) and `records` (one row per record id, with a version
counter: sending a record id again updates it; an annulment marks it ANNULLED). `resends` counts
the times a live record was received again with the same content, or an annulled one annulled
again: a sender that delivers exactly once never makes it grow (the tests' duplicate detector).
Write transactions take SQLite's write lock up front (BEGIN IMMEDIATE), so two receivers on one
database file, or two threads, cannot process the same batch twice.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECORD_ACTIVE = "ACTIVE"
RECORD_ANNULLED = "ANNULLED"

_DDL = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id        TEXT PRIMARY KEY,
    area            INTEGER NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_xml    BLOB NOT NULL,
    received_at     TEXT NOT NULL,
    record_count    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    record_id       TEXT PRIMARY KEY,
    area            INTEGER NOT NULL,
    batch_id        TEXT NOT NULL,
    status          TEXT NOT NULL,          -- ACTIVE or ANNULLED
    version         INTEGER NOT NULL,       -- 1 on create, +1 on every update or annulment
    payload_xml     BLOB,                   -- the record element as received (the last version)
    received_at     TEXT NOT NULL,
    resends         INTEGER NOT NULL DEFAULT 0  -- received again unchanged while live: a duplicate delivery
);
CREATE INDEX IF NOT EXISTS records_area ON records (area);
"""

#: Create or update a record; an update only when the stored record is of the same area.
_UPSERT = """INSERT INTO records (record_id, area, batch_id, status, version, payload_xml, received_at)
   VALUES (?, ?, ?, ?, 1, ?, ?)
   ON CONFLICT (record_id) DO UPDATE SET
     batch_id = excluded.batch_id, status = excluded.status, version = records.version + 1,
     payload_xml = excluded.payload_xml, received_at = excluded.received_at,
     resends = records.resends + (records.status = 'ACTIVE' AND records.payload_xml = excluded.payload_xml)
   WHERE records.area = excluded.area"""
#: The write connection's page cache (KiB): the record ids' index of a million records is ~50 MiB.
WRITER_CACHE_KIB = 128 * 1024
#: A new database's page size (SQLite's default is 4,096): a batch's random record ids dirty a leaf page
#: of the record ids' index each, and every dirty page is written to the WAL at commit and to the file
#: at checkpoint; with 8 KiB pages a batch dirties fewer of them (a database made before keeps its size).
PAGE_SIZE = 8192
#: The write connection checkpoints the WAL into the database when it holds this many pages (SQLite's
#: default, 1,000 pages = 4 MiB, is less than one 5,000-record batch writes: every commit checkpointed,
#: writing the index pages it shares with the last batches again and syncing). 16,384 pages = 64 MiB:
#: a checkpoint every few batches; each commit is in the WAL as before.
WRITER_WAL_PAGES = 16_384
#: This receiver stands in for the agency's service (tests, the demo, the benchmark): its writes must survive
#: the receiver's process being killed (the faults the tests inject), which the operating system's cache
#: gives; they need not survive a power cut. So SQLite does not sync the WAL to disk at checkpoints (NORMAL
#: did: ~5 s of the receiver's 45 s at 1M records, waiting on the disk while holding the write lock).
SYNCHRONOUS = "OFF"
_IDS_PER_QUERY = 500  # bound parameters per IN (...) (SQLite's limit is 999 in old builds)


class _ByKey:
    """Stored rows read as attributes or as keys (row["status"])."""

    def __getitem__(self, key: str) -> object:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True)
class StoredBatch(_ByKey):
    batch_id: str
    area: int
    request_sha256: str
    response_xml: bytes
    received_at: str
    record_count: int


@dataclass(frozen=True)
class StoredRecord(_ByKey):
    record_id: str
    area: int
    batch_id: str
    status: str
    version: int
    payload_xml: bytes | None
    received_at: str
    resends: int = 0

    def summary(self) -> dict[str, object]:
        """The record without its content (what /_records shows)."""
        return {"record_id": self.record_id, "area": self.area, "batch_id": self.batch_id,
                "status": self.status, "version": self.version}


def _batch(row: sqlite3.Row | None) -> StoredBatch | None:
    if row is None:
        return None
    return StoredBatch(row["batch_id"], row["area"], row["request_sha256"], bytes(row["response_xml"]),
                       row["received_at"], row["record_count"])


def _record(row: sqlite3.Row) -> StoredRecord:
    payload = row["payload_xml"]
    return StoredRecord(row["record_id"], row["area"], row["batch_id"], row["status"], row["version"],
                        bytes(payload) if payload is not None else None, row["received_at"], row["resends"])


class Transaction:
    """The writes of one batch, inside one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def batch(self, batch_id: str) -> StoredBatch | None:
        return _batch(self._conn.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone())

    def record_area(self, record_id: str) -> int | None:
        row = self._conn.execute("SELECT area FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return None if row is None else int(row[0])

    def record_areas(self, record_ids: Iterable[str]) -> dict[str, int]:
        """The area of each of these record ids that is stored (ids not stored are left out)."""
        ids = list(dict.fromkeys(record_ids))
        found: dict[str, int] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            part = ids[start:start + _IDS_PER_QUERY]
            rows = self._conn.execute(
                f"SELECT record_id, area FROM records WHERE record_id IN ({','.join('?' * len(part))})", part)
            found.update((str(r[0]), int(r[1])) for r in rows)
        return found

    def upsert_record(self, record_id: str, area: int, batch_id: str, payload_xml: bytes, now: str) -> int | None:
        """Create or update a record (an annulled one comes back to life); returns its version, or None
        (nothing written) when the record id belongs to another area."""
        row = self._conn.execute(_UPSERT + " RETURNING version",
                                 (record_id, area, batch_id, RECORD_ACTIVE, payload_xml, now)).fetchone()
        return None if row is None else int(row[0])

    def upsert_records(self, rows: Iterable[tuple[str, int, str, bytes, str]]) -> None:
        """upsert_record for many (record_id, area, batch_id, payload_xml, now), in their order, in one
        statement: for records that are new or of their area (record_areas); a record id of another area
        is left unchanged (as upsert_record leaves it), but nothing says so here."""
        self._conn.executemany(_UPSERT, ((rid, area, batch_id, RECORD_ACTIVE, xml, now)
                                         for rid, area, batch_id, xml, now in rows))

    def annul_record(self, record_id: str, area: int, batch_id: str, now: str) -> bool:
        """Mark a record of `area` annulled; False when no such record (annulling twice is fine)."""
        row = self._conn.execute(
            "SELECT status FROM records WHERE record_id = ? AND area = ?", (record_id, area)).fetchone()
        if row is None:
            return False
        if row[0] != RECORD_ANNULLED:
            self._conn.execute(
                """UPDATE records SET status = ?, version = version + 1, batch_id = ?, received_at = ?
                   WHERE record_id = ?""",
                (RECORD_ANNULLED, batch_id, now, record_id),
            )
        else:
            self._conn.execute("UPDATE records SET resends = resends + 1 WHERE record_id = ?", (record_id,))
        return True

    def insert_batch(self, batch: StoredBatch) -> None:
        self._conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
            (batch.batch_id, batch.area, batch.request_sha256, batch.response_xml, batch.received_at,
             batch.record_count),
        )


class ReceiverStore:
    """The receiver's SQLite database; safe to share between threads (a connection per read; the writes
    share one kept connection, in turn)."""

    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        conn = self._connect()
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # no effect on a database that has tables
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_DDL)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
            if "resends" not in columns:  # a database made before the column existed
                conn.execute("ALTER TABLE records ADD COLUMN resends INTEGER NOT NULL DEFAULT 0")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction (BEGIN IMMEDIATE): committed on success, rolled back on any error.

        The writes of this process go through one connection, kept open with a page cache large
        enough for the record ids' index (a new connection per batch read it from disk again: the
        cost of a batch grew with the table, +60 % from 100,000 to 1,000,000 records). Its
        transactions take turns (a lock; BEGIN IMMEDIATE serialised them anyway); another process's
        writes are seen as before (SQLite checks for them at every transaction's start). After any
        error the connection is closed (its transaction rolled back) and the next one opens anew."""
        with self._writer_lock:
            conn = self._writer
            if conn is None:
                conn = self._connect()
                conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_WAL_PAGES}")
                self._writer = conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield Transaction(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._writer = None
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                finally:
                    conn.close()
                raise

    def close(self, timeout: float = 5.0) -> None:
        """Close the kept write connection (a later write opens a new one). Called when the receiver
        stops: a write still in its transaction after `timeout` s keeps it (the process is ending), so
        stopping never waits on a request that will not finish."""
        if not self._writer_lock.acquire(timeout=timeout):
            return
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        finally:
            self._writer_lock.release()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        conn = self._connect()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def batch(self, batch_id: str) -> StoredBatch | None:
        rows = self._query("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        return _batch(rows[0]) if rows else None

    def batches(self, area: int | None = None) -> list[StoredBatch]:
        if area is None:
            rows = self._query("SELECT * FROM batches ORDER BY rowid")
        else:
            rows = self._query("SELECT * FROM batches WHERE area = ? ORDER BY rowid", (area,))
        return [b for b in map(_batch, rows) if b is not None]

    def record(self, record_id: str) -> StoredRecord | None:
        rows = self._query("SELECT * FROM records WHERE record_id = ?", (record_id,))
        return _record(rows[0]) if rows else None

    def records(self, area: int | None = None, status: str | None = None) -> list[StoredRecord]:
        """Records in the order they were first received, optionally of one area and/or status."""
        sql, params = "SELECT * FROM records WHERE 1 = 1", list[object]()
        if area is not None:
            sql += " AND area = ?"
            params.append(area)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return [_record(r) for r in self._query(sql + " ORDER BY rowid", tuple(params))]

    def reset(self) -> None:
        """Forget every batch and record (tests: a fresh receiver without a restart)."""
        with self.transaction() as tx:
            tx._conn.execute("DELETE FROM records")
            tx._conn.execute("DELETE FROM batches")

    def counts(self) -> dict[str, int]:
        """How many batches and records are stored (for tests and the demo)."""
        rows = self._query("SELECT (SELECT COUNT(*) FROM batches), (SELECT COUNT(*) FROM records)")
        return {"batches": int(rows[0][0]), "records": int(rows[0][1])}

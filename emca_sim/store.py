"""The simulator's SQLite store (``DIR/state.db``): issued certificates, held requests, registered
applications, seen 4.2.x txns, counters and CRL numbers.

One connection (WAL, ``synchronous=NORMAL``) behind a lock, so the server's threads may call it
concurrently. Writes join an open transaction that a background thread commits every ``commit_interval``
seconds (or once ``max_batch`` writes are waiting); registrations, revocations, approvals and CRL numbers
commit at once. At most ``commit_interval`` of issuances can be lost if the process is killed
(``commit_interval=0`` commits every write). Counters are counted in memory and written with each commit.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from emca_sim.backend import Dialect

ISSUED_BY_APPLICATION_ID = "issued_by_application_id"
ISSUED_BY_PUBLIC_KEY = "issued_by_public_key_sha256"
REQUESTS_BY_METHOD = "requests_by_method"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY, ca_name TEXT NOT NULL, profile TEXT NOT NULL, subscriber_id TEXT NOT NULL,
    application_id TEXT, public_key_sha256 TEXT NOT NULL, certificate_pem TEXT NOT NULL, issued_at TEXT NOT NULL,
    revoked_at TEXT, revocation_reason TEXT);
CREATE INDEX IF NOT EXISTS certificates_by_application_id ON certificates (application_id) WHERE application_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates (ca_name) WHERE revoked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending (
    request_id TEXT PRIMARY KEY, profile TEXT NOT NULL, subscriber_id TEXT NOT NULL, application_id TEXT,
    csr TEXT NOT NULL, state TEXT NOT NULL, serial TEXT, rejection TEXT, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pending_by_application_id ON pending (application_id) WHERE application_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS applications (
    username TEXT PRIMARY KEY, dialect TEXT NOT NULL, password TEXT NOT NULL, client_id TEXT, aes_key BLOB,
    pfx_password TEXT, signer_certificate_pem TEXT);
CREATE TABLE IF NOT EXISTS txns (username TEXT NOT NULL, txn TEXT NOT NULL, PRIMARY KEY (username, txn)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (kind TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, key))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS crl_numbers (ca_name TEXT PRIMARY KEY, number INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class CertRow:
    serial: str
    ca_name: str
    profile: str
    subscriber_id: str
    application_id: str | None
    public_key_sha256: str
    certificate_pem: str
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class PendingRow:
    request_id: str
    profile: str
    subscriber_id: str
    application_id: str | None
    csr: str
    state: str  # pending, approved, rejected
    serial: str | None
    rejection: str | None
    created_at: datetime


@dataclass(frozen=True)
class AppRow:
    username: str
    dialect: Dialect
    password: str
    client_id: str | None = None
    aes_key: bytes | None = None
    pfx_password: str | None = None
    signer_certificate_pem: str | None = None


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _cert_row(row: tuple) -> CertRow:
    return CertRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], datetime.fromisoformat(row[7]), _dt(row[8]), row[9])


def _pending_row(row: tuple) -> PendingRow:
    return PendingRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], datetime.fromisoformat(row[8]))


class Store:
    """SQLite persistence of the simulator's state, safe to call from several threads."""

    def __init__(self, path: Path, *, commit_interval: float = 0.05, max_batch: int = 500) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._in_txn = False
        self._depth = 0
        self._batched = 0
        self._commit_interval = commit_interval
        self._max_batch = max_batch
        self._counters: dict[str, dict[str, int]] = {}
        for kind, key, n in self._conn.execute("SELECT kind, key, n FROM counters"):
            self._counters.setdefault(kind, {})[key] = n
        self._dirty_counters: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if commit_interval > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="emca-sim-store", daemon=True)
            self._flusher.start()

    # -- transactions
    @contextlib.contextmanager
    def _write(self, *, durable: bool = False, atomic: bool = False) -> Iterator[sqlite3.Connection]:
        """Join the open batch (``atomic``: several statements that stand or fall together)."""
        with self._lock:
            if not self._in_txn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._in_txn = True
            if atomic:
                self._conn.execute("SAVEPOINT w")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                if atomic:
                    self._conn.execute("ROLLBACK TO w")
                raise
            finally:
                if atomic:
                    self._conn.execute("RELEASE w")
                self._depth -= 1
            self._batched += 1
            if self._depth == 0 and (durable or self._commit_interval <= 0 or self._batched >= self._max_batch):
                self._commit()

    def _commit(self) -> None:
        if self._depth:
            return
        if self._dirty_counters:
            if not self._in_txn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._in_txn = True
            self._conn.executemany(
                "INSERT INTO counters (kind, key, n) VALUES (?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET n = excluded.n",
                [(kind, key, self._counters[kind][key]) for kind, key in self._dirty_counters])
            self._dirty_counters.clear()
        if self._in_txn:
            self._conn.execute("COMMIT")
            self._in_txn = False
            self._batched = 0

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._commit_interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._commit()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            self._commit()
            self._conn.close()

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- certificates
    def insert_certificate(self, row: CertRow, *, dedupe_application_id: bool) -> CertRow:
        """Store ``row``; with ``dedupe_application_id`` an existing certificate for its application id wins."""
        with self._write() as conn:
            if dedupe_application_id and row.application_id is not None:
                existing = self.certificate_for_application_id(row.application_id)
                if existing is not None:
                    return existing
            conn.execute(
                "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (row.serial, row.ca_name, row.profile, row.subscriber_id, row.application_id, row.public_key_sha256,
                 row.certificate_pem, _ts(row.issued_at)))
            if row.application_id is not None:
                self.increment(ISSUED_BY_APPLICATION_ID, row.application_id)
            self.increment(ISSUED_BY_PUBLIC_KEY, row.public_key_sha256)
            return row

    def certificate(self, serial: str) -> CertRow | None:
        row = self._one("SELECT * FROM certificates WHERE serial = ?", (serial,))
        return None if row is None else _cert_row(row)

    def certificate_for_application_id(self, application_id: str) -> CertRow | None:
        row = self._one("SELECT * FROM certificates WHERE application_id = ? ORDER BY issued_at LIMIT 1", (application_id,))
        return None if row is None else _cert_row(row)

    def certificates_for_application_id(self, application_id: str) -> list[CertRow]:
        """Every certificate issued for ``application_id`` (4.2.x issues again for a repeated one), oldest first."""
        rows = self._all("SELECT * FROM certificates WHERE application_id = ? ORDER BY issued_at, serial", (application_id,))
        return [_cert_row(r) for r in rows]

    def revoke(self, serial: str, revoked_at: datetime | None, reason: str | None) -> None:
        with self._write(durable=True) as conn:
            conn.execute("UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ?",
                         (_ts(revoked_at), reason, serial))

    def revoked(self, ca_name: str) -> list[tuple[int, datetime, str]]:
        rows = self._all("SELECT serial, revoked_at, revocation_reason FROM certificates "
                         "WHERE ca_name = ? AND revoked_at IS NOT NULL ORDER BY revoked_at", (ca_name,))
        return [(int(serial, 16), datetime.fromisoformat(at), reason) for serial, at, reason in rows]

    def next_crl_number(self, ca_name: str) -> int:
        with self._write(durable=True) as conn:
            conn.execute("INSERT INTO crl_numbers VALUES (?, 1) ON CONFLICT (ca_name) DO UPDATE SET number = number + 1",
                         (ca_name,))
            return int(conn.execute("SELECT number FROM crl_numbers WHERE ca_name = ?", (ca_name,)).fetchone()[0])

    # -- manual approval
    def insert_pending(self, row: PendingRow) -> None:
        with self._write(durable=True) as conn:
            conn.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (row.request_id, row.profile, row.subscriber_id, row.application_id, row.csr, row.state,
                          row.serial, row.rejection, _ts(row.created_at)))

    def pending(self, request_id: str) -> PendingRow | None:
        row = self._one("SELECT * FROM pending WHERE request_id = ?", (request_id,))
        return None if row is None else _pending_row(row)

    def open_pending_for_application_id(self, application_id: str) -> PendingRow | None:
        row = self._one("SELECT * FROM pending WHERE application_id = ? AND state = 'pending' LIMIT 1", (application_id,))
        return None if row is None else _pending_row(row)

    def pending_list(self, state: str | None) -> list[PendingRow]:
        if state is None:
            return [_pending_row(r) for r in self._all("SELECT * FROM pending ORDER BY created_at")]
        return [_pending_row(r) for r in self._all("SELECT * FROM pending WHERE state = ? ORDER BY created_at", (state,))]

    def settle_pending(self, request_id: str, state: str, *, certificate: CertRow | None = None,
                       rejection: str | None = None) -> None:
        """Approve (storing ``certificate``) or reject a pending request, in one transaction."""
        with self._write(durable=True, atomic=True) as conn:
            if certificate is not None:
                self.insert_certificate(certificate, dedupe_application_id=False)
            conn.execute("UPDATE pending SET state = ?, serial = ?, rejection = ? WHERE request_id = ?",
                         (state, certificate.serial if certificate else None, rejection, request_id))

    # -- applications, replay protection, counters
    def application(self, username: str) -> AppRow | None:
        row = self._one("SELECT * FROM applications WHERE username = ?", (username,))
        return None if row is None else AppRow(row[0], Dialect(row[1]), row[2], row[3], row[4], row[5], row[6])

    def put_application(self, app: AppRow) -> None:
        with self._write(durable=True) as conn:
            conn.execute("INSERT OR REPLACE INTO applications VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (app.username, app.dialect.value, app.password, app.client_id, app.aes_key, app.pfx_password,
                          app.signer_certificate_pem))

    def remember_txn(self, username: str, txn: str) -> bool:
        with self._write() as conn:
            return conn.execute("INSERT OR IGNORE INTO txns VALUES (?, ?)", (username, txn)).rowcount == 1

    def increment(self, kind: str, key: str) -> None:
        """Count in memory; counters are written with the next commit."""
        with self._lock:
            values = self._counters.setdefault(kind, {})
            values[key] = values.get(key, 0) + 1
            self._dirty_counters.add((kind, key))

    def counters(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {kind: dict(sorted(values.items())) for kind, values in self._counters.items()}

    def reset_counters(self) -> None:
        with self._write(durable=True) as conn:
            conn.execute("DELETE FROM counters")
            self._counters.clear()
            self._dirty_counters.clear()

"""The SQL schema shared by the services (SQLAlchemy 2 declarative).

Every table of the one certrail database is mapped on :class:`Base`, so that
``Base.metadata`` is the whole schema: Alembic's ``env.py`` uses it as
``target_metadata`` (autogenerate), and tests can compare it to the migrated
database. To add a table: declare it here (or in a module imported here),
then write the migration under ``services/common/migrations/versions/``.

Conventions for tables:
- timestamps are :class:`UTCDateTime` columns: timezone-aware UTC datetimes in
  Python on every database (SQLite stores them as naive UTC text);
- constraint names come from :data:`NAMING_CONVENTION` (Alembic's batch mode
  on SQLite needs named constraints to alter them);
- functions that read or write a table take a ``Session`` (opened with
  ``services.common.db.write_session`` / ``read_session``) and return plain
  frozen dataclasses, not ORM objects, so callers never touch an expired
  instance after the session ended.

Tables so far:
- ``service_heartbeats``: one row per running service instance, upserted
  periodically (:func:`record_heartbeat`), listed by :func:`list_heartbeats`.
- the auditor's (written only by ``services/auditor``; see docs/audit.md):
  ``audit_records`` (every Kafka record of every certrail topic, once per
  topic/partition/offset, in a hash chain per partition), ``audit_chain_heads``
  (the last stored row of each chain), ``audit_verify_runs`` (results of
  ``certrail audit verify``), and the certificate inventory read model:
  ``certificate_inventory``, ``certificate_serials``, ``certificate_deployments``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "NAMING_CONVENTION",
    "PREFIX_OWNERS",
    "SHARED",
    "TABLE_OWNERS",
    "AuditChainHead",
    "AuditRecord",
    "AuditVerifyRun",
    "Base",
    "CertificateDeployment",
    "CertificateInventory",
    "CertificateSerial",
    "Heartbeat",
    "ServiceHeartbeat",
    "UTCDateTime",
    "list_heartbeats",
    "owner_of",
    "record_heartbeat",
]

#: the owner of ``service_heartbeats``: every service writes its own rows (into its own database)
SHARED = "shared"

#: tables whose name does not say their owner; every other table is owned by its prefix's service
#: (decision 0017: each service owns its tables, in a database of its own; tests/unit/test_service_boundaries.py)
TABLE_OWNERS: dict[str, str] = {
    "certificate_inventory": "auditor",
    "certificate_serials": "auditor",
    "certificate_deployments": "auditor",
    # the connector registry (services/issuer/registry/): the issuer holds the secrets and is its only writer and
    # reader; the gateway keeps its own view (gateway_connectors) from the connector admin events (decision 0034)
    "emca_connectors": "issuer",
    # every service writes its own rows through record_heartbeat
    "service_heartbeats": SHARED,
}
PREFIX_OWNERS: dict[str, str] = {"gateway_": "gateway", "issuer_": "issuer", "deployer_": "deployer", "audit_": "auditor"}


def owner_of(table: str) -> str | None:
    """The service that owns ``table`` (:data:`SHARED` for ``service_heartbeats``), None for a table of no one."""
    if table in TABLE_OWNERS:
        return TABLE_OWNERS[table]
    return next((service for prefix, service in PREFIX_OWNERS.items() if table.startswith(prefix)), None)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    Binding a naive datetime is an error (its zone would be a guess). Aware
    values are converted to UTC; SQLite, which has no zone, stores naive UTC.
    Values read back are always aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ServiceHeartbeat(Base):
    """One running instance of a service, as last reported by itself."""

    __tablename__ = "service_heartbeats"

    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    hostname: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A snapshot of one ``service_heartbeats`` row."""

    service: str
    instance_id: str
    pid: int
    hostname: str
    version: str
    started_at: datetime
    last_seen_at: datetime


_HEARTBEAT_UPDATED_COLUMNS = ("pid", "hostname", "version", "started_at", "last_seen_at")
"""Columns an upsert overwrites (everything but the key)."""


def record_heartbeat(
    session: Session,
    service: str,
    instance_id: str,
    *,
    pid: int,
    hostname: str,
    version: str,
    started_at: datetime,
    now: datetime | None = None,
) -> None:
    """Insert or update the heartbeat of one service instance (``INSERT ... ON CONFLICT DO UPDATE``).

    ``now`` (default: the current UTC time) becomes ``last_seen_at``. Call it
    inside ``write_session``; the caller's transaction commits it.
    """
    values: dict[str, Any] = {
        "service": service,
        "instance_id": instance_id,
        "pid": pid,
        "hostname": hostname,
        "version": version,
        "started_at": started_at,
        "last_seen_at": now if now is not None else datetime.now(UTC),
    }
    table = ServiceHeartbeat.__table__
    dialect_name = session.get_bind().dialect.name
    if dialect_name == "postgresql":
        pg_insert = postgresql.insert(table).values(values)
        statement: Any = pg_insert.on_conflict_do_update(
            index_elements=[table.c.service, table.c.instance_id],
            set_={name: pg_insert.excluded[name] for name in _HEARTBEAT_UPDATED_COLUMNS},
        )
    elif dialect_name == "sqlite":
        lite_insert = sqlite.insert(table).values(values)
        statement = lite_insert.on_conflict_do_update(
            index_elements=[table.c.service, table.c.instance_id],
            set_={name: lite_insert.excluded[name] for name in _HEARTBEAT_UPDATED_COLUMNS},
        )
    else:
        raise NotImplementedError(f"record_heartbeat: unsupported database {dialect_name!r}")
    session.execute(statement)



def list_heartbeats(session: Session) -> list[Heartbeat]:
    """Every recorded heartbeat, ordered by service and instance id."""
    rows = session.scalars(
        select(ServiceHeartbeat).order_by(ServiceHeartbeat.service, ServiceHeartbeat.instance_id)
    )
    return [
        Heartbeat(
            service=row.service,
            instance_id=row.instance_id,
            pid=row.pid,
            hostname=row.hostname,
            version=row.version,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
        )
        for row in rows
    ]


# -- the auditor's tables (services/auditor; docs/audit.md) -------------------

#: a 64-bit row id that is SQLite's rowid there (INTEGER PRIMARY KEY) and a BIGINT elsewhere
RowId = BigInteger().with_variant(Integer(), "sqlite")


class AuditRecord(Base):
    """One Kafka record of a certrail topic, stored once per (topic, partition, offset).

    The content columns (coordinates, timestamp, key, value, headers and the
    redaction facts) are covered by ``row_hash`` = SHA-256(prev_hash || the
    canonical encoding of the content) (services/auditor/chain.py); the
    envelope columns are derived from ``value`` and checked by verify.
    ``value`` holds the bytes as received except that each private-key block
    is replaced by its hash (then ``original_sha256``/``original_size``
    describe the bytes as received). A record whose event id was stored
    before, at another offset, points to that first occurrence (``first_*``).
    """

    __tablename__ = "audit_records"
    __table_args__ = (
        UniqueConstraint("topic", "partition", "offset"),
        Index("ix_audit_records_event_id", "event_id"),
        Index("ix_audit_records_certificate_id", "certificate_id"),
        Index("ix_audit_records_request_id", "request_id"),
        Index("ix_audit_records_timestamp_ms", "timestamp_ms"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    timestamp_ms: Mapped[int | None] = mapped_column(BigInteger)
    timestamp_type: Mapped[int | None] = mapped_column(Integer)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)
    headers: Mapped[str | None] = mapped_column(Text)  # JSON [[name, base64 value], ...]; NULL when none
    private_keys_removed: Mapped[int] = mapped_column(Integer)
    original_sha256: Mapped[str | None] = mapped_column(String(64))  # set when something was redacted
    original_size: Mapped[int | None] = mapped_column(Integer)
    decode_error: Mapped[str | None] = mapped_column(String(64))  # ErrorCode; NULL for a valid message
    decode_reason: Mapped[str | None] = mapped_column(String(2000))
    event_id: Mapped[str | None] = mapped_column(String(128))
    event_type: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(256))
    subject: Mapped[str | None] = mapped_column(String(256))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    causation_id: Mapped[str | None] = mapped_column(String(128))
    event_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    certificate_id: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(128))
    first_topic: Mapped[str | None] = mapped_column(String(249))
    first_partition: Mapped[int | None] = mapped_column(Integer)
    first_offset: Mapped[int | None] = mapped_column(BigInteger)
    prev_offset: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditChainHead(Base):
    """The last stored row of one partition's hash chain (offset -1: none yet).
    Read and locked inside each write transaction (SELECT ... FOR UPDATE)."""

    __tablename__ = "audit_chain_heads"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    row_hash: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditVerifyRun(Base):
    """One run of ``certrail audit verify`` (the auditor exports the latest as metrics)."""

    __tablename__ = "audit_verify_runs"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)
    rows_checked: Mapped[int] = mapped_column(BigInteger)
    problems: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(Text)


class CertificateInventory(Base):
    """The certificate inventory (read model), one row per managed certificate,
    built by the auditor from the events on the producers' ``certrail.events.*`` topics. ``status`` is
    pending, active, revoked or failed as stored; "expired" is derived when read
    (an active certificate past ``not_after``: services/auditor/inventory.py)."""

    __tablename__ = "certificate_inventory"
    __table_args__ = (Index("ix_certificate_inventory_not_after", "not_after"),)

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    serial: Mapped[str | None] = mapped_column(String(40))
    subject: Mapped[str | None] = mapped_column(String(1024))
    sans: Mapped[str | None] = mapped_column(Text)  # JSON list
    issuer: Mapped[str | None] = mapped_column(String(1024))  # the issuing CA
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    connector: Mapped[str | None] = mapped_column(String(63))
    profile: Mapped[str | None] = mapped_column(String(128))
    requester: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(128))
    issuance_id: Mapped[str | None] = mapped_column(String(36))
    public_key_sha256: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_event_id: Mapped[str] = mapped_column(String(128))
    #: the current serial's revocation on the CA's CRL: confirmed | unconfirmed (None: not checked or not revoked)
    revocation_check: Mapped[str | None] = mapped_column(String(16))
    revocation_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_type: Mapped[str] = mapped_column(String(200))
    last_event_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CertificateSerial(Base):
    """Every serial a managed certificate had: current (active), superseded or revoked."""

    __tablename__ = "certificate_serials"
    __table_args__ = (Index("ix_certificate_serials_serial", "serial"),)

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    issuer: Mapped[str | None] = mapped_column(String(1024))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    issuance_id: Mapped[str | None] = mapped_column(String(36))
    request_id: Mapped[str | None] = mapped_column(String(128))
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    #: confirmed | unconfirmed: what the issuer found on the CA's CRL (RevocationConfirmed / RevocationUnconfirmed)
    revocation_check: Mapped[str | None] = mapped_column(String(16))
    revocation_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_crl_number: Mapped[str | None] = mapped_column(String(64))


class CertificateDeployment(Base):
    """Where a managed certificate is deployed, as the deployer last reported."""

    __tablename__ = "certificate_deployments"

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(256), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # deployed | failed
    serial: Mapped[str] = mapped_column(String(40))
    verified_serial: Mapped[str | None] = mapped_column(String(40))
    rolled_back: Mapped[bool | None] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# -- the emCA connector registry (services/common/connectors; docs/connectors.md) ----------------


class EmcaConnectorRow(Base):
    """One emCA connector. Written only through ``services.common.connectors`` (gateway, CLI);
    ``status`` is also set by the issuer (misconfigured). ``secrets`` is one Fernet token over the
    JSON of every secret (password, ClientID, AES key, PFX, PFX password), encrypted under the
    key ``secrets_key_id`` names; nothing else here is secret."""

    __tablename__ = "emca_connectors"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[str] = mapped_column(String(16))
    base_url: Mapped[str] = mapped_column(String(2048))
    username: Mapped[str] = mapped_column(String(256))
    issuing_ca: Mapped[str] = mapped_column(String(256))
    subscriber_id: Mapped[str] = mapped_column(String(256))
    default_profile: Mapped[str] = mapped_column(String(256))
    concurrency: Mapped[int] = mapped_column(Integer)
    ca_bundle_pem: Mapped[str | None] = mapped_column(Text)
    pinned_ca_sha256: Mapped[str] = mapped_column(String(64))
    pinned_chain_pem: Mapped[str] = mapped_column(Text)  # the issuing CA first, PEM concatenated
    secrets: Mapped[bytes] = mapped_column(LargeBinary)
    secrets_key_id: Mapped[str] = mapped_column(String(16))
    secret_fields: Mapped[str] = mapped_column(String(128))  # comma-separated names of the secrets set
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(String(2000))
    last_test_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_test_code: Mapped[str | None] = mapped_column(String(64))
    last_test_message: Mapped[str | None] = mapped_column(String(2000))
    last_tested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# -- the issuer's state (services/issuer/state.py; docs/issuer.md) ---------------------------------


class IssuerAdminOutbox(Base):
    """The issuer's admin events: the connector changes (ConnectorCreated, Updated, Activated, Deactivated,
    Deleted), written in the transaction of the change in ``emca_connectors`` (services/issuer/registry/;
    decisions 0019 and 0034, migration 0025), and the duplicates' DuplicateResolved, written with the resolution
    (services/issuer/duplicates/, decision 0032); the issuer's relay publishes unsent rows in ``seq`` order with
    the stored bytes to its events topic. Never a secret: secrets as ``***``."""

    __tablename__ = "issuer_admin_outbox"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_issuer_admin_outbox_sent_at", "sent_at", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(64))
    key: Mapped[str | None] = mapped_column(String(300))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())



class IssuerOperation(Base):
    """One operation of the issuer against emCA: an issuance (keyed by its issuance_id, emCA's
    applicationId) or a revocation (keyed by ``revoke:`` + the command's event id).

    The intent is written before emCA is called (``state`` submitting, ``uncertain`` set while a
    call may have reached emCA without an answer), the outcome before anything is published:
    ``outcome`` holds the exact records to publish (JSON list of topic, key and value), so a
    redelivered command re-emits byte-identical events. ``pending`` rows are manual approvals,
    polled by the instance that holds ``topic``/``partition``."""

    __tablename__ = "issuer_operations"
    __table_args__ = (
        Index("ix_issuer_operations_pending", "state", "topic", "partition"),
        Index("ix_issuer_operations_certificate", "certificate_id"),
    )

    op_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # issue | renew | revoke
    command_id: Mapped[str] = mapped_column(String(128))
    certificate_id: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(128))
    connector: Mapped[str] = mapped_column(String(63))
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    uncertain: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer)
    command: Mapped[str] = mapped_column(Text)  # the command event (JSON): CSR and SANs, no secrets
    ca_request_id: Mapped[str | None] = mapped_column(String(256))
    serial: Mapped[str | None] = mapped_column(String(64))
    possible_duplicate: Mapped[bool] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(Text)
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    poll_attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IssuerRevocationCheck(Base):
    """A revocation emCA accepted, to be confirmed on the CA's CRL (services/issuer/revocation/; docs/issuer.md
    "Revocation confirmed"). Written with the revocation's outcome (one transaction), polled by the instance that
    holds ``topic``/``partition`` until ``state`` is confirmed or unconfirmed; ``outcome`` holds the exact records
    to publish (as issuer_operations' does), ``published_at`` is set once they are acknowledged."""

    __tablename__ = "issuer_revocation_checks"
    __table_args__ = (Index("ix_issuer_revocation_checks_due", "state", "next_check_at"),)

    check_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the CertificateRevoked event's id
    certificate_id: Mapped[str] = mapped_column(String(200))
    serial: Mapped[str] = mapped_column(String(64))
    connector: Mapped[str] = mapped_column(String(63))
    reason: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(128))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # pending | confirmed | unconfirmed
    distribution_point: Mapped[str | None] = mapped_column(String(2048))
    checks: Mapped[int] = mapped_column(Integer)
    last_cause: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)  # JSON ErrorInfo of the last failure
    crl_number: Mapped[str | None] = mapped_column(String(64))
    crl_this_update: Mapped[datetime | None] = mapped_column(UTCDateTime())
    listed_reason: Mapped[str | None] = mapped_column(String(32))
    next_check_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IssuerWatchedSerial(Base):
    """A serial the issuer issued, watched on its CA's CRL for a revocation certrail did not ask for
    (services/issuer/revocation/watch*.py; docs/issuer.md "Revocations made outside certrail"). Filled from the
    issuer's own issued operations (once per serial); ``state`` becomes revoked_out_of_band once its CRL lists it,
    with ``outcome`` the exact RevokedOutOfBand records (published once; ``published_at`` once acknowledged)."""

    __tablename__ = "issuer_watched_serials"
    __table_args__ = (Index("ix_issuer_watched_serials_live", "connector", "state", "not_after"),)

    connector: Mapped[str] = mapped_column(String(63), primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(128))
    op_key: Mapped[str] = mapped_column(String(200))  # the issuance's issuer_operations row
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    distribution_point: Mapped[str | None] = mapped_column(String(2048))  # None: the certificate names none
    state: Mapped[str] = mapped_column(String(24))  # live | revoked_out_of_band
    reason: Mapped[str | None] = mapped_column(String(32))
    revoked_at_ca: Mapped[datetime | None] = mapped_column(UTCDateTime())
    crl_number: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IssuerCrlWatch(Base):
    """Per connector: when its CRL was last read for the out-of-band watch and how it went (every issuer
    instance reports these as metrics; the owner of the connector's partition 0 runs the watch)."""

    __tablename__ = "issuer_crl_watch"

    connector: Mapped[str] = mapped_column(String(63), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the first attempt
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_at: Mapped[datetime] = mapped_column(UTCDateTime())
    failures: Mapped[int] = mapped_column(Integer)  # consecutive failed rounds
    last_error: Mapped[str | None] = mapped_column(String(2000))
    crl_number: Mapped[str | None] = mapped_column(String(64))
    live_serials: Mapped[int] = mapped_column(Integer)


class IssuerDuplicate(Base):
    """A possible duplicate issuance (4.2.x, no applicationId dedupe): emCA may hold an extra certificate for the
    CSR of ``issuance_id`` besides ``delivered_serial`` (services/issuer/duplicates/; docs/issuer.md "Possible
    duplicates"). Written with the issuance's outcome (one transaction); ``state`` becomes resolved when an operator
    resolves it (the extra serial checked and revoked, or none at emCA), with ``outcome`` the exact records to
    publish (``published_at`` once acknowledged)."""

    __tablename__ = "issuer_duplicates"
    __table_args__ = (Index("ix_issuer_duplicates_state", "state", "connector"),
                      Index("ix_issuer_duplicates_certificate", "certificate_id"))

    issuance_id: Mapped[str] = mapped_column(String(200), primary_key=True)  # emCA's applicationId
    certificate_id: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(128))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    detected_event_id: Mapped[str] = mapped_column(String(128))  # DuplicateDetected: the resolution's causation
    connector: Mapped[str] = mapped_column(String(63))
    topic: Mapped[str] = mapped_column(String(249))  # the issuance's command partition (its revocation check's too)
    partition: Mapped[int] = mapped_column(Integer)
    delivered_serial: Mapped[str] = mapped_column(String(64))
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))  # unresolved | resolved
    resolution: Mapped[str | None] = mapped_column(String(16))  # revoked | no_extra
    extra_serial: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(String(1000))
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# -- the gateway (services/gateway/store.py; docs/gateway.md) ------------------------------------------


class GatewayProfile(Base):
    """A provisioning profile: ``spec`` is the JSON of services.gateway.policy.ProvisioningProfile."""

    __tablename__ = "gateway_profiles"
    __table_args__ = (Index("ix_gateway_profiles_connector", "connector"),)

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    connector: Mapped[str] = mapped_column(String(63))
    spec: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayToken(Base):
    """An API token: only its SHA-256 is stored (services/gateway/policy/tokens.py)."""

    __tablename__ = "gateway_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    profiles: Mapped[str | None] = mapped_column(Text)  # JSON list; NULL: every profile
    description: Mapped[str | None] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GatewayRequesterKey(Base):
    """A key a requester signs Kafka requests with: an HMAC secret (encrypted like connector
    secrets) or a public key (PEM)."""

    __tablename__ = "gateway_requester_keys"

    requester: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    secrets_key_id: Mapped[str | None] = mapped_column(String(16))
    public_key_pem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GatewayRequest(Base):
    """One request id as first answered (the dedupe key): the answer and the exact records
    published for it, so a redelivered request re-publishes the same bytes."""

    __tablename__ = "gateway_requests"
    __table_args__ = (Index("ix_gateway_requests_certificate", "certificate_id"),)

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    certificate_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # accepted | rejected
    answer: Mapped[str] = mapped_column(Text)  # JSON
    outbound: Mapped[str] = mapped_column(Text)  # JSON list of {topic, key, value}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayCertificate(Base):
    """A managed certificate as the gateway knows it: its profile, connector, requester and the
    revision of its latest issuance (the issuance id derives from the id and the revision)."""

    __tablename__ = "gateway_certificates"
    __table_args__ = (Index("ix_gateway_certificates_profile", "profile"),)

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    profile: Mapped[str] = mapped_column(String(128))
    connector: Mapped[str] = mapped_column(String(63))
    requester: Mapped[str] = mapped_column(String(128))
    key_generation: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    sans: Mapped[str] = mapped_column(Text)  # JSON list, as last requested
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayNotice(Base):
    """A notice the renewal scheduler sent once: RenewalDue (``kind`` renewal_due) or
    CertificateExpiring (``kind`` expiring:<days>), per certificate and serial."""

    __tablename__ = "gateway_notices"

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayLease(Base):
    """A named lease (the renewal scheduler's): one holder at a time until ``expires_at``."""

    __tablename__ = "gateway_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayIssuedSerial(Base):
    """The gateway's own projection of what the issuer issued and revoked for the certificates it
    manages (services/gateway/issued.py; decision 0017): one row per certificate and serial, folded
    from CertificateIssued and CertificateRevoked on ``certrail.events.issuer``. ``status`` is
    active (the certificate's current serial), superseded or revoked. Renew, revoke and the
    renewal scheduler read it; migration 0011 filled it once from the auditor's inventory."""

    __tablename__ = "gateway_issued_serials"
    __table_args__ = (
        Index("ix_gateway_issued_serials_serial", "serial"),
        Index("ix_gateway_issued_serials_status_not_after", "status", "not_after"),
    )

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    issuer: Mapped[str | None] = mapped_column(String(1024))  # the issuing CA
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    profile: Mapped[str | None] = mapped_column(String(128))
    connector: Mapped[str | None] = mapped_column(String(63))
    sans: Mapped[str | None] = mapped_column(Text)  # JSON list
    request_id: Mapped[str | None] = mapped_column(String(128))
    issuance_id: Mapped[str | None] = mapped_column(String(36))
    event_id: Mapped[str | None] = mapped_column(String(128))  # the CertificateIssued's (migration-0011 when copied)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # that event's time
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(String(32))


class GatewayConnector(Base):
    """The gateway's own projection of the emCA connectors (services/gateway/connector_view.py; decisions 0017
    and 0034): one row per connector name, folded from the connector admin events (ConnectorCreated, Updated,
    Activated, Deactivated, Deleted, outcome succeeded). ``status`` is enabled, disabled or deleted (a
    tombstone, so that an older event arriving late does not bring a deleted connector back); ``changed_at``
    the time of the event last folded (an older one is ignored). Intake (does the profile's connector exist,
    is it disabled) and the profile checks read it, never ``emca_connectors`` (the issuer's); migration 0025
    filled it once from that table."""

    __tablename__ = "gateway_connectors"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_id: Mapped[str | None] = mapped_column(String(128))


class GatewayRequestStatus(Base):
    """The gateway's own projection of the issuer's outcome of each request it accepted
    (services/gateway/request_status.py; decision 0017): one row per request id, folded from
    IssuancePending, CertificateIssued, IssuanceFailed, CertificateRevoked and RevocationFailed on
    ``certrail.events.issuer``. ``state`` is pending_approval, issued, failed or revoked; ``result``
    the JSON object ``GET /v1/requests/{id}`` answers; the event it came from by id, type and time.
    Migration 0012 filled it once from the audit log."""

    __tablename__ = "gateway_request_status"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(24))
    result: Mapped[str] = mapped_column(Text)  # JSON object
    event_type: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(128))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayAdminOutbox(Base):
    """An admin event written in the same transaction as the configuration change it describes
    (services/gateway/config/; decision 0019). ``value`` is the CloudEvent exactly as published;
    ``sent_at`` is set once Kafka acknowledged it. The relay publishes unsent rows in ``seq`` order."""

    __tablename__ = "gateway_admin_outbox"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_gateway_admin_outbox_sent_at", "sent_at", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(64))  # the topic without its prefix (the relay's prefix applies)
    key: Mapped[str | None] = mapped_column(String(300))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# -- the deployer's tables (services/deployer; docs/deployer.md) -------------------------------------


class DeployerAdminOutbox(Base):
    """The deployer's admin events (targets and bindings), written in the transaction of the change
    (services/deployer/config/; decisions 0019, migration 0014); the deployer's relay publishes unsent
    rows in ``seq`` order with the stored bytes. Never a secret value: secret names only. It also carries the
    deployer's BotKeyDestroyed events, written with the key's destruction (migration 0016, decision 0026)."""

    __tablename__ = "deployer_admin_outbox"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_deployer_admin_outbox_sent_at", "sent_at", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(64))
    key: Mapped[str | None] = mapped_column(String(300))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
# Written only by services/deployer and `certrail targets`. Secrets (target secrets, bot-held
# private keys) are Fernet tokens under the deployer's own key (CERTRAIL_DEPLOYER_KEYS).


class DeployerTargetRow(Base):
    """One deployment target: its kind, its non-secret configuration (JSON) and its
    secrets (one Fernet token over a JSON object; NULL when the kind has none)."""

    __tablename__ = "deployer_targets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[str] = mapped_column(Text)
    secrets: Mapped[bytes | None] = mapped_column(LargeBinary)
    secrets_key_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeployerBindingRow(Base):
    """A provisioning profile's certificates are deployed to this target."""

    __tablename__ = "deployer_bindings"

    profile: Mapped[str] = mapped_column(String(128), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeployerDeploymentRow(Base):
    """One certificate (serial) on one target: attempts, outcome, and the event published
    (``outcome``, re-published byte for byte on redelivery)."""

    __tablename__ = "deployer_deployments"
    __table_args__ = (Index("ix_deployer_deployments_target", "target_name", "status"),)

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # in_progress | deployed | failed
    attempts: Mapped[int] = mapped_column(Integer)
    rolled_back: Mapped[bool | None] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(2000))
    cause_id: Mapped[str] = mapped_column(String(128))
    certificate_pem: Mapped[str] = mapped_column(Text)
    chain_pem: Mapped[str] = mapped_column(Text)  # JSON list
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeployerBotKeyRow(Base):
    """A private key the deployer generated for a bot-held certificate, encrypted under the
    deployer's key, matched to its certificate by the public-key hash. ``cause_id`` is the
    message that made it (ProvisionCertificate, RenewalDue, CertificateRevoked), so a
    redelivery reuses the key and re-publishes the same request (``request_event``).

    Key retention (migration 0016, decision 0026): ``superseded_at`` is when the key stopped being
    needed (a newer key's certificate deployed, or its serial revoked) and ``retire_reason`` why; the
    retention sweep destroys it after the grace period (at once for key_compromise): ``private_key``
    becomes NULL and ``destroyed_at`` is set. The row stays as a tombstone (the hash, the CSR and the
    certificate: what a renewal of that serial and the trust checks still need)."""

    __tablename__ = "deployer_bot_keys"
    __table_args__ = (
        UniqueConstraint("certificate_id", "public_key_sha256"),
        Index("ix_deployer_bot_keys_serial", "certificate_id", "serial"),
        Index("ix_deployer_bot_keys_retention", "destroyed_at", "superseded_at"),
    )

    cause_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(String(128))
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    key_algorithm: Mapped[str] = mapped_column(String(16))
    private_key: Mapped[bytes | None] = mapped_column(LargeBinary)  # None: destroyed
    private_key_key_id: Mapped[str] = mapped_column(String(16))
    csr_pem: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    request_event: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # requested | issued
    serial: Mapped[str | None] = mapped_column(String(40))
    replaces_serial: Mapped[str | None] = mapped_column(String(40))
    certificate_pem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retire_reason: Mapped[str | None] = mapped_column(String(16))  # superseded | key_compromise
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# -- the deployer's projections (services/deployer/projection.py; docs/decisions/0011-deployer-trusts-nothing.md) --


class DeployerConnectorPinRow(Base):
    """The issuing CA a connector is pinned to (SHA-256 of its DER certificate), as the
    deployer learnt it from ConnectorCreated / ConnectorUpdated (re-pin) admin events."""

    __tablename__ = "deployer_connector_pins"

    connector: Mapped[str] = mapped_column(String(63), primary_key=True)
    pinned_ca_sha256: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeployerProfileKindRow(Base):
    """Whether a provisioning profile's keys are generated by the deployer (``bot``) or held by
    the requester (``requester``), from ProfileCreated / ProfileUpdated admin events."""

    __tablename__ = "deployer_profile_kinds"

    profile: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_generation: Mapped[str] = mapped_column(String(16))
    #: the profile's on_revocation (keep | remove; migration 0018, decision 0028); None: never said (keep)
    on_revocation: Mapped[str | None] = mapped_column(String(16))
    #: the profile's on_external_revocation (notify | replace; migration 0026, decision 0030); None: never said (notify)
    on_external_revocation: Mapped[str | None] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeployerAcceptedCertificateRow(Base):
    """A certificate id the gateway accepted a request for (RequestAccepted issue or renew):
    the deployer installs certificates only for these (or for its own bot-held keys). One row
    per id, the latest accepted request's; ``public_key_sha256`` is its CSR's key (migration
    0009), None when it carried none or predates the field."""

    __tablename__ = "deployer_accepted_certificates"

    certificate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str | None] = mapped_column(String(128))
    connector: Mapped[str | None] = mapped_column(String(63))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    public_key_sha256: Mapped[str | None] = mapped_column(String(64))


class DeployerParkedCertificateRow(Base):
    """A CertificateIssued the deployer holds back because a gateway event that would let it
    install the certificate may still be on its way (decision 0016; services/deployer/parking.py):
    the record as it arrived, why it waits, and until when. Deleted when it is installed or refused."""

    __tablename__ = "deployer_parked_certificates"
    __table_args__ = (
        Index("ix_deployer_parked_certificates_certificate_id", "certificate_id"),
        Index("ix_deployer_parked_certificates_connector", "connector"),
        Index("ix_deployer_parked_certificates_deadline", "deadline"),
    )

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(String(200))
    connector: Mapped[str] = mapped_column(String(63))
    record: Mapped[str] = mapped_column(Text)  # the CloudEvent as consumed (a certificate and its chain; never a key)
    code: Mapped[str] = mapped_column(String(64))  # the curable refusal it waits to have cured
    parked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime] = mapped_column(UTCDateTime())


# -- the gateway's ACME door (services/gateway/acme/; docs/acme.md, decision 0033, migration 0020) ----------


class GatewayAcmeEabKey(Base):
    """An External Account Binding key (RFC 8555 7.3.4): binds the first ACME account that presents it to
    ``requester`` and ``profiles``. The HMAC key is sealed with the gateway's secret box like requesters'
    HMAC keys; ``account_id`` is set once, by the account it was used for (single-use)."""

    __tablename__ = "gateway_acme_eab_keys"
    __table_args__ = (Index("ix_gateway_acme_eab_keys_requester", "requester"),)

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    requester: Mapped[str] = mapped_column(String(128))
    profiles: Mapped[str] = mapped_column(Text)  # JSON list
    hmac_key: Mapped[bytes] = mapped_column(LargeBinary)  # sealed (services/common/connectors/secretbox.py)
    secrets_key_id: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    account_id: Mapped[str | None] = mapped_column(String(64))
    bound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class GatewayAcmeAccount(Base):
    """An ACME account: its current public key (JWK JSON, and its RFC 7638 thumbprint, unique: one
    account per key), status (valid | deactivated), contacts, and the requester and profiles of the EAB
    key it was created with."""

    __tablename__ = "gateway_acme_accounts"
    __table_args__ = (
        UniqueConstraint("jwk_thumbprint"),
        Index("ix_gateway_acme_accounts_requester", "requester"),
    )

    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jwk_thumbprint: Mapped[str] = mapped_column(String(64))
    jwk: Mapped[str] = mapped_column(Text)  # the public JWK, JSON
    status: Mapped[str] = mapped_column(String(16))
    contact: Mapped[str] = mapped_column(Text)  # JSON list
    terms_agreed: Mapped[bool] = mapped_column(Boolean)
    requester: Mapped[str] = mapped_column(String(128))
    profiles: Mapped[str] = mapped_column(Text)  # JSON list
    eab_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayAcmeNonce(Base):
    """A Replay-Nonce the ACME door handed out and nobody used yet: consumed by deleting it (so every
    gateway instance accepts every instance's nonces, each once); expired ones are pruned."""

    __tablename__ = "gateway_acme_nonces"
    __table_args__ = (Index("ix_gateway_acme_nonces_expires_at", "expires_at"),)

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


# -- ACME orders, authorizations and challenges (services/gateway/acme/orders*.py; migration 0021) -----------


#: the orders ``ux_gateway_acme_orders_replaces_live`` holds to one per replaced certificate (migration 0024)
ACME_ORDER_REPLACES_LIVE = "replaces IS NOT NULL AND status <> 'invalid'"


class GatewayAcmeOrder(Base):
    """An ACME order (RFC 8555 7.1.3) of an account: its identifiers and authorizations (JSON lists, in the
    order's order), status (pending | ready | invalid here; processing and valid come with finalize), the
    profiles of the account that allow every identifier (finalize picks among them), and the problem that
    made it invalid (JSON)."""

    __tablename__ = "gateway_acme_orders"
    __table_args__ = (
        Index("ix_gateway_acme_orders_account", "account_id", "status"),
        Index("ix_gateway_acme_orders_replaces", "replaces"),
        # at most one live (not invalid) order replaces a certificate (RFC 9773 alreadyReplaced); migration 0024
        Index("ux_gateway_acme_orders_replaces_live", "replaces", unique=True,
              sqlite_where=text(ACME_ORDER_REPLACES_LIVE), postgresql_where=text(ACME_ORDER_REPLACES_LIVE)),
    )

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    identifiers: Mapped[str] = mapped_column(Text)  # JSON list of {"type", "value"}
    authz_ids: Mapped[str] = mapped_column(Text)  # JSON list
    profiles: Mapped[str] = mapped_column(Text)  # JSON list
    error: Mapped[str | None] = mapped_column(Text)  # JSON problem document
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # RFC 9773 5: the certID of the certificate (of this account) the order replaces; migration 0023
    replaces: Mapped[str | None] = mapped_column(String(200))


class GatewayAcmeAuthorization(Base):
    """An ACME authorization (RFC 8555 7.1.4): an account's claim on one identifier, status pending | valid |
    invalid | deactivated (expired and revoked are read from ``expires_at``). ``validating``: the challenge
    being validated (one at a time: a conditional UPDATE sets it), NULL otherwise."""

    __tablename__ = "gateway_acme_authorizations"
    __table_args__ = (Index("ix_gateway_acme_authorizations_reuse", "account_id", "identifier", "status"),)

    authz_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    identifier: Mapped[str] = mapped_column(String(260))  # the dns name; a wildcard keeps its "*."
    status: Mapped[str] = mapped_column(String(16))
    validating: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayAcmeChallenge(Base):
    """A challenge of an authorization (RFC 8555 8): type (http-01 | dns-01), its random token, status
    pending | processing | valid | invalid, when it was validated and the problem of a failure (JSON)."""

    __tablename__ = "gateway_acme_challenges"
    __table_args__ = (Index("ix_gateway_acme_challenges_authz", "authz_id"),)

    challenge_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    authz_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)  # JSON problem document
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GatewayAcmeCertificate(Base):
    """The certificate of a finalized ACME order (one per order; migration 0022), stored when the gateway folds
    the issuer's CertificateIssued for the order's certificate id: serial, PEM and chain (public material)."""

    __tablename__ = "gateway_acme_certificates"
    __table_args__ = (Index("ix_gateway_acme_certificates_serial", "serial"),)

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    certificate_id: Mapped[str] = mapped_column(String(200))
    serial: Mapped[str] = mapped_column(String(40))
    certificate: Mapped[str] = mapped_column(Text)
    chain: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

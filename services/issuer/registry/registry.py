"""The connector registry: create, edit, test, enable, disable, delete and rotate secrets.

The issuer's (decision 0034): its one path (changes.py), served on its internal API (internal_api.py) to the
gateway and run by ``certrail connectors``, is the only writer; the issuer's connector pool reads connectors
through it (`endpoint`) and reports connector faults (`mark_misconfigured`). Every change returns a
`ConnectorChange` (secrets as "***") that the path records as an admin event; a refusal raises `ConnectorError`
carrying the refused change. Nothing is published to Kafka here: creating a connector only creates its command
topic.

Each writing method (create, update, enable, disable, delete, rotate_secrets) takes ``record``: a
caller's ``record(session, change)`` run inside the method's own write transaction once the change is
made, so that what it writes (the gateway's admin event: decision 0019) commits with the change or not at
all; when it raises, the change is rolled back and the error propagates.

    registry = ConnectorRegistry(engine, box, connect=client.connect, topics=KafkaTopicCreator(kafka))
    change = await registry.create(spec)          # validated against emCA, pinned, topic created, stored enabled

Database work is short synchronous transactions; network I/O (emCA, Kafka) happens outside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.connectors.models import (
    ChangeAction,
    Connector,
    ConnectorChange,
    ConnectorEdit,
    ConnectorError,
    ConnectorSpec,
    ConnectorStatus,
    LastTest,
    RegistryCode,
    changed_fields,
)
from services.common.connectors.secretbox import SecretBox, SecretBoxError
from services.common.contracts.admin import AdminOutcome
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.db import read_session, write_session
from services.common.emca.types import EmcaConnection, EmcaEndpoint
from services.common.kafka_config import KafkaConfigError
from services.common.settings import KafkaSettings
from services.common.topics_admin import DEFAULT_PARTITIONS, TopicAdminError, ensure_topics
from services.issuer.registry import repository as repo
from services.issuer.registry.validation import ValidationReport, validate_connector

__all__ = ["ConnectorRegistry", "KafkaTopicCreator", "RecordChange", "TopicCreator", "UsageCheck", "input_error"]

#: a caller's hook run inside a change's write transaction with the change made (see the module doc)
RecordChange = Callable[[Session, ConnectorChange], None]


def _no_record(session: Session, change: ConnectorChange) -> None:
    """The default ``record``: nothing beside the change."""


class UsageCheck(Protocol):
    """One kind of use of a connector, given by the caller (who uses a connector is not the registry's to know: the
    gateway's profiles and certificates, services/gateway/connector_usage.py); any use refuses a delete. Runs inside
    the delete's transaction. The gateway runs its checks itself before it asks the issuer's API to delete; the CLI
    gives them here."""

    name: str

    def usages(self, session: Session, connector: str) -> list[str]:
        ...


class TopicCreator(Protocol):
    async def ensure_command_topic(self, connector: str) -> str:
        """Create (or keep) the connector's command topic; return its name."""
        ...


class KafkaTopicCreator:
    """Creates ``<prefix>.commands.<connector>`` with `ensure_topics` (idempotent)."""

    def __init__(self, settings: KafkaSettings, *, partitions: int = DEFAULT_PARTITIONS) -> None:
        self._settings = settings
        self._partitions = partitions

    async def ensure_command_topic(self, connector: str) -> str:
        topic = Topics(self._settings.topic_prefix).commands(connector)
        await ensure_topics(self._settings, [topic], partitions=self._partitions)
        return topic


def input_error(error: ValidationError) -> ConnectorError:
    """A pydantic error as one readable INVALID_INPUT refusal (input values are never echoed)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'connector'}: {e['msg']}" for e in error.errors(include_input=False)]
    return ConnectorError(RegistryCode.INVALID_INPUT, "; ".join(parts))


class ConnectorRegistry:
    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        *,
        connect: Callable[[EmcaEndpoint], EmcaConnection],
        topics: TopicCreator,
        usage_checks: Sequence[UsageCheck] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._box = box
        self._connect = connect
        self._topics = topics
        self._usage_checks = list(usage_checks or ())  # the caller's: who uses a connector is not the registry's to know
        self._clock = clock

    @property
    def engine(self) -> Engine:
        """The database the registry writes (the gateway's admin outbox is written beside it: decision 0019)."""
        return self._engine

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> list[Connector]:
        with read_session(self._engine) as session:
            return repo.list_connectors(session)

    def get(self, name: str) -> Connector:
        with read_session(self._engine) as session:
            connector = repo.get_connector(session, name)
        if connector is None:
            raise ConnectorError(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {name!r}")
        return connector

    def spec(self, name: str) -> tuple[Connector, ConnectorSpec]:
        """The connector and its decrypted spec (secrets in SecretStr; keep it in memory)."""
        with read_session(self._engine) as session:
            connector = repo.get_connector(session, name)
            if connector is None:
                raise ConnectorError(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {name!r}")
            try:
                secrets = repo.load_secrets(session, name, self._box)
            except SecretBoxError as exc:
                raise ConnectorError(RegistryCode.SECRETS_UNAVAILABLE, str(exc)) from None
        assert secrets is not None
        return connector, repo.spec_of(connector, secrets)

    def endpoint(self, name: str) -> tuple[Connector, EmcaEndpoint]:
        """What the issuer connects with: the connector and its decrypted endpoint."""
        connector, spec = self.spec(name)
        return connector, repo.endpoint_for(spec)

    # -- changes -----------------------------------------------------------------------------------

    def _refused(self, action: ChangeAction, name: str, code: ErrorCode | RegistryCode, message: str, change: dict) -> ConnectorError:
        refused = ConnectorChange(action, name, AdminOutcome.REFUSED, change, str(code), message)
        return ConnectorError(code, message, change=refused)

    async def _validate(self, spec: ConnectorSpec) -> ValidationReport:
        return await validate_connector(spec, self._connect, clock=self._clock)

    @staticmethod
    def _last_test(report: ValidationReport) -> LastTest:
        failure = report.failure
        return LastTest(ok=report.ok, tested_at=report.tested_at, code=str(failure.code) if failure else None, message=report.summary())

    async def create(self, spec: ConnectorSpec, *, record: RecordChange = _no_record) -> ConnectorChange:
        """Validate against emCA, pin the issuing CA, create the command topic, store enabled."""
        described = spec.describe()
        with read_session(self._engine) as session:
            exists = repo.get_connector(session, spec.name) is not None
        if exists:
            raise self._refused(ChangeAction.CREATED, spec.name, RegistryCode.CONNECTOR_EXISTS, f"connector {spec.name!r} exists", described)
        report = await self._validate(spec)
        if not report.ok or report.pin is None:
            failure = report.failure
            assert failure is not None and failure.code is not None
            raise self._refused(ChangeAction.CREATED, spec.name, failure.code, failure.message, described)
        try:
            topic = await self._topics.ensure_command_topic(spec.name)
        except (KafkaError, KafkaConfigError, TopicAdminError, OSError, ValueError) as exc:  # nothing is stored
            message = f"cannot create the command topic: {type(exc).__name__}: {exc}"
            raise self._refused(ChangeAction.CREATED, spec.name, RegistryCode.TOPIC_NOT_CREATED, message, described) from exc
        try:
            with write_session(self._engine) as session:
                stored = repo.insert_connector(
                    session, spec, box=self._box, pin=report.pin, last_test=self._last_test(report), now=self._clock()
                )
                change = {**described, "status": stored.status.value, "pinned_ca_sha256": stored.pinned_ca_sha256,
                          "command_topic": topic}
                created = ConnectorChange(ChangeAction.CREATED, spec.name, AdminOutcome.SUCCEEDED, change, connector_after=stored)
                record(session, created)
        except IntegrityError:
            raise self._refused(
                ChangeAction.CREATED, spec.name, RegistryCode.CONNECTOR_EXISTS, f"connector {spec.name!r} exists", described
            ) from None
        return created

    async def update(self, name: str, edit: ConnectorEdit, *, record: RecordChange = _no_record) -> ConnectorChange:
        """Apply an edit: validated like a new connector; stored only when every check passes.
        A misconfigured connector becomes enabled; a disabled one stays disabled."""
        connector, current = self.spec(name)
        try:
            spec = edit.apply(current)
        except ValidationError as exc:
            error = input_error(exc)
            raise self._refused(ChangeAction.UPDATED, name, error.code, error.message, {}) from None
        change = changed_fields(current, spec)
        report = await self._validate(spec)
        failure = report.failure
        if failure is not None or report.pin is None:
            assert failure is not None and failure.code is not None
            raise self._refused(ChangeAction.UPDATED, name, failure.code, failure.message, change)
        if report.pin.sha256 != connector.pinned_ca_sha256:
            if spec.issuing_ca == connector.issuing_ca and not edit.repin:
                raise self._refused(ChangeAction.UPDATED, name, ErrorCode.CERTIFICATE_MISMATCH, _pin_message(connector, report), change)
            change["pinned_ca_sha256"] = report.pin.sha256
        status = ConnectorStatus.DISABLED if connector.status is ConnectorStatus.DISABLED else ConnectorStatus.ENABLED
        with write_session(self._engine) as session:
            stored = repo.update_connector(
                session, spec, box=self._box, pin=report.pin, last_test=self._last_test(report), now=self._clock(),
                expected_revision=connector.revision, status=status,
            )
            if stored is None:  # nothing was written
                raise self._refused(ChangeAction.UPDATED, name, RegistryCode.CHANGED_MEANWHILE,
                                    "changed by someone else meanwhile: retry", change)
            if stored.status is not connector.status:
                change["status"] = stored.status.value
            updated = ConnectorChange(ChangeAction.UPDATED, name, AdminOutcome.SUCCEEDED, change, connector_after=stored)
            record(session, updated)
        return updated

    async def test(self, name: str) -> tuple[Connector, ValidationReport]:
        """Validate a stored connector now and record the result. A pass re-enables a misconfigured
        connector; a connector fault marks an enabled one misconfigured; disabled stays disabled."""
        connector, spec = self.spec(name)
        report = await self._validate(spec)
        last = self._last_test(report)
        status, reason = connector.status, connector.status_reason
        if report.ok and report.pin is not None and report.pin.sha256 != connector.pinned_ca_sha256:
            last = LastTest(False, report.tested_at, ErrorCode.CERTIFICATE_MISMATCH.value, _pin_message(connector, report))
        if last.ok and status is ConnectorStatus.MISCONFIGURED:
            status, reason = ConnectorStatus.ENABLED, None
        elif not last.ok and last.code != ErrorCode.CA_UNREACHABLE.value and status is ConnectorStatus.ENABLED:
            status, reason = ConnectorStatus.MISCONFIGURED, f"{last.code}: {last.message}"
        with write_session(self._engine) as session:
            stored = repo.set_status(session, name, status, reason, now=self._clock(), last_test=last)
        if stored is None:
            raise ConnectorError(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {name!r}")
        return stored, report

    async def enable(self, name: str, *, record: RecordChange = _no_record) -> ConnectorChange:
        """Validate, then enable; refused (status unchanged) when a check fails."""
        stored, report = await self.test(name)
        if stored.last_test is None or not stored.last_test.ok:
            failure = stored.last_test
            code = failure.code if failure and failure.code else ErrorCode.CA_PROTOCOL_ERROR.value
            message = failure.message if failure else report.summary()
            raise self._refused(ChangeAction.ACTIVATED, name, _code(code), message, {"status": ConnectorStatus.ENABLED.value})
        with write_session(self._engine) as session:
            after = repo.set_status(session, name, ConnectorStatus.ENABLED, None, now=self._clock())
            enabled = ConnectorChange(ChangeAction.ACTIVATED, name, AdminOutcome.SUCCEEDED, {"status": "enabled"}, connector_after=after)
            record(session, enabled)
        return enabled

    def disable(self, name: str, reason: str | None = None, *, record: RecordChange = _no_record) -> ConnectorChange:
        with write_session(self._engine) as session:
            after = repo.set_status(session, name, ConnectorStatus.DISABLED, reason, now=self._clock())
            if after is None:  # nothing was written
                raise ConnectorError(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {name!r}")
            disabled = ConnectorChange(ChangeAction.DEACTIVATED, name, AdminOutcome.SUCCEEDED, {"status": "disabled"},
                                       connector_after=after)
            record(session, disabled)
        return disabled

    def mark_misconfigured(self, name: str, code: ErrorCode, message: str) -> Connector | None:
        """The issuer saw a connector fault: an enabled connector becomes misconfigured (requests stay queued)."""
        with write_session(self._engine) as session:
            current = repo.get_connector(session, name)
            if current is None or current.status is not ConnectorStatus.ENABLED:
                return current
            return repo.set_status(session, name, ConnectorStatus.MISCONFIGURED, f"{code}: {message}", now=self._clock())

    def delete(self, name: str, *, record: RecordChange = _no_record) -> ConnectorChange:
        """Delete, unless a usage check finds a use. The command topic is kept (it is audit history)."""
        deleted = ConnectorChange(ChangeAction.DELETED, name, AdminOutcome.SUCCEEDED, {})
        with write_session(self._engine) as session:
            if repo.get_connector(session, name) is None:
                raise ConnectorError(ErrorCode.CONNECTOR_NOT_FOUND, f"no connector named {name!r}")
            uses = [f"{check.name}: {use}" for check in self._usage_checks for use in check.usages(session, name)]
            if not uses:
                repo.delete_connector(session, name)
                record(session, deleted)
        if uses:
            raise self._refused(ChangeAction.DELETED, name, RegistryCode.CONNECTOR_IN_USE, "still in use: " + "; ".join(uses), {})
        return deleted

    def rotate_secrets(self, *, record: RecordChange = _no_record) -> repo.RotationReport:
        """Re-encrypt every connector's secrets under the current (first) key; ``record`` sees a ConnectorUpdated
        change (``secrets_reencrypted``) for each connector re-encrypted."""
        with write_session(self._engine) as session:
            report = repo.rotate_secrets(session, self._box)
            for name in report.rotated:
                record(session, ConnectorChange(ChangeAction.UPDATED, name, AdminOutcome.SUCCEEDED, {"secrets_reencrypted": True}))
        return report


def _pin_message(connector: Connector, report: ValidationReport) -> str:
    assert report.pin is not None
    return (
        f"the certificate of the issuing CA {connector.issuing_ca!r} changed at emCA (pinned SHA-256 "
        f"{connector.pinned_ca_sha256}, now {report.pin.sha256}): edit the connector with repin to accept it"
    )


def _code(value: str) -> ErrorCode | RegistryCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return RegistryCode(value)

"""The connector registry with the fake emCA, on SQLite and PostgreSQL (db_settings)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.common import migrate
from services.common.connectors.models import ConnectorEdit, ConnectorError, ConnectorStatus, RegistryCode
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.admin import AdminOutcome
from services.common.contracts.errors import ErrorCode
from services.common.db import make_engine, write_session
from services.common.db_schema import GatewayCertificate, GatewayIssuedSerial, GatewayRequest, GatewayRequestStatus
from services.common.emca.fake import FakeEmca
from services.common.emca.types import EmcaVersion
from services.common.settings import DatabaseSettings
from services.gateway.api_connectors import usage_checks
from services.issuer.registry.registry import ConnectorRegistry
from tests.unit.test_connector_validation import CA, USERS, spec_for

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


class RecordingTopics:
    def __init__(self, fail: bool = False) -> None:
        self.created: list[str] = []
        self.fail = fail

    async def ensure_command_topic(self, connector: str) -> str:
        if self.fail:
            raise OSError("broker unreachable")
        self.created.append(connector)
        return f"certrail.commands.{connector}"


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    migrate.upgrade(db_settings)
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def emca() -> FakeEmca:
    return FakeEmca()


@pytest.fixture
def key() -> str:
    return generate_key()


def make_registry(engine: Engine, emca: FakeEmca, key: str, *, topics: Any = None, keys: list[str] | None = None) -> ConnectorRegistry:
    return ConnectorRegistry(engine, SecretBox(keys or [key]), connect=emca.connect, topics=topics or RecordingTopics(),
                             clock=lambda: NOW)


@pytest.mark.parametrize("version", list(EmcaVersion), ids=str)
async def test_create_stores_enabled_pinned_and_never_the_plaintext(
    engine: Engine, emca: FakeEmca, key: str, version: EmcaVersion
) -> None:
    topics = RecordingTopics()
    registry = make_registry(engine, emca, key, topics=topics)
    spec = spec_for(emca, version)
    change = await registry.create(spec)
    assert (change.outcome, change.change["status"], topics.created) == (AdminOutcome.SUCCEEDED, "enabled", ["c1"])
    connector = registry.get("c1")
    assert connector.status is ConnectorStatus.ENABLED and connector.revision == 1
    assert connector.pinned_ca_sha256 == emca.issuing_ca(CA).sha256 == change.change["pinned_ca_sha256"]
    assert connector.pinned_chain_pem[0].strip() == emca.issuing_ca(CA).certificate_pem.strip()
    assert set(connector.secret_fields) == set(spec.secrets.present())
    assert registry.list() == [connector]

    _, endpoint = registry.endpoint("c1")
    app = emca.apps[USERS[version]]
    assert (endpoint.password, endpoint.client_id, endpoint.aes_key, endpoint.pfx) == (app.password, app.client_id, app.aes_key, app.pfx)

    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM emca_connectors")).mappings().one()
    dump = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
    for secret in (app.password, app.client_id, app.aes_key):
        if secret:
            assert secret.encode() not in dump
    if app.pfx:
        assert app.pfx not in dump
    assert app.password not in str(connector) + str(connector.describe()) + str(change)


async def test_refusals_store_nothing(engine: Engine, emca: FakeEmca, key: str) -> None:
    registry = make_registry(engine, emca, key)
    with pytest.raises(ConnectorError) as info:
        await registry.create(spec_for(emca, EmcaVersion.V4_2_3, subscriber_id="SUB-X"))
    assert info.value.code is ErrorCode.SUBSCRIBER_INVALID
    assert info.value.change is not None and info.value.change.outcome is AdminOutcome.REFUSED
    assert info.value.change.change["password"] == "***"

    with pytest.raises(ConnectorError) as info:
        await make_registry(engine, emca, key, topics=RecordingTopics(fail=True)).create(spec_for(emca, EmcaVersion.V4_2_3))
    assert info.value.code is RegistryCode.TOPIC_NOT_CREATED
    assert registry.list() == []

    await registry.create(spec_for(emca, EmcaVersion.V4_2_3))
    with pytest.raises(ConnectorError) as info:
        await registry.create(spec_for(emca, EmcaVersion.V4_2_4))
    assert info.value.code is RegistryCode.CONNECTOR_EXISTS
    with pytest.raises(ConnectorError) as info:
        registry.get("nope")
    assert info.value.code is ErrorCode.CONNECTOR_NOT_FOUND


async def test_status_follows_tests_edits_and_the_issuer(engine: Engine, emca: FakeEmca, key: str) -> None:
    registry = make_registry(engine, emca, key)
    await registry.create(spec_for(emca, EmcaVersion.V4_2_4))

    emca.faults.down = True  # transient: proves nothing about the configuration
    connector, report = await registry.test("c1")
    assert connector.status is ConnectorStatus.ENABLED and report.failure and report.failure.code is ErrorCode.CA_UNREACHABLE
    assert connector.last_test is not None and connector.last_test.code == "CA_UNREACHABLE"
    emca.faults.down = False

    app = emca.rotate_credentials(USERS[EmcaVersion.V4_2_4])  # password rotated at emCA
    connector, _ = await registry.test("c1")
    assert connector.status is ConnectorStatus.MISCONFIGURED and connector.status_reason and "CA_AUTH_FAILED" in connector.status_reason

    with pytest.raises(ConnectorError) as info:  # an edit that still fails is refused, nothing changes
        await registry.update("c1", ConnectorEdit(password=SecretStr(app.password)))
    assert info.value.code is ErrorCode.CA_AUTH_FAILED  # the ClientID rotated too
    change = await registry.update("c1", ConnectorEdit(password=SecretStr(app.password), client_id=SecretStr(app.client_id or "")))
    assert change.change == {"password": "***", "client_id": "***", "status": "enabled"}
    assert registry.get("c1").revision > 1

    registry.disable("c1", "maintenance")
    assert registry.mark_misconfigured("c1", ErrorCode.CA_AUTH_FAILED, "x").status is ConnectorStatus.DISABLED  # type: ignore[union-attr]
    connector, _ = await registry.test("c1")
    assert connector.status is ConnectorStatus.DISABLED  # a test never enables a disabled connector
    emca.faults.down = True
    with pytest.raises(ConnectorError) as info:
        await registry.enable("c1")
    assert info.value.code is ErrorCode.CA_UNREACHABLE and registry.get("c1").status is ConnectorStatus.DISABLED
    emca.faults.down = False
    assert (await registry.enable("c1")).change == {"status": "enabled"}
    after = registry.mark_misconfigured("c1", ErrorCode.SUBSCRIBER_INVALID, "emCA: Invalid Subscriber ID")
    assert after is not None and after.status is ConnectorStatus.MISCONFIGURED


async def test_a_changed_issuing_ca_certificate_needs_an_explicit_repin(engine: Engine, emca: FakeEmca, key: str) -> None:
    await make_registry(engine, emca, key).create(spec_for(emca, EmcaVersion.V4_2_3))
    rekeyed = FakeEmca()  # same names, same applications and TLS trust, a new CA key
    rekeyed.apps, rekeyed.tls_ca_pem = emca.apps, emca.tls_ca_pem
    registry = make_registry(engine, rekeyed, key)
    connector, _ = await registry.test("c1")
    assert connector.status is ConnectorStatus.MISCONFIGURED
    assert connector.last_test is not None and connector.last_test.code == "CERTIFICATE_MISMATCH"
    with pytest.raises(ConnectorError) as info:
        await registry.update("c1", ConnectorEdit(concurrency=2))
    assert info.value.code is ErrorCode.CERTIFICATE_MISMATCH
    change = await registry.update("c1", ConnectorEdit(repin=True))
    assert change.change["pinned_ca_sha256"] == rekeyed.issuing_ca(CA).sha256 == registry.get("c1").pinned_ca_sha256


def issued(certificate_id: str, connector: str, status: str, not_after: datetime) -> GatewayIssuedSerial:
    return GatewayIssuedSerial(certificate_id=certificate_id, serial="0a", status=status, connector=connector, not_after=not_after)


def requested(certificate_id: str, connector: str, *, request: str = "accepted", kind: str = "issue",
              outcome: str | None = None) -> list[Any]:
    """A certificate the gateway manages through ``connector``, one request for it and that request's outcome."""
    rows: list[Any] = [
        GatewayCertificate(certificate_id=certificate_id, profile="web", connector=connector, requester="ci",
                           key_generation="requester", revision=1, sans="[]", created_at=NOW, updated_at=NOW),
        GatewayRequest(request_id=f"r-{certificate_id}", content_hash="h", requester="ci", kind=kind,
                       certificate_id=certificate_id, status=request, answer="{}", outbound="[]", created_at=NOW)]
    if outcome is not None:
        rows.append(GatewayRequestStatus(request_id=f"r-{certificate_id}", state=outcome, result="{}", event_type="t",
                                         event_id=f"e-{certificate_id}", event_time=NOW))
    return rows


async def test_delete_is_refused_while_a_live_certificate_uses_the_connector(engine: Engine, emca: FakeEmca, key: str) -> None:
    """The gateway's checks (services/gateway/api_connectors.usage_checks) from its own projections: a current
    serial not yet expired, or a request still waiting for its outcome."""
    registry = ConnectorRegistry(engine, SecretBox([key]), connect=emca.connect, topics=RecordingTopics(),
                                 usage_checks=usage_checks(lambda: NOW), clock=lambda: NOW)
    await registry.create(spec_for(emca, EmcaVersion.V4_2_3))
    with write_session(engine) as session:
        session.add_all([
            issued("live", "c1", "active", NOW + timedelta(days=30)),
            issued("expired", "c1", "active", NOW - timedelta(days=1)),
            issued("revoked", "c1", "revoked", NOW + timedelta(days=30)),
            issued("superseded", "c1", "superseded", NOW + timedelta(days=30)),
            issued("elsewhere", "c2", "active", NOW + timedelta(days=30)),
            *requested("waiting", "c1"),
            *requested("approval", "c1", outcome="pending_approval"),
            *requested("failed", "c1", outcome="failed"),
            *requested("refused", "c1", request="rejected"),
            *requested("revoking", "c1", kind="revoke"),
            *requested("other-ca", "c2"),
        ])
    with pytest.raises(ConnectorError) as info:
        registry.delete("c1")
    assert info.value.code is RegistryCode.CONNECTOR_IN_USE
    assert "live certificates: 3 live certificate(s), e.g. approval, live, waiting" in info.value.message
    assert info.value.change is not None and info.value.change.outcome is AdminOutcome.REFUSED
    with write_session(engine) as session:
        session.get(GatewayIssuedSerial, ("live", "0a")).status = "revoked"  # type: ignore[union-attr]
        for request_id in ("r-waiting", "r-approval"):
            session.merge(GatewayRequestStatus(request_id=request_id, state="failed", result="{}", event_type="t",
                                               event_id=f"e2-{request_id}", event_time=NOW))
    assert registry.delete("c1").outcome is AdminOutcome.SUCCEEDED
    assert registry.list() == []
    with pytest.raises(ConnectorError):
        registry.delete("c1")


async def test_rotate_secrets(engine: Engine, emca: FakeEmca, key: str) -> None:
    await make_registry(engine, emca, key).create(spec_for(emca, EmcaVersion.V4_0_17))
    new = generate_key()
    report = make_registry(engine, emca, key, keys=[new, key]).rotate_secrets()
    assert (report.rotated, report.already_current, report.failed) == (("c1",), (), {})
    assert make_registry(engine, emca, key, keys=[new, key]).rotate_secrets().already_current == ("c1",)
    only_new = make_registry(engine, emca, key, keys=[new])
    assert only_new.get("c1").secrets_key_id == SecretBox([new]).current_key_id
    _, endpoint = only_new.endpoint("c1")
    assert endpoint.password == emca.apps[USERS[EmcaVersion.V4_0_17]].password
    with pytest.raises(ConnectorError) as info:
        make_registry(engine, emca, key).endpoint("c1")  # the old key alone no longer opens it
    assert info.value.code is RegistryCode.SECRETS_UNAVAILABLE
    stranger = make_registry(engine, emca, key, keys=[generate_key()]).rotate_secrets()
    assert list(stranger.failed) == ["c1"]

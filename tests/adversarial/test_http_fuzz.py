"""Property-based fuzzing of the gateway's HTTP API with schemathesis, against its own OpenAPI
document: the in-process ASGI app over a real SQLite database (seeded with a connector row, two
profiles and a managed certificate), called with an admin token and with a requester token
scoped to one profile, with schema-conforming and schema-violating inputs. Every answer must be
no 5xx, have a status the document lists for the operation, and a body and content type that
conform to the document.

The budget is fixed: a deterministic seed (derandomised Hypothesis, no example database) and
EXAMPLES examples per operation, token and mode, no shrinking, so the run is the same every time
and stays well under the time CI allows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.topics import Topics
from services.common.db import make_engine, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.gateway import store
from services.gateway.api import create_api
from services.gateway.api_tokens import create_token
from services.gateway.app import GatewayRuntime
from services.gateway.intake import Intake, stored_records
from services.gateway.issuer_api import Endpoint, IssuerApi
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from services.gateway.store import SqlRequesterKeys
from services.issuer.connectors import ConnectorPool, RuntimeSettings
from services.issuer.duplicates.internal_api import create_internal_app as create_issuer_internal_app
from services.issuer.duplicates.resolver import DuplicateResolver
from services.issuer.metrics import IssuerMetrics
from services.issuer.registry.internal_api import connector_router, install
from tests.gateway_fixtures import INTERNAL_TOKEN, InProcessDeployer, _connector, _profile, auditor_api, deployer_api

pytestmark = pytest.mark.slow

EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class _Service:
    engine: Engine
    topics: Topics
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    broker: Any = None


class _Published:
    def __init__(self) -> None:
        self.records: list[tuple[str, str | None, bytes]] = []

    async def __call__(self, outbound: Any) -> None:
        self.records.extend(stored_records(outbound))


class _NoNetwork(httpx.AsyncBaseTransport):
    """The emCA client's transport here: every connection fails as with the network down (the
    client classifies it as CA_UNREACHABLE), so that fuzzed base URLs never reach a real host."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("the fuzz test connects to no host", request=request)


class _NoTopics:
    async def ensure_command_topic(self, connector: str) -> str:
        return f"fuzz.commands.{connector}"


@dataclass
class Fuzzed:
    app: Any
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    from services.common.emca.client import connect
    from services.issuer.registry.registry import ConnectorRegistry

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    db = DatabaseSettings(url=f"sqlite:///{tmp / f'gw-{uuid.uuid4().hex[:6]}.db'}")
    upgrade(db)
    engine = make_engine(db)
    box = SecretBox([generate_key()])
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="fuzz.certrail")
    # no throttling of failed authentication here: every case carries a valid token; its own tests are elsewhere
    settings = GatewaySettings(kafka=kafka, db=db, scheduler_enabled=False, auth_failures_per_address=0,
                               auth_failures_per_identity=0)
    now = datetime.now(UTC)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca", allowed_requesters=["alice"]), now)
        store.put_profile(session, _profile("api", "emca", allowed_requesters=["bob"]), now)
        store.next_revision(session, certificate_id="www", profile="web", connector="emca", requester="alice",
                            key_generation="requester", sans=["dns:www.example.com"], now=now)
    service = _Service(engine, Topics(kafka.topic_prefix))
    intake = Intake(engine=engine, topics=service.topics, keys=SqlRequesterKeys(engine, box), clock=lambda: datetime.now(UTC))
    runtime = GatewayRuntime(service, settings, intake, box, _Published())  # type: ignore[arg-type]
    registry = ConnectorRegistry(engine, box, connect=lambda endpoint: connect(endpoint, transport=_NoNetwork()), topics=_NoTopics(),
                                 usage_checks=[])  # the issuer's (decision 0034); "in use" is the gateway's check
    deployer = InProcessDeployer.open(tmp)  # the deployer's internal API (targets), in-process
    app = create_api(runtime, auditor=auditor_api(engine),  # the auditor's internal API, in-process
                     deployer=deployer_api(deployer.app), issuer=_issuer_api(engine, registry, service.topics))

    def token(role: Role, identity: str, profiles: list[str] | None = None) -> str:
        new, _ = create_token(engine, identity=identity, role=role, profiles=profiles, description=None, created_by="fuzz",
                              now=now - timedelta(seconds=1), expires_at=None)
        return new.token

    yield Fuzzed(app, {"admin": token(Role.ADMIN, "root-admin"), "requester": token(Role.REQUESTER, "alice", ["web"])})
    engine.dispose()
    deployer.close()


def _issuer_api(engine: Engine, registry: Any, topics: Topics) -> IssuerApi:
    """The gateway's client of the issuer's internal API (possible duplicates, the connector registry), served
    in-process by the issuer's real routes over ``engine``; its connectors reach no network (none is needed: the fuzzed
    ids match no duplicate, and a connector validated against emCA is refused CA_UNREACHABLE)."""
    metrics = IssuerMetrics(CollectorRegistry())

    async def status(*_: object) -> None:
        return None

    async def publish(records: Any) -> None:
        return None

    resolver = DuplicateResolver(engine=engine, pool=ConnectorPool(registry, metrics, RuntimeSettings(), status),
                                 publish=publish, topics=topics, gauge=metrics.duplicates_unresolved,
                                 clock=lambda: datetime.now(UTC), event_source="/certrail/issuer")
    app = create_issuer_internal_app(resolver, INTERNAL_TOKEN)
    install(app, connector_router(registry, engine, lambda: datetime.now(UTC)))
    return IssuerApi(Endpoint("http://issuer", INTERNAL_TOKEN), transport=httpx.ASGITransport(app=app))


def _fuzz(operation: Any, token: str, mode: GenerationMode) -> str | None:
    """Runs the budget on one operation; the first failure as text (None: none)."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        headers = {"Authorization": f"Bearer {token}"}  # negative cases would otherwise mangle it: 401 says little
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except (Exception, FailureGroup) as failure:  # every failure is collected and reported below
        return f"{type(failure).__name__}: {str(failure)[:1500]}"
    return None


def test_http_api_survives_fuzzing(fuzzed: Fuzzed) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    failures = []
    for operation in operations:
        for name, token in fuzzed.tokens.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failure = _fuzz(operation, token, mode)
                if failure is not None:
                    failures.append(f"{operation.label} [{name}, {mode.value}]\n{failure}")
    assert not failures, f"{len(failures)} failing combinations:\n\n" + "\n\n".join(failures)

"""Seed data for gateway tests: connectors, profiles, requester keys and CSRs; the auditor's internal API
in-process (`auditor_api`), and the deployer's (`deployer_api`), for a gateway built in the test's process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from sqlalchemy import Engine, inspect

from services.auditor.internal_api import create_internal_app
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration
from services.common.contracts.topics import Topics
from services.common.db import write_session
from services.common.db_schema import EmcaConnectorRow
from services.common.internal_api import InternalApiSettings, InternalClient
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.deployer.app import create_app as create_deployer
from services.deployer.settings import DeployerSettings
from services.gateway import connector_view, store
from services.gateway.auditor_api import AuditorApi
from services.gateway.deployer_api import DeployerApi, Endpoint
from services.gateway.policy import DomainRules, ProvisioningProfile

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TOPICS = Topics("certrail")
HMAC_KEY = b"k" * 32
INTERNAL_TOKEN = SecretStr("internal-test-token-" + "x" * 24)
SECRETS_KEY = generate_key()
BOX = SecretBox([SECRETS_KEY])


def _csr(name: str = "www.example.com", key: object | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _connector(engine: Engine, name: str, status: str = "enabled") -> None:
    with write_session(engine) as session:
        session.add(EmcaConnectorRow(
            name=name, version="V4.2.4+", base_url="https://emca.example", username="u", issuing_ca="CA",
            subscriber_id="SUB", default_profile="TLS Server", concurrency=4, ca_bundle_pem=None, pinned_ca_sha256="0" * 64,
            pinned_chain_pem="", secrets=b"x", secrets_key_id="k", secret_fields="password", status=status,
            status_reason=None, last_test_ok=True, last_test_code=None, last_test_message=None, last_tested_at=NOW,
            revision=1, created_at=NOW, updated_at=NOW))
        if inspect(session.connection()).has_table("gateway_connectors"):  # the gateway's view (before migration 0025: none)
            connector_view.fold(session, name, connector_view.DISABLED if status == "disabled" else connector_view.ENABLED, NOW)


def _profile(name: str, connector: str, **overrides: object) -> ProvisioningProfile:
    values: dict[str, object] = dict(
        name=name, connector=connector, ca_profile="TLS Server", key_generation=KeyGeneration.REQUESTER,
        allowed_requesters=["ci-pipeline"], domain_rules=DomainRules(dns_suffixes=["example.com"]), validity_days=90)
    values.update(overrides)
    return ProvisioningProfile.model_validate(values)



def seed(engine: Engine) -> None:
    """Two connectors (one disabled), three profiles (requester keys, bot keys, on the disabled
    connector) and HMAC keys for the requesters ci-pipeline and ops."""
    _connector(engine, "emca")
    _connector(engine, "off", status="disabled")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
        store.put_profile(session, _profile("bots", "emca", key_generation=KeyGeneration.BOT,
                                            bot_key_algorithm=KeyAlgorithm.EC_P256, deployment_target="nginx-1",
                                            allowed_requesters=["ops"]), NOW)
        store.put_profile(session, _profile("offline", "off"), NOW)
        store.add_requester_key(session, BOX, requester="ci-pipeline", key_id="k1", secret=HMAC_KEY, public_key_pem=None, now=NOW)
        store.add_requester_key(session, BOX, requester="ops", key_id="k1", secret=HMAC_KEY, public_key_pem=None, now=NOW)


def auditor_api(engine: Engine, token: SecretStr | None = INTERNAL_TOKEN) -> AuditorApi:
    """The gateway's client of the auditor's internal API, served in-process (httpx's ASGI transport) by the
    auditor's real routes over ``engine`` (the database the test's auditor rows are in); ``token``: what the
    client presents (the auditor expects `INTERNAL_TOKEN`)."""
    app = create_internal_app(engine, INTERNAL_TOKEN, lambda: datetime.now(UTC))
    return AuditorApi(InternalClient("http://auditor", token, transport=httpx.ASGITransport(app=app), service="auditor"))


@dataclass
class InProcessDeployer:
    """The real deployer app (services/deployer/app.py's create_app; not started: no Kafka, its admin events
    stay in its outbox) over its own migrated SQLite database, expecting `INTERNAL_TOKEN`."""

    app: Any
    engine: Engine

    @classmethod
    def open(cls, directory: Path) -> InProcessDeployer:
        db = DatabaseSettings(url=f"sqlite:///{directory / f'deployer-{uuid.uuid4().hex[:6]}.db'}")
        upgrade(db)
        settings = DeployerSettings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail"),
                                    db=db, http_port=0, keys=SecretStr(generate_key()), request_key=SecretStr("r" * 32),
                                    keys_file=directory / "deployer.keys", request_key_file=directory / "deployer-request.key")
        app, runtime = create_deployer(settings, InternalApiSettings(token=INTERNAL_TOKEN))
        return cls(app, runtime.engine)

    def close(self) -> None:
        self.engine.dispose()


def deployer_api(deployer_app: Any, token: SecretStr | None = INTERNAL_TOKEN) -> DeployerApi:
    """The gateway's client of the deployer's internal API, served in-process (httpx's ASGI transport) by
    ``deployer_app`` (services/deployer/app.py's create_app, expecting `INTERNAL_TOKEN`); ``token``: what the
    client presents."""
    return DeployerApi(Endpoint("http://deployer", token), httpx.ASGITransport(app=deployer_app))


@dataclass
class InProcessConnectors:
    """The issuer's connector registry and its internal routes (services/issuer/registry/; decision 0034), served
    in-process over ``engine`` (httpx's ASGI transport), expecting `INTERNAL_TOKEN`; ``api``: the gateway's client of
    them. Its admin events stay in the issuer's outbox (`events` reads them back)."""

    registry: Any
    api: Any
    engine: Engine
    app: Any  # the issuer's internal routes (an ASGI app), for a test that calls them without the gateway's client

    def events(self) -> list[Any]:
        """The admin events the issuer recorded, in order, decoded."""
        from services.common.contracts.catalog import CATALOG
        from services.common.contracts.envelope import decode
        from services.issuer.registry.outbox import OUTBOX

        return [decode(r.value.encode(), CATALOG) for r in OUTBOX.unsent(self.engine, limit=10_000)]


def issuer_connectors(engine: Engine, box: SecretBox, *, connect: Any, topics: Any,
                      token: SecretStr | None = INTERNAL_TOKEN) -> InProcessConnectors:
    """The issuer's connector routes in-process (see `InProcessConnectors`); ``token``: what the client presents."""
    from fastapi import Depends, FastAPI

    from services.common.internal_api import InternalAuthError, require_token, unauthenticated
    from services.gateway.issuer_api import IssuerApi
    from services.issuer.registry.internal_api import connector_router, install
    from services.issuer.registry.registry import ConnectorRegistry

    registry = ConnectorRegistry(engine, box, connect=connect, topics=topics, usage_checks=[])
    app = FastAPI(dependencies=[Depends(require_token(INTERNAL_TOKEN))])
    app.add_exception_handler(InternalAuthError, unauthenticated)  # type: ignore[arg-type]
    install(app, connector_router(registry, engine, lambda: datetime.now(UTC)))
    api = IssuerApi(Endpoint("http://issuer", token), transport=httpx.ASGITransport(app=app))
    return InProcessConnectors(registry, api, engine, app)

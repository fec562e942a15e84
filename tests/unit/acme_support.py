"""The ACME door over a migrated SQLite database, served in-process (httpx's ASGI transport), and a hand-made
JWS signer (josepy) that can also sign what no well-behaved client would: the unit tests' hostile bodies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import josepy
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from sqlalchemy import Engine, select

from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayAdminOutbox
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import store
from services.gateway.acme import changes, routes
from services.gateway.acme.jws import ACCOUNT_ALGORITHMS, b64url_encode
from services.gateway.acme.nonces import SqlNonces
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher
from services.gateway.config.actor import Actor
from tests.gateway_fixtures import BOX, NOW, _connector, _profile

BASE = "https://acme.test:8443"
JOSE = {"Content-Type": "application/jose+json"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> Any:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def ec_key(curve: ec.EllipticCurve | None = None) -> josepy.JWKEC:
    return josepy.JWKEC(key=ec.generate_private_key(curve or ec.SECP256R1()))


def rsa_key(bits: int = 2048) -> josepy.JWKRSA:
    return josepy.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=bits))


def b64json(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


def public(key: josepy.JWK) -> dict[str, Any]:
    return dict(key.public_key().to_partial_json())


def sign(payload: Any, key: josepy.JWK, *, url: str, nonce: str | None, kid: str | None = None, alg: str = "ES256",
         header: dict[str, Any] | None = None, drop: Sequence[str] = ()) -> dict[str, Any]:
    """A flattened JWS of ``payload`` (a JSON value; None: POST-as-GET; bytes: as they are), signed by ``key``
    with ``alg`` (ACCOUNT_ALGORITHMS, or josepy's HS256 for MACs), ``jwk`` unless ``kid``; ``header`` adds or
    replaces protected members, ``drop`` removes them."""
    protected: dict[str, Any] = {"alg": alg, "url": url}
    if nonce is not None:
        protected["nonce"] = nonce
    if kid is not None:
        protected["kid"] = kid
    else:
        protected["jwk"] = public(key)
    protected.update(header or {})
    for name in drop:
        protected.pop(name, None)
    protected_b64 = b64json(protected)
    if payload is None:
        payload_b64 = ""
    elif isinstance(payload, bytes):
        payload_b64 = b64url_encode(payload)
    else:
        payload_b64 = b64json(payload)
    algorithm = ACCOUNT_ALGORITHMS.get(alg) or josepy.JWASignature.from_json(alg)
    signature = algorithm.sign(key.key, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url_encode(signature)}


def eab(key_id: str, hmac_key: bytes, account: josepy.JWK, *, url: str = f"{BASE}/acme/new-account", alg: str = "HS256",
        header: dict[str, Any] | None = None) -> dict[str, Any]:
    """An externalAccountBinding as RFC 8555 7.3.4 (and certbot's acme library) makes it."""
    protected = {"alg": alg, "kid": key_id, "url": url, **(header or {})}
    protected_b64, payload_b64 = b64json(protected), b64json(public(account))
    mac = josepy.JWASignature.from_json("HS256" if alg not in ("HS384", "HS512") else alg)
    return {"protected": protected_b64, "payload": payload_b64,
            "signature": b64url_encode(mac.sign(hmac_key, f"{protected_b64}.{payload_b64}".encode()))}


@dataclass
class Door:
    engine: Engine
    client: httpx.AsyncClient
    clock: Clock
    published: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{BASE}/acme/{path}"

    async def nonce(self) -> str:
        response = await self.client.head("/acme/new-nonce")
        assert response.status_code == 200
        return response.headers["Replay-Nonce"]

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post(f"/acme/{path}", content=content, headers=headers or JOSE)

    def eab_key(self, requester: str = "ci-pipeline", profiles: Sequence[str] = ("web",)) -> tuple[str, bytes]:
        created, hmac_key = changes.create_eab_key(Actor(self.engine, "root-admin", self.clock), BOX, requester=requester,
                                                   profiles=list(profiles))
        return created.key_id, hmac_key

    async def register(self, key: josepy.JWK, *, eab_key: tuple[str, bytes] | None = None, alg: str = "ES256",
                       **payload: Any) -> httpx.Response:
        key_id, hmac_key = eab_key or self.eab_key()
        body = {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.com"],
                "externalAccountBinding": eab(key_id, hmac_key, key), **payload}
        return await self.post("new-account", sign(body, key, url=self.url("new-account"), nonce=await self.nonce(), alg=alg))

    async def as_account(self, path: str, payload: Any, key: josepy.JWK, kid: str, **kwargs: Any) -> httpx.Response:
        return await self.post(path, sign(payload, key, url=self.url(path), nonce=await self.nonce(), kid=kid, **kwargs))

    def events(self) -> list[Any]:
        """The admin events in the outbox, decoded, in order."""
        with read_session(self.engine) as session:
            values = list(session.scalars(select(GatewayAdminOutbox.value).order_by(GatewayAdminOutbox.seq)))
        return [decode(v.encode(), CATALOG) for v in values]


def open_door(tmp_path: Path, **settings: Any) -> Door:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'acme.db'}")
    upgrade(db)
    engine = make_engine(db)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
        store.put_profile(session, _profile("ops-only", "emca", allowed_requesters=["ops"]), NOW)
    clock = Clock()
    published: list[dict[str, Any]] = []

    async def publish(records: Sequence[dict[str, Any]]) -> None:
        published.extend(records)

    app = FastAPI()
    acme = AcmeSettings(external_url=BASE, **settings)
    routes.install(app, engine=engine, box=BOX, settings=acme, http_port=0,
                   admin=AdminPublisher(publish, Topics("t-acme.certrail"), clock), clock=clock,
                   nonces=SqlNonces(engine, clock, lifetime=timedelta(seconds=acme.nonce_lifetime_s)))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    return Door(engine, client, clock, published)

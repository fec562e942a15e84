"""The ACME door's URL with the gateway's HTTPS listener (decision 0033, addendum): without an external URL the
door's URLs are the HTTPS listener's, /acme answers on that port only (the plain HTTP port refuses it with a
problem naming the HTTPS directory), and the JWS ``url`` check is unchanged: a JWS naming the plain HTTP URL is
refused on the HTTPS port. With an external URL configured (a proxy in front), it wins and any port answers.
In-process over a migrated SQLite database (httpx's ASGI transport gives the request's server port)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.acme import routes
from services.gateway.acme.nonces import SqlNonces
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher
from services.gateway.settings import GatewaySettings
from tests.gateway_fixtures import BOX
from tests.unit.acme_support import JOSE, Clock, ec_key, sign

HTTP, HTTPS = 8080, 8443


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'acme.db'}")
    upgrade(db)
    engine = make_engine(db)
    yield engine
    engine.dispose()


def door_app(engine: Engine, settings: AcmeSettings, https_port: int | None) -> FastAPI:
    clock = Clock()

    async def publish(records: Any) -> None:
        pass

    app = FastAPI()
    routes.install(app, engine=engine, box=BOX, settings=settings, http_port=HTTP, https_port=https_port,
                   admin=AdminPublisher(publish, Topics("t-acme.certrail"), clock), clock=clock,
                   nonces=SqlNonces(engine, clock, lifetime=timedelta(seconds=settings.nonce_lifetime_s)))
    return app


def client(app: FastAPI, base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


async def test_with_an_https_listener_the_door_is_its_url_and_answers_on_it_only(engine: Engine) -> None:
    app = door_app(engine, AcmeSettings(), HTTPS)
    https_base, http_base = f"https://127.0.0.1:{HTTPS}", f"http://127.0.0.1:{HTTP}"
    async with client(app, https_base) as secure, client(app, http_base) as plain:
        directory = (await secure.get("/acme/directory")).json()
        assert directory["newAccount"] == f"{https_base}/acme/new-account"
        assert all(url.startswith(f"{https_base}/acme/") for key, url in directory.items() if key != "meta")
        nonce = await secure.head("/acme/new-nonce")
        assert nonce.status_code == 200 and nonce.headers["Link"] == f'<{https_base}/acme/directory>;rel="index"'

        for method, path in (("GET", "/acme/directory"), ("HEAD", "/acme/new-nonce"), ("POST", "/acme/new-account")):
            refused = await plain.request(method, path, headers=JOSE)
            assert refused.status_code == 403, (method, path)
            if method != "HEAD":
                problem = refused.json()
                assert problem["type"] == "urn:ietf:params:acme:error:unauthorized"
                assert f"{https_base}/acme/directory" in problem["detail"]
            assert refused.headers["Replay-Nonce"]

        # the url check is unchanged: on the HTTPS port a JWS naming the plain HTTP URL is refused
        fresh = (await secure.head("/acme/new-nonce")).headers["Replay-Nonce"]
        body = sign({"termsOfServiceAgreed": True}, ec_key(), url=f"{http_base}/acme/new-account", nonce=fresh)
        misnamed = await secure.post("/acme/new-account", json=body, headers=JOSE)
        assert misnamed.status_code == 403, misnamed.text
        assert misnamed.json()["type"] == "urn:ietf:params:acme:error:unauthorized"
        assert "url" in misnamed.json()["detail"]


async def test_without_an_https_listener_the_http_port_serves_the_door(engine: Engine) -> None:
    app = door_app(engine, AcmeSettings(), None)
    async with client(app, f"http://127.0.0.1:{HTTP}") as plain:
        directory = (await plain.get("/acme/directory")).json()
    assert directory["newNonce"] == f"http://127.0.0.1:{HTTP}/acme/new-nonce"


async def test_a_configured_external_url_wins_and_any_port_answers(engine: Engine) -> None:
    app = door_app(engine, AcmeSettings(external_url="https://acme.example.com"), HTTPS)
    async with client(app, f"http://127.0.0.1:{HTTP}") as behind_a_proxy:
        directory = (await behind_a_proxy.get("/acme/directory")).json()
    assert directory["newOrder"] == "https://acme.example.com/acme/new-order"


def test_the_gateway_settings_name_the_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().https_port is None
    monkeypatch.setenv("CERTRAIL_GATEWAY_TLS__CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("CERTRAIL_GATEWAY_TLS__KEY_FILE", str(tmp_path / "key.pem"))
    monkeypatch.setenv("CERTRAIL_GATEWAY_TLS__PORT", "9443")
    settings = GatewaySettings()
    assert settings.https_port == 9443
    assert settings.acme.base_url(settings.http_port, settings.https_port) == "https://127.0.0.1:9443"

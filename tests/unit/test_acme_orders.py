"""ACME orders and authorizations up to "ready" (services/gateway/acme/orders.py, order_routes.py), in-process
over a migrated SQLite database with fake validators (the real http-01 one is driven over loopback in
tests/integration/test_acme_orders_live.py): newOrder and its refusals (a name no profile of the account allows,
a wildcard without dns-01, notBefore, other identifier types), reading by the owner only, the challenge state
machine (processing once, then valid + ready or invalid + invalid), authorization reuse and deactivation,
expiry, and the admin event of every state change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from services.common.contracts import admin
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayAcmeAuthorization, GatewayAcmeOrder
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import store
from services.gateway.acme import changes, orders, routes
from services.gateway.acme import orders_store as db
from services.gateway.acme import store as acme_store
from services.gateway.acme.challenges import (
    ChallengePolicy,
    ChallengeProblem,
    ProblemType,
    ValidationRecord,
    ValidationResult,
)
from services.gateway.acme.nonces import SqlNonces
from services.gateway.acme.order_routes import Validations
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher
from services.gateway.policy.profile import DomainRules
from tests.conftest import poll_until
from tests.gateway_fixtures import BOX, NOW, _connector, _profile
from tests.unit.acme_support import BASE, Clock, Door, ec_key

HOOK = ["/bin/true"]


class FakeValidator:
    """Answers every validation with ``problem`` (None: valid) once ``release`` is set; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.problem: ChallengeProblem | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, identifier: str, token: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
        self.calls.append((identifier, token, expected))
        await self.release.wait()
        return ValidationResult(self.problem, (ValidationRecord(f"http://{identifier}/", "192.0.2.10"),))


class OrderDoor(Door):
    validator: FakeValidator
    validations: Validations

    async def account(self, profiles: Sequence[str] = ("web",)) -> tuple[Any, str]:
        key = ec_key()
        response = await self.register(key, eab_key=self.eab_key(profiles=profiles))
        assert response.status_code == 201, response.text
        return key, response.headers["Location"]

    async def order(self, key: Any, kid: str, *names: str, **payload: Any) -> httpx.Response:
        body = {"identifiers": [{"type": "dns", "value": n} for n in names], **payload}
        return await self.as_account("new-order", body, key, kid)

    async def get(self, url: str, key: Any, kid: str) -> httpx.Response:
        return await self.as_account(url.removeprefix(f"{BASE}/acme/"), None, key, kid)

    async def respond(self, url: str, key: Any, kid: str, payload: Any = None) -> httpx.Response:
        return await self.as_account(url.removeprefix(f"{BASE}/acme/"), {} if payload is None else payload, key, kid)

    def kinds(self, cls: type[Any]) -> list[Any]:
        return [e.data for e in self.events() if isinstance(e.data, cls)]


def open_orders_door(tmp_path: Path, **settings: Any) -> OrderDoor:
    database = DatabaseSettings(url=f"sqlite:///{tmp_path / 'acme.db'}")
    upgrade(database)
    engine = make_engine(database)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
        store.put_profile(session, _profile("internal", "emca", domain_rules=DomainRules(dns_suffixes=["corp.example"])), NOW)
        store.put_profile(session, _profile("wild", "emca", domain_rules=DomainRules(dns_suffixes=["example.com"],
                                                                                        allow_wildcards=True)), NOW)
    clock = Clock()
    published: list[dict[str, Any]] = []

    async def publish(records: Sequence[dict[str, Any]]) -> None:
        published.extend(records)

    app = FastAPI()
    acme = AcmeSettings(external_url=BASE, **settings)
    validator = FakeValidator()
    routes.install(app, engine=engine, box=BOX, settings=acme, http_port=0,
                   admin=AdminPublisher(publish, Topics("t-acme.certrail"), clock), clock=clock,
                   nonces=SqlNonces(engine, clock, lifetime=timedelta(seconds=acme.nonce_lifetime_s)),
                   validators={"http-01": validator, "dns-01": validator})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    door = OrderDoor(engine, client, clock, published)
    door.validator, door.validations = validator, app.state.acme_validations
    return door


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[OrderDoor]:
    door = open_orders_door(tmp_path)
    yield door
    door.validator.release.set()
    await door.validations.drain(5)
    await door.client.aclose()
    door.engine.dispose()


def problem(response: httpx.Response, kind: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document = response.json()
    assert document["type"] == f"urn:ietf:params:acme:error:{kind}", document
    assert response.headers["Replay-Nonce"]
    return document


def count(door: Door, table: Any) -> int:
    with read_session(door.engine) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


async def settled(door: OrderDoor, url: str, key: Any, kid: str) -> dict[str, Any]:
    """The object at ``url`` once it is no longer pending/processing (polled with a deadline)."""
    async def done() -> dict[str, Any] | None:
        document = (await door.get(url, key, kid)).json()
        return None if document["status"] in ("pending", "processing") else document
    return await poll_until(done, f"{url} to settle", 10, interval_s=0.02)  # type: ignore[return-value]


# -- newOrder -------------------------------------------------------------------------------------------------------


async def test_a_new_order_has_one_pending_authorization_per_name_with_an_http01_challenge(door: OrderDoor) -> None:
    key, kid = await door.account()
    response = await door.order(key, kid, "www.example.com", "API.example.com", "www.example.com")
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{BASE}/acme/order/") and response.headers["Replay-Nonce"]
    order = response.json()
    assert order["status"] == "pending"
    assert order["identifiers"] == [{"type": "dns", "value": "www.example.com"}, {"type": "dns", "value": "api.example.com"}]
    assert order["finalize"] == f"{location}/finalize" and len(order["authorizations"]) == 2
    assert order["expires"] == (NOW + timedelta(days=7)).isoformat().replace("+00:00", "Z")
    authz = (await door.get(order["authorizations"][0], key, kid)).json()
    assert authz["identifier"] == {"type": "dns", "value": "www.example.com"} and authz["status"] == "pending"
    assert "wildcard" not in authz
    [challenge] = authz["challenges"]  # no dns-01 hook configured: http-01 only
    assert challenge["type"] == "http-01" and challenge["status"] == "pending"
    assert len(challenge["token"]) == 22 and challenge["url"].startswith(f"{BASE}/acme/chall/")
    assert (await door.get(location, key, kid)).json() == order
    [created] = door.kinds(admin.AcmeOrderCreated)
    assert created.order_id == location.rsplit("/", 1)[1] and created.actor == f"acme:{kid.rsplit('/', 1)[1]}"
    assert created.change["identifiers"] == ["www.example.com", "api.example.com"] and created.change["profiles"] == ["web"]


async def test_a_name_no_profile_of_the_account_allows_is_rejected_with_a_subproblem_each(door: OrderDoor) -> None:
    key, kid = await door.account(profiles=["web", "internal"])
    document = problem(await door.order(key, kid, "www.example.com", "evil.example.org", "x.other.net"),
                       "rejectedIdentifier", 400)
    assert [s["identifier"]["value"] for s in document["subproblems"]] == ["evil.example.org", "x.other.net"]
    assert all(s["type"] == "urn:ietf:params:acme:error:rejectedIdentifier" for s in document["subproblems"])
    assert "outside the profile" in document["subproblems"][0]["detail"]
    # each name allowed by some profile, but none allows both: one certificate has one profile
    problem(await door.order(key, kid, "www.example.com", "db.corp.example"), "rejectedIdentifier", 400)
    # a profile named by the order must be the account's
    problem(await door.order(key, kid, "www.example.com", profile="wild"), "malformed", 400)
    assert (await door.order(key, kid, "db.corp.example", profile="internal")).status_code == 201
    assert count(door, GatewayAcmeOrder) == 1 and count(door, GatewayAcmeAuthorization) == 1


async def test_wildcards_need_dns01_and_get_only_dns01(door: OrderDoor, tmp_path: Path) -> None:
    key, kid = await door.account(profiles=["wild"])
    document = problem(await door.order(key, kid, "*.example.com"), "rejectedIdentifier", 400)
    assert "dns-01" in document["subproblems"][0]["detail"]
    hooked = open_orders_door(tmp_path / "hooked", challenges=ChallengePolicy(dns01_hook=HOOK))
    try:
        key, kid = await hooked.account(profiles=["wild"])
        order = (await hooked.order(key, kid, "*.example.com", "www.example.com")).json()
        wild, plain = [(await hooked.get(url, key, kid)).json() for url in order["authorizations"]]
        assert wild["identifier"] == {"type": "dns", "value": "example.com"} and wild["wildcard"] is True
        assert [c["type"] for c in wild["challenges"]] == ["dns-01"]
        assert [c["type"] for c in plain["challenges"]] == ["http-01", "dns-01"]
        # the web profile does not allow wildcards, dns-01 or not
        key, kid = await hooked.account(profiles=["web"])
        problem(await hooked.order(key, kid, "*.example.com"), "rejectedIdentifier", 400)
    finally:
        await hooked.client.aclose()
        hooked.engine.dispose()


@pytest.mark.parametrize(("payload", "kind"), [
    ({"identifiers": [{"type": "dns", "value": "www.example.com"}], "notBefore": "2026-12-01T00:00:00Z"}, "malformed"),
    ({"identifiers": [{"type": "dns", "value": "www.example.com"}], "notAfter": "2027-12-01T00:00:00Z"}, "malformed"),
    ({"identifiers": [{"type": "ip", "value": "192.0.2.1"}]}, "unsupportedIdentifier"),
    ({"identifiers": [{"type": "dns", "value": "bad_name!.example.com"}]}, "malformed"),
    ({"identifiers": [{"type": "dns", "value": "192.0.2.1"}]}, "rejectedIdentifier"),
    ({"identifiers": []}, "malformed"),
    ({"identifiers": "www.example.com"}, "malformed"),
    ({"identifiers": [{"type": "dns", "value": f"n{i}.example.com"} for i in range(101)]}, "malformed"),
    (None, "malformed"),
])
async def test_malformed_new_orders(door: OrderDoor, payload: Any, kind: str) -> None:
    key, kid = await door.account()
    problem(await door.as_account("new-order", payload, key, kid), kind, 400)
    assert count(door, GatewayAcmeOrder) == 0


async def test_new_order_needs_an_account(door: OrderDoor) -> None:
    key = ec_key()
    problem(await door.as_account("new-order", {"identifiers": [{"type": "dns", "value": "www.example.com"}]}, key,
                                  f"{BASE}/acme/account/0000000000000000"), "accountDoesNotExist", 400)


# -- reading: the owner only ------------------------------------------------------------------------------------------


async def test_another_account_cannot_read_an_order_its_authorizations_or_challenges(door: OrderDoor) -> None:
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    authz = (await door.get(order["authorizations"][0], key, kid)).json()
    chall = authz["challenges"][0]["url"]
    other_key, other_kid = await door.account()
    location = order["finalize"].removesuffix("/finalize")
    for url, missing in ((location, f"{BASE}/acme/order/ffffffffffffffffffffffff"),
                         (order["authorizations"][0], f"{BASE}/acme/authz/ffffffffffffffffffffffff"),
                         (chall, f"{BASE}/acme/chall/ffffffffffffffffffffffff")):
        foreign = problem(await door.get(url, other_key, other_kid), "unauthorized", 403)
        absent = problem(await door.get(missing, other_key, other_kid), "unauthorized", 403)
        assert foreign["detail"].split("'")[0] == absent["detail"].split("'")[0]  # existence is not told
    problem(await door.respond(chall, other_key, other_kid), "unauthorized", 403)
    problem(await door.respond(order["authorizations"][0], other_key, other_kid, {"status": "deactivated"}), "unauthorized", 403)
    assert door.validator.calls == []
    assert (await door.get(chall, key, kid)).json()["status"] == "pending"


# -- challenges: pending -> processing -> valid / invalid -------------------------------------------------------------


async def test_a_challenge_is_validated_once_and_the_order_becomes_ready(door: OrderDoor) -> None:
    key, kid = await door.account()
    order_response = await door.order(key, kid, "www.example.com")
    order, location = order_response.json(), order_response.headers["Location"]
    authz_url = order["authorizations"][0]
    chall = (await door.get(authz_url, key, kid)).json()["challenges"][0]
    door.validator.release.clear()
    first = await door.respond(chall["url"], key, kid)
    assert first.status_code == 200 and first.json()["status"] == "processing"
    second = await door.respond(chall["url"], key, kid)  # a client retry, or the same request at another instance
    assert second.status_code == 200 and second.json()["status"] == "processing"
    await poll_until(lambda: door.validator.calls, "the validation to start", 5, interval_s=0.01)
    assert (await door.get(location, key, kid)).json()["status"] == "pending"
    door.validator.release.set()
    authz = await settled(door, authz_url, key, kid)
    assert authz["status"] == "valid" and authz["challenges"][0]["status"] == "valid"
    assert authz["challenges"][0]["validated"] and "error" not in authz["challenges"][0]
    assert authz["expires"] == (NOW + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert (await door.get(location, key, kid)).json()["status"] == "ready"
    thumbprint = door.kinds(admin.AcmeAccountCreated)[0].change["jwk_thumbprint"]
    assert door.validator.calls == [("www.example.com", chall["token"], f"{chall['token']}.{thumbprint}")]
    # answering a valid challenge again starts nothing
    assert (await door.respond(chall["url"], key, kid)).json()["status"] == "valid"
    assert len(door.validator.calls) == 1
    [started] = door.kinds(admin.AcmeChallengeStarted)
    [validated] = door.kinds(admin.AcmeChallengeValidated)
    assert started.challenge_id == validated.challenge_id == chall["url"].rsplit("/", 1)[1]
    assert validated.change["orders_ready"] == [location.rsplit("/", 1)[1]]
    assert validated.change["addresses"] == ["192.0.2.10"]


async def test_a_failed_challenge_makes_its_authorization_and_order_invalid(door: OrderDoor) -> None:
    key, kid = await door.account()
    order_response = await door.order(key, kid, "www.example.com", "api.example.com")
    location, authz_urls = order_response.headers["Location"], order_response.json()["authorizations"]
    door.validator.problem = ChallengeProblem(ProblemType.UNAUTHORIZED, "the answer is not the key authorization")
    chall = (await door.get(authz_urls[0], key, kid)).json()["challenges"][0]
    await door.respond(chall["url"], key, kid)
    authz = await settled(door, authz_urls[0], key, kid)
    assert authz["status"] == "invalid"
    assert authz["challenges"][0]["error"] == {"type": "urn:ietf:params:acme:error:unauthorized",
                                               "detail": "the answer is not the key authorization", "status": 403}
    order = (await door.get(location, key, kid)).json()
    assert order["status"] == "invalid" and "www.example.com" in order["error"]["detail"]
    # one attempt: the challenge is not validated again, its authorization takes no other answer
    assert (await door.respond(chall["url"], key, kid)).json()["status"] == "invalid"
    assert len(door.validator.calls) == 1
    [failed] = door.kinds(admin.AcmeChallengeFailed)
    assert failed.change["error"]["type"].endswith(":unauthorized")
    assert failed.change["orders_invalid"] == [location.rsplit("/", 1)[1]]


async def test_two_claims_of_one_challenge_only_one_wins(door: OrderDoor) -> None:
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    authz_id = order["authorizations"][0].rsplit("/", 1)[1]
    with read_session(door.engine) as session:
        authz = db.get_authz(session, authz_id)
        [challenge] = db.challenges_of(session, authz_id)
        account = acme_store.get_account(session, kid.rsplit("/", 1)[1])
    assert authz is not None and account is not None
    actor = changes.account_actor(door.engine, account.account_id, door.clock)
    orders.start_challenge(actor, account, challenge, authz, door.clock())
    with pytest.raises(orders.NotClaimed):  # the second gateway instance
        orders.start_challenge(actor, account, challenge, authz, door.clock())
    assert len(door.kinds(admin.AcmeChallengeStarted)) == 1


async def test_an_expired_order_is_invalid_and_its_challenges_are_not_validated(door: OrderDoor) -> None:
    key, kid = await door.account()
    response = await door.order(key, kid, "www.example.com")
    location, authz_url = response.headers["Location"], response.json()["authorizations"][0]
    chall = (await door.get(authz_url, key, kid)).json()["challenges"][0]
    door.clock.advance(7 * 86_400 + 1)
    assert (await door.get(location, key, kid)).json()["status"] == "invalid"
    assert (await door.get(authz_url, key, kid)).json()["status"] == "expired"
    assert "expired" in problem(await door.respond(chall["url"], key, kid), "malformed", 400)["detail"]
    assert door.validator.calls == [] and door.kinds(admin.AcmeChallengeStarted) == []


# -- reuse and deactivation -------------------------------------------------------------------------------------------


async def validated_order(door: OrderDoor, key: Any, kid: str, name: str) -> dict[str, Any]:
    order = (await door.order(key, kid, name)).json()
    chall = (await door.get(order["authorizations"][0], key, kid)).json()["challenges"][0]
    await door.respond(chall["url"], key, kid)
    await settled(door, order["authorizations"][0], key, kid)
    return order


async def test_a_valid_authorization_is_reused_by_the_next_order(door: OrderDoor, tmp_path: Path) -> None:
    key, kid = await door.account()
    first = await validated_order(door, key, kid, "www.example.com")
    again = await door.order(key, kid, "www.example.com")
    assert again.json()["status"] == "ready" and again.json()["authorizations"] == first["authorizations"]
    assert door.kinds(admin.AcmeOrderCreated)[-1].change["reused"] == [first["authorizations"][0].rsplit("/", 1)[1]]
    other_key, other_kid = await door.account()  # another account's authorization is never reused
    assert (await door.order(other_key, other_kid, "www.example.com")).json()["status"] == "pending"
    fresh = open_orders_door(tmp_path / "fresh", authz_reuse=False)
    try:
        key, kid = await fresh.account()
        first = await validated_order(fresh, key, kid, "www.example.com")
        again = await fresh.order(key, kid, "www.example.com")
        assert again.json()["status"] == "pending" and again.json()["authorizations"] != first["authorizations"]
    finally:
        await fresh.validations.drain(5)
        await fresh.client.aclose()
        fresh.engine.dispose()


async def test_deactivating_an_authorization_invalidates_its_orders(door: OrderDoor) -> None:
    key, kid = await door.account()
    response = await door.order(key, kid, "www.example.com")
    location, authz_url = response.headers["Location"], response.json()["authorizations"][0]
    problem(await door.respond(authz_url, key, kid, {"status": "valid"}), "malformed", 400)
    deactivated = await door.respond(authz_url, key, kid, {"status": "deactivated"})
    assert deactivated.status_code == 200 and deactivated.json()["status"] == "deactivated"
    order = (await door.get(location, key, kid)).json()
    assert order["status"] == "invalid" and "deactivated" in order["error"]["detail"]
    problem(await door.respond(authz_url, key, kid, {"status": "deactivated"}), "malformed", 400)
    [event] = door.kinds(admin.AcmeAuthorizationDeactivated)
    assert event.change == {"identifier": "www.example.com", "status": "deactivated",
                            "orders_invalid": [location.rsplit("/", 1)[1]]}
    chall = deactivated.json()["challenges"][0]
    problem(await door.respond(chall["url"], key, kid), "malformed", 400)
    assert door.validator.calls == []


async def test_the_directory_serves_new_order_and_a_pending_order_is_not_finalized(door: OrderDoor) -> None:
    assert (await door.client.get("/acme/directory")).json()["newOrder"] == f"{BASE}/acme/new-order"
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    finalize = order["finalize"].removeprefix(f"{BASE}/acme/")
    problem(await door.as_account(finalize, {"csr": "x"}, key, kid), "orderNotReady", 403)  # test_acme_finalize.py
    problem(await door.as_account("renewal-info", {}, key, kid), "malformed", 404)
    problem(await door.client.get("/acme/new-order"), "malformed", 405)


async def test_shutdown_awaits_a_validation_in_flight(door: OrderDoor) -> None:
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    chall = (await door.get(order["authorizations"][0], key, kid)).json()["challenges"][0]
    door.validator.release.clear()
    await door.respond(chall["url"], key, kid)
    await poll_until(lambda: door.validator.calls, "the validation to start", 5, interval_s=0.01)
    assert len(door.validations.tasks) == 1
    asyncio.get_running_loop().call_later(0.05, door.validator.release.set)
    await door.validations.drain(5)
    assert not door.validations.tasks
    assert (await door.get(chall["url"], key, kid)).json()["status"] == "valid"


async def test_a_validator_that_breaks_ends_the_challenge_invalid_not_processing(door: OrderDoor) -> None:
    key, kid = await door.account()
    order = (await door.order(key, kid, "www.example.com")).json()
    chall = (await door.get(order["authorizations"][0], key, kid)).json()["challenges"][0]

    async def broken(identifier: str, token: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
        raise RuntimeError("a bug")

    door.validations.validators["http-01"] = broken
    await door.respond(chall["url"], key, kid)
    authz = await settled(door, order["authorizations"][0], key, kid)
    assert authz["status"] == "invalid"
    assert authz["challenges"][0]["error"]["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert "a bug" not in authz["challenges"][0]["error"]["detail"]

"""The ACME door's account layer over HTTP (services/gateway/acme/routes.py), in-process over a migrated SQLite
database: the directory and nonces, newAccount with External Account Binding (required, single-use), account
update / POST-as-GET / deactivation, key rollover, and every refusal as an RFC 8555 problem document with a
fresh Replay-Nonce. The JWS are signed here by hand (tests/unit/acme_support.py), hostile ones included."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from services.common.contracts import admin
from services.common.db import read_session
from services.common.db_schema import GatewayAcmeAccount, GatewayAcmeEabKey
from services.gateway.acme import changes
from services.gateway.acme.jws import b64url_encode
from services.gateway.api_common import Problem
from services.gateway.app import API_PREFIXES
from services.gateway.config.actor import Actor
from tests.gateway_fixtures import BOX
from tests.unit.acme_support import BASE, JOSE, Door, b64json, eab, ec_key, open_door, public, rsa_key, sign


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    door = open_door(tmp_path)
    yield door
    await door.client.aclose()
    door.engine.dispose()


def problem(response: httpx.Response, kind: str, status: int) -> dict[str, Any]:
    """The response is the RFC 8555 problem ``kind`` with ``status``, and carries a usable fresh nonce."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document = response.json()
    assert document["type"] == f"urn:ietf:params:acme:error:{kind}", document
    assert document["status"] == status and document["detail"]
    assert response.headers["Replay-Nonce"] and response.headers["Link"] == f'<{BASE}/acme/directory>;rel="index"'
    return document


def count(door: Door, table: Any) -> int:
    with read_session(door.engine) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


# -- directory and nonces ----------------------------------------------------------------------------------


async def test_the_directory_names_every_resource_under_the_external_url_and_requires_eab(door: Door) -> None:
    response = await door.client.get("/acme/directory")
    assert response.status_code == 200
    assert response.json() == {
        "newNonce": f"{BASE}/acme/new-nonce", "newAccount": f"{BASE}/acme/new-account", "newOrder": f"{BASE}/acme/new-order",
        "revokeCert": f"{BASE}/acme/revoke-cert", "keyChange": f"{BASE}/acme/key-change",
        "renewalInfo": f"{BASE}/acme/renewal-info", "meta": {"externalAccountRequired": True}}
    assert "/acme" in API_PREFIXES  # the gateway's prefix router sends /acme to the HTTP API


async def test_new_nonce_answers_head_200_and_get_204_with_a_fresh_uncached_nonce(door: Door) -> None:
    head, get = await door.client.head("/acme/new-nonce"), await door.client.get("/acme/new-nonce")
    assert (head.status_code, get.status_code) == (200, 204)
    for response in (head, get):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Link"] == f'<{BASE}/acme/directory>;rel="index"'
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]


# -- newAccount with External Account Binding ---------------------------------------------------------------


async def test_an_account_is_created_with_eab_bound_to_its_requester_and_profiles_and_audited(door: Door) -> None:
    key = ec_key()
    key_id, hmac_key = door.eab_key(profiles=["web"])
    response = await door.register(key, eab_key=(key_id, hmac_key))
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{BASE}/acme/account/") and response.headers["Replay-Nonce"]
    account = response.json()
    assert account["status"] == "valid" and account["contact"] == ["mailto:ops@example.com"]
    assert account["key"] == public(key) and account["orders"] == f"{location}/orders"
    account_id = location.rsplit("/", 1)[1]
    with read_session(door.engine) as session:
        row = session.get(GatewayAcmeAccount, account_id)
        bound = session.get(GatewayAcmeEabKey, key_id)
        assert row is not None and bound is not None
        assert (row.requester, json.loads(row.profiles), row.eab_key_id) == ("ci-pipeline", ["web"], key_id)
        assert bound.account_id == account_id and bound.hmac_key != hmac_key  # sealed at rest
    created = [e for e in door.events() if isinstance(e.data, admin.AcmeAccountCreated)]
    assert len(created) == 1 and created[0].data.account_id == account_id
    assert created[0].data.actor == f"acme:{account_id}" and created[0].data.change["eab_key_id"] == key_id
    assert any(r["value"] and account_id in r["value"] for r in door.published)  # published after the commit
    for event in door.events():  # the HMAC key never reaches an event
        assert b64url_encode(hmac_key) not in event.model_dump_json()
        assert base64.b64encode(hmac_key).decode() not in event.model_dump_json()


async def test_the_same_key_gets_its_account_back_and_only_return_existing_finds_nothing_else(door: Door) -> None:
    key = ec_key()
    created = await door.register(key)
    again = await door.register(key)  # another EAB key, unused: the account exists, so it is not spent
    assert again.status_code == 200 and again.headers["Location"] == created.headers["Location"]
    assert count(door, GatewayAcmeAccount) == 1
    stranger = ec_key()
    found = await door.post("new-account", sign({"onlyReturnExisting": True}, key, url=door.url("new-account"),
                                                nonce=await door.nonce()))
    assert found.status_code == 200 and found.headers["Location"] == created.headers["Location"]
    missing = await door.post("new-account", sign({"onlyReturnExisting": True}, stranger, url=door.url("new-account"),
                                                  nonce=await door.nonce()))
    problem(missing, "accountDoesNotExist", 400)


async def test_an_account_without_eab_is_refused_external_account_required(door: Door) -> None:
    key = ec_key()
    response = await door.post("new-account", sign({"termsOfServiceAgreed": True}, key, url=door.url("new-account"),
                                                   nonce=await door.nonce()))
    problem(response, "externalAccountRequired", 400)
    assert count(door, GatewayAcmeAccount) == 0


async def test_an_eab_key_binds_one_account_only(door: Door) -> None:
    key_id, hmac_key = door.eab_key()
    assert (await door.register(ec_key(), eab_key=(key_id, hmac_key))).status_code == 201
    reused = await door.register(ec_key(), eab_key=(key_id, hmac_key))
    assert "used already" in problem(reused, "unauthorized", 403)["detail"]
    assert count(door, GatewayAcmeAccount) == 1


async def test_a_revoked_or_unknown_eab_key_or_a_wrong_mac_creates_nothing(door: Door) -> None:
    revoked = door.eab_key()
    changes.revoke_eab_key(Actor(door.engine, "root-admin", door.clock), revoked[0])
    assert "revoked" in problem(await door.register(ec_key(), eab_key=revoked), "unauthorized", 403)["detail"]
    unknown = problem(await door.register(ec_key(), eab_key=("eab-00000000000000000000", b"k" * 32)), "unauthorized", 403)
    key_id, _ = door.eab_key()
    wrong_mac = problem(await door.register(ec_key(), eab_key=(key_id, b"x" * 32)), "unauthorized", 403)
    assert unknown["detail"] == wrong_mac["detail"] and "does not verify" in unknown["detail"]
    # without the HMAC key, a revoked key looks like any other: its state is told only to its holder
    assert problem(await door.register(ec_key(), eab_key=(revoked[0], b"x" * 32)), "unauthorized", 403) == wrong_mac
    assert count(door, GatewayAcmeAccount) == 0


@pytest.mark.parametrize(("case", "kind", "status"), [
    ("binds another key", "unauthorized", 403),
    ("url of another resource", "unauthorized", 403),
    ("alg none", "badSignatureAlgorithm", 400),
    ("alg ES256", "badSignatureAlgorithm", 400),
    ("has a nonce", "malformed", 400),
    ("not a JWS", "malformed", 400),
    ("bad base64", "malformed", 400),
])
async def test_hostile_external_account_bindings(door: Door, case: str, kind: str, status: int) -> None:
    key = ec_key()
    key_id, hmac_key = door.eab_key()
    binding: Any = {
        "binds another key": eab(key_id, hmac_key, ec_key()),
        "url of another resource": eab(key_id, hmac_key, key, url=door.url("key-change")),
        "alg none": eab(key_id, hmac_key, key, header={"alg": "none"}),
        "alg ES256": eab(key_id, hmac_key, key, header={"alg": "ES256"}),
        "has a nonce": eab(key_id, hmac_key, key, header={"nonce": "abc"}),
        "not a JWS": "eyJhbGciOiJIUzI1NiJ9",
        "bad base64": {**eab(key_id, hmac_key, key), "payload": "not base64!"},
    }[case]
    body = {"termsOfServiceAgreed": True, "externalAccountBinding": binding}
    response = await door.post("new-account", sign(body, key, url=door.url("new-account"), nonce=await door.nonce()))
    document = problem(response, kind, status)
    if kind == "badSignatureAlgorithm":
        assert document["algorithms"] == ["HS256", "HS384", "HS512"]
    assert count(door, GatewayAcmeAccount) == 0


async def test_contacts_must_be_single_mailto_addresses(door: Door) -> None:
    problem(await door.register(ec_key(), contact=["tel:+15551234"]), "unsupportedContact", 400)
    problem(await door.register(ec_key(), contact=["mailto:ops@example.com?subject=hi"]), "invalidContact", 400)
    problem(await door.register(ec_key(), contact=["mailto:a@example.com,b@example.com"]), "invalidContact", 400)
    problem(await door.register(ec_key(), contact="mailto:ops@example.com"), "malformed", 400)
    problem(await door.register(ec_key(), contact=[f"mailto:o{i}@example.com" for i in range(5)]), "malformed", 400)
    assert count(door, GatewayAcmeAccount) == 0


async def test_terms_of_service_must_be_agreed_when_the_server_has_some(tmp_path: Path) -> None:
    door = open_door(tmp_path, terms_of_service_url="https://pki.example/tos")
    try:
        assert (await door.client.get("/acme/directory")).json()["meta"]["termsOfService"] == "https://pki.example/tos"
        problem(await door.register(ec_key(), termsOfServiceAgreed=False), "malformed", 400)
        assert (await door.register(ec_key())).status_code == 201
    finally:
        await door.client.aclose()
        door.engine.dispose()


# -- the JWS of every POST ---------------------------------------------------------------------------------------


async def test_a_replayed_nonce_is_bad_and_the_refusal_carries_a_fresh_one_that_works(door: Door) -> None:
    key = ec_key()
    nonce = await door.nonce()
    body = {"onlyReturnExisting": True}
    first = await door.post("new-account", sign(body, key, url=door.url("new-account"), nonce=nonce))
    problem(first, "accountDoesNotExist", 400)  # the nonce was good (and is now used)
    replayed = await door.post("new-account", sign(body, key, url=door.url("new-account"), nonce=nonce))
    problem(replayed, "badNonce", 400)
    fresh = replayed.headers["Replay-Nonce"]
    retried = await door.post("new-account", sign(body, key, url=door.url("new-account"), nonce=fresh))
    problem(retried, "accountDoesNotExist", 400)


async def test_unknown_expired_absent_and_garbage_nonces_are_bad(door: Door) -> None:
    key = ec_key()
    url = door.url("new-account")
    body = {"onlyReturnExisting": True}
    problem(await door.post("new-account", sign(body, key, url=url, nonce="AAAAAAAAAAAAAAAAAAAAAA")), "badNonce", 400)
    problem(await door.post("new-account", sign(body, key, url=url, nonce=None)), "badNonce", 400)
    problem(await door.post("new-account", sign(body, key, url=url, nonce="not/base64url=")), "badNonce", 400)
    problem(await door.post("new-account", sign(body, key, url=url, nonce="A" * 65)), "badNonce", 400)
    old = await door.nonce()
    door.clock.advance(3601)
    problem(await door.post("new-account", sign(body, key, url=url, nonce=old)), "badNonce", 400)


async def test_the_url_must_be_the_url_the_request_was_sent_to(door: Door) -> None:
    key = ec_key()
    for url in (door.url("key-change"), "http://acme.test:8443/acme/new-account", f"{BASE}/acme/new-account/"):
        response = await door.post("new-account", sign({}, key, url=url, nonce=await door.nonce()))
        problem(response, "unauthorized", 403)
    problem(await door.post("new-account", sign({}, key, url=door.url("new-account"), nonce=await door.nonce(),
                                                drop=["url"])), "malformed", 400)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS1", "PS256", "EdDSA"])
async def test_account_keys_never_sign_with_none_macs_or_unknown_algorithms(door: Door, alg: str) -> None:
    key = ec_key()
    body = sign({}, key, url=door.url("new-account"), nonce=await door.nonce())
    header = json.loads(base64.urlsafe_b64decode(body["protected"] + "=="))
    body["protected"] = b64json({**header, "alg": alg})
    document = problem(await door.post("new-account", body), "badSignatureAlgorithm", 400)
    assert document["algorithms"] == ["ES256", "ES384", "ES512", "RS256"]


async def test_the_algorithm_must_fit_the_key(door: Door) -> None:
    p384 = ec_key(ec.SECP384R1())
    response = await door.post("new-account", sign({}, p384, url=door.url("new-account"), nonce=await door.nonce(),
                                                   alg="ES384", header={"alg": "ES256"}))
    problem(response, "badSignatureAlgorithm", 400)
    assert (await door.register(p384, alg="ES384")).status_code == 201
    assert (await door.register(rsa_key(), alg="RS256")).status_code == 201


async def test_bad_public_keys_are_refused(door: Door) -> None:
    small = rsa_key(1024)
    problem(await door.post("new-account", sign({}, small, url=door.url("new-account"), nonce=await door.nonce(),
                                                alg="RS256")), "badPublicKey", 400)
    key = ec_key()
    leaked = {**public(key), "d": key.to_partial_json()["d"]}
    problem(await door.post("new-account", sign({}, key, url=door.url("new-account"), nonce=await door.nonce(),
                                                header={"jwk": leaked})), "badPublicKey", 400)
    problem(await door.post("new-account", sign({}, key, url=door.url("new-account"), nonce=await door.nonce(),
                                                header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}})), "badPublicKey", 400)
    off_curve = {**public(key), "y": public(ec_key())["y"]}
    problem(await door.post("new-account", sign({}, key, url=door.url("new-account"), nonce=await door.nonce(),
                                                header={"jwk": off_curve})), "badPublicKey", 400)


async def test_a_signature_by_another_key_does_not_verify(door: Door) -> None:
    key, other = ec_key(), ec_key()
    response = await door.post("new-account", sign({}, other, url=door.url("new-account"), nonce=await door.nonce(),
                                                   header={"jwk": public(key)}))
    assert "signature" in problem(response, "malformed", 400)["detail"]


@pytest.mark.parametrize("case", ["not JSON", "array", "unprotected header", "general serialization", "bad base64",
                                  "protected not an object", "jwk and kid", "neither jwk nor kid", "crit", "extra member",
                                  "signature missing"])
async def test_hostile_bodies_are_malformed(door: Door, case: str) -> None:
    key = ec_key()
    url, nonce = door.url("new-account"), await door.nonce()
    good = sign({}, key, url=url, nonce=nonce)
    body: Any = {
        "not JSON": b"{not json",
        "array": [good],
        "unprotected header": {**good, "header": {"kid": "x"}},
        "general serialization": {"payload": good["payload"], "signatures": [good]},
        "bad base64": {**good, "protected": good["protected"] + "!"},
        "protected not an object": {**good, "protected": b64json(["alg", "ES256"])},
        "jwk and kid": sign({}, key, url=url, nonce=nonce, header={"kid": f"{BASE}/acme/account/abcdefgh"}),
        "neither jwk nor kid": sign({}, key, url=url, nonce=nonce, drop=["jwk"]),
        "crit": sign({}, key, url=url, nonce=nonce, header={"crit": ["b64"], "b64": False}),
        "extra member": {**good, "signatures": None},
        "signature missing": {"protected": good["protected"], "payload": good["payload"]},
    }[case]
    problem(await door.post("new-account", body), "malformed", 400)


async def test_the_media_type_and_size_are_enforced(door: Door) -> None:
    key = ec_key()
    body = sign({}, key, url=door.url("new-account"), nonce=await door.nonce())
    problem(await door.post("new-account", body, headers={"Content-Type": "application/json"}), "malformed", 415)
    huge = sign({"contact": ["mailto:a@example.com"], "pad": "x" * 70_000}, key, url=door.url("new-account"),
                nonce=await door.nonce())
    problem(await door.post("new-account", huge), "malformed", 413)


async def test_unserved_resources_and_methods_are_problems_too(door: Door) -> None:
    problem(await door.client.post("/acme/renewal-info", content=b"{}", headers=JOSE), "malformed", 404)
    problem(await door.client.get("/acme/revoke-cert"), "malformed", 405)
    problem(await door.client.get("/acme/new-account"), "malformed", 405)
    problem(await door.client.post("/acme/directory", content=b"{}", headers=JOSE), "malformed", 405)


# -- the account: POST-as-GET, update, deactivation ---------------------------------------------------------------


async def registered(door: Door) -> tuple[Any, str, str]:
    key = ec_key()
    response = await door.register(key)
    assert response.status_code == 201, response.text
    kid = response.headers["Location"]
    return key, kid, kid.removeprefix(f"{BASE}/acme/")


async def test_post_as_get_reads_the_account_and_contacts_can_be_changed(door: Door) -> None:
    key, kid, path = await registered(door)
    read = await door.as_account(path, None, key, kid)
    assert read.status_code == 200 and read.json()["contact"] == ["mailto:ops@example.com"]
    changed = await door.as_account(path, {"contact": ["mailto:pki@example.com"], "status": "valid"}, key, kid)
    assert changed.status_code == 200 and changed.json()["contact"] == ["mailto:pki@example.com"]
    updated = [e.data for e in door.events() if isinstance(e.data, admin.AcmeAccountUpdated)]
    assert [u.change for u in updated] == [{"contact": ["mailto:pki@example.com"]}]
    problem(await door.as_account(path, {"contact": ["tel:1"]}, key, kid), "unsupportedContact", 400)
    problem(await door.as_account(path, {"status": "revoked"}, key, kid), "malformed", 400)


async def test_an_account_is_only_reached_through_its_own_kid(door: Door) -> None:
    key, kid, path = await registered(door)
    other_key, other_kid, _ = await registered(door)
    problem(await door.as_account(path, None, other_key, other_kid), "unauthorized", 403)
    problem(await door.as_account(path, None, key, f"{BASE}/acme/account/0000000000000000"), "accountDoesNotExist", 400)
    problem(await door.as_account(path, None, key, "https://elsewhere.example/acme/account/1"), "accountDoesNotExist", 400)
    problem(await door.as_account(path, None, other_key, kid), "malformed", 400)  # the signature is not the account's key
    problem(await door.post(path, sign(None, key, url=door.url(path), nonce=await door.nonce())), "malformed", 400)  # jwk


async def test_a_deactivated_account_authorises_nothing_any_more(door: Door) -> None:
    key, kid, path = await registered(door)
    deactivated = await door.as_account(path, {"status": "deactivated"}, key, kid)
    assert deactivated.status_code == 200 and deactivated.json()["status"] == "deactivated"
    events = [e.data for e in door.events() if isinstance(e.data, admin.AcmeAccountDeactivated)]
    assert len(events) == 1 and events[0].change == {"status": "deactivated"}
    problem(await door.as_account(path, None, key, kid), "unauthorized", 403)
    problem(await door.register(key), "unauthorized", 403)  # newAccount with its key does not revive it


# -- key rollover ----------------------------------------------------------------------------------------------------


def inner(new: Any, *, kid: str, old: Any, url: str, **kwargs: Any) -> dict[str, Any]:
    payload = {"account": kid, "oldKey": public(old)}
    return sign(kwargs.pop("payload", payload), new, url=url, nonce=kwargs.pop("nonce", None), **kwargs)


async def test_key_rollover_moves_the_account_to_the_new_key(door: Door) -> None:
    old, kid, path = await registered(door)
    new = rsa_key()
    url = door.url("key-change")
    response = await door.as_account("key-change", inner(new, kid=kid, old=old, url=url, alg="RS256"), old, kid)
    assert response.status_code == 200, response.text
    assert response.json()["key"] == public(new) and response.headers["Location"] == kid
    assert (await door.as_account(path, None, new, kid, alg="RS256")).status_code == 200
    # the old key signs for nothing: an ES256 signature does not fit the account's RSA key any more
    problem(await door.as_account(path, None, old, kid), "badSignatureAlgorithm", 400)
    changed = [e.data for e in door.events() if isinstance(e.data, admin.AcmeAccountKeyChanged)]
    assert len(changed) == 1 and changed[0].change["jwk_thumbprint"] != changed[0].change["old_jwk_thumbprint"]


async def test_key_rollover_to_a_key_another_account_has_is_a_conflict(door: Door) -> None:
    old, kid, _ = await registered(door)
    taken, taken_kid, _ = await registered(door)
    response = await door.as_account("key-change", inner(taken, kid=kid, old=old, url=door.url("key-change")), old, kid)
    problem(response, "malformed", 409)
    assert response.headers["Location"] == taken_kid


@pytest.mark.parametrize(("case", "kind", "status"), [
    ("inner has a nonce", "malformed", 400),
    ("inner url differs", "malformed", 400),
    ("inner signed by another key", "malformed", 400),
    ("inner has a kid", "malformed", 400),
    ("oldKey is not the account's", "unauthorized", 403),
    ("account is another", "unauthorized", 403),
    ("same key", "malformed", 400),
    ("no inner JWS", "malformed", 400),
    ("inner alg none", "badSignatureAlgorithm", 400),
])
async def test_hostile_key_rollovers(door: Door, case: str, kind: str, status: int) -> None:
    old, kid, _ = await registered(door)
    new, url = ec_key(), door.url("key-change")
    body: Any = {
        "inner has a nonce": inner(new, kid=kid, old=old, url=url, nonce=await door.nonce()),
        "inner url differs": inner(new, kid=kid, old=old, url=door.url("new-account")),
        "inner signed by another key": inner(ec_key(), kid=kid, old=old, url=url, header={"jwk": public(new)}),
        "inner has a kid": inner(new, kid=kid, old=old, url=url, header={"kid": kid}),
        "oldKey is not the account's": inner(new, kid=kid, old=ec_key(), url=url),
        "account is another": inner(new, kid=f"{BASE}/acme/account/ffffffffffffffff", old=old, url=url),
        "same key": inner(old, kid=kid, old=old, url=url),
        "no inner JWS": None,
        "inner alg none": inner(new, kid=kid, old=old, url=url, header={"alg": "none"}),
    }[case]
    problem(await door.as_account("key-change", body, old, kid), kind, status)
    assert not [e for e in door.events() if isinstance(e.data, admin.AcmeAccountKeyChanged)]


# -- EAB keys (the admin side of changes.py) --------------------------------------------------------------------------


async def test_eab_keys_need_existing_profiles_that_allow_the_requester(door: Door) -> None:
    actor = Actor(door.engine, "root-admin", door.clock)
    with pytest.raises(Problem, match="PROFILE_NOT_FOUND"):
        changes.create_eab_key(actor, BOX, requester="ci-pipeline", profiles=["ghost"])
    with pytest.raises(Problem, match="PROFILE_REFUSES_REQUESTER"):
        changes.create_eab_key(actor, BOX, requester="ci-pipeline", profiles=["ops-only"])
    with pytest.raises(Problem, match="ACME_EAB_KEY_NOT_FOUND"):
        changes.revoke_eab_key(actor, "eab-missing")
    assert count(door, GatewayAcmeEabKey) == 0
    refused = [e.data for e in door.events() if isinstance(e.data, admin.AcmeEabKeyCreated)]
    assert [r.outcome for r in refused] == [admin.AdminOutcome.REFUSED] * 2
    key, hmac_key = changes.create_eab_key(actor, BOX, requester="ci-pipeline", profiles=["web"])
    created = [e.data for e in door.events() if isinstance(e.data, admin.AcmeEabKeyCreated)][-1]
    assert created.eab_key_id == key.key_id and created.change == {"profiles": ["web"], "hmac_key": "***"}
    assert len(hmac_key) == 32 and key.describe()["state"] == "unused"

"""The simulator's emCA 4.2.x dialect over HTTP (httpx ASGITransport), on a small fake CA core.

Authentication (AuthKey, JWT, nonces, source addresses), every operation, the
manual-approval flow, revocation reasons, error codes and HTTP statuses, and
that 4.2.x never deduplicates on applicationId. Requests are built with the
connector's RequestBuilder (held to the same vectors) or by hand where a test
needs bytes the connector would never send.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from emca_sim.backend import CaInfo, Dialect, Issued, Pending, ProfileInfo, RegisteredApp, SimError, SimErrorKind
from emca_sim.dialects import v4_2 as server
from services.common.emca.dialects import v4_2 as client

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
SECRET = b"s" * 32
CA = "certrail Test Issuing CA"
CA_PEM = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
ROOT_PEM = "-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----\n"
CRL_DER = b"\x30\x03\x02\x01\x07"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nd2ViMQ==\n-----END CERTIFICATE REQUEST-----\n"
BAD_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nQkFE\n-----END CERTIFICATE REQUEST-----\n"
V423 = RegisteredApp("app-423", "pw-423", Dialect.V4_2_3, client_id="client-id-423")
V424 = RegisteredApp("app-424", "pw-424", Dialect.V4_2_4, client_id="client-id-424")
V4017 = RegisteredApp("app-4017", "pw-4017", Dialect.V4_0_17, aes_key=b"k" * 32)
REMOTE = RegisteredApp("app-remote", "pw-r", Dialect.V4_2_3, source_addresses=("10.0.0.0/8",), client_id="client-id-r")


@dataclass
class FakeBackend:
    """A tiny CA core: new serials for every issue, manual approval, revocation state."""

    now: datetime = NOW
    apps: dict[str, RegisteredApp] = field(default_factory=lambda: {a.username: a for a in (V423, V424, V4017, REMOTE)})
    seen: set[tuple[str, str]] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    certs: dict[str, Issued] = field(default_factory=dict)
    pendings: dict[str, Pending] = field(default_factory=dict)
    issue_calls: list[dict[str, Any]] = field(default_factory=list)
    fail_with: SimError | None = None
    serials: itertools.count[int] = field(default_factory=lambda: itertools.count(0x1000))

    def application(self, username: str) -> RegisteredApp | None:
        return self.apps.get(username)

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None:
        return next((a for a in self.apps.values() if a.client_id == client_id), None)

    def remember_txn(self, username: str, txn: str) -> bool:
        if (username, txn) in self.seen:
            return False
        self.seen.add((username, txn))
        return True

    def count_request(self, method: str) -> None:
        self.counts[method] += 1

    def profiles(self) -> list[ProfileInfo]:
        return [
            ProfileInfo("TLS Server", "1001", CA, 90, ("EC-P256",)),
            ProfileInfo("TLS Manual", "1004", CA, 30, ("EC-P256", "RSA-2048"), manual_approval=True),
        ]

    def profile(self, name: str) -> ProfileInfo | None:
        return next((p for p in self.profiles() if p.name == name), None)

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None:
        return next((p for p in self.profiles() if p.profile_id == profile_id), None)

    def cas(self) -> list[CaInfo]:
        return [CaInfo(CA, "EC-P256", CA_PEM, "ab" * 32)]

    def subscriber_exists(self, subscriber_id: str) -> bool:
        return subscriber_id == "SUB-1"

    def _mint(self, profile: str, subscriber_id: str, application_id: str | None) -> Issued:
        serial = format(next(self.serials), "x")
        issued = Issued(
            serial,
            f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n",
            (CA_PEM, ROOT_PEM),
            profile,
            subscriber_id,
            application_id,
            self.now,
        )
        self.certs[serial] = issued
        return issued

    def issue(
        self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None, dedupe_by_application_id: bool
    ) -> Issued | Pending:
        self.issue_calls.append(
            {"profile": profile, "csr": csr_pem, "application_id": application_id, "dedupe": dedupe_by_application_id}
        )
        if self.fail_with is not None:
            raise self.fail_with
        info = self.profile(profile)
        if info is None:
            raise SimError(SimErrorKind.UNKNOWN_PROFILE, profile)
        if csr_pem == BAD_CSR:
            raise SimError(SimErrorKind.CSR_REJECTED, "key type RSA-1024 not allowed")
        if info.manual_approval:
            request_id = f"REQ-{len(self.pendings) + 1}"
            self.pendings[request_id] = Pending(request_id, profile, subscriber_id, application_id, "pending")
            return self.pendings[request_id]
        return self._mint(profile, subscriber_id, application_id)

    def approve(self, request_id: str) -> Issued:
        pending = self.pendings[request_id]
        issued = self._mint(pending.profile, pending.subscriber_id, pending.application_id)
        self.pendings[request_id] = replace(pending, state="approved", issued=issued)
        return issued

    def reject(self, request_id: str, reason: str) -> None:
        self.pendings[request_id] = replace(self.pendings[request_id], state="rejected", rejection=reason)

    def pending(self, request_id: str) -> Pending:
        if request_id not in self.pendings:
            raise SimError(SimErrorKind.NOT_FOUND, request_id)
        return self.pendings[request_id]

    def certificate(self, serial: str) -> Issued:
        if serial not in self.certs:
            raise SimError(SimErrorKind.NOT_FOUND, serial)
        return self.certs[serial]

    def revoke(self, serial: str, reason: str) -> Issued:
        issued = self.certificate(serial)
        if issued.revoked_at is not None:
            raise SimError(SimErrorKind.ALREADY_REVOKED, serial)
        self.certs[serial] = replace(issued, revoked_at=self.now, revocation_reason=reason)
        return self.certs[serial]

    def crl_der(self, ca_name: str) -> bytes:
        if ca_name != CA:
            raise SimError(SimErrorKind.UNKNOWN_CA, ca_name)
        return CRL_DER

    def chain(self, ca_name: str) -> tuple[str, ...]:
        if ca_name != CA:
            raise SimError(SimErrorKind.UNKNOWN_CA, ca_name)
        return (CA_PEM, ROOT_PEM)


class Sim:
    """The dialect's routes on a FakeBackend, with a settable clock."""

    def __init__(self, backend: FakeBackend | None = None, *, secret: bytes | None = SECRET) -> None:
        self.backend = backend or FakeBackend()
        self.now = NOW
        self.app = Starlette(routes=server.routes(self.backend, jwt_secret=secret, clock=lambda: self.now))
        self._ids = itertools.count(1)

    def builder(self, app: RegisteredApp, **overrides: str) -> client.RequestBuilder:
        creds = client.Credentials(
            overrides.get("app_code", app.username),
            overrides.get("password", app.password),
            overrides.get("client_id", app.client_id or ""),
        )
        return client.RequestBuilder(app.dialect.value, creds, clock=lambda: self.now, new_id=lambda: f"id-{next(self._ids):06d}")

    async def send(self, request: client.HttpRequest, *, host: str = "127.0.0.1") -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://emca.test") as http:
            return await http.request(request.method, request.path, headers=list(request.headers), content=request.body)

    async def token(self, app: RegisteredApp = V424, validity_mins: int = 15) -> str:
        response = await self.send(self.builder(app).token(validity_mins=validity_mins))
        assert response.status_code == 200, response.text
        return client.parse_token(as_client(response), requested_at=self.now).value


def as_client(response: httpx.Response) -> client.HttpResponse:
    return client.HttpResponse(response.status_code, response.content, tuple(response.headers.items()))


def failure(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["status"] == "failure"
    return response.status_code, body["errorCode"]


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["result"]


def with_headers(request: client.HttpRequest, **changes: str | None) -> client.HttpRequest:
    headers = dict(request.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return replace(request, headers=tuple(headers.items()))


# -- V4.2.3: AuthKey ----------------------------------------------------------------------------------


async def test_v423_accepts_a_good_authkey_and_counts_the_call() -> None:
    sim = Sim()
    cas = result(await sim.send(sim.builder(V423).get_cas()))
    assert cas == {"cas": [{"name": CA, "keyType": "EC-P256", "certificate": CA_PEM, "sha256": "ab" * 32}]}
    assert sim.backend.counts == Counter({"getCAs": 1})


def _authkey_for(request: client.HttpRequest, client_id: str) -> str:
    headers = dict(request.headers)
    return hashlib.sha256((client_id + headers["ts"] + headers["txn"]).encode()).hexdigest()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AuthKey": "0" * 64}, "INVALID_AUTH_KEY"),
        ({"AuthKey": None}, "AUTH_REQUIRED"),
        ({"ts": None}, "AUTH_REQUIRED"),
        ({"txn": None}, "AUTH_REQUIRED"),
        ({"txn": "short"}, "AUTH_REQUIRED"),
        ({"txn": "has space in it"}, "AUTH_REQUIRED"),
        ({"Authorization": None}, "AUTH_REQUIRED"),
        ({"Authorization": "Bearer abc"}, "AUTH_REQUIRED"),
        ({"Authorization": "Basic !!!"}, "AUTH_REQUIRED"),
        ({"Authorization": "Basic " + base64.b64encode(b"app-423:wrong").decode()}, "INVALID_CREDENTIALS"),
        ({"Authorization": "Basic " + base64.b64encode(b"app-424:pw-424").decode()}, "INVALID_CREDENTIALS"),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "INVALID_CREDENTIALS"),
    ],
    ids=[
        "wrong-authkey",
        "no-authkey",
        "no-ts",
        "no-txn",
        "short-txn",
        "bad-txn",
        "no-authorization",
        "bearer",
        "basic-garbage",
        "wrong-password",
        "other-app-credentials",
        "basic-without-colon",
    ],
)
async def test_v423_refuses_bad_authentication(change: dict[str, str | None], expected: str) -> None:
    sim = Sim()
    response = await sim.send(with_headers(sim.builder(V423).get_cas(), **change))
    assert failure(response) == (401, expected)
    assert sim.backend.seen == set(), "a refused call consumes no txn"


async def test_v423_authkey_is_lower_case_hex_of_the_documented_formula() -> None:
    sim = Sim()
    request = sim.builder(V423).get_cas()
    headers = dict(request.headers)
    assert headers["AuthKey"] == _authkey_for(request, "client-id-423")
    upper = with_headers(request, AuthKey=headers["AuthKey"].upper())
    assert failure(await sim.send(upper)) == (401, "INVALID_AUTH_KEY")
    assert result(await sim.send(request))


async def test_v423_authkey_with_a_wrong_client_id_is_refused() -> None:
    sim = Sim()
    response = await sim.send(sim.builder(V423, client_id="not-the-client-id").get_cas())
    assert failure(response) == (401, "INVALID_AUTH_KEY")


@pytest.mark.parametrize(
    ("skew", "ok"),
    [
        (timedelta(seconds=-299), True),
        (timedelta(seconds=299), True),
        (timedelta(seconds=300), True),
        (timedelta(seconds=301), False),
        (timedelta(seconds=-301), False),
        (timedelta(days=-1), False),
    ],
    ids=["299s-behind", "299s-ahead", "300s-ahead", "301s-ahead", "301s-behind", "a-day-old"],
)
async def test_v423_ts_window(skew: timedelta, ok: bool) -> None:
    sim = Sim()
    request = sim.builder(V423).get_cas()
    sim.now = NOW + skew
    response = await sim.send(request)
    if ok:
        assert result(response)
    else:
        assert failure(response) == (401, "STALE_TIMESTAMP")


async def test_v423_ts_must_be_decimal_milliseconds() -> None:
    sim = Sim()
    request = sim.builder(V423).get_cas()
    ts = NOW.isoformat()
    request = with_headers(request, ts=ts, AuthKey=hashlib.sha256(("client-id-423" + ts + "id-000001").encode()).hexdigest())
    assert failure(await sim.send(request)) == (401, "STALE_TIMESTAMP")


async def test_v423_replayed_txn_is_refused_even_on_another_operation() -> None:
    sim = Sim()
    request = sim.builder(V423).get_cas()
    assert result(await sim.send(request))
    assert failure(await sim.send(request)) == (401, "REPLAYED_TXN")
    headers = dict(request.headers)
    profiles = replace(request, path=request.path.replace("getCAs", "getProfiles"))
    assert headers["txn"] == dict(profiles.headers)["txn"]
    assert failure(await sim.send(profiles)) == (401, "REPLAYED_TXN")


@pytest.mark.parametrize(
    ("app", "expected"),
    [(V424, "AUTH_REQUIRED"), (V4017, "INVALID_CREDENTIALS")],
    ids=["v424-app-with-authkey", "v4017-app"],
)
async def test_apps_of_another_dialect_are_refused(app: RegisteredApp, expected: str) -> None:
    sim = Sim()
    as_v423 = replace(app, dialect=Dialect.V4_2_3, client_id=app.client_id or "x")
    response = await sim.send(sim.builder(as_v423).get_cas())
    assert failure(response) == (401, expected)


async def test_unknown_app_code_is_refused_like_bad_credentials() -> None:
    sim = Sim()
    stranger = RegisteredApp("stranger", "pw", Dialect.V4_2_3, client_id="cid")
    assert failure(await sim.send(sim.builder(stranger).get_cas())) == (401, "INVALID_CREDENTIALS")


@pytest.mark.parametrize(
    ("app", "host", "ok"),
    [
        (V423, "127.0.0.1", True),
        (V423, "::1", True),
        (V423, "::ffff:127.0.0.1", True),
        (V423, "192.0.2.7", False),
        (REMOTE, "10.20.30.40", True),
        (REMOTE, "127.0.0.1", False),
        (V423, "testclient", False),
    ],
    ids=["v4-loopback", "v6-loopback", "v4-mapped", "other-host", "in-registered-network", "outside-network", "no-ip"],
)
async def test_source_address_check(app: RegisteredApp, host: str, ok: bool) -> None:
    sim = Sim()
    response = await sim.send(sim.builder(app).get_cas(), host=host)
    if ok:
        assert result(response)
    else:
        assert failure(response) == (403, "SOURCE_NOT_ALLOWED")


async def test_token_endpoint_checks_the_source_address() -> None:
    sim = Sim()
    response = await sim.send(sim.builder(V424).token(), host="192.0.2.7")
    assert failure(response) == (403, "SOURCE_NOT_ALLOWED")


# -- V4.2.4+: JWT -------------------------------------------------------------------------------------


async def test_token_claims_and_lifetime() -> None:
    sim = Sim()
    response = await sim.send(sim.builder(V424).token(validity_mins=20))
    body = result(response)
    assert list(body) == ["accessToken", "tokenType", "expiresIn"]
    assert (body["tokenType"], body["expiresIn"]) == ("Bearer", 1200)
    header = jwt.get_unverified_header(body["accessToken"])
    claims = jwt.decode(body["accessToken"], options={"verify_signature": False})
    assert header == {"alg": "HS256", "typ": "JWT"}
    iat = int(NOW.timestamp())
    assert claims == {"iss": "emCA", "aud": "emCAServices42", "sub": "app-424", "iat": iat, "exp": iat + 1200, "jti": "id-000001"}


@pytest.mark.parametrize(
    ("body_change", "expected"),
    [
        ({"password": "wrong"}, (401, "INVALID_CREDENTIALS")),
        ({"clientId": "wrong"}, (401, "INVALID_CREDENTIALS")),
        ({"username": "app-423", "password": "pw-423", "clientId": "client-id-423"}, (401, "INVALID_CREDENTIALS")),
        ({"username": "app-4017", "password": "pw-4017"}, (401, "INVALID_CREDENTIALS")),
        ({"username": "nobody"}, (401, "INVALID_CREDENTIALS")),
        ({"validityInMins": 0}, (400, "INVALID_PARAMETER")),
        ({"validityInMins": 61}, (400, "INVALID_PARAMETER")),
        ({"validityInMins": "15"}, (400, "INVALID_PARAMETER")),
        ({"validityInMins": True}, (400, "INVALID_PARAMETER")),
        ({"validityInMins": None}, (400, "INVALID_PARAMETER")),
        ({"password": None}, (400, "INVALID_PARAMETER")),
    ],
    ids=[
        "wrong-password",
        "wrong-client-id",
        "v423-app",
        "v4017-app",
        "unknown-user",
        "validity-0",
        "validity-61",
        "validity-string",
        "validity-bool",
        "validity-missing",
        "password-missing",
    ],
)
async def test_token_request_refusals(body_change: dict[str, Any], expected: tuple[int, str]) -> None:
    sim = Sim()
    request = sim.builder(V424).token()
    body = {**json.loads(request.body), **body_change}
    body = {key: value for key, value in body.items() if value is not None}
    response = await sim.send(replace(request, body=json.dumps(body).encode()))
    assert failure(response) == expected
    assert sim.backend.counts == Counter({"token": 1})


async def test_token_request_needs_a_fresh_nonce() -> None:
    sim = Sim()
    request = sim.builder(V424).token()
    assert failure(await sim.send(with_headers(request, X_Nonce=None))) == (401, "AUTH_REQUIRED")
    assert result(await sim.send(request))
    assert failure(await sim.send(request)) == (401, "REPLAYED_NONCE")


async def test_bearer_call_with_a_valid_token() -> None:
    sim = Sim()
    token = await sim.token()
    assert result(await sim.send(sim.builder(V424).get_profiles(token=token)))["profiles"][0]["issuingCa"] == CA


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"Authorization": None}, "AUTH_REQUIRED"),
        ({"X-Nonce": None}, "AUTH_REQUIRED"),
        ({"X-Nonce": "tiny"}, "AUTH_REQUIRED"),
        ({"Authorization": "Basic " + base64.b64encode(b"app-424:pw-424").decode()}, "AUTH_REQUIRED"),
        ({"Authorization": "Bearer not.a.jwt"}, "TOKEN_INVALID"),
    ],
    ids=["no-authorization", "no-nonce", "short-nonce", "basic-instead", "garbage-token"],
)
async def test_bearer_refusals(change: dict[str, str | None], expected: str) -> None:
    sim = Sim()
    token = await sim.token()
    response = await sim.send(with_headers(sim.builder(V424).get_cas(token=token), **change))
    assert failure(response) == (401, expected)


async def test_expiry_is_honoured_without_leeway() -> None:
    sim = Sim()
    token = await sim.token(validity_mins=1)
    sim.now = NOW + timedelta(seconds=59)
    assert result(await sim.send(sim.builder(V424).get_cas(token=token)))
    sim.now = NOW + timedelta(seconds=60)
    assert failure(await sim.send(sim.builder(V424).get_cas(token=token))) == (401, "TOKEN_EXPIRED")


async def test_token_from_another_simulator_secret_is_invalid() -> None:
    other = Sim(secret=b"o" * 32)
    token = await other.token()
    sim = Sim()
    assert failure(await sim.send(sim.builder(V424).get_cas(token=token))) == (401, "TOKEN_INVALID")


def _forged(claims: dict[str, Any], key: bytes, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _app_key(app: RegisteredApp, secret: bytes = SECRET) -> bytes:
    import hmac

    return hmac.new(
        secret, json.dumps([app.username, app.password, app.client_id], separators=(",", ":")).encode(), hashlib.sha256
    ).digest()


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": "app-other"}, "TOKEN_INVALID"),
        ({"aud": "somewhere-else"}, "TOKEN_INVALID"),
        ({"iss": "someone"}, "TOKEN_INVALID"),
        ({"exp": None}, "TOKEN_INVALID"),
        ({"iat": int(NOW.timestamp()) + 301}, "TOKEN_INVALID"),
        ({"exp": int(NOW.timestamp())}, "TOKEN_EXPIRED"),
        ({}, None),
    ],
    ids=["other-subject", "other-audience", "other-issuer", "no-exp", "iat-in-the-future", "expired", "well-formed"],
)
async def test_jwt_claims_are_checked(claims: dict[str, Any], expected: str | None) -> None:
    sim = Sim()
    iat = int(NOW.timestamp())
    base = {"iss": "emCA", "aud": "emCAServices42", "sub": "app-424", "iat": iat, "exp": iat + 600, "jti": "x"}
    merged = {key: value for key, value in {**base, **claims}.items() if value is not None}
    response = await sim.send(sim.builder(V424).get_cas(token=_forged(merged, _app_key(V424))))
    if expected is None:
        assert result(response)
    else:
        assert failure(response) == (401, expected)


async def test_unsigned_and_other_algorithm_tokens_are_refused() -> None:
    sim = Sim()
    iat = int(NOW.timestamp())
    claims = {"iss": "emCA", "aud": "emCAServices42", "sub": "app-424", "iat": iat, "exp": iat + 600}
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for token in (f"{header}.{payload}.", _forged(claims, _app_key(V424) * 2, "HS512")):
        assert failure(await sim.send(sim.builder(V424).get_cas(token=token))) == (401, "TOKEN_INVALID")


async def test_a_token_of_one_app_does_not_open_another() -> None:
    backend = FakeBackend()
    other = RegisteredApp("app-424b", "pw-b", Dialect.V4_2_4, client_id="client-id-b")
    backend.apps[other.username] = other
    sim = Sim(backend)
    token = await sim.token(other)
    assert failure(await sim.send(sim.builder(V424).get_cas(token=token))) == (401, "TOKEN_INVALID")


async def test_rotating_the_password_invalidates_issued_tokens() -> None:
    sim = Sim()
    token = await sim.token()
    sim.backend.apps[V424.username] = replace(V424, password="rotated")
    assert failure(await sim.send(sim.builder(V424).get_cas(token=token))) == (401, "TOKEN_INVALID")
    assert failure(await sim.send(sim.builder(V424).token())) == (401, "INVALID_CREDENTIALS")


async def test_nonce_is_never_reused_across_calls_or_with_the_token_call() -> None:
    sim = Sim()
    token = await sim.token()  # consumed nonce id-000001
    request = sim.builder(V424).get_cas(token=token)
    assert result(await sim.send(request))
    assert failure(await sim.send(request)) == (401, "REPLAYED_NONCE")
    reused = with_headers(sim.builder(V424).get_cas(token=token), X_Nonce="id-000001")
    assert failure(await sim.send(reused)) == (401, "REPLAYED_NONCE")


# -- operations ---------------------------------------------------------------------------------------


@pytest.fixture(params=[V423, V424], ids=["V4.2.3", "V4.2.4+"])
def call(request: pytest.FixtureRequest) -> Any:
    """``await call(sim, "get_cas", **kwargs)``: one authenticated call in either version."""
    app: RegisteredApp = request.param

    async def run(sim: Sim, operation: str, **kwargs: Any) -> httpx.Response:
        if app.dialect == Dialect.V4_2_4:
            kwargs["token"] = await sim.token()
        return await sim.send(getattr(sim.builder(app), operation)(**kwargs))

    return run


async def test_get_profiles_names_the_issuing_ca(call: Any) -> None:
    sim = Sim()
    profiles = result(await call(sim, "get_profiles"))["profiles"]
    assert profiles == [
        {
            "name": "TLS Server",
            "profileId": "1001",
            "issuingCa": CA,
            "validityDays": 90,
            "keyTypes": ["EC-P256"],
            "manualApproval": False,
        },
        {
            "name": "TLS Manual",
            "profileId": "1004",
            "issuingCa": CA,
            "validityDays": 30,
            "keyTypes": ["EC-P256", "RSA-2048"],
            "manualApproval": True,
        },
    ]


async def test_create_issue_and_fetch_by_serial(call: Any) -> None:
    sim = Sim()
    created = result(
        await call(
            sim, "create_certificates", profile_name="TLS Server", subscriber_id="SUB-1", csrs=[CSR], application_id="iss-1"
        )
    )
    [record] = created["certificates"]
    assert record["status"] == "issued" and record["chain"] == [CA_PEM, ROOT_PEM] and record["applicationId"] == "iss-1"
    fetched = result(await call(sim, "get_certificate", serial=record["serialNumber"].upper()))
    assert fetched == record
    chain = result(await call(sim, "get_certificate_chain", serial=record["serialNumber"]))
    assert chain == {"chain": [CA_PEM, ROOT_PEM]}


async def test_same_csr_twice_gives_two_certificates_no_dedupe(call: Any) -> None:
    sim = Sim()
    serials = []
    for _ in range(2):
        created = result(
            await call(
                sim,
                "create_certificates",
                profile_name="TLS Server",
                subscriber_id="SUB-1",
                csrs=[CSR],
                application_id="iss-same",
            )
        )
        serials.append(created["certificates"][0]["serialNumber"])
    assert serials[0] != serials[1]
    assert [c["dedupe"] for c in sim.backend.issue_calls] == [False, False]
    assert [c["application_id"] for c in sim.backend.issue_calls] == ["iss-same", "iss-same"]


async def test_several_csrs_in_one_call(call: Any) -> None:
    sim = Sim()
    created = result(
        await call(sim, "create_certificates", profile_name="TLS Server", subscriber_id="SUB-1", csrs=[CSR, BAD_CSR, CSR])
    )
    statuses = [(r["status"], r.get("errorCode")) for r in created["certificates"]]
    assert statuses == [("issued", None), ("rejected", "CSR_REJECTED"), ("issued", None)]
    assert created["certificates"][1]["errorMessage"] == "CSR rejected: key type RSA-1024 not allowed"


async def test_each_csr_of_a_call_keeps_its_own_application_id(call: Any) -> None:
    sim = Sim()
    created = result(
        await call(sim, "create_certificates", profile_name="TLS Server", subscriber_id="SUB-1", csrs=[CSR, BAD_CSR, CSR],
                   application_ids=["iss-1", "iss-2", None])
    )
    records = created["certificates"]
    assert [(r["status"], r.get("applicationId")) for r in records] == [("issued", "iss-1"), ("rejected", None),
                                                                        ("issued", None)]
    assert [c["application_id"] for c in sim.backend.issue_calls] == ["iss-1", "iss-2", None]


async def test_a_call_whose_every_csr_is_refused_fails_422(call: Any) -> None:
    sim = Sim()
    response = await call(sim, "create_certificates", profile_name="TLS Server", subscriber_id="SUB-1", csrs=[BAD_CSR, BAD_CSR])
    assert failure(response) == (422, "CSR_REJECTED")
    assert response.json()["errorMessage"] == "CSR rejected: key type RSA-1024 not allowed"


@pytest.mark.parametrize(
    ("profile", "subscriber", "expected"),
    [
        ("No Such", "SUB-1", "UNKNOWN_PROFILE"),
        ("TLS Server", "SUB-404", "UNKNOWN_SUBSCRIBER"),
        ("tls server", "SUB-1", "UNKNOWN_PROFILE"),
    ],
    ids=["unknown-profile", "unknown-subscriber", "profile-name-is-case-sensitive"],
)
async def test_unknown_profile_or_subscriber_issues_nothing(call: Any, profile: str, subscriber: str, expected: str) -> None:
    sim = Sim()
    response = await call(sim, "create_certificates", profile_name=profile, subscriber_id=subscriber, csrs=[CSR, CSR])
    assert failure(response) == (422, expected)
    assert sim.backend.issue_calls == []


async def test_pending_flow_until_issued(call: Any) -> None:
    sim = Sim()
    created = result(
        await call(
            sim, "create_certificates", profile_name="TLS Manual", subscriber_id="SUB-1", csrs=[CSR], application_id="iss-9"
        )
    )
    [record] = created["certificates"]
    assert record == {
        "status": "pending",
        "requestId": "REQ-1",
        "profileName": "TLS Manual",
        "subscriberId": "SUB-1",
        "applicationId": "iss-9",
    }
    assert result(await call(sim, "get_certificate", request_id="REQ-1"))["status"] == "pending"
    issued = sim.backend.approve("REQ-1")
    polled = result(await call(sim, "get_certificate", request_id="REQ-1"))
    assert (polled["status"], polled["requestId"], polled["serialNumber"]) == ("issued", "REQ-1", issued.serial)


async def test_pending_flow_until_rejected(call: Any) -> None:
    sim = Sim()
    result(await call(sim, "create_certificates", profile_name="TLS Manual", subscriber_id="SUB-1", csrs=[CSR]))
    sim.backend.reject("REQ-1", "not approved by the RA")
    polled = result(await call(sim, "get_certificate", request_id="REQ-1"))
    assert polled == {
        "status": "rejected",
        "requestId": "REQ-1",
        "errorCode": "REQUEST_REJECTED",
        "errorMessage": "not approved by the RA",
    }


async def test_unknown_request_id_and_serial_are_404(call: Any) -> None:
    sim = Sim()
    assert failure(await call(sim, "get_certificate", request_id="REQ-404")) == (404, "NOT_FOUND")
    assert failure(await call(sim, "get_certificate", serial="abcdef")) == (404, "NOT_FOUND")


async def test_chain_and_crl_by_ca_name(call: Any) -> None:
    sim = Sim()
    assert result(await call(sim, "get_certificate_chain", ca_name=CA)) == {"chain": [CA_PEM, ROOT_PEM]}
    crl = result(await call(sim, "get_crl", ca_name=CA))
    assert crl == {"caName": CA, "crl": base64.b64encode(CRL_DER).decode()}
    assert failure(await call(sim, "get_crl", ca_name=CA.lower())) == (404, "UNKNOWN_CA")
    assert failure(await call(sim, "get_certificate_chain", ca_name="Nope")) == (404, "UNKNOWN_CA")


async def test_revoke_then_already_revoked(call: Any) -> None:
    sim = Sim()
    serial = sim.backend._mint("TLS Server", "SUB-1", None).serial
    sim.now = sim.backend.now = NOW + timedelta(minutes=5)
    revoked = result(await call(sim, "revoke", serial=serial, reason="cessationOfOperation", remarks="decommissioned"))
    assert (revoked["status"], revoked["revocationReason"], revoked["revokedAt"]) == (
        "revoked",
        "cessationOfOperation",
        "2026-05-04T12:05:00Z",
    )
    assert failure(await call(sim, "revoke", serial=serial, reason="keyCompromise")) == (409, "ALREADY_REVOKED")
    assert result(await call(sim, "get_certificate", serial=serial))["status"] == "revoked"


async def _raw_v423(sim: Sim, operation: str, body: object) -> httpx.Response:
    request = sim.builder(V423).get_crl(ca_name="x")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await sim.send(replace(request, path=request.path.replace("getCrl", operation), body=raw))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("keyCompromise", "keyCompromise"),
        ("KEYCOMPROMISE", "keyCompromise"),
        (1, "keyCompromise"),
        ("1", "keyCompromise"),
        (0, "unspecified"),
        (2, "cACompromise"),
        (3, "affiliationChanged"),
        (4, "superseded"),
        (5, "cessationOfOperation"),
        (9, "privilegeWithdrawn"),
        (10, "aACompromise"),
        ("aACompromise", "aACompromise"),
        (6, None),
        ("certificateHold", None),
        (8, None),
        ("removeFromCRL", None),
        (7, None),
        (True, None),
        ("", None),
        (1.0, None),
        (None, None),
    ],
    ids=lambda value: repr(value),
)
async def test_revoke_reasons_by_name_or_code(reason: object, expected: str | None) -> None:
    sim = Sim()
    serial = sim.backend._mint("TLS Server", "SUB-1", None).serial
    response = await _raw_v423(sim, "revoke", {"serialNumber": serial, "reason": reason})
    if expected is None:
        assert failure(response) == (400, "INVALID_PARAMETER")
        assert sim.backend.certs[serial].revoked_at is None
    else:
        assert result(response)["revocationReason"] == expected


@pytest.mark.parametrize(
    ("operation", "body", "field"),
    [
        ("createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1"}, "csrs"),
        ("createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": []}, "csrs"),
        ("createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR] * 51}, "csrs"),
        ("createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR, 7]}, "csrs"),
        ("createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": CSR}, "csrs"),
        ("createCertificates", {"subscriberId": "SUB-1", "csrs": [CSR]}, "profileName"),
        ("createCertificates", {"profileName": "TLS Server", "csrs": [CSR]}, "subscriberId"),
        (
            "createCertificates",
            {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR], "applicationId": 5},
            "applicationId",
        ),
        (
            "createCertificates",
            {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR], "applicationId": "a",
             "applicationIds": ["b"]},
            "applicationId and applicationIds: give one",
        ),
        (
            "createCertificates",
            {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR, CSR], "applicationIds": ["b"]},
            "applicationIds: one per CSR",
        ),
        (
            "createCertificates",
            {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR], "applicationIds": "b"},
            "applicationIds: one per CSR",
        ),
        (
            "createCertificates",
            {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR, CSR], "applicationIds": ["b", ""]},
            "applicationIds",
        ),
        ("getCertificate", {}, "exactly one of serialNumber, requestId"),
        ("getCertificate", {"serialNumber": "ab", "requestId": "REQ-1"}, "exactly one of serialNumber, requestId"),
        ("getCertificate", {"serialNumber": "xyz"}, "serialNumber"),
        ("getCertificateChain", {}, "exactly one of caName, serialNumber"),
        ("revoke", {"serialNumber": "ab"}, "reason"),
        ("revoke", {"reason": "superseded"}, "serialNumber"),
        ("revoke", {"serialNumber": "ab", "reason": "superseded", "remarks": 3}, "remarks"),
        ("getCrl", {}, "caName"),
        ("getCrl", b"not json", "body is not JSON"),
        ("getCrl", b"[1,2]", "body is not a JSON object"),
        ("getCrl", b"\xff\xfe", "body is not JSON"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_invalid_parameters_are_400_with_the_field(operation: str, body: object, field: str) -> None:
    sim = Sim()
    response = await _raw_v423(sim, operation, body)
    assert failure(response) == (400, "INVALID_PARAMETER")
    assert response.json()["errorMessage"] == f"Invalid parameter: {field}"
    assert sim.backend.issue_calls == []


async def test_unknown_request_fields_are_ignored() -> None:
    sim = Sim()
    assert result(await _raw_v423(sim, "getCrl", {"caName": CA, "format": "PEM", "extra": [1]}))["caName"] == CA


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        (SimErrorKind.INTERNAL, 500, "INTERNAL_ERROR", "Internal server error"),
        (SimErrorKind.UNKNOWN_PROFILE, 422, "UNKNOWN_PROFILE", "Invalid Certificate Profile name"),
        (SimErrorKind.UNKNOWN_SUBSCRIBER, 422, "UNKNOWN_SUBSCRIBER", "Invalid subscriber id"),
        (SimErrorKind.CSR_REJECTED, 422, "CSR_REJECTED", "CSR rejected: the detail"),
        (SimErrorKind.MISSING_PARAMETER, 400, "INVALID_PARAMETER", "Invalid parameter: the detail"),
        (SimErrorKind.NOT_FOUND, 404, "NOT_FOUND", "Certificate or request not found"),
        (SimErrorKind.UNKNOWN_CA, 404, "UNKNOWN_CA", "CA not found"),
        (SimErrorKind.BAD_CREDENTIALS, 401, "INVALID_CREDENTIALS", "Invalid credentials"),
        (SimErrorKind.SOURCE_NOT_ALLOWED, 403, "SOURCE_NOT_ALLOWED", "Request from an unregistered address"),
    ],
    ids=lambda value: str(value),
)
async def test_backend_errors_map_to_documented_codes(kind: SimErrorKind, status: int, code: str, message: str) -> None:
    sim = Sim()
    sim.backend.fail_with = SimError(kind, "the detail")
    response = await _raw_v423(sim, "createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR]})
    assert response.status_code == status
    assert response.json() == {"status": "failure", "errorCode": code, "errorMessage": message}
    assert response.headers["content-type"] == "application/json"


def test_every_sim_error_kind_has_a_documented_code() -> None:
    assert set(server.SIM_ERRORS) == set(SimErrorKind)
    assert set(server.SIM_ERRORS.values()) <= set(server.ERRORS)
    assert set(server.ERRORS) <= set(client.CATEGORIES), "the connector classifies every code the simulator sends"


async def test_an_internal_error_mid_batch_aborts_the_call_but_keeps_earlier_certificates() -> None:
    sim = Sim()
    calls = 0
    original = sim.backend.issue

    def flaky(**kwargs: Any) -> Issued | Pending:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SimError(SimErrorKind.INTERNAL, "disk full")
        return original(**kwargs)

    sim.backend.issue = flaky  # type: ignore[method-assign]
    response = await _raw_v423(
        sim, "createCertificates", {"profileName": "TLS Server", "subscriberId": "SUB-1", "csrs": [CSR, CSR, CSR]}
    )
    assert failure(response) == (500, "INTERNAL_ERROR")
    assert len(sim.backend.certs) == 1


async def test_every_call_is_counted_once_by_operation_even_when_refused() -> None:
    sim = Sim()
    builder = sim.builder(V423)
    await sim.send(builder.get_cas())
    await sim.send(builder.get_profiles())
    await sim.send(with_headers(builder.get_crl(ca_name=CA), AuthKey="0" * 64))
    await sim.send(builder.get_certificate(serial="ab"))
    await sim.token()
    assert sim.backend.counts == Counter({"getCAs": 1, "getProfiles": 1, "getCrl": 1, "getCertificate": 1, "token": 1})


async def test_wrong_http_method_is_not_served() -> None:
    sim = Sim()
    request = sim.builder(V423).get_cas()
    assert (await sim.send(replace(request, method="POST"))).status_code == 405
    assert (await sim.send(replace(request, path="/emCAServices/rest/getCAs/app-423"))).status_code == 404


async def test_without_a_secret_each_simulator_process_signs_with_its_own() -> None:
    first, second = Sim(secret=None), Sim(secret=None)
    token = await first.token()
    assert result(await first.send(first.builder(V424).get_cas(token=token)))
    assert failure(await second.send(second.builder(V424).get_cas(token=token))) == (401, "TOKEN_INVALID")

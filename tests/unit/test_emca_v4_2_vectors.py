"""Both sides of the emCA 4.2.x dialect against the committed golden vectors.

The connector's dialect must build exactly each vector's request bytes and parse
its response into its ``expected`` value; the simulator's dialect, on a fake CA
holding ``material.json``, must accept each vector's request, make the vector's
backend calls and answer exactly its response bytes. The files are the truth
(tests/vectors/emca/make_v4_2.py regenerates them, identically).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from emca_sim.backend import (
    CaInfo,
    Dialect,
    Issued,
    Pending,
    ProfileInfo,
    RegisteredApp,
    SimError,
    SimErrorKind,
)
from emca_sim.dialects import v4_2 as server
from services.common.emca.dialects import v4_2 as client

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "emca" / "v4_2"
MATERIAL: dict[str, Any] = json.loads((VECTOR_DIR / "material.json").read_text())
CASES: dict[str, dict[str, Any]] = {path.stem: json.loads(path.read_text()) for path in sorted(VECTOR_DIR.glob("v4_2_*.json"))}
PARSERS = {
    "get_cas": client.parse_cas,
    "get_profiles": client.parse_profiles,
    "create_certificates": client.parse_create_certificates,
    "get_certificate": client.parse_certificate,
    "get_certificate_chain": client.parse_chain,
    "revoke": client.parse_revoke,
    "get_crl": client.parse_crl,
}


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _issued(record: dict[str, Any]) -> Issued:
    return Issued(
        serial=record["serial"],
        certificate_pem=record["certificate_pem"],
        chain_pem=tuple(record["chain_pem"]),
        profile=record["profile"],
        subscriber_id=record["subscriber_id"],
        application_id=record["application_id"],
        issued_at=_time(record["issued_at"]),  # type: ignore[arg-type]
        revoked_at=_time(record["revoked_at"]),
        revocation_reason=record["revocation_reason"],
    )


@dataclass
class VectorBackend:
    """A SimBackend holding material.json's fixed state; records the calls that change or fetch state."""

    now: datetime
    seen_ids: set[tuple[str, str]] = field(default_factory=set)
    calls: list[list[Any]] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.apps = {
            a["username"]: RegisteredApp(
                a["username"], a["password"], Dialect(a["dialect"]), tuple(a["source_addresses"]), client_id=a["client_id"]
            )
            for a in MATERIAL["applications"]
        }
        self.certs = {c["serial"]: _issued(c) for c in MATERIAL["certificates"].values()}
        self.csr_names = {pem: name for name, pem in MATERIAL["csrs"].items()}

    def application(self, username: str) -> RegisteredApp | None:
        return self.apps.get(username)

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None:
        return next((a for a in self.apps.values() if a.client_id == client_id), None)

    def remember_txn(self, username: str, txn: str) -> bool:
        self.calls.append(["remember_txn", {"username": username, "txn": txn}])
        if (username, txn) in self.seen_ids:
            return False
        self.seen_ids.add((username, txn))
        return True

    def count_request(self, method: str) -> None:
        self.counted.append(method)

    def profiles(self) -> list[ProfileInfo]:
        return [
            ProfileInfo(
                p["name"], p["profile_id"], p["issuing_ca"], p["validity_days"], tuple(p["key_types"]), p["manual_approval"]
            )
            for p in MATERIAL["profiles"]
        ]

    def profile(self, name: str) -> ProfileInfo | None:
        return next((p for p in self.profiles() if p.name == name), None)

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None:
        return next((p for p in self.profiles() if p.profile_id == profile_id), None)

    def cas(self) -> list[CaInfo]:
        return [CaInfo(c["name"], c["key_type"], c["certificate_pem"], c["sha256"]) for c in MATERIAL["cas"]]

    def subscriber_exists(self, subscriber_id: str) -> bool:
        return subscriber_id in MATERIAL["subscribers"]

    def issue(
        self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None, dedupe_by_application_id: bool
    ) -> Issued | Pending:
        name = self.csr_names[csr_pem]
        self.calls.append(
            [
                "issue",
                {
                    "profile": profile,
                    "subscriber_id": subscriber_id,
                    "csr": name,
                    "application_id": application_id,
                    "dedupe_by_application_id": dedupe_by_application_id,
                },
            ]
        )
        outcome = MATERIAL["issue"][name]
        if "rejected" in outcome:
            raise SimError(SimErrorKind.CSR_REJECTED, outcome["rejected"])
        if "pending" in outcome:
            return self._pending(outcome["pending"])
        return _issued(MATERIAL["certificates"][outcome["certificate"]])

    def _pending(self, request_id: str) -> Pending:
        record = MATERIAL["pending"].get(request_id)
        if record is None:
            raise SimError(SimErrorKind.NOT_FOUND, request_id)
        issued = _issued(MATERIAL["certificates"][record["issued"]]) if record["issued"] else None
        return Pending(
            record["request_id"],
            record["profile"],
            record["subscriber_id"],
            record["application_id"],
            record["state"],
            issued,
            record["rejection"],
        )

    def pending(self, request_id: str) -> Pending:
        self.calls.append(["pending", {"request_id": request_id}])
        return self._pending(request_id)

    def certificate(self, serial: str) -> Issued:
        self.calls.append(["certificate", {"serial": serial}])
        if serial not in self.certs:
            raise SimError(SimErrorKind.NOT_FOUND, serial)
        return self.certs[serial]

    def revoke(self, serial: str, reason: str) -> Issued:
        self.calls.append(["revoke", {"serial": serial, "reason": reason}])
        issued = self.certs.get(serial)
        if issued is None:
            raise SimError(SimErrorKind.NOT_FOUND, serial)
        if issued.revoked_at is not None:
            raise SimError(SimErrorKind.ALREADY_REVOKED, serial)
        self.certs[serial] = replace(issued, revoked_at=self.now, revocation_reason=reason)
        return self.certs[serial]

    def _ca(self, ca_name: str) -> dict[str, Any]:
        ca = next((c for c in MATERIAL["cas"] if c["name"] == ca_name), None)
        if ca is None:
            raise SimError(SimErrorKind.UNKNOWN_CA, ca_name)
        return ca

    def crl_der(self, ca_name: str) -> bytes:
        self.calls.append(["crl_der", {"ca_name": ca_name}])
        return base64.b64decode(self._ca(ca_name)["crl_der_base64"])

    def chain(self, ca_name: str) -> tuple[str, ...]:
        self.calls.append(["chain", {"ca_name": ca_name}])
        return tuple(self._ca(ca_name)["chain_pem"])


def jsonable(value: object) -> object:
    """A parsed client result in the vectors' ``expected`` notation."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"type": "bytes", "base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (tuple, list)):
        return [jsonable(item) for item in value]
    return value


def builder_for(case: dict[str, Any]) -> client.RequestBuilder:
    creds = case["credentials"]
    now = _time(case["client"]["now"])
    assert now is not None
    ids: Iterator[str] = iter([case["client"]["id"]])
    return client.RequestBuilder(
        case["version"],
        client.Credentials(creds["app_code"], creds["password"], creds["client_id"]),
        clock=lambda: now,
        new_id=lambda: next(ids),
    )


def build(case: dict[str, Any]) -> client.HttpRequest:
    return getattr(builder_for(case), case["call"]["method"])(**case["call"]["kwargs"])


def vector_request(case: dict[str, Any]) -> client.HttpRequest:
    request = case["request"]
    return client.HttpRequest(
        request["method"],
        request["path"],
        tuple((name, value) for name, value in request["headers"]),
        request["body"].encode("utf-8"),
    )


def vector_response(case: dict[str, Any]) -> client.HttpResponse:
    response = case["response"]
    return client.HttpResponse(
        response["status"], response["body"].encode("utf-8"), (("Content-Type", response["content_type"]),)
    )


async def send(case: dict[str, Any], request: client.HttpRequest) -> tuple[httpx.Response, VectorBackend]:
    """Run ``request`` through the simulator's dialect, set up as the case says."""
    now = _time(case["server"]["now"])
    assert now is not None
    backend = VectorBackend(now, {(case["credentials"]["app_code"], seen) for seen in case["server"]["seen_ids"]})
    app = Starlette(routes=server.routes(backend, jwt_secret=bytes.fromhex(MATERIAL["jwt_secret_hex"]), clock=lambda: now))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50123))
    async with httpx.AsyncClient(transport=transport, base_url="https://emca.test") as http:
        response = await http.request(request.method, request.path, headers=list(request.headers), content=request.body)
    return response, backend


@pytest.mark.parametrize("name", sorted(CASES))
def test_client_builds_exactly_the_vector_request(name: str) -> None:
    case = CASES[name]
    built = build(case)
    expected = vector_request(case)
    assert (built.method, built.path) == (expected.method, expected.path)
    assert built.headers == expected.headers
    assert built.body == expected.body


@pytest.mark.parametrize("name", sorted(CASES))
def test_client_parses_the_vector_response(name: str) -> None:
    case = CASES[name]
    response = vector_response(case)
    method = case["call"]["method"]
    expected = case["expected"]
    if "failure" in expected:
        with pytest.raises(client.EmcaFailure) as caught:
            if method == "token":
                client.parse_token(response, requested_at=_time(case["client"]["now"]))  # type: ignore[arg-type]
            else:
                PARSERS[method](response)
        failure = caught.value
        assert {
            "category": str(failure.category),
            "code": failure.code,
            "message": failure.message,
            "http_status": failure.http_status,
        } == expected["failure"]
        return
    if method == "token":
        result: object = client.parse_token(response, requested_at=_time(case["client"]["now"]))  # type: ignore[arg-type]
    else:
        result = PARSERS[method](response)
    assert jsonable(result) == expected["result"]


@pytest.mark.parametrize("name", sorted(CASES))
async def test_server_answers_exactly_the_vector_response(name: str) -> None:
    case = CASES[name]
    response, backend = await send(case, vector_request(case))
    assert response.status_code == case["response"]["status"]
    assert response.headers["content-type"] == case["response"]["content_type"]
    assert response.content == case["response"]["body"].encode("utf-8")
    assert backend.calls == case["backend_calls"]
    assert len(backend.counted) == 1


async def test_client_request_round_trips_through_the_server() -> None:
    """The chain end to end: the client's own bytes, the server's answer, the client's parse."""
    case = CASES["v4_2_3-03-createCertificates-issued"]
    response, _ = await send(case, build(case))
    parsed = client.parse_create_certificates(client.HttpResponse(response.status_code, response.content))
    assert jsonable(parsed) == case["expected"]["result"]


def _flip(text: str, index: int) -> str:
    char = text[index]
    return text[:index] + ("B" if char == "A" else "A") + text[index + 1 :]


SUCCESSFUL = sorted(name for name, case in CASES.items() if case["response"]["status"] == 200)


@pytest.mark.parametrize("name", SUCCESSFUL)
async def test_a_changed_byte_in_the_authentication_is_refused(name: str) -> None:
    case = CASES[name]
    request = vector_request(case)
    headers = dict(request.headers)
    if "AuthKey" in headers:
        headers["AuthKey"] = _flip(headers["AuthKey"], 17)
    elif "Authorization" in headers:
        token = headers["Authorization"]
        headers["Authorization"] = _flip(token, len(token) - 5)  # inside the JWT signature
    else:  # the token call: a changed byte in the ClientID
        body = request.body.decode()
        request = replace(request, body=body.replace('"clientId":"CID', '"clientId":"CIX').encode())
    tampered = replace(request, headers=tuple(headers.items()))
    response, backend = await send(case, tampered)
    assert response.status_code == 401
    assert not any(call[0] not in ("remember_txn",) for call in backend.calls), "nothing may happen"


@pytest.mark.parametrize("name", SUCCESSFUL)
def test_a_changed_byte_in_the_vector_fails_the_comparison(name: str) -> None:
    case = CASES[name]
    expected = vector_request(case)
    changed = (
        replace(expected, body=_flip(expected.body.decode(), len(expected.body) // 2).encode())
        if expected.body
        else replace(expected, headers=((expected.headers[0][0], _flip(expected.headers[0][1], 10)), *expected.headers[1:]))
    )
    assert build(case) != changed


def test_the_generator_reproduces_the_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("make_v4_2", VECTOR_DIR.parent / "make_v4_2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated: dict[str, str] = module.build()
    committed = {path.name: path.read_text(encoding="ascii") for path in VECTOR_DIR.glob("*.json")}
    assert generated.keys() == committed.keys()
    for name, text in generated.items():
        assert text == committed[name], f"{name} differs from what make_v4_2.py generates"


def test_vectors_cover_every_operation_on_both_versions() -> None:
    covered = {(case["version"], case["call"]["method"]) for case in CASES.values() if case["response"]["status"] == 200}
    assert {("V4.2.3", op) for op in PARSERS} <= covered
    assert {("V4.2.4+", op) for op in (set(PARSERS) - {"get_profiles"}) | {"token"}} <= covered

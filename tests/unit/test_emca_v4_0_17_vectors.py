"""emCA V4.0.17: both sides of the wire format against the committed golden vectors.

The connector's dialect module must produce exactly the vector request bytes and
parse the vector responses into the expected results; the simulator's dialect
module must accept the vector requests and produce exactly the vector response
bytes. A change on one side alone fails here; an altered byte anywhere in a
request is refused.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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
from emca_sim.dialects import v4_0_17 as server
from services.common.emca.dialects import v4_0_17 as client

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors" / "emca" / "v4_0_17"
KEYS = json.loads((VECTORS_DIR / "keys.json").read_text(encoding="utf-8"))
METHOD_VECTORS = [
    "create_certificate",
    "create_certificate_p7b",
    "get_certificate_by_request_id",
    "get_certificate",
    "revoke",
    "get_certificate_profile_list",
    "get_profile_info",
]
CERT_NAMES = {"leaf": "leaf_certificate_pem", "issuing_ca": "issuing_ca_certificate_pem", "root_ca": "root_ca_certificate_pem"}
AES_KEY = base64.b64decode(KEYS["aes_key_b64"])


def load_vector(name: str) -> dict:
    return json.loads((VECTORS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def cert_pem(name: str) -> str:
    return KEYS[CERT_NAMES[name]]


def cert_name(pem: str) -> str:
    """The vector name of a PEM certificate (compared by DER, so PEM line layout does not matter)."""
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    for name in CERT_NAMES:
        if x509.load_pem_x509_certificate(cert_pem(name).encode()).public_bytes(serialization.Encoding.DER) == der:
            return name
    raise AssertionError("a certificate that is not in the vectors")


def vector_app(**changes: object) -> RegisteredApp:
    values: dict = {
        "username": KEYS["username"],
        "password": KEYS["password"],
        "dialect": Dialect.V4_0_17,
        "source_addresses": ("127.0.0.1",),
        "aes_key": AES_KEY,
        "signer_certificate_pem": KEYS["signer_certificate_pem"],
    }
    values.update(changes)
    return RegisteredApp(**values)


# ---------------------------------------------------------------- a fake CA core


@dataclass
class FakeBackend:
    """A `SimBackend` that answers what it is told and records what it was asked.

    Each ``*_result`` is the value to return, a `SimError`/exception to raise,
    or a callable computing either from the call's arguments.
    """

    apps: dict[str, RegisteredApp] = field(default_factory=dict)
    profile_infos: list[ProfileInfo] = field(default_factory=list)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    issue_result: object = None
    pending_result: object = None
    certificate_result: object = None
    revoke_result: object = None
    calls: list[tuple[str, dict]] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)

    def _answer(self, name: str, result: object, **kwargs: object) -> object:
        self.calls.append((name, kwargs))
        if callable(result) and not isinstance(result, type):
            result = result(**kwargs)
        if isinstance(result, BaseException):
            raise result
        if result is None:
            raise AssertionError(f"the fake backend was not told how to answer {name}")
        return result

    def application(self, username: str) -> RegisteredApp | None:
        return self.apps.get(username)

    def application_by_client_id(self, client_id: str) -> RegisteredApp | None:
        return None

    def remember_txn(self, username: str, txn: str) -> bool:
        return True

    def count_request(self, method: str) -> None:
        self.requests[method] = self.requests.get(method, 0) + 1

    def profiles(self) -> list[ProfileInfo]:
        self.calls.append(("profiles", {}))
        return list(self.profile_infos)

    def profile(self, name: str) -> ProfileInfo | None:
        self.calls.append(("profile", {"name": name}))
        return next((p for p in self.profile_infos if p.name == name), None)

    def profile_by_id(self, profile_id: str) -> ProfileInfo | None:
        return next((p for p in self.profile_infos if p.profile_id == profile_id), None)

    def cas(self) -> list[CaInfo]:
        return []

    def subscriber_exists(self, subscriber_id: str) -> bool:
        return True

    def issue(
        self, *, profile: str, subscriber_id: str, csr_pem: str, application_id: str | None, dedupe_by_application_id: bool
    ) -> Issued | Pending:
        return self._answer(  # type: ignore[return-value]
            "issue",
            self.issue_result,
            profile=profile,
            subscriber_id=subscriber_id,
            csr_pem=csr_pem,
            application_id=application_id,
            dedupe_by_application_id=dedupe_by_application_id,
        )

    def pending(self, request_id: str) -> Pending:
        return self._answer("pending", self.pending_result, request_id=request_id)  # type: ignore[return-value]

    def certificate(self, serial: str) -> Issued:
        return self._answer("certificate", self.certificate_result, serial=serial)  # type: ignore[return-value]

    def revoke(self, serial: str, reason: str) -> Issued:
        return self._answer("revoke", self.revoke_result, serial=serial, reason=reason)  # type: ignore[return-value]

    def crl_der(self, ca_name: str) -> bytes:
        raise SimError(SimErrorKind.UNKNOWN_CA, ca_name)

    def chain(self, ca_name: str) -> tuple[str, ...]:
        self.calls.append(("chain", {"ca_name": ca_name}))
        if ca_name not in self.chains:
            raise SimError(SimErrorKind.UNKNOWN_CA, ca_name)
        return self.chains[ca_name]


def issued_from(spec: dict) -> Issued:
    return Issued(
        serial=spec["serial"],
        certificate_pem=cert_pem(spec["certificate"]),
        chain_pem=tuple(cert_pem(n) for n in spec["chain"]),
        profile=spec["profile"],
        subscriber_id=spec["subscriber_id"],
        application_id=spec["application_id"],
        issued_at=datetime(2025, 6, 1, 12, tzinfo=UTC),
        revoked_at=datetime.fromisoformat(spec["revoked_at"].replace("Z", "+00:00")) if spec.get("revoked_at") else None,
        revocation_reason=spec.get("revocation_reason"),
    )


def pending_from(spec: dict) -> Pending:
    return Pending(
        request_id=spec["request_id"],
        profile=spec["profile"],
        subscriber_id=spec["subscriber_id"],
        application_id=spec["application_id"],
        state=spec["state"],
        issued=issued_from(spec["issued"]) if spec.get("issued") else None,
        rejection=spec.get("rejection"),
    )


def _raises_or(spec: dict, build) -> object:
    if "raises" in spec:
        return SimError(SimErrorKind(spec["raises"]["kind"]), spec["raises"]["detail"])
    return build(spec)


def backend_for(stanza: dict) -> FakeBackend:
    backend = FakeBackend(apps={KEYS["username"]: vector_app()})
    if "issue" in stanza:
        spec = stanza["issue"]
        backend.issue_result = _raises_or(
            spec, lambda s: issued_from(s["issued"]) if "issued" in s else pending_from(s["pending"])
        )
    if "pending" in stanza:
        backend.pending_result = _raises_or(stanza["pending"], pending_from)
    if "certificate" in stanza:
        backend.certificate_result = _raises_or(stanza["certificate"], issued_from)
    if "revoke" in stanza:
        backend.revoke_result = _raises_or(stanza["revoke"], issued_from)
    for p in stanza.get("profiles", []):
        backend.profile_infos.append(
            ProfileInfo(
                name=p["name"],
                profile_id=p["profile_id"],
                issuing_ca=p["issuing_ca"],
                validity_days=p["validity_days"],
                key_types=tuple(p["key_types"]),
                manual_approval=p["manual_approval"],
            )
        )
    if "chain" in stanza:
        for p in backend.profile_infos:
            backend.chains[p.issuing_ca] = tuple(cert_pem(n) for n in stanza["chain"])
    return backend


def response_cases() -> Iterator[tuple[str, dict]]:
    for name in METHOD_VECTORS:
        for case in load_vector(name)["responses"]:
            yield name, case


def _id(value: object) -> str:
    return value if isinstance(value, str) else value["name"]  # type: ignore[index]


# ---------------------------------------------------------------- the connector's side


def builder_for(vector: dict) -> client.V4017Requests:
    signer = client.Signer(
        private_key=serialization.load_pem_private_key(KEYS["signer_key_pem"].encode(), None),  # type: ignore[arg-type]
        certificate=x509.load_pem_x509_certificate(KEYS["signer_certificate_pem"].encode()),
    )
    creds = client.Credentials(username=KEYS["username"], password=KEYS["password"], aes_key=AES_KEY, signer=signer)
    nonce = bytes.fromhex(vector["nonce_hex"])
    when = datetime.fromisoformat(vector["signing_time"].replace("Z", "+00:00"))
    return client.V4017Requests(creds, random_bytes=lambda n: nonce[:n], clock=lambda: when)


@pytest.mark.parametrize("name", METHOD_VECTORS)
def test_client_builds_exactly_the_vector_request(name: str) -> None:
    vector = load_vector(name)
    request = getattr(builder_for(vector), vector["builder"])(**vector["inputs"])
    assert request.method == vector["method"]
    assert request.path == vector["request"]["path"]
    assert request.headers_dict() == vector["request"]["headers"]
    assert request.body == vector["request"]["body"].encode("utf-8")


@pytest.mark.parametrize("name", METHOD_VECTORS)
def test_client_intermediate_values_match(name: str) -> None:
    """emKey, the signature and the plaintext inner JSON, each on its own (to localise a difference)."""
    vector = load_vector(name)
    inner = json.loads(vector["intermediate"]["inner_json"])
    assert client.em_key(KEYS["username"], KEYS["password"]) == vector["intermediate"]["em_key"]
    assert inner["signature"] == vector["intermediate"]["signature"]
    nonce = bytes.fromhex(vector["nonce_hex"])
    expected = client.encrypt_request_data(AES_KEY, vector["intermediate"]["inner_json"].encode("utf-8"), nonce)
    assert json.loads(vector["request"]["body"])["requestData"] == expected


def parsed_view(result: object) -> dict:
    if isinstance(result, client.IssuedCertificate):
        return {
            "type": "issued",
            "certificate": cert_name(result.certificate_pem),
            "chain": [cert_name(p) for p in result.chain_pem],
            "serial": result.serial,
            "subscriber_id": result.subscriber_id,
            "request_id": result.request_id,
        }
    if isinstance(result, client.PendingApproval):
        return {
            "type": "pending",
            "request_id": result.request_id,
            "message": result.message,
            "subscriber_id": result.subscriber_id,
        }
    if isinstance(result, client.Revocation):
        return {
            "type": "revocation",
            "serial": result.serial,
            "reason": result.reason,
            "already_revoked": result.already_revoked,
            "message": result.message,
        }
    if isinstance(result, client.ProfileDetails):
        return {
            "type": "profile_info",
            "name": result.name,
            "profile_id": result.profile_id,
            "issuing_ca": result.issuing_ca,
            "validity_days": result.validity_days,
            "key_types": list(result.key_types),
            "manual_approval": result.manual_approval,
            "issuing_ca_chain": [cert_name(p) for p in result.issuing_ca_chain_pem],
        }
    if isinstance(result, tuple):
        return {"type": "profiles", "profiles": [{"name": p.name, "profile_id": p.profile_id} for p in result]}
    raise AssertionError(f"unexpected result {result!r}")


def parse(vector: dict, case: dict) -> dict:
    status, body = case["status_code"], case["body"].encode("utf-8")
    try:
        match vector["builder"]:
            case "create_certificate" | "get_certificate_by_request_id" | "get_certificate":
                result: object = client.parse_issue_response(status, {}, body)
            case "revoke":
                result = client.parse_revoke_response(
                    status, {}, body, serial=vector["inputs"]["serial"], reason=vector["inputs"]["reason"]
                )
            case "get_certificate_profile_list":
                result = client.parse_profile_list_response(status, {}, body)
            case "get_profile_info":
                result = client.parse_profile_info_response(status, {}, body)
            case other:
                raise AssertionError(other)
    except client.EmcaFailure as failure:
        return {"type": "failure", "reason": failure.reason.value, "category": failure.category.value, "message": failure.message}
    return parsed_view(result)


@pytest.mark.parametrize(("name", "case"), list(response_cases()), ids=_id)
def test_client_parses_the_vector_response(name: str, case: dict) -> None:
    assert parse(load_vector(name), case) == case["parsed"]


@pytest.mark.parametrize("case", load_vector("errors")["responses"], ids=_id)
def test_client_classifies_the_documented_errors(case: dict) -> None:
    with pytest.raises(client.EmcaFailure) as caught:
        client.parse_envelope(case["status_code"], {}, case["body"].encode("utf-8"))
    parsed = case["parsed"]
    assert (caught.value.reason.value, caught.value.category.value, caught.value.message) == (
        parsed["reason"],
        parsed["category"],
        parsed["message"],
    )


# ---------------------------------------------------------------- the simulator's side


async def post(
    backend: FakeBackend, vector: dict, *, body: bytes | None = None, headers: dict | None = None, client_host: str | None = None
) -> httpx.Response:
    app = Starlette(routes=server.routes(backend))
    transport = httpx.ASGITransport(app=app, client=(client_host or vector["client_host"], 50_000))
    async with httpx.AsyncClient(transport=transport, base_url="https://emca.test") as http:
        return await http.post(
            vector["request"]["path"],
            content=body if body is not None else vector["request"]["body"].encode("utf-8"),
            headers=headers if headers is not None else vector["request"]["headers"],
        )


@pytest.mark.parametrize(("name", "case"), list(response_cases()), ids=_id)
async def test_server_answers_the_vector_request_with_the_vector_response(name: str, case: dict) -> None:
    vector = load_vector(name)
    backend = backend_for(case["backend"])
    response = await post(backend, vector)
    assert response.status_code == case["status_code"]
    assert response.content == case["body"].encode("utf-8")
    assert response.headers["content-type"] == "application/json"
    for method, arguments in case["backend"].get("calls", {}).items():
        assert (method, arguments) in backend.calls


def test_server_extracts_the_signed_payload_of_each_vector() -> None:
    expected = {
        "create_certificate": KEYS["csr_pem"],
        "get_certificate": load_vector("revoke")["inputs"]["serial"],
        "revoke": load_vector("revoke")["inputs"]["serial"],
        "get_certificate_by_request_id": load_vector("get_certificate_by_request_id")["inputs"]["request_id"],
        "get_certificate_profile_list": load_vector("get_certificate_profile_list")["inputs"]["ca_name"],
        "get_profile_info": load_vector("get_profile_info")["inputs"]["profile_name"],
    }
    for name, payload in expected.items():
        signature = load_vector(name)["intermediate"]["signature"]
        assert server.verify_signature(signature, KEYS["signer_certificate_pem"]) == payload.encode("utf-8"), name


def test_server_accepts_a_ber_signature_made_by_openssl() -> None:
    """emCA's documented samples are BER (indefinite lengths), as OpenSSL and BouncyCastle stream them."""
    sample = load_vector("ber_signature")
    assert base64.b64decode(sample["signature"])[:2] == b"\x30\x80"
    assert server.verify_signature(sample["signature"], KEYS["signer_certificate_pem"]) == sample["payload"].encode("utf-8")


# ---------------------------------------------------------------- tampering


CREATE = load_vector("create_certificate")
CREATE_HEADERS = CREATE["request"]["headers"]
CREATE_BODY = CREATE["request"]["body"].encode("utf-8")


def issuing_backend() -> FakeBackend:
    return backend_for(CREATE["responses"][0]["backend"])


def handle(backend: FakeBackend, body: bytes, headers: dict | None = None) -> dict:
    status, content = server.handle(backend, "createCertificate", headers or CREATE_HEADERS, body, CREATE["client_host"])
    assert status == 200
    return json.loads(content)


def test_the_untampered_vector_request_is_accepted() -> None:
    assert handle(issuing_backend(), CREATE_BODY)["status"] == "success"


def test_every_altered_byte_of_the_body_is_refused() -> None:
    backend = issuing_backend()
    for position in range(len(CREATE_BODY)):
        altered = bytearray(CREATE_BODY)
        altered[position] ^= 0x01
        answer = handle(backend, bytes(altered))
        assert answer["status"] == "failure", f"byte {position} altered and accepted"
    assert not [c for c in backend.calls if c[0] == "issue"]


def test_every_altered_character_of_the_emkey_is_refused() -> None:
    em_key = CREATE_HEADERS["emKey"]
    for position in range(len(em_key)):
        altered = em_key[:position] + chr(ord(em_key[position]) ^ 0x01) + em_key[position + 1 :]
        answer = handle(issuing_backend(), CREATE_BODY, {**CREATE_HEADERS, "emKey": altered})
        assert answer["result"] == "Invalid request details found", position


def reencrypted(inner: dict, key: bytes = AES_KEY, nonce: bytes = b"\x00" * 12) -> bytes:
    plaintext = json.dumps(inner, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    request_data = base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, None)).decode("ascii")
    return json.dumps({"requestData": request_data, "userName": KEYS["username"]}, separators=(",", ":")).encode("utf-8")


def test_every_altered_byte_of_the_signature_is_refused() -> None:
    """Decrypt the vector, alter one byte of the DER signature, re-encrypt: always "Signature verification failed"."""
    inner = json.loads(CREATE["intermediate"]["inner_json"])
    der = base64.b64decode(inner["signature"])
    backend = issuing_backend()
    for position in range(len(der)):
        altered = bytearray(der)
        altered[position] ^= 0x01
        answer = handle(backend, reencrypted({**inner, "signature": base64.b64encode(bytes(altered)).decode("ascii")}))
        assert answer["result"] == "Signature verification failed", f"signature byte {position} altered: {answer['result']}"
    assert not [c for c in backend.calls if c[0] == "issue"]


def test_a_request_encrypted_with_another_key_is_refused_as_invalid_input_data() -> None:
    inner = json.loads(CREATE["intermediate"]["inner_json"])
    assert handle(issuing_backend(), reencrypted(inner, key=bytes(32)))["result"] == "Invalid input data"
    assert handle(issuing_backend(), reencrypted(inner))["status"] == "success"  # the re-encryption itself is sound

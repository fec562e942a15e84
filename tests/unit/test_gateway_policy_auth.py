"""Requests on Kafka: canonical JSON, HMAC and JWS request signatures, requester keys, allowed requesters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.api_jws import PyJWS

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RequestAuth, RevocationReason
from services.common.contracts.requests import IssueRequested, RevokeRequested
from services.common.contracts.signing import (
    AuthScheme,
    JwsAlgorithm,
    canonical_json,
    request_signing_bytes,
    sign_request,
    signed,
)
from services.gateway.policy.canonical import request_content_hash
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.policy.request_auth import (
    InMemoryRequesterKeys,
    RequesterKey,
    authorise_requester,
    verify_request_auth,
)
from services.gateway.policy.violation import PolicyViolation

SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

REVOKE = RevokeRequested(
    request_id="req-1", requester="ci-pipeline", certificate_id="web.example.com", reason=RevocationReason.KEY_COMPROMISE
)


@pytest.fixture
def keys() -> InMemoryRequesterKeys:
    return InMemoryRequesterKeys(
        [
            RequesterKey(requester="ci-pipeline", key_id="hmac-1", secret=SECRET),
            RequesterKey(requester="ci-pipeline", key_id="es-1", public_key=EC_KEY.public_key()),
            RequesterKey(requester="ci-pipeline", key_id="ed-1", public_key=ED_KEY.public_key()),
            RequesterKey(requester="mesh", key_id="hmac-m", secret=OTHER_SECRET),
        ]
    )


def refused(data: Any, keys: InMemoryRequesterKeys, code: ErrorCode, fragment: str) -> str:
    with pytest.raises(PolicyViolation) as caught:
        verify_request_auth(data, keys)
    assert caught.value.code is code, caught.value.message
    assert fragment in caught.value.message
    return caught.value.message


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- canonical JSON -------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [1, True, None], "a": 'é\n"x"', "c": {"z": 1, "y": "/"}}) == (
        '{"a":"é\\n\\"x\\"","b":[1,true,null],"c":{"y":"/","z":1}}'.encode()
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [({"a": 1.5}, "floating-point"), ({1: "a"}, "keys must be strings"), ({"a": "\ud800"}, "lone surrogate")],
)
def test_canonical_json_refuses_what_has_no_canonical_form(value: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        canonical_json(value)


def test_signing_bytes_leave_out_auth_and_match_the_wire_form() -> None:
    with_auth = signed(REVOKE, "hmac-1", SECRET)
    wire = json.loads(json.dumps(with_auth.model_dump(mode="json", exclude_none=True)))
    assert "auth" in wire
    assert request_signing_bytes(with_auth) == request_signing_bytes(REVOKE) == request_signing_bytes(wire)
    assert b'"auth"' not in request_signing_bytes(wire)


def test_content_hash_ignores_auth_but_not_content() -> None:
    assert request_content_hash(signed(REVOKE, "hmac-1", SECRET)) == request_content_hash(signed(REVOKE, "es-1", EC_KEY))
    changed = REVOKE.model_copy(update={"reason": RevocationReason.SUPERSEDED})
    assert request_content_hash(changed) != request_content_hash(REVOKE)


# -- HMAC-SHA256 --------------------------------------------------------------


def test_hmac_signature_verifies(keys: InMemoryRequesterKeys) -> None:
    request = signed(REVOKE, "hmac-1", SECRET)
    assert request.auth is not None and request.auth.scheme == "hmac-sha256"
    expected = hmac.new(SECRET, request_signing_bytes(REVOKE), hashlib.sha256).digest()
    assert request.auth.signature == b64url(expected)  # the documented wire form
    assert verify_request_auth(request, keys).key_id == "hmac-1"


def test_hmac_verifies_against_the_data_as_received(keys: InMemoryRequesterKeys) -> None:
    # a client in another language: a null member and a default written out, signed as sent
    data = {
        "request_id": "req-2",
        "requester": "ci-pipeline",
        "certificate_id": "web.example.com",
        "reason": "superseded",
        "replace": False,
        "serial": None,
    }
    data["auth"] = sign_request(data, "hmac-1", SECRET).model_dump()
    assert verify_request_auth(data, keys).key_id == "hmac-1"


def test_bad_hmac_is_refused(keys: InMemoryRequesterKeys) -> None:
    request = signed(REVOKE, "hmac-1", SECRET).model_copy(update={"reason": RevocationReason.SUPERSEDED})
    message = refused(request, keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "the HMAC-SHA256 (key 'hmac-1') does not match")
    assert request.auth is not None and request.auth.signature not in message


def test_hmac_with_the_wrong_secret_is_refused(keys: InMemoryRequesterKeys) -> None:
    refused(
        signed(REVOKE, "hmac-1", OTHER_SECRET), keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "does not match the canonical JSON"
    )


def test_unknown_key_id_is_unauthenticated(keys: InMemoryRequesterKeys) -> None:
    refused(
        signed(REVOKE, "hmac-9", SECRET), keys, ErrorCode.UNAUTHENTICATED, "unknown key id 'hmac-9' for requester 'ci-pipeline'"
    )


def test_another_requesters_key_is_unauthenticated(keys: InMemoryRequesterKeys) -> None:
    # mesh's key cannot sign for ci-pipeline, even with mesh's valid secret
    refused(
        signed(REVOKE, "hmac-m", OTHER_SECRET),
        keys,
        ErrorCode.UNAUTHENTICATED,
        "unknown key id 'hmac-m' for requester 'ci-pipeline'",
    )


def test_missing_auth_is_unauthenticated(keys: InMemoryRequesterKeys) -> None:
    refused(REVOKE, keys, ErrorCode.UNAUTHENTICATED, "a request on Kafka must carry auth")


def test_hmac_scheme_with_a_public_key_is_refused(keys: InMemoryRequesterKeys) -> None:
    auth = RequestAuth(scheme="hmac-sha256", key_id="es-1", signature=b64url(b"x" * 32))
    refused(
        REVOKE.model_copy(update={"auth": auth}),
        keys,
        ErrorCode.REQUEST_SIGNATURE_INVALID,
        "sign with scheme jws, not hmac-sha256",
    )


# -- JWS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_id", "key"), [("es-1", EC_KEY), ("ed-1", ED_KEY), ("hmac-1", SECRET)], ids=["ES256", "EdDSA", "HS256"]
)
def test_detached_jws_verifies(keys: InMemoryRequesterKeys, key_id: str, key: Any) -> None:
    auth = sign_request(REVOKE, key_id, key, scheme=AuthScheme.JWS)
    assert auth.scheme == "jws" and ".." in auth.signature  # RFC 7515 Appendix F
    assert verify_request_auth(REVOKE.model_copy(update={"auth": auth}), keys).key_id == key_id


def test_attached_jws_verifies(keys: InMemoryRequesterKeys) -> None:
    auth = sign_request(REVOKE, "es-1", EC_KEY, detached=False)
    assert ".." not in auth.signature
    assert verify_request_auth(REVOKE.model_copy(update={"auth": auth}), keys).jws_algorithm is JwsAlgorithm.ES256


def test_issue_request_with_a_csr_is_signed_detached(keys: InMemoryRequesterKeys) -> None:
    from tests.unit.examples import key_and_csr

    request = IssueRequested(
        request_id="req-3", requester="ci-pipeline", profile="web", certificate_id="web.example.com", csr=key_and_csr()[1]
    )
    assert verify_request_auth(signed(request, "ed-1", ED_KEY), keys).key_id == "ed-1"


def test_jws_with_the_wrong_key_is_refused(keys: InMemoryRequesterKeys) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    request = signed(REVOKE, "es-1", impostor)
    refused(request, keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "the JWS does not verify with key 'es-1'")


def test_jws_over_other_content_is_refused(keys: InMemoryRequesterKeys) -> None:
    auth = sign_request(REVOKE, "es-1", EC_KEY, detached=False)
    tampered = REVOKE.model_copy(update={"reason": RevocationReason.SUPERSEDED, "auth": auth})
    refused(tampered, keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "the JWS payload is not the canonical JSON of the request data")
    detached = sign_request(REVOKE, "es-1", EC_KEY)
    refused(tampered.model_copy(update={"auth": detached}), keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "does not verify")


def test_alg_none_is_refused(keys: InMemoryRequesterKeys) -> None:
    header = b64url(json.dumps({"alg": "none", "kid": "es-1"}).encode())
    token = f"{header}.{b64url(request_signing_bytes(REVOKE))}."
    auth = RequestAuth(scheme="jws", key_id="es-1", signature=token)
    refused(
        REVOKE.model_copy(update={"auth": auth}),
        keys,
        ErrorCode.REQUEST_SIGNATURE_INVALID,
        "JWS alg 'none' is not accepted: key 'es-1' verifies only ES256",
    )


def test_hs256_with_the_public_key_as_secret_is_refused(keys: InMemoryRequesterKeys) -> None:
    # algorithm confusion: an HS256 token "signed" with the registered public key's bytes
    public_pem = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64url(json.dumps({"alg": "HS256", "kid": "es-1"}, separators=(",", ":")).encode())
    payload = b64url(request_signing_bytes(REVOKE))
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    auth = RequestAuth(scheme="jws", key_id="es-1", signature=f"{header}.{payload}.{b64url(mac)}")
    refused(
        REVOKE.model_copy(update={"auth": auth}), keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "JWS alg 'HS256' is not accepted"
    )


def test_kid_must_match_key_id(keys: InMemoryRequesterKeys) -> None:
    token = PyJWS().encode(request_signing_bytes(REVOKE), EC_KEY, algorithm="ES256", headers={"kid": "es-2"})
    auth = RequestAuth(scheme="jws", key_id="es-1", signature=token)
    refused(
        REVOKE.model_copy(update={"auth": auth}),
        keys,
        ErrorCode.REQUEST_SIGNATURE_INVALID,
        "the JWS kid 'es-2' differs from the auth key_id 'es-1'",
    )


def test_unencoded_payload_is_refused(keys: InMemoryRequesterKeys) -> None:
    token = PyJWS().encode(request_signing_bytes(REVOKE), EC_KEY, algorithm="ES256", is_payload_detached=True)
    auth = RequestAuth(scheme="jws", key_id="es-1", signature=token)
    refused(
        REVOKE.model_copy(update={"auth": auth}),
        keys,
        ErrorCode.REQUEST_SIGNATURE_INVALID,
        "'crit' and 'b64' headers are not accepted",
    )


def test_not_a_compact_jws_is_refused(keys: InMemoryRequesterKeys) -> None:
    auth = RequestAuth(scheme="jws", key_id="es-1", signature="not-a-jws-at-all-really")
    refused(REVOKE.model_copy(update={"auth": auth}), keys, ErrorCode.REQUEST_SIGNATURE_INVALID, "not in compact serialisation")


# -- registered keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"secret": b"short"}, "at least 32 bytes"),
        ({}, "either an HMAC secret or a public key"),
        ({"secret": SECRET, "public_key": EC_KEY.public_key()}, "either an HMAC secret or a public key"),
        ({"public_key": ec.generate_private_key(ec.SECP384R1()).public_key()}, "must be P-256 (ES256), not secp384r1"),
    ],
)
def test_requester_key_rules(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        RequesterKey(requester="ci-pipeline", key_id="k", **kwargs)


def test_requester_key_from_pem() -> None:
    pem = ED_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert RequesterKey.from_public_pem("ci-pipeline", "ed-2", pem).jws_algorithm is JwsAlgorithm.EDDSA
    assert str(SECRET) not in repr(RequesterKey(requester="r", key_id="k", secret=SECRET))


# -- allowed requesters ---------------------------------------------------------


PROFILE = ProvisioningProfile.model_validate_json(
    json.dumps(
        {
            "name": "web",
            "connector": "emca-main",
            "ca_profile": "TLS Server",
            "key_generation": "requester",
            "allowed_requesters": ["ci-pipeline"],
            "domain_rules": {"dns_suffixes": ["example.com"]},
            "validity_days": 90,
        }
    )
)


def test_listed_requester_is_authorised() -> None:
    authorise_requester("ci-pipeline", PROFILE)


def test_unlisted_requester_is_refused() -> None:
    with pytest.raises(PolicyViolation) as caught:
        authorise_requester("mesh", PROFILE)
    assert caught.value.code is ErrorCode.REQUESTER_NOT_AUTHORISED
    assert "requester 'mesh' is not allowed to use profile 'web'" in caught.value.message
    assert "ci-pipeline" not in caught.value.message

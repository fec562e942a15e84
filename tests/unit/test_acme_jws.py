"""The JWS rules of the ACME door as pure functions (services/gateway/acme/jws.py): strict base64url, the
flattened serialization with a protected header only, account keys and their algorithms, the outer header's
url / nonce / jwk-xor-kid, the External Account Binding and the inner JWS of a key rollover."""

from __future__ import annotations

from typing import Any

import josepy
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.gateway.acme.jws import (
    AccountKey,
    account_key,
    b64url_decode,
    outer_header,
    parse_eab,
    parse_flattened,
    parse_key_change,
    verify,
)
from services.gateway.acme.problems import AcmeError
from tests.unit.acme_support import b64json, eab, ec_key, public, rsa_key, sign

URL = "https://acme.test/acme/new-account"


def kind_of(error: pytest.ExceptionInfo[AcmeError]) -> str:
    return error.value.kind.value


@pytest.mark.parametrize(("text", "decoded"), [("", b""), ("YQ", b"a"), ("YWI", b"ab"), ("YWJj", b"abc"), ("-_8", b"\xfb\xff")])
def test_base64url_decodes_the_url_safe_alphabet_without_padding(text: str, decoded: bytes) -> None:
    assert b64url_decode(text, "x") == decoded


@pytest.mark.parametrize("text", ["YQ==", "YQ=", "a+b/", "Y", "YW J", "é", 5, None])
def test_base64url_refuses_padding_other_alphabets_and_impossible_lengths(text: Any) -> None:
    with pytest.raises(AcmeError) as error:
        b64url_decode(text, "the thing")
    assert kind_of(error) == "malformed" and "the thing" in error.value.detail


def test_a_well_formed_jws_parses_and_verifies() -> None:
    key = ec_key()
    jws = parse_flattened(sign({"a": 1}, key, url=URL, nonce="bm9uY2U"))
    header = outer_header(jws, URL)
    assert header.kid is None and header.jwk is not None and header.nonce == "bm9uY2U"
    verify(jws, header.alg, header.jwk)
    assert jws.payload_object() == {"a": 1}


def test_post_as_get_has_no_payload_object() -> None:
    assert parse_flattened(sign(None, ec_key(), url=URL, nonce="bm9uY2U")).payload_object() is None


@pytest.mark.parametrize("payload", [b"[1]", b"not json", b'"text"'])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    jws = parse_flattened(sign(payload, ec_key(), url=URL, nonce="bm9uY2U"))
    with pytest.raises(AcmeError, match="malformed"):
        jws.payload_object()


def test_thumbprints_follow_rfc_7638() -> None:
    # RFC 7638 3.1's example key and thumbprint
    jwk = {"kty": "RSA", "e": "AQAB", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
           "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZ"
           "gnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
           "Cur-kEgU8awapJzKnqDKgw"}
    assert account_key(jwk).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(("jwk", "detail"), [
    ("not an object", "JSON object"),
    ({"kty": "oct", "k": "c2VjcmV0"}, "private key members"),
    ({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, "EC or RSA"),
    ({"kty": "EC", "crv": "P-256"}, "not a valid EC"),
    ({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}, "not a valid EC"),
    ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "not a valid RSA"),
    ({"kty": "RSA", "n": "!!", "e": "AQAB"}, "not a valid RSA"),
])
def test_unusable_account_keys_are_bad_public_keys(jwk: Any, detail: str) -> None:
    with pytest.raises(AcmeError) as error:
        account_key(jwk)
    assert kind_of(error) == "badPublicKey" and detail in error.value.detail


def test_rsa_keys_need_2048_to_8192_bits() -> None:
    assert isinstance(account_key(public(rsa_key(4096))), AccountKey)
    with pytest.raises(AcmeError, match="2048 to 8192 bits, not 1024"):
        account_key(public(rsa_key(1024)))


@pytest.mark.parametrize(("alg", "curve"), [("ES256", ec.SECP384R1()), ("ES384", ec.SECP256R1()), ("RS256", ec.SECP256R1())])
def test_the_algorithm_must_fit_the_key(alg: str, curve: ec.EllipticCurve) -> None:
    key = ec_key(curve)
    jws = parse_flattened(sign({}, key, url=URL, nonce="bm9uY2U", alg="ES384" if isinstance(curve, ec.SECP384R1) else "ES256",
                               header={"alg": alg}))
    header = outer_header(jws, URL)
    assert header.jwk is not None
    with pytest.raises(AcmeError) as error:
        verify(jws, header.alg, header.jwk)
    assert kind_of(error) == "badSignatureAlgorithm"


def test_an_eab_binds_the_account_key_with_the_eab_key() -> None:
    account, hmac_key = ec_key(), b"h" * 32
    binding = parse_eab(eab("eab-1", hmac_key, account, url=URL), account=account_key(public(account)), new_account_url=URL)
    assert binding.key_id == "eab-1" and binding.verifies(hmac_key) and not binding.verifies(b"x" * 32)


@pytest.mark.parametrize(("header", "kind"), [
    ({"kid": ""}, "malformed"), ({"kid": "k" * 65}, "malformed"), ({"kid": 7}, "malformed"),
    ({"jwk": {"kty": "EC"}}, "malformed"), ({"alg": "HS1"}, "badSignatureAlgorithm"), ({"url": None}, "unauthorized"),
])
def test_eab_headers_are_checked(header: dict[str, Any], kind: str) -> None:
    account = ec_key()
    with pytest.raises(AcmeError) as error:
        parse_eab(eab("eab-1", b"h" * 32, account, url=URL, header=header), account=account_key(public(account)),
                  new_account_url=URL)
    assert kind_of(error) == kind


def test_an_eab_whose_payload_is_not_a_key_is_a_bad_public_key() -> None:
    account = ec_key()
    binding = {**eab("eab-1", b"h" * 32, account, url=URL), "payload": b64json({"not": "a key"})}
    with pytest.raises(AcmeError) as error:
        parse_eab(binding, account=account_key(public(account)), new_account_url=URL)
    assert kind_of(error) == "badPublicKey"


def test_a_key_change_yields_the_new_key() -> None:
    old, new = ec_key(), rsa_key()
    kid = "https://acme.test/acme/account/abcdefgh"
    inner = sign({"account": kid, "oldKey": public(old)}, new, url=URL, nonce=None, alg="RS256")
    got = parse_key_change(inner, url=URL, account_url=kid, current=account_key(public(old)))
    assert got.thumbprint == account_key(public(new)).thumbprint
    assert isinstance(got.jwk, josepy.JWKRSA)

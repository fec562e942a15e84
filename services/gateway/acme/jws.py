"""The JWS of an ACME POST (RFC 8555 6.2, 7.3.4, 7.3.5), parsed and verified: pure functions, no I/O.

josepy (the JOSE library certbot itself uses) parses the keys (JWK), computes RFC 7638 thumbprints and
verifies the signatures; this module holds ACME's own rules around it: the flattened JSON serialization
only, a protected header only, ``alg`` among `ACCOUNT_ALGORITHMS` (never ``none`` nor a MAC for an account
key) and fitting the key, ``jwk`` XOR ``kid``, ``url`` equal to the URL the request was sent to, a
``nonce``. The External Account Binding (an HS256 JWS over the account key, signed with the EAB key) and the
inner JWS of a key rollover are checked here too. Every refusal is an `AcmeError` of the RFC's type.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import josepy
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.gateway.acme.challenges import jwk_thumbprint
from services.gateway.acme.problems import AcmeError, AcmeErrorType, malformed, unauthorized

#: the signature algorithms an account key may sign with (josepy's names)
ACCOUNT_ALGORITHMS: dict[str, josepy.JWASignature] = {
    "ES256": josepy.ES256, "ES384": josepy.ES384, "ES512": josepy.ES512, "RS256": josepy.RS256,
}
#: the MAC algorithms of an External Account Binding (RFC 8555 7.3.4: MAC-based)
EAB_ALGORITHMS: dict[str, josepy.JWASignature] = {"HS256": josepy.HS256, "HS384": josepy.HS384, "HS512": josepy.HS512}
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
#: JWK members that only a private key has: a JWK carrying them is refused (the client leaks its key)
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
MAX_NONCE_CHARS = 64


def b64url_decode(text: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 2): a malformed problem naming ``what`` otherwise."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise malformed(f"{what} is not base64url (RFC 7515: the URL-safe alphabet, no padding)")
    try:
        return josepy.b64.b64decode(text)
    except (ValueError, TypeError):
        raise malformed(f"{what} is not base64url") from None


def b64url_encode(data: bytes) -> str:
    return josepy.b64.b64encode(data).decode("ascii")


def json_value(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise malformed(f"{what} is not JSON") from None


@dataclass(frozen=True)
class FlatJws:
    """A JWS in the flattened JSON serialization: the encoded parts as received (the signing input is
    ``protected_b64 + "." + payload_b64``), the decoded protected header and payload."""

    protected_b64: str
    payload_b64: str
    signature: bytes = field(repr=False)
    header: dict[str, Any]
    payload: bytes

    @property
    def signing_input(self) -> bytes:
        return f"{self.protected_b64}.{self.payload_b64}".encode("ascii")

    def payload_object(self, what: str = "the payload") -> dict[str, Any] | None:
        """The payload as a JSON object; None for POST-as-GET (an empty payload)."""
        if self.payload_b64 == "":
            return None
        value = json_value(self.payload, what)
        if not isinstance(value, dict):
            raise malformed(f"{what} must be a JSON object")
        return value


def parse_flattened(value: Any, what: str = "the JWS") -> FlatJws:
    """``value`` (a parsed JSON value) as a flattened JWS with a protected header only (RFC 8555 6.2: no
    unprotected header, one signature)."""
    if not isinstance(value, dict):
        raise malformed(f"{what} must be a JSON object (the flattened JWS serialization)")
    if "signatures" in value:
        raise malformed(f"{what} must use the flattened JSON serialization, not the general one")
    if "header" in value:
        raise malformed(f"{what} must not have an unprotected header")
    extra = set(value) - {"protected", "payload", "signature"}
    if extra:
        raise malformed(f"{what} has unknown members: {', '.join(sorted(extra))[:100]}")
    for member in ("protected", "payload", "signature"):
        if not isinstance(value.get(member), str):
            raise malformed(f"{what} has no {member} (a base64url string)")
    protected = b64url_decode(value["protected"], f"{what}'s protected header")
    header = json_value(protected, f"{what}'s protected header")
    if not isinstance(header, dict):
        raise malformed(f"{what}'s protected header must be a JSON object")
    if "crit" in header:
        raise malformed(f"{what}'s protected header has crit: no extension is understood here")
    payload = b64url_decode(value["payload"], f"{what}'s payload")
    signature = b64url_decode(value["signature"], f"{what}'s signature")
    return FlatJws(value["protected"], value["payload"], signature, header, payload)


def parse_body(raw: bytes) -> FlatJws:
    return parse_flattened(json_value(raw, "the body"), "the JWS")


# -- keys ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountKey:
    """An account's public key: the josepy JWK and its RFC 7638 thumbprint (SHA-256, base64url)."""

    jwk: josepy.JWK
    thumbprint: str

    def public_json(self) -> dict[str, Any]:
        return dict(self.jwk.public_key().to_partial_json())

    @classmethod
    def of(cls, jwk: josepy.JWK) -> AccountKey:
        return cls(jwk, jwk_thumbprint(jwk))


def account_key(value: Any, what: str = "the jwk") -> AccountKey:
    """A public account key (EC P-256/384/521, or RSA of 2048 to 8192 bits) from its JWK: badPublicKey otherwise."""
    if not isinstance(value, dict):
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"{what} must be a JSON object (a JWK)")
    if PRIVATE_MEMBERS & set(value):
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"{what} carries private key members: send the public key only "
                        "(and consider this key compromised)")
    if value.get("kty") not in ("EC", "RSA"):
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"{what} must be an EC or RSA key")
    try:
        jwk = josepy.JWK.from_json(value)
        if not isinstance(jwk, josepy.JWKEC | josepy.JWKRSA):
            raise TypeError("not an EC or RSA JWK")
    except (josepy.errors.Error, ValueError, TypeError, KeyError, OverflowError):
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"{what} is not a valid {value.get('kty')} public key") from None
    numbers = _public_numbers(jwk)
    if numbers is None:
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"{what} is not a public key")
    if isinstance(numbers, rsa.RSAPublicNumbers) and not MIN_RSA_BITS <= numbers.n.bit_length() <= MAX_RSA_BITS:
        raise AcmeError(AcmeErrorType.BAD_PUBLIC_KEY, f"an RSA account key must have {MIN_RSA_BITS} to {MAX_RSA_BITS} "
                        f"bits, not {numbers.n.bit_length()}")
    return AccountKey.of(jwk)


def _public_numbers(jwk: josepy.JWK) -> rsa.RSAPublicNumbers | ec.EllipticCurvePublicNumbers | None:
    """The public numbers of a JWK's key (josepy wraps the cryptography key; its public API is delegated)."""
    numbers = getattr(jwk.key, "public_numbers", None)
    if numbers is None:  # a private key (refused above) or a MAC key
        return None
    value = numbers()
    return value if isinstance(value, rsa.RSAPublicNumbers | ec.EllipticCurvePublicNumbers) else None


def signature_algorithm(header: dict[str, Any], what: str = "the JWS") -> josepy.JWASignature:
    """The header's ``alg`` among ACCOUNT_ALGORITHMS: badSignatureAlgorithm (listing them) otherwise."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ACCOUNT_ALGORITHMS:
        shown = alg[:20] if isinstance(alg, str) else "absent"
        raise AcmeError(AcmeErrorType.BAD_SIGNATURE_ALGORITHM, f"{what}'s alg {shown!r} is not accepted for an account key",
                        algorithms=sorted(ACCOUNT_ALGORITHMS))
    return ACCOUNT_ALGORITHMS[alg]


def check_fits(alg: josepy.JWASignature, key: AccountKey) -> None:
    """ES256 needs a P-256 key (ES384 P-384, ES512 P-521), RS256 an RSA key."""
    numbers = _public_numbers(key.jwk)
    expected = _CURVES.get(alg.name)
    if expected is not None:
        if not isinstance(numbers, ec.EllipticCurvePublicNumbers) or not isinstance(numbers.curve, expected):
            raise AcmeError(AcmeErrorType.BAD_SIGNATURE_ALGORITHM, f"{alg.name} needs an EC {expected.name} key",
                            algorithms=sorted(ACCOUNT_ALGORITHMS))
    elif not isinstance(numbers, rsa.RSAPublicNumbers):
        raise AcmeError(AcmeErrorType.BAD_SIGNATURE_ALGORITHM, f"{alg.name} needs an RSA key",
                        algorithms=sorted(ACCOUNT_ALGORITHMS))


def verify(jws: FlatJws, alg: josepy.JWASignature, key: AccountKey, what: str = "the JWS") -> None:
    check_fits(alg, key)
    if not alg.verify(key.jwk.key, jws.signing_input, jws.signature):
        raise malformed(f"{what}'s signature does not verify with its key")


# -- the outer JWS of every POST ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OuterHeader:
    alg: josepy.JWASignature
    nonce: str
    url: str
    jwk: AccountKey | None  # newAccount (and revokeCert by the certificate's key, later)
    kid: str | None  # every other POST: the account URL


def outer_header(jws: FlatJws, request_url: str) -> OuterHeader:
    """The protected header of a POST to ``request_url``: alg (badSignatureAlgorithm), url (unauthorized when
    it is not ``request_url``: RFC 8555 6.4.1), nonce (badNonce when absent or not base64url), jwk XOR kid."""
    header = jws.header
    alg = signature_algorithm(header)
    url = header.get("url")
    if not isinstance(url, str):
        raise malformed("the JWS's protected header has no url")
    if url != request_url:
        raise unauthorized("the JWS's url is not the URL this request was sent to")
    nonce = header.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise AcmeError(AcmeErrorType.BAD_NONCE, "the JWS's protected header has no nonce")
    if len(nonce) > MAX_NONCE_CHARS or _B64URL.fullmatch(nonce) is None:
        raise AcmeError(AcmeErrorType.BAD_NONCE, "the JWS's nonce is not a nonce of this server")
    has_jwk, has_kid = "jwk" in header, "kid" in header
    if has_jwk == has_kid:
        raise malformed("the JWS's protected header must have either jwk or kid, not both nor neither")
    if has_kid:
        kid = header["kid"]
        if not isinstance(kid, str) or not kid:
            raise malformed("the JWS's kid must be an account URL")
        return OuterHeader(alg, nonce, url, None, kid)
    return OuterHeader(alg, nonce, url, account_key(header["jwk"], "the JWS's jwk"), None)


# -- External Account Binding (RFC 8555 7.3.4) --------------------------------------------------------------


@dataclass(frozen=True)
class EabBinding:
    """A parsed, not yet verified, externalAccountBinding: its key id, MAC algorithm and signed input."""

    key_id: str
    alg: josepy.JWASignature
    jws: FlatJws

    def verifies(self, hmac_key: bytes) -> bool:
        return bool(self.alg.verify(hmac_key, self.jws.signing_input, self.jws.signature))


def parse_eab(value: Any, *, account: AccountKey, new_account_url: str) -> EabBinding:
    """The externalAccountBinding of a newAccount payload: a flattened JWS whose protected header has a MAC
    ``alg``, the EAB key id as ``kid``, the newAccount URL as ``url`` and no nonce, and whose payload is the
    account's public key (the outer jwk). The caller looks the key up and calls `EabBinding.verifies`."""
    what = "the externalAccountBinding"
    jws = parse_flattened(value, what)
    alg = jws.header.get("alg")
    if not isinstance(alg, str) or alg not in EAB_ALGORITHMS:
        shown = alg[:20] if isinstance(alg, str) else "absent"
        raise AcmeError(AcmeErrorType.BAD_SIGNATURE_ALGORITHM, f"{what}'s alg {shown!r} is not a MAC algorithm",
                        algorithms=sorted(EAB_ALGORITHMS))
    if "nonce" in jws.header:
        raise malformed(f"{what} must not have a nonce")
    if "jwk" in jws.header:
        raise malformed(f"{what} must not have a jwk (its kid names the EAB key)")
    kid = jws.header.get("kid")
    if not isinstance(kid, str) or not 1 <= len(kid) <= 64:
        raise malformed(f"{what} has no kid (the EAB key id)")
    if jws.header.get("url") != new_account_url:
        raise unauthorized(f"{what}'s url is not the newAccount URL")
    bound = account_key(json_value(jws.payload, f"{what}'s payload"), f"{what}'s payload")
    if bound.thumbprint != account.thumbprint:
        raise unauthorized(f"{what} binds another key than the account's")
    return EabBinding(kid, EAB_ALGORITHMS[alg], jws)


# -- key rollover (RFC 8555 7.3.5) ----------------------------------------------------------------------------


def parse_key_change(value: Any, *, url: str, account_url: str, current: AccountKey) -> AccountKey:
    """The new key from the inner JWS of a keyChange request (the outer payload, parsed): signed by the new key
    (its ``jwk``), the same ``url`` as the outer JWS, no nonce, no kid; its payload names the account
    (``account``) and its current key (``oldKey``)."""
    what = "the inner JWS"
    inner = parse_flattened(value, what)
    alg = signature_algorithm(inner.header, what)
    if "kid" in inner.header or "jwk" not in inner.header:
        raise malformed(f"{what} must have a jwk (the new key) and no kid")
    if "nonce" in inner.header:
        raise malformed(f"{what} must not have a nonce")
    if inner.header.get("url") != url:
        raise malformed(f"{what}'s url is not the outer JWS's url")
    new = account_key(inner.header["jwk"], f"{what}'s jwk")
    verify(inner, alg, new, what)
    payload = inner.payload_object(f"{what}'s payload")
    if payload is None:
        raise malformed(f"{what}'s payload must name the account and its old key")
    if payload.get("account") != account_url:
        raise unauthorized(f"{what}'s account is not the account that signed the request")
    if account_key(payload.get("oldKey"), f"{what}'s oldKey").thumbprint != current.thumbprint:
        raise unauthorized(f"{what}'s oldKey is not the account's current key")
    return new

"""validate_csr: every rule with a good and a bad CSR, each refusal with its code and message."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import KeyAlgorithm
from services.gateway.policy.csr import validate_csr
from services.gateway.policy.profile import EcCurve, KeyType, ProvisioningProfile
from services.gateway.policy.violation import PolicyViolation

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

BASE: dict[str, Any] = {
    "name": "web",
    "connector": "emca-main",
    "ca_profile": "TLS Server",
    "key_generation": "requester",
    "allowed_requesters": ["ci-pipeline"],
    "domain_rules": {"dns_suffixes": ["example.com"], "ip_networks": ["10.0.0.0/24"]},
    "validity_days": 90,
}


def profile(**overrides: Any) -> ProvisioningProfile:
    return ProvisioningProfile.model_validate_json(json.dumps(BASE | overrides))


PROFILE = profile()


# -- keys: RSA generation is slow, so each size is made once per test run ------


@pytest.fixture(scope="session")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="session")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(
    key: Key,
    sans: Sequence[x509.GeneralName] | None = (x509.DNSName("web.example.com"),),
    subject: Sequence[tuple[ObjectIdentifier, str]] = ((NameOID.COMMON_NAME, "web.example.com"),),
    algorithm: hashes.HashAlgorithm | None = hashes.SHA256(),
    extensions: Sequence[x509.ExtensionType] = (),
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(o, v) for o, v in subject]))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        algorithm = None
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def refused(
    csr: str | bytes, code: ErrorCode, fragment: str, p: ProvisioningProfile = PROFILE, sans: list[str] | None = None
) -> str:
    with pytest.raises(PolicyViolation) as caught:
        validate_csr(csr, p, sans)
    assert caught.value.code is code, caught.value.message
    assert fragment in caught.value.message
    return caught.value.message


def to_pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def der_of(pem: str) -> bytes:
    return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)


# -- a good CSR ---------------------------------------------------------------


def test_good_ec_csr_returns_what_the_command_needs(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("Web.Example.com"), x509.DNSName("api.example.com")])
    result = validate_csr("\n" + csr + "\n", PROFILE)
    assert result.sans == ("dns:web.example.com", "dns:api.example.com")
    assert result.subject == "CN=web.example.com"
    assert result.common_name == "web.example.com"
    assert (result.key_type, result.key_size, result.curve) == (KeyType.EC, 256, EcCurve.P256)
    assert result.key_algorithm is KeyAlgorithm.EC_P256
    spki = p256.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert result.public_key_sha256 == hashlib.sha256(spki).hexdigest()
    assert result.signature_hash == "sha256"
    assert result.csr_pem == csr


def test_good_rsa_2048_csr(rsa2048: rsa.RSAPrivateKey) -> None:
    result = validate_csr(make_csr(rsa2048).encode(), PROFILE)
    assert (result.key_type, result.key_size, result.key_algorithm) == (KeyType.RSA, 2048, KeyAlgorithm.RSA_2048)


# -- CSR_INVALID --------------------------------------------------------------


def test_garbage_is_csr_invalid() -> None:
    refused("hello, CA", ErrorCode.CSR_INVALID, "no PEM block found")


def test_unparsable_block_is_csr_invalid() -> None:
    refused(to_pem(b"\x30\x03\x02\x01\x00"), ErrorCode.CSR_INVALID, "not a parsable PKCS#10 request")


def test_several_pem_blocks_are_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    refused(make_csr(p256) + make_csr(p256), ErrorCode.CSR_INVALID, "expected exactly one PEM block, found 2")


def test_certificate_instead_of_csr_is_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(p256.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(p256, hashes.SHA256())
    )
    refused(
        cert.public_bytes(serialization.Encoding.PEM),
        ErrorCode.CSR_INVALID,
        "the PEM block is a CERTIFICATE, not a CERTIFICATE REQUEST",
    )


def test_text_around_the_block_is_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    refused("Certificate Request:\n" + make_csr(p256), ErrorCode.CSR_INVALID, "there is text outside the PEM block")


def test_missing_end_line_is_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    refused(make_csr(p256).split("-----END")[0], ErrorCode.CSR_INVALID, "has no '-----END CERTIFICATE REQUEST-----' line")


def test_too_large_is_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    refused(make_csr(p256) + " " * 17000, ErrorCode.CSR_INVALID, "over the 16384-byte limit")


def test_ca_request_is_csr_invalid(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, extensions=[x509.BasicConstraints(ca=True, path_length=None)])
    refused(csr, ErrorCode.CSR_INVALID, "asks for a CA certificate")


def test_end_entity_basic_constraints_are_fine(p256: ec.EllipticCurvePrivateKey) -> None:
    validate_csr(make_csr(p256, extensions=[x509.BasicConstraints(ca=False, path_length=None)]), PROFILE)


# -- PRIVATE_KEY_SUBMITTED ----------------------------------------------------


@pytest.mark.parametrize("form", ["pkcs8", "traditional"])
def test_private_key_pasted_in_is_refused_and_not_echoed(p256: ec.EllipticCurvePrivateKey, form: str) -> None:
    fmt = serialization.PrivateFormat.PKCS8 if form == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    key_pem = p256.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    message = refused(make_csr(p256).encode() + key_pem, ErrorCode.PRIVATE_KEY_SUBMITTED, "send only the CSR")
    for line in key_pem.decode().splitlines():
        if not line.startswith("-----"):
            assert line not in message
    digest = hashlib.sha256(key_pem.rstrip(b"\n")).hexdigest()
    assert f"sha256:{digest}" in message


def test_private_key_alone_is_refused_before_anything_else(p256: ec.EllipticCurvePrivateKey) -> None:
    key_pem = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    refused(key_pem + b" " * 20000, ErrorCode.PRIVATE_KEY_SUBMITTED, "The key was not stored")


# -- CSR_SIGNATURE_INVALID ----------------------------------------------------


def test_tampered_signature_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    der = bytearray(der_of(make_csr(p256)))
    der[-1] ^= 0x01  # the last byte of the signature's s value
    refused(to_pem(bytes(der)), ErrorCode.CSR_SIGNATURE_INVALID, "does not verify with its own public key")


def test_tampered_content_is_refused(rsa2048: rsa.RSAPrivateKey) -> None:
    der = der_of(make_csr(rsa2048))
    forged = der.replace(b"web.example.com", b"wab.example.com")
    assert forged != der
    refused(to_pem(forged), ErrorCode.CSR_SIGNATURE_INVALID, "not signed by the key's holder")


def test_sha1_signature_is_refused(rsa2048: rsa.RSAPrivateKey) -> None:
    # cryptography no longer signs with SHA-1: re-sign the request info with asn1crypto's help
    request = asn1_csr.CertificationRequest.load(der_of(make_csr(rsa2048)))
    request["signature_algorithm"] = {"algorithm": "sha1_rsa"}
    request["signature"] = rsa2048.sign(request["certification_request_info"].dump(), padding.PKCS1v15(), hashes.SHA1())
    refused(to_pem(request.dump()), ErrorCode.CSR_SIGNATURE_INVALID, "signed with sha1; SHA-256 or stronger is required")


# -- KEY_POLICY_VIOLATION -----------------------------------------------------


def test_weak_rsa_1024_is_refused(rsa1024: rsa.RSAPrivateKey) -> None:
    refused(make_csr(rsa1024), ErrorCode.KEY_POLICY_VIOLATION, "the RSA key has 1024 bits, fewer than the 2048 required")


def test_rsa_below_profile_minimum_is_refused(rsa2048: rsa.RSAPrivateKey, rsa3072: rsa.RSAPrivateKey) -> None:
    strict = profile(key_policy={"rsa_min_bits": 3072})
    refused(make_csr(rsa2048), ErrorCode.KEY_POLICY_VIOLATION, "fewer than the 3072 required", strict)
    assert validate_csr(make_csr(rsa3072), strict).key_algorithm is KeyAlgorithm.RSA_3072


def test_rsa_above_profile_maximum_is_refused(rsa3072: rsa.RSAPrivateKey) -> None:
    capped = profile(key_policy={"rsa_max_bits": 2048})
    refused(make_csr(rsa3072), ErrorCode.KEY_POLICY_VIOLATION, "the RSA key has 3072 bits, more than the 2048 allowed", capped)


def test_rsa_not_allowed_at_all(rsa2048: rsa.RSAPrivateKey) -> None:
    ec_only = profile(key_policy={"rsa_min_bits": None})
    refused(
        make_csr(rsa2048),
        ErrorCode.KEY_POLICY_VIOLATION,
        "RSA keys are not allowed; profile 'web' allows EC P-256/P-384",
        ec_only,
    )


def test_small_rsa_exponent_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    refused(make_csr(key), ErrorCode.KEY_POLICY_VIOLATION, "the RSA public exponent 3 is not an odd number from 65537")


@pytest.mark.parametrize(
    ("curve", "fragment"),
    [(ec.SECP256K1(), "the EC curve secp256k1 is not allowed"), (ec.SECP521R1(), "the EC curve P-521 is not allowed")],
)
def test_wrong_curve_is_refused(curve: ec.EllipticCurve, fragment: str) -> None:
    message = refused(make_csr(ec.generate_private_key(curve)), ErrorCode.KEY_POLICY_VIOLATION, fragment)
    assert "allows RSA 2048-4096 bits, EC P-256/P-384" in message


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_allowed_curves_pass(curve: ec.EllipticCurve) -> None:
    p = profile(key_policy={"ec_curves": ["P-256", "P-384", "P-521"]})
    assert validate_csr(make_csr(ec.generate_private_key(curve)), p).key_size == curve.key_size


def test_ed25519_only_where_allowed() -> None:
    csr = make_csr(ed25519.Ed25519PrivateKey.generate())
    refused(csr, ErrorCode.KEY_POLICY_VIOLATION, "Ed25519 keys are not allowed")
    result = validate_csr(csr, profile(key_policy={"ed25519": True}))
    assert (result.key_type, result.signature_hash, result.key_algorithm) == (KeyType.ED25519, None, None)


def test_other_key_types_are_refused() -> None:
    refused(make_csr(ed448.Ed448PrivateKey.generate()), ErrorCode.KEY_POLICY_VIOLATION, "Ed448 keys are not allowed")


# -- subjectAltNames ----------------------------------------------------------


def test_request_sans_must_agree_with_the_csr(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("web.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))])
    ok = validate_csr(
        csr, PROFILE, ["ip:10.0.0.7", "dns:WEB.example.com", "dns:web.example.com"]
    )  # order, case, duplicates aside
    assert ok.sans == ("dns:web.example.com", "ip:10.0.0.7")
    message = refused(
        csr,
        ErrorCode.SAN_INVALID,
        "the request's subjectAltNames and the CSR's differ",
        sans=["dns:web.example.com", "dns:api.example.com"],
    )
    assert "only in the request: 'dns:api.example.com'" in message and "only in the CSR: 'ip:10.0.0.7'" in message


def test_request_sans_are_used_when_the_csr_has_none(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=None)
    assert validate_csr(csr, PROFILE, ["dns:web.example.com"]).sans == ("dns:web.example.com",)


def test_no_san_anywhere_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    refused(make_csr(p256, sans=None), ErrorCode.SAN_INVALID, "neither the request nor the CSR names one")


def test_malformed_request_san_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    refused(make_csr(p256), ErrorCode.SAN_INVALID, "'dns:web_1.example.com'", sans=["dns:web_1.example.com"])


def test_malformed_csr_san_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("web.*.example.com")], subject=())
    refused(csr, ErrorCode.SAN_INVALID, "the CSR's dns subjectAltName: 'web.*.example.com'")


def test_forbidden_san_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("web.example.com"), x509.DNSName("www.evil.org")])
    refused(csr, ErrorCode.SAN_NOT_ALLOWED, "subjectAltName 'dns:www.evil.org' is not allowed by profile 'web'")


def test_wildcard_where_not_allowed_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("*.example.com")], subject=())
    refused(csr, ErrorCode.SAN_NOT_ALLOWED, "the profile does not allow wildcard names")
    wild = profile(domain_rules={"dns_suffixes": ["example.com"], "allow_wildcards": True})
    assert validate_csr(csr, wild).sans == ("dns:*.example.com",)


def test_ip_san_where_not_allowed_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    ip = ipaddress.ip_address("10.0.0.7")
    csr = make_csr(p256, sans=[x509.IPAddress(ip)], subject=())
    refused(
        csr,
        ErrorCode.SAN_NOT_ALLOWED,
        "the profile allows no IP addresses",
        profile(domain_rules={"dns_suffixes": ["example.com"]}),
    )
    other = profile(domain_rules={"ip_networks": ["192.168.0.0/16"]})
    refused(csr, ErrorCode.SAN_NOT_ALLOWED, "outside the profile's networks 192.168.0.0/16", other)
    assert validate_csr(csr, PROFILE).sans == ("ip:10.0.0.7",)


def test_unsupported_san_kind_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    other = x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03a@b")
    csr = make_csr(p256, sans=[x509.DNSName("web.example.com"), other])
    refused(csr, ErrorCode.SAN_NOT_ALLOWED, "the CSR has a OtherName subjectAltName")


# -- SUBJECT_NOT_ALLOWED ------------------------------------------------------


def test_empty_subject_is_fine(p256: ec.EllipticCurvePrivateKey) -> None:
    result = validate_csr(make_csr(p256, subject=()), PROFILE)
    assert (result.subject, result.common_name) == ("", None)


def test_cn_must_be_one_of_the_sans(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, subject=[(NameOID.COMMON_NAME, "other.example.com")])
    refused(
        csr, ErrorCode.SUBJECT_NOT_ALLOWED, "CN 'other.example.com' is not one of the certificate's DNS or IP subjectAltNames"
    )
    relaxed = profile(subject_rules={"cn_must_be_san": False})
    assert validate_csr(csr, relaxed).common_name == "other.example.com"


def test_cn_may_be_an_ip_san(p256: ec.EllipticCurvePrivateKey) -> None:
    ip = ipaddress.ip_address("10.0.0.9")
    csr = make_csr(p256, sans=[x509.IPAddress(ip)], subject=[(NameOID.COMMON_NAME, "10.0.0.9")])
    assert validate_csr(csr, PROFILE).common_name == "10.0.0.9"


def test_attribute_outside_the_allowed_ones_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, subject=[(NameOID.COMMON_NAME, "web.example.com"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops")])
    refused(csr, ErrorCode.SUBJECT_NOT_ALLOWED, "attribute OU is not allowed (allowed: CN)")


def test_unknown_attribute_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, subject=[(NameOID.DOMAIN_COMPONENT, "example")])
    refused(csr, ErrorCode.SUBJECT_NOT_ALLOWED, "attribute DC is not allowed")


def test_repeated_attribute_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, subject=[(NameOID.COMMON_NAME, "web.example.com"), (NameOID.COMMON_NAME, "web.example.com")])
    refused(csr, ErrorCode.SUBJECT_NOT_ALLOWED, "attribute CN appears more than once")


ORG = profile(
    subject_rules={"allowed_attributes": ["CN", "O"], "required_attributes": ["O"], "fixed_values": {"O": "Example Ltd"}}
)


def test_fixed_and_required_values(p256: ec.EllipticCurvePrivateKey) -> None:
    good = make_csr(p256, subject=[(NameOID.ORGANIZATION_NAME, "Example Ltd"), (NameOID.COMMON_NAME, "web.example.com")])
    assert validate_csr(good, ORG).subject == "CN=web.example.com,O=Example Ltd"
    wrong = make_csr(p256, subject=[(NameOID.ORGANIZATION_NAME, "Evil Corp")])
    refused(wrong, ErrorCode.SUBJECT_NOT_ALLOWED, "O must be 'Example Ltd', not 'Evil Corp'", ORG)
    missing = make_csr(p256, subject=[(NameOID.COMMON_NAME, "web.example.com")])
    refused(missing, ErrorCode.SUBJECT_NOT_ALLOWED, "attribute O is required", ORG)


def test_refusal_messages_never_carry_pem_bodies(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, sans=[x509.DNSName("www.evil.org")], subject=())
    message = refused(csr, ErrorCode.SAN_NOT_ALLOWED, "www.evil.org")
    assert not re.search(r"[A-Za-z0-9+/]{40,}", message)

"""CSR validation against a provisioning profile: `validate_csr`.

Checks, in order, each with its stable code:

1. a private key anywhere in the input: PRIVATE_KEY_SUBMITTED (the message
   names the key's SHA-256 only; the key is neither stored nor echoed);
2. size (16 KiB), exactly one PEM block, a certificate request, nothing but
   whitespace around it, parsable PKCS#10: CSR_INVALID;
3. the CSR's self-signature, with SHA-256 or stronger (Ed25519 needs no hash): CSR_SIGNATURE_INVALID;
4. the key against the profile's key policy (RSA bits and exponent, EC curve,
   Ed25519, nothing else): KEY_POLICY_VIOLATION;
5. extensions readable and not asking for a CA certificate: CSR_INVALID;
6. subjectAltName syntax: SAN_INVALID, and which SANs the certificate gets:
   the request's ``sans`` when the CSR has none, the CSR's when the request
   gives none, and when both are given they must be the same set (order,
   duplicates and letter case aside): SAN_INVALID otherwise; at least one;
7. the profile's domain rules: SAN_NOT_ALLOWED;
8. the profile's subject rules: SUBJECT_NOT_ALLOWED.

Other requested extensions (key usage, EKU) are left to the emCA certificate
profile, which decides what the certificate carries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import MAX_CSR_CHARS, MAX_SANS, KeyAlgorithm
from services.common.contracts.redaction import contains_private_key, redact_private_keys
from services.gateway.policy.domains import check_sans_allowed
from services.gateway.policy.names import San, parse_san, san_from_general_name
from services.gateway.policy.profile import EcCurve, KeyPolicy, KeyType, ProvisioningProfile, SubjectAttribute
from services.gateway.policy.subject import check_subject
from services.gateway.policy.violation import PolicyViolation, shown

_PEM_BEGIN = re.compile(rb"-----BEGIN ([^\r\n-]{1,64})-----")
_CSR_LABELS = {b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"}
_ACCEPTED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_CURVES = {"secp256r1": EcCurve.P256, "secp384r1": EcCurve.P384, "secp521r1": EcCurve.P521}
_RSA_MIN_EXPONENT = 65537
_RSA_MAX_EXPONENT = 2**256 - 1
_KEY_ALGORITHMS = {
    (KeyType.RSA, 2048): KeyAlgorithm.RSA_2048,
    (KeyType.RSA, 3072): KeyAlgorithm.RSA_3072,
    (KeyType.RSA, 4096): KeyAlgorithm.RSA_4096,
    (KeyType.EC, 256): KeyAlgorithm.EC_P256,
    (KeyType.EC, 384): KeyAlgorithm.EC_P384,
}


@dataclass(frozen=True)
class ValidatedCsr:
    """A CSR that passed every check of a profile."""

    csr_pem: str  # the CSR re-encoded as one clean PEM block
    sans: tuple[str, ...]  # normalised certrail SANs ("dns:a.example.com"), the certificate's names
    subject: str  # RFC 4514 ("" when empty)
    common_name: str | None
    key_type: KeyType
    key_size: int  # RSA modulus bits, EC curve bits, 256 for Ed25519
    curve: EcCurve | None
    public_key_sha256: str  # hex SHA-256 of the SubjectPublicKeyInfo (DER)
    signature_hash: str | None  # e.g. "sha256"; None for Ed25519

    @property
    def key_algorithm(self) -> KeyAlgorithm | None:
        """The contracts' KeyAlgorithm for this key, where one exists (e.g. RSA-2048)."""
        return _KEY_ALGORITHMS.get((self.key_type, self.key_size))


def _invalid(message: str) -> PolicyViolation:
    return PolicyViolation(ErrorCode.CSR_INVALID, message)


def _as_bytes(csr_pem: str | bytes) -> bytes:
    if isinstance(csr_pem, bytes):
        return csr_pem
    return csr_pem.encode("utf-8", errors="surrogatepass")


def _check_no_private_key(raw: bytes) -> None:
    if contains_private_key(raw):
        redacted, _ = redact_private_keys(raw)
        digests = re.findall(rb"REMOVED (sha256:[0-9a-f]{64})", redacted)
        fingerprint = f" ({', '.join(d.decode() for d in digests[:3])})" if digests else ""
        raise PolicyViolation(
            ErrorCode.PRIVATE_KEY_SUBMITTED,
            f"the input contains a private key{fingerprint}: send only the CSR. The key was not stored;"
            " treat it as exposed and generate a new one",
        )


def _load(raw: bytes) -> x509.CertificateSigningRequest:
    if len(raw) > MAX_CSR_CHARS:
        raise _invalid(f"the CSR is {len(raw)} bytes, over the {MAX_CSR_CHARS}-byte limit")
    if not raw.isascii():
        raise _invalid("the CSR is not ASCII PEM text")
    blocks = _PEM_BEGIN.findall(raw)
    if not blocks:
        raise _invalid("no PEM block found: expected one '-----BEGIN CERTIFICATE REQUEST-----' block")
    if len(blocks) > 1:
        raise _invalid(f"expected exactly one PEM block, found {len(blocks)}")
    label = blocks[0]
    if label not in _CSR_LABELS:
        raise _invalid(f"the PEM block is a {label.decode()}, not a CERTIFICATE REQUEST")
    start = raw.index(b"-----BEGIN ")
    end_marker = b"-----END " + label + b"-----"
    end = raw.find(end_marker)
    if end < 0:
        raise _invalid(f"the PEM block has no '-----END {label.decode()}-----' line")
    if raw[:start].strip() or raw[end + len(end_marker) :].strip():
        raise _invalid("there is text outside the PEM block; send the CSR alone")
    try:
        return x509.load_pem_x509_csr(raw)
    except ValueError as exc:
        raise _invalid(f"the CSR is not a parsable PKCS#10 request ({exc})") from None


def _check_signature(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise PolicyViolation(
            ErrorCode.CSR_SIGNATURE_INVALID,
            f"the CSR's signature algorithm {csr.signature_algorithm_oid.dotted_string} is not supported",
        ) from None
    if algorithm is not None and not isinstance(algorithm, _ACCEPTED_HASHES):
        raise PolicyViolation(
            ErrorCode.CSR_SIGNATURE_INVALID, f"the CSR is signed with {algorithm.name}; SHA-256 or stronger is required"
        )
    try:
        valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise PolicyViolation(ErrorCode.CSR_SIGNATURE_INVALID, f"the CSR's signature cannot be checked ({exc})") from None
    if not valid:
        raise PolicyViolation(
            ErrorCode.CSR_SIGNATURE_INVALID,
            "the CSR's signature does not verify with its own public key (corrupted, or not signed by the key's holder)",
        )
    return algorithm.name if algorithm is not None else None


def _key_violation(profile: str, policy: KeyPolicy, what: str) -> PolicyViolation:
    return PolicyViolation(ErrorCode.KEY_POLICY_VIOLATION, f"{what}; profile {profile!r} allows {policy.allowed_summary()}")


def _check_key(csr: x509.CertificateSigningRequest, profile: ProvisioningProfile) -> tuple[KeyType, int, EcCurve | None, bytes]:
    policy = profile.key_policy
    try:
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError):
        raise _key_violation(profile.name, policy, "the CSR's key type is not supported") from None
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if policy.rsa_min_bits is None:
            raise _key_violation(profile.name, policy, "RSA keys are not allowed")
        if bits < policy.rsa_min_bits:
            raise _key_violation(
                profile.name, policy, f"the RSA key has {bits} bits, fewer than the {policy.rsa_min_bits} required"
            )
        if bits > policy.rsa_max_bits:
            raise _key_violation(
                profile.name, policy, f"the RSA key has {bits} bits, more than the {policy.rsa_max_bits} allowed"
            )
        exponent = key.public_numbers().e
        if exponent % 2 == 0 or not _RSA_MIN_EXPONENT <= exponent <= _RSA_MAX_EXPONENT:
            raise _key_violation(
                profile.name, policy, f"the RSA public exponent {exponent} is not an odd number from 65537 to 2^256-1"
            )
        return KeyType.RSA, bits, None, spki
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(key.curve.name)
        if curve is None or curve not in policy.ec_curves:
            shown_curve = curve or key.curve.name
            raise _key_violation(profile.name, policy, f"the EC curve {shown_curve} is not allowed")
        return KeyType.EC, key.curve.key_size, curve, spki
    if isinstance(key, ed25519.Ed25519PublicKey):
        if not policy.ed25519:
            raise _key_violation(profile.name, policy, "Ed25519 keys are not allowed")
        return KeyType.ED25519, 256, None, spki
    kind = type(key).__name__.removeprefix("_").replace("PublicKey", "")
    raise _key_violation(profile.name, policy, f"{kind} keys are not allowed")


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[San]:
    try:
        extensions = csr.extensions
    except (x509.DuplicateExtension, ValueError) as exc:
        raise _invalid(f"the CSR's requested extensions cannot be read ({exc})") from None
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise _invalid("the CSR asks for a CA certificate (basicConstraints CA:TRUE); certrail issues end-entity certificates")
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    if len(names) > MAX_SANS:
        raise PolicyViolation(ErrorCode.SAN_INVALID, f"the CSR has {len(names)} subjectAltNames, over the limit of {MAX_SANS}")
    return [san_from_general_name(name) for name in names]


def _dedupe(sans: Sequence[San]) -> list[San]:
    return list(dict.fromkeys(sans))


def resolve_sans(csr_sans: Sequence[San], requested_sans: Sequence[str] | None) -> list[San]:
    """The certificate's SANs from the CSR's and the request's (see the module
    docstring, rule 6); raises PolicyViolation(SAN_INVALID)."""
    if requested_sans is not None and len(requested_sans) > MAX_SANS:
        raise PolicyViolation(
            ErrorCode.SAN_INVALID, f"the request names {len(requested_sans)} subjectAltNames, over the limit of {MAX_SANS}"
        )
    requested = _dedupe([parse_san(text) for text in requested_sans or []])
    from_csr = _dedupe(csr_sans)
    if requested and from_csr:
        only_request = sorted(set(requested) - set(from_csr))
        only_csr = sorted(set(from_csr) - set(requested))
        if only_request or only_csr:
            parts = []
            if only_request:
                parts.append("only in the request: " + ", ".join(shown(str(s)) for s in only_request[:10]))
            if only_csr:
                parts.append("only in the CSR: " + ", ".join(shown(str(s)) for s in only_csr[:10]))
            raise PolicyViolation(
                ErrorCode.SAN_INVALID, "the request's subjectAltNames and the CSR's differ (" + "; ".join(parts) + ")"
            )
        return from_csr
    sans = from_csr or requested
    if not sans:
        raise PolicyViolation(ErrorCode.SAN_INVALID, "no subjectAltName: neither the request nor the CSR names one")
    return sans


def validate_csr(csr_pem: str | bytes, profile: ProvisioningProfile, requested_sans: Sequence[str] | None = None) -> ValidatedCsr:
    """Validate a PEM CSR against ``profile`` (see the module docstring for the
    checks and their order). Raises `PolicyViolation`; returns what the
    command needs."""
    raw = _as_bytes(csr_pem)
    _check_no_private_key(raw)
    csr = _load(raw)
    signature_hash = _check_signature(csr)
    key_type, key_size, curve, spki = _check_key(csr, profile)
    sans = resolve_sans(_csr_sans(csr), requested_sans)
    check_sans_allowed(sans, profile)
    attributes = check_subject(csr.subject, sans, profile)
    return ValidatedCsr(
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        sans=tuple(str(san) for san in sans),
        subject=csr.subject.rfc4514_string(),
        common_name=attributes.get(SubjectAttribute.CN),
        key_type=key_type,
        key_size=key_size,
        curve=curve,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
        signature_hash=signature_hash,
    )

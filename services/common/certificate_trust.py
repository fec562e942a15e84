"""Checks on an issued certificate that both the issuer (before it announces a certificate) and
the deployer (before it installs one) make: is it signed by the connector's pinned issuing CA,
and whose public key does it carry. Pure functions of PEM text; no I/O.

- `load_certificate`: exactly one PEM block, an X.509 certificate.
- `load_ca`: a CA certificate with its SHA-256 fingerprint (cached: the same text for every
  certificate of a connector).
- `pinned_issuing_ca`: the first certificate of a chain, once it is known to hash to the pin.
- `check_signed_by`: the leaf names that CA as its issuer and its signature verifies under it.
- `spki_der` / `public_key_sha256`: the leaf's DER SubjectPublicKeyInfo and its SHA-256.

Each check raises `UntrustedCertificate` naming what differs; callers map it to their own error
code (the issuer: CERTIFICATE_MISMATCH; the deployer: CERTIFICATE_UNTRUSTED)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["CaCertificate", "UntrustedCertificate", "check_signed_by", "load_ca", "load_certificate", "pinned_issuing_ca",
           "public_key_sha256", "short", "spki_der"]

_PEM_BEGIN = "-----BEGIN "


class UntrustedCertificate(Exception):
    """A certificate (or the CA it is held against) failed a check; ``message`` says which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CaCertificate:
    certificate: x509.Certificate
    sha256: str  # of the DER certificate, lower-case hex
    subject: str  # RFC 4514

    def describe(self) -> str:
        return f"{self.subject} (sha256 {self.sha256})"


def short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_certificate(certificate_pem: str, what: str = "certificate_pem") -> x509.Certificate:
    blocks = certificate_pem.count(_PEM_BEGIN)
    if blocks != 1:
        raise UntrustedCertificate(f"{what} holds {blocks} PEM blocks, expected exactly one certificate")
    try:
        return x509.load_pem_x509_certificates(certificate_pem.encode())[0]
    except ValueError as exc:
        raise UntrustedCertificate(f"{what} is not a PEM X.509 certificate: {short(exc)}") from None


@lru_cache(maxsize=256)
def load_ca(pem: str) -> CaCertificate:
    """A CA certificate and its fingerprint; raises ValueError if ``pem`` is no certificate."""
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return CaCertificate(certificate, certificate.fingerprint(hashes.SHA256()).hex(), certificate.subject.rfc4514_string())


def pinned_issuing_ca(chain_pem: Sequence[str], pinned_sha256: str, what: str = "the chain") -> CaCertificate:
    """``chain_pem[0]``, once it is known to hash (SHA-256 over DER) to ``pinned_sha256``."""
    if not chain_pem:
        raise UntrustedCertificate(f"{what} is empty: no issuing CA certificate to hold against the pin")
    try:
        ca = load_ca(chain_pem[0])
    except ValueError as exc:
        raise UntrustedCertificate(f"{what} does not start with a certificate: {short(exc)}") from None
    if ca.sha256 != pinned_sha256.lower():
        raise UntrustedCertificate(f"{what} starts with {ca.describe()}, not the pinned issuing CA (sha256 {pinned_sha256.lower()})")
    return ca


def check_signed_by(leaf: x509.Certificate, ca: CaCertificate) -> None:
    """The leaf names ``ca`` as its issuer and its signature verifies under ``ca``'s key."""
    if leaf.issuer != ca.certificate.subject:
        raise UntrustedCertificate(
            f"issuer differs: the certificate names {leaf.issuer.rfc4514_string()}, the pinned issuing CA is {ca.subject}")
    try:
        leaf.verify_directly_issued_by(ca.certificate)
    except InvalidSignature:
        raise UntrustedCertificate(
            f"signature does not verify: the certificate was not signed by the pinned issuing CA {ca.describe()}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UntrustedCertificate(
            f"signature cannot be checked against the pinned issuing CA {ca.describe()}: {short(exc)}") from None


def spki_der(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(certificate: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    try:
        return hashlib.sha256(spki_der(certificate.public_key())).hexdigest()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UntrustedCertificate(f"the certificate's public key is unreadable: {short(exc)}") from None

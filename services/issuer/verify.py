"""Check a certificate emCA issued before the issuer announces it.

`verify_issued` is a pure function (the clock is passed in): it holds the certificate against
the CSR it answers, the connector's pinned issuing CA and the SANs that were asked for, and
returns the facts the CertificateIssued event carries, or raises `CertificateMismatch`
(ErrorCode.CERTIFICATE_MISMATCH) naming exactly what differs:

1. ``certificate_pem`` is exactly one PEM block, an X.509 certificate; its serial is the one
   emCA reported.
2. Its public key is the CSR's (DER SubjectPublicKeyInfo compared byte for byte).
3. It was signed by the pinned issuing CA: ``pinned_chain_pem[0]`` hashes (SHA-256 over DER) to
   ``pinned_ca_sha256``, the certificate's issuer is that CA's subject and its signature verifies
   under that CA's key. A chain emCA sent must start with that same CA; the pinned chain is the
   one announced.
4. Its subjectAltNames equal the requested ones as a set (the CSR's when none were requested);
   DNS names compare case-insensitively, IP addresses after normalisation.
5. It is valid now: notBefore at most `CLOCK_SKEW` ahead of ``now``, notAfter after ``now``.

It runs for every certificate, so each PEM is parsed once per call, and the pinned CA (the same
text for every certificate of a connector) once per process (`_load_ca` is cached).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from services.common.certificate_trust import (
    CaCertificate,
    UntrustedCertificate,
    check_signed_by,
    load_ca,
    load_certificate,
    spki_der,
)
from services.common.certificate_trust import short as _short
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import normalise_serial
from services.common.emca.types import IssuedCertificate

__all__ = ["CLOCK_SKEW", "CertificateMismatch", "VerifiedCertificate", "verify_issued"]

#: how far ahead of our clock a certificate's notBefore may be (emCA's clock may run ahead)
CLOCK_SKEW = timedelta(minutes=5)

class CertificateMismatch(Exception):
    """The certificate emCA returned is not the one that was asked for (or not from the pinned CA)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{ErrorCode.CERTIFICATE_MISMATCH}: {message}")
        self.code = ErrorCode.CERTIFICATE_MISMATCH
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


@dataclass(frozen=True)
class VerifiedCertificate:
    """A certificate that passed `verify_issued`, with the facts the issuer announces."""

    serial: str  # lower-case hex, no leading zeros: the certificate's own serial
    certificate_pem: str  # the leaf alone, re-encoded PEM
    chain_pem: tuple[str, ...]  # the pinned chain, issuing CA first
    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    sans: tuple[str, ...]  # certrail SAN syntax ("dns:…", "ip:…", "email:…", "uri:…"), sorted
    not_before: datetime  # aware UTC
    not_after: datetime  # aware UTC
    public_key_sha256: str  # lower-case hex SHA-256 of the leaf's DER SubjectPublicKeyInfo


def verify_issued(
    issued: IssuedCertificate,
    *,
    csr_pem: str,
    requested_sans: Sequence[str],
    pinned_ca_sha256: str,
    pinned_chain_pem: Sequence[str],
    now: datetime,
) -> VerifiedCertificate:
    """Check ``issued`` against its CSR, the requested SANs and the pinned issuing CA; raise
    `CertificateMismatch` naming the first thing that differs. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    leaf = _load_leaf(issued.certificate_pem)
    serial = _check_serial(leaf, issued.serial)
    csr = _load_csr(csr_pem)
    spki = _check_public_key(leaf, csr)
    ca = _check_signed_by_pinned_ca(leaf, issued.chain_pem, pinned_ca_sha256, pinned_chain_pem)
    sans = _check_sans(leaf, requested_sans, None if requested_sans else _csr_sans(csr))
    not_before, not_after = _check_validity(leaf, now)
    return VerifiedCertificate(
        serial=serial,
        certificate_pem=leaf.public_bytes(Encoding.PEM).decode("ascii"),
        chain_pem=tuple(pinned_chain_pem),
        subject=leaf.subject.rfc4514_string(),
        issuer=ca.subject,  # the leaf's issuer equals it
        sans=sans,
        not_before=not_before,
        not_after=not_after,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
    )


# -- 1. one certificate, its serial ----------------------------------------------------------------


def _load_leaf(certificate_pem: str) -> x509.Certificate:
    try:
        return load_certificate(certificate_pem)
    except UntrustedCertificate as exc:
        raise CertificateMismatch(exc.message) from None


def _check_serial(leaf: x509.Certificate, reported: str) -> str:
    try:
        own = normalise_serial(leaf.serial_number)
    except ValueError:
        raise CertificateMismatch(f"the certificate's serial number is negative ({leaf.serial_number})") from None
    try:
        expected = normalise_serial(reported)
    except ValueError:
        raise CertificateMismatch(f"serial differs: emCA reported {reported!r}, the certificate's serial is {own}") from None
    if own != expected:
        raise CertificateMismatch(f"serial differs: emCA reported {expected}, the certificate's serial is {own}")
    return own


# -- 2. the CSR's key ------------------------------------------------------------------------------


def _check_public_key(leaf: x509.Certificate, csr: x509.CertificateSigningRequest) -> bytes:
    """The leaf's DER SubjectPublicKeyInfo, once it is known to equal the CSR's."""
    try:
        certificate_spki = spki_der(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateMismatch(f"the certificate's public key is unreadable: {_short(exc)}") from None
    try:
        csr_spki = spki_der(csr.public_key())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateMismatch(f"the CSR's public key is unreadable: {_short(exc)}") from None
    if certificate_spki != csr_spki:
        raise CertificateMismatch(
            "public key differs from the CSR's: certificate key sha256 "
            f"{hashlib.sha256(certificate_spki).hexdigest()}, CSR key sha256 {hashlib.sha256(csr_spki).hexdigest()}"
        )
    return certificate_spki


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CertificateMismatch(f"the CSR does not parse: {_short(exc)}") from None


# -- 3. the pinned issuing CA ----------------------------------------------------------------------


#: the shared checks live in services/common/certificate_trust.py (the deployer makes them too)
_Ca = CaCertificate
_load_ca = load_ca


def _check_signed_by_pinned_ca(
    leaf: x509.Certificate, emca_chain: Sequence[str], pinned_ca_sha256: str, pinned_chain: Sequence[str]
) -> _Ca:
    """The pinned issuing CA, once the leaf is known to be signed by it."""
    if not pinned_chain:
        raise CertificateMismatch("no pinned chain: the connector pins no issuing CA certificate")
    try:
        ca = _load_ca(pinned_chain[0])
    except ValueError as exc:
        raise CertificateMismatch(f"the pinned issuing CA certificate does not parse: {_short(exc)}") from None
    if ca.sha256 != pinned_ca_sha256.lower():
        raise CertificateMismatch(
            f"the pin is inconsistent: the pinned chain starts with {ca.describe()}, not the pinned sha256 {pinned_ca_sha256}"
        )
    if emca_chain:
        try:
            sent = _load_ca(emca_chain[0])
        except ValueError as exc:
            raise CertificateMismatch(f"emCA's chain does not start with a certificate: {_short(exc)}") from None
        if sent.sha256 != ca.sha256:
            raise CertificateMismatch(
                f"emCA's chain starts with {sent.describe()}, not the pinned issuing CA {ca.describe()}"
            )
    try:
        check_signed_by(leaf, ca)
    except UntrustedCertificate as exc:
        raise CertificateMismatch(exc.message) from None
    return ca


# -- 4. subjectAltNames ----------------------------------------------------------------------------


def _csr_sans(csr: x509.CertificateSigningRequest) -> frozenset[str]:
    """The SANs the CSR asks for, in certrail syntax."""
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateMismatch(f"the CSR's extensions do not parse: {_short(exc)}") from None
    return frozenset(_san_of(name) for name in extension.value)


def _check_sans(leaf: x509.Certificate, requested: Sequence[str], csr_sans: frozenset[str] | None) -> tuple[str, ...]:
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        present: frozenset[str] = frozenset()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateMismatch(f"the certificate's extensions do not parse: {_short(exc)}") from None
    else:
        present = frozenset(_san_of(name) for name in extension.value)
    expected = frozenset(_normalise_requested(san) for san in requested) if csr_sans is None else csr_sans
    if present != expected:
        parts = []
        if missing := expected - present:
            parts.append("missing " + _listing(missing))
        if unexpected := present - expected:
            parts.append("unexpected " + _listing(unexpected))
        against = "" if csr_sans is None else " (none requested: compared with the CSR's SANs)"
        raise CertificateMismatch("SANs differ: " + ", ".join(parts) + against)
    return tuple(sorted(present))


def _san_of(name: x509.GeneralName) -> str:
    """A certificate's GeneralName in certrail SAN syntax; kinds certrail never requests get a
    descriptive prefix of their own, so they always show up as unexpected."""
    if isinstance(name, x509.DNSName):
        return "dns:" + name.value.lower()
    if isinstance(name, x509.IPAddress):
        return f"ip:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return "email:" + _email(name.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        return "uri:" + name.value
    if isinstance(name, x509.DirectoryName):
        return "dirname:" + name.value.rfc4514_string()
    if isinstance(name, x509.RegisteredID):
        return "rid:" + name.value.dotted_string
    if isinstance(name, x509.OtherName):
        return "othername:" + name.type_id.dotted_string
    return f"other:{name!r}"


def _normalise_requested(san: str) -> str:
    """A requested SAN as `_san_of` spells the same name. What cannot be normalised (an IP that
    does not parse, an unknown kind) stays as given: no certificate matches it, so it is reported
    as missing."""
    kind, _, value = san.partition(":")
    kind = kind.lower()
    if kind == "dns":
        return "dns:" + value.lower()
    if kind == "ip":
        try:
            return f"ip:{ipaddress.ip_address(value)}"
        except ValueError:
            return san
    if kind == "email":
        return "email:" + _email(value)
    if kind == "uri":
        return "uri:" + value
    return san


def _email(address: str) -> str:
    """The local part is case-sensitive, the domain is not (RFC 5280, 4.2.1.6)."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address.lower()


def _listing(sans: Iterable[str]) -> str:
    return ", ".join(sorted(sans))


# -- 5. validity -----------------------------------------------------------------------------------


def _check_validity(leaf: x509.Certificate, now: datetime) -> tuple[datetime, datetime]:
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_before > now + CLOCK_SKEW:
        raise CertificateMismatch(
            f"not yet valid: notBefore {not_before.isoformat()} is more than {_minutes(CLOCK_SKEW)} after now "
            f"({now.isoformat()})"
        )
    if not_after <= now:
        raise CertificateMismatch(f"already expired: notAfter {not_after.isoformat()} is not after now ({now.isoformat()})")
    return not_before, not_after


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} minutes"

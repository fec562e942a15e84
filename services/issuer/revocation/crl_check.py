"""Holding a CRL against the connector's pinned issuing CA, and finding a serial on it. Pure functions of
bytes and PEM text (the clock is passed in); ``cryptography`` parses and verifies, nothing here reads ASN.1.

- `distribution_points`: the HTTP(S) URIs of a certificate's cRLDistributionPoints extension, in order.
- `verify_crl`: the DER CRL is signed by the pinned issuing CA (``pinned_chain_pem[0]``, which must hash
  to the pin), names it as its issuer and is a complete CRL (not a delta); raises `CrlUntrusted`.
- `find_serial`: is the serial on it, and with which reason (`Listed`, `NotListed`, `ReasonMismatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from services.common.certificate_trust import UntrustedCertificate, pinned_issuing_ca, short
from services.common.contracts.fields import RevocationReason

__all__ = ["CrlUntrusted", "Listed", "NotListed", "ReasonMismatch", "VerifiedCrl", "distribution_points", "find_serial",
           "listed_reason_name", "verify_crl"]


class CrlUntrusted(Exception):
    """The bytes are no CRL, or not one the pinned issuing CA signed; ``message`` says which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class VerifiedCrl:
    crl: x509.CertificateRevocationList
    number: int | None  # the CRLNumber extension, if any
    this_update: datetime  # aware UTC
    next_update: datetime | None


@dataclass(frozen=True)
class Listed:
    revoked_at: datetime  # the entry's revocationDate (aware UTC)


@dataclass(frozen=True)
class NotListed:
    pass


@dataclass(frozen=True)
class ReasonMismatch:
    listed: str  # the entry's reason as RFC 5280 names it


def distribution_points(certificate: x509.Certificate) -> tuple[str, ...]:
    """The HTTP(S) full-name URIs of the certificate's CRL distribution points (none: empty)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return ()
    urls: list[str] = []
    for point in extension.value:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(("http://", "https://")):
                urls.append(name.value)
    return tuple(urls)


def verify_crl(der: bytes, pinned_chain_pem: Sequence[str], pinned_sha256: str) -> VerifiedCrl:
    """The CRL, once its signature verifies under the pinned issuing CA's key and it names that CA."""
    try:
        ca = pinned_issuing_ca(pinned_chain_pem, pinned_sha256, "the connector's pinned chain")
    except UntrustedCertificate as exc:
        raise CrlUntrusted(exc.message) from None
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CrlUntrusted(f"not a DER CRL: {short(exc)}") from None
    if crl.issuer != ca.certificate.subject:
        raise CrlUntrusted(f"the CRL's issuer is {crl.issuer.rfc4514_string()}, not the pinned issuing CA {ca.subject}")
    try:
        valid = crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise CrlUntrusted(f"the CRL's signature cannot be checked against {ca.describe()}: {short(exc)}") from None
    if not valid:
        raise CrlUntrusted(f"the CRL's signature does not verify under the pinned issuing CA {ca.describe()}")
    extensions = crl.extensions
    try:
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        pass
    else:
        raise CrlUntrusted("a delta CRL: the distribution point must serve a complete CRL")
    try:
        number: int | None = extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return VerifiedCrl(crl, number, crl.last_update_utc, crl.next_update_utc)


def listed_reason_name(entry: x509.RevokedCertificate) -> str:
    """The entry's reason as RFC 5280 names it (no reasonCode extension: unspecified, as RFC 5280 recommends)."""
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return RevocationReason.UNSPECIFIED.value
    return flag.value  # cryptography's values are RFC 5280's names (keyCompromise, certificateHold, ...)


def find_serial(crl: VerifiedCrl, serial: str, reason: RevocationReason) -> Listed | NotListed | ReasonMismatch:
    """Whether ``serial`` (hex) is on the CRL with ``reason``."""
    entry = crl.crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    if entry is None:
        return NotListed()
    listed = listed_reason_name(entry)
    if listed != reason.value:
        return ReasonMismatch(listed)
    return Listed(entry.revocation_date_utc)

"""Is the serial an operator gave the extra certificate of a possible duplicate? Pure functions of PEM text.

The extra certificate emCA issued for an uncertain first attempt carries the same CSR, so the same public key,
under another serial, signed by the connector's pinned issuing CA. `check_extra` refuses anything else with a
`NotTheExtra` naming the check that failed, its stable error code and HTTP status:

- the serial given is the delivered one                       -> 409 CERTIFICATE_MISMATCH
- emCA's certificate is not one certificate, or its serial differs from the one asked for -> 422 CERTIFICATE_MISMATCH
- its public key (SPKI SHA-256) differs from the CSR's          -> 422 CERTIFICATE_MISMATCH
- it does not chain to (is not signed by) the pinned issuing CA -> 422 CERTIFICATE_UNTRUSTED
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.certificate_trust import (
    UntrustedCertificate,
    check_signed_by,
    load_certificate,
    pinned_issuing_ca,
    public_key_sha256,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import normalise_serial


class NotTheExtra(Exception):
    """The serial is refused as the extra certificate: ``code`` and ``status`` are the API's answer."""

    def __init__(self, code: ErrorCode, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Expected:
    """What the extra certificate of one duplicate must be."""

    delivered_serial: str
    public_key_sha256: str  # the CSR's SPKI
    pinned_chain_pem: Sequence[str]  # the connector's pinned issuing CA first
    pinned_sha256: str


def serial_of(text: str) -> str:
    """An operator's serial (hex, with or without colons, any case) as certrail writes serials; ValueError if not one."""
    cleaned = text.strip().replace(":", "").lower()
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"{text[:60]!r} is not a certificate serial (hex, at most 20 bytes)")
    return normalise_serial(cleaned)


def refuse_delivered(serial: str, expected: Expected) -> None:
    """Before emCA is asked: the delivered certificate is never the extra one."""
    if serial == normalise_serial(expected.delivered_serial):
        raise NotTheExtra(ErrorCode.CERTIFICATE_MISMATCH, 409,
                          f"serial {serial} is the certificate certrail delivered, not an extra one")


def check_extra(serial: str, certificate_pem: str, expected: Expected) -> None:
    """``certificate_pem`` (emCA's certificate for ``serial``) is the extra certificate of the duplicate."""
    refuse_delivered(serial, expected)
    try:
        leaf = load_certificate(certificate_pem, f"emCA's certificate {serial}")
    except UntrustedCertificate as exc:
        raise NotTheExtra(ErrorCode.CERTIFICATE_MISMATCH, 422, exc.message) from None
    own = normalise_serial(leaf.serial_number) if leaf.serial_number >= 0 else None
    if own != serial:
        raise NotTheExtra(ErrorCode.CERTIFICATE_MISMATCH, 422, f"emCA answered certificate {own} for serial {serial}")
    try:
        key = public_key_sha256(leaf)
    except UntrustedCertificate as exc:
        raise NotTheExtra(ErrorCode.CERTIFICATE_MISMATCH, 422, exc.message) from None
    if key != expected.public_key_sha256.lower():
        raise NotTheExtra(ErrorCode.CERTIFICATE_MISMATCH, 422,
                          f"serial {serial} carries another public key (SPKI sha256 {key}) than the CSR of the duplicate "
                          f"issuance ({expected.public_key_sha256.lower()}): it is not its extra certificate")
    try:
        check_signed_by(leaf, pinned_issuing_ca(expected.pinned_chain_pem, expected.pinned_sha256,
                                                "the connector's pinned chain"))
    except UntrustedCertificate as exc:
        raise NotTheExtra(ErrorCode.CERTIFICATE_UNTRUSTED, 422, f"serial {serial}: {exc.message}") from None

"""Should the deployer install this CertificateIssued? A pure decision over the event and what
the deployer itself knows (`Expectation`, read from its own tables), in this order:

1. the gateway accepted a request for the certificate id, or the deployer holds a key it made for
   it, else CERTIFICATE_NOT_REQUESTED;
2. the leaf is signed by the connector's pinned issuing CA: the announced chain starts with the
   CA whose SHA-256 is the pin the deployer learnt for ``issued.connector``, the leaf names it as
   issuer and its signature verifies, else CERTIFICATE_UNTRUSTED;
3. the leaf is the one announced (its serial and its public-key hash are the event's), and its
   key is the expected one, else CERTIFICATE_MISMATCH: for a bot-held certificate a key the
   deployer generated for that certificate id; for any other, the key of the CSR in the latest
   request the gateway accepted for the id (``RequestAccepted.public_key_sha256``), when that
   request carried the hash (one from before the field expects no particular key).

Nothing in the event is believed without being checked against the certificate itself.

Some refusals may be cured by a record of the gateway's that has not arrived yet: the gateway's
and the issuer's events travel on two topics (decision 0016), so a deployer catching up can see a
certificate before the RequestAccepted that asked for it, before the ConnectorCreated that pinned
its CA, or before a renewal's RequestAccepted that names its new key. Those refusals are
``curable`` and the deployer parks the certificate instead of refusing it at once (parking.py)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from services.common.certificate_trust import (
    UntrustedCertificate,
    check_signed_by,
    load_certificate,
    pinned_issuing_ca,
    public_key_sha256,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.identity import normalise_serial


@dataclass(frozen=True)
class Expectation:
    """What the deployer knows of a certificate before it installs it."""

    pinned_ca_sha256: str | None  # the pin it learnt for the event's connector
    accepted: bool  # the gateway accepted a request for this certificate id
    bot_key_hashes: frozenset[str] = frozenset()  # keys it generated for this certificate id (bot-held)
    accepted_key_sha256: str | None = None  # the key of the CSR in the latest accepted request, if it said
    accepted_request_id: str | None = None  # that request, named in a refusal


class Refused(Exception):
    """The certificate must not be installed; ``code`` says which check failed."""

    def __init__(self, code: ErrorCode, message: str, *, curable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.curable = curable  # a gateway event not yet seen (an acceptance, a pin, a renewal's key) could cure it


def check_issued(issued: CertificateIssued, expected: Expectation) -> None:
    """Raise `Refused` unless ``issued`` may be installed."""
    if not expected.accepted and not expected.bot_key_hashes:
        raise Refused(ErrorCode.CERTIFICATE_NOT_REQUESTED,
                      f"no accepted request and no bot-held key expects certificate {issued.certificate_id}", curable=True)
    leaf = _chained_leaf(issued, expected.pinned_ca_sha256)
    _check_key(issued, leaf, expected)


def _chained_leaf(issued: CertificateIssued, pin: str | None) -> x509.Certificate:
    if pin is None:
        raise Refused(ErrorCode.CERTIFICATE_UNTRUSTED,
                      f"no pinned issuing CA is known for connector {issued.connector!r}", curable=True)
    try:
        leaf = load_certificate(issued.certificate, "the certificate")
        ca = pinned_issuing_ca(issued.chain, pin, f"the chain announced for connector {issued.connector!r}")
        check_signed_by(leaf, ca)
    except UntrustedCertificate as exc:
        raise Refused(ErrorCode.CERTIFICATE_UNTRUSTED, exc.message) from None
    return leaf


def _check_key(issued: CertificateIssued, leaf: x509.Certificate, expected: Expectation) -> None:
    try:
        actual = public_key_sha256(leaf)
    except UntrustedCertificate as exc:
        raise Refused(ErrorCode.CERTIFICATE_MISMATCH, exc.message) from None
    if actual != issued.public_key_sha256.lower():
        raise Refused(ErrorCode.CERTIFICATE_MISMATCH,
                      f"the certificate's public key (sha256 {actual}) is not the announced {issued.public_key_sha256}")
    try:
        serial_matches = leaf.serial_number >= 0 and normalise_serial(leaf.serial_number) == normalise_serial(issued.serial)
    except ValueError:
        serial_matches = False
    if not serial_matches:
        raise Refused(ErrorCode.CERTIFICATE_MISMATCH, f"the certificate's serial is not the announced {issued.serial}")
    if expected.bot_key_hashes:
        if actual not in expected.bot_key_hashes:
            raise Refused(ErrorCode.CERTIFICATE_MISMATCH,
                          f"the certificate's public key (sha256 {actual}) is none of the keys this deployer generated for "
                          f"{issued.certificate_id}")
    elif expected.accepted_key_sha256 is not None and actual != expected.accepted_key_sha256.lower():
        raise Refused(ErrorCode.CERTIFICATE_MISMATCH,
                      f"the certificate's public key (sha256 {actual}) is not the key of the CSR in the latest accepted "
                      f"request for {issued.certificate_id} ({expected.accepted_request_id}, sha256 "
                      f"{expected.accepted_key_sha256.lower()})", curable=True)

"""Helpers the dialect clients share: the subscriber probe CSR, fingerprints, CRL bodies."""

from __future__ import annotations

import hashlib
import uuid
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.emca.transport import RawResponse
from services.common.emca.types import (
    ConnectorFaultError,
    EmcaConnection,
    IssueOutcome,
    PendingIssuance,
    SubscriberProbe,
    TransientError,
)

PROBE_APPLICATION_PREFIX = "certrail-probe-"
PROBE_NAME = "subscriber-probe.certrail.invalid"


def certificate_sha256(pem: str) -> str:
    """SHA-256 (lower-case hex) of a PEM certificate's DER: what a connector pins."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@lru_cache(maxsize=1)
def probe_csr_pem() -> str:
    """A CSR that no CA may sign: a fresh P-256 key, a name under ``.invalid`` (RFC 2606), and a
    signature with its last byte flipped, so proof of possession fails.

    Used to ask emCA about a subscriber without issuing: emCA checks the profile and the
    subscriber before it looks at the CSR (the simulator does; documented as an assumption in
    docs/connectors.md), so an unknown subscriber is refused as such and a known one ends in a
    CSR refusal. The key is thrown away; nothing could use a certificate for it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PROBE_NAME)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(PROBE_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s: still DER, no longer valid
    broken = x509.load_der_x509_csr(bytes(der))
    assert not broken.is_signature_valid
    return broken.public_bytes(serialization.Encoding.PEM).decode("ascii")


def probe_application_id() -> str:
    """A fresh applicationId for a probe, never an issuance id (those are UUIDs)."""
    return PROBE_APPLICATION_PREFIX + uuid.uuid4().hex


def crl_der_from(response: RawResponse, where: str) -> bytes:
    """The DER CRL of a distribution point's answer (DER, or PEM tolerated)."""
    if response.status >= 500 or response.status in (408, 429):
        raise TransientError(f"{where} answered HTTP {response.status}", http_status=response.status)
    if response.status != 200:
        raise ConnectorFaultError(
            ErrorCode.CA_PROTOCOL_ERROR, f"{where} answered HTTP {response.status}", http_status=response.status
        )
    body = response.body
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(body).public_bytes(serialization.Encoding.DER)
        x509.load_der_x509_crl(body)
    except ValueError as exc:
        raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, f"{where} did not answer a CRL: {exc}") from None
    return body


async def probe_went_through(connection: EmcaConnection, outcome: IssueOutcome) -> SubscriberProbe:
    """emCA did not refuse the probe CSR (it should have): undo what can be undone, and say so."""
    if isinstance(outcome, PendingIssuance):
        return SubscriberProbe(
            note=f"subscriber accepted; emCA holds the probe for approval as request {outcome.request_id}: reject it there"
        )
    await connection.revoke(outcome.serial, RevocationReason.CESSATION_OF_OPERATION, remarks="certrail subscriber probe")
    return SubscriberProbe(
        note=f"subscriber accepted; emCA signed a CSR with a broken signature (serial {outcome.serial}, revoked at once)",
        issued_serial=outcome.serial,
    )

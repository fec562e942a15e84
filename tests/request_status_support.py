"""The issuer's outcome events for one request (``req-1`` about ``www``), as the gateway's request status
projection folds them (tests/unit/test_gateway_request_status.py and the migration's test), and the
result the API answered from the audit log before decision 0017's projection."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cryptography import x509

from services.common.certificate_trust import public_key_sha256
from services.common.contracts.envelope import Envelope, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import (
    CertificateIssued,
    CertificateRevoked,
    IssuanceFailed,
    IssuancePending,
    RevocationFailed,
)
from services.common.contracts.fields import ErrorInfo, RevocationReason
from services.common.contracts.identity import issuance_id
from tests.deployer_support import MiniCA
from tests.gateway_fixtures import NOW

CA = MiniCA()
CERT = "www"
ISSUANCE = issuance_id(CERT, 1)


def _event(data: Any, event_id: str, at: timedelta) -> Envelope:
    return make_event(data, id=event_id, source="/certrail/issuer", time=NOW + at, subject=data.certificate_id)


def pending(at: timedelta = timedelta(0), request_id: str = "req-1", event_id: str = "ev-pending") -> Envelope:
    return _event(IssuancePending(issuance_id=ISSUANCE, certificate_id=CERT, request_id=request_id, connector="emca",
                                  ca_request_id="CA-77"), event_id, at)


def issued(at: timedelta = timedelta(minutes=5), certificate_id: str = CERT, serial: int = 0x1A,
           event_id: str = "ev-issued") -> Envelope:
    pem, _ = CA.leaf(["www.example.com"], serial=serial)
    cert = x509.load_pem_x509_certificate(pem.encode())
    data = CertificateIssued(
        issuance_id=ISSUANCE, certificate_id=certificate_id, request_id="req-1", connector="emca", profile="web",
        serial=format(serial, "x"), certificate=pem, chain=list(CA.chain), subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(), sans=["dns:www.example.com"], not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc, public_key_sha256=public_key_sha256(cert))
    return _event(data, event_id, at)


def failed(at: timedelta = timedelta(minutes=3), request_id: str = "req-1", certificate_id: str = CERT,
           event_id: str = "ev-failed") -> Envelope:
    data = IssuanceFailed(issuance_id=ISSUANCE, certificate_id=certificate_id, request_id=request_id, connector="emca",
                          error=ErrorInfo(code=ErrorCode.CA_REJECTED, message="emCA refused the CSR"))
    return _event(data, event_id, at)


def revoked(at: timedelta = timedelta(minutes=9)) -> Envelope:
    data = CertificateRevoked(certificate_id=CERT, serial="1a", request_id="req-1", connector="emca",
                              reason=RevocationReason.KEY_COMPROMISE, revoked_at=NOW + at)
    return _event(data, "ev-revoked", at)


def revocation_failed(at: timedelta = timedelta(minutes=9)) -> Envelope:
    data = RevocationFailed(certificate_id=CERT, serial="1a", request_id="req-1", connector="emca",
                            error=ErrorInfo(code=ErrorCode.CA_REJECTED, message="no"))
    return _event(data, "ev-revocation-failed", at)


def audit_log_result(event: Envelope) -> dict[str, Any]:
    """The result the API answered when it read the outcome from the audit log (before 2026-12-06):
    the keys of the event's data as published."""
    data = json.loads(encode(event))["data"]
    if isinstance(event.data, CertificateIssued):
        return {k: data.get(k) for k in ("serial", "certificate", "chain", "subject", "issuer", "sans", "not_before",
                                         "not_after", "issuance_id", "replaces_serial")}
    if isinstance(event.data, CertificateRevoked):
        return {k: data.get(k) for k in ("serial", "reason", "revoked_at")}
    return {k: data.get(k) for k in ("error", "ca_request_id", "issuance_id", "serial") if k in data}

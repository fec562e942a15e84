"""ACME orders after finalize (issue 22 slice 2b): they follow the issuer's events, their certificates are downloaded
and revoked.

- `apply_in`: the gateway's fold of ``events.issuer`` (app.py's ``_fold_issuer_event``, in the same transaction as
  the gateway's other projections) calls it for CertificateIssued and IssuanceFailed. For the certificate id of an
  order (finalize.py: ``acme-<order id>``) and its finalize request: issued -> the certificate PEM and chain stored
  (``gateway_acme_certificates``, migration 0022) and the order valid (AcmeOrderValid); failed -> the order invalid
  with a problem carrying the failure's code (AcmeOrderInvalid). Idempotent: a redelivered event finds the order
  valid or invalid already and changes nothing. Their admin events are written to the outbox in the fold's
  transaction (actor ``certrail-issuer``) and published by the gateway's outbox relay. An order that becomes valid
  retires the certificates it renews (retire.py: its ``replaces``, or the same identifiers, account, profile and key
  type): superseded in the gateway's projection, CertificateSuperseded for the auditor's inventory; never revoked.
- `chain_pem`: the download (``application/pem-certificate-chain``: the leaf, then the chain).
- `revocation`: revokeCert's checks (RFC 8555 7.6): the certificate is one this door issued, the signer is the
  account that ordered it (kid) or holds the certificate's key (jwk), the reason is one certrail supports
  (badRevocationReason), the gateway's projection does not show it revoked (alreadyRevoked); the request then goes
  through the intake's revoke path (`Intake.from_acme`, the same as the HTTP door's revoke).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.contracts.admin import AcmeOrderInvalid, AcmeOrderValid, AdminOutcome
from services.common.contracts.envelope import Envelope
from services.common.contracts.events import CertificateIssued, IssuanceFailed
from services.common.contracts.fields import RevocationReason
from services.common.db_schema import GatewayAcmeCertificate, GatewayIssuedSerial
from services.gateway.acme import finalize, retire, store
from services.gateway.acme import orders_store as db
from services.gateway.acme.jws import AccountKey, b64url_decode
from services.gateway.acme.problems import ERROR_PREFIX, AcmeError, AcmeErrorType, malformed, unauthorized
from services.gateway.config.outbox import OUTBOX

log = logging.getLogger(__name__)

ISSUER_ACTOR = "certrail-issuer"
PEM_CHAIN = "application/pem-certificate-chain"
REVOKED = "revoked"  # issued.py's status of a revoked serial
#: RFC 5280 CRLReason codes -> certrail's reasons (6 certificateHold and 8 removeFromCRL are not revocations)
REASONS: dict[int, RevocationReason] = {
    0: RevocationReason.UNSPECIFIED, 1: RevocationReason.KEY_COMPROMISE, 2: RevocationReason.CA_COMPROMISE,
    3: RevocationReason.AFFILIATION_CHANGED, 4: RevocationReason.SUPERSEDED, 5: RevocationReason.CESSATION_OF_OPERATION,
    9: RevocationReason.PRIVILEGE_WITHDRAWN, 10: RevocationReason.AA_COMPROMISE,
}
#: issuer failure codes about the CSR itself (anything else is the server's: serverInternal)
_CSR_FAILURES = {"CSR_INVALID", "CA_REJECTED", "CERTIFICATE_MISMATCH"}


@dataclass(frozen=True)
class Certificate:
    order_id: str
    account_id: str
    certificate_id: str
    serial: str
    certificate: str
    chain: str


def _certificate(row: GatewayAcmeCertificate) -> Certificate:
    return Certificate(row.order_id, row.account_id, row.certificate_id, row.serial, row.certificate, row.chain)


def get_certificate(session: Session, order_id: str) -> Certificate | None:
    row = session.get(GatewayAcmeCertificate, order_id)
    return None if row is None else _certificate(row)


def certificate_by_serial(session: Session, serial: str) -> Certificate | None:
    row = session.scalars(select(GatewayAcmeCertificate).where(GatewayAcmeCertificate.serial == serial)).first()
    return None if row is None else _certificate(row)


def serial_status(session: Session, certificate_id: str, serial: str) -> str | None:
    """The gateway's projection of issued certificates (issued.py): active, superseded or revoked."""
    return session.scalars(select(GatewayIssuedSerial.status).where(GatewayIssuedSerial.certificate_id == certificate_id,
                                                                    GatewayIssuedSerial.serial == serial)).first()


def _joined(chain: list[str]) -> str:
    return "".join(pem.strip() + "\n" for pem in chain)


def chain_pem(certificate: Certificate) -> bytes:
    """The leaf, then the chain, each PEM block ending in a newline."""
    leaf, chain = certificate.certificate.strip(), certificate.chain.strip()
    return (leaf + "\n" + (chain + "\n" if chain else "")).encode("ascii")


# -- the fold ----------------------------------------------------------------------------------------------------


def apply_in(session: Session, event: Envelope, now: datetime | None = None) -> bool:
    """Fold a CertificateIssued or IssuanceFailed into the ACME order it is about (see the module docstring), in the
    caller's transaction; False when it is about no order of this door, or changed nothing (a redelivery)."""
    data = event.data
    if not isinstance(data, CertificateIssued | IssuanceFailed):
        return False
    order_id = finalize.order_id_of(data.certificate_id)
    if order_id is None:
        return False
    order = db.get_order(session, order_id)
    if order is None or data.request_id != finalize.request_id_of(order_id):
        log.warning("%s %s ignored: no ACME order finalized as %r", event.type, event.id, data.certificate_id[:200])
        return False
    if order.status not in (db.READY, db.PROCESSING):  # valid or invalid already: a redelivery
        return False
    account = store.get_account(session, order.account_id)
    requester = account.requester if account is not None else "unknown"
    at = now or datetime.now(UTC)
    about = {"requester": requester, "account_id": order.account_id, "order_id": order_id}
    if isinstance(data, CertificateIssued):
        session.add(GatewayAcmeCertificate(order_id=order_id, account_id=order.account_id,
                                           certificate_id=data.certificate_id, serial=data.serial,
                                           certificate=data.certificate, chain=_joined(data.chain), issued_at=event.time,
                                           created_at=at))
        db.move_order(session, order_id, order.status, db.VALID, at)
        change: dict[str, Any] = {"status": db.VALID, "certificate_id": data.certificate_id, "serial": data.serial}
        retired = retire.retire_renewed(session, order, event)
        if retired:
            change["retired"] = [{"certificate_id": r.certificate_id, "serial": r.serial, "reason": r.reason.value}
                                 for r in retired[:20]]
        OUTBOX.record(session, AcmeOrderValid, about=about, actor=ISSUER_ACTOR, outcome=AdminOutcome.SUCCEEDED, now=at,
                      change=change)
        return True
    code = str(data.error.code)
    kind = AcmeErrorType.BAD_CSR if code in _CSR_FAILURES else AcmeErrorType.SERVER_INTERNAL
    problem = {"type": ERROR_PREFIX + kind.value, "status": 400 if kind is AcmeErrorType.BAD_CSR else 500,
               "detail": f"the issuance failed: {code}: {data.error.message}"[:1000]}
    db.move_order(session, order_id, order.status, db.INVALID, at, problem)
    OUTBOX.record(session, AcmeOrderInvalid, about=about, actor=ISSUER_ACTOR, outcome=AdminOutcome.SUCCEEDED, now=at,
                  change={"status": db.INVALID, "code": code, "error": problem})
    return True


# -- revokeCert ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revocation:
    certificate: Certificate
    account: store.Account  # the account that ordered it (its requester asks)
    reason: RevocationReason


def _reason(payload: dict[str, Any]) -> RevocationReason:
    value = payload.get("reason", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed("reason must be an RFC 5280 CRLReason code (an integer)")
    if value not in REASONS:
        raise AcmeError(AcmeErrorType.BAD_REVOCATION_REASON, f"reason {value} is not supported (supported: "
                        f"{', '.join(str(r) for r in sorted(REASONS))})")
    return REASONS[value]


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def revocation(session: Session, payload: dict[str, Any] | None, *, account: store.Account | None,
               key: AccountKey) -> Revocation:
    """What revokeCert asks, checked (see the module docstring); ``account``: the signer's (kid), None when signed
    with a jwk (``key``, which must then be the certificate's)."""
    if payload is None or not isinstance(payload.get("certificate"), str):
        raise malformed('revokeCert needs a payload {"certificate": "<base64url DER>", "reason": <code>}')
    reason = _reason(payload)
    der = b64url_decode(payload["certificate"], "certificate")
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        raise malformed("certificate is not a DER X.509 certificate") from None
    found = certificate_by_serial(session, format(leaf.serial_number, "x"))
    if found is None or x509.load_pem_x509_certificate(found.certificate.encode("ascii")) != leaf:
        raise unauthorized("this certificate was not issued through this ACME server")
    if account is not None:
        if account.account_id != found.account_id:
            raise unauthorized("this account did not order this certificate")
        owner = account
    else:
        if _spki(key.jwk.public_key().key) != _spki(leaf.public_key()):
            raise unauthorized("the JWS's jwk is not the certificate's key")
        ordering = store.get_account(session, found.account_id)
        if ordering is None:
            raise unauthorized("the account that ordered this certificate is gone")
        owner = ordering
    if serial_status(session, found.certificate_id, found.serial) == REVOKED:
        raise AcmeError(AcmeErrorType.ALREADY_REVOKED, "this certificate is revoked already")
    return Revocation(found, owner, reason)


def revoke_request_id(serial: str) -> str:
    return f"acme-revoke-{serial}"

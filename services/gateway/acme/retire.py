"""An ACME renewal retires the certificate it renews (issue 22; decision 0033, addendum "replaces retires"): when an
order becomes valid (certificates.py's fold of CertificateIssued), the certificates it renews are retired, in the
same transaction:

- in the gateway's projection (issued.py `retire`): the serial superseded, as a renewal's old serial is, so the
  renewal scheduler stops sending RenewalDue and CertificateExpiring for it and stops counting it in
  ``certrail_gateway_certificates_by_days_to_expiry`` (the CertrailCertificateExpiringWithoutRenewal alert);
- in the auditor's inventory: CertificateSuperseded through the gateway's outbox (its id derived from the
  CertificateIssued and the retired certificate), which the inventory folds into a superseded certificate.

Never revoked: the old certificate stays valid until it expires (RFC 9773). Which certificates an order renews:

- ``replaces`` (RFC 9773 5): the one certificate its certID names (newOrder checked that it is the account's);
- no ``replaces`` (certbot up to at least 5.9, and every client without ARI, renew by ordering the same names
  again): each certificate of the door that is live in the projection (active serial) and has exactly the same
  identifiers (as a set), the same account, the same profile and the same key type (algorithm, and curve or RSA
  size), issued before it. The key type keeps the two halves of a dual ECDSA/RSA deployment apart; anything that
  differs (one name more or less, another account or profile) is a new certificate, not a renewal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import CertificateIssued, CertificateSuperseded, SupersededBy
from services.common.contracts.identity import message_id
from services.common.db_schema import GatewayAcmeCertificate, GatewayAcmeOrder, GatewayIssuedSerial
from services.gateway import issued
from services.gateway.acme import orders_store as db
from services.gateway.acme import renewal_info
from services.gateway.config.outbox import OUTBOX

log = logging.getLogger(__name__)

SOURCE = "/certrail/gateway/acme"  # CertificateSuperseded's source


@dataclass(frozen=True)
class Retired:
    certificate_id: str
    serial: str
    reason: SupersededBy


def key_type(pem: str) -> str:
    """A leaf's key type: ``ec:<curve>``, ``rsa:<bits>`` or the key's class name."""
    key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec:{key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa:{key.key_size}"
    return type(key).__name__


def renewed_by(session: Session, order: db.Order, data: CertificateIssued, issued_at: datetime) -> list[Retired]:
    """The live certificates ``order`` (valid now, its certificate ``data``) renews: see the module docstring."""
    if order.replaces is not None:
        found = renewal_info.find(session, renewal_info.parse_cert_id(order.replaces))
        if found is None or found.account_id != order.account_id or found.certificate_id == data.certificate_id:
            return []  # newOrder checked it; a certificate gone since: nothing to retire
        return [Retired(found.certificate_id, found.serial, SupersededBy.ACME_REPLACES)]
    a, o, s = GatewayAcmeCertificate, GatewayAcmeOrder, GatewayIssuedSerial
    rows = session.execute(
        select(a.certificate_id, a.serial, a.certificate, a.issued_at, o.identifiers, s.profile)
        .join(o, o.order_id == a.order_id)
        .join(s, (s.certificate_id == a.certificate_id) & (s.serial == a.serial))
        .where(a.account_id == order.account_id, a.order_id != order.order_id, s.status == issued.ACTIVE)
        .order_by(a.issued_at, a.order_id))
    wanted, kind = set(order.identifiers), key_type(data.certificate)
    return [Retired(certificate_id, serial, SupersededBy.ACME_SAME_IDENTIFIERS)
            for certificate_id, serial, pem, at, identifiers, profile in rows
            if set(json.loads(identifiers)) == wanted and profile == data.profile and at < issued_at
            and key_type(pem) == kind]


def retire_renewed(session: Session, order: db.Order, issued_event: Envelope) -> list[Retired]:
    """Retire what ``order`` renews (see the module docstring), in the caller's transaction; what was retired (a
    certificate revoked or retired meanwhile is left as it is, and no event is written for it)."""
    data = issued_event.data
    assert isinstance(data, CertificateIssued)
    done: list[Retired] = []
    for old in renewed_by(session, order, data, issued_event.time):
        if old.serial not in issued.retire(session, old.certificate_id, old.serial):
            continue
        superseded = CertificateSuperseded(certificate_id=old.certificate_id, serial=old.serial,
                                           replaced_by=data.certificate_id, replaced_by_serial=data.serial,
                                           reason=old.reason, superseded_at=issued_event.time)
        event = make_event(superseded, id=message_id(issued_event.id, CertificateSuperseded.TYPE, old.certificate_id),
                           source=SOURCE, time=issued_event.time, correlationid=issued_event.correlationid,
                           causationid=issued_event.id)
        OUTBOX.queue_event_in(session, event, key=old.certificate_id)  # created at the event's time
        log.info("ACME order %s: certificate %s (serial %s) retired (%s), superseded by %s", order.order_id,
                 old.certificate_id, old.serial, old.reason.value, data.certificate_id)
        done.append(old)
    return done

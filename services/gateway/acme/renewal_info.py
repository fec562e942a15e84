"""ACME Renewal Information (RFC 9773, "ARI"; decision 0033, addendum of 2026-12-07): ``GET /acme/renewal-info/{certID}``
answers when a certificate this door issued should be renewed, from the same moment certrail's own renewal scheduler
uses for it (services/gateway/scheduler/policy.py ``renewal_at``: the profile's ``spec.renewal`` time minus the
deterministic jitter of the certificate and serial).

- `parse_cert_id`: the certID (RFC 9773 4.1): base64url (no padding) of the AuthorityKeyIdentifier's keyIdentifier,
  ".", base64url of the serial's DER INTEGER content octets; anything else is malformed (a canonical encoding only,
  a positive, minimally encoded serial of at most 20 octets).
- `find`: the certificate among the door's issued certificates (``gateway_acme_certificates``), its serial and AKI
  checked against the stored leaf; what the scheduler decides from (``gateway_issued_serials`` and the certificate's
  profile, like scheduler/store.py's snapshot).
- `suggested_window`: end = the scheduler's ``renewal_at``; start = end minus the scheduler's ``jitter_window``
  (never before notBefore; at least one second wide, RFC 9773 4.2): a client renewing anywhere in the window renews
  before the scheduler would send RenewalDue. A revoked serial gets a window in the past: renew now.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from fastapi import APIRouter
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db_schema import GatewayAcmeCertificate, GatewayCertificate, GatewayIssuedSerial, GatewayProfile
from services.gateway.acme.jws import b64url_encode
from services.gateway.acme.problems import malformed
from services.gateway.policy.profile import ProvisioningProfile, RenewalPolicy
from services.gateway.scheduler.policy import jitter_window, renewal_at
from services.gateway.scheduler.settings import SchedulerSettings

PATH = "renewal-info"
REVOKED = "revoked"  # issued.py's status of a revoked serial
MAX_CERT_ID = 200  # a 64-octet keyIdentifier (86 characters), ".", a 21-octet serial (28): far below
MAX_KEY_IDENTIFIER = 64
MAX_SERIAL_OCTETS = 21  # 20 octets (RFC 5280 4.1.2.2) and the 0x00 that keeps a high bit positive
#: the smallest window RFC 9773 allows is one where end is after start
MIN_WIDTH = timedelta(seconds=1)
#: a revoked certificate's window: it ended a second ago and lasted a minute (RFC 9773 4.2: renew immediately)
REVOKED_WINDOW = timedelta(minutes=1)
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class CertId:
    key_identifier: bytes  # the AuthorityKeyIdentifier's keyIdentifier
    serial: int


def _part(text: str, what: str) -> bytes:
    if "=" in text:
        raise malformed(f"renewalInfo certID: the {what} carries '=' padding (RFC 9773 4.1: strip it)")
    if not _B64URL.fullmatch(text):
        raise malformed(f"renewalInfo certID: the {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"renewalInfo certID: the {what} is not base64url (a truncated encoding)") from None
    if b64url_encode(raw) != text:
        raise malformed(f"renewalInfo certID: the {what} is not the canonical base64url of its bytes")
    return raw


def parse_cert_id(text: str) -> CertId:
    """The certID of RFC 9773 4.1, strictly; raises malformed (400) with a detail that quotes none of it."""
    if len(text) > MAX_CERT_ID:
        raise malformed(f"renewalInfo certID: longer than {MAX_CERT_ID} characters")
    parts = text.split(".")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise malformed("renewalInfo certID: expected base64url(keyIdentifier) '.' base64url(serial)")
    key_identifier = _part(parts[0], "keyIdentifier")
    if len(key_identifier) > MAX_KEY_IDENTIFIER:
        raise malformed(f"renewalInfo certID: the keyIdentifier is longer than {MAX_KEY_IDENTIFIER} octets")
    serial = _part(parts[1], "serial")
    if len(serial) > MAX_SERIAL_OCTETS:
        raise malformed("renewalInfo certID: the serial is longer than 20 octets (RFC 5280 4.1.2.2)")
    if serial[0] & 0x80:
        raise malformed("renewalInfo certID: the serial is negative (its first octet has the high bit set)")
    if len(serial) > 1 and serial[0] == 0 and not serial[1] & 0x80:
        raise malformed("renewalInfo certID: the serial is not minimally encoded (a superfluous leading 0x00)")
    value = int.from_bytes(serial, "big")
    if value == 0:
        raise malformed("renewalInfo certID: the serial must be positive")
    return CertId(key_identifier, value)


def cert_id_of(certificate: x509.Certificate) -> str:
    """The certID of a certificate (RFC 9773 4.1): what an ACME client sends (tests and `replaces` use it)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier or b""
    serial = certificate.serial_number.to_bytes((certificate.serial_number.bit_length() + 8) // 8, "big")
    return ".".join(b64url_encode(p) for p in (aki, serial))


# -- the certificate and what the scheduler decides from ------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A certificate of the door, with the scheduler's view of its serial."""

    order_id: str
    account_id: str
    certificate_id: str
    serial: str  # as the gateway stores it (the scheduler's input)
    not_before: datetime
    not_after: datetime
    status: str | None  # gateway_issued_serials: active, superseded, revoked; None when not (yet) projected
    policy: RenewalPolicy  # its profile's spec.renewal; the default policy when the profile is unknown


def _key_identifier(leaf: x509.Certificate) -> bytes | None:
    try:
        return leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _policy(session: Session, name: str | None) -> RenewalPolicy:
    spec = session.get(GatewayProfile, name) if name else None
    if spec is None:
        return RenewalPolicy()
    try:
        return ProvisioningProfile.model_validate_json(spec.spec).renewal
    except ValidationError:  # stored invalid: the scheduler skips it too (and logs it)
        return RenewalPolicy()


def _spellings(serial: int) -> list[str]:
    """How the issuer may have written a serial: lower-case hex, zero-padded to whole octets or to 16 or 20 octets
    (emCA's fixed width), upper-case; the leaf's own serial is compared after."""
    short = format(serial, "x")
    forms = {short, short.zfill(len(short) + len(short) % 2), short.zfill(32), short.zfill(40)}
    return sorted(forms | {form.upper() for form in forms})


def find(session: Session, cert_id: CertId) -> Found | None:
    """The door's certificate of this certID (serial and AuthorityKeyIdentifier match the stored leaf), or None."""
    a = GatewayAcmeCertificate
    for row in session.scalars(select(a).where(a.serial.in_(_spellings(cert_id.serial))).order_by(a.order_id)):
        leaf = x509.load_pem_x509_certificate(row.certificate.encode("ascii"))
        if leaf.serial_number != cert_id.serial or _key_identifier(leaf) != cert_id.key_identifier:
            continue
        s, gc = GatewayIssuedSerial, GatewayCertificate
        projected = session.get(s, (row.certificate_id, row.serial))
        override = session.scalars(select(gc.profile).where(gc.certificate_id == row.certificate_id)).first()
        profile = override or (projected.profile if projected is not None else None)
        not_before = projected.not_before if projected is not None and projected.not_before else leaf.not_valid_before_utc
        not_after = projected.not_after if projected is not None and projected.not_after else leaf.not_valid_after_utc
        return Found(row.order_id, row.account_id, row.certificate_id, row.serial, not_before, not_after,
                     projected.status if projected is not None else None, _policy(session, profile))
    return None


# -- the window ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def document(self) -> dict[str, Any]:
        return {"suggestedWindow": {"start": _rfc3339(self.start), "end": _rfc3339(self.end)}}


def _rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def suggested_window(found: Found, now: datetime, scheduler: SchedulerSettings) -> Window:
    """The renewal window of ``found`` at ``now`` (see the module docstring)."""
    if found.status == REVOKED:
        return Window(now - REVOKED_WINDOW, now - MIN_WIDTH)
    end = renewal_at(found.policy, found.certificate_id, found.serial, found.not_before, found.not_after, scheduler)
    start = max(found.not_before, end - jitter_window(found.not_before, found.not_after, scheduler))
    return Window(min(start, end - MIN_WIDTH), end)


# -- the route -----------------------------------------------------------------------------------------------------


def add_renewal_info_route(api: APIRouter, *, read: Callable[..., Any], answer: Callable[..., Any],
                           scheduler: SchedulerSettings, retry_after_s: int, clock: Callable[[], datetime]) -> None:
    """``GET /acme/renewal-info/{certID}`` (unauthenticated, RFC 9773 4.2) on the door's router."""

    @api.get(f"/{PATH}/{{cert_id}}")
    async def renewal_info(cert_id: str) -> Any:
        parsed = parse_cert_id(cert_id)
        found: Found | None = await read(find, parsed)
        if found is None:
            raise malformed("renewalInfo: no certificate issued by this ACME server has this certID", status=404)
        return await answer(suggested_window(found, clock(), scheduler).document(), retry_after=retry_after_s)

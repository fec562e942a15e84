"""Finalize (RFC 8555 7.4; issue 22 slice 2b): a ready order's CSR becomes an issue request of the gateway's intake
(services/gateway/intake.py), the same path, policy, audit trail and Kafka command as every other request.

- `parse_csr`: the ``csr`` member (base64url DER), parsed with ``cryptography``: badCSR for garbage, a bad
  signature, or names that are not exactly the order's identifiers (the SAN dNSNames; a CN, when present, one of
  them). Everything else (key policy, subject rules, the profile's domain rules) is the intake's own check.
- `finalize`: the request (requester: the account's; profile: the first of the order's profiles; certificate id
  ``acme-<order id>`` and request id ``acme-finalize-<order id>``, so a retried finalize is the intake's replay of
  the same request, never a second issuance) through `Intake.from_acme`, its records published, then the order
  ready -> processing (AcmeOrderFinalized), or ready -> invalid with the refusal as a problem (AcmeOrderInvalid).
  The intake's answer is stored before its records are published: when publishing fails, the order stays ready
  and the client's retry re-publishes the same records and moves the order on.

The order follows the issuer's events from there: certificates.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from services.common.consumer import Outbound
from services.common.contracts.admin import AcmeOrderFinalized, AcmeOrderInvalid
from services.common.contracts.errors import ErrorCode
from services.common.contracts.requests import IssueRequested, RevokeRequested
from services.common.db import read_session
from services.gateway.acme import orders_store as db
from services.gateway.acme import store
from services.gateway.acme.jws import b64url_decode
from services.gateway.acme.problems import ERROR_PREFIX, AcmeError, AcmeErrorType, malformed
from services.gateway.config.change import Actor, changing
from services.gateway.intake import Outcome

log = logging.getLogger(__name__)

CERTIFICATE_PREFIX = "acme-"
FINALIZE_PREFIX = "acme-finalize-"
_ORDER_ID = re.compile(r"^[a-z0-9]{8,64}$")
#: the intake's refusal codes -> the RFC 8555 problem an ACME client is told (anything else: serverInternal)
_PROBLEMS: dict[str, AcmeErrorType] = {
    ErrorCode.CSR_INVALID: AcmeErrorType.BAD_CSR,
    ErrorCode.CSR_SIGNATURE_INVALID: AcmeErrorType.BAD_CSR,
    ErrorCode.KEY_POLICY_VIOLATION: AcmeErrorType.BAD_CSR,
    ErrorCode.PRIVATE_KEY_SUBMITTED: AcmeErrorType.BAD_CSR,
    ErrorCode.SAN_INVALID: AcmeErrorType.BAD_CSR,
    ErrorCode.SUBJECT_NOT_ALLOWED: AcmeErrorType.BAD_CSR,
    ErrorCode.SAN_NOT_ALLOWED: AcmeErrorType.REJECTED_IDENTIFIER,
    ErrorCode.REQUESTER_NOT_AUTHORISED: AcmeErrorType.UNAUTHORIZED,
    ErrorCode.PROFILE_NOT_FOUND: AcmeErrorType.UNAUTHORIZED,
    ErrorCode.CERTIFICATE_PROFILE_MISMATCH: AcmeErrorType.UNAUTHORIZED,
    ErrorCode.CERTIFICATE_NOT_FOUND: AcmeErrorType.MALFORMED,
}
PUBLISH_ERRORS = (TimeoutError, KafkaError, OSError)


class AcmeIntake(Protocol):
    async def from_acme(self, request: IssueRequested | RevokeRequested) -> Outcome: ...


@dataclass(frozen=True)
class Requests:
    """Where the ACME door's requests go: the gateway's intake, and how its records are published."""

    intake: AcmeIntake
    publish: Callable[[Sequence[Outbound | dict[str, Any]]], Awaitable[None]]

    async def ask(self, request: IssueRequested | RevokeRequested) -> Outcome:
        """The intake's answer, its records published: serverInternal (500, Retry-After) when they could not be
        (the answer is stored: asking again re-publishes them)."""
        outcome = await self.intake.from_acme(request)
        try:
            await self.publish(outcome.outbound)
        except PUBLISH_ERRORS as exc:
            log.warning("ACME request %s: publishing failed: %s", request.request_id, exc)
            raise AcmeError(AcmeErrorType.SERVER_INTERNAL, "the request was recorded but could not be passed on: "
                            "send it again", headers={"Retry-After": "5"}) from None
        return outcome


def certificate_id_of(order_id: str) -> str:
    return CERTIFICATE_PREFIX + order_id


def request_id_of(order_id: str) -> str:
    return FINALIZE_PREFIX + order_id


def order_id_of(certificate_id: str) -> str | None:
    """The order whose certificate id this is (`certificate_id_of`), or None."""
    if not certificate_id.startswith(CERTIFICATE_PREFIX):
        return None
    order_id = certificate_id[len(CERTIFICATE_PREFIX):]
    return order_id if _ORDER_ID.fullmatch(order_id) else None


def problem_of(code: str, message: str) -> dict[str, Any]:
    """The intake's refusal (or the issuer's failure) as the problem document of an invalid order."""
    kind = _PROBLEMS.get(code, AcmeErrorType.SERVER_INTERNAL)
    status = 500 if kind is AcmeErrorType.SERVER_INTERNAL else 403 if kind is AcmeErrorType.UNAUTHORIZED else 400
    return {"type": ERROR_PREFIX + kind.value, "detail": f"{code}: {message}"[:1000], "status": status}


def _bad_csr(detail: str) -> AcmeError:
    return AcmeError(AcmeErrorType.BAD_CSR, detail)


def parse_csr(payload: dict[str, Any] | None, identifiers: Sequence[str]) -> str:
    """The CSR of a finalize payload as PEM, when it parses, its signature verifies and it names exactly the
    order's identifiers; badCSR (malformed for a payload without a csr) otherwise."""
    if payload is None or not isinstance(payload.get("csr"), str):
        raise malformed('finalize needs a payload {"csr": "<base64url DER>"}')
    try:
        der = b64url_decode(payload["csr"], "csr")
    except AcmeError:
        raise _bad_csr("csr is not base64url (RFC 7515: the URL-safe alphabet, no padding)") from None
    try:
        csr = x509.load_der_x509_csr(der)
        signed = csr.is_signature_valid
    except (ValueError, TypeError):
        raise _bad_csr("csr is not a DER PKCS#10 certification request") from None
    if not signed:
        raise _bad_csr("the CSR's signature does not verify with its public key")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _bad_csr("the CSR has no subjectAltName: list the order's identifiers there") from None
    except ValueError:
        raise _bad_csr("the CSR's extensions do not parse") from None
    names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    if len(names) != len(list(san)):
        raise _bad_csr("the CSR's subjectAltName may only hold dNSNames (the order's identifiers)")
    wanted = {i.lower() for i in identifiers}
    if set(names) != wanted:
        missing, extra = sorted(wanted - set(names)), sorted(set(names) - wanted)
        raise _bad_csr(f"the CSR's names are not the order's identifiers (missing {missing[:5]}, not ordered "
                       f"{[e[:100] for e in extra[:5]]})")
    for cn in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = cn.value if isinstance(cn.value, str) else cn.value.decode("utf-8", "replace")
        if value.lower() not in wanted:
            raise _bad_csr(f"the CSR's common name {value[:100]!r} is not one of the order's identifiers")
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


class _Moved(Exception):
    """The order was not ready any more (another finalize, or the issuer's outcome, moved it): no event."""


def _about(account: store.Account, order: db.Order) -> dict[str, str]:
    return {"requester": account.requester, "account_id": account.account_id, "order_id": order.order_id}


def _move(actor: Actor, cls: Any, account: store.Account, order: db.Order, after: str, change: dict[str, Any],
          error: dict[str, Any] | None = None) -> None:
    try:
        with changing(actor, cls, _about(account, order)) as pending:
            if not db.move_order(pending.db, order.order_id, db.READY, after, actor.clock(), error):
                raise _Moved
            pending.change = change
    except _Moved:
        pass


async def finalize(requests: Requests, actor: Actor, account: store.Account, order: db.Order, csr_pem: str) -> db.Order:
    """Ask the intake to issue ``order``'s certificate (see the module docstring); the order as it is then.
    orderNotReady when the intake already holds another CSR under the order's request id."""
    request = IssueRequested(request_id=request_id_of(order.order_id), requester=account.requester,
                             profile=order.profiles[0], certificate_id=certificate_id_of(order.order_id), csr=csr_pem)
    answer = (await requests.ask(request)).answer
    change: dict[str, Any] = {"certificate_id": request.certificate_id, "request_id": request.request_id,
                              "profile": request.profile, "identifiers": order.identifiers}
    if answer.status == "accepted":
        await asyncio.to_thread(_move, actor, AcmeOrderFinalized, account, order, db.PROCESSING,
                                {"status": db.PROCESSING, **change})
    else:
        error = answer.error or {"code": ErrorCode.HANDLER_REJECTED.value, "message": "rejected"}
        if error["code"] == ErrorCode.DUPLICATE_REQUEST_CONFLICT:
            raise AcmeError(AcmeErrorType.ORDER_NOT_READY, "this order was finalized already with another CSR")
        problem = problem_of(error["code"], error["message"])
        await asyncio.to_thread(_move, actor, AcmeOrderInvalid, account, order, db.INVALID,
                                {"status": db.INVALID, "code": error["code"], "error": problem, **change}, problem)

    def reread() -> db.Order | None:
        with read_session(actor.engine) as session:
            return db.get_order(session, order.order_id)

    current = await asyncio.to_thread(reread)
    assert current is not None
    return current

"""One validation path for both doors: a request from ``certrail.requests`` (signed by its
requester) or from the HTTP API (authenticated by a bearer token) becomes a command and a
RequestAccepted event, or a RequestRejected event with a stable code.

Order (services/gateway/policy/__init__.py): authenticate (Kafka signature / token) ->
dedupe on the request id (same content: the same answer and the same records again;
different content: DUPLICATE_REQUEST_CONFLICT) -> profile -> authorisation -> CSR, key
policy, SAN and subject rules -> connector exists and is not disabled -> command.

Everything after authentication is answered once per request id and stored with the exact
records published (``gateway_requests``), in the same transaction as the certificate's new
revision; the records are published after the commit and re-published as they are when the
same request arrives again (a redelivery, a client retry). A request that fails
authentication is answered but not stored, so nobody can squat another requester's ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.consumer import Outbound
from services.common.contracts.commands import IssueCertificate, ProvisionCertificate, RenewCertificate, RevokeCertificate
from services.common.contracts.envelope import DecodeError, Message, declared_type, load_json, make_event, record_headers
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import RequestAccepted, RequestRejected
from services.common.contracts.fields import KeyGeneration, RequestKind
from services.common.contracts.identity import issuance_id, message_id, root_message_id
from services.common.contracts.requests import IssueRequested, RenewRequested, RevokeRequested
from services.common.contracts.topics import Topics
from services.common.db import transaction_memo, write_session
from services.common.runtime.writer import SessionWriter, ThreadCalls
from services.gateway import connector_view, issued, store
from services.gateway.policy import (
    PolicyViolation,
    ProvisioningProfile,
    ValidatedCsr,
    authorise_requester,
    decide_dedupe,
    request_content_hash,
    validate_csr,
    verify_request_auth,
)
from services.gateway.policy.dedupe import DedupeOutcome, StoredRequest
from services.gateway.policy.domains import check_sans_allowed
from services.gateway.policy.names import parse_san
from services.gateway.policy.request_auth import RequesterKeys
from services.gateway.policy.tokens import Action, TokenClaims, authorise

log = logging.getLogger(__name__)

SOURCE = "/certrail/gateway"
Request = IssueRequested | RenewRequested | RevokeRequested
KINDS = {IssueRequested: RequestKind.ISSUE, RenewRequested: RequestKind.RENEW, RevokeRequested: RequestKind.REVOKE}
#: called once per answered request: (door kafka|http|acme, kind, status accepted|rejected|replayed, error code or None)
Observer = Callable[[str, str, str, str | None], None]
ACTIONS = {RequestKind.ISSUE: Action.CERTIFICATE_ISSUE, RequestKind.RENEW: Action.CERTIFICATE_RENEW,
           RequestKind.REVOKE: Action.CERTIFICATE_REVOKE}


@dataclass(frozen=True)
class Answer:
    """What a requester is told: accepted (with the command) or rejected (with the error)."""

    request_id: str
    status: str  # accepted | rejected
    kind: str
    certificate_id: str | None = None
    issuance_id: str | None = None
    command_id: str | None = None
    event_id: str | None = None
    error: dict[str, str] | None = None
    replayed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "status": self.status, "kind": self.kind, "certificate_id": self.certificate_id,
                "issuance_id": self.issuance_id, "command_id": self.command_id, "event_id": self.event_id, "error": self.error}

    @classmethod
    def from_dict(cls, value: dict[str, Any], *, replayed: bool = False) -> Answer:
        return cls(**value, replayed=replayed)


@dataclass(frozen=True)
class Outcome:
    answer: Answer
    outbound: list[Outbound | dict[str, Any]]  # Outbound, or a stored record {topic, key, value} to re-publish


@dataclass(frozen=True)
class Caller:
    """Who asks, and how authorisation is decided: a verified Kafka requester (the profile's
    allowed requesters) or an HTTP token (roles and scopes, then the profile's requesters)."""

    identity: str
    claims: TokenClaims | None = None  # HTTP
    deployer: bool = False  # the deployer's bot identity (may send CSRs for bot-key profiles)

    def authorise(self, kind: RequestKind, profile: ProvisioningProfile) -> None:
        if self.claims is not None:
            authorise(self.claims, ACTIONS[kind], profile).raise_if_denied()
        elif self.deployer:
            authorise_deployer(self.identity, kind, profile)
        else:
            authorise_requester(self.identity, profile)


def authorise_deployer(identity: str, kind: RequestKind, profile: ProvisioningProfile) -> None:
    """The deployer serves every bot-key profile by design (it alone makes their keys) and no other:
    it may issue and renew under a profile with key_generation bot, nothing else, whatever the
    profile's allowed requesters say (docs/gateway.md, docs/decisions/0011-deployer-trusts-nothing.md)."""
    if kind is RequestKind.REVOKE or profile.key_generation is not KeyGeneration.BOT:
        what = "revoke" if kind is RequestKind.REVOKE else f"{kind.value} under a profile whose requesters hold their keys"
        raise PolicyViolation(ErrorCode.REQUESTER_NOT_AUTHORISED,
                              f"the deployer identity {identity!r} may not {what} (profile {profile.name!r})")


#: ``session.info`` key of what one transaction of requests read once (`transaction_memo`)
_PROFILES_READ = "certrail.gateway.intake.profiles"


class Intake:
    def __init__(self, *, engine: Engine, topics: Topics, keys: RequesterKeys, clock: Callable[[], datetime],
                 deployer_identity: str = "certrail-deployer", observe: Observer | None = None) -> None:
        self._observe = observe
        self._engine = engine
        self._topics = topics
        self._keys = keys
        self._clock = clock
        self.deployer_identity = deployer_identity
        # the Kafka door's work grouped across the requests in flight (services/common/runtime/writer.py):
        # signature checks in one thread hop, the requests' transactions in one write transaction
        self._kafka_calls: ThreadCalls | None = None
        self._kafka_writes: SessionWriter | None = None

    # -- the doors -------------------------------------------------------------------------------------

    def _observed(self, door: str, outcome: Outcome) -> Outcome:
        if self._observe is not None:
            answer = outcome.answer
            status = "replayed" if answer.replayed else answer.status
            self._observe(door, answer.kind, status, (answer.error or {}).get("code"))
        return outcome

    async def from_kafka(self, event_id: str, request: Request, raw_value: bytes | None) -> Outcome:
        """A request from ``certrail.requests``: its signature is checked over the data object as sent."""
        return self._observed("kafka", await self._from_kafka(event_id, request, raw_value))

    async def _from_kafka(self, event_id: str, request: Request, raw_value: bytes | None) -> Outcome:
        kind = KINDS[type(request)]
        try:
            data: Any = request
            if raw_value is not None:
                try:  # the bytes the Dispatcher decoded; parsed within the same limits all the same
                    data = load_json(raw_value)["data"]
                except (DecodeError, KeyError, TypeError):
                    data = request
            if self._kafka_calls is None:
                self._kafka_calls = ThreadCalls(name="gateway-request-auth")
            key = await self._kafka_calls.run(verify_request_auth, data, self._keys)
            if key.requester != request.requester:
                raise PolicyViolation(ErrorCode.REQUEST_SIGNATURE_INVALID,
                                      f"the request names requester {request.requester!r} but is signed by {key.requester!r}")
        except PolicyViolation as violation:
            return self._unauthenticated(event_id, request, kind, violation)
        caller = Caller(request.requester, deployer=request.requester == self.deployer_identity)
        if self._kafka_writes is None:
            self._kafka_writes = SessionWriter(self._engine, name="gateway-intake")
        return await self._kafka_writes.run(self._process_in, event_id, request, kind, caller)

    async def from_http(self, request: Request, claims: TokenClaims) -> Outcome:
        """A request from the HTTP API; the token already authenticated ``claims``."""
        kind = KINDS[type(request)]
        event_id = root_message_id("http", request.request_id, request.TYPE)
        caller = Caller(claims.identity, claims=claims)
        return self._observed("http", await asyncio.to_thread(self._process, event_id, request, kind, caller))

    async def from_acme(self, request: Request) -> Outcome:
        """A request of the ACME door (services/gateway/acme/): its account already proved its key (a JWS) and is
        bound to ``request.requester``, authorised like a Kafka requester (the profile's allowed requesters)."""
        kind = KINDS[type(request)]
        event_id = root_message_id("acme", request.request_id, request.TYPE)
        caller = Caller(request.requester)
        return self._observed("acme", await asyncio.to_thread(self._process, event_id, request, kind, caller))

    # -- the path ------------------------------------------------------------------------------------------

    def _event(self, cause_id: str, data: Message, subject: str | None, correlation: str, now: datetime) -> Any:
        return make_event(data, id=message_id(cause_id, data.TYPE), source=SOURCE, time=now, subject=subject,
                          correlationid=correlation, causationid=cause_id)

    def _rejected(self, event_id: str, request: Request, kind: RequestKind, violation: PolicyViolation,
                  now: datetime, certificate_id: str | None) -> tuple[Answer, list[Outbound]]:
        """A RequestRejected about ``certificate_id`` (from `_named_certificate`: None unless the caller
        may act on that certificate). Unnamed, it has no subject and is keyed by the request id, so
        the auditor neither files it under a certificate nor changes an inventory row."""
        rejected = RequestRejected(request_id=request.request_id, requester=request.requester, kind=kind,
                                   certificate_id=certificate_id, error=violation.error_info())
        event = self._event(event_id, rejected, certificate_id, request.request_id, now)
        answer = Answer(request.request_id, "rejected", kind.value, certificate_id, event_id=event.id,
                        error={"code": violation.code.value, "message": violation.message})
        return answer, [Outbound(self._topics.topic_of(RequestRejected), event, key=certificate_id or request.request_id)]

    def _named_certificate(self, session: Session, request: Request, kind: RequestKind, caller: Caller) -> str | None:
        """The certificate a rejection of ``request`` may name: the one it is about, only when the
        caller is authorised for that certificate's profile (for a certificate not managed yet: for
        the profile it asks for). A refused caller's request never names, and so never reaches, a
        certificate it may not touch (its timeline, its inventory error)."""
        certificate_id = request.certificate_id
        if certificate_id is None:
            return None
        row = store.get_certificate(session, certificate_id)
        if row is not None:
            name = row.profile
        elif isinstance(request, IssueRequested):
            name = request.profile
        else:
            return None
        stored = store.get_profile(session, name)
        if stored is None:
            return None
        try:
            caller.authorise(kind, stored.profile)
        except PolicyViolation:
            return None
        return certificate_id

    def _unauthenticated(self, event_id: str, request: Request, kind: RequestKind, violation: PolicyViolation) -> Outcome:
        # not stored under the request id: an unauthenticated sender must not own it, nor name a certificate
        answer, outbound = self._rejected(event_id, request, kind, violation, self._clock(), None)
        log.warning("request %s refused: %s", request.request_id, violation)
        return Outcome(answer, list(outbound))

    def _process(self, event_id: str, request: Request, kind: RequestKind, caller: Caller) -> Outcome:
        with write_session(self._engine) as session:
            return self._process_in(session, event_id, request, kind, caller)

    def _process_in(self, session: Session, event_id: str, request: Request, kind: RequestKind, caller: Caller) -> Outcome:
        """One request in the caller's write transaction: answered once per request id (a repeat is
        replayed, a different request under the same id refused), then accepted or rejected and stored."""
        now = self._clock()
        content_hash = request_content_hash(request)
        stored = store.get_request(session, request.request_id)
        decision = decide_dedupe(
            None if stored is None else StoredRequest(stored.request_id, stored.content_hash, stored),
            request.request_id, content_hash)
        if decision.outcome is DedupeOutcome.SAME:
            assert stored is not None
            return Outcome(Answer.from_dict(stored.answer, replayed=True), list(stored.outbound))
        if decision.outcome is DedupeOutcome.CONFLICT:
            assert decision.violation is not None
            assert stored is not None
            own = stored.requester == caller.identity  # someone else's request id: name nothing
            answer, outbound = self._rejected(event_id, request, kind, decision.violation, now,
                                              self._named_certificate(session, request, kind, caller) if own else None)
            return Outcome(answer, list(outbound))
        try:
            answer, outbound = self._accept(session, event_id, request, kind, caller, now)
            status = "accepted"
        except PolicyViolation as violation:
            answer, outbound = self._rejected(event_id, request, kind, violation, now,
                                              self._named_certificate(session, request, kind, caller))
            status = "rejected"
        records = [{"topic": o.topic, "key": o.key, "value": o.value().decode("utf-8")} for o in outbound]
        store.add_request(session, store.StoredAnswer(
            request.request_id, content_hash, caller.identity, kind.value, answer.certificate_id, status,
            answer.as_dict(), records, now))
        return Outcome(answer, list(outbound))

    def _profile(self, session: Session, name: str | None) -> ProvisioningProfile:
        # read and parsed once per transaction: the requests of one group commit share it (intake writes no profile)
        memo = transaction_memo(session, _PROFILES_READ)
        if name not in memo:
            memo[name] = store.get_profile(session, name) if name else None
        stored = memo[name]
        if stored is None:
            raise PolicyViolation(ErrorCode.PROFILE_NOT_FOUND, f"no provisioning profile named {name!r}")
        return stored.profile

    def _connector(self, session: Session, name: str) -> None:
        status = connector_view.live_status(session, name)  # the gateway's own view; as profiles: once per transaction
        if status is None:
            raise PolicyViolation(ErrorCode.CONNECTOR_NOT_FOUND, f"the profile's connector {name!r} does not exist")
        if status == connector_view.DISABLED:
            raise PolicyViolation(ErrorCode.CONNECTOR_DISABLED, f"connector {name!r} is disabled")
        # a misconfigured connector still takes requests: they wait in its queue until it is fixed

    def _accept(self, session: Session, event_id: str, request: Request, kind: RequestKind, caller: Caller,
                now: datetime) -> tuple[Answer, list[Outbound]]:
        if isinstance(request, IssueRequested):
            return self._issue(session, event_id, request, caller, now)
        if isinstance(request, RenewRequested):
            return self._renew(session, event_id, request, caller, now)
        return self._revoke(session, event_id, request, caller, now)

    def _csr(self, request: IssueRequested | RenewRequested, profile: ProvisioningProfile, caller: Caller,
             sans: Sequence[str] | None) -> ValidatedCsr | None:
        """The validated CSR, or None when the deployer bot must make the key."""
        bot = profile.key_generation is KeyGeneration.BOT
        if request.csr is None:
            if not bot:
                raise PolicyViolation(ErrorCode.CSR_INVALID, f"profile {profile.name!r} needs a CSR (the requester holds the key)")
            return None
        if bot and not caller.deployer:
            raise PolicyViolation(ErrorCode.CSR_INVALID, f"profile {profile.name!r} has its keys generated by the deployer "
                                  "bot: send no CSR")
        return validate_csr(request.csr, profile, sans)

    def _issue(self, session: Session, event_id: str, request: IssueRequested, caller: Caller,
               now: datetime) -> tuple[Answer, list[Outbound]]:
        profile = self._profile(session, request.profile)
        caller.authorise(RequestKind.ISSUE, profile)
        existing = store.get_certificate(session, request.certificate_id)
        if existing is not None and existing.profile != profile.name:
            raise PolicyViolation(ErrorCode.CERTIFICATE_PROFILE_MISMATCH,
                                  f"certificate {request.certificate_id!r} is managed under profile {existing.profile!r}, "
                                  f"not {profile.name!r}")
        csr = self._csr(request, profile, caller, request.sans)
        self._connector(session, profile.connector)
        if csr is None:
            if not request.sans:
                raise PolicyViolation(ErrorCode.SAN_INVALID, "a bot-key request must name its SANs")
            parsed = [parse_san(s) for s in request.sans]
            check_sans_allowed(parsed, profile)
            command: Message = ProvisionCertificate(
                certificate_id=request.certificate_id, request_id=request.request_id, profile=profile.name,
                connector=profile.connector, key_algorithm=profile.bot_key_algorithm, sans=[str(s) for s in parsed],
                deadline=request.deadline)
            topic = self._topics.provisioning
            issuance = None
            store.ensure_certificate(session, certificate_id=request.certificate_id, profile=profile.name,
                                     connector=profile.connector, requester=caller.identity,
                                     key_generation=profile.key_generation.value, sans=command.sans, now=now)
        else:
            sans = list(csr.sans)
            revision = store.next_revision(session, certificate_id=request.certificate_id, profile=profile.name,
                                           connector=profile.connector, requester=caller.identity,
                                           key_generation=profile.key_generation.value, sans=sans, now=now)
            issuance = issuance_id(request.certificate_id, revision)
            command = IssueCertificate(
                issuance_id=issuance, certificate_id=request.certificate_id, revision=revision, request_id=request.request_id,
                connector=profile.connector, profile=profile.name, ca_profile=profile.ca_profile, csr=csr.csr_pem, sans=sans,
                validity_days=profile.validity_days, deadline=request.deadline)
            topic = self._topics.commands(profile.connector)
        return self._accepted(event_id, request, RequestKind.ISSUE, caller, profile, command, topic, issuance, now, csr)

    def _accepted(self, event_id: str, request: Request, kind: RequestKind, caller: Caller, profile: ProvisioningProfile,
                  command: Message, topic: str, issuance: str | None, now: datetime,
                  csr: ValidatedCsr | None = None) -> tuple[Answer, list[Outbound]]:
        """The command and its RequestAccepted; a request with a CSR announces the CSR's key hash
        there, the key the deployer will expect the certificate to carry (decision 0011)."""
        certificate_id = command.certificate_id
        command_event = self._event(event_id, command, certificate_id, request.request_id, now)
        accepted = RequestAccepted(request_id=request.request_id, requester=caller.identity, kind=kind,
                                   certificate_id=certificate_id, profile=profile.name, connector=profile.connector,
                                   issuance_id=issuance, command_id=command_event.id,
                                   public_key_sha256=None if csr is None else csr.public_key_sha256)
        accepted_event = self._event(event_id, accepted, certificate_id, request.request_id, now)
        answer = Answer(request.request_id, "accepted", kind.value, certificate_id, issuance, command_event.id, accepted_event.id)
        return answer, [Outbound(topic, command_event, key=certificate_id),
                        Outbound(self._topics.topic_of(RequestAccepted), accepted_event, key=certificate_id)]

    def _managed(self, session: Session, certificate_id: str | None) -> tuple[ProvisioningProfile, Any]:
        row = store.get_certificate(session, certificate_id) if certificate_id else None
        if row is None:
            raise PolicyViolation(ErrorCode.CERTIFICATE_NOT_FOUND, f"no managed certificate {certificate_id!r}")
        return self._profile(session, row.profile), row

    def _renew(self, session: Session, event_id: str, request: RenewRequested, caller: Caller,
               now: datetime) -> tuple[Answer, list[Outbound]]:
        profile, row = self._managed(session, request.certificate_id)
        caller.authorise(RequestKind.RENEW, profile)
        # the serial it replaces: the current one of the gateway's own projection of events.issuer (issued.py)
        replaces = request.replaces_serial or issued.current_serial(session, row.certificate_id)
        if replaces is None:
            raise PolicyViolation(ErrorCode.CERTIFICATE_NOT_FOUND,
                                  f"certificate {request.certificate_id!r} has no issued serial to renew yet")
        csr = self._csr(request, profile, caller, None)
        self._connector(session, profile.connector)
        if csr is None:
            command: Message = ProvisionCertificate(
                certificate_id=request.certificate_id, request_id=request.request_id, profile=profile.name,
                connector=profile.connector, key_algorithm=profile.bot_key_algorithm, sans=json.loads(row.sans),
                replaces_serial=replaces, deadline=request.deadline)
            return self._accepted(event_id, request, RequestKind.RENEW, caller, profile, command, self._topics.provisioning,
                                  None, now)
        sans = list(csr.sans)
        revision = store.next_revision(session, certificate_id=request.certificate_id, profile=profile.name,
                                       connector=profile.connector, requester=row.requester,
                                       key_generation=profile.key_generation.value, sans=sans, now=now)
        issuance = issuance_id(request.certificate_id, revision)
        command = RenewCertificate(
            issuance_id=issuance, certificate_id=request.certificate_id, revision=revision, request_id=request.request_id,
            connector=profile.connector, profile=profile.name, ca_profile=profile.ca_profile, csr=csr.csr_pem, sans=sans,
            replaces_serial=replaces, validity_days=profile.validity_days, deadline=request.deadline)
        return self._accepted(event_id, request, RequestKind.RENEW, caller, profile, command,
                              self._topics.commands(profile.connector), issuance, now, csr)

    def _revoke(self, session: Session, event_id: str, request: RevokeRequested, caller: Caller,
                now: datetime) -> tuple[Answer, list[Outbound]]:
        certificate_id = request.certificate_id
        if certificate_id is None and request.serial is not None:
            owners = issued.certificates_with_serial(session, request.serial)
            certificate_id = owners[0] if owners else None
            if certificate_id is None:
                raise PolicyViolation(ErrorCode.CERTIFICATE_NOT_FOUND, f"no managed certificate has serial {request.serial}")
        profile, row = self._managed(session, certificate_id)
        caller.authorise(RequestKind.REVOKE, profile)
        known = issued.serials_of(session, row.certificate_id)
        serial = request.serial or issued.current_serial(session, row.certificate_id)
        if serial is None:
            raise PolicyViolation(ErrorCode.CERTIFICATE_NOT_FOUND, f"certificate {certificate_id!r} has no issued serial to revoke")
        if serial not in known:
            raise PolicyViolation(ErrorCode.CERTIFICATE_NOT_FOUND, f"serial {serial} does not belong to certificate {certificate_id!r}")
        self._connector(session, profile.connector)
        command = RevokeCertificate(certificate_id=row.certificate_id, serial=serial, request_id=request.request_id,
                                    connector=profile.connector, reason=request.reason, replace=request.replace)
        return self._accepted(event_id, request, RequestKind.REVOKE, caller, profile, command,
                              self._topics.commands(profile.connector), None, now)


def stored_records(outbound: Sequence[Outbound | dict[str, Any]]) -> list[tuple[str, str | None, bytes]]:
    """(topic, key, value) for each record to publish, whether new or stored."""
    return [(topic, key, value) for topic, key, value, _ in outgoing_records(outbound)]


def outgoing_records(outbound: Sequence[Outbound | dict[str, Any]]) -> list[tuple[str, str | None, bytes, dict[str, str]]]:
    """(topic, key, value, headers) for each record to publish, whether new or stored (a stored
    record is re-published byte for byte; its ``ce_type`` header is read from its body)."""
    result = []
    for item in outbound:
        if isinstance(item, Outbound):
            result.append((item.topic, item.key, item.value(), item.headers()))
        else:
            value = item["value"]
            result.append((item["topic"], item["key"], value.encode("utf-8"), record_headers(declared_type(value))))
    return result


__all__ = ["Answer", "Caller", "Intake", "Outcome", "outgoing_records", "stored_records"]

"""Bot-held keys: ProvisionCertificate, RenewalDue (bot) and CertificateRevoked (with
replacement) -> a fresh key, stored encrypted, and its CSR published as a signed request
(IssueRequested / RenewRequested on ``<prefix>.requests``).

The key row is keyed by the causing message id: a redelivery re-publishes the stored
request (same id, same CSR) instead of making another key.

A ProvisionCertificate for a profile the deployer knows to be requester-held (its projection of
the profile admin events) is dead-lettered with REQUESTER_NOT_AUTHORISED: no key, no request
(docs/decisions/0011-deployer-trusts-nothing.md).

A CertificateRevoked first supersedes the revoked serial's key; for keyCompromise it is destroyed at once
(retirement.py, decision 0026). Without a replacement, a profile with ``on_revocation: remove`` has the serial
taken off its targets (handlers/undeploy.py, decision 0028). A RevokedOutOfBand (revoked at the CA directly,
decision 0030) the same, its replacement being the gateway's RenewalDue when the profile's on_external_revocation
says replace."""

from __future__ import annotations

import asyncio
import logging

from services.common.consumer import InvalidMessage, Outbound
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import ProvisionCertificate
from services.common.contracts.envelope import Envelope, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateRevoked, RenewalDue
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration
from services.common.contracts.identity import message_id
from services.common.contracts.requests import IssueRequested, RenewRequested
from services.common.contracts.signing import signed
from services.deployer import projection, store
from services.deployer.botkeys import generate_key, make_csr, names_of, private_pem
from services.deployer.context import DeployerContext
from services.deployer.handlers.undeploy import undeploy_revoked
from services.deployer.retirement import on_serial_revoked, on_serial_revoked_out_of_band
from services.deployer.targets.base import public_key_sha256

log = logging.getLogger(__name__)
SOURCE = "/certrail/deployer"


def _request_id(cause_id: str) -> str:
    return "deployer-" + message_id(cause_id, "bot-request")


async def _new_key_request(ctx: DeployerContext, envelope: Envelope, *, certificate_id: str, profile: str,
                           algorithm: KeyAlgorithm, sans: list[str], common_name: str | None,
                           replaces_serial: str | None, deadline=None) -> list[Outbound]:  # type: ignore[no-untyped-def]
    def existing() -> store.BotKey | None:
        with ctx.read() as session:
            return store.bot_key_by_cause(session, envelope.id)

    found = await asyncio.to_thread(existing)
    if found is not None:
        ctx.metrics.bot_requests.labels("replayed").inc()
        return [Outbound(topic=ctx.topics.requests, event=decode(found.request_event.encode(), CATALOG), key=certificate_id)]

    key = await asyncio.to_thread(generate_key, algorithm)
    ctx.metrics.keys_generated.labels(algorithm.value).inc()
    key_pem = private_pem(key)
    csr = make_csr(key, sans, common_name)
    request_id = _request_id(envelope.id)
    request: IssueRequested | RenewRequested
    if replaces_serial is None:
        request = IssueRequested(request_id=request_id, requester=ctx.requester, profile=profile, certificate_id=certificate_id,
                                 csr=csr, sans=sans, deadline=deadline)
    else:
        request = RenewRequested(request_id=request_id, requester=ctx.requester, certificate_id=certificate_id, csr=csr,
                                 replaces_serial=replaces_serial, deadline=deadline)
    request = signed(request, ctx.request_key_id, ctx.request_key)
    now = ctx.clock()
    event = make_event(request, id=message_id(envelope.id, request.TYPE), source=SOURCE, time=now, subject=certificate_id,
                       correlationid=envelope.correlationid, causationid=envelope.id)
    encoded = encode(event).decode()

    def save() -> None:
        with ctx.write() as session:
            store.add_bot_key(session, cause_id=envelope.id, certificate_id=certificate_id, profile=profile,
                              public_key_sha256=public_key_sha256(key_pem), key_algorithm=algorithm.value,
                              encrypted_key=ctx.box.encrypt(key_pem), key_id=ctx.box.current_key_id, csr_pem=csr,
                              request_id=request_id, request_event=encoded, replaces_serial=replaces_serial, now=now)

    await asyncio.to_thread(save)  # stored before the request leaves: the certificate always finds its key
    ctx.metrics.bot_requests.labels("renew" if replaces_serial else "issue").inc()
    log.info("generated a %s key for %s; published %s %s", algorithm.value, certificate_id, request.TYPE, request_id)
    return [Outbound(topic=ctx.topics.requests, event=event, key=certificate_id)]


async def on_provision(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    command = envelope.data
    assert isinstance(command, ProvisionCertificate)

    def key_generation() -> str | None:
        with ctx.read() as session:
            return projection.profile_key_generation(session, command.profile)

    if await asyncio.to_thread(key_generation) == KeyGeneration.REQUESTER.value:
        ctx.metrics.refusals.labels(ErrorCode.REQUESTER_NOT_AUTHORISED.value).inc()
        log.warning("refused ProvisionCertificate %s for %s: profile %s is requester-held", envelope.id, command.certificate_id,
                    command.profile)
        raise InvalidMessage(
            f"ProvisionCertificate for {command.certificate_id}: profile {command.profile!r} is requester-held, the deployer "
            "generates no key for it", code=ErrorCode.REQUESTER_NOT_AUTHORISED)
    return await _new_key_request(ctx, envelope, certificate_id=command.certificate_id, profile=command.profile,
                                  algorithm=command.key_algorithm, sans=list(command.sans), common_name=command.common_name,
                                  replaces_serial=command.replaces_serial, deadline=command.deadline)


async def _replace(ctx: DeployerContext, envelope: Envelope, certificate_id: str, serial: str, profile: str | None) -> list[Outbound]:
    def prior() -> store.BotKey | None:
        with ctx.read() as session:
            return store.bot_key_by_serial(session, certificate_id, serial)

    key = await asyncio.to_thread(prior)
    if key is None or key.certificate_pem is None:
        return []
    common_name, sans = names_of(key.certificate_pem)
    return await _new_key_request(ctx, envelope, certificate_id=certificate_id, profile=profile or key.profile,
                                  algorithm=KeyAlgorithm(key.key_algorithm), sans=sans, common_name=common_name,
                                  replaces_serial=serial)


async def on_renewal_due(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    due = envelope.data
    assert isinstance(due, RenewalDue)
    if due.key_generation is not KeyGeneration.BOT:
        return []  # the requester renews its own key
    out = await _replace(ctx, envelope, due.certificate_id, due.serial, due.profile)
    if not out:
        raise InvalidMessage(
            f"RenewalDue for bot-held certificate {due.certificate_id} serial {due.serial}: this deployer holds no key issued "
            "with that serial", code=ErrorCode.KEY_NOT_FOUND)
    return out


async def on_revoked_out_of_band(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    """Off its targets first (profile on_revocation: remove, no replacement), then its key retired."""
    await undeploy_revoked(ctx, envelope)
    await on_serial_revoked_out_of_band(ctx, envelope)
    return []


async def on_revoked(ctx: DeployerContext, envelope: Envelope) -> list[Outbound]:
    revoked = envelope.data
    assert isinstance(revoked, CertificateRevoked)
    if not revoked.replace:  # first, so that a keyCompromise destruction below finds the copies already gone
        await undeploy_revoked(ctx, envelope)  # profile on_revocation: remove -> off its targets (handlers/undeploy.py)
    await on_serial_revoked(ctx, envelope)  # its key superseded; destroyed at once for keyCompromise (retirement.py)
    if not revoked.replace:
        return []
    out = await _replace(ctx, envelope, revoked.certificate_id, revoked.serial, None)
    if not out:
        log.info("revoked %s serial %s is not bot-held here: its requester sends the replacement", revoked.certificate_id,
                 revoked.serial)
    return out

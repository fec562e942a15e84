"""The ``/acme`` routes of orders, authorizations and challenges (RFC 8555 7.4, 7.5; issue 22 slice 2a), added
to the door's router by routes.py, and `Validations`: the challenge validations running in the background.

- ``POST /acme/new-order`` (kid): 201, the order (pending; ready when every authorization was reused), Location
- ``POST /acme/order/{id}``: POST-as-GET; ``/acme/authz/{id}``: POST-as-GET, or ``{"status": "deactivated"}``
- ``POST /acme/chall/{id}``: POST-as-GET, or ``{}``: start the validation (pending -> processing; one attempt);
  a challenge that is not pending is answered as it is (its validation is not started twice); a processing one
  with Retry-After

Only the owning account reads them: any other id answers the same unauthorized problem, whether it exists or
not. A validation runs as an asyncio task held by `Validations` (`drain` awaits them at shutdown); its outcome is
written in one transaction (orders.finish_challenge) and its admin event published after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from fastapi import APIRouter, Request
from sqlalchemy import Engine
from starlette.responses import Response

from services.common.db import read_session
from services.gateway.acme import changes, orders, store
from services.gateway.acme import orders_store as db
from services.gateway.acme.challenges import (
    DNS01,
    HTTP01,
    TLS_ALPN01,
    ChallengePolicy,
    ChallengeProblem,
    ProblemType,
    ValidationResult,
    dns01_txt_value,
    key_authorization,
    validate_dns01,
    validate_http01,
)
from services.gateway.acme.problems import malformed
from services.gateway.acme.settings import AcmeSettings
from services.gateway.acme.tls_alpn import validate_tls_alpn01
from services.gateway.api_common import AdminPublisher

log = logging.getLogger(__name__)

#: (identifier, token, expected, policy) -> the result: http-01 and tls-alpn-01 get the key authorization, dns-01
#: its digest
Validator = Callable[[str, str, str, ChallengePolicy], Awaitable[ValidationResult]]


async def _http01(identifier: str, token: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
    return await validate_http01(identifier, token, expected, policy)


async def _dns01(identifier: str, token: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
    return await validate_dns01(identifier, dns01_txt_value(expected), policy)


async def _tls_alpn01(identifier: str, token: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
    return await validate_tls_alpn01(identifier, expected, policy)


VALIDATORS: dict[str, Validator] = {HTTP01: _http01, DNS01: _dns01, TLS_ALPN01: _tls_alpn01}


class Verify(Protocol):
    async def __call__(self, request: Request, *, by_account: bool | None) -> Any: ...


class Answer(Protocol):
    async def __call__(self, body: dict[str, Any] | bytes | None, *, status: int = 200, location: str | None = None,
                       up: str | None = None, retry_after: int | None = None,
                       media_type: str | None = None) -> Response: ...


@dataclass
class Validations:
    """The challenge validations in flight, one asyncio task each (one attempt; nobody retries)."""

    engine: Engine
    settings: AcmeSettings
    admin: AdminPublisher
    clock: Callable[[], datetime]
    validators: dict[str, Validator] = field(default_factory=lambda: dict(VALIDATORS))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, account: store.Account, challenge: db.Challenge, authz: db.Authorization) -> None:
        task = asyncio.create_task(self.run(account, challenge, authz), name=f"acme-validate-{challenge.challenge_id}")
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the outcome could not be written (the database)
            log.error("ACME validation task %s failed; its challenge stays processing", task.get_name(),
                      exc_info=task.exception())

    async def run(self, account: store.Account, challenge: db.Challenge, authz: db.Authorization) -> None:
        result = await self._validate(account, challenge, authz)
        problem = None if result.problem is None else result.problem.document()
        addresses = [r.address for r in result.records if r.address]
        actor = changes.account_actor(self.engine, account.account_id, self.clock)
        try:
            await asyncio.to_thread(lambda: orders.finish_challenge(
                actor, account, challenge, authz, problem=problem, addresses=addresses,
                authz_lifetime=timedelta(seconds=self.settings.authz_lifetime_s), now=self.clock()))
        except orders.NotClaimed:  # finished meanwhile (cannot happen while one task holds the claim)
            log.warning("ACME challenge %s was not processing any more", challenge.challenge_id)
        await self.admin.flush(actor)

    async def _validate(self, account: store.Account, challenge: db.Challenge, authz: db.Authorization) -> ValidationResult:
        validator = self.validators.get(challenge.type)
        if validator is None:
            return ValidationResult(ChallengeProblem(ProblemType.MALFORMED, f"{challenge.type} is not validated here"))
        # the key authorization of the account's key now (a key rolled over since the order counts)
        current = await asyncio.to_thread(self._account, account.account_id)
        thumbprint = (current or account).jwk_thumbprint
        try:
            return await validator(authz.identifier, challenge.token, key_authorization(challenge.token, thumbprint),
                                   self.settings.challenges)
        except Exception:  # a bug in validation must still end the challenge (invalid), never leave it processing
            log.exception("ACME validation of challenge %s failed unexpectedly", challenge.challenge_id)
            return ValidationResult(ChallengeProblem(ProblemType.SERVER_INTERNAL, "the validation failed inside the server"))

    def _account(self, account_id: str) -> store.Account | None:
        with read_session(self.engine) as session:
            return store.get_account(session, account_id)

    def abandoned_before(self, now: datetime) -> datetime:
        deadline = max(self.settings.challenges.timeout_s, self.settings.challenges.dns01_timeout_s)
        return now - timedelta(seconds=deadline + self.settings.sweep_margin_s)

    async def sweep(self, limit: int = 100) -> int:
        """Fail the challenges left processing by a gateway that stopped mid-validation (claimed longer ago than the
        validation deadline and a margin: no validation of this or another instance is still running for them), each
        with serverInternal like any failed validation (AcmeChallengeFailed; the authorization and its waiting orders
        invalid). One attempt per challenge stays the rule: the client orders again. The number failed."""
        now = self.clock()

        def load() -> tuple[list[tuple[db.Challenge, db.Authorization | None]], dict[str, store.Account | None]]:
            with read_session(self.engine) as session:
                stale = db.stale_challenges(session, self.abandoned_before(now), limit)
                found = [(c, db.get_authz(session, c.authz_id)) for c in stale]
                return found, {a.account_id: store.get_account(session, a.account_id) for _, a in found if a is not None}

        found, accounts = await asyncio.to_thread(load)
        problem = ChallengeProblem(ProblemType.SERVER_INTERNAL, "the validation was interrupted (the gateway validating "
                                   "it stopped): order again").document()
        failed = 0
        for challenge, authz in found:
            account = accounts.get(authz.account_id) if authz is not None else None
            if authz is None or account is None:
                continue
            actor = changes.account_actor(self.engine, account.account_id, self.clock)
            try:
                await asyncio.to_thread(orders.finish_challenge, actor, account, challenge, authz, problem=problem,
                                        addresses=[], authz_lifetime=timedelta(seconds=self.settings.authz_lifetime_s),
                                        now=now)
                failed += 1
            except orders.NotClaimed:  # finished (or swept by another instance) meanwhile
                pass
            await self.admin.flush(actor)
        if failed:
            log.warning("ACME: %d challenge(s) left processing by a stopped gateway failed (serverInternal)", failed)
        return failed

    async def sweep_forever(self, stopped: asyncio.Event) -> None:
        """`sweep` every ``sweep_interval_s`` until ``stopped`` (a failed round is logged and retried)."""
        while not stopped.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("ACME: sweeping abandoned challenge validations failed")
            try:
                await asyncio.wait_for(stopped.wait(), self.settings.sweep_interval_s)
            except TimeoutError:
                pass

    async def drain(self, timeout_s: float | None = None) -> None:
        """Await the validations in flight (their own deadlines bound them); cancel what is left after ``timeout_s``."""
        if not self.tasks:
            return
        limit = timeout_s if timeout_s is not None else max(self.settings.challenges.timeout_s,
                                                            self.settings.challenges.dns01_timeout_s) + 5
        done, left = await asyncio.wait(set(self.tasks), timeout=limit)
        for task in left:
            task.cancel()


def add_order_routes(api: APIRouter, *, engine: Engine, settings: AcmeSettings, urls: orders.UrlMaker, verified: Verify,
                     answer: Answer, admin: AdminPublisher, clock: Callable[[], datetime], validations: Validations) -> None:
    def read(fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with read_session(engine) as session:
                return fn(session, *args)
        return asyncio.to_thread(run)

    def actor_of(account: store.Account) -> changes.Actor:
        return changes.account_actor(engine, account.account_id, clock)

    @api.post("/new-order")
    async def new_order(request: Request) -> Response:
        v = await verified(request, by_account=True)
        account: store.Account = v.account
        wanted = orders.parse_new_order(v.jws.payload_object(), max_identifiers=settings.max_identifiers,
                                        policy=settings.challenges)
        actor = actor_of(account)
        created = await asyncio.to_thread(lambda: orders.create_order(
            actor, account, wanted, policy=settings.challenges, order_lifetime=timedelta(seconds=settings.order_lifetime_s),
            reuse=settings.authz_reuse, now=clock()))
        await admin.flush(actor)
        return await answer(orders.order_document(urls, created.order, clock()), status=201,
                            location=urls.of(f"order/{created.order.order_id}"))

    @api.post("/order/{order_id}")
    async def order(order_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        found = orders.owned(v.account, await read(db.get_order, order_id), "order", order_id)
        if v.jws.payload_object() is not None:
            raise malformed("an order is read with POST-as-GET (an empty payload)")
        retry = settings.retry_after_s if found.status == db.PROCESSING else None  # RFC 8555 7.4: poll again then
        return await answer(orders.order_document(urls, found, clock()), location=urls.of(f"order/{order_id}"),
                            retry_after=retry)

    @api.post("/authz/{authz_id}")
    async def authorization(authz_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        authz: db.Authorization = orders.owned(v.account, await read(db.get_authz, authz_id), "authorization", authz_id)
        payload = v.jws.payload_object()
        if payload is not None:
            if payload != {"status": db.DEACTIVATED}:
                raise malformed('an authorization is read with POST-as-GET or deactivated with {"status": "deactivated"}')
            actor = actor_of(v.account)
            try:
                await asyncio.to_thread(orders.deactivate_authorization, actor, v.account, authz, clock())
            finally:
                await admin.flush(actor)
            authz = await read(db.get_authz, authz_id)
        return await answer(orders.authz_document(urls, authz, await read(db.challenges_of, authz_id), clock()))

    @api.post("/chall/{challenge_id}")
    async def challenge(challenge_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        found: db.Challenge | None = await read(db.get_challenge, challenge_id)
        authz = await read(db.get_authz, found.authz_id) if found is not None else None
        orders.owned(v.account, authz, "challenge", challenge_id)
        assert found is not None and authz is not None
        payload = v.jws.payload_object()
        if payload is not None:
            if payload:
                raise malformed("a challenge is answered with an empty object {} (or read with POST-as-GET)")
            if found.status == db.PENDING:
                now = clock()
                state = authz.status_at(now)
                if state != db.PENDING:
                    raise malformed(f"the challenge's authorization is {state}: only a pending one is validated")
                actor = actor_of(v.account)
                try:
                    await asyncio.to_thread(orders.start_challenge, actor, v.account, found, authz, now)
                except orders.NotClaimed:
                    pass  # another request (or instance) validates it, or another challenge of its authorization
                else:
                    validations.start(v.account, found, authz)
                finally:
                    await admin.flush(actor)
                found = await read(db.get_challenge, challenge_id)
        retry = settings.retry_after_s if found.status == db.PROCESSING else None  # RFC 8555 8.2: poll again then
        return await answer(orders.challenge_document(urls, found), up=urls.of(f"authz/{authz.authz_id}"),
                            retry_after=retry)

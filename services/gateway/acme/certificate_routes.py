"""The ``/acme`` routes after "ready" (RFC 8555 7.4, 7.6, 7.1.2.1; issue 22 slice 2b), added to the door's router by
routes.py:

- ``POST /acme/order/{id}/finalize`` (kid, the order's account) ``{"csr"}``: orderNotReady (403) unless the order is
  ready; badCSR for a CSR that does not parse, verify or name exactly the order's identifiers; then the intake
  (finalize.py): the order processing (answered with Retry-After) or invalid with the intake's refusal
- ``POST /acme/cert/{order id}`` (POST-as-GET, the order's account): ``application/pem-certificate-chain``
- ``POST /acme/revoke-cert`` (kid of the ordering account, or jwk of the certificate's key): the intake's revoke
  path; 200 with no body once the request is accepted, and AcmeCertificateRevoked recorded (changes.py)
- ``POST /acme/account/{id}/orders`` (POST-as-GET, the account): its orders' URLs, the newest first
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine
from starlette.responses import Response

from services.common.contracts.errors import ErrorCode
from services.common.contracts.requests import RevokeRequested
from services.common.db import read_session
from services.gateway.acme import certificates, changes, finalize, orders, store
from services.gateway.acme import orders_store as db
from services.gateway.acme.order_routes import Answer, Verify
from services.gateway.acme.problems import AcmeError, AcmeErrorType, malformed, unauthorized
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher


def _no_intake() -> AcmeError:
    return AcmeError(AcmeErrorType.SERVER_INTERNAL, "this server cannot take certificate requests (no intake)")


def add_certificate_routes(api: APIRouter, *, engine: Engine, settings: AcmeSettings, urls: orders.UrlMaker, verified: Verify,
                           answer: Answer, admin: AdminPublisher, clock: Callable[[], datetime],
                           requests: finalize.Requests | None) -> None:
    def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with read_session(engine) as session:
                return fn(session, *args, **kwargs)
        return asyncio.to_thread(run)

    @api.post("/order/{order_id}/finalize")
    async def finalize_order(order_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        account: store.Account = v.account
        found: db.Order = orders.owned(account, await read(db.get_order, order_id), "order", order_id)
        state = found.status_at(clock())
        if state != db.READY:
            raise AcmeError(AcmeErrorType.ORDER_NOT_READY, f"the order is {state}: only a ready order is finalized")
        csr_pem = finalize.parse_csr(v.jws.payload_object(), found.identifiers)
        if requests is None:
            raise _no_intake()
        actor = changes.account_actor(engine, account.account_id, clock)
        try:
            current = await finalize.finalize(requests, actor, account, found, csr_pem)
        finally:
            await admin.flush(actor)
        retry = settings.retry_after_s if current.status == db.PROCESSING else None
        return await answer(orders.order_document(urls, current, clock()), location=urls.of(f"order/{order_id}"),
                            retry_after=retry)

    @api.post("/cert/{order_id}")
    async def certificate(order_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        if v.jws.payload_object() is not None:
            raise malformed("a certificate is downloaded with POST-as-GET (an empty payload)")
        found: certificates.Certificate | None = await read(certificates.get_certificate, order_id)
        if found is None or found.account_id != v.account.account_id:
            raise unauthorized(f"this account has no certificate {order_id[:64]!r}")
        return await answer(certificates.chain_pem(found), media_type=certificates.PEM_CHAIN)

    @api.post("/revoke-cert")
    async def revoke_cert(request: Request) -> Response:
        v = await verified(request, by_account=None)
        asked: certificates.Revocation = await read(certificates.revocation, v.jws.payload_object(), account=v.account,
                                                    key=v.key)
        if requests is None:
            raise _no_intake()
        revoke = RevokeRequested(request_id=certificates.revoke_request_id(asked.certificate.serial),
                                 requester=asked.account.requester, certificate_id=asked.certificate.certificate_id,
                                 serial=asked.certificate.serial, reason=asked.reason)
        outcome = await requests.ask(revoke)
        result = outcome.answer
        if result.status == "accepted" and result.replayed:
            raise AcmeError(AcmeErrorType.ALREADY_REVOKED, "this certificate's revocation was requested already")
        if result.status != "accepted":
            error = result.error or {"code": ErrorCode.HANDLER_REJECTED.value, "message": "rejected"}
            if error["code"] == ErrorCode.DUPLICATE_REQUEST_CONFLICT:
                raise AcmeError(AcmeErrorType.ALREADY_REVOKED, "this certificate's revocation was requested already")
            problem = finalize.problem_of(error["code"], error["message"])
            raise AcmeError(AcmeErrorType(problem["type"].rsplit(":", 1)[1]), problem["detail"], status=problem["status"])
        actor = changes.account_actor(engine, asked.account.account_id, clock)
        try:
            await asyncio.to_thread(changes.record_revocation, actor, asked.account, asked.certificate.order_id, {
                "certificate_id": revoke.certificate_id, "serial": revoke.serial, "reason": str(asked.reason),
                "request_id": revoke.request_id, "signed_with": "account" if v.account is not None else "certificate_key"})
        finally:
            await admin.flush(actor)
        return await answer(None)

    @api.post("/account/{account_id}/orders")
    async def account_orders(account_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        if v.account.account_id != account_id:
            raise unauthorized("the JWS's kid is not this account")
        if v.jws.payload_object() is not None:
            raise malformed("an orders list is read with POST-as-GET (an empty payload)")
        listed: list[db.Order] = await read(db.orders_of, account_id, settings.max_orders_listed)
        return await answer({"orders": [urls.of(f"order/{o.order_id}") for o in listed]})

"""The ``/acme`` router (RFC 8555): directory, newNonce, newAccount (External Account Binding required),
account update / deactivation / POST-as-GET, keyChange. Every POST is a JWS (jws.py) checked in the same
order: media type and size, the flattened serialization, alg, url, nonce present, jwk or kid (the account
must exist and be valid), the signature, then the nonce is used up (nonces.py). Every answer, refusals
included, carries a fresh Replay-Nonce and a ``Link: <directory>;rel="index"``; refusals are problem
documents (problems.py). newOrder, orders, authorizations and challenges are order_routes.py's; finalize, the
certificate download, revokeCert and an account's orders list are certificate_routes.py's, renewalInfo (RFC 9773, an
unauthenticated GET) renewal_info.py's (all added here).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy import Engine
from starlette.responses import JSONResponse, Response

from services.common.connectors.secretbox import SecretBox
from services.common.db import read_session
from services.gateway.acme import changes, store
from services.gateway.acme.certificate_routes import add_certificate_routes
from services.gateway.acme.finalize import Requests
from services.gateway.acme.jws import (
    AccountKey,
    FlatJws,
    account_key,
    json_value,
    outer_header,
    parse_body,
    parse_eab,
    parse_key_change,
    verify,
)
from services.gateway.acme.nonces import Nonces, SqlNonces
from services.gateway.acme.order_routes import Validations, Validator, add_order_routes
from services.gateway.acme.problems import AcmeError, AcmeErrorType, malformed, unauthorized
from services.gateway.acme.renewal_info import add_renewal_info_route
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api_common import AdminPublisher
from services.gateway.scheduler.settings import SchedulerSettings

JOSE_CONTENT_TYPE = "application/jose+json"
PREFIX = "/acme"
_MAILTO = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]{1,64}@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_ACCOUNT_ID = re.compile(r"^[a-z0-9]{8,64}$")


@dataclass(frozen=True)
class Urls:
    base: str  # the external base URL, without a trailing slash

    def of(self, path: str) -> str:
        return f"{self.base}{PREFIX}/{path}"

    @property
    def directory(self) -> str:
        return self.of("directory")

    def account(self, account_id: str) -> str:
        return self.of(f"account/{account_id}")

    def account_id_of(self, kid: str) -> str | None:
        prefix = self.of("account/")
        if not kid.startswith(prefix):
            return None
        account_id = kid[len(prefix):]
        return account_id if _ACCOUNT_ID.fullmatch(account_id) else None

    def request(self, request: Request) -> str:
        """The URL this request was sent to, as the client names it (the external base + the path)."""
        query = request.url.query
        return self.base + request.url.path + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Verified:
    jws: FlatJws
    key: AccountKey
    account: store.Account | None  # when signed by an account (kid)


def contacts(value: Any, limit: int) -> list[str]:
    """A ``contact`` array: ``mailto:`` URLs of one address each (RFC 8555 7.3): unsupportedContact for other
    schemes, invalidContact for an address that is not one."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise malformed("contact must be an array of strings")
    if len(value) > limit:
        raise malformed(f"at most {limit} contacts")
    checked = []
    for contact in value:
        scheme, _, address = contact.partition(":")
        if scheme.lower() != "mailto" or not _:
            raise AcmeError(AcmeErrorType.UNSUPPORTED_CONTACT, "only mailto: contacts are supported")
        if _MAILTO.fullmatch(address) is None:
            raise AcmeError(AcmeErrorType.INVALID_CONTACT, "a contact is not one mailto: address (no hfields, no list)")
        checked.append(f"mailto:{address}")
    return checked


def account_document(urls: Urls, account: store.Account) -> dict[str, Any]:
    return {"status": account.status, "contact": account.contact, "termsOfServiceAgreed": account.terms_agreed,
            "key": account.jwk, "orders": urls.of(f"account/{account.account_id}/orders"),
            "createdAt": account.created_at.isoformat()}


def install(app: FastAPI, *, engine: Engine, box: SecretBox, settings: AcmeSettings, http_port: int, admin: AdminPublisher,
            clock: Callable[[], datetime], nonces: Nonces | None = None,
            validators: dict[str, Validator] | None = None, requests: Requests | None = None,
            scheduler: SchedulerSettings | None = None, https_port: int | None = None) -> Nonces:
    """Route ``/acme`` on ``app`` and answer its refusals as problem documents; the nonce store used. The
    challenge validations in flight are ``app.state.acme_validations`` (`Validations.drain` at shutdown);
    ``validators``: challenge type -> validator, instead of the real ones (unit tests); ``requests``: the
    gateway's intake for finalize and revokeCert (without it both answer serverInternal); ``scheduler``: the
    renewal scheduler's settings, whose jitter renewalInfo's windows use (the gateway's, so both agree);
    ``https_port``: the gateway's HTTPS listener, whose URL is then the door's (`AcmeSettings.base_url`), and the
    only port /acme answers on unless an external URL is configured (decision 0033, addendum)."""
    used = nonces or SqlNonces(engine, clock, lifetime=timedelta(seconds=settings.nonce_lifetime_s))
    urls = Urls(settings.base_url(http_port, https_port))
    validations = Validations(engine, settings, admin, clock)
    if validators is not None:
        validations.validators = dict(validators)
    app.state.acme_validations = validations
    app.include_router(acme_router(engine, box, settings, urls, used, admin, clock, validations, requests,
                                   scheduler or SchedulerSettings(), listener_port=settings.listener_port(https_port)))

    @app.exception_handler(AcmeError)
    async def on_acme_error(_: Request, error: AcmeError) -> JSONResponse:
        return error.response(await _headers(used, urls))

    return used


async def _headers(nonces: Nonces, urls: Urls) -> dict[str, str]:
    return {"Replay-Nonce": await asyncio.to_thread(nonces.issue), "Link": f'<{urls.directory}>;rel="index"',
            "Cache-Control": "no-store"}


def acme_router(engine: Engine, box: SecretBox, settings: AcmeSettings, urls: Urls, nonces: Nonces, admin: AdminPublisher,
                clock: Callable[[], datetime], validations: Validations, requests: Requests | None = None,
                scheduler: SchedulerSettings | None = None, listener_port: int | None = None) -> APIRouter:
    async def on_the_door_listener(request: Request) -> None:
        """With ``listener_port``, the door answers on that (HTTPS) port only: a request to /acme on another port
        (the plain HTTP one) is refused with a problem naming the directory, so that every JWS ``url`` the door
        accepts is the URL the request was really sent to (RFC 8555 6.4) and ACME stays on HTTPS (6.1)."""
        server = request.scope.get("server")
        if listener_port is not None and (server is None or server[1] != listener_port):
            raise unauthorized(f"the ACME door is served over HTTPS only: {urls.directory}")

    api = APIRouter(prefix=PREFIX, tags=["acme"], include_in_schema=False,
                    dependencies=[Depends(on_the_door_listener)])

    def read(fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with read_session(engine) as session:
                return fn(session, *args)
        return asyncio.to_thread(run)

    async def answer(body: dict[str, Any] | bytes | None, *, status: int = 200, location: str | None = None,
                     up: str | None = None, retry_after: int | None = None, media_type: str | None = None) -> Response:
        headers = await _headers(nonces, urls)
        if location is not None:
            headers["Location"] = location
        if up is not None:  # a challenge's authorization (RFC 8555 7.5.1)
            headers["Link"] += f', <{up}>;rel="up"'
        if retry_after is not None:  # a processing order (RFC 8555 7.4)
            headers["Retry-After"] = str(retry_after)
        if body is None:
            return Response(status_code=status, headers=headers)
        if isinstance(body, bytes):  # a certificate chain
            return Response(body, status_code=status, headers=headers, media_type=media_type)
        return JSONResponse(body, status_code=status, headers=headers)

    async def body_of(request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != JOSE_CONTENT_TYPE:
            raise malformed(f"send {JOSE_CONTENT_TYPE}", status=415)
        limit = settings.max_jws_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise malformed(f"the JWS is larger than {limit} bytes", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise malformed(f"the JWS is larger than {limit} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def verified(request: Request, *, by_account: bool | None) -> Verified:
        """The POST's JWS, verified: signed by an account (``kid``) when ``by_account``, else by a ``jwk``; by
        either when ``by_account`` is None (revokeCert)."""
        jws = parse_body(await body_of(request))
        header = outer_header(jws, urls.request(request))
        if by_account is None:
            by_account = header.kid is not None
        account = None
        if by_account:
            if header.kid is None:
                raise malformed("this resource needs a JWS signed by an account (kid), not a jwk")
            account_id = urls.account_id_of(header.kid)
            account = await read(store.get_account, account_id) if account_id else None
            if account is None:
                raise AcmeError(AcmeErrorType.ACCOUNT_DOES_NOT_EXIST, "no account at the JWS's kid")
            if account.status != store.VALID:
                raise unauthorized(f"the account is {account.status}")
            key = account_key(account.jwk)
        else:
            if header.jwk is None:
                raise malformed("newAccount needs a JWS with the account's jwk, not a kid")
            key = header.jwk
        verify(jws, header.alg, key)
        if not await asyncio.to_thread(nonces.use, header.nonce):
            raise AcmeError(AcmeErrorType.BAD_NONCE, "the nonce was used already, expired or is not this server's")
        return Verified(jws, key, account)

    @api.get("/directory")
    async def directory() -> JSONResponse:
        meta: dict[str, Any] = {"externalAccountRequired": True}
        if settings.terms_of_service_url:
            meta["termsOfService"] = settings.terms_of_service_url
        return JSONResponse({"newNonce": urls.of("new-nonce"), "newAccount": urls.of("new-account"),
                             "newOrder": urls.of("new-order"), "revokeCert": urls.of("revoke-cert"),
                             "keyChange": urls.of("key-change"), "renewalInfo": urls.of("renewal-info"),
                             "meta": meta})

    @api.head("/new-nonce")
    async def new_nonce_head() -> Response:
        return await answer(None, status=200)

    @api.get("/new-nonce")
    async def new_nonce_get() -> Response:
        return await answer(None, status=204)

    @api.post("/new-account")
    async def new_account(request: Request) -> Response:
        v = await verified(request, by_account=False)
        payload = v.jws.payload_object()
        if payload is None:
            raise malformed("newAccount needs a payload")
        only_existing = payload.get("onlyReturnExisting", False)
        if not isinstance(only_existing, bool):
            raise malformed("onlyReturnExisting must be a boolean")
        existing = await read(store.account_by_thumbprint, v.key.thumbprint)
        if existing is not None:
            if existing.status != store.VALID:
                raise unauthorized(f"the account of this key is {existing.status}")
            return await answer(account_document(urls, existing), location=urls.account(existing.account_id))
        if only_existing:
            raise AcmeError(AcmeErrorType.ACCOUNT_DOES_NOT_EXIST, "no account has this key")
        agreed = payload.get("termsOfServiceAgreed", False)
        if not isinstance(agreed, bool):
            raise malformed("termsOfServiceAgreed must be a boolean")
        if settings.terms_of_service_url and not agreed:
            raise malformed(f"agree to the terms of service ({settings.terms_of_service_url}): termsOfServiceAgreed true")
        contact = contacts(payload.get("contact") or [], settings.max_contacts)
        if payload.get("externalAccountBinding") is None:
            raise AcmeError(AcmeErrorType.EXTERNAL_ACCOUNT_REQUIRED, "this server requires an External Account Binding: "
                            "ask certrail's operators for an EAB key id and HMAC key")
        binding = parse_eab(payload["externalAccountBinding"], account=v.key, new_account_url=urls.of("new-account"))
        # the MAC first: only a holder of the HMAC key learns whether its key is revoked or used
        eab = await read(store.get_eab_key, binding.key_id)
        hmac_key = await read(store.eab_hmac_key, box, binding.key_id) if eab is not None else None
        if eab is None or hmac_key is None or not binding.verifies(hmac_key):
            raise unauthorized("the External Account Binding does not verify: unknown key id, or not its HMAC key")
        if eab.revoked_at is not None:
            raise unauthorized("the External Account Binding key is revoked")
        if eab.account_id is not None:
            raise unauthorized("the External Account Binding key was used already (each key binds one account)")
        def actor_of(account_id: str) -> changes.Actor:
            return changes.account_actor(engine, account_id, clock)

        account, actor = await asyncio.to_thread(lambda: changes.create_account(
            actor_of, key=v.key, contact=contact, terms_agreed=agreed, eab=eab, now=clock()))
        await admin.flush(actor)
        return await answer(account_document(urls, account), status=201, location=urls.account(account.account_id))

    @api.post("/account/{account_id}")
    async def account(account_id: str, request: Request) -> Response:
        v = await verified(request, by_account=True)
        assert v.account is not None
        if v.account.account_id != account_id:
            raise unauthorized("the JWS's kid is not this account")
        payload = v.jws.payload_object()
        current = v.account
        if payload is None:  # POST-as-GET
            return await answer(account_document(urls, current))
        status = payload.get("status")
        if status is not None and status not in (store.DEACTIVATED, current.status):
            raise malformed("an account's status can only be set to deactivated")
        given = payload.get("contact")
        actor = changes.account_actor(engine, current.account_id, clock)
        if given is not None:
            wanted = contacts(given, settings.max_contacts)
            if wanted != current.contact:
                current = await asyncio.to_thread(changes.update_contact, actor, current, wanted, clock())
        if status == store.DEACTIVATED:
            current = await asyncio.to_thread(changes.deactivate, actor, current, clock())
        await admin.flush(actor)
        return await answer(account_document(urls, current))

    @api.post("/key-change")
    async def key_change(request: Request) -> Response:
        v = await verified(request, by_account=True)
        assert v.account is not None
        account_url = urls.account(v.account.account_id)
        inner = json_value(v.jws.payload, "the payload") if v.jws.payload_b64 else None
        new = parse_key_change(inner, url=urls.request(request), account_url=account_url, current=v.key)
        if new.thumbprint == v.key.thumbprint:
            raise malformed("the new key is the account's current key")
        other = await read(store.account_by_thumbprint, new.thumbprint)
        if other is not None:
            raise AcmeError(AcmeErrorType.MALFORMED, "another account uses the new key", status=409,
                            headers={"Location": urls.account(other.account_id)})
        actor = changes.account_actor(engine, v.account.account_id, clock)
        changed = await asyncio.to_thread(changes.change_key, actor, v.account, new, clock())
        await admin.flush(actor)
        return await answer(account_document(urls, changed), location=account_url)

    add_order_routes(api, engine=engine, settings=settings, urls=urls, verified=verified, answer=answer, admin=admin,
                     clock=clock, validations=validations)
    add_certificate_routes(api, engine=engine, settings=settings, urls=urls, verified=verified, answer=answer, admin=admin,
                           clock=clock, requests=requests)
    add_renewal_info_route(api, read=read, answer=answer, scheduler=scheduler or SchedulerSettings(),
                           retry_after_s=settings.renewal_info_retry_after_s, clock=clock)

    @api.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def elsewhere(rest: str, request: Request) -> Response:
        known = (rest in ("directory", "new-nonce", "new-account", "key-change", "new-order", "revoke-cert")
                 or rest.startswith(("account/", "order/", "authz/", "chall/", "cert/")))
        if known and request.method != "POST" or rest in ("directory", "new-nonce"):
            raise malformed(f"{request.method} is not allowed here", status=405)
        if rest.startswith("renewal-info/") and "/" not in rest[len("renewal-info/"):] and request.method != "GET":
            raise malformed(f"{request.method} is not allowed here: renewalInfo is read with GET", status=405)
        raise malformed(f"{PREFIX}/{rest[:100]} is not served: this ACME server serves accounts, orders, "
                        "authorizations, finalize, certificates, revokeCert and renewal-info/{certID}", status=404)

    return api

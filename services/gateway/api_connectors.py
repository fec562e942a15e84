"""``/v1/connectors``: the emCA connector registry over HTTP (admins write; admins and auditors
read). Create and edit take JSON (files base64: ``pfx_base64``, ``ca_bundle_base64``, or the bundle
as ``ca_bundle_pem`` text) or ``multipart/form-data`` (the same fields, the PFX and the CA bundle
as file parts ``pfx`` and ``ca_bundle``). The registry is the issuer's (decision 0034): the gateway
authorises, checks the body, answers "in use" from its own projections, and asks the issuer's internal
API (services/gateway/issuer_api.py), which validates against emCA, stores and records the admin event
(decision 0019); a change refused here is reported to the issuer and recorded there. Each change's events
come back with the answer and are folded into the gateway's own view of the connectors at once
(connector_view.py). Secrets are never answered (``***``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.connectors.models import (
    SECRET_FIELDS,
    ChangeAction,
    ConnectorEdit,
    ConnectorSecrets,
    ConnectorSpec,
    EmcaVersion,
    RegistryCode,
    edit_to_wire,
    spec_to_wire,
)
from services.common.contracts.admin import REDACTED
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import CONNECTOR_NAME_PATTERN
from services.common.db import read_session, write_session
from services.gateway import connector_view, store
from services.gateway.api_common import (
    ApiCode,
    Problem,
    claims_of,
    json_body_doc,
    json_object,
    multipart_parts,
    read_body,
    require,
    validation_problem,
)
from services.gateway.connector_usage import UsageCheck
from services.gateway.issuer_api import IssuerApi, IssuerRefused, IssuerUnavailable
from services.gateway.policy.tokens import Action, TokenClaims
from services.gateway.policy.violation import shown

FILE_FIELDS = {"pfx": "pfx_base64", "ca_bundle": "ca_bundle_base64"}


class ProfileUsage:
    """A `UsageCheck`: provisioning profiles that name the connector refuse its deletion."""

    name = "provisioning profiles"

    def usages(self, session: Session, connector: str) -> list[str]:
        names = store.profiles_using_connector(session, connector)
        return [f"{len(names)} profile(s): {', '.join(sorted(names)[:10])}"] if names else []


class IssuedCertificateUsage:
    """A `UsageCheck`: certificates still live through the connector refuse its deletion: a current serial not yet
    expired, or a request waiting for its outcome, from the gateway's own projections (store.py), never another
    service's tables."""

    name = "live certificates"

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *, examples: int = 5) -> None:
        self._clock = clock
        self._examples = examples

    def usages(self, session: Session, connector: str) -> list[str]:
        count, ids = store.live_certificates_of_connector(session, connector, self._clock(), self._examples)
        return [f"{count} live certificate(s), e.g. {', '.join(ids)}"] if count else []


def usage_checks(clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[UsageCheck]:
    """What refuses a connector's deletion, in every door of the gateway (the API, the CLI, the console)."""
    return [ProfileUsage(), IssuedCertificateUsage(clock)]


# -- bodies --------------------------------------------------------------------------------------


#: schema-only constraints: ConnectorSpec (services/common/connectors/models.py) checks them; the
#: document states them so that a body the schema accepts is not refused for its shape
_TEXT: dict[str, Any] = {"minLength": 1, "maxLength": 256}
_BASE_URL: dict[str, Any] = {"minLength": 9, "maxLength": 2048, "pattern": "^[Hh][Tt][Tt][Pp][Ss]://[^/?#@\\s]+"}
_CONCURRENCY: dict[str, Any] = {"minimum": 1, "maximum": 256}
_SECRET: dict[str, Any] = {"minLength": 1, "pattern": "\\S"}


class ConnectorCreateBody(BaseModel):
    """A new connector: the fields of the CERTInext emCA screen and the chosen version's secrets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(json_schema_extra={"pattern": CONNECTOR_NAME_PATTERN})
    version: EmcaVersion
    base_url: str = Field(json_schema_extra=_BASE_URL)
    username: str = Field(json_schema_extra=_TEXT)
    issuing_ca: str = Field(json_schema_extra=_TEXT)
    subscriber_id: str = Field(json_schema_extra=_TEXT)
    default_profile: str = Field(json_schema_extra=_TEXT)
    concurrency: int = Field(default=8, json_schema_extra=_CONCURRENCY)
    ca_bundle_pem: str | None = Field(default=None, description="emCA's TLS CA bundle as PEM text")
    ca_bundle_base64: str | None = Field(default=None, description="the same, base64 of the file")
    password: SecretStr = Field(json_schema_extra=_SECRET)
    client_id: SecretStr | None = Field(default=None, description="4.2.x")
    aes_key: SecretStr | None = Field(default=None, description="V4.0.17")
    pfx_base64: SecretStr | None = Field(default=None, description="V4.0.17: base64 of the PFX emCA issued")
    pfx_password: SecretStr | None = Field(default=None, description="V4.0.17")


class ConnectorEditBody(BaseModel):
    """An edit: only the fields to change. ``repin`` accepts a changed issuing CA certificate."""

    model_config = ConfigDict(extra="forbid")

    version: EmcaVersion | None = None
    base_url: str | None = Field(default=None, json_schema_extra=_BASE_URL)
    username: str | None = Field(default=None, json_schema_extra=_TEXT)
    issuing_ca: str | None = Field(default=None, json_schema_extra=_TEXT)
    subscriber_id: str | None = Field(default=None, json_schema_extra=_TEXT)
    default_profile: str | None = Field(default=None, json_schema_extra=_TEXT)
    concurrency: int | None = Field(default=None, json_schema_extra=_CONCURRENCY)
    ca_bundle_pem: str | None = None
    ca_bundle_base64: str | None = None
    remove_ca_bundle: bool = False
    password: SecretStr | None = None
    client_id: SecretStr | None = None
    aes_key: SecretStr | None = None
    pfx_base64: SecretStr | None = None
    pfx_password: SecretStr | None = None
    repin: bool = False


class ConnectorMultipart(BaseModel):
    """``multipart/form-data``: the JSON fields as form fields; ``pfx`` and ``ca_bundle`` as files."""

    name: str
    version: EmcaVersion
    base_url: str
    username: str
    issuing_ca: str
    subscriber_id: str
    default_profile: str
    concurrency: int = 8
    password: str
    client_id: str | None = None
    aes_key: str | None = None
    pfx_password: str | None = None
    pfx: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})
    ca_bundle: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})


def _multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """Form fields (text) and files (as base64 under ``pfx_base64`` / ``ca_bundle_base64``)."""
    values: dict[str, Any] = {}
    for part in multipart_parts(content_type, raw):
        name, payload = part.name, part.payload
        if name in FILE_FIELDS:
            values[FILE_FIELDS[name]] = base64.b64encode(payload).decode("ascii")
        else:
            try:
                values[name] = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise Problem(ErrorCode.SCHEMA_VIOLATION, f"form field {shown(name)} is not UTF-8 text",
                              errors=[{"field": "body.form", "message": "not UTF-8"}]) from None
    return values


async def _fields(request: Request) -> dict[str, Any]:
    raw = await read_body(request)
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return _multipart(content_type, raw)
    if media in ("application/json", ""):
        return json_object(raw)
    raise Problem(ApiCode.UNSUPPORTED_MEDIA_TYPE, f"send application/json or multipart/form-data, not {media}")


def _decoded(value: str | None, field: str) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(ErrorCode.SCHEMA_VIOLATION, f"{field} is not base64", errors=[{"field": f"body.{field}",
                                                                                        "message": "not base64"}]) from None


def _bundle(pem: str | None, b64: str | None) -> str | None:
    if pem is not None and b64 is not None:
        raise Problem(ErrorCode.SCHEMA_VIOLATION, "give ca_bundle_pem or ca_bundle_base64 (or a ca_bundle file), not both")
    if b64 is not None:
        data = _decoded(b64, "ca_bundle_base64")
        assert data is not None
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise Problem(ErrorCode.SCHEMA_VIOLATION, "the CA bundle is not PEM text") from None
    return pem


def _body(model: type[Any], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise validation_problem(exc.errors(include_input=False, include_url=False), ("body",)) from None


def _secrets_of(body: Any) -> dict[str, Any]:
    secrets: dict[str, Any] = {}
    for name in ("password", "client_id", "aes_key", "pfx_password"):
        if getattr(body, name) is not None:
            secrets[name] = getattr(body, name)
    if body.pfx_base64 is not None:
        secrets["pfx"] = SecretBytes(_decoded(body.pfx_base64.get_secret_value(), "pfx_base64") or b"")
    return secrets


def input_error(error: ValidationError) -> Problem:
    """A pydantic error as one readable INVALID_INPUT refusal (input values are never echoed)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'connector'}: {e['msg']}" for e in error.errors(include_input=False)]
    return Problem(RegistryCode.INVALID_INPUT, "; ".join(parts))


def spec_from(values: dict[str, Any]) -> ConnectorSpec:
    body = _body(ConnectorCreateBody, values)
    plain = body.model_dump(exclude={"ca_bundle_base64", "ca_bundle_pem", *SECRET_FIELDS, "pfx_base64"})
    try:
        secrets = ConnectorSecrets.model_validate(_secrets_of(body))
        return ConnectorSpec.model_validate({**plain, "ca_bundle_pem": _bundle(body.ca_bundle_pem, body.ca_bundle_base64),
                                             "secrets": secrets})
    except ValidationError as exc:
        raise input_error(exc) from None


def edit_from(values: dict[str, Any]) -> ConnectorEdit:
    body = _body(ConnectorEditBody, values)
    plain = body.model_dump(exclude={"ca_bundle_base64", "ca_bundle_pem", *SECRET_FIELDS, "pfx_base64"}, exclude_none=True)
    try:
        return ConnectorEdit.model_validate({**plain, **_secrets_of(body),
                                             "ca_bundle_pem": _bundle(body.ca_bundle_pem, body.ca_bundle_base64)})
    except ValidationError as exc:
        raise input_error(exc) from None


def _described(values: dict[str, Any]) -> dict[str, Any]:
    """What a refused create looked like, for its admin event: plain fields only, secrets as ***."""
    keep = ("version", "base_url", "username", "issuing_ca", "subscriber_id", "default_profile", "concurrency")
    shown = {k: values[k] for k in keep if isinstance(values.get(k), str | int) and len(str(values[k])) <= 2048}
    return {**shown, **{k: REDACTED for k in (*SECRET_FIELDS, "pfx_base64") if values.get(k)}}


# -- routes --------------------------------------------------------------------------------------

log = logging.getLogger(__name__)


def _fold(engine: Engine, answer: dict[str, Any]) -> None:
    """The admin events of a change the issuer made, into the gateway's view of the connectors (at once: the next
    request sees the change; consuming the same events later changes nothing)."""
    events = [e for e in answer.get("events", []) if isinstance(e, str)]
    if not events:
        return
    with write_session(engine) as session:
        for value in events:
            try:
                connector_view.apply_in(session, decode(value.encode("utf-8"), CATALOG))
            except ValueError as exc:  # an answer off the contract: the consumed event will fold it
                log.warning("a connector event in the issuer's answer did not decode: %s", type(exc).__name__)


def router(issuer: IssuerApi, engine: Engine, checks: Sequence[UsageCheck]) -> APIRouter:
    """The routes over the issuer's registry (``issuer``); ``engine``: the gateway's database (its projections: the
    view of the connectors, what uses a connector); ``checks``: what refuses a deletion."""
    api = APIRouter(prefix="/v1/connectors", tags=["connectors"])

    async def refused(identity: str, action: ChangeAction, name: str, problem: Problem,
                      change: dict[str, Any] | None = None) -> Problem:
        """A change refused at this door, reported to the issuer to be recorded (not when the issuer is away: logged)."""
        try:
            await issuer.connector_refused(action.value, name, str(problem.code), problem.message, change, identity)
        except (IssuerUnavailable, IssuerRefused) as exc:
            log.warning("a refused connector %s of %s was not recorded: %s", action.value, identity, type(exc).__name__)
        return problem

    async def write(action: ChangeAction, name: str, claims: TokenClaims) -> None:
        try:
            require(claims, Action.CONNECTOR_WRITE)
        except Problem as problem:
            raise await refused(claims.identity, action, name, problem) from None

    async def call(run: Awaitable[Any]) -> Any:
        try:
            return await run
        except IssuerRefused as error:
            raise Problem(error.code, error.message) from None
        except IssuerUnavailable as error:
            raise Problem(ApiCode.SERVICE_UNAVAILABLE, f"connectors are served by the issuer: {error}; try again later",
                          headers={"Retry-After": "5"}) from None

    async def changed(run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        answer: dict[str, Any] = await call(run)
        await asyncio.to_thread(_fold, engine, answer)
        return answer

    @api.post("", status_code=201, summary="Create a connector (validated against emCA before it is enabled)",
              openapi_extra=json_body_doc(ConnectorCreateBody, multipart=ConnectorMultipart))
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        values = await _fields(request)
        given = values.get("name")
        name = given if isinstance(given, str) else ""
        await write(ChangeAction.CREATED, name, claims)
        try:
            spec = spec_from(values)
        except Problem as problem:
            raise await refused(claims.identity, ChangeAction.CREATED, name, problem, _described(values)) from None
        answer = await changed(issuer.create_connector(spec_to_wire(spec), claims.identity))
        return {**answer["connector"], "command_topic": answer["change"].get("command_topic")}

    @api.get("", summary="List connectors (no secrets)")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> list[dict[str, Any]]:
        require(claims, Action.CONNECTOR_READ)
        found: list[dict[str, Any]] = await call(issuer.connectors())
        return found

    @api.get("/{name}", summary="Show a connector (secrets as ***)")
    async def show(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_READ)
        found: dict[str, Any] = await call(issuer.connector(name))
        return found

    @api.patch("/{name}", summary="Edit a connector (validated again; stored only when every check passes)",
               openapi_extra=json_body_doc(ConnectorEditBody))
    async def edit(name: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        values = await _fields(request)
        await write(ChangeAction.UPDATED, name, claims)
        try:
            connector_edit: ConnectorEdit = edit_from(values)
        except Problem as problem:
            raise await refused(claims.identity, ChangeAction.UPDATED, name, problem, _described(values)) from None
        answer = await changed(issuer.update_connector(name, edit_to_wire(connector_edit), claims.identity))
        return {**answer["connector"], "changed": answer["change"]}

    @api.post("/{name}/activate", summary="Validate, then enable")
    async def activate(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        await write(ChangeAction.ACTIVATED, name, claims)
        answer = await changed(issuer.activate_connector(name, claims.identity))
        found: dict[str, Any] = answer["connector"]
        return found

    @api.post("/{name}/deactivate", summary="Disable (no new requests are routed to it; its queue is kept)")
    async def deactivate(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        await write(ChangeAction.DEACTIVATED, name, claims)
        answer = await changed(issuer.deactivate_connector(name, f"deactivated by {claims.identity}", claims.identity))
        found: dict[str, Any] = answer["connector"]
        return found

    @api.post("/{name}/test", summary="Validate against emCA now and record the result")
    async def test(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_WRITE)
        found: dict[str, Any] = await call(issuer.test_connector(name, claims.identity))
        return found

    @api.delete("/{name}", status_code=204, summary="Delete (refused while a profile or a live certificate uses it)")
    async def delete(name: str, claims: TokenClaims = Depends(claims_of)) -> None:
        await write(ChangeAction.DELETED, name, claims)
        await call(issuer.connector(name))  # CONNECTOR_NOT_FOUND first (not recorded: nothing to audit)
        uses = await asyncio.to_thread(in_use, engine, checks, name)
        if uses:
            problem = Problem(RegistryCode.CONNECTOR_IN_USE, "still in use: " + "; ".join(uses))
            raise await refused(claims.identity, ChangeAction.DELETED, name, problem, {})
        await changed(issuer.delete_connector(name, claims.identity))

    return api


def in_use(engine: Engine, checks: Sequence[UsageCheck], name: str) -> list[str]:
    """What uses connector ``name`` by the gateway's own tables (empty: nothing; the delete may go to the issuer)."""
    with read_session(engine) as session:
        return [f"{check.name}: {use}" for check in checks for use in check.usages(session, name)]

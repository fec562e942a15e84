"""``/v1/connectors``: the emCA connector registry over HTTP (admins write; admins and auditors
read). Create and edit take JSON (files base64: ``pfx_base64``, ``ca_bundle_base64``, or the bundle
as ``ca_bundle_pem`` text) or ``multipart/form-data`` (the same fields, the PFX and the CA bundle
as file parts ``pfx`` and ``ca_bundle``). Every change, refused ones too, goes through
services/gateway/config/connectors.py and is recorded as an admin event (decision 0019); secrets
are never answered (``***``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr, ValidationError
from sqlalchemy.orm import Session

from services.common.connectors.models import (
    SECRET_FIELDS,
    ChangeAction,
    ConnectorChange,
    ConnectorEdit,
    ConnectorError,
    ConnectorSecrets,
    ConnectorSpec,
    EmcaVersion,
)
from services.common.connectors.registry import ConnectorRegistry, input_error
from services.common.connectors.usage import UsageCheck
from services.common.contracts.admin import REDACTED
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import CONNECTOR_NAME_PATTERN
from services.gateway import store
from services.gateway.api_common import (
    AdminPublisher,
    ApiCode,
    Problem,
    claims_of,
    in_thread,
    json_body_doc,
    json_object,
    multipart_parts,
    read_body,
    require,
    validation_problem,
)
from services.gateway.config import connectors as config_connectors
from services.gateway.config.actor import Actor
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


def spec_from(values: dict[str, Any]) -> ConnectorSpec:
    body = _body(ConnectorCreateBody, values)
    plain = body.model_dump(exclude={"ca_bundle_base64", "ca_bundle_pem", *SECRET_FIELDS, "pfx_base64"})
    try:
        secrets = ConnectorSecrets.model_validate(_secrets_of(body))
        return ConnectorSpec.model_validate({**plain, "ca_bundle_pem": _bundle(body.ca_bundle_pem, body.ca_bundle_base64),
                                             "secrets": secrets})
    except ValidationError as exc:
        error = input_error(exc)
        raise Problem(error.code, error.message) from None


def edit_from(values: dict[str, Any]) -> ConnectorEdit:
    body = _body(ConnectorEditBody, values)
    plain = body.model_dump(exclude={"ca_bundle_base64", "ca_bundle_pem", *SECRET_FIELDS, "pfx_base64"}, exclude_none=True)
    try:
        return ConnectorEdit.model_validate({**plain, **_secrets_of(body),
                                             "ca_bundle_pem": _bundle(body.ca_bundle_pem, body.ca_bundle_base64)})
    except ValidationError as exc:
        error = input_error(exc)
        raise Problem(error.code, error.message) from None


def _described(values: dict[str, Any]) -> dict[str, Any]:
    """What a refused create looked like, for its admin event: plain fields only, secrets as ***."""
    keep = ("version", "base_url", "username", "issuing_ca", "subscriber_id", "default_profile", "concurrency")
    shown = {k: values[k] for k in keep if isinstance(values.get(k), str | int) and len(str(values[k])) <= 2048}
    return {**shown, **{k: REDACTED for k in (*SECRET_FIELDS, "pfx_base64") if values.get(k)}}


# -- routes --------------------------------------------------------------------------------------


def router(registry: ConnectorRegistry, admin: AdminPublisher) -> APIRouter:
    api = APIRouter(prefix="/v1/connectors", tags=["connectors"])

    async def refused(actor: Actor, action: ChangeAction, name: str, problem: Problem,
                      change: dict[str, Any] | None = None) -> Problem:
        await in_thread(config_connectors.record_refusal, actor, action, name, problem.code, problem.message, change)
        return problem

    async def write(actor: Actor, action: ChangeAction, name: str, claims: TokenClaims) -> None:
        try:
            require(claims, Action.CONNECTOR_WRITE)
        except Problem as problem:
            raise await refused(actor, action, name, problem) from None

    async def changed(actor: Actor, run: Awaitable[ConnectorChange]) -> ConnectorChange:
        try:
            return await run
        except ConnectorError as error:
            raise Problem(str(error.code), error.message) from None
        finally:
            await admin.flush(actor)

    @api.post("", status_code=201, summary="Create a connector (validated against emCA before it is enabled)",
              openapi_extra=json_body_doc(ConnectorCreateBody, multipart=ConnectorMultipart))
    async def create(request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = admin.actor(config_connectors.registry_engine(registry), claims.identity)
        try:
            values = await _fields(request)
            given = values.get("name")
            name = given if isinstance(given, str) else ""
            await write(actor, ChangeAction.CREATED, name, claims)
            try:
                spec = spec_from(values)
            except Problem as problem:
                raise await refused(actor, ChangeAction.CREATED, name, problem, _described(values)) from None
        finally:
            await admin.flush(actor)
        change = await changed(actor, config_connectors.create_connector(actor, registry, spec))
        assert change.connector_after is not None
        return {**change.connector_after.describe(), "command_topic": change.change.get("command_topic")}

    @api.get("", summary="List connectors (no secrets)")
    async def list_(claims: TokenClaims = Depends(claims_of)) -> list[dict[str, Any]]:
        require(claims, Action.CONNECTOR_READ)
        return [c.describe() for c in await in_thread(registry.list)]

    @api.get("/{name}", summary="Show a connector (secrets as ***)")
    async def show(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_READ)
        try:
            connector = await in_thread(registry.get, name)
        except ConnectorError as error:
            raise Problem(str(error.code), error.message) from None
        return connector.describe()

    @api.patch("/{name}", summary="Edit a connector (validated again; stored only when every check passes)",
               openapi_extra=json_body_doc(ConnectorEditBody))
    async def edit(name: str, request: Request, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        actor = admin.actor(config_connectors.registry_engine(registry), claims.identity)
        try:
            values = await _fields(request)
            await write(actor, ChangeAction.UPDATED, name, claims)
            try:
                connector_edit = edit_from(values)
            except Problem as problem:
                raise await refused(actor, ChangeAction.UPDATED, name, problem, _described(values)) from None
        finally:
            await admin.flush(actor)
        change = await changed(actor, config_connectors.update_connector(actor, registry, name, connector_edit))
        assert change.connector_after is not None
        return {**change.connector_after.describe(), "changed": change.change}

    async def simple(action: ChangeAction, name: str, claims: TokenClaims, run: Callable[[Actor], Awaitable[ConnectorChange]]
                     ) -> ConnectorChange:
        actor = admin.actor(config_connectors.registry_engine(registry), claims.identity)
        try:
            await write(actor, action, name, claims)
        finally:
            await admin.flush(actor)
        return await changed(actor, run(actor))

    @api.post("/{name}/activate", summary="Validate, then enable")
    async def activate(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        change = await simple(ChangeAction.ACTIVATED, name, claims,
                              lambda actor: config_connectors.enable_connector(actor, registry, name))
        assert change.connector_after is not None
        return change.connector_after.describe()

    @api.post("/{name}/deactivate", summary="Disable (no new requests are routed to it; its queue is kept)")
    async def deactivate(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        change = await simple(ChangeAction.DEACTIVATED, name, claims, lambda actor: config_connectors.disable_connector(
            actor, registry, name, f"deactivated by {claims.identity}"))
        assert change.connector_after is not None
        return change.connector_after.describe()

    @api.post("/{name}/test", summary="Validate against emCA now and record the result")
    async def test(name: str, claims: TokenClaims = Depends(claims_of)) -> dict[str, Any]:
        require(claims, Action.CONNECTOR_WRITE)
        try:
            connector, report = await registry.test(name)
        except ConnectorError as error:
            raise Problem(str(error.code), error.message) from None
        checks: Sequence[Any] = report.checks
        return {"ok": bool(connector.last_test and connector.last_test.ok), "status": connector.status.value,
                "checks": [{"check": c.check, "ok": c.ok, "code": c.code, "message": c.message} for c in checks],
                "connector": connector.describe()}

    @api.delete("/{name}", status_code=204, summary="Delete (refused while a profile or a live certificate uses it)")
    async def delete(name: str, claims: TokenClaims = Depends(claims_of)) -> None:
        await simple(ChangeAction.DELETED, name, claims, lambda actor: config_connectors.delete_connector(actor, registry, name))

    return api

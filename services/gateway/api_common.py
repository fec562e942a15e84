"""What every HTTP route shares: the problem format, bearer-token authentication, body parsing
(strict models, no input echoed back), and publishing the admin events a request's configuration
changes wrote to the outbox (services/gateway/config/).

A problem is ``{"code": <stable code>, "message": <human text>}`` (plus context such as
``request_id`` or ``errors``). Codes are ``ErrorCode`` values, the connector registry's
``RegistryCode`` values, or the API's own for things no message carries (`ApiCode`).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse

from services.common.connectors.models import RegistryCode
from services.common.contracts.admin import event_error  # noqa: F401 - re-exported (tests, older imports)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import Topics
from services.common.db import read_session
from services.gateway import store
from services.gateway.config import outbox
from services.gateway.config.actor import Actor
from services.gateway.policy import PolicyViolation
from services.gateway.policy.tokens import Action, TokenClaims, authenticate_token, authorise, token_id_of

#: the largest request body the API reads (a connector with a PFX and a CA bundle fits easily)
MAX_BODY_BYTES = 2 * 1024 * 1024
#: JSON bodies: the deepest nesting, the longest number literal and the most values (strings, numbers, ...) read
MAX_JSON_DEPTH = 32
MAX_JSON_NUMBER_CHARS = 32
MAX_JSON_VALUES = 50_000
M = TypeVar("M", bound=BaseModel)


class ApiCode(StrEnum):
    """Refusals of the HTTP API that no message carries (so they are not in ErrorCode)."""

    NOT_FOUND = "NOT_FOUND"  # no such route
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    REQUEST_NOT_FOUND = "REQUEST_NOT_FOUND"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"
    REQUESTER_KEY_NOT_FOUND = "REQUESTER_KEY_NOT_FOUND"
    PROFILE_EXISTS = "PROFILE_EXISTS"
    PROFILE_IN_USE = "PROFILE_IN_USE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # another certrail service the answer needs (the auditor) did not answer


_STATUS: dict[str, int] = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.REQUESTER_NOT_AUTHORISED: 403,
    ErrorCode.DUPLICATE_REQUEST_CONFLICT: 409,
    ErrorCode.CONNECTOR_DISABLED: 409,
    ErrorCode.CERTIFICATE_PROFILE_MISMATCH: 409,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.AUTH_THROTTLED: 429,
    ErrorCode.JSON_LIMIT_EXCEEDED: 422,
    RegistryCode.CONNECTOR_EXISTS: 409,
    RegistryCode.CONNECTOR_IN_USE: 409,
    RegistryCode.CHANGED_MEANWHILE: 409,
    RegistryCode.SECRETS_UNAVAILABLE: 503,
    RegistryCode.TOPIC_NOT_CREATED: 503,
    ApiCode.NOT_FOUND: 404,
    ApiCode.METHOD_NOT_ALLOWED: 405,
    ApiCode.BODY_TOO_LARGE: 413,
    ApiCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ApiCode.PROFILE_EXISTS: 409,
    ApiCode.PROFILE_IN_USE: 409,
    ApiCode.INTERNAL_ERROR: 500,
    ApiCode.SERVICE_UNAVAILABLE: 503,
}


def status_of(code: str) -> int:
    """The HTTP status of a problem code: 404 for ``*_NOT_FOUND``, 422 for everything about the
    input (schema, CSR, emCA refusing the connector's settings) unless listed otherwise."""
    if code in _STATUS:
        return _STATUS[code]
    if code.endswith("_NOT_FOUND") and code not in (ErrorCode.ISSUING_CA_NOT_FOUND, ErrorCode.CA_PROFILE_NOT_FOUND):
        return 404
    return 422


class Problem(Exception):
    """An HTTP refusal: answered as ``{"code", "message", **extra}`` with the code's status."""

    def __init__(self, code: str, message: str, *, status: int | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.status = status or status_of(self.code)
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return JSONResponse({"code": self.code, "message": self.message, **self.extra}, status_code=self.status,
                            headers={**headers, **self.headers})

    @classmethod
    def of(cls, violation: PolicyViolation) -> Problem:
        retry_after = getattr(violation, "retry_after_s", None)  # AUTH_THROTTLED (services/gateway/api_throttle.py)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return cls(violation.code.value, violation.message, headers=headers)


def validation_problem(errors: Iterable[Any], prefix: tuple[str | int, ...] = ()) -> Problem:
    """Pydantic/FastAPI errors as one SCHEMA_VIOLATION problem; input values are never echoed
    (they may be secrets)."""
    listed = []
    for error in errors:
        loc = [str(p) for p in (*prefix, *error.get("loc", ()))]
        listed.append({"field": ".".join(loc) or "body", "message": str(error.get("msg", "invalid"))})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in listed[:10]) or "invalid input"
    return Problem(ErrorCode.SCHEMA_VIOLATION, summary, errors=listed[:50])


# -- bodies ------------------------------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(ApiCode.BODY_TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Problem(ApiCode.BODY_TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _limit_exceeded(message: str) -> Problem:
    return Problem(ErrorCode.JSON_LIMIT_EXCEEDED, message, errors=[{"field": "body", "message": message}])


def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > MAX_JSON_NUMBER_CHARS:
            raise _limit_exceeded(f"a number in the body is longer than {MAX_JSON_NUMBER_CHARS} characters")
        number = kind(text)
        if isinstance(number, float) and not math.isfinite(number):
            raise _limit_exceeded("a number in the body is beyond the range of a 64-bit float")
        return number
    return parse


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_shape(value: Any) -> None:
    """At most MAX_JSON_DEPTH levels of arrays/objects and MAX_JSON_VALUES values (iteratively)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if count > MAX_JSON_VALUES:
            raise _limit_exceeded(f"the body holds more than {MAX_JSON_VALUES} JSON values")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= MAX_JSON_DEPTH:
            raise _limit_exceeded(f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)


def bounded_json(raw: bytes) -> Any:
    """``raw`` parsed as JSON within the limits (MAX_JSON_*): a SCHEMA_VIOLATION problem when it is
    not JSON, JSON_LIMIT_EXCEEDED (422) when it nests too deep, holds too many values or a too long
    number. Never RecursionError: the parser's own recursion is caught too."""
    try:
        value = json.loads(raw, parse_int=_number(int), parse_float=_number(float), parse_constant=_not_json_constant)
    except RecursionError:
        raise _limit_exceeded(f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(ErrorCode.SCHEMA_VIOLATION, f"the body is not JSON: {type(exc).__name__}",
                      errors=[{"field": "body", "message": "not JSON"}]) from None
    _check_shape(value)
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (`bounded_json`), or a SCHEMA_VIOLATION problem."""
    value = bounded_json(raw)
    if not isinstance(value, dict):
        raise Problem(ErrorCode.SCHEMA_VIOLATION, "the body must be a JSON object",
                      errors=[{"field": "body", "message": "not a JSON object"}])
    return value


#: the most parts a multipart body may have (a connector form has about 15)
MAX_MULTIPART_PARTS = 100


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    payload: bytes = field(repr=False)


def multipart_parts(content_type: str, raw: bytes) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` body: flat (a part that is itself multipart or a
    message is refused), at most MAX_MULTIPART_PARTS, each named. SCHEMA_VIOLATION problems,
    never RecursionError (the standard library's parser recurses into nested parts)."""
    def invalid(message: str) -> Problem:
        return Problem(ErrorCode.SCHEMA_VIOLATION, message, errors=[{"field": "body", "message": message}])

    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\nMIME-Version: 1.0\r\n\r\n" + raw)
        if not message.is_multipart():
            raise invalid("the multipart body could not be parsed (boundary?)")
        parts = []
        for part in message.iter_parts():
            if len(parts) >= MAX_MULTIPART_PARTS:
                raise invalid(f"the multipart body has more than {MAX_MULTIPART_PARTS} parts")
            if part.is_multipart() or part.get_content_maintype() == "message":
                raise invalid("a multipart part must not itself be multipart or a message")
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or not name:
                raise invalid("a multipart part has no name")
            filename = part.get_param("filename", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if not isinstance(payload, bytes):
                raise invalid("a multipart part could not be decoded")
            parts.append(FormPart(name[:200], filename if isinstance(filename, str) else None, payload))
    except RecursionError:
        raise invalid("the multipart body nests parts too deeply") from None
    return parts


def parse_model(model: type[M], value: Any, *, json_mode: bool = True) -> M:
    """``value`` as ``model`` (JSON semantics for strict models), or a SCHEMA_VIOLATION problem."""
    try:
        if json_mode:
            return model.model_validate_json(json.dumps(value))
        return model.model_validate(value)
    except ValidationError as exc:
        raise validation_problem(exc.errors(include_input=False, include_url=False), ("body",)) from None


async def json_values(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object (application/json only)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise Problem(ApiCode.UNSUPPORTED_MEDIA_TYPE, f"send application/json, not {content_type}")
    raw = await read_body(request)
    return raw, json_object(raw)


async def body_as(request: Request, model: type[M]) -> M:
    return parse_model(model, (await json_values(request))[1])


def json_body_doc(model: type[BaseModel], *, multipart: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the route parses itself (see `create_api`'s
    schema hook, which moves the models' ``$defs`` into the components)."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": {"$ref": f"#/components/schemas/{multipart.__name__}"}}
    return {"requestBody": {"required": True, "content": content}}


# -- authentication --------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="A certrail API token: `Authorization: Bearer ctr_...`")


def authenticate(engine: Any, authorization: str | None, now: datetime) -> TokenClaims:
    """The claims of the request's bearer token (PolicyViolation UNAUTHENTICATED otherwise)."""
    if not authorization:
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, "no bearer token: send Authorization: Bearer ctr_...")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise PolicyViolation(ErrorCode.UNAUTHENTICATED, "the Authorization header must be 'Bearer <token>'")
    presented = presented.strip()
    token_id = token_id_of(presented)
    with read_session(engine) as session:
        stored = store.get_token(session, token_id)
    return authenticate_token(presented, stored, now)


async def claims_of(request: Request) -> TokenClaims:
    """A dependency: the claims the authentication middleware put on the request."""
    claims = getattr(request.state, "claims", None)
    if claims is None:  # the middleware authenticates every /v1 request; this is a safety net
        raise Problem(ErrorCode.UNAUTHENTICATED, "not authenticated")
    return claims


def require(claims: TokenClaims, action: Action) -> None:
    """A global (not per-profile) permission, or a 403 problem."""
    decision = authorise(claims, action)
    if not decision.allowed:
        raise Problem(ErrorCode.REQUESTER_NOT_AUTHORISED, decision.reason)


# -- admin events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminPublisher:
    """Publishes the admin events a request's configuration changes wrote to the outbox
    (services/gateway/config/; decision 0019), once the change committed. A publish that fails
    leaves them to the gateway's outbox relay."""

    publish_records: Callable[..., Any]
    topics: Topics
    clock: Callable[[], datetime]

    def actor(self, engine: Any, identity: str) -> Actor:
        return Actor(engine, identity, self.clock)

    async def flush(self, actor: Actor) -> None:
        recorded, actor.recorded[:] = list(actor.recorded), []
        await outbox.publish_recorded(actor.engine, self.topics, self.publish_records, recorded, self.clock())


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)

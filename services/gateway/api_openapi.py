"""The error answers of the HTTP API in its OpenAPI document: every status a ``/v1`` route can
answer is listed with the problem body ``{code, message, ...}`` (services/gateway/api_common.py),
so that a client generated from the document (or a fuzzer checking it) meets no undocumented status.

Which statuses apply is decided from the route's shape: every route authenticates (401, 429 past
the limit of failed authentications) and authorises (403); a route with parameters or a body
validates them (422); a body is bounded (413) and typed (415); a route that names something by
its path, and every write, may find it missing (404); writes may conflict (409) and may find a
dependency unavailable (503: Kafka, the secrets key).
"""

from __future__ import annotations

from typing import Any

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "Every refusal: a stable code (ErrorCode, the connector registry's or the API's own) and a human "
                   "message; some problems add context (request_id, status_url, errors).",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "stable, machine-readable"},
        "message": {"type": "string", "description": "what was wrong, for humans; submitted values are never echoed "
                                                     "verbatim"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}}}},
        "request_id": {"type": "string"},
        "status_url": {"type": "string"},
    },
    "additionalProperties": True,
}
DESCRIPTIONS = {
    401: "UNAUTHENTICATED: no, a malformed, unknown, revoked or expired bearer token",
    403: "REQUESTER_NOT_AUTHORISED: the token's role or profile scope does not allow this",
    404: "Not found (or not visible to this token): *_NOT_FOUND",
    409: "Conflict: the resource exists, is in use, changed meanwhile, or the request id was used with other content",
    413: "BODY_TOO_LARGE: the body is over the limit",
    415: "UNSUPPORTED_MEDIA_TYPE: send application/json (connectors: or multipart/form-data)",
    422: "The input is invalid: SCHEMA_VIOLATION (with errors[]), JSON_LIMIT_EXCEEDED, or the policy's refusal code",
    429: "AUTH_THROTTLED: too many failed authentications from this client or for this token id; see Retry-After",
    503: "A dependency is unavailable (Kafka, the secrets key): retry later, with the same request id",
}
WRITES = frozenset({"post", "put", "patch", "delete"})


def statuses_of(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses one ``/v1`` operation can answer."""
    found = {401, 403, 429}
    if operation.get("parameters") or "requestBody" in operation:
        found.add(422)
    if "requestBody" in operation:
        found |= {413, 415, 422}
    if "{" in path or method in WRITES:
        found.add(404)
    if method in WRITES:
        found |= {409, 422, 503}
    return found


def _response(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": DESCRIPTIONS[status],
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    if status == 429:
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return answer


def document_problems(schema: dict[str, Any]) -> None:
    """Add the problem schema and every route's error statuses to ``schema`` (in place); FastAPI's
    own 422 (HTTPValidationError) is replaced by the problem the API really answers."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        if not path.startswith("/v1"):
            continue
        for method, operation in item.items():
            if not isinstance(operation, dict) or method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses_of(path, method, operation)):
                responses[str(status)] = _response(status)

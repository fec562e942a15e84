"""The canonical JSON of a request, which requesters sign and the gateway dedupes on.

For upstream teams (any language): the bytes to sign are the request's
``data`` object -- exactly the JSON object you put under ``data`` in the
CloudEvent -- **without its ``auth`` member**, serialised as

* object members sorted by key (the keys are plain ASCII field names),
* no insignificant whitespace (``,`` and ``:`` as separators),
* strings as JSON strings with only ``"``, ``\\`` and control characters
  escaped (non-ASCII characters written as themselves, not ``\\uXXXX``),
* integers in decimal; no floating-point numbers (no request field has one),
* encoded as UTF-8.

For certrail's request data (ASCII keys, no floats) this is exactly RFC 8785
(JSON Canonicalization Scheme), so any JCS library produces the same bytes.
In Python: ``json.dumps(data, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode("utf-8")``.

Then ``auth`` is either

* ``{"scheme": "hmac-sha256", "key_id": ..., "signature": base64url(HMAC-SHA256(key, bytes))}``
  (base64url without ``=`` padding, 43 characters), or
* ``{"scheme": "jws", "key_id": ..., "signature": <compact JWS>}`` whose payload
  is those bytes: attached (``header.payload.signature``) or detached as in
  RFC 7515 Appendix F (``header..signature``, the payload left out). Allowed
  ``alg``: HS256 with an HMAC key, ES256 with a registered P-256 key, EdDSA
  with a registered Ed25519 key. A ``kid`` header, if present, must equal
  ``key_id``. ``crit`` (so RFC 7797 ``b64: false``) is not accepted.

The gateway verifies the signature against the ``data`` object as it was
received (the members you sent, with the values you sent), not against a
re-serialisation of the validated model: sign exactly the object you send,
including any ``null`` members or defaults you chose to write out.

The dedupe content hash (`request_content_hash`) is the SHA-256 of the same
canonical form taken over the *validated* request (defaults filled in, absent
optional members left out), so an HTTP and a Kafka request with the same
content hash the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

AUTH_MEMBER = "auth"


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floating-point numbers have no canonical form here")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings")
            _check(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of a JSON value (see the module docstring).
    Raises ValueError for floats, non-string keys, non-JSON types and strings
    that are not valid Unicode (lone surrogates)."""
    _check(value, "$")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("$: a string is not valid Unicode (lone surrogate)") from None


def request_payload(data: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A request's data object without ``auth``: for a model, its JSON form as
    certrail encodes it (``exclude_none``); for a mapping (the ``data`` object as
    received), its members as they are."""
    if isinstance(data, BaseModel):
        body = data.model_dump(mode="json", exclude_none=True)
    else:
        body = dict(data)
    body.pop(AUTH_MEMBER, None)
    return body


def request_signing_bytes(data: BaseModel | Mapping[str, Any]) -> bytes:
    """What a requester signs: the canonical JSON of the request data without ``auth``."""
    return canonical_json(request_payload(data))


def request_content_hash(request: BaseModel) -> str:
    """The dedupe content hash of a validated request (hex SHA-256 of its canonical
    JSON without ``auth``): the same content through HTTP or Kafka, signed with
    any key, hashes the same."""
    return hashlib.sha256(request_signing_bytes(request)).hexdigest()

"""Reading the console's HTML forms (``application/x-www-form-urlencoded`` and
``multipart/form-data``) without python-multipart: the body is read with the API's size limit
(services/gateway/api_common.read_body) and parsed with the standard library."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import Request

from services.gateway.api_common import read_body


class FormError(Exception):
    """The body is not a form this console sent."""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def text(self, name: str) -> str:
        return self.fields.get(name, "").strip()

    def getlist(self, name: str) -> list[str]:
        return self.lists.get(name, [])

    def add(self, name: str, value: str) -> None:
        self.fields.setdefault(name, value)
        self.lists.setdefault(name, []).append(value)


async def read_form(request: Request) -> Form:
    raw = await read_body(request)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    form = Form()
    if not raw:  # nothing sent (then the CSRF check refuses it)
        return form
    if media == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=500)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormError(f"the form could not be read ({type(exc).__name__})") from None
        for name, value in pairs:
            form.add(name, value)
        return form
    if media == "multipart/form-data":
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + raw)
        if not message.is_multipart():
            raise FormError("the multipart form could not be read")
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or not name:
                raise FormError("a form part has no name")
            payload = part.get_payload(decode=True) or b""
            assert isinstance(payload, bytes)
            if part.get_param("filename", header="content-disposition") is not None:
                if payload:  # a file input left empty sends an empty part
                    form.files[name] = payload
                continue
            try:
                form.add(name, payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise FormError(f"form field {name!r} is not UTF-8 text") from None
        return form
    raise FormError(f"expected a form, not {media or 'no content type'}")

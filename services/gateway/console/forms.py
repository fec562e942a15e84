"""Reading the console's HTML forms (``application/x-www-form-urlencoded`` and
``multipart/form-data``) without python-multipart: the body is read with the API's size limit
(services/gateway/api_common.read_body) and parsed with the standard library."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import Request

from services.gateway.api_common import Problem, multipart_parts, read_body
from services.gateway.policy.violation import shown


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
        try:
            parts = multipart_parts(content_type, raw)
        except Problem as problem:
            raise FormError(problem.message) from None
        for part in parts:
            if part.filename is not None:
                if part.payload:  # a file input left empty sends an empty part
                    form.files[part.name] = part.payload
                continue
            try:
                form.add(part.name, part.payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise FormError(f"form field {shown(part.name)} is not UTF-8 text") from None
        return form
    raise FormError(f"expected a form, not {media or 'no content type'}")

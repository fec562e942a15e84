"""RFC 8555 problem documents (section 6.7): ``{"type": "urn:ietf:params:acme:error:<type>", "detail",
"status"}`` as ``application/problem+json``. Every refusal of the ACME door is one `AcmeError`; its
detail never echoes a secret (an EAB key, a signature) and quotes input only briefly."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from starlette.responses import JSONResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"
ERROR_PREFIX = "urn:ietf:params:acme:error:"


class AcmeErrorType(StrEnum):
    """The RFC 8555 error types this door answers (section 6.7), with their HTTP status below."""

    ACCOUNT_DOES_NOT_EXIST = "accountDoesNotExist"
    ALREADY_REPLACED = "alreadyReplaced"  # RFC 9773 7.4
    ALREADY_REVOKED = "alreadyRevoked"
    BAD_CSR = "badCSR"
    BAD_NONCE = "badNonce"
    BAD_PUBLIC_KEY = "badPublicKey"
    BAD_REVOCATION_REASON = "badRevocationReason"
    BAD_SIGNATURE_ALGORITHM = "badSignatureAlgorithm"
    EXTERNAL_ACCOUNT_REQUIRED = "externalAccountRequired"
    INVALID_CONTACT = "invalidContact"
    MALFORMED = "malformed"
    ORDER_NOT_READY = "orderNotReady"
    REJECTED_IDENTIFIER = "rejectedIdentifier"
    SERVER_INTERNAL = "serverInternal"
    UNAUTHORIZED = "unauthorized"
    UNSUPPORTED_CONTACT = "unsupportedContact"
    UNSUPPORTED_IDENTIFIER = "unsupportedIdentifier"


_STATUS: dict[AcmeErrorType, int] = {
    AcmeErrorType.UNAUTHORIZED: 403,
    AcmeErrorType.ORDER_NOT_READY: 403,
    AcmeErrorType.SERVER_INTERNAL: 500,
    AcmeErrorType.ALREADY_REPLACED: 409,
}


class AcmeError(Exception):
    """A refusal as an RFC 8555 problem. ``status`` defaults to 400 (403 unauthorized); ``headers`` are added
    to the answer (Location of a conflicting account); ``extra`` fields join the document (``algorithms``
    of badSignatureAlgorithm)."""

    def __init__(self, kind: AcmeErrorType, detail: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status or _STATUS.get(kind, 400)
        self.headers = dict(headers or {})
        self.extra = extra

    def document(self) -> dict[str, Any]:
        return {"type": ERROR_PREFIX + self.kind.value, "detail": self.detail, "status": self.status, **self.extra}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.document(), status_code=self.status, media_type=PROBLEM_CONTENT_TYPE,
                            headers={**self.headers, **(headers or {})})


def malformed(detail: str, *, status: int = 400) -> AcmeError:
    return AcmeError(AcmeErrorType.MALFORMED, detail, status=status)


def unauthorized(detail: str) -> AcmeError:
    return AcmeError(AcmeErrorType.UNAUTHORIZED, detail)

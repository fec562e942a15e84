"""`PolicyViolation`: why the gateway refuses a request, as a stable code and a
message for humans. Every check in this package raises it (or returns a
denied `Decision` carrying the same two things)."""

from __future__ import annotations

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import ErrorInfo

#: ErrorInfo.message's limit
MAX_MESSAGE_CHARS = 2000


class PolicyViolation(Exception):
    """A request refused by policy: ``code`` is stable (services/common/contracts/errors.py),
    ``message`` says precisely what was wrong. The message never contains a
    secret, a private key or a signature."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def error_info(self) -> ErrorInfo:
        """The violation as the ``error`` of a RequestRejected event (or an HTTP problem body)."""
        text = self.message if len(self.message) <= MAX_MESSAGE_CHARS else self.message[: MAX_MESSAGE_CHARS - 1] + "…"
        return ErrorInfo(code=self.code, message=text)


def shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters, every character outside
    printable ASCII escaped (input is not trusted: no control or bidirectional characters, no
    unbounded echo). Every message that names a submitted value names it through this."""
    text = value if len(value) <= limit else value[: limit - 1] + "\u2026"
    return ascii(text)

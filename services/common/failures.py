"""Which handler failures are transient (infrastructure: retry, never dead-letter) and which
mean the record itself cannot be handled (retry a few times, then dead-letter it).

Transient: the database unreachable or busy (SQLAlchemy's OperationalError, InterfaceError,
DisconnectionError, TimeoutError), any Kafka client error, OSError (connection refused, reset,
DNS...), TimeoutError, and httpx's transport errors. Everything else -- a bug, a constraint
violation, a value a handler cannot digest -- is a failure of that record.
"""

from __future__ import annotations

import httpx
from aiokafka.errors import KafkaError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
    KafkaError,
    OSError,
    TimeoutError,
    httpx.TransportError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is infrastructure trouble that retrying later can cure."""
    return isinstance(exc, TRANSIENT_ERRORS)

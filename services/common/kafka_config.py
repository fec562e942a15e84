"""Kafka client arguments built from `KafkaSettings`.

One place decides how certrail talks to Kafka, for aiokafka's producer,
consumer and admin client and for FastStream's `KafkaBroker`:

    AIOKafkaProducer(**producer_kwargs(settings))
    AIOKafkaConsumer(*topics, **consumer_kwargs(settings, group_id="certrail-auditor"))
    AIOKafkaAdminClient(**admin_kwargs(settings))
    KafkaBroker(**faststream_broker_kwargs(settings))

Producers are always idempotent with ``acks="all"``; consumers never
auto-commit and start from the earliest offset of a new group.

The returned mappings are `ClientKwargs`: plain dicts whose ``repr``/``str``
mask the SASL password, so logging them does not leak it.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from aiokafka.helpers import create_ssl_context
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.common.settings import KafkaSettings

SECRET_KEYS: Final = frozenset({"sasl_plain_password"})
_MASK: Final = "**********"


class KafkaConfigError(ValueError):
    """The Kafka settings are inconsistent (e.g. SASL without a username)."""


class ClientKwargs(dict[str, Any]):
    """Keyword arguments for a Kafka client; ``repr``/``str`` mask the secrets."""

    def __repr__(self) -> str:
        shown = {k: (_MASK if k in SECRET_KEYS and v is not None else v) for k, v in self.items()}
        return f"ClientKwargs({shown!r})"

    __str__ = __repr__


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL, or None for the plaintext protocols."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise KafkaConfigError("ssl_certfile and ssl_keyfile must be given together (client certificate)")
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
    )
    context.check_hostname = settings.ssl_check_hostname
    return context


def bootstrap_list(settings: KafkaSettings) -> list[str]:
    """``host:port,host:port`` as a list of ``host:port``."""
    return [server.strip() for server in settings.bootstrap_servers.split(",") if server.strip()]


def client_kwargs(settings: KafkaSettings) -> ClientKwargs:
    """What every aiokafka client takes: bootstrap, identity, security, timeouts."""
    _check_no_stray_sasl(settings)
    kwargs = ClientKwargs(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        security_protocol=settings.security_protocol,
        request_timeout_ms=settings.request_timeout_ms,
    )
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism, username, password = _sasl_user(settings)
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = username
        kwargs["sasl_plain_password"] = password
    return kwargs


def producer_kwargs(settings: KafkaSettings) -> ClientKwargs:
    """An idempotent producer: every write is acknowledged by all in-sync replicas."""
    kwargs = client_kwargs(settings)
    kwargs["enable_idempotence"] = True
    kwargs["acks"] = "all"
    kwargs.update(producer_tuning(settings))
    return kwargs


def producer_tuning(settings: KafkaSettings) -> dict[str, int]:
    """Batching of every producer (aiokafka's and FastStream's)."""
    return {"linger_ms": settings.linger_ms, "max_batch_size": settings.max_batch_size}


def fetch_tuning(settings: KafkaSettings) -> dict[str, int]:
    """How every consumer (aiokafka's and FastStream's subscribers) fetches."""
    return {"fetch_min_bytes": settings.fetch_min_bytes, "fetch_max_wait_ms": settings.fetch_max_wait_ms}


def consumer_kwargs(settings: KafkaSettings, group_id: str) -> ClientKwargs:
    """A group consumer that commits explicitly after handling."""
    if not group_id:
        raise KafkaConfigError("a consumer needs a group_id")
    if settings.heartbeat_interval_ms >= settings.session_timeout_ms:
        raise KafkaConfigError(
            f"heartbeat_interval_ms ({settings.heartbeat_interval_ms}) must be lower than "
            f"session_timeout_ms ({settings.session_timeout_ms})"
        )
    kwargs = client_kwargs(settings)
    kwargs["group_id"] = group_id
    kwargs["enable_auto_commit"] = False
    kwargs["auto_offset_reset"] = "earliest"
    kwargs["session_timeout_ms"] = settings.session_timeout_ms
    kwargs["heartbeat_interval_ms"] = settings.heartbeat_interval_ms
    kwargs.update(fetch_tuning(settings))
    return kwargs


def admin_kwargs(settings: KafkaSettings) -> ClientKwargs:
    """The admin client (topics and configs)."""
    return client_kwargs(settings)


def faststream_security(settings: KafkaSettings) -> BaseSecurity | None:
    """FastStream's security object for the settings (None for PLAINTEXT)."""
    _check_no_stray_sasl(settings)
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    mechanism, username, password = _sasl_user(settings)
    security_class = _FASTSTREAM_SASL[mechanism]
    return security_class(username=username, password=password, ssl_context=context, use_ssl=protocol == "SASL_SSL")


def faststream_broker_kwargs(settings: KafkaSettings) -> ClientKwargs:
    """Keyword arguments for ``faststream.kafka.KafkaBroker``. FastStream takes several bootstrap
    servers as a list (a comma-separated string would be read as one host), aiokafka either way."""
    kwargs = ClientKwargs(
        bootstrap_servers=bootstrap_list(settings),
        client_id=settings.client_id,
        request_timeout_ms=settings.request_timeout_ms,
        enable_idempotence=True,
        acks="all",
        **producer_tuning(settings),
    )
    security = faststream_security(settings)
    if security is not None:
        kwargs["security"] = security
    return kwargs


_FASTSTREAM_SASL: Final[dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def _sasl_user(settings: KafkaSettings) -> tuple[str, str, str]:
    """(mechanism, username, password) of a SASL protocol's settings."""
    if settings.sasl_mechanism is None:
        raise KafkaConfigError(f"security_protocol {settings.security_protocol} needs sasl_mechanism")
    if not settings.sasl_username or settings.sasl_password is None:
        raise KafkaConfigError(
            f"security_protocol {settings.security_protocol} needs sasl_username and sasl_password"
        )
    return settings.sasl_mechanism, settings.sasl_username, settings.sasl_password.get_secret_value()


def _check_no_stray_sasl(settings: KafkaSettings) -> None:
    """SASL settings with a non-SASL protocol are a mistake that would otherwise pass silently."""
    if settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return
    stray = [
        name
        for name, value in (
            ("sasl_mechanism", settings.sasl_mechanism),
            ("sasl_username", settings.sasl_username),
            ("sasl_password", settings.sasl_password),
        )
        if value is not None
    ]
    if stray:
        raise KafkaConfigError(
            f"{', '.join(stray)} set but security_protocol is {settings.security_protocol}; "
            "use SASL_SSL (or SASL_PLAINTEXT) to authenticate"
        )

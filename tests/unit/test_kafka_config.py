"""Kafka client arguments from KafkaSettings: security mapping, producer/consumer policy, secrets."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import SecretStr

from services.common.kafka_config import (
    ClientKwargs,
    KafkaConfigError,
    admin_kwargs,
    client_kwargs,
    consumer_kwargs,
    faststream_broker_kwargs,
    faststream_security,
    producer_kwargs,
)
from services.common.settings import KafkaSettings
from services.common.throwaway_tls import make_throwaway_tls

PASSWORD = "pa55-w0rd-that-must-not-leak"


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """KafkaSettings reads CERTRAIL_KAFKA_*; these tests pass every value themselves."""
    for name in list(os.environ):
        if name.startswith("CERTRAIL_KAFKA_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca_pem, _ = make_throwaway_tls({"127.0.0.1"})
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    path.write_text(ca_pem)
    return path


def settings(**values: Any) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="broker-1:9092,broker-2:9092", client_id="certrail-unit", **values)


def sasl(protocol: str, mechanism: str, cafile: Path | None = None, **values: Any) -> KafkaSettings:
    return settings(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="certrail",
        sasl_password=SecretStr(PASSWORD),
        ssl_cafile=cafile,
        **values,
    )


def test_plaintext_needs_nothing_but_bootstrap_and_identity() -> None:
    kwargs = client_kwargs(settings(request_timeout_ms=12_000))
    assert kwargs == {
        "bootstrap_servers": "broker-1:9092,broker-2:9092",
        "client_id": "certrail-unit",
        "security_protocol": "PLAINTEXT",
        "request_timeout_ms": 12_000,
    }


@pytest.mark.parametrize(
    ("protocol", "mechanism", "uses_tls"),
    [
        ("SASL_SSL", "PLAIN", True),
        ("SASL_SSL", "SCRAM-SHA-256", True),
        ("SASL_SSL", "SCRAM-SHA-512", True),
        ("SASL_PLAINTEXT", "PLAIN", False),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", False),
    ],
)
def test_sasl_settings_map_to_aiokafka_arguments(protocol: str, mechanism: str, uses_tls: bool, cafile: Path) -> None:
    kwargs = client_kwargs(sasl(protocol, mechanism, cafile if uses_tls else None))
    assert kwargs["security_protocol"] == protocol
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "certrail"
    assert kwargs["sasl_plain_password"] == PASSWORD
    if uses_tls:
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    else:
        assert "ssl_context" not in kwargs


def test_hostname_check_can_be_turned_off_but_the_certificate_is_still_verified(cafile: Path) -> None:
    context = client_kwargs(settings(security_protocol="SSL", ssl_cafile=cafile, ssl_check_hostname=False))[
        "ssl_context"
    ]
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_producers_are_idempotent_and_wait_for_all_replicas() -> None:
    kwargs = producer_kwargs(settings())
    assert kwargs["enable_idempotence"] is True
    assert kwargs["acks"] == "all"
    assert kwargs["bootstrap_servers"] == "broker-1:9092,broker-2:9092"


def test_consumers_commit_explicitly_and_start_at_the_earliest_offset() -> None:
    kwargs = consumer_kwargs(settings(session_timeout_ms=6_000, heartbeat_interval_ms=1_000), group_id="auditor")
    assert kwargs["group_id"] == "auditor"
    assert kwargs["enable_auto_commit"] is False
    assert kwargs["auto_offset_reset"] == "earliest"
    assert (kwargs["session_timeout_ms"], kwargs["heartbeat_interval_ms"]) == (6_000, 1_000)


def test_admin_kwargs_are_the_client_kwargs(cafile: Path) -> None:
    config = sasl("SASL_SSL", "PLAIN", cafile)
    admin, client = admin_kwargs(config), client_kwargs(config)
    assert admin.keys() == client.keys()
    assert {k: v for k, v in admin.items() if k != "ssl_context"} == {
        k: v for k, v in client.items() if k != "ssl_context"
    }


@pytest.mark.parametrize(
    ("protocol", "mechanism", "security_class", "use_ssl"),
    [
        ("SSL", None, BaseSecurity, True),
        ("SASL_SSL", "PLAIN", SASLPlaintext, True),
        ("SASL_SSL", "SCRAM-SHA-256", SASLScram256, True),
        ("SASL_SSL", "SCRAM-SHA-512", SASLScram512, True),
        ("SASL_PLAINTEXT", "PLAIN", SASLPlaintext, False),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256", SASLScram256, False),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", SASLScram512, False),
    ],
)
def test_faststream_security_matches_the_aiokafka_arguments(
    protocol: str, mechanism: str | None, security_class: type[BaseSecurity], use_ssl: bool, cafile: Path
) -> None:
    config = (
        settings(security_protocol=protocol, ssl_cafile=cafile)
        if mechanism is None
        else sasl(protocol, mechanism, cafile if use_ssl else None)
    )
    security = faststream_security(config)
    assert type(security) is security_class
    assert security is not None and security.use_ssl is use_ssl
    # what FastStream hands to aiokafka must be what our own clients get
    from_faststream = parse_security(security)
    ours = client_kwargs(config)
    for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        if key in ours:
            assert from_faststream[key] == ours[key], key
    assert (from_faststream["ssl_context"] is not None) is use_ssl


def test_faststream_broker_kwargs_are_idempotent_and_plaintext_has_no_security() -> None:
    # several bootstrap servers as a list: FastStream reads a comma-separated string as one host
    kwargs = faststream_broker_kwargs(settings(request_timeout_ms=9_000, linger_ms=7, max_batch_size=65_536))
    assert kwargs == {
        "bootstrap_servers": ["broker-1:9092", "broker-2:9092"],
        "client_id": "certrail-unit",
        "request_timeout_ms": 9_000,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 7,
        "max_batch_size": 65_536,
    }


def test_every_client_gets_the_measured_batching_settings() -> None:
    tuned = settings(linger_ms=3, max_batch_size=32_768, fetch_min_bytes=4_096, fetch_max_wait_ms=20)
    producer = producer_kwargs(tuned)
    consumer = consumer_kwargs(tuned, "g")
    assert (producer["linger_ms"], producer["max_batch_size"]) == (3, 32_768)
    assert (consumer["fetch_min_bytes"], consumer["fetch_max_wait_ms"]) == (4_096, 20)
    assert "linger_ms" not in consumer and "fetch_min_bytes" not in producer


def test_faststream_broker_accepts_the_kwargs(cafile: Path) -> None:
    broker = KafkaBroker(**faststream_broker_kwargs(sasl("SASL_SSL", "SCRAM-SHA-512", cafile)))
    assert broker is not None  # constructing validates the argument names; nothing connects


async def test_aiokafka_clients_accept_the_kwargs(cafile: Path) -> None:
    config = sasl("SASL_SSL", "SCRAM-SHA-256", cafile)
    producer = AIOKafkaProducer(**producer_kwargs(config))
    consumer = AIOKafkaConsumer("certrail.events", **consumer_kwargs(config, group_id="unit"))
    admin = AIOKafkaAdminClient(**admin_kwargs(config))
    # constructing checked every argument name and value; nothing connected
    await producer.stop()
    await consumer.stop()
    await admin.close()


def test_the_password_never_shows_in_repr_or_str(cafile: Path) -> None:
    config = sasl("SASL_SSL", "PLAIN", cafile)
    structures: list[object] = [
        client_kwargs(config),
        producer_kwargs(config),
        consumer_kwargs(config, group_id="g"),
        admin_kwargs(config),
        faststream_broker_kwargs(config),
        faststream_security(config),
        config,
    ]
    for structure in structures:
        assert PASSWORD not in repr(structure), type(structure)
        assert PASSWORD not in str(structure), type(structure)
        assert PASSWORD not in f"{structure}", type(structure)
    assert "**********" in repr(client_kwargs(config))
    # ... while the clients still get the real password
    assert client_kwargs(config)["sasl_plain_password"] == PASSWORD


def test_client_kwargs_is_a_plain_mapping_for_keyword_expansion() -> None:
    kwargs = producer_kwargs(settings())
    assert isinstance(kwargs, ClientKwargs) and isinstance(kwargs, dict)
    assert dict(**kwargs) == dict(kwargs.items())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": SecretStr("p")}, "sasl_mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "sasl_password"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": SecretStr("p")},
            "sasl_username",
        ),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "u", "sasl_password": SecretStr("p")}, "use SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_certfile": Path("client.pem")}, "together"),
    ],
    ids=["sasl-without-mechanism", "sasl-without-password", "sasl-without-username", "stray-sasl", "cert-without-key"],
)
def test_inconsistent_settings_are_refused(values: dict[str, Any], message: str) -> None:
    config = settings(**values)
    with pytest.raises(KafkaConfigError, match=message):
        client_kwargs(config)
    with pytest.raises(KafkaConfigError, match=message):
        faststream_broker_kwargs(config)


def test_a_heartbeat_slower_than_the_session_timeout_is_refused() -> None:
    with pytest.raises(KafkaConfigError, match="heartbeat_interval_ms"):
        consumer_kwargs(settings(session_timeout_ms=3_000, heartbeat_interval_ms=3_000), group_id="g")


def test_a_consumer_needs_a_group() -> None:
    with pytest.raises(KafkaConfigError, match="group_id"):
        consumer_kwargs(settings(), group_id="")

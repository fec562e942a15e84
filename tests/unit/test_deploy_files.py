"""docker-compose.yml (the production shape) is well formed and complete; it
cannot be run here (no Docker engine), so its structure is what is checked."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_every_service() -> None:
    services = _compose()["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "postgres", "migrate", "gateway", "issuer", "deployer", "auditor"} <= set(services)
    for name in ("gateway", "issuer", "deployer", "auditor"):
        assert services[name]["command"] == ["serve", name]
        assert "healthcheck" in services[name]
    assert services["issuer"]["deploy"]["replicas"] >= 2


def test_compose_kafka_is_a_three_node_kraft_quorum() -> None:
    services = _compose()["services"]
    ids = set()
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = services[name]["environment"]
        assert services[name]["image"].startswith("apache/kafka:4.")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        ids.add(env["KAFKA_NODE_ID"])
    assert ids == {1, 2, 3}


def test_compose_holds_no_secret_values() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in _compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key.upper() for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert str(value).startswith("${"), f"{key} must come from the environment"
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text

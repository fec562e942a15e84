"""docker-compose.yml (the production shape) is well formed and complete; it
cannot be run here (no Docker engine), so its structure is what is checked
(`docker compose config`, where the client exists, and the Prometheus/Grafana
files: tests/integration/test_deploy_files_ops.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PORTS = {"gateway": 8080, "issuer": 8081, "deployer": 8082, "auditor": 8083}
EVERY_SERVICE = {
    "kafka-1", "kafka-2", "kafka-3", "postgres", "emca-sim", "migrate",
    "gateway", "issuer", "deployer", "auditor", "prometheus", "grafana",
}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_every_service() -> None:
    services = _compose()["services"]
    assert set(services) == EVERY_SERVICE
    for name, port in SERVICE_PORTS.items():
        service = services[name]
        assert service["command"] == ["serve", name]
        env = service["environment"]
        assert env[f"CERTRAIL_{name.upper()}_HTTP_HOST"] == "0.0.0.0"
        assert env[f"CERTRAIL_{name.upper()}_HTTP_PORT"] == str(port)
        assert f"http://127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
        assert env["CERTRAIL_KAFKA_BOOTSTRAP_SERVERS"].endswith("kafka-1:9092,kafka-2:9092,kafka-3:9092}")
        assert env["CERTRAIL_DB_URL"].startswith("postgresql+psycopg://")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["issuer"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["issuer"], "a fixed host port cannot be shared by the issuer's replicas"
    for name in ("gateway", "issuer"):  # they hold the connector-secret keys
        assert services[name]["environment"]["CERTRAIL_SECRETS_KEYS"].startswith("${CERTRAIL_SECRETS_KEYS:?")


def test_compose_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in _compose()["services"].items():
        if name != "migrate":
            assert service["healthcheck"]["test"], name


def test_compose_kafka_is_a_three_node_kraft_quorum() -> None:
    services = _compose()["services"]
    ids = set()
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = services[name]["environment"]
        assert services[name]["image"].startswith("apache/kafka:4.")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_PLAINTEXT://{name}:9092"
        ids.add(env["KAFKA_NODE_ID"])
    assert ids == {1, 2, 3}


def test_compose_kafka_authenticates_every_client_like_the_embedded_broker() -> None:
    """The same listeners, authorizer, super users and principals as services/common/kafka_local.py."""
    from services.common.kafka_acls import ALL_PRINCIPALS, SERVICE_PRINCIPALS
    from services.common.kafka_principals import AUTHORIZER_CLASS

    services = _compose()["services"]
    script = (ROOT / "deploy" / "kafka" / "start-broker.sh").read_text()
    for line in ("listeners=SASL_PLAINTEXT://:9092,CONTROLLER://:9093",
                 "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
                 "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512", "sasl.mechanism.controller.protocol=PLAIN",
                 f"authorizer.class.name={AUTHORIZER_CLASS}", "super.users=User:broker;User:admin",
                 "allow.everyone.if.no.acl.found=false"):
        assert f"\n{line}\n" in script, line
    assert "PLAINTEXT:PLAINTEXT" not in script
    assert f"for principal in {' '.join(ALL_PRINCIPALS)}; do" in script
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        broker = services[name]
        assert broker["entrypoint"] == ["/bin/bash", "/opt/certrail/start-broker.sh"]
        assert "./deploy/kafka/start-broker.sh:/opt/certrail/start-broker.sh:ro" in broker["volumes"]
        for principal in ALL_PRINCIPALS:
            assert broker["environment"][f"KAFKA_{principal.upper()}_PASSWORD"].startswith(f"${{KAFKA_{principal.upper()}_PASSWORD:?")
        assert "--command-config" in broker["healthcheck"]["test"][1]
    for principal in SERVICE_PRINCIPALS:  # each service its own principal, never the admin
        env = services[principal]["environment"]
        assert env["CERTRAIL_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env["CERTRAIL_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["CERTRAIL_KAFKA_SASL_USERNAME"] == principal
        assert env["CERTRAIL_KAFKA_SASL_PASSWORD"].startswith(f"${{KAFKA_{principal.upper()}_PASSWORD:?")
    migrate = services["migrate"]
    assert migrate["environment"]["CERTRAIL_KAFKA_SASL_USERNAME"] == "admin"
    steps = migrate["entrypoint"][-1].split(" && ")
    assert steps.index("certrail kafka acls apply") < steps.index("certrail topics ensure")


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = _compose()["services"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    for mount in [*services["prometheus"]["volumes"], *services["grafana"]["volumes"], *services["emca-sim"]["volumes"]]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), mount
    assert services["emca-sim"]["command"][:2] == ["emca-sim", "serve"]


def test_compose_holds_no_secret_values() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    secret_words = ("PASSWORD", "SECRET", "TOKEN", "KEY", "PASSPHRASE")
    for service in _compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key.upper() for word in secret_words):
                assert str(value).startswith("${") and ":?" in str(value), f"{key} must come from the environment"
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    # every required variable is listed in the example env file, which itself holds no values
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (ROOT / "deploy" / "compose.env.example").read_text()
    assigned = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, flags=re.MULTILINE))
    assert required <= set(assigned)
    assert all(assigned[name] == "" for name in required)

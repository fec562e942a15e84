"""docker-compose.yml and the Dockerfile say what the tested stack does (issue 21): the brokers' settings, the
topics, partitions, replication and ACLs, the principals and the services' settings are compared with the
project's own definitions: what `certrail kafka start --brokers 3` (services/common/kafka_cluster.py) and
`certrail up --instances 2` (services/cli/stack_cmd.py, services/common/stack.py) use. Neither file can be run
here (no Docker engine; docs/operations.md "Scaling out"), so what they run is checked: the commands exist in
the `certrail` CLI the image installs."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from services.auditor.settings import AuditorSettings
from services.cli import kafka_cmd, stack_cmd, topics_cmd
from services.cli.main import app as certrail_cli
from services.common.internal_failover import base_urls
from services.common.kafka_acls import SERVICE_PRINCIPALS
from services.common.kafka_cluster import CLUSTER_BROKER_CONFIG, LocalKafkaCluster
from services.common.kafka_principals import authentication_lines, client_env
from services.common.settings import KafkaSettings
from services.common.stack import DEFAULT_PORTS, Stack
from services.common.topics_admin import EnsureTopicsReport
from services.common.topics_admin import ensure_topics as real_ensure_topics

ROOT = Path(__file__).resolve().parents[2]
BROKER_PASSWORD = "${KAFKA_BROKER_PASSWORD}"
#: the stack hands each secret over as a file in its var dir; compose as a value from the environment (.env)
AS_VALUE = {"CERTRAIL_INTERNAL_TOKEN_FILE": "CERTRAIL_INTERNAL_TOKEN", "CERTRAIL_SECRETS_KEYS_FILE": "CERTRAIL_SECRETS_KEYS",
            "CERTRAIL_DEPLOYER_KEYS_FILE": "CERTRAIL_DEPLOYER_KEYS",
            "CERTRAIL_DEPLOYER_REQUEST_KEY_FILE": "CERTRAIL_DEPLOYER_REQUEST_KEY"}
#: the gateway's settings naming another service's /internal/v1 (decision 0020): CERTRAIL_GATEWAY_<SERVICE>_URL
INTERNAL_URL = re.compile(r"^CERTRAIL_GATEWAY_([A-Z]+)_URL$")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def broker_properties() -> dict[str, str]:
    """server.properties as deploy/kafka/start-broker.sh writes it for each compose broker (its shell variables
    for the login modules expanded; the password variables left as they are)."""
    script = (ROOT / "deploy" / "kafka" / "start-broker.sh").read_text()
    variables = dict(re.findall(r"^(scram|plain)=(\S+)$", script, flags=re.MULTILINE))
    body = re.search(r'cat > "\$conf" <<PROPS\n(.*?)\nPROPS\n', script, flags=re.DOTALL)
    assert body is not None, "start-broker.sh no longer writes server.properties from a heredoc"
    text = re.sub(r"\$\{(scram|plain)\}", lambda m: variables[m.group(1)], body.group(1))
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def kafka_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if re.fullmatch(r"kafka-\d+", name)}


def test_the_brokers_are_the_tested_cluster() -> None:
    """As many combined nodes as `certrail kafka start --brokers` makes by default, one static quorum of them, and
    every broker setting of the tested cluster (replication factor, min ISR, unclean leader election off, internal
    topics) and of its security (SCRAM, PLAIN between controllers, the authorizer, the super users)."""
    brokers = inspect.signature(LocalKafkaCluster).parameters["brokers"].default
    nodes = kafka_services(compose()["services"])
    assert len(nodes) == brokers
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in (n["environment"] for n in nodes.values())}
    assert voters == {",".join(f"{i}@kafka-{i}:9093" for i in range(1, brokers + 1))}
    properties = broker_properties()
    assert {k: properties.get(k) for k in CLUSTER_BROKER_CONFIG} == dict(CLUSTER_BROKER_CONFIG)
    assert properties["process.roles"] == "broker,controller"
    for line in authentication_lines(BROKER_PASSWORD):
        key, value = line.split("=", 1)
        assert properties.get(key) == value, key


class Recorder:
    """Stands in for the cluster: records what would be created (topics with their options, ACLs)."""

    def __init__(self) -> None:
        self.topics: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.acls: list[tuple[list[Any], list[Any]]] = []

    async def ensure_topics(self, settings: KafkaSettings, topics: Any, **options: Any) -> EnsureTopicsReport:
        """Records every option `ensure_topics` would apply, its defaults included."""
        bound = inspect.signature(real_ensure_topics).bind(settings, topics, **options)
        bound.apply_defaults()
        self.topics.append((tuple(topics), {k: v for k, v in bound.arguments.items() if k not in ("settings", "topics")}))
        return EnsureTopicsReport()

    async def apply_acls(self, settings: KafkaSettings, bindings: Any, superseded: Any = ()) -> None:
        self.acls.append((sorted(bindings), sorted(superseded)))


class _LocalCluster:
    def client_settings(self, principal: str, topic_prefix: str) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix=topic_prefix)


def test_migrate_creates_the_topics_and_acls_certrail_up_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose's one-shot `migrate` runs `certrail kafka acls apply` and `certrail topics ensure` with its own
    environment; `certrail up` prepares its cluster itself: the same topics, partitions, replication factor and
    min ISR (both leave them to `ensure_topics`: min(3, brokers) and min(2, RF)), retention and ACLs."""
    services = compose()["services"]
    migrate = services["migrate"]
    steps = migrate["entrypoint"][-1].split(" && ")
    assert steps == ["certrail db upgrade", "certrail kafka acls apply", "certrail topics ensure"]
    up, compose_run = Recorder(), Recorder()
    for module, name, recorder in ((stack_cmd, "ensure_topics", up), (stack_cmd, "apply_acls", up),
                                   (topics_cmd, "ensure_topics", compose_run), (kafka_cmd, "apply_acls", compose_run)):
        monkeypatch.setattr(module, name, getattr(recorder, name))  # the cluster calls the commands would make
    prefix = KafkaSettings(bootstrap_servers="127.0.0.1:9").topic_prefix
    for name in [k for k in os.environ if k.startswith("CERTRAIL_")]:
        monkeypatch.delenv(name)
    asyncio.run(stack_cmd._prepare_kafka(_LocalCluster(), prefix))  # type: ignore[arg-type]
    env = {k: str(v) for k, v in migrate["environment"].items() if not str(v).startswith("${")}
    env.update({"CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092", "CERTRAIL_KAFKA_SASL_PASSWORD": "p" * 16,
                "CERTRAIL_KAFKA_SASL_USERNAME": "admin"})
    runner = CliRunner()
    for argv in (steps[1], steps[2]):
        result = runner.invoke(certrail_cli, argv.split()[1:], env=env)
        assert result.exit_code == 0, result.output
    assert compose_run.topics == up.topics and len(up.topics) == 1
    assert compose_run.acls == up.acls and up.acls[0][0]
    groups = {k: v for s in services.values() for k, v in (s.get("environment") or {}).items() if k.endswith("_GROUP_ID")}
    assert groups == {}, "a group id set in one container only would not match the ACLs `migrate` applies"


def stack_settings(service: str, tmp_path: Path) -> tuple[dict[str, str], Stack]:
    """What `certrail up --instances 2 --brokers 3 --db postgresql` gives instance 1 of ``service``."""
    var_dir = tmp_path / "var"
    env = stack_cmd.services_env(var_dir, "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096",
                                 KafkaSettings(bootstrap_servers="127.0.0.1:9").topic_prefix, "postgresql+psycopg://u@h/db")
    stack = Stack(var_dir=var_dir, env=env, instances=2,
                  service_env={name: client_env("127.0.0.1:9092", name, "pw") for name in SERVICE_PRINCIPALS})
    (first, _) = stack.instances_of(service)
    prefix = f"CERTRAIL_{service.upper()}_"
    return {**first.env, f"{prefix}HTTP_HOST": first.host, f"{prefix}HTTP_PORT": str(first.port)}, stack


@pytest.mark.parametrize("service", SERVICE_PRINCIPALS)
def test_each_container_gets_the_settings_certrail_up_gives_its_instances(service: str, tmp_path: Path) -> None:
    """Every setting of ``service`` that `certrail up` passes is in its compose environment (secrets as values
    instead of files), the Kafka principal and SASL the same, the ports the same, every other service's URL
    pointing at that service, and the keys the stack keeps in its var dir at the path the image's var/ holds."""
    ours, stack = stack_settings(service, tmp_path)
    theirs = compose()["services"][service]["environment"]
    others = {f"CERTRAIL_{s.upper()}_" for s in SERVICE_PRINCIPALS if s != service}
    internal_api = {"gateway"} | {m.group(1).lower() for m in map(INTERNAL_URL.match, ours) if m}  # callers and callees
    relevant = {k: v for k, v in ours.items() if k.startswith("CERTRAIL_") and not any(k.startswith(o) for o in others)
                and (service in internal_api or not k.startswith("CERTRAIL_INTERNAL_"))}
    for key, value in relevant.items():
        if key in AS_VALUE:
            assert str(theirs.get(AS_VALUE[key], "")).startswith(f"${{{AS_VALUE[key]}:?"), key
        elif key == "CERTRAIL_AUDITOR_SIGNING_KEY_FILE":  # the default, relative to the image's working dir
            assert key not in theirs
            default = AuditorSettings.model_fields["signing_key_file"].default
            assert Path(value).relative_to(stack.var_dir) == default.relative_to("var")
        elif key in ("CERTRAIL_KAFKA_BOOTSTRAP_SERVERS", "CERTRAIL_DB_URL", "CERTRAIL_KAFKA_SASL_PASSWORD"):
            assert key in theirs, key  # values of the installation (hosts, passwords)
        elif key == "CERTRAIL_KAFKA_TOPIC_PREFIX":
            assert theirs.get(key, KafkaSettings.model_fields["topic_prefix"].default) == value
        elif key == f"CERTRAIL_{service.upper()}_HTTP_HOST":
            assert theirs[key] == "0.0.0.0"  # noqa: S104 - inside its container, reached on the compose network
        elif (named := INTERNAL_URL.match(key)) is not None:  # compose: the service name resolves to each replica
            target = named.group(1).lower()
            assert base_urls(theirs.get(key, "")) == (f"http://{target}:{DEFAULT_PORTS[target]}",), key
            urls = base_urls(value)  # the stack: instances of that service, instance 1 first
            assert urls == tuple(stack.instance_urls(target)[:len(urls)]), key
        else:
            assert str(theirs.get(key)) == value, key
    assert f"CERTRAIL_{service.upper()}_HTTP_PORT" in relevant and int(theirs[f"CERTRAIL_{service.upper()}_HTTP_PORT"]) == DEFAULT_PORTS[service]
    assert theirs["CERTRAIL_KAFKA_SASL_USERNAME"] == service


def test_compose_runs_two_of_each_service_that_needs_no_published_port() -> None:
    """`certrail up --instances 2` runs two of every service; compose runs two of each that publishes no host
    port (the gateway publishes 8080: more gateways go behind a load balancer, docs/operations.md)."""
    services = compose()["services"]
    for name in SERVICE_PRINCIPALS:
        if "ports" in services[name]:
            assert name == "gateway"
        else:
            assert services[name]["deploy"]["replicas"] >= 2, name


def test_the_image_installs_the_package_and_runs_commands_the_cli_has() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (script,) = project["scripts"]
    assert f'ENTRYPOINT ["{script}"]' in dockerfile
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = {source for line in re.findall(r"^COPY ([^-\n][^\n]*)$", dockerfile, flags=re.MULTILINE)
              for source in line.split()[:-1]}
    assert {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]} | {"pyproject.toml", project["readme"]} <= copied
    assert "pip install --no-cache-dir --prefix=/install ." in dockerfile  # the package, with its package data
    assert "WORKDIR /var/lib/certrail" in dockerfile and "/var/lib/certrail/var" in dockerfile  # where var/ defaults resolve
    services = compose()["services"]
    commands = [s["command"] for s in services.values() if s.get("image", "").startswith("certrail") and "command" in s]
    commands += [step.split()[1:] for step in services["migrate"]["entrypoint"][-1].split(" && ")]
    runner = CliRunner()
    assert len(commands) >= 7  # the simulator, four services, migrate's three steps
    for command in commands:
        words = [w for w in command if not w.startswith("-")][:3]
        if words[0] in ("serve", "emca-sim"):  # their arguments follow: `serve gateway`, `emca-sim serve --data-dir ...`
            words = words[:2]
        result = runner.invoke(certrail_cli, [*words, "--help"])
        assert result.exit_code == 0, f"certrail {' '.join(words)}: {result.output}"

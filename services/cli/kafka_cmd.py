"""`certrail kafka start|stop|status`: the local single-node Apache Kafka (KRaft), or with
``start --brokers 3`` a local three-node cluster (docs/scaling.md);
`certrail kafka acls apply|show`: certrail's principals' ACLs on any cluster.

Every option can also come from the environment (``CERTRAIL_KAFKA_LOCAL_*``);
``stop`` and ``status`` find the broker through ``--data-dir`` (its pid file), and a
cluster through the ``cluster.json`` it writes there.
The local broker authenticates (SASL/SCRAM-SHA-512, ACLs) unless started with
``--no-authentication``; `start` applies certrail's ACLs to it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.common.contracts.topics import Topics
from services.common.kafka_acls import (
    ADMIN,
    KafkaAclError,
    acl_bindings,
    apply_acls,
    describe_acls,
    service_groups_from,
    superseded_bindings,
)
from services.common.kafka_cluster import ClusterStatus, LocalKafkaCluster, strided_ports
from services.common.kafka_config import KafkaConfigError
from services.common.kafka_local import DEFAULT_KAFKA_VERSION, KafkaStatus, LocalKafka, LocalKafkaError
from services.common.settings import KafkaSettings

app = typer.Typer(no_args_is_help=True, add_completion=False)

_ENV = "CERTRAIL_KAFKA_LOCAL_"
Host = Annotated[str, typer.Option(envvar=f"{_ENV}HOST", help="Address the listeners bind to.")]
Port = Annotated[int, typer.Option(envvar=f"{_ENV}PORT", help="PLAINTEXT listener (clients).")]
ControllerPort = Annotated[int, typer.Option(envvar=f"{_ENV}CONTROLLER_PORT", help="KRaft controller listener.")]
SaslSslPort = Annotated[
    int | None,
    typer.Option(envvar=f"{_ENV}SASL_SSL_PORT", help="Also open a SASL_SSL listener (PLAIN, SCRAM-SHA-256) here."),
]
DataDir = Annotated[Path, typer.Option(envvar=f"{_ENV}DATA_DIR", help="Broker config, logs, data and pid file.")]
CacheDir = Annotated[Path, typer.Option(envvar=f"{_ENV}CACHE_DIR", help="Where the broker's jars are fetched to.")]
Version = Annotated[str, typer.Option("--version", envvar=f"{_ENV}VERSION", help="Apache Kafka version.")]
Pom = Annotated[
    Path | None,
    typer.Option(envvar=f"{_ENV}POM", help="The pom listing the broker's artifacts (default: tools/kafka/pom.xml)."),
]
JavaHome = Annotated[Path | None, typer.Option(envvar="JAVA_HOME", help="Java 17+ to run (default: java on PATH).")]
Brokers = Annotated[
    int | None,
    typer.Option(
        min=1,
        envvar=f"{_ENV}BROKERS",
        help="1: a single node; 3: a three-node KRaft cluster (node i on port+2i, controller-port+2i, "
        "sasl-ssl-port+2i; data in DATA_DIR/node-<i>). Default: what DATA_DIR holds, else 1.",
    ),
]
Authentication = Annotated[
    bool,
    typer.Option(
        "--authentication/--no-authentication",
        envvar=f"{_ENV}AUTHENTICATION",
        help="SASL/SCRAM principals and ACLs (the default, as in production); off: an open PLAINTEXT "
        "listener for experiments only.",
    ),
]


def _local_kafka(
    host: str,
    port: int,
    controller_port: int,
    sasl_ssl_port: int | None,
    data_dir: Path,
    cache_dir: Path,
    version: str,
    pom: Path | None = None,
    java_home: Path | None = None,
    authentication: bool = True,
) -> LocalKafka:
    try:
        return LocalKafka(
            authentication=authentication,
            version=version,
            cache_dir=cache_dir,
            data_dir=data_dir,
            host=host,
            port=port,
            controller_port=controller_port,
            sasl_ssl_port=sasl_ssl_port,
            pom_path=pom,
            java_home=java_home,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _local_cluster(
    brokers: int,
    host: str,
    port: int,
    controller_port: int,
    sasl_ssl_port: int | None,
    data_dir: Path,
    cache_dir: Path,
    version: str,
    pom: Path | None = None,
    java_home: Path | None = None,
    authentication: bool = True,
) -> LocalKafkaCluster:
    try:
        return LocalKafkaCluster(
            cache_dir=cache_dir, data_dir=data_dir, brokers=brokers,
            ports=strided_ports(brokers, port, controller_port, sasl_ssl_port), version=version, host=host,
            pom_path=pom, java_home=java_home, authentication=authentication,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _stored_cluster(data_dir: Path, cache_dir: Path = Path(".cache")) -> LocalKafkaCluster | None:
    """The cluster ``data_dir`` holds (its cluster.json), or None for a single broker's data dir."""
    try:
        return LocalKafkaCluster.load(data_dir, cache_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(Exception(f"cannot read the cluster layout in {data_dir}: {exc}")) from exc


def _describe_cluster(cluster: LocalKafkaCluster, status: ClusterStatus) -> str:
    if not status.any_running:
        return f"Kafka cluster ({len(status.nodes)} nodes) is stopped (data dir {status.data_dir})"
    state = "running" if status.running else "DEGRADED (not every node runs)"
    lines = [f"Kafka cluster of {len(status.nodes)} nodes is {state} on {status.bootstrap_servers}"]
    for node, node_status in zip(cluster.nodes, status.nodes, strict=True):
        where = f"pid {node_status.pid}" if node_status.running else "stopped"
        lines.append(f"  node {node.node_id}: {node.bootstrap_servers} (controller :{node.controller_port}), {where}, "
                     f"log {node_status.log_file}")
    try:
        quorum = cluster.describe_quorum(timeout=10.0)
        lines.append(f"  controller quorum: voters {list(quorum.voters)}, active controller node {quorum.leader_id} "
                     f"(epoch {quorum.leader_epoch})")
    except (KafkaError, LocalKafkaError, OSError, TimeoutError) as exc:
        lines.append(f"  controller quorum: cannot describe it ({type(exc).__name__})")
    lines.append(f"  data dir:  {status.data_dir}")
    return "\n".join(lines)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _describe(status: KafkaStatus) -> str:
    if not status.running:
        return f"Kafka is stopped (data dir {status.data_dir})"
    auth = "SASL_PLAINTEXT, SCRAM-SHA-512, ACLs" if status.authentication else "PLAINTEXT, no authentication"
    lines = [f"Kafka is running (pid {status.pid}) on {status.bootstrap_servers} ({auth})"]
    lines.append(f"  listeners: {', '.join(status.listeners)}")
    lines.append(f"  data dir:  {status.data_dir}")
    lines.append(f"  log:       {status.log_file}")
    return "\n".join(lines)


@app.command()
def fetch(
    cache_dir: CacheDir = Path(".cache"),
    version: Version = DEFAULT_KAFKA_VERSION,
    pom: Pom = None,
) -> None:
    """Fetch the broker's jars with Maven (once; later calls only check them)."""
    kafka = _local_kafka("127.0.0.1", 9092, 9093, None, Path("var/kafka"), cache_dir, version, pom)
    try:
        libs = kafka.fetch()
    except LocalKafkaError as exc:
        raise _fail(exc) from exc
    typer.echo(f"Kafka {version} jars in {libs}")


@app.command()
def start(
    host: Host = "127.0.0.1",
    port: Port = 9092,
    controller_port: ControllerPort = 9093,
    sasl_ssl_port: SaslSslPort = None,
    data_dir: DataDir = Path("var/kafka"),
    cache_dir: CacheDir = Path(".cache"),
    version: Version = DEFAULT_KAFKA_VERSION,
    pom: Pom = None,
    java_home: JavaHome = None,
    authentication: Authentication = True,
    brokers: Brokers = None,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker(s) to answer.")] = 90.0,
) -> None:
    """Fetch (once), format (once) and start the broker (or cluster), apply certrail's ACLs; return when it answers."""
    stored = _stored_cluster(data_dir, cache_dir)
    if brokers is None:
        brokers = len(stored.nodes) if stored is not None else 1
    kafka: LocalKafka | LocalKafkaCluster
    if brokers == 1:
        if stored is not None:
            raise _fail(LocalKafkaError(f"{data_dir} holds a {len(stored.nodes)}-node cluster; "
                                        "pass --brokers with that number or use another --data-dir"))
        kafka = _local_kafka(host, port, controller_port, sasl_ssl_port, data_dir, cache_dir, version, pom, java_home,
                             authentication)
    else:
        kafka = _local_cluster(brokers, host, port, controller_port, sasl_ssl_port, data_dir, cache_dir, version, pom,
                               java_home, authentication)
        wait_timeout = max(wait_timeout, 60.0 * brokers)  # three JVMs starting on a small machine
    first = kafka if isinstance(kafka, LocalKafka) else kafka.nodes[0]
    try:
        if not first.is_fetched():
            typer.echo(f"Fetching Apache Kafka {version} with Maven into {first.libs_dir} (once) ...")
        if isinstance(kafka, LocalKafka):
            if not kafka.status().running:
                typer.echo(f"Starting Kafka {version} ...")
            status = kafka.start(wait_timeout=wait_timeout)
            already, description = status.already_running, _describe(status)
        else:
            if not kafka.status().running:
                typer.echo(f"Starting a {brokers}-node Kafka {version} cluster ...")
            cluster_status = kafka.start(wait_timeout=wait_timeout)
            already, description = cluster_status.already_running, _describe_cluster(kafka, cluster_status)
    except LocalKafkaError as exc:
        raise _fail(exc) from exc
    if already:
        typer.echo("Kafka was already running.")
    typer.echo(description)
    sasl_ssl_bootstrap = kafka.sasl_ssl_bootstrap_servers
    if authentication:
        try:
            prefix = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers).topic_prefix
            bindings = acl_bindings(Topics(prefix), service_groups_from(os.environ))
            asyncio.run(apply_acls(kafka.client_settings(ADMIN, prefix), bindings, superseded_bindings(Topics(prefix))))
        except (KafkaAclError, KafkaError, KafkaConfigError, ValidationError, LocalKafkaError) as exc:
            raise _fail(exc) from exc
        typer.echo(f"  ACLs:      {len(bindings)} for topic prefix {prefix!r} (`certrail kafka acls show`)")
        typer.echo(f"  principals: passwords in {kafka.principals_file} (0600); for the CLI tools: "
                   f"set -a; . {kafka.env_file(ADMIN)}; set +a")
        if sasl_ssl_bootstrap:
            typer.echo(f"  SASL_SSL:  {sasl_ssl_bootstrap} (SCRAM-SHA-512, the same principals); "
                       f"CA file {kafka.ssl_cafile}")
    elif sasl_ssl_bootstrap:
        credentials = kafka.sasl_credentials()
        typer.echo(f"  SASL user: {credentials.username} (password in {kafka.data_dir / 'credentials.json'})")
        typer.echo(f"  CA file:   {kafka.ssl_cafile}")


@app.command()
def stop(
    host: Host = "127.0.0.1",
    port: Port = 9092,
    controller_port: ControllerPort = 9093,
    data_dir: DataDir = Path("var/kafka"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean shutdown before SIGKILL.")] = 30.0,
) -> None:
    """Stop the broker, or every node of the cluster in --data-dir (clean shutdown; SIGKILL only as a last resort)."""
    cluster = _stored_cluster(data_dir)
    if cluster is not None:
        try:
            count = cluster.stop(timeout=max(timeout, 60.0))
        except LocalKafkaError as exc:
            raise _fail(exc) from exc
        typer.echo(f"Kafka cluster stopped ({count} of {len(cluster.nodes)} nodes were running).")
        return
    kafka = _local_kafka(host, port, controller_port, None, data_dir, Path(".cache"), DEFAULT_KAFKA_VERSION)
    try:
        stopped = kafka.stop(timeout=timeout)
    except LocalKafkaError as exc:
        raise _fail(exc) from exc
    typer.echo("Kafka stopped." if stopped else "Kafka was not running.")


@app.command()
def status(
    host: Host = "127.0.0.1",
    port: Port = 9092,
    controller_port: ControllerPort = 9093,
    sasl_ssl_port: SaslSslPort = None,
    data_dir: DataDir = Path("var/kafka"),
) -> None:
    """Tell whether the broker (every node of a cluster) runs (exit code 0) or not (exit code 3)."""
    cluster = _stored_cluster(data_dir)
    if cluster is not None:
        cluster_status = cluster.status()
        typer.echo(_describe_cluster(cluster, cluster_status))
        if not cluster_status.running:
            raise typer.Exit(code=3)
        return
    kafka = _local_kafka(host, port, controller_port, sasl_ssl_port, data_dir, Path(".cache"), DEFAULT_KAFKA_VERSION)
    current = kafka.status()
    typer.echo(_describe(current))
    if not current.running:
        raise typer.Exit(code=3)


acls_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(acls_app, name="acls", help="certrail's ACLs (cluster and admin credentials from CERTRAIL_KAFKA_*).")


def _admin_settings() -> KafkaSettings:
    try:
        return KafkaSettings()
    except ValidationError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc


@acls_app.command("apply")
def acls_apply() -> None:
    """Create certrail's ACLs (one principal per service, requester, see docs/operations.md); prints each.

    The topic prefix is CERTRAIL_KAFKA_TOPIC_PREFIX; the groups are CERTRAIL_<SERVICE>_GROUP_ID (or the
    defaults). Idempotent; ACLs it did not set are left alone, except those earlier versions of the
    table granted that no longer hold (write on the single events topic: decision 0016), which it removes."""
    settings = _admin_settings()
    bindings = acl_bindings(Topics(settings.topic_prefix), service_groups_from(os.environ))
    superseded = superseded_bindings(Topics(settings.topic_prefix))
    try:
        asyncio.run(apply_acls(settings, bindings, superseded))
    except (KafkaAclError, KafkaError, KafkaConfigError) as exc:
        raise _fail(Exception(f"cannot apply ACLs on {settings.bootstrap_servers}: {exc}")) from exc
    for binding in superseded:
        typer.echo(f"removed (if present) {binding.describe()}")
    for binding in bindings:
        typer.echo(f"allow {binding.describe()}")
    typer.echo(f"{len(bindings)} ACLs in place")


@acls_app.command("show")
def acls_show() -> None:
    """List the cluster's ALLOW ACLs (topic, group and cluster resources)."""
    settings = _admin_settings()
    try:
        bindings = asyncio.run(describe_acls(settings))
    except (KafkaAclError, KafkaError, KafkaConfigError) as exc:
        raise _fail(Exception(f"cannot list ACLs on {settings.bootstrap_servers}: {exc}")) from exc
    for binding in bindings:
        typer.echo(f"allow {binding.describe()}")
    typer.echo(f"{len(bindings)} ACLs")

"""`certrail kafka start|stop|status`: the local single-node Apache Kafka (KRaft).

Every option can also come from the environment (``CERTRAIL_KAFKA_LOCAL_*``);
``stop`` and ``status`` find the broker through ``--data-dir`` (its pid file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.common.kafka_local import DEFAULT_KAFKA_VERSION, KafkaStatus, LocalKafka, LocalKafkaError

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
) -> LocalKafka:
    try:
        return LocalKafka(
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


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _describe(status: KafkaStatus) -> str:
    if not status.running:
        return f"Kafka is stopped (data dir {status.data_dir})"
    lines = [f"Kafka is running (pid {status.pid}) on {status.bootstrap_servers}"]
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
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to answer.")] = 90.0,
) -> None:
    """Fetch (once), format (once) and start the broker; return when it answers."""
    kafka = _local_kafka(host, port, controller_port, sasl_ssl_port, data_dir, cache_dir, version, pom, java_home)
    try:
        if not kafka.is_fetched():
            typer.echo(f"Fetching Apache Kafka {version} with Maven into {kafka.libs_dir} (once) ...")
        if not kafka.status().running:
            typer.echo(f"Starting Kafka {version} ...")
        status = kafka.start(wait_timeout=wait_timeout)
    except LocalKafkaError as exc:
        raise _fail(exc) from exc
    if status.already_running:
        typer.echo("Kafka was already running.")
    typer.echo(_describe(status))
    if status.sasl_ssl_bootstrap_servers:
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
    """Stop the broker (clean shutdown; SIGKILL only as a last resort)."""
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
    """Tell whether the broker runs (exit code 0) or not (exit code 3)."""
    kafka = _local_kafka(host, port, controller_port, sasl_ssl_port, data_dir, Path(".cache"), DEFAULT_KAFKA_VERSION)
    current = kafka.status()
    typer.echo(_describe(current))
    if not current.running:
        raise typer.Exit(code=3)

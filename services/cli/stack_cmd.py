"""`certrail up` / `certrail down`: the embedded stack (local Kafka, topics,
SQLite (a file per service), the four services)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from services.cli.demo import DemoError, GatewayTls, issue_gateway_tls, run_demo, stack_env, usable_gateway_tls
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, safe_url
from services.common.kafka_acls import (
    ADMIN,
    KafkaAclError,
    acl_bindings,
    apply_acls,
    service_groups_from,
    superseded_bindings,
)
from services.common.kafka_cluster import LAYOUT_FILE, LocalKafkaCluster, strided_ports
from services.common.kafka_local import LocalKafka, LocalKafkaError
from services.common.migrate import upgrade_each
from services.common.prometheus_local import DEFAULT_PORT as PROMETHEUS_PORT
from services.common.prometheus_local import RULES_DIR, PrometheusMissing, PrometheusProcess, find_binary, prometheus_process
from services.common.settings import DatabaseSettings, KafkaSettings, service_db_url_env
from services.common.stack import (
    DEFAULT_PORTS,
    DEFAULT_SIM_PORTS,
    INSTANCE_PORT_STEP,
    SERVICES,
    Stack,
    StackError,
    instance_ports,
)
from services.common.stack_db import DEFAULT_POSTGRES_URL, StackDatabaseError, drop_database, postgres_database, sqlite_urls
from services.common.topics_admin import TopicAdminError, ensure_topics

_ENV = "CERTRAIL_UP_"
VarDir = Annotated[Path, typer.Option(envvar=f"{_ENV}VAR_DIR", help="Where data, logs and pid files go.")]
CacheDir = Annotated[Path, typer.Option(envvar=f"{_ENV}CACHE_DIR", help="Where the Kafka jars are cached.")]
KafkaPort = Annotated[int, typer.Option(envvar=f"{_ENV}KAFKA_PORT", help="Local Kafka client port.")]
ControllerPort = Annotated[int, typer.Option(envvar=f"{_ENV}KAFKA_CONTROLLER_PORT", help="Local Kafka controller port.")]


#: `certrail up --https`: the gateway's HTTPS port (the ACME directory's), beside the simulator's 8443-8445
DEFAULT_GATEWAY_HTTPS_PORT = 8446

#: what `certrail up` remembers of its shape for `certrail down` and the next `up` (no secret)
LAYOUT = "stack.json"


class DbKind(StrEnum):
    sqlite = "sqlite"
    postgresql = "postgresql"


def _port_option(service: str) -> object:
    return typer.Option(envvar=f"{_ENV}{service.upper()}_PORT",
                        help=f"The {service}'s health/metrics port (of its first instance with --instances).")


def services_env(var_dir: Path, bootstrap_servers: str, topic_prefix: str, db_url: str | None) -> dict[str, str]:
    """The settings every service of the stack gets (`Stack` adds the internal API's token file, var/internal-api.token,
    and every instance's URL of the auditor and the deployer; each service its Kafka principal). ``db_url``: the
    database the services share (``--db postgresql``); None with a database per service (:func:`database_env`).
    docker-compose.yml gives its containers the same settings (tests/unit/test_compose_matches_tested.py)."""
    return {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": topic_prefix,
        **({} if db_url is None else {"CERTRAIL_DB_URL": db_url}),
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(var_dir / "auditor" / "checkpoint-signing-key.pem"),
        **stack_env(var_dir),
    }


def database_env(databases: dict[str, DatabaseSettings]) -> dict[str, dict[str, str]]:
    """Each service's own database, by service: ``CERTRAIL_<SERVICE>_DB_URL`` (``--db sqlite``: var/<service>.db)."""
    return {service: {service_db_url_env(service): settings.url} for service, settings in databases.items()}


#: the database the services shared before each had its own (decision 0017, "Storage")
LEGACY_SQLITE = "certrail.db"


def unsplit_database(var_dir: Path) -> Path | None:
    """``var/certrail.db`` of an earlier `certrail up` when no service has its own file yet: `certrail db split`
    first, or the stack would start on empty databases."""
    legacy = var_dir / LEGACY_SQLITE
    if legacy.is_file() and not any((var_dir / f"{service}.db").exists() for service in SERVICES):
        return legacy
    return None


def _kafka(var_dir: Path, cache_dir: Path, kafka_port: int, controller_port: int,
           brokers: int | None = None) -> LocalKafka | LocalKafkaCluster:
    """The single broker, or with ``brokers`` > 1 (or a cluster already in ``var/kafka``) a local KRaft cluster
    whose node i listens on ``kafka_port`` + 2(i-1) and ``controller_port`` + 2(i-1) (docs/scaling.md)."""
    data_dir = var_dir / "kafka"
    if brokers is None:
        stored = LocalKafkaCluster.load(data_dir, cache_dir)
        if stored is not None:
            return stored
        brokers = 1
    if brokers == 1:
        if (data_dir / LAYOUT_FILE).is_file():
            raise LocalKafkaError(f"{data_dir} holds a Kafka cluster: pass its --brokers or use another --var-dir")
        return LocalKafka(cache_dir=cache_dir, data_dir=data_dir, port=kafka_port, controller_port=controller_port)
    return LocalKafkaCluster(cache_dir=cache_dir, data_dir=data_dir, brokers=brokers,
                             ports=strided_ports(brokers, kafka_port, controller_port, None))


def _layout(var_dir: Path) -> dict[str, int]:
    path = var_dir / LAYOUT
    return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


async def _prepare_kafka(kafka: LocalKafka | LocalKafkaCluster, topic_prefix: str) -> str:
    """As the admin principal: certrail's ACLs, then its topics. Returns the topics' summary."""
    admin = kafka.client_settings(ADMIN, topic_prefix)
    topics = Topics(topic_prefix)
    await apply_acls(admin, acl_bindings(topics, service_groups_from(os.environ)), superseded_bindings(topics))
    report = await ensure_topics(admin, topics.fixed())
    return report.summary()


def up(
    detach: Annotated[bool, typer.Option("--detach", help="Return once everything is ready; `certrail down` stops it.")] = False,
    var_dir: VarDir = Path("var"),
    cache_dir: CacheDir = Path(".cache"),
    kafka_port: KafkaPort = 9092,
    kafka_controller_port: ControllerPort = 9093,
    gateway_port: Annotated[int, _port_option("gateway")] = DEFAULT_PORTS["gateway"],
    issuer_port: Annotated[int, _port_option("issuer")] = DEFAULT_PORTS["issuer"],
    deployer_port: Annotated[int, _port_option("deployer")] = DEFAULT_PORTS["deployer"],
    auditor_port: Annotated[int, _port_option("auditor")] = DEFAULT_PORTS["auditor"],
    sim_port: Annotated[int, typer.Option(envvar=f"{_ENV}SIM_PORT", help="emCA simulator API port (HTTPS).")] = DEFAULT_SIM_PORTS[0],
    sim_crl_port: Annotated[int, typer.Option(envvar=f"{_ENV}SIM_CRL_PORT", help="emCA simulator CRL port.")] = DEFAULT_SIM_PORTS[1],
    sim_admin_port: Annotated[int, typer.Option(envvar=f"{_ENV}SIM_ADMIN_PORT", help="emCA simulator admin port.")] = DEFAULT_SIM_PORTS[2],
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Put one demo certificate through issue -> deploy -> audit.")] = True,
    with_prometheus: Annotated[bool, typer.Option(
        "--with-prometheus/--without-prometheus", envvar=f"{_ENV}WITH_PROMETHEUS",
        help="Also start a real Prometheus (the prometheus binary; scripts/promtool.sh installs it) scraping the "
             "services, with certrail's alert rules.")] = False,
    prometheus_port: Annotated[int, typer.Option(envvar=f"{_ENV}PROMETHEUS_PORT", help="Prometheus's port.")] = PROMETHEUS_PORT,
    prometheus_scrape_interval: Annotated[float, typer.Option(
        envvar=f"{_ENV}PROMETHEUS_SCRAPE_INTERVAL", help="Prometheus's scrape and rule evaluation interval (seconds).")] = 15.0,
    prometheus_rules_dir: Annotated[Path, typer.Option(
        envvar=f"{_ENV}PROMETHEUS_RULES_DIR", help="The alert rule files (*.yml) Prometheus loads.")] = RULES_DIR,
    instances: Annotated[int, typer.Option(
        min=1, envvar=f"{_ENV}INSTANCES", help="Instances of each service, in one consumer group per service; "
        "instance i listens on its service's port + --port-step * (i-1).")] = 1,
    port_step: Annotated[int, typer.Option(
        min=1, envvar=f"{_ENV}PORT_STEP", help="With --instances: the port distance between instances.")] = INSTANCE_PORT_STEP,
    brokers: Annotated[int | None, typer.Option(
        min=1, envvar=f"{_ENV}KAFKA_BROKERS", help="Kafka brokers: 1 (a single broker) or a local KRaft cluster of this "
        "many nodes on --kafka-port + 2i / --kafka-controller-port + 2i (default: what var/kafka holds, else 1).")] = None,
    db: Annotated[DbKind, typer.Option(
        envvar=f"{_ENV}DB", help="sqlite: a file per service, var/<service>.db; postgresql: one database of the stack's "
        "own (certrail_<random>) with a schema per service, created on the server of --postgres-url, remembered in "
        "var/database.json.")] = DbKind.sqlite,
    postgres_url: Annotated[str, typer.Option(
        envvar=f"{_ENV}POSTGRES_URL", help="With --db postgresql: the server, as a URL whose role may CREATE DATABASE "
        "(default: scripts/postgres.sh's).", show_default=False)] = DEFAULT_POSTGRES_URL,
    https: Annotated[bool, typer.Option(
        "--https/--no-https", envvar=f"{_ENV}HTTPS", help="Also serve the gateway (and so the ACME door) over HTTPS, "
        "with a certificate for localhost / 127.0.0.1 that certrail issues itself (a bot-key profile and a file target "
        "under var/gateway-tls; renewed and redeployed like any other); clients trust var/gateway-tls-trust.pem.")] = False,
    gateway_https_port: Annotated[int, typer.Option(
        envvar=f"{_ENV}GATEWAY_HTTPS_PORT", help="With --https: the gateway's HTTPS port (of its first instance with "
        "--instances).")] = DEFAULT_GATEWAY_HTTPS_PORT,
) -> None:
    """Start the embedded stack: local Kafka, the emCA simulator, topics, SQLite, the four services;
    then a demo certificate goes through issue -> deploy -> audit."""
    console = Console()
    var_dir = var_dir.absolute()
    ports = {"gateway": gateway_port, "issuer": issuer_port, "deployer": deployer_port, "auditor": auditor_port}
    try:
        kafka = _kafka(var_dir, cache_dir, kafka_port, kafka_controller_port, brokers)
        urls = sqlite_urls(var_dir) if db is DbKind.sqlite else postgres_database(var_dir, postgres_url)
    except (LocalKafkaError, StackDatabaseError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    topic_prefix = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers).topic_prefix
    # sqlite: each service its own file (decision 0017); postgresql: one database for the stack, each service its own
    # schema in it; both passed to each service as CERTRAIL_<SERVICE>_DB_URL. A PostgreSQL database made before the
    # schemas stays shared by the services: CERTRAIL_DB_URL
    shared_url = next(iter(urls.values())) if len(set(urls.values())) == 1 else None
    databases = {service: DatabaseSettings(url=url) for service, url in urls.items()}
    env = services_env(var_dir, kafka.bootstrap_servers, topic_prefix, shared_url)
    try:  # each service its own Kafka principal (passwords created once with var/kafka)
        service_env = {name: kafka.client_env(name) for name in SERVICES}
    except LocalKafkaError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    legacy = unsplit_database(var_dir) if db is DbKind.sqlite else None
    if legacy is not None:
        split_env = " ".join(f"{service_db_url_env(s)}={url}" for s, url in urls.items())
        console.print(f"[red]error:[/] {legacy} is the database the services shared before each had its own; copy it "
                      f"into theirs first (it is left as it was):\n  {split_env} certrail db split --from sqlite:///{legacy}",
                      soft_wrap=True)
        raise typer.Exit(1)
    if shared_url is None:
        own = database_env(databases)
        service_env = {name: {**service_env[name], **own[name]} for name in SERVICES}
    deployed_tls = usable_gateway_tls(var_dir, datetime.now(UTC)) if https else None
    if deployed_tls is not None:  # issued by an earlier `certrail up --https`: served from the start
        service_env["gateway"] = {**service_env["gateway"], **gateway_tls_env(deployed_tls)}
    extras: list[PrometheusProcess] = []
    if with_prometheus:
        try:
            binary = find_binary()
        except PrometheusMissing as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        prometheus = prometheus_process(var_dir, host="127.0.0.1", port=prometheus_port,  # every instance of each service
                                        service_ports=instance_ports(ports, instances, port_step),
                                        rules_dir=prometheus_rules_dir.absolute(), scrape_interval_s=prometheus_scrape_interval)
        prometheus.binary = binary
        extras.append(prometheus)
    stack = Stack(var_dir=var_dir, ports=ports, env=env, sim_ports=(sim_port, sim_crl_port, sim_admin_port),
                  service_env=service_env, extras=extras, instances=instances, port_step=port_step,
                  gateway_https_port=gateway_https_port if https else None)
    kafka_timeout = 120.0 if isinstance(kafka, LocalKafka) else 60.0 * len(kafka.nodes)  # JVMs starting on a small machine
    running = stack.running_pids()
    if running and len(running) == len(stack.services):
        console.print(f"certrail is already running ({', '.join(f'{n} pid {p}' for n, p in running.items())}).")
        _print_endpoints(console, stack, kafka)
        if not detach:
            console.print("Use `certrail down` to stop it.")
        return
    if running and detach:
        # part of a detached run died: start what is missing (Kafka too, if it stopped)
        missing = [svc for svc in stack.services if svc.label not in running]
        if instances > _layout(var_dir).get("instances", 1):  # more instances than before: `certrail down` stops them all
            (var_dir / LAYOUT).write_text(json.dumps({"instances": instances, "port_step": port_step}) + "\n")
        try:
            kafka.start(wait_timeout=kafka_timeout)
            for svc in missing:
                svc.start()
            stack.wait_healthy(120)
        except (LocalKafkaError, StackError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
        console.print(f"[green]✓[/] restarted {', '.join(s.label for s in missing)}")
        return
    if instances > 1 or not isinstance(kafka, LocalKafka):  # for `certrail down` and `certrail up` again
        (var_dir / LAYOUT).parent.mkdir(parents=True, exist_ok=True)
        (var_dir / LAYOUT).write_text(json.dumps({"instances": instances, "port_step": port_step}) + "\n")
    else:
        (var_dir / LAYOUT).unlink(missing_ok=True)
    try:
        with console.status("Starting Apache Kafka (the first run fetches it with Maven) ...", spinner="dots"):
            status = kafka.start(wait_timeout=kafka_timeout)
        console.print(f"[green]✓[/] Kafka {'was already running' if status.already_running else 'started'} on {status.bootstrap_servers}")
        with console.status("Applying ACLs and creating topics ...", spinner="dots"):
            summary = asyncio.run(_prepare_kafka(kafka, topic_prefix))
        console.print(f"[green]✓[/] ACLs for {', '.join(SERVICES)} and requester; topics: {summary}")
        with console.status("Migrating the databases ...", spinner="dots"):
            migrated = upgrade_each(databases)
        for database in migrated:
            console.print(f"[green]✓[/] database {safe_url(database.settings.url)} ({', '.join(database.services)}) "
                          "at the latest schema")
        with console.status("Starting the emCA simulator, gateway, issuer, deployer, auditor ...", spinner="dots"):
            stack.start(timeout_s=120 * instances)
        console.print("[green]✓[/] emCA simulator and services healthy" + (", Prometheus ready" if extras else ""))
        if demo:
            _demo(console, stack, databases, var_dir)
        if https:
            _https(console, stack, databases, var_dir)
    except (LocalKafkaError, KafkaAclError, TopicAdminError, KafkaError, StackError, DemoError) as exc:
        stack.stop()
        kafka.stop()
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _print_endpoints(console, stack, kafka)
    if detach:
        console.print("Running in the background; `certrail down` stops it.")
        return
    console.print("Press Ctrl-C to stop.")
    try:
        while True:
            for name in stack.supervise_once():
                console.print(f"[yellow]restarted {name}[/] (it had exited; see {var_dir / 'log' / (name + '.log')})")
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("Stopping ...")
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        stack.stop()
        kafka.stop()
        console.print("Stopped.")


def down(
    var_dir: VarDir = Path("var"),
    cache_dir: CacheDir = Path(".cache"),
    kafka_port: KafkaPort = 9092,
    kafka_controller_port: ControllerPort = 9093,
    drop_db: Annotated[bool, typer.Option(
        "--drop-database", help="Also drop the PostgreSQL database `certrail up --db postgresql` made for this var dir.")] = False,
) -> None:
    """Stop everything `certrail up` started (harmless when nothing runs)."""
    var_dir = var_dir.absolute()
    layout = _layout(var_dir)
    # Prometheus too, whether or not `up` started it (found by its pid file, like the services)
    prometheus = prometheus_process(var_dir, host="127.0.0.1", port=PROMETHEUS_PORT, service_ports=DEFAULT_PORTS)
    stack = Stack(var_dir=var_dir, sim_ports=DEFAULT_SIM_PORTS, extras=[prometheus], instances=layout.get("instances", 1),
                  port_step=layout.get("port_step", INSTANCE_PORT_STEP))
    stopped = stack.stop()
    kafka_stopped = _kafka(var_dir, cache_dir, kafka_port, kafka_controller_port).stop()
    parts = [f"stopped {', '.join(stopped)}" if stopped else "no service was running"]
    parts.append("Kafka stopped" if kafka_stopped else "Kafka was not running")
    if drop_db:
        try:
            dropped = drop_database(var_dir)
        except StackDatabaseError as exc:
            typer.echo("; ".join(parts) + f"; error: {exc}", err=True)
            raise typer.Exit(1) from exc
        parts.append(f"database {dropped} dropped" if dropped else "no PostgreSQL database to drop")
    typer.echo("; ".join(parts) + ".")


@contextmanager
def _steps(console: Console, stage: str, first: str) -> Iterator[Callable[[str], None]]:
    """A spinner for ``stage`` showing its latest step; each step is also printed. Yields the step reporter."""
    with console.status(f"{stage}: {first}", spinner="dots") as status:
        def progress(text: str) -> None:
            status.update(f"{stage}: {text}")
            console.print(f"  [green]·[/] {text}")

        yield progress


@contextmanager
def _engines(databases: dict[str, DatabaseSettings], *services: str) -> Iterator[list[Engine]]:
    """An engine on each of ``services``' databases, disposed of at the end."""
    engines = [make_engine(databases[service]) for service in services]
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


def _demo(console: Console, stack: Stack, databases: dict[str, DatabaseSettings], var_dir: Path) -> None:
    gateway = next(s for s in stack.services if s.name == "gateway")
    sim = stack.sim
    assert sim is not None
    with _engines(databases, "gateway", "deployer") as (gateway_engine, deployer_engine), \
            _steps(console, "Demo", "issue -> deploy -> audit ...") as progress:
        result = run_demo(gateway_engine=gateway_engine, deployer_engine=deployer_engine, gateway_url=gateway.base_url,
                          var_dir=var_dir, sim_api_url=sim.base_url, progress=progress)
    console.print(f"[green]✓[/] demo certificate {result.certificate_id} serial {result.serial} deployed to {result.deployed_dir}")
    for path in result.files:
        console.print(f"    {path}")
    from services.auditor.trail import trail as build_trail

    engine = make_engine(databases["auditor"])
    try:
        with read_session(engine) as session:
            timeline = build_trail(session, result.certificate_id)
    finally:
        engine.dispose()
    table = Table(title=f"timeline of {result.certificate_id} (certrail audit trail)")
    for column in ("topic", "type", "details"):
        table.add_column(column, overflow="fold")
    for entry in timeline.entries:
        table.add_row(entry.topic, entry.event_type or "-", entry.summary[:120])
    console.print(table)
    console.print(f"API tokens for trying it: {var_dir / 'demo' / 'admin.token'} (admin), "
                  f"{var_dir / 'demo' / 'requester.token'} (requester); `certrail request --help`")


def gateway_tls_env(files: GatewayTls) -> dict[str, str]:
    """The gateway's settings of its HTTPS listener serving certrail's own deployed certificate."""
    return {"CERTRAIL_GATEWAY_TLS__CERT_FILE": str(files.cert_file), "CERTRAIL_GATEWAY_TLS__KEY_FILE": str(files.key_file)}


def _https(console: Console, stack: Stack, databases: dict[str, DatabaseSettings], var_dir: Path) -> None:
    """`certrail up --https`: unless the gateway serves HTTPS already (a certificate from an earlier run), certrail
    issues the gateway's certificate through its own pipeline and the gateway restarts serving it; then the ACME
    directory must answer over HTTPS, verified against the trust bundle."""
    [first, *_] = stack.instances_of("gateway")
    if first.https_url is None:
        sim = stack.sim
        assert sim is not None
        with _engines(databases, "gateway", "deployer") as (gateway_engine, deployer_engine), \
                _steps(console, "HTTPS", "certrail issues the gateway's own certificate ...") as progress:
            issued = issue_gateway_tls(gateway_engine=gateway_engine, deployer_engine=deployer_engine,
                                       gateway_url=first.base_url, var_dir=var_dir, sim_api_url=sim.base_url,
                                       progress=progress)
        with console.status("HTTPS: restarting the gateway with its certificate ...", spinner="dots"):
            stack.restart("gateway", gateway_tls_env(issued))
    files = usable_gateway_tls(var_dir, datetime.now(UTC))
    if files is None:
        raise StackError(f"the gateway's certificate is not deployed under {var_dir / 'gateway-tls'}")
    for gateway in stack.instances_of("gateway"):
        assert gateway.https_url is not None
        _wait_https(gateway.https_url + "/acme/directory", files.trust_bundle)
    console.print(f"[green]✓[/] gateway serving HTTPS with its certificate from certrail ({files.cert_file}); "
                  f"trust bundle {files.trust_bundle}", soft_wrap=True)


def _wait_https(url: str, bundle: Path, timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200 over TLS verified against ``bundle`` (the listener starts just after the
    HTTP port is healthy); StackError after ``timeout_s``."""
    trust = ssl.create_default_context(cafile=str(bundle))

    def problem() -> str | None:
        try:
            answer = httpx.get(url, timeout=5.0, verify=trust)
        except httpx.HTTPError as exc:
            return str(exc) or type(exc).__name__
        return None if answer.status_code == 200 else f"HTTP {answer.status_code}"

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.25),
                        retry=retry_if_result(lambda found: found is not None))
    try:
        retrying(problem)
    except RetryError as error:
        raise StackError(f"{url} does not answer over HTTPS verified against {bundle}: "
                         f"{error.last_attempt.result()}") from None


def _print_endpoints(console: Console, stack: Stack, kafka: LocalKafka | LocalKafkaCluster) -> None:
    table = Table(title="certrail endpoints")
    table.add_column("service")
    table.add_column("health")
    table.add_column("metrics")
    for svc in stack.services:
        if svc is stack.sim:
            table.add_row(svc.name, f"https://{svc.host}:{stack.sim.admin_port}/admin/health", f"API {svc.base_url}")
        elif isinstance(svc, PrometheusProcess):
            table.add_row(svc.name, f"{svc.base_url}/-/ready", f"UI and API {svc.base_url} (alerts: {svc.base_url}/alerts)")
        else:
            table.add_row(svc.label, f"{svc.base_url}/health", f"{svc.base_url}/metrics")
    bundle = usable_gateway_tls(stack.var_dir, datetime.now(UTC))
    for gateway in stack.instances_of("gateway"):
        console.print(f"HTTP API: {gateway.base_url}/v1 (OpenAPI: {gateway.base_url}/docs)")
        if gateway.https_url is not None and bundle is not None:
            console.print(f"HTTPS: {gateway.https_url} (the same API; its certificate from certrail, renewed in place)")
            console.print(f"ACME directory: {gateway.https_url}/acme/directory (HTTPS only; certbot, lego, "
                          "cert-manager: docs/acme.md)", soft_wrap=True)
            console.print(f"ACME trust bundle: {bundle.trust_bundle} (certbot: REQUESTS_CA_BUNDLE, lego: "
                          "LEGO_CA_CERTIFICATES)", soft_wrap=True)
        else:
            console.print(f"ACME directory: {gateway.base_url}/acme/directory (certbot, lego, cert-manager: docs/acme.md)")
    for svc in stack.services:
        if isinstance(svc, PrometheusProcess):
            console.print(f"Prometheus: {svc.base_url} (config {svc.config_file}, rules {svc.rules_dir})")
    console.print(table)
    console.print(f"Kafka: {kafka.bootstrap_servers} (SASL/SCRAM-SHA-512)   logs: {stack.var_dir / 'log'}/")
    if kafka.env_file("admin").is_file():
        console.print(f"Kafka credentials for the CLI tools: set -a; . {kafka.env_file('admin')}; set +a "
                      f"(an upstream producer's: {kafka.env_file('requester')})")
    console.print(f"Kafka tools (`certrail topics`, `certrail audit verify`, ...) as the admin principal: "
                  f"set -a; . {kafka.env_file(ADMIN)}; set +a")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)

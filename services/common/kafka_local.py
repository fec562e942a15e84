"""A local single-node Apache Kafka (KRaft) for development and tests.

The broker's classes are fetched once as Maven artifacts (``tools/kafka/pom.xml``)
into ``<cache_dir>/kafka/<version>/libs`` and run with the machine's Java 17+:

    kafka = LocalKafka(cache_dir=Path(".cache"), data_dir=Path("var/kafka"))
    kafka.fetch()
    kafka.start(wait_timeout=60)   # returns once the broker answers a metadata request
    ...
    kafka.stop()

Everything the broker writes lives in ``data_dir``: ``server.properties``,
``log4j2.xml``, ``kafka.pid``, ``kafka.out`` (the JVM's stdout/stderr),
``logs/server.log`` (the broker's log), ``kraft/`` (the log dirs, formatted once)
``principals.json`` (0600: the random SCRAM-SHA-512 password of each of certrail's
Kafka principals, see `services.common.kafka_acls`), ``admin.env`` and ``requester.env``
(0600: ``CERTRAIL_KAFKA_*`` lines for the CLI tools) and, for the optional SASL_SSL
listener, ``tls/`` (a throwaway CA and the server's PEM key store) and ``credentials.json``
(the one SASL user of an unauthenticated broker's SASL_SSL listener).

With ``authentication=True`` (the default, and what `certrail up` / `certrail kafka
start` run) the client listener is SASL_PLAINTEXT with SCRAM-SHA-512, the controller
listener SASL_PLAINTEXT with PLAIN (KRaft controllers do not take SCRAM), the
StandardAuthorizer denies whatever no ACL allows, and ``broker`` and ``admin`` are the
super users; no listener accepts an anonymous client. ``authentication=False`` (the
test session's shared broker) keeps a PLAINTEXT listener without an authorizer.

Nothing here reads settings from the environment: the caller passes every
value (the CLI and the test fixtures do the reading). The only environment
lookups are the ones a shell does to find programs: ``PATH`` for ``java`` and
``mvn``, and ``JAVA_HOME`` when no ``java_home`` is given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from services.common.kafka_acls import ADMIN, BROKER, REQUESTER, SCRAM_MECHANISM
from services.common.kafka_principals import (
    authentication_lines,
    client_env,
    client_settings,
    load_or_create_passwords,
    sasl_ssl_lines,
    scram_format_args,
    write_env_file,
    write_private,
)
from services.common.proc import pid_exists, port_free
from services.common.settings import KafkaSettings
from services.common.throwaway_tls import make_throwaway_tls

DEFAULT_KAFKA_VERSION = "4.1.1"
MIN_JAVA_MAJOR = 17
SASL_USERNAME = "certrail"
BROKER_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
#: the principals whose ``CERTRAIL_KAFKA_*`` settings are written to ``<data_dir>/<name>.env`` for the CLI
ENV_FILE_PRINCIPALS = (ADMIN, REQUESTER)

_POM_RELATIVE = Path("tools") / "kafka" / "pom.xml"
_MARKER_NAME = ".complete"


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    """The SASL user of the local broker's SASL_SSL listener (PLAIN and SCRAM-SHA-256)."""

    username: str
    password: SecretStr


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    """What `LocalKafka.status()` (and `start()`) report."""

    running: bool
    pid: int | None
    bootstrap_servers: str
    sasl_ssl_bootstrap_servers: str | None
    data_dir: Path
    log_file: Path
    listeners: tuple[str, ...] = ()  # the running broker's listeners, from its server.properties
    already_running: bool = False  # start() found a broker that was running before it
    authentication: bool = True  # SASL/SCRAM principals and ACLs (see the module docstring)


class LocalKafka:
    """One local Kafka node (``process.roles=broker,controller``): the single broker, or one
    node of a `services.common.kafka_cluster.LocalKafkaCluster`."""

    def __init__(
        self,
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        cache_dir: Path,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9092,
        controller_port: int = 9093,
        sasl_ssl_port: int | None = None,
        pom_path: Path | None = None,
        java_home: Path | None = None,
        heap_max: str = "1g",
        authentication: bool = True,
        node_id: int = 1,
        quorum_voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        broker_config: Mapping[str, str] | None = None,
        shared_dir: Path | None = None,
    ) -> None:
        """One node. The defaults make the single broker; a node of a cluster
        (`services.common.kafka_cluster`) also gets its ``node_id``, the ``quorum_voters``
        ({node id: controller port}, all on ``host``; None: a one-node ``--standalone`` quorum),
        the ``cluster_id`` to format with (None: a random one), ``broker_config`` lines that
        replace or add to the defaults, and the ``shared_dir`` where the secrets every node must
        share live (principals, SASL user, TLS material, env files; None: ``data_dir``)."""
        if not re.fullmatch(r"[0-9A-Za-z.\-]+", version):
            raise ValueError(f"invalid Kafka version {version!r}")
        ports = [p for p in (port, controller_port, sasl_ssl_port) if p is not None]
        if len(set(ports)) != len(ports):
            raise ValueError(f"the broker's ports must differ, got {ports}")
        if any(not 0 < p < 65536 for p in ports):
            raise ValueError(f"ports must be between 1 and 65535, got {ports}")
        self.version = version
        self.cache_dir = Path(cache_dir).absolute()
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.sasl_ssl_port = sasl_ssl_port
        self._pom_path = Path(pom_path).absolute() if pom_path is not None else None
        self._java_home = java_home
        self._heap_max = heap_max
        self.authentication = authentication
        if quorum_voters is not None and quorum_voters.get(node_id) != controller_port:
            raise ValueError(f"the quorum voters {dict(quorum_voters)} must name node {node_id} on its controller port")
        self.node_id = node_id
        self.quorum_voters = dict(quorum_voters) if quorum_voters is not None else None
        self.cluster_id = cluster_id
        self._broker_config = dict(broker_config or {})
        self.shared_dir = Path(shared_dir).absolute() if shared_dir is not None else self.data_dir
        self._java: str | None = None

    # ------------------------------------------------------------------ paths
    @property
    def version_dir(self) -> Path:
        return self.cache_dir / "kafka" / self.version

    @property
    def libs_dir(self) -> Path:
        return self.version_dir / "libs"

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def stdout_file(self) -> Path:
        return self.data_dir / "kafka.out"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def ssl_cafile(self) -> Path:
        """The CA certificate (PEM) that signed the SASL_SSL listener's certificate."""
        return self.shared_dir / "tls" / "ca.pem"

    @property
    def _keystore_file(self) -> Path:
        return self.shared_dir / "tls" / "server.pem"

    @property
    def _credentials_file(self) -> Path:
        return self.shared_dir / "credentials.json"

    @property
    def principals_file(self) -> Path:
        """The SCRAM-SHA-512 password of each principal (JSON, 0600), created with the data dir."""
        return self.shared_dir / "principals.json"

    @property
    def _principals_marker(self) -> Path:
        """Written once the storage was formatted with the principals' SCRAM users."""
        return self.data_dir / "principals.formatted"

    def env_file(self, principal: str) -> Path:
        """``CERTRAIL_KAFKA_*`` lines (0600) for a principal's CLI tools; written on start."""
        return self.shared_dir / f"{principal}.env"

    @property
    def bootstrap_servers(self) -> str:
        return _hostport(_advertised_host(self.host), self.port)

    @property
    def sasl_ssl_bootstrap_servers(self) -> str | None:
        if self.sasl_ssl_port is None:
            return None
        return _hostport(_advertised_host(self.host), self.sasl_ssl_port)

    def pom_path(self) -> Path:
        """The pom that lists the broker's artifacts: the override, else the repo's."""
        if self._pom_path is not None:
            return self._pom_path
        # services/common/kafka_local.py -> repo root (the package is installed editable)
        return Path(__file__).resolve().parents[2] / _POM_RELATIVE

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> Path:
        """Fetch the broker's jars with Maven once; return the libs directory."""
        if self.is_fetched():
            return self.libs_dir
        pom = self.pom_path()
        if not pom.is_file():
            raise LocalKafkaError(
                f"cannot find the Kafka pom at {pom}; pass pom_path= (CLI: --pom) "
                "pointing at tools/kafka/pom.xml of a certrail checkout"
            )
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "Maven ('mvn') is not on PATH; it is needed once to fetch the Kafka broker "
                f"{self.version} (install Maven, e.g. 'apt-get install maven')"
            )
        self.version_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.version_dir / ".fetch.lock"):
            if self.is_fetched():  # another process fetched it meanwhile
                return self.libs_dir
            partial = self.version_dir / "libs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            command = [
                mvn, "-B", "-q", "-f", str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
                f"-Dkafka.version={self.version}",
            ]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
            except subprocess.TimeoutExpired as exc:
                raise LocalKafkaError(f"Maven did not finish fetching Kafka {self.version} in 15 minutes") from exc
            if done.returncode != 0:
                output = _tail_text((done.stdout or "") + (done.stderr or ""), 40)
                raise LocalKafkaError(
                    f"Maven failed (exit {done.returncode}) to fetch Kafka {self.version}:\n{output}"
                )
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if f"kafka_2.13-{self.version}.jar" not in jars:
                raise LocalKafkaError(f"Maven ran but {partial} has no kafka_2.13-{self.version}.jar")
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            partial.rename(self.libs_dir)
            (self.version_dir / _MARKER_NAME).write_text("\n".join(jars) + "\n")
        return self.libs_dir

    def is_fetched(self) -> bool:
        """True when every jar of the last successful fetch is in the libs dir."""
        marker = self.version_dir / _MARKER_NAME
        if not marker.is_file():
            return False
        names = [n for n in marker.read_text().splitlines() if n]
        return bool(names) and all((self.libs_dir / n).is_file() for n in names)

    # ------------------------------------------------------------------ start
    def start(self, wait_timeout: float = 60.0) -> KafkaStatus:
        """Start the broker (fetching and formatting first if needed) and wait until it answers.

        Harmless when the broker already runs: then it only waits for it to answer
        and reports ``already_running=True``.
        """
        pid = self._running_pid()
        if pid is not None:
            self._check_same_listeners(pid)
            self._wait_ready(pid, time.monotonic() + wait_timeout)
            return self._status(pid, already_running=True)
        pid = self.launch()
        try:
            self._wait_ready(pid, time.monotonic() + wait_timeout)
        except BaseException:
            self._terminate(pid, timeout=10.0)
            self.pid_file.unlink(missing_ok=True)
            raise
        return self._status(pid)

    def launch(self) -> int:
        """Fetch, format and prepare as needed, then launch the JVM without waiting for it to
        answer (a cluster's nodes answer only once a quorum of them runs); return its pid."""
        self.pid_file.unlink(missing_ok=True)
        self._check_ports_free()
        java = self._find_java()
        self.fetch()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        credentials = self._ensure_credentials()
        self._check_formatted_with_principals()
        principals = self._ensure_principals()
        if self.sasl_ssl_port is not None:
            self._ensure_tls_material()
        self._write_log4j_config()
        self._write_server_properties(credentials, principals)
        self._format_storage_once(java, credentials, principals)
        if self.authentication:
            self._write_env_files()
        return self._launch(java).pid

    def wait_ready(self, pid: int, wait_timeout: float) -> KafkaStatus:
        """Wait until the node launched as ``pid`` answers a metadata request (see `launch`)."""
        self._wait_ready(pid, time.monotonic() + wait_timeout)
        return self._status(pid)

    def _launch(self, java: str) -> subprocess.Popen[bytes]:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        command = [
            java,
            "-Xms256m",
            f"-Xmx{self._heap_max}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            *self._log4j_jvm_args(),
            "-cp",
            str(self.libs_dir / "*"),
            BROKER_MAIN_CLASS,
            str(self.server_properties),
        ]
        with self.stdout_file.open("ab") as out:
            out.write(f"--- {dt.datetime.now(dt.UTC).isoformat()} starting Kafka {self.version}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
            )
        _CHILDREN[process.pid] = process
        self.pid_file.write_text(f"{process.pid}\n")
        return process

    def _log4j_jvm_args(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
        ]

    def _wait_ready(self, pid: int, deadline: float) -> None:
        """Poll until the broker answers a metadata request; raise if it dies or the deadline passes."""
        result: list[BaseException | None] = []

        def run() -> None:
            try:
                asyncio.run(self._await_ready(pid, deadline))
                result.append(None)
            except BaseException as exc:  # handed to the calling thread
                result.append(exc)

        # A thread of its own: works whether or not the caller runs an event loop.
        worker = threading.Thread(target=run, name="local-kafka-ready", daemon=True)
        worker.start()
        worker.join()
        if result and result[0] is not None:
            raise result[0]

    async def _await_ready(self, pid: int, deadline: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        last_error = "no answer yet"
        while True:
            if not self._is_alive(pid):
                raise LocalKafkaError(
                    f"the Kafka broker (pid {pid}) exited while starting; "
                    f"its log ({self.log_file}, {self.stdout_file}) ends with:\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocalKafkaError(
                    f"the Kafka broker (pid {pid}) did not answer on {self.bootstrap_servers} in time "
                    f"({last_error}); its log ends with:\n{self._log_tail()}"
                )
            if _accepts_tcp(_advertised_host(self.host), self.port):
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id="certrail-local-kafka-probe",
                    request_timeout_ms=int(max(1.0, min(remaining, 5.0)) * 1000),
                    **self._probe_security(),
                )
                try:
                    await admin.start()
                    cluster = await admin.describe_cluster()
                    if cluster.get("brokers"):
                        return
                    last_error = "metadata has no brokers yet"
                except Exception as exc:  # noqa: BLE001 - any failure here means "not ready yet"
                    last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    await admin.close()
            else:
                last_error = "port not accepting connections"
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ stop
    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker: SIGTERM, wait for a clean shutdown, SIGKILL as a last resort.

        Returns True when a running broker was stopped, False when none ran.
        """
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._wait_exit(pid, time.monotonic() + timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_exit(pid, time.monotonic() + 10.0):
            raise LocalKafkaError(f"the Kafka broker (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, deadline: float) -> bool:
        while self._is_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        _CHILDREN.pop(pid, None)
        return True

    # ------------------------------------------------------------------ status
    def status(self) -> KafkaStatus:
        return self._status(self._running_pid())

    def _status(self, pid: int | None, *, already_running: bool = False) -> KafkaStatus:
        running = _read_properties(self.server_properties) if pid else {}
        return KafkaStatus(
            running=pid is not None,
            pid=pid,
            bootstrap_servers=self.bootstrap_servers,
            sasl_ssl_bootstrap_servers=self.sasl_ssl_bootstrap_servers,
            data_dir=self.data_dir,
            log_file=self.log_file,
            listeners=tuple(running.get("listeners", "").split(",")) if pid else (),
            already_running=already_running,
            authentication="authorizer.class.name" in running if pid else self.authentication,
        )

    def principal_credentials(self, name: str) -> SaslCredentials:
        """One principal's SCRAM-SHA-512 user (the passwords are created with the data dir)."""
        principals = self._ensure_principals()
        if name not in principals:
            raise LocalKafkaError(f"no Kafka principal {name!r}; known: {', '.join(sorted(principals))}")
        return SaslCredentials(username=name, password=SecretStr(principals[name]))

    def client_settings(self, principal: str, topic_prefix: str = "certrail") -> KafkaSettings:
        """Client settings acting as ``principal`` on the client listener (every security field explicit)."""
        return client_settings(self.bootstrap_servers, principal, self._password(principal), topic_prefix)

    def client_env(self, principal: str) -> dict[str, str]:
        """The ``CERTRAIL_KAFKA_*`` environment of a client acting as ``principal`` on the client listener."""
        return client_env(self.bootstrap_servers, principal, self._password(principal))

    def _password(self, principal: str) -> str | None:
        if not self.authentication:
            return None
        return self.principal_credentials(principal).password.get_secret_value()

    def sasl_credentials(self) -> SaslCredentials:
        """The SASL user of the SASL_SSL listener (created with the data dir)."""
        return self._ensure_credentials()

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self._is_alive(pid) else None

    def _is_alive(self, pid: int) -> bool:
        """True while ``pid`` is this data dir's broker (not a zombie, not a reused pid)."""
        child = _CHILDREN.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: fall back to a signal probe
            return pid_exists(pid)
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):  # a zombie: reap it if it is ours
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
        return BROKER_MAIN_CLASS.encode() in cmdline and str(self.server_properties).encode() in cmdline

    # ------------------------------------------------------------------ config
    def _check_ports_free(self) -> None:
        for name, port in (
            ("port", self.port),
            ("controller port", self.controller_port),
            ("SASL_SSL port", self.sasl_ssl_port),
        ):
            if port is not None and not _port_free(self.host, port):
                raise LocalKafkaError(
                    f"cannot start Kafka: {self.host}:{port} (the {name}) is already in use "
                    "by another process; pick another port or stop that process"
                )

    def _check_same_listeners(self, pid: int) -> None:
        """A broker already runs from this data dir: it must be the one asked for."""
        running = _read_properties(self.server_properties).get("listeners", "")
        wanted = ",".join(self._listeners()[0])
        if running != wanted:
            raise LocalKafkaError(
                f"a Kafka broker (pid {pid}) already runs from {self.data_dir} with listeners "
                f"{running or '(unknown)'}, not {wanted}; stop it first to change them"
            )

    @property
    def _client_listener(self) -> str:
        return "SASL_PLAINTEXT" if self.authentication else "PLAINTEXT"

    def _listeners(self) -> tuple[list[str], list[str], list[str]]:
        """(listeners, advertised.listeners, listener.security.protocol.map) entries."""
        client = self._client_listener
        named = [(client, self.port), ("CONTROLLER", self.controller_port)]
        if self.sasl_ssl_port is not None:
            named.append(("SASL_SSL", self.sasl_ssl_port))
        adv = _advertised_host(self.host)
        listeners = [f"{name}://{_hostport(self.host, port)}" for name, port in named]
        advertised = [f"{name}://{_hostport(adv, port)}" for name, port in named]
        protocol_map = [f"{name}:{client if name == 'CONTROLLER' else name}" for name, _ in named]
        return listeners, advertised, protocol_map

    def _find_java(self) -> str:
        if self._java is None:
            self._java = find_java(self._java_home)
        return self._java

    def _write_server_properties(self, credentials: SaslCredentials, principals: dict[str, str]) -> None:
        listeners, advertised, protocol_map = self._listeners()
        adv = _advertised_host(self.host)
        lines = [
            "# Written by certrail (services/common/kafka_local.py) on every start; edits are overwritten.",
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            self._quorum_line(adv),
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={self._client_listener}",
            f"log.dirs={self.log_dirs}",
            "num.partitions=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            "auto.create.topics.enable=false",
            "delete.topic.enable=true",
            "num.network.threads=2",
            "num.io.threads=4",
            "background.threads=4",
            "num.recovery.threads.per.data.dir=1",
            "log.cleaner.threads=1",
            "log.cleaner.dedupe.buffer.size=16777216",
        ]
        if self.authentication:
            lines += authentication_lines(principals[BROKER])
        if self.sasl_ssl_port is not None and self.authentication:
            lines += sasl_ssl_lines(self._keystore_file)
        elif self.sasl_ssl_port is not None:
            user, password = credentials.username, credentials.password.get_secret_value()
            prefix = "listener.name.sasl_ssl."
            lines += [
                f"{prefix}ssl.keystore.type=PEM",
                f"{prefix}ssl.keystore.location={self._keystore_file}",
                f"{prefix}ssl.client.auth=none",
                f"{prefix}sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256",
                f"{prefix}plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
                f'required user_{user}="{password}";',
                f"{prefix}scram-sha-256.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ]
        lines += [
            f"listeners={','.join(listeners)}",
            f"advertised.listeners={','.join(advertised)}",
            f"listener.security.protocol.map={','.join(protocol_map)}",
        ]
        write_private(self.server_properties, "\n".join(_override(lines, self._broker_config)) + "\n")

    def _quorum_line(self, adv: str) -> str:
        if self.quorum_voters is None:
            return f"controller.quorum.bootstrap.servers={_hostport(adv, self.controller_port)}"
        voters = ",".join(f"{node}@{_hostport(adv, port)}" for node, port in sorted(self.quorum_voters.items()))
        return f"controller.quorum.voters={voters}"  # a static quorum: formatted without --standalone

    def _write_log4j_config(self) -> None:
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2_XML.format(log_file=self.log_file))

    def _format_storage_once(self, java: str, credentials: SaslCredentials, principals: dict[str, str]) -> None:
        if (self.log_dirs / "meta.properties").is_file():
            return
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        password = credentials.password.get_secret_value()
        # every principal is created with the storage, whatever the mode, so that a data dir
        # formatted for tests can later run authenticated (and vice versa)
        scram_users = scram_format_args(principals)
        command = [
            java,
            "-Xmx256m",
            *self._log4j_jvm_args(),
            "-cp",
            str(self.libs_dir / "*"),
            STORAGE_TOOL_CLASS,
            "format",
            *(["--standalone"] if self.quorum_voters is None else []),
            "-t",
            self.cluster_id or kafka_random_uuid(),
            "-c",
            str(self.server_properties),
            "--add-scram",
            f"SCRAM-SHA-256=[name={credentials.username},password={password}]",
            *scram_users,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            output = _tail_text((done.stdout or "") + (done.stderr or ""), 30)
            for secret in (password, *principals.values()):
                output = output.replace(secret, "***")
            raise LocalKafkaError(f"formatting the Kafka storage in {self.log_dirs} failed:\n{output}")
        self._principals_marker.write_text(" ".join(principals) + "\n")

    def _ensure_credentials(self) -> SaslCredentials:
        path = self._credentials_file
        if path.is_file():
            data = json.loads(path.read_text())
            return SaslCredentials(username=data["username"], password=SecretStr(data["password"]))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(18)
        write_private(path, json.dumps({"username": SASL_USERNAME, "password": password}) + "\n")
        return SaslCredentials(username=SASL_USERNAME, password=SecretStr(password))

    def _ensure_principals(self) -> dict[str, str]:
        """{principal: password}, created once per data dir (random, 0600)."""
        return load_or_create_passwords(self.principals_file)

    def _check_formatted_with_principals(self) -> None:
        """An authenticated start of storage formatted before certrail had principals cannot log in."""
        formatted = (self.log_dirs / "meta.properties").is_file()
        if self.authentication and formatted and not self._principals_marker.is_file():
            raise LocalKafkaError(
                f"the Kafka data in {self.data_dir} was formatted before certrail's Kafka principals existed, "
                "so the authenticated broker has no users: stop it and remove that directory "
                "(its topics are lost; the audit store keeps what it recorded) to start afresh"
            )

    def _write_env_files(self) -> None:
        for name in ENV_FILE_PRINCIPALS:
            write_env_file(self.env_file(name), name, self.client_env(name))

    def _probe_security(self) -> dict[str, str]:
        if not self.authentication:
            return {}
        admin = self.principal_credentials(ADMIN)
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": admin.username,
            "sasl_plain_password": admin.password.get_secret_value(),
        }

    def _ensure_tls_material(self) -> None:
        if self.ssl_cafile.is_file() and self._keystore_file.is_file():
            return
        self.ssl_cafile.parent.mkdir(parents=True, exist_ok=True)
        ca_pem, keystore_pem = make_throwaway_tls({"127.0.0.1", "::1", "localhost", self.host})
        write_private(self._keystore_file, keystore_pem)
        self.ssl_cafile.write_text(ca_pem)

    def _log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.stdout_file, self.log_file):
            if path.is_file():
                text = _tail_text(path.read_text(errors="replace"), lines)
                if text.strip():
                    parts.append(f"--- {path}\n{text}")
        return "\n".join(parts) or "(no log output)"


# ---------------------------------------------------------------------- helpers
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # brokers started by this process, to poll and reap


def reap_exited_brokers() -> list[int]:
    """Collect the exit status of brokers this process started that have exited since (stopped by another process,
    e.g. ``certrail down``), so that none stays a zombie; returns the pids of those still running."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]
    return sorted(_CHILDREN)


_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by certrail on every start of the local broker. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <RollingFile name="server" fileName="{log_file}" filePattern="{log_file}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""


def find_java(java_home: Path | None = None) -> str:
    """The `java` to run the broker with: ``java_home``, else $JAVA_HOME, else PATH; must be 17+."""
    home = java_home
    if home is None and os.environ.get("JAVA_HOME"):
        home = Path(os.environ["JAVA_HOME"])
    if home is not None:
        java = home / "bin" / "java"
        if not java.is_file():
            raise LocalKafkaError(f"no java at {java} (from JAVA_HOME / java_home)")
        candidate = str(java)
    else:
        found = shutil.which("java")
        if found is None:
            raise LocalKafkaError(
                f"Java {MIN_JAVA_MAJOR}+ is needed to run Kafka and 'java' is not on PATH "
                "(install e.g. openjdk-17-jre-headless or set JAVA_HOME)"
            )
        candidate = found
    major = java_major_version(candidate)
    if major < MIN_JAVA_MAJOR:
        raise LocalKafkaError(f"Kafka needs Java {MIN_JAVA_MAJOR}+, but {candidate} is Java {major}")
    return candidate


def java_major_version(java: str) -> int:
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    text = (done.stderr or "") + (done.stdout or "")
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        raise LocalKafkaError(f"cannot tell the version of {java}: {text.strip()[:200]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def kafka_random_uuid() -> str:
    """A cluster id like Kafka's ``Uuid.randomUuid()``: 16 random bytes, url-safe base64, no padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-") and text != "AAAAAAAAAAAAAAAAAAAAAA":
            return text


def _advertised_host(host: str) -> str:
    """The address clients connect to for a listen address (wildcards mean loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_free(host: str, port: int) -> bool:
    try:
        return port_free(host, port)
    except OSError as exc:
        raise LocalKafkaError(f"cannot listen on {host}:{port}: {exc}") from exc


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _read_properties(path: Path) -> dict[str, str]:
    """The key=value lines of a (simple, self-written) Java properties file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _override(lines: list[str], config: Mapping[str, str]) -> list[str]:
    """``key=value`` lines with the keys of ``config`` replaced (in place) or added (at the end)."""
    keys = [line.split("=", 1)[0] if "=" in line and not line.startswith("#") else "" for line in lines]
    out = [f"{key}={config[key]}" if key in config else line for key, line in zip(keys, lines, strict=True)]
    return out + [f"{key}={value}" for key, value in config.items() if key not in keys]


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

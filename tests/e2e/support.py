"""Drives a real embedded stack (`certrail up --detach` on free ports in a temporary var dir):
the HTTP API with the demo's tokens, the simulator's admin API, the services' processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from services.common.db_schema import owner_of
from services.common.kafka_cluster import LocalKafkaCluster
from services.common.kafka_local import reap_exited_brokers
from services.common.proc import port_free
from services.common.settings import DATABASE_OWNERS, SHARED_DB_URL_ENV, KafkaSettings, service_db_url_env
from services.common.stack_db import database_urls, stored_url
from tests.conftest import free_ports, wait_until

ROOT = Path(__file__).resolve().parents[2]
#: a SIGKILLed consumer keeps its partitions until its group's session timeout lapses (30 s by default): the fault
#: tests use 6 s, as the process-stack tests do, so that a kill costs seconds (docs/operations.md, "What happens on a
#: service instance's loss")
FAST_FAILOVER = {"CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000", "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000"}
PORT_NAMES = ["KAFKA", "KAFKA_CONTROLLER", "GATEWAY", "ISSUER", "DEPLOYER", "AUDITOR", "SIM", "SIM_CRL", "SIM_ADMIN"]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass
class EmbeddedStack:
    var_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True)))
    up_output: str = ""
    #: settings for every service of the stack (``certrail up`` passes its environment on)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "CERTRAIL_UP_VAR_DIR": str(self.var_dir), "CERTRAIL_UP_CACHE_DIR": str(ROOT / ".cache"),
               **{f"CERTRAIL_UP_{name}_PORT": str(port) for name, port in self.ports.items()}, **self.extra_env}
        for name in (SHARED_DB_URL_ENV, *map(service_db_url_env, DATABASE_OWNERS)):
            env.pop(name, None)
        return env

    def db_urls(self) -> dict[str, str]:
        """Each service's database: its SQLite file var/<service>.db, or the stack's PostgreSQL database (shared)."""
        return database_urls(self.var_dir)

    def db_file(self, table: str) -> Path:
        """The SQLite file that holds ``table``: its owner's (decision 0017)."""
        owner = owner_of(table)
        assert owner in DATABASE_OWNERS, f"{table} belongs to no one service"
        return self.var_dir / f"{owner}.db"

    def tool_env(self, principal: str = "admin") -> dict[str, str]:
        """For `certrail audit ...` and friends against this stack, as a Kafka principal (the CLI tools'
        ``admin`` by default; ``requester`` for an upstream producer), from ``var/kafka/<principal>.env``."""
        return {**self.env, **{service_db_url_env(service): url for service, url in self.db_urls().items()},
                **principal_env(self.var_dir, principal),
                "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(self.var_dir / "auditor" / "checkpoint-signing-key.pem")}

    def kafka_settings(self, principal: str) -> KafkaSettings:
        """Client settings of one of the stack's Kafka principals (gateway, issuer, ..., requester, admin)."""
        password = json.loads((self.var_dir / "kafka" / "principals.json").read_text())[principal]
        return KafkaSettings(bootstrap_servers=f"127.0.0.1:{self.ports['KAFKA']}", security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=principal, sasl_password=SecretStr(password))

    def up(self) -> None:
        result = cli(self.env, "up", "--detach")
        assert result.returncode == 0, result.stdout + result.stderr + self.logs()
        self.up_output += result.stdout

    def down(self) -> None:
        result = cli(self.env, "down")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_until(lambda: all(port_free("127.0.0.1", port) for port in self.ports.values()),
                   f"every port to be free after `certrail down`: {self.ports}", 30, interval_s=0.5)
        reap_exited_brokers()  # a broker a test restarted from this process, stopped by `certrail down`

    def logs(self, lines: int = 25) -> str:
        out = []
        for log in sorted((self.var_dir / "log").glob("*.log")) if (self.var_dir / "log").exists() else []:
            out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # -- the HTTP API ----------------------------------------------------------------------------------

    def api(self, role: str) -> httpx.Client:
        token = (self.var_dir / "demo" / f"{role}.token").read_text().strip()
        return httpx.Client(base_url=f"http://127.0.0.1:{self.ports['GATEWAY']}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def metrics(self, service: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.ports[service.upper()]}/metrics", timeout=10).text

    # -- the simulator -----------------------------------------------------------------------------------

    def sim_admin(self) -> httpx.Client:
        data = self.var_dir / "emca-sim"
        trust = ssl.create_default_context(cafile=str(data / "tls-ca.pem"))
        token = (data / "admin-token").read_text().strip()
        return httpx.Client(base_url=f"https://127.0.0.1:{self.ports['SIM_ADMIN']}", verify=trust, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})

    def sim_credentials(self, application: str = "certrail-v424") -> dict[str, Any]:
        return json.loads((self.var_dir / "emca-sim" / "applications" / application / "credentials.json").read_text())

    # -- processes ------------------------------------------------------------------------------------------

    def pid(self, service: str) -> int:
        return int((self.var_dir / "run" / f"{service}.pid").read_text())

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(service)
        os.kill(pid, sig)

        def dead() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            try:  # our grandchild: reap it if it is a zombie of ours (it is not: started in its own session)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False

        wait_until(dead, f"{service} pid {pid} to die", 30, interval_s=0.1)


def principal_env(var_dir: Path, principal: str) -> dict[str, str]:
    """The ``CERTRAIL_KAFKA_*`` lines `certrail up` wrote to ``var/kafka/<principal>.env`` (admin, requester)."""
    lines = (var_dir / "kafka" / f"{principal}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def wait_deployed(client: httpx.Client, certificate_id: str, *, not_serial: str | None = None,
                  timeout_s: float = 120) -> dict[str, Any]:
    """The inventory view once the certificate's current serial (other than ``not_serial``) is deployed."""
    view: dict[str, Any] = {}

    def deployed() -> dict[str, Any] | None:
        nonlocal view
        answer = client.get(f"/v1/certificates/{certificate_id}")
        view = answer.json() if answer.status_code == 200 else {}
        inventory: dict[str, Any] = view.get("inventory") or {}
        serial = inventory.get("serial")
        if serial and serial != not_serial and any(
                d["status"] == "deployed" and d["serial"] == serial for d in inventory.get("deployments", [])):
            return inventory
        return None

    found = wait_until(deployed, lambda: f"{certificate_id} to be deployed (last view: {view})", timeout_s, interval_s=0.5)
    assert isinstance(found, dict)
    return found


# --- a stack laid out by `certrail up`'s own options: instances, brokers, database -----------------------------------

#: ports relative to a free block: Kafka nodes at +0/+2/+4 (controllers +1/+3/+5), services +10.. (instance 2: +20..)
OFFSETS = {"KAFKA": 0, "KAFKA_CONTROLLER": 1, "GATEWAY": 10, "ISSUER": 11, "DEPLOYER": 12, "AUDITOR": 13,
           "SIM": 30, "SIM_CRL": 31, "SIM_ADMIN": 32}
POSTGRES_URL = os.environ.get("CERTRAIL_TEST_POSTGRES_URL", "postgresql+psycopg://certrail:certrail@127.0.0.1:5432/certrail")


def free_block(size: int = 40) -> int:
    """The first port of ``size`` consecutive ports nobody listens on."""
    for base in range(21000 + os.getpid() % 200 * 50, 60000, size):
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of ports")


@dataclass
class ScaleStack(EmbeddedStack):
    """`certrail up` with ``extra_env`` (``CERTRAIL_UP_INSTANCES``, ``CERTRAIL_UP_KAFKA_BROKERS``, ``CERTRAIL_UP_DB``, ...)
    on a block of ports (`in_block`): instance i of a service on its port + 10 (i - 1), Kafka node i on +2 (i - 1)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def in_block(cls, var_dir: Path, extra_env: dict[str, str]) -> ScaleStack:
        base = free_block()
        return cls(var_dir, ports={k: base + v for k, v in OFFSETS.items()}, extra_env=extra_env)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}

    def db_url(self, table: str) -> str:
        """The URL of ``table``'s owner's schema in the PostgreSQL database `certrail up --db postgresql` made."""
        assert stored_url(self.var_dir) is not None, f"{self.var_dir} holds no database of `certrail up --db postgresql`"
        owner = owner_of(table)
        assert owner in DATABASE_OWNERS, f"{table} belongs to no one service"
        return self.db_urls()[owner]

    def cluster(self) -> LocalKafkaCluster:
        cluster = LocalKafkaCluster.load(self.var_dir / "kafka", ROOT / ".cache")
        assert cluster is not None, f"{self.var_dir / 'kafka'} holds no Kafka cluster"
        return cluster

    def settings(self, principal: str) -> KafkaSettings:
        """Client settings of a Kafka principal: every node of a cluster, else the single broker."""
        if LocalKafkaCluster.load(self.var_dir / "kafka", ROOT / ".cache") is None:
            return self.kafka_settings(principal)
        return self.cluster().client_settings(principal)

    def port(self, service: str, instance: int) -> int:
        return self.ports[service.upper()] + 10 * (instance - 1)

    def instance_metrics(self, service: str, instance: int) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port(service, instance)}/metrics", timeout=10).text

    def down_and_drop(self) -> subprocess.CompletedProcess[str]:
        return cli(self.env, "down", "--drop-database")

    def pids(self, role: str) -> list[int]:
        """The running processes of a role: every instance of a service (``var/run/<name>[-<i>].pid``), the simulator
        (``emca-sim``), or ``kafka``: the single broker's or every cluster node's ``kafka.pid``."""
        if role == "kafka":
            files = [*(self.var_dir / "kafka").glob("kafka.pid"), *sorted((self.var_dir / "kafka").glob("node-*/kafka.pid"))]
        else:
            run = self.var_dir / "run"
            numbered = [f for f in run.glob(f"{role}-*.pid") if f.stem.removeprefix(f"{role}-").isdigit()]
            files = [*run.glob(f"{role}.pid"), *sorted(numbered, key=lambda f: int(f.stem.removeprefix(f"{role}-")))]
        return [int(f.read_text().strip()) for f in files]

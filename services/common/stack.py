"""The embedded stack: the four services as supervised child processes.

Used by `certrail up` / `certrail down`. Each service runs as
``python -m services.cli.main serve <service>`` with its settings in the
environment, its output in ``<var>/log/<service>.log`` and its pid in
``<var>/run/<service>.pid``, so that `down` (from another shell) finds it.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from services.common.internal_api import ensure_token_file
from services.common.proc import is_zombie, pid_exists, port_free

SERVICES = ("gateway", "issuer", "deployer", "auditor")
SIM = "emca-sim"
#: the simulator's API, CRL and admin ports in the embedded stack
DEFAULT_SIM_PORTS = (8443, 8444, 8445)
DEFAULT_PORTS = {"gateway": 8080, "issuer": 8081, "deployer": 8082, "auditor": 8083}
#: the services' internal API token (decision 0020), created once in the var dir
INTERNAL_TOKEN_FILE = "internal-api.token"
#: `certrail up --instances N`: instance i of a service listens on its port + 10 * (i - 1) (gateway 8080, 8090, ...)
INSTANCE_PORT_STEP = 10


def instance_ports(ports: Mapping[str, int], instances: int, port_step: int = INSTANCE_PORT_STEP) -> dict[str, list[int]]:
    """Each service's ports of its ``instances`` instances (instance i: its port + ``port_step`` * (i - 1)), e.g.
    for the scrape targets of `certrail up --with-prometheus --instances N`."""
    return {service: [port + port_step * i for i in range(instances)] for service, port in ports.items()}


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why."""


@dataclass
class ServiceProcess:
    name: str
    port: int
    host: str
    var_dir: Path
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    #: which of several instances of the service this is (1..N); None: the only one (`certrail up` without --instances)
    instance: int | None = None
    #: the gateway's HTTPS listener port (`certrail up --https`); served once ``env`` names its certificate files
    https_port: int | None = None

    @property
    def label(self) -> str:
        """The process's name in pid files, logs and messages: ``gateway``, or ``gateway-2`` of several instances."""
        return self.name if self.instance is None else f"{self.name}-{self.instance}"

    @property
    def pid_file(self) -> Path:
        return self.var_dir / "run" / f"{self.label}.pid"

    @property
    def log_file(self) -> Path:
        return self.var_dir / "log" / f"{self.label}.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str | None:
        """The HTTPS listener's URL when it is served (its port set and its certificate files configured)."""
        serving = self.https_port is not None and f"CERTRAIL_{self.name.upper()}_TLS__CERT_FILE" in self.env
        return f"https://{self.host}:{self.https_port}" if serving else None

    def start(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        prefix = f"CERTRAIL_{self.name.upper()}_"
        env = {**os.environ, **self.env, f"{prefix}HTTP_HOST": self.host, f"{prefix}HTTP_PORT": str(self.port)}
        if self.https_port is not None:
            env[f"{prefix}TLS__PORT"] = str(self.https_port)
        if env.get("CERTRAIL_INTERNAL_TOKEN_FILE") and not env.get("CERTRAIL_INTERNAL_TOKEN"):
            ensure_token_file(Path(env["CERTRAIL_INTERNAL_TOKEN_FILE"]))  # 0600; kept when it exists
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "services.cli.main", "serve", self.name]

    def ports(self) -> list[int]:
        return [self.port] if self.https_port is None else [self.port, self.https_port]

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class SimProcess(ServiceProcess):
    """The emCA simulator (`certrail emca-sim serve`), data in ``var/emca-sim``; healthy when its
    admin API answers over HTTPS, verified against the trust bundle it writes."""

    crl_port: int = 8444
    admin_port: int = 8445

    @property
    def data_dir(self) -> Path:
        return self.var_dir / "emca-sim"

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def ports(self) -> list[int]:
        return [self.port, self.crl_port, self.admin_port]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "services.cli.main", "emca-sim", "serve", "--data-dir", str(self.data_dir),
                "--host", self.host, "--port", str(self.port), "--crl-port", str(self.crl_port),
                "--admin-port", str(self.admin_port)]

    def healthy(self) -> bool:
        trust = self.data_dir / "tls-ca.pem"
        if not trust.exists():
            return False
        try:
            context = ssl.create_default_context(cafile=str(trust))
            return httpx.get(f"https://{self.host}:{self.admin_port}/admin/health", timeout=2.0, verify=context).status_code == 200
        except (httpx.HTTPError, ssl.SSLError, OSError):
            return False


@dataclass
class Stack:
    var_dir: Path
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    env: Mapping[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)
    #: (api, crl, admin) ports of the emCA simulator the stack starts first; None: no simulator
    sim_ports: tuple[int, int, int] | None = None
    #: one service's own environment on top of ``env`` (e.g. its Kafka principal's credentials)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: more supervised processes started after the services (`certrail up --with-prometheus`: Prometheus)
    extras: Sequence[ServiceProcess] = ()
    #: instances of each service (`certrail up --instances N`): instance i of a service listens on its port
    #: + ``port_step`` * (i - 1), in the same consumer group; with 1 the processes are named as before (``gateway``)
    instances: int = 1
    port_step: int = INSTANCE_PORT_STEP
    #: the gateway's HTTPS port (`certrail up --https`; instance i: + ``port_step`` * (i - 1)); None: HTTP only
    gateway_https_port: int | None = None

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise StackError(f"instances must be at least 1, got {self.instances}")
        # the services' internal API (decision 0020): one token in the var dir; the gateway finds every instance of the
        # auditor and the deployer, and asks the next when one gives no answer (decision 0031)
        self.env = {"CERTRAIL_INTERNAL_TOKEN_FILE": str(self.var_dir / INTERNAL_TOKEN_FILE),
                    "CERTRAIL_GATEWAY_AUDITOR_URL": ",".join(self.instance_urls("auditor")),
                    "CERTRAIL_GATEWAY_DEPLOYER_URL": ",".join(self.instance_urls("deployer")),
                    # possible duplicates (decision 0032): any issuer instance answers (they share the issuer's state)
                    "CERTRAIL_GATEWAY_ISSUER_URL": ",".join(self.instance_urls("issuer")), **self.env}
        numbers: list[int | None] = [None] if self.instances == 1 else list(range(1, self.instances + 1))
        self.services = [ServiceProcess(n, self.ports[n] + self.port_step * ((i or 1) - 1), self.host, self.var_dir,
                                        {**self.env, **self.service_env.get(n, {})}, instance=i,
                                        https_port=self._https_port(n, i))
                         for i in numbers for n in SERVICES]
        if self.sim_ports is not None:
            api, crl, admin = self.sim_ports
            self.services.insert(0, SimProcess(SIM, api, self.host, self.var_dir, self.env, crl_port=crl, admin_port=admin))
        self.services.extend(self.extras)

    def _https_port(self, service: str, instance: int | None) -> int | None:
        if service != "gateway" or self.gateway_https_port is None:
            return None
        return self.gateway_https_port + self.port_step * ((instance or 1) - 1)

    def restart(self, service: str, env: Mapping[str, str], timeout_s: float = 90.0) -> None:
        """Restart every instance of ``service`` with ``env`` added to its environment (`certrail up --https`: the
        gateway with its certificate files), one at a time, each healthy before the next."""
        for svc in self.instances_of(service):
            pid = _read_pid(svc.pid_file)
            if pid is not None and _alive(pid):
                _terminate(pid, 20.0)
            if svc.process is not None:
                svc.process.poll()
            svc.env = {**svc.env, **env}
            svc.start()
            self.wait_healthy(timeout_s)

    def instance_ports(self, service: str) -> list[int]:
        """The health/metrics ports of every instance of ``service``, instance 1 first."""
        return instance_ports(self.ports, self.instances, self.port_step)[service]

    def instance_urls(self, service: str) -> list[str]:
        return [f"http://{self.host}:{port}" for port in self.instance_ports(service)]

    @property
    def sim(self) -> SimProcess | None:
        return next((s for s in self.services if isinstance(s, SimProcess)), None)

    def running_pids(self) -> dict[str, int]:
        """Services recorded in pid files whose process is still alive, by label (``gateway``, ``gateway-2``)."""
        alive = {}
        for svc in self.services:
            pid = _read_pid(svc.pid_file)
            if pid is not None and _alive(pid):
                alive[svc.label] = pid
        return alive

    def instances_of(self, service: str) -> list[ServiceProcess]:
        return [s for s in self.services if s.name == service]

    def check_ports(self) -> None:
        busy = [f"{s.label} port {port}" for s in self.services for port in s.ports() if not port_free(self.host, port)]
        if busy:
            raise StackError(
                f"port(s) already in use on {self.host}: {', '.join(busy)}; "
                "stop what holds them or choose others (e.g. --gateway-port, CERTRAIL_UP_GATEWAY_PORT)"
            )

    def start(self, timeout_s: float = 90.0) -> None:
        self.check_ports()
        sim = self.sim
        if sim is not None:  # first: the services do not need it to start, but the demo does
            sim.start()
        for svc in self.services:
            if svc is not sim:
                svc.start()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll every service's /health until each answers healthy; StackError at once when one exits, or after
        ``timeout_s`` naming those still pending."""
        pending = list(self.services)

        def still_pending() -> list[ServiceProcess]:
            for svc in list(pending):
                code = svc.exited()
                if code is not None:
                    raise StackError(f"{svc.label} exited with status {code} while starting:\n{tail(svc.log_file)}")
                if svc.healthy():
                    pending.remove(svc)
            return pending

        retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.25),
                            retry=retry_if_result(bool), reraise=True)
        try:
            retrying(still_pending)
        except RetryError:
            names = ", ".join(s.label for s in pending)
            raise StackError(f"not healthy after {timeout_s:.0f}s: {names}\n{tail(pending[0].log_file)}") from None

    def supervise_once(self, max_restarts: int = 5) -> list[str]:
        """Restart services that died; returns what was restarted."""
        restarted = []
        for svc in self.services:
            if svc.process is not None and svc.exited() is not None:
                if svc.restarts >= max_restarts:
                    raise StackError(f"{svc.label} keeps exiting (restarted {svc.restarts} times):\n{tail(svc.log_file)}")
                svc.restarts += 1
                svc.start()
                restarted.append(svc.label)
        return restarted

    def stop(self, timeout_s: float = 20.0) -> list[str]:
        """Stop every service recorded in a pid file (ours or a detached run's)."""
        stopped = []
        for svc in self.services:
            pid = _read_pid(svc.pid_file)
            if pid is not None and _alive(pid):
                _terminate(pid, timeout_s)
                stopped.append(svc.label)
            if svc.process is not None:
                svc.process.poll()
            svc.pid_file.unlink(missing_ok=True)
        return stopped


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if not pid_exists(pid):
        return False
    # a zombie counts as gone: reaped here when it is a child of ours, else left to its parent (a service whose
    # `certrail up --detach` has exited is an orphan; the init it was re-parented to may reap it late)
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return not is_zombie(pid)


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

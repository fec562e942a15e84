"""The simulator's servers: the emCA API (HTTPS), the admin API (HTTPS) and CRLs/AIA (plain HTTP).

Three uvicorn servers share one asyncio loop in one process (HTTP/1.1 parsed by httptools, a
dependency for this: uvicorn's "auto" picks it; h11 otherwise):

- the emCA API on ``port``: the routes of every dialect module in
  ``emca_sim.dialects`` (``routes(backend)``), behind `FaultMiddleware`
  (and `FaultyBackend`, for the ``foreign_key`` fault); the port faults apply to;
- the admin API on ``admin_port`` (see `emca_sim.admin`), same TLS certificate;
- CRLs and CA certificates on ``crl_port``: ``/crl/<slug>.crl`` (DER,
  application/pkix-crl) and ``/ca/<slug>.crt`` (DER, application/pkix-cert);
  only the ``crl`` fault applies here (`CrlFaultMiddleware`).

The listening sockets are bound before anything starts, so port 0 works and
the CRL URL put into certificates carries the real port. `serve` runs until
SIGINT/SIGTERM; `SimServer` is the same thing to embed (tests: `start_in_thread`).

Requests are handled on the loop, CA work included: signing is CPU-bound and `cryptography` holds the GIL
in ``CertificateBuilder.sign`` and CSR verification, so a thread pool would add hand-offs without
adding parallelism (measured: docs/benchmarks.md, "emCA simulator issuance rate").
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from emca_sim.admin import create_admin_app
from emca_sim.backend import SimBackend
from emca_sim.ca import write_file
from emca_sim.config import SimConfig, load_config
from emca_sim.faults import CrlFaultMiddleware, FaultController, FaultMiddleware, FaultyBackend
from emca_sim.state import SimEmca

log = logging.getLogger("emca_sim")

DIALECT_MODULES = ("emca_sim.dialects.v4_0_17", "emca_sim.dialects.v4_2")
DEFAULT_PORT, DEFAULT_CRL_PORT, DEFAULT_ADMIN_PORT = 8443, 8444, 8445
#: a TOML configuration file for `serve` when none is given (docs/emca-simulator.md)
CONFIG_ENV = "CERTRAIL_EMCA_SIM_CONFIG"


def dialect_routes(backend: SimBackend, modules: tuple[str, ...] = DIALECT_MODULES) -> list[BaseRoute]:
    """The routes of every dialect module that exists and has ``routes``; the others are skipped with a log line."""
    found: list[BaseRoute] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            log.warning("dialect module %s not found: its API is not served", name)
            continue
        make = getattr(module, "routes", None)
        if make is None:
            log.warning("dialect module %s has no routes(backend): its API is not served", name)
            continue
        found.extend(make(backend))
    return found


def read_admin_token(data_dir: Path) -> str:
    """``DIR/admin-token`` (mode 0600), created at first use."""
    path = data_dir / "admin-token"
    if not path.exists():
        write_file(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
    return path.read_text().strip()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # the protocol set, asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "localhost"):
        return "127.0.0.1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `SimServer` (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class UvicornListener:
    """`emca_sim.faults.Listener` over a uvicorn server: closes and reopens its listening socket."""

    def __init__(self, server: uvicorn.Server, host: str, port: int) -> None:
        self.server, self.host, self.port = server, host, port

    async def close(self) -> None:
        for listening in self.server.servers:
            listening.close()
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:  # reset, not a graceful close
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        server, config = self.server, self.server.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=loop)

        sock = _bind(self.host, self.port)
        server.servers = [await loop.create_server(protocol, sock=sock, ssl=config.ssl, backlog=config.backlog)]

    def connection_count(self) -> int:
        return len(self.server.server_state.connections)


def create_crl_app(backend: SimEmca) -> Starlette:
    async def crl(request: Request) -> Response:
        der = await run_in_threadpool(backend.crl_der_by_slug, request.path_params["slug"])
        if der is None:
            return PlainTextResponse("no such CRL\n", status_code=404)
        return Response(der, media_type="application/pkix-crl")

    async def ca_certificate(request: Request) -> Response:
        der = backend.ca_certificate_der_by_slug(request.path_params["slug"])
        if der is None:
            return PlainTextResponse("no such CA\n", status_code=404)
        return Response(der, media_type="application/pkix-cert")

    return Starlette(routes=[Route("/crl/{slug}.crl", crl, methods=["GET", "HEAD"]),
                             Route("/ca/{slug}.crt", ca_certificate, methods=["GET", "HEAD"])])


def _tls_factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class Endpoints:
    api_url: str
    admin_url: str
    crl_base_url: str  # where this process serves CRLs (the public base URL may point elsewhere)
    public_base_url: str


class SimServer:
    """The simulator: backend + three servers. ``await run()`` until `stop` (or a signal with `serve`)."""

    def __init__(self, data_dir: Path | str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 crl_port: int = DEFAULT_CRL_PORT, admin_port: int = DEFAULT_ADMIN_PORT, config: SimConfig | None = None,
                 public_base_url: str | None = None, log_level: str = "info", configure_logging: bool = True,
                 access_log: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or SimConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self._sockets: dict[str, socket.socket] = {}
        try:
            for name, number in (("api", port), ("admin", admin_port), ("crl", crl_port)):
                self._sockets[name] = _bind(host, number)
            ports = {name: sock.getsockname()[1] for name, sock in self._sockets.items()}
            url_host = _url_host(host)
            public = (public_base_url or self.config.public_base_url or f"http://{url_host}:{ports['crl']}").rstrip("/")
            self.endpoints = Endpoints(api_url=f"https://{url_host}:{ports['api']}",
                                       admin_url=f"https://{url_host}:{ports['admin']}",
                                       crl_base_url=f"http://{url_host}:{ports['crl']}", public_base_url=public)
            self.backend = SimEmca(self.data_dir, self.config, public_base_url=public)
        except BaseException:
            self._close_sockets()
            raise
        try:
            self.admin_token = read_admin_token(self.data_dir)
            self.faults = FaultController(None, self.backend)
            uvicorn_options: dict[str, Any] = {"host": host, "lifespan": "off", "ws": "none", "log_level": log_level,
                                               "access_log": access_log, "timeout_graceful_shutdown": 2}
            if not configure_logging:
                uvicorn_options["log_config"] = None
            tls = {"ssl_certfile": str(self.backend.hierarchy.tls_certificate_path),
                   "ssl_keyfile": str(self.backend.hierarchy.tls_key_path), "ssl_context_factory": _tls_factory}
            api_app = FaultMiddleware(Starlette(routes=dialect_routes(FaultyBackend(self.backend, self.faults))),
                                      self.faults)
            admin_app = create_admin_app(self.backend, self.faults, self.admin_token)
            self._servers = {
                "api": _Server(uvicorn.Config(api_app, port=ports["api"], **tls, **uvicorn_options)),
                "admin": _Server(uvicorn.Config(admin_app, port=ports["admin"], **tls, **uvicorn_options)),
                "crl": _Server(uvicorn.Config(CrlFaultMiddleware(create_crl_app(self.backend), self.faults),
                                              port=ports["crl"], **uvicorn_options)),
            }
            self.faults.listener = UvicornListener(self._servers["api"], host, ports["api"])
        except BaseException:
            self._close_sockets()
            self.backend.close()
            raise

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            sock.close()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(server.serve(sockets=[self._sockets[name]]), name=f"emca-sim-{name}")
                 for name, server in self._servers.items()]
        try:
            while not all(server.started for server in self._servers.values()):
                done = [t for t in tasks if t.done()]
                if done:  # a server failed to start
                    self.stop()
                    await done[0]
                    raise RuntimeError("a simulator server stopped during startup")
                await asyncio.sleep(0.02)
            self._write_server_json()
            log.info("emCA simulator: API %s, admin %s, CRLs %s (public base %s), data in %s", self.endpoints.api_url,
                     self.endpoints.admin_url, self.endpoints.crl_base_url, self.endpoints.public_base_url, self.data_dir)
            self.started.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.faults.aclose()
            await run_in_threadpool(self.backend.close)

    def stop(self) -> None:
        """Ask every server to finish (thread-safe); a flapping schedule stops first so nothing reopens."""
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        else:
            for server in self._servers.values():
                server.should_exit = True

    async def _shutdown(self) -> None:
        await self.faults.aclose()
        for server in self._servers.values():
            server.should_exit = True

    def _write_server_json(self) -> None:
        document = {"api_url": self.endpoints.api_url, "admin_url": self.endpoints.admin_url,
                    "crl_base_url": self.endpoints.crl_base_url, "public_base_url": self.endpoints.public_base_url,
                    "tls_ca": str(self.data_dir / "tls-ca.pem"), "ca_chain": str(self.data_dir / "ca-chain.pem"),
                    "pid": os.getpid()}
        write_file(self.data_dir / "server.json", (json.dumps(document, indent=2) + "\n").encode())


@contextlib.contextmanager
def start_in_thread(data_dir: Path | str, *, startup_timeout: float = 30.0, **options: Any) -> Iterator[SimServer]:
    """Run a `SimServer` in a background thread (its own loop) for the duration of the block."""
    options.setdefault("configure_logging", False)
    server = SimServer(data_dir, **options)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(server.run())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=main, name="emca-sim", daemon=True)
    thread.start()
    if not server.started.wait(startup_timeout) or failure:
        server.stop()
        thread.join(10)
        raise RuntimeError(f"the emCA simulator did not start: {failure[:1]}")
    try:
        yield server
    finally:
        server.stop()
        thread.join(30)
        if failure:
            raise failure[0]


def serve(data_dir: Path | str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, crl_port: int = DEFAULT_CRL_PORT,
          config_path: Path | str | None = None, public_base_url: str | None = None, *,
          admin_port: int = DEFAULT_ADMIN_PORT, log_level: str = "info", access_log: bool = False) -> None:
    """Run the simulator in the foreground until SIGINT or SIGTERM. Without ``config_path``, the TOML file named by
    CERTRAIL_EMCA_SIM_CONFIG, if set (how `certrail up` hands the simulator it starts a configuration)."""
    config_path = config_path or os.environ.get(CONFIG_ENV) or None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = SimServer(data_dir, host=host, port=port, crl_port=crl_port, admin_port=admin_port,
                       config=load_config(config_path), public_base_url=public_base_url, log_level=log_level,
                       access_log=access_log)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.stop)
        await server.run()

    asyncio.run(main())

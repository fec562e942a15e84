"""Runs a service's ASGI app with uvicorn (the only place a server is started): its plain HTTP port, and with
``tls`` settings an HTTPS listener beside it serving the same app (services/common/tls_listener.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Generator
from types import FrameType

import uvicorn
from faststream.asgi import AsgiFastStream

from services.common.service_app import ServiceSettings
from services.common.tls_listener import ServingCertificate, TlsFileError, TlsListenerSettings

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``. httpx logs every request it sends at INFO (an emCA call, a deploy target's):
    a client-side access log, which, like uvicorn's (off), shows only at DEBUG; its warnings and errors show."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("httpx").setLevel(logging.NOTSET if debug else logging.WARNING)


def freeze_startup_objects() -> None:
    """Take what was built before serving (modules, classes, the app with its models, schemas and prebuilt
    statements: nearly every long-lived object) out of the cyclic garbage collector's sight (`gc.freeze`), after a
    collection of what is garbage already. Full collections under load then walk only what was made since; they
    had been about half of the 4% of each service's CPU that its garbage collector took (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


def run_service(app: AsgiFastStream, settings: ServiceSettings, tls: TlsListenerSettings | None = None) -> None:
    """Serve ``app`` on the service's HTTP port until SIGINT/SIGTERM; with ``tls`` enabled, also over HTTPS on its
    port. A TLS file that cannot be used, or a port that cannot be bound, stops the start (exit status 1) before
    the app starts."""
    configure_logging(settings.log_level)
    freeze_startup_objects()
    if tls is None or not tls.enabled:
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level=settings.log_level.lower(),
                    access_log=False, lifespan="on")
        return
    try:
        https = https_server(app, settings, tls)
    except TlsFileError as error:
        raise SystemExit(f"cannot start the HTTPS listener: {error}") from None
    http = _MainServer(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                      log_level=settings.log_level.lower(), access_log=False, lifespan="on"))
    asyncio.run(serve_beside(http, https, https.config.bind_socket()))


class BesideServer(uvicorn.Server):
    """A server run beside the main one: the main server owns the signals and the app's lifespan."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _MainServer(uvicorn.Server):
    beside: uvicorn.Server | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.beside is not None:  # stop accepting HTTPS as soon as HTTP
            self.beside.should_exit = True
        super().handle_exit(sig, frame)


def https_server(app: AsgiFastStream, settings: ServiceSettings, tls: TlsListenerSettings) -> BesideServer:
    """The HTTPS listener of ``app`` (no lifespan: the HTTP server runs it), its certificate from ``tls``'s files
    (read now: `TlsFileError` when they cannot be used; read again when they change)."""
    assert tls.cert_file is not None and tls.key_file is not None
    certificate = ServingCertificate(tls.cert_file, tls.key_file)
    config = uvicorn.Config(app, host=tls.host or settings.http_host, port=tls.port,
                            log_level=settings.log_level.lower(), access_log=False, lifespan="off",
                            ssl_context_factory=lambda _config, _default: certificate.listening)
    log.info("HTTPS listener on %s:%d with %s", config.host, config.port, tls.cert_file)
    return BesideServer(config)


async def serve_beside(main: uvicorn.Server, beside: uvicorn.Server, sock: socket.socket) -> None:
    """Serve ``main``, and once it has started (the app's lifespan done), ``beside`` on ``sock`` (bound already)
    until ``main`` stops."""
    if isinstance(main, _MainServer):
        main.beside = beside
    serving = asyncio.create_task(main.serve())
    while not main.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():  # the start failed; nothing to serve beside
        sock.close()
        await serving
        return
    besides = asyncio.create_task(beside.serve(sockets=[sock]))
    try:
        await serving
    finally:
        beside.should_exit = True
        await besides

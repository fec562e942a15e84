"""Runs a service's ASGI app with uvicorn (the only place a server is started)."""

from __future__ import annotations

import logging

import uvicorn
from faststream.asgi import AsgiFastStream

from services.common.service_app import ServiceSettings


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``. httpx logs every request it sends at INFO (an emCA call, a deploy target's):
    a client-side access log, which, like uvicorn's (off), shows only at DEBUG; its warnings and errors show."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("httpx").setLevel(logging.NOTSET if debug else logging.WARNING)


def run_service(app: AsgiFastStream, settings: ServiceSettings) -> None:
    configure_logging(settings.log_level)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )

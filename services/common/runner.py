"""Runs a service's ASGI app with uvicorn (the only place a server is started)."""

from __future__ import annotations

import logging

import uvicorn
from faststream.asgi import AsgiFastStream

from services.common.service_app import ServiceSettings


def run_service(app: AsgiFastStream, settings: ServiceSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )

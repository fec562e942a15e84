"""The web console (``/console``): server-rendered pages over the ``/v1`` API. See docs/console.md."""

from services.gateway.console.routes import console_router

__all__ = ["console_router"]

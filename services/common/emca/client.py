"""The real emCA client: `connect(endpoint)` gives the `EmcaConnection` of the endpoint's version.

    async with open_connection(endpoint, HttpOptions.for_concurrency(8)) as emca:
        outcome = await emca.submit_csr(csr_pem=..., profile_name=..., subscriber_id=..., application_id=issuance_id)

One connection per connector: it owns an httpx pool (TLS verified against the
connector's CA bundle) and, on V4.2.4+, the token cache. Dialect details live in
``client_v4_0_17.py`` and ``client_v4_2.py``; the wire formats in ``dialects/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import httpx

from services.common.emca.client_v4_0_17 import V4017Connection
from services.common.emca.client_v4_2 import V42Connection
from services.common.emca.types import EmcaConnection, EmcaEndpoint, EmcaVersion, HttpOptions

__all__ = ["ConnectionFactory", "connect", "open_connection"]

ConnectionFactory = Callable[[EmcaEndpoint], EmcaConnection]
"""What the connector registry validates with: ``connect`` (real) or a fake's ``connect``."""


def connect(
    endpoint: EmcaEndpoint,
    options: HttpOptions | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] | None = None,
) -> EmcaConnection:
    """A connection to ``endpoint`` (close it with ``aclose``). Raises ConnectorFaultError when the
    uploaded PFX or AES key cannot be used, ValueError when a secret the version needs is missing."""
    if not endpoint.base_url.lower().startswith("https://"):
        raise ValueError("the emCA base URL must be https://")
    options = options or HttpOptions()
    version = EmcaVersion(endpoint.version)
    if version is EmcaVersion.V4_0_17:
        return V4017Connection(endpoint, options, transport=transport, clock=clock)
    return V42Connection(endpoint, options, transport=transport, clock=clock)


@asynccontextmanager
async def open_connection(endpoint: EmcaEndpoint, options: HttpOptions | None = None) -> AsyncIterator[EmcaConnection]:
    connection = connect(endpoint, options)
    try:
        yield connection
    finally:
        await connection.aclose()

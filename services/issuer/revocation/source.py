"""Where revocation confirmation gets a connector's CRLs, certificates and pin: `CrlSource`, the real one
through the issuer's connector pool (`PoolCrlSource`) and a fake for unit tests (`FakeCrlSource`).

The real source reads a distribution point with the connector's own HTTP client (`EmcaConnection.get_crl`):
TLS is always verified (against the connector's CA bundle, else the system's trust) when the URL is https, the
answer is bounded in size, and a failure is an `EmcaError` of the usual kinds. Reading a CRL is no emCA API
call: it takes no concurrency slot and a failure never opens the connector's circuit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common.emca.types import EmcaError, RequestPermanentError, TransientError
from services.issuer.connectors import ConnectorPool, UnknownConnector


@dataclass(frozen=True)
class Pin:
    chain_pem: tuple[str, ...]  # the issuing CA first
    sha256: str


class CrlSource(Protocol):
    async def pin(self, connector: str) -> Pin | None:
        """The connector's pinned issuing CA; None: no such connector."""
        ...

    async def fetch(self, connector: str, url: str) -> bytes:
        """The DER CRL at ``url``; raises `EmcaError` (transient or connector fault) when it cannot be read."""
        ...

    async def certificate_pem(self, connector: str, serial: str) -> str | None:
        """The issued certificate from emCA (when the issuer has no record of it); None: emCA has none."""
        ...


class PoolCrlSource:
    def __init__(self, pool: ConnectorPool) -> None:
        self._pool = pool

    async def pin(self, connector: str) -> Pin | None:
        try:
            runtime = await self._pool.get(connector)
        except UnknownConnector:
            return None
        if runtime.connector is None:
            return None
        return Pin(runtime.connector.pinned_chain_pem, runtime.connector.pinned_ca_sha256)

    async def fetch(self, connector: str, url: str) -> bytes:
        try:
            runtime = await self._pool.get(connector)
        except UnknownConnector:
            raise TransientError(f"no connector named {connector!r}", unsent=True) from None
        connection, current = runtime.connection, runtime.connector
        if connection is None or current is None:
            raise TransientError(f"connector {connector} has no connection ({runtime.status.value})", unsent=True)
        return await connection.get_crl(current.issuing_ca, distribution_point=url)

    async def certificate_pem(self, connector: str, serial: str) -> str | None:
        try:
            runtime = await self._pool.get(connector)
        except UnknownConnector:
            return None
        async with runtime.slot() as connection:
            try:
                return (await connection.get_certificate(serial)).certificate_pem
            except RequestPermanentError:  # not found, or refused: emCA gives no certificate for it
                return None


@dataclass
class FakeCrlSource:
    """For unit tests: CRLs by URL (bytes, or an `EmcaError` to raise), certificates by serial, one pin."""

    pin_value: Pin | None
    crls: dict[str, bytes | EmcaError] = field(default_factory=dict)
    certificates: dict[str, str] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    on_fetch: Callable[[str], None] | None = None

    async def pin(self, connector: str) -> Pin | None:  # noqa: ARG002 - one pin for every connector
        return self.pin_value

    async def fetch(self, connector: str, url: str) -> bytes:  # noqa: ARG002
        self.fetched.append(url)
        if self.on_fetch is not None:
            self.on_fetch(url)
        found = self.crls.get(url)
        if found is None:
            raise TransientError(f"{url} unreachable", detail="unreachable")
        if isinstance(found, EmcaError):
            raise found
        return found

    async def certificate_pem(self, connector: str, serial: str) -> str | None:  # noqa: ARG002
        return self.certificates.get(serial)

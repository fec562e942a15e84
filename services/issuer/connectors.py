"""Each connector as the issuer runs it: its emCA connection, its circuit and its status.

- **Usable** (an `asyncio.Event`): the connector is enabled, configured and its circuit is not
  open. Commands wait on it before calling emCA; the consumer loop pauses the partitions of a
  connector that is not usable, so nothing past the waiting command is fetched or committed.
- **Transient failure** (connect error, timeout, 5xx, 429): the circuit opens and a probe task
  calls ``check_connection`` with capped exponential backoff and jitter (tenacity), never
  sooner than emCA's Retry-After. When a probe answers, the circuit closes and the queued
  commands drain through the connector's concurrency slots and its rate limit (aiolimiter).
- **Connector fault** (credentials, keys, signature, TLS trust, subscriber): the connector is
  marked misconfigured in the registry; only an operator's fix (a new revision, or enabling
  it again) makes it usable: the refresh loop sees the change and reconnects.

Every status change is published as ConnectorStatusChanged and shown in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from services.common.connectors.models import Connector, ConnectorError
from services.common.connectors.models import ConnectorStatus as RegistryStatus
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import ConnectorStatus
from services.common.contracts.fields import ErrorInfo
from services.common.emca.client import connect
from services.common.emca.types import (
    ConnectorFaultError,
    EmcaConnection,
    EmcaEndpoint,
    EmcaError,
    EmcaVersion,
    HttpOptions,
    TransientError,
    first_line,
)
from services.issuer.metrics import IssuerMetrics
from services.issuer.registry.registry import ConnectorRegistry

log = logging.getLogger(__name__)

#: dialects whose emCA returns the existing certificate for a repeated applicationId (DESIGN.md)
DEDUPING_VERSIONS = frozenset({EmcaVersion.V4_0_17})


class CircuitState:
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class RuntimeSettings:
    probe_initial_s: float = 1.0
    probe_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    registry_poll_s: float = 5.0
    #: calls per second per connector: how fast a backlog drains after an outage
    rate_per_s: float = 500.0


StatusListener = Callable[[str, ConnectorStatus, ConnectorStatus | None, ErrorInfo | None], Awaitable[None]]
Connect = Callable[[EmcaEndpoint, HttpOptions], EmcaConnection]


def _default_connect(endpoint: EmcaEndpoint, options: HttpOptions) -> EmcaConnection:
    return connect(endpoint, options)


class ConnectorRuntime:
    def __init__(self, name: str, pool: ConnectorPool) -> None:
        self.name = name
        self._pool = pool
        self.connector: Connector | None = None
        self.connection: EmcaConnection | None = None
        self.status = ConnectorStatus.UP
        self.status_changes = 0  # counts status changes: a registry read taken before one is stale
        self.circuit = CircuitState.CLOSED
        self.usable = asyncio.Event()
        self.semaphore = asyncio.Semaphore(1)
        self.limiter = AsyncLimiter(pool.settings.rate_per_s, 1.0)
        self._probe: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def dedupes(self) -> bool:
        return self.connector is not None and self.connector.version in DEDUPING_VERSIONS

    @property
    def version(self) -> EmcaVersion | None:
        return self.connector.version if self.connector is not None else None

    # -- waiting and calling ---------------------------------------------------------------------

    async def wait_usable(self, timeout: float | None = None) -> bool:
        if self.usable.is_set():
            return True
        try:
            await asyncio.wait_for(self.usable.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[EmcaConnection]:
        """One of the connector's concurrency slots, within its rate limit."""
        async with self.semaphore:
            async with self.limiter:
                connection = self.connection
                if connection is None:
                    raise TransientError(f"connector {self.name} has no connection", unsent=True)
                yield connection

    # -- loading and status ------------------------------------------------------------------------

    async def load(self, connector: Connector) -> None:
        """(Re)connect with the connector's current revision and adopt its registry status."""
        async with self._lock:
            old = self.connection
            self.connection = None
            self.connector = connector
            self.semaphore = asyncio.Semaphore(max(1, connector.concurrency))
            if old is not None:
                await _close_quietly(old)
            if connector.status is RegistryStatus.ENABLED:
                try:
                    _, endpoint = await asyncio.to_thread(self._pool.registry.endpoint, self.name)
                except ConnectorError as exc:
                    await self._set_status(ConnectorStatus.MISCONFIGURED, ErrorInfo(code=ErrorCode.CA_DECRYPTION_FAILED,
                                                                                      message=first_line(str(exc))))
                    return
                self.connection = self._pool.connect(endpoint, HttpOptions.for_concurrency(connector.concurrency))
                self._cancel_probe()
                self.circuit = CircuitState.CLOSED
                self._pool.metrics.circuit(self.name, self.circuit)
                await self._set_status(ConnectorStatus.UP, None)
            elif connector.status is RegistryStatus.DISABLED:
                await self._set_status(ConnectorStatus.DISABLED, None)
            else:
                reason = connector.status_reason or "marked misconfigured"
                await self._set_status(ConnectorStatus.MISCONFIGURED,
                                       ErrorInfo(code=_code_of(reason), message=first_line(reason, 500)))

    async def _set_status(self, status: ConnectorStatus, error: ErrorInfo | None) -> None:
        previous = self.status
        self.status = status
        if previous is not status:
            self.status_changes += 1
        if status is ConnectorStatus.UP and self.circuit == CircuitState.CLOSED and self.connection is not None:
            self.usable.set()
        else:
            self.usable.clear()
        self._pool.metrics.connector_status(self.name, status.value)
        if previous is not status:
            log.warning("connector %s: %s -> %s%s", self.name, previous.value, status.value,
                        f" ({error.code}: {error.message})" if error else "")
            await self._pool.notify(self.name, status, previous, error)

    # -- failures ----------------------------------------------------------------------------------

    async def transient(self, error: TransientError, connection: EmcaConnection | None) -> None:
        """A call failed transiently: open the circuit (once) and start probing."""
        self._pool.metrics.emca_error(self.name, error)
        if connection is None or connection is not self.connection or self.circuit == CircuitState.OPEN:
            return
        self.circuit = CircuitState.OPEN
        self._pool.metrics.circuit(self.name, self.circuit)
        await self._set_status(ConnectorStatus.DOWN, ErrorInfo(code=error.code, message=first_line(error.message, 500)))
        self._probe = asyncio.create_task(self._probe_until_up(connection, error), name=f"probe-{self.name}")

    async def fault(self, error: ConnectorFaultError, connection: EmcaConnection | None) -> None:
        """A connector fault: misconfigured in the registry; requests stay queued until an operator fixes it."""
        self._pool.metrics.emca_error(self.name, error)
        if connection is None or connection is not self.connection or self.status is ConnectorStatus.MISCONFIGURED:
            return
        self._cancel_probe()
        try:
            await asyncio.to_thread(self._pool.registry.mark_misconfigured, self.name, error.code, error.message)
        except Exception:  # noqa: BLE001 - the status below still stops the calls; the next refresh retries the write
            log.exception("could not mark connector %s misconfigured in the registry", self.name)
        await self._set_status(ConnectorStatus.MISCONFIGURED, ErrorInfo(code=error.code, message=first_line(error.message, 500)))

    def _wait(self) -> Callable[[RetryCallState], float]:
        settings = self._pool.settings
        exponential = wait_exponential_jitter(multiplier=settings.probe_initial_s, max=settings.probe_max_s,
                                              jitter=settings.probe_initial_s)

        def wait(state: RetryCallState) -> float:
            delay = exponential(state)
            error = state.outcome.exception() if state.outcome is not None else None
            retry_after = getattr(error, "retry_after", None)
            if retry_after:
                delay = max(delay, min(float(retry_after), settings.retry_after_max_s))
            return delay

        return wait

    async def _probe_until_up(self, connection: EmcaConnection, first: TransientError) -> None:
        settings = self._pool.settings
        initial = settings.probe_initial_s
        if first.retry_after:
            initial = max(initial, min(first.retry_after, settings.retry_after_max_s))
        await asyncio.sleep(initial)
        retrying = AsyncRetrying(wait=self._wait(), retry=retry_if_exception_type(TransientError), reraise=True,
                                 before_sleep=lambda state: self._pool.metrics.probes.labels(self.name, "failed").inc())
        try:
            async for attempt in retrying:
                with attempt:
                    started = asyncio.get_running_loop().time()
                    await connection.check_connection()
                    self._pool.metrics.emca_duration.labels(self.name, "check_connection").observe(
                        asyncio.get_running_loop().time() - started)
        except ConnectorFaultError as exc:
            self._probe = None
            await self.fault(exc, connection)
            return
        except EmcaError as exc:  # request-permanent on a probe: emCA answers, so it is up
            log.info("connector %s probe answered %s; treating it as up", self.name, exc.code)
        self._pool.metrics.probes.labels(self.name, "up").inc()
        self._probe = None
        if connection is self.connection:
            self.circuit = CircuitState.CLOSED
            self._pool.metrics.circuit(self.name, self.circuit)
            await self._set_status(ConnectorStatus.UP, None)

    def _cancel_probe(self) -> None:
        if self._probe is not None and self._probe is not asyncio.current_task():
            self._probe.cancel()
        self._probe = None

    async def close(self) -> None:
        self._cancel_probe()
        if self.connection is not None:
            await _close_quietly(self.connection)
            self.connection = None


async def _close_quietly(connection: EmcaConnection) -> None:
    try:
        await connection.aclose()
    except Exception:  # noqa: BLE001 - closing an old connection must not stop the issuer
        log.debug("closing an emCA connection failed", exc_info=True)


def _code_of(reason: str) -> ErrorCode:
    head = reason.split(":", 1)[0].strip()
    try:
        return ErrorCode(head)
    except ValueError:
        return ErrorCode.CA_PROTOCOL_ERROR


class UnknownConnector(LookupError):
    pass


class ConnectorPool:
    """The issuer's connectors, loaded lazily from the registry and refreshed periodically."""

    def __init__(
        self,
        registry: ConnectorRegistry,
        metrics: IssuerMetrics,
        settings: RuntimeSettings,
        on_status: StatusListener,
        *,
        connect: Connect = _default_connect,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.connect = connect
        self._on_status = on_status
        self._runtimes: dict[str, ConnectorRuntime] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def notify(self, name: str, status: ConnectorStatus, previous: ConnectorStatus | None, error: ErrorInfo | None) -> None:
        try:
            await self._on_status(name, status, previous, error)
        except Exception:  # noqa: BLE001 - the status is in the metrics and the log either way
            log.exception("publishing the status of connector %s failed", name)

    def runtimes(self) -> list[ConnectorRuntime]:
        return list(self._runtimes.values())

    def known(self, name: str) -> ConnectorRuntime | None:
        return self._runtimes.get(name)

    async def get(self, name: str) -> ConnectorRuntime:
        runtime = self._runtimes.get(name)
        if runtime is not None:
            return runtime
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            runtime = self._runtimes.get(name)
            if runtime is not None:
                return runtime
            try:
                connector = await asyncio.to_thread(self.registry.get, name)
            except ConnectorError as exc:
                if exc.code is ErrorCode.CONNECTOR_NOT_FOUND:
                    raise UnknownConnector(name) from None
                raise
            runtime = ConnectorRuntime(name, self)
            # labelled counters exist at 0 from the start, so alerts can use increase() on them
            self.metrics.possible_duplicates.labels(name)
            self.metrics.certificate_mismatches.labels(name)
            await runtime.load(connector)
            self._runtimes[name] = runtime
            return runtime

    async def refresh(self) -> None:
        """Adopt registry changes: a new revision (an operator's fix) reconnects; status changes apply."""
        for runtime in list(self._runtimes.values()):
            changes = runtime.status_changes
            try:
                connector = await asyncio.to_thread(self.registry.get, runtime.name)
            except ConnectorError:
                continue  # deleted: its commands wait (nothing is failed because a connector vanished)
            except Exception:  # noqa: BLE001 - database trouble: try again at the next refresh
                log.warning("reading connector %s failed", runtime.name, exc_info=True)
                continue
            if runtime.status_changes != changes:
                # The runtime changed status while the registry was read (a fault marks the connector
                # misconfigured there and here): this read may predate that, and acting on it would undo it.
                continue  # the next refresh reads again
            current = runtime.connector
            changed = (
                current is None
                or connector.revision != current.revision
                or connector.status is not current.status
                or (connector.status is RegistryStatus.ENABLED and runtime.status is ConnectorStatus.MISCONFIGURED)
            )
            if changed:
                log.info("connector %s changed in the registry (revision %s, %s); reloading",
                         runtime.name, connector.revision, connector.status.value)
                await runtime.load(connector)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            await self.refresh()

    async def close(self) -> None:
        for runtime in self._runtimes.values():
            await runtime.close()

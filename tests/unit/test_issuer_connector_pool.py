"""The issuer's connector pool against the real registry (SQLite) and the fake emCA: status changes and refreshes."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from tenacity import Future, RetryCallState

from services.common.connectors.models import Connector
from services.common.connectors.secretbox import generate_key
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import ConnectorStatus
from services.common.contracts.fields import ErrorInfo
from services.common.emca.fake import FakeEmca
from services.common.emca.types import ConnectorFaultError, EmcaVersion, TransientError
from services.issuer.connectors import ConnectorPool, RuntimeSettings
from services.issuer.metrics import IssuerMetrics
from tests.unit.test_connector_registry import make_registry
from tests.unit.test_connector_validation import spec_for


async def test_a_registry_read_taken_before_a_fault_does_not_undo_it(engine: Engine) -> None:
    """A refresh reads the registry in a thread while a call's fault marks the connector misconfigured. The read
    (still "enabled") predates the fault, so the refresh must not take it for an operator's fix and reconnect:
    that flapped the status (misconfigured, up, misconfigured) and sent more calls with the rotated credentials."""
    emca = FakeEmca()
    registry = make_registry(engine, emca, generate_key())
    await registry.create(spec_for(emca, EmcaVersion.V4_2_4))
    changes: list[tuple[ConnectorStatus | None, ConnectorStatus]] = []

    async def on_status(name: str, status: ConnectorStatus, previous: ConnectorStatus | None,
                        error: ErrorInfo | None) -> None:
        changes.append((previous, status))

    pool = ConnectorPool(registry, IssuerMetrics(CollectorRegistry()), RuntimeSettings(), on_status, connect=emca.connect)
    runtime = await pool.get("c1")
    assert runtime.status is ConnectorStatus.UP and changes == []

    stale = registry.get("c1")  # what the registry says before the fault: enabled
    reading, answer = threading.Event(), threading.Event()

    def slow_get(name: str) -> Connector:
        reading.set()
        assert answer.wait(10)
        return stale

    registry.get = slow_get  # type: ignore[method-assign]
    refresh = asyncio.create_task(pool.refresh())
    assert await asyncio.to_thread(reading.wait, 10)  # the refresh is reading
    await runtime.fault(ConnectorFaultError(ErrorCode.CA_AUTH_FAILED, "emCA: Invalid credentials"), runtime.connection)
    answer.set()
    await refresh
    assert runtime.status is ConnectorStatus.MISCONFIGURED
    assert changes == [(ConnectorStatus.UP, ConnectorStatus.MISCONFIGURED)]  # once, not undone

    del registry.get  # the next refresh reads the registry itself: misconfigured there too, nothing changes
    await pool.refresh()
    assert runtime.status is ConnectorStatus.MISCONFIGURED and len(changes) == 1


async def test_probes_back_off_from_the_initial_delay_to_the_cap_and_honour_retry_after(engine: Engine) -> None:
    """While the circuit is open, the delay between probes doubles from ``probe_initial_s`` up to ``probe_max_s``
    (plus up to ``probe_initial_s`` of jitter), and is never shorter than emCA's Retry-After (capped)."""
    emca = FakeEmca()
    registry = make_registry(engine, emca, generate_key())
    await registry.create(spec_for(emca, EmcaVersion.V4_2_4))

    async def on_status(name: str, status: ConnectorStatus, previous: ConnectorStatus | None,
                        error: ErrorInfo | None) -> None:
        return None

    settings = RuntimeSettings(probe_initial_s=0.5, probe_max_s=8.0, retry_after_max_s=60.0)
    pool = ConnectorPool(registry, IssuerMetrics(CollectorRegistry()), settings, on_status, connect=emca.connect)
    wait = (await pool.get("c1"))._wait()

    def delay(attempt: int, error: TransientError) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        outcome: Future = Future(attempt)
        outcome.set_exception(error)
        state.outcome = outcome
        return wait(state)

    down = TransientError("connection refused", unsent=True)
    for attempt, base in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)):
        assert base <= delay(attempt, down) <= min(base + 0.5, 8.0)
    assert delay(1, TransientError("slow down", http_status=429, retry_after=30)) == 30.0
    assert delay(1, TransientError("slow down", http_status=429, retry_after=3600)) == 60.0  # capped

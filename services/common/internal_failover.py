"""Calls to a service that runs as several instances (decision 0031; the internal API itself: 0020).

A caller's setting lists the instances' base URLs, comma-separated (``CERTRAIL_GATEWAY_AUDITOR_URL=
http://auditor-1:8083,http://auditor-2:8083``, as ``CERTRAIL_KAFKA_BOOTSTRAP_SERVERS`` lists brokers):
`base_urls`. `FailoverClient` holds one pooled httpx client per instance and sends a call to the instance
that answered last; when that one gives no answer, the same call goes to the next, each instance at most
once per call (tenacity: one attempt per instance, no wait, since the next attempt is another process,
not a later moment). `fails_over` says when: a connection never made (refused, connect or pool timeout)
for every method; for a read (GET, HEAD) also a timeout or a broken connection after sending, and any
5xx; for a write also 502/503/504 (nothing was done), never a 500 or a timeout after sending (it may have
been done: the caller reports the failure rather than repeat a change). When every instance fails, the
last failure is the caller's: the httpx error raised, or the last 5xx answer returned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

log = logging.getLogger(__name__)

#: methods that may be sent again after an instance may have received them
READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: answers of a write that say it was not done (a proxy's or a service's refusal before acting)
NOT_DONE = frozenset({502, 503, 504})
#: errors raised before a request left this process
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def base_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The base URLs in ``value`` (comma-separated, or a sequence of such), without trailing slashes."""
    items = [value] if isinstance(value, str) else list(value)
    urls = tuple(url.strip().rstrip("/") for item in items for url in item.split(",") if url.strip())
    if not urls:
        raise ValueError("no base URL given")
    return urls


def fails_over(method: str, *, error: httpx.HTTPError | None = None, status: int | None = None) -> bool:
    """Whether a call that got ``error`` (or an answer with ``status``) from one instance goes to the next."""
    read = method.upper() in READS
    if error is not None:
        return isinstance(error, NOT_SENT) or (read and isinstance(error, httpx.TransportError))
    if status is None or status < 500:
        return False
    return read or status in NOT_DONE


class _NextInstance(Exception):
    """This instance gave no answer worth passing on (``error`` or the 5xx ``response``)."""

    def __init__(self, error: httpx.HTTPError | None, response: httpx.Response | None) -> None:
        super().__init__("next instance")
        self.error = error
        self.response = response


class FailoverClient:
    """Requests to one service's instances at ``urls``; httpx clients are made at the first call (inside the
    running event loop) and closed by `aclose`. ``transport`` (tests) serves every instance."""

    def __init__(self, urls: Sequence[str], *, headers: Mapping[str, str], timeout_s: float, max_connections: int,
                 transport: httpx.AsyncBaseTransport | None = None, service: str = "service") -> None:
        self.base_urls = base_urls(urls)
        self.service = service
        self._headers = dict(headers)
        self._timeout = httpx.Timeout(timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._current = 0  # the instance that answered last

    @property
    def current_url(self) -> str:
        return self.base_urls[self._current]

    def _http(self, index: int) -> httpx.AsyncClient:
        client = self._clients.get(index)
        if client is None:
            client = httpx.AsyncClient(base_url=self.base_urls[index], headers=self._headers, timeout=self._timeout,
                                       limits=self._limits, transport=self._transport,  # verify=True (https)
                                       follow_redirects=False)
            self._clients[index] = client
        return client

    async def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The answer of the first instance that gives one (from the one that answered last, in order)."""
        start, count = self._current, len(self.base_urls)
        retrying = AsyncRetrying(stop=stop_after_attempt(count), retry=retry_if_exception_type(_NextInstance), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    index = (start + attempt.retry_state.attempt_number - 1) % count
                    answer = await self._attempt(index, method, path, options, last=attempt.retry_state.attempt_number == count)
        except _NextInstance as failed:
            if failed.response is not None:
                return failed.response
            assert failed.error is not None
            raise failed.error from None
        self._current = index
        return answer

    async def _attempt(self, index: int, method: str, path: str, options: Mapping[str, Any], *, last: bool) -> httpx.Response:
        try:
            answer = await self._http(index).request(method, path, **options)
        except httpx.HTTPError as exc:
            if not fails_over(method, error=exc):
                raise
            self._log_next(index, method, path, type(exc).__name__, last)
            raise _NextInstance(exc, None) from None
        if fails_over(method, status=answer.status_code):
            self._log_next(index, method, path, f"answered {answer.status_code}", last)
            raise _NextInstance(None, answer)
        return answer

    def _log_next(self, index: int, method: str, path: str, why: str, last: bool) -> None:
        if last:
            return  # the caller reports the final failure
        following = self.base_urls[(index + 1) % len(self.base_urls)]
        log.warning("internal call to the %s at %s: %s %s: %s; asking %s", self.service, self.base_urls[index], method,
                    path, why, following)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

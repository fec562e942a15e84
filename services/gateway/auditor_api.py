"""The gateway's client of the auditor's internal API (decision 0020): certificate views and timelines,
decoded into the shared dataclasses (services/common/inventory_read.py, audit_trail.py). The gateway never
reads the auditor's tables; it authorises (its tokens and profiles) and passes the scope it computed.

Every failure to get a usable answer is `AuditorUnavailable` (the API answers it 503, `unavailable_problem`)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from services.common.audit_trail import Trail, TrailEntry, entry_from_json
from services.common.internal_api import InternalClient, InternalUnavailable, configured_token
from services.common.inventory_read import CertificateView, view_from_json

#: entries of one timeline the gateway reads at most (pages of `PAGE`)
MAX_TIMELINE_ENTRIES = 10_000
PAGE = 1000


class AuditorUnavailable(InternalUnavailable):
    """The auditor gave no usable answer."""


def _seg(value: str) -> str:
    return quote(value, safe="")


class AuditorApi:
    """``client``: an `InternalClient`, or a function that makes one at the first call (the token file is
    read then, once)."""

    def __init__(self, client: InternalClient | Callable[[], InternalClient]) -> None:
        self._client: InternalClient | None = client if isinstance(client, InternalClient) else None
        self._make: Callable[[], InternalClient] | None = None if isinstance(client, InternalClient) else client

    @classmethod
    def from_settings(cls, settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> AuditorApi:
        """From GatewaySettings (``auditor_url``, ``internal``); ``transport``: tests' in-process auditor."""

        def make() -> InternalClient:
            internal = settings.internal
            return InternalClient(settings.auditor_url, configured_token(internal), timeout_s=internal.timeout_s,
                                  max_connections=internal.max_connections, transport=transport, service="auditor")

        return cls(make)

    @property
    def client(self) -> InternalClient:
        if self._client is None:
            assert self._make is not None
            self._client = self._make()
        return self._client

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return await self.client.get_json(path, params)
        except InternalUnavailable as exc:
            raise AuditorUnavailable(str(exc)) from None

    async def certificate(self, certificate_id: str) -> CertificateView | None:
        found = await self._get(f"/internal/v1/certificates/{_seg(certificate_id)}")
        return None if found is None else _decoded(view_from_json, found)

    async def certificates(self, scope: Collection[str] | None, *, status: str | None, not_after_before: datetime | None,
                           profile: str | None, connector: str | None, limit: int) -> list[CertificateView]:
        """One page (``limit`` at most 1000) of views under ``scope`` (None: every profile)."""
        params: dict[str, Any] = {"limit": limit, "all_profiles": "true" if scope is None else "false"}
        if scope is not None:
            params["profiles"] = sorted(scope)
        for name, value in (("status", status), ("profile", profile), ("connector", connector)):
            if value is not None:
                params[name] = value
        if not_after_before is not None:
            params["not_after_before"] = not_after_before.isoformat()
        found = await self._get("/internal/v1/certificates", params)
        if found is None:
            raise AuditorUnavailable("the auditor does not serve /internal/v1/certificates")
        return _decoded(lambda body: [view_from_json(item) for item in body["certificates"]], found)

    async def certificate_trail(self, certificate_id: str) -> Trail:
        return await self._trail(f"/internal/v1/trails/certificates/{_seg(certificate_id)}", certificate_id)

    async def request_trail(self, request_id: str) -> Trail:
        return await self._trail(f"/internal/v1/trails/requests/{_seg(request_id)}", request_id)

    async def _trail(self, path: str, identifier: str) -> Trail:
        """Every page of a timeline, up to `MAX_TIMELINE_ENTRIES` entries."""
        entries: list[TrailEntry] = []
        certificate_ids: set[str] = set()
        offset: int | None = 0
        for _ in range(MAX_TIMELINE_ENTRIES // PAGE):
            if offset is None:
                break
            found = await self._get(path, {"limit": PAGE, "offset": offset})
            if found is None:
                raise AuditorUnavailable(f"the auditor does not serve {path.rsplit('/', 1)[0]}")
            page, named, offset = _decoded(_trail_page, found)
            entries.extend(page)
            certificate_ids.update(named)
        return Trail(identifier, tuple(sorted(certificate_ids)), tuple(entries[:MAX_TIMELINE_ENTRIES]))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _decoded(decode: Any, item: Any) -> Any:
    try:
        return decode(item)
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditorUnavailable(f"the auditor's answer does not fit the contract ({type(exc).__name__})") from None


def _trail_page(body: Any) -> tuple[list[TrailEntry], list[str], int | None]:
    return [entry_from_json(item) for item in body["entries"]], [str(c) for c in body["certificate_ids"]], body["next_offset"]

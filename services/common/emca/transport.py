"""HTTP for the emCA client: one httpx.AsyncClient per connection, TLS always verified.

The dialect modules are sans-IO; this module only moves their bytes and turns
transport failures into classified `EmcaError`s:

| what happened | error | kind |
|---|---|---|
| the server certificate does not verify against the connector's CA bundle (or the system trust when it has none), or names another host | CA_TLS_UNTRUSTED | connector fault |
| another TLS failure during the handshake (e.g. the URL points at a plain-HTTP port) | CA_PROTOCOL_ERROR | connector fault |
| connection refused / reset, DNS failure, a timeout (connect, read, write, pool), the peer closing mid-response, a TLS EOF | CA_UNREACHABLE | transient |
| a response bigger than ``HttpOptions.max_response_bytes`` | CA_PROTOCOL_ERROR | connector fault |

HTTP statuses are the dialect parsers' business (5xx and 429 are transient there).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from services.common.contracts.errors import ErrorCode
from services.common.emca.types import ConnectorFaultError, EmcaError, HttpOptions, TransientError, first_line

__all__ = ["HttpTransport", "RawResponse", "classify_transport_error", "make_ssl_context"]


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def headers_dict(self) -> dict[str, str]:
        return dict(self.headers)


def make_ssl_context(ca_bundle_pem: str | None) -> ssl.SSLContext:
    """Verification on, hostname checked, TLS 1.2+; trust = the bundle when given, else the system's."""
    if ca_bundle_pem:
        context = ssl.create_default_context(cadata=ca_bundle_pem)
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def classify_transport_error(exc: httpx.HTTPError, where: str) -> EmcaError:
    """The `EmcaError` for an httpx failure talking to ``where`` (a URL without secrets)."""
    if isinstance(exc, httpx.TimeoutException):  # checked first: a timed-out TLS read carries an SSLWantReadError
        unsent = isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
        return TransientError(f"{where} timed out ({type(exc).__name__})", detail="timeout", unsent=unsent)
    tls = _ssl_cause(exc) if isinstance(exc, httpx.ConnectError) else None  # TLS handshakes happen while connecting
    if isinstance(tls, ssl.SSLCertVerificationError):
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        return ConnectorFaultError(
            ErrorCode.CA_TLS_UNTRUSTED,
            f"the TLS certificate of {where} is not trusted ({reason}): upload the CA bundle its chain ends at",
            detail="tls_untrusted",
        )
    if tls is not None and not isinstance(tls, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError)):
        return ConnectorFaultError(
            ErrorCode.CA_PROTOCOL_ERROR,
            f"TLS with {where} failed: {first_line(str(tls))} (is the base URL an HTTPS emCA endpoint?)",
            detail="tls_error",
        )
    if isinstance(exc, httpx.TransportError) and not isinstance(
        exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
    ):
        message = first_line(str(exc)) or type(exc).__name__
        return TransientError(f"{where} unreachable: {message}", detail="unreachable", unsent=isinstance(exc, httpx.ConnectError))
    return ConnectorFaultError(
        ErrorCode.CA_PROTOCOL_ERROR, f"cannot call {where}: {first_line(str(exc)) or type(exc).__name__}", detail="http_error"
    )


class HttpTransport:
    """Sends requests to one emCA base URL (and plain GETs to CRL distribution points)."""

    def __init__(
        self,
        base_url: str,
        ca_bundle_pem: str | None,
        options: HttpOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._options = options
        self._client = httpx.AsyncClient(
            verify=make_ssl_context(ca_bundle_pem),
            timeout=httpx.Timeout(
                connect=options.connect_timeout,
                read=options.read_timeout,
                write=options.write_timeout,
                pool=options.pool_timeout,
            ),
            limits=httpx.Limits(
                max_connections=options.max_connections,
                max_keepalive_connections=options.max_keepalive_connections,
                keepalive_expiry=options.keepalive_expiry,
            ),
            follow_redirects=False,  # a redirect is an answer to classify, not to follow with credentials
            trust_env=False,  # no proxies or netrc picked up from the environment
            transport=transport,
        )

    async def send(self, method: str, path: str, headers: tuple[tuple[str, str], ...], body: bytes) -> RawResponse:
        """One request to ``base_url + path``."""
        url = self.base_url + path
        return await self._exchange(self._client.build_request(method, url, headers=list(headers), content=body or None), url)

    async def get_url(self, url: str) -> RawResponse:
        """A plain GET of an absolute URL (a CRL distribution point)."""
        if not url.lower().startswith(("http://", "https://")):
            raise ConnectorFaultError(ErrorCode.CA_PROTOCOL_ERROR, f"not an HTTP(S) URL: {url!r}", detail="bad_url")
        return await self._exchange(self._client.build_request("GET", url), url)

    async def _exchange(self, request: httpx.Request, where: str) -> RawResponse:
        where = where.split("?", 1)[0]
        limit = self._options.max_response_bytes
        try:
            response = await self._client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ConnectorFaultError(
                            ErrorCode.CA_PROTOCOL_ERROR, f"{where} answered more than {limit} bytes", detail="too_large"
                        )
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, where) from exc
        return RawResponse(response.status_code, tuple(response.headers.multi_items()), b"".join(chunks))

    async def aclose(self) -> None:
        await self._client.aclose()

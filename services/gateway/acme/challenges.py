"""Challenge validation of the ACME door (RFC 8555 section 8; issue 22, docs/acme-challenges.md).

What is here, with no dependency on the account layer (the lead wires it to authorizations):

- `key_authorization` (8.1), `dns01_txt_value` (8.4) and `jwk_thumbprint` (RFC 7638, josepy's digest)
- `check_identifier`: a dns identifier as its IDNA A-label form, lower-cased (an ``ip`` one, RFC 8738, normalised)
- `ChallengePolicy`: the settings of validation: the http-01 port, the deadline, the body cap, the address
  networks validation may reach, the test-only static name map and the dns-01 hook
- `validate_http01` (8.3): resolve, check every address against the policy, connect to a checked address
  (never a second resolution), follow at most 10 redirects to http/https on ports 80/443, each target
  resolved and checked again, read a capped body and compare it with the key authorization
- `validate_dns01` (8.4) through an operator's hook program; `offered_challenge_types`
- tls-alpn-01 (RFC 8737) is validated in tls_alpn.py with this policy's resolution and address checks

A failed validation is a `ValidationResult` carrying a `ChallengeProblem` of an RFC 8555 error type; its
detail quotes what the remote sent only as a short, escaped prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import httpx
import idna
import josepy
from josepy.jwk import JWK
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, IPvAnyNetwork, field_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HTTP01 = "http-01"
DNS01 = "dns-01"
TLS_ALPN01 = "tls-alpn-01"
WELL_KNOWN_PATH = "/.well-known/acme-challenge/"
#: RFC 8555 8.3 leaves the number open; 10 is what Let's Encrypt follows
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: the ports a redirect may lead to (Let's Encrypt's rule); the configured http-01 port joins them when it is not 80
REDIRECT_PORTS = frozenset({80, 443})
USER_AGENT = "certrail-acme-validation/1"
#: how much of what the remote sent (a body, a header, a hook's stderr) a problem detail may quote
QUOTE_CHARS = 48
HOOK_STDERR_CHARS = 200
MAX_IDENTIFIER_CHARS = 253
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
_THUMBPRINT = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
_DIGEST = _THUMBPRINT
_WHITESPACE = b" \t\r\n"

#: the networks validation never reaches by default: see docs/acme-challenges.md for each
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",           # "this network", the unspecified address
    "127.0.0.0/8",         # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "100.64.0.0/10",       # shared address space (carrier-grade NAT, RFC 6598)
    "169.254.0.0/16",      # link-local
    "169.254.169.254/32",  # cloud metadata: stays denied when link-local is allowed (the most specific network decides)
    "224.0.0.0/4",         # multicast
    "240.0.0.0/4",         # reserved, broadcast
    "::/128",              # unspecified
    "::1/128",             # loopback
    "fe80::/10",           # link-local
    "fc00::/7",            # unique-local
    "fd00:ec2::254/128",   # cloud metadata over IPv6 (inside unique-local; explicit for the same reason)
    "ff00::/8",            # multicast
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class ProblemType(StrEnum):
    """The RFC 8555 error types (6.7) a validation ends with."""

    CONNECTION = "connection"
    DNS = "dns"
    INCORRECT_RESPONSE = "incorrectResponse"
    MALFORMED = "malformed"
    REJECTED_IDENTIFIER = "rejectedIdentifier"
    SERVER_INTERNAL = "serverInternal"
    TLS = "tls"
    UNAUTHORIZED = "unauthorized"
    UNSUPPORTED_IDENTIFIER = "unsupportedIdentifier"


@dataclass(frozen=True)
class ChallengeProblem:
    type: ProblemType
    detail: str

    @property
    def urn(self) -> str:
        return "urn:ietf:params:acme:error:" + self.type.value

    def document(self) -> dict[str, Any]:
        """The problem as the ``error`` of a challenge object (RFC 8555 8)."""
        status = {ProblemType.UNAUTHORIZED: 403, ProblemType.SERVER_INTERNAL: 500}.get(self.type, 400)
        return {"type": self.urn, "detail": self.detail, "status": status}


@dataclass(frozen=True)
class ValidationRecord:
    """One request of a validation: the URL asked (with the name) and the address connected to."""

    url: str
    address: str | None


@dataclass(frozen=True)
class ValidationResult:
    problem: ChallengeProblem | None = None
    records: tuple[ValidationRecord, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


class IdentifierError(Exception):
    def __init__(self, problem: ChallengeProblem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


class ValidationFailed(Exception):
    """Ends a validation early with its problem (this module and tls_alpn.py)."""

    def __init__(self, kind: ProblemType, detail: str) -> None:
        super().__init__(detail)
        self.problem = ChallengeProblem(kind, detail)


def quote(data: bytes | str, limit: int = QUOTE_CHARS) -> str:
    """A short, printable rendering of what a remote sent: at most ``limit`` characters, escaped, marked cut."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    shown = text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{shown}"' + ("..." if len(text) > limit else "")


# --- key authorizations (RFC 8555 8.1, 8.4) -------------------------------------------------------------------


def jwk_thumbprint(jwk: JWK) -> str:
    """The RFC 7638 SHA-256 thumbprint of an account key, base64url (josepy builds the canonical JSON)."""
    return josepy.b64.b64encode(jwk.thumbprint()).decode("ascii")


def new_token() -> str:
    """A challenge token: 256 random bits, base64url (RFC 8555 8.3 asks for at least 128)."""
    return secrets.token_urlsafe(32)


def key_authorization(token: str, account_jwk_thumbprint: str) -> str:
    """``token || '.' || base64url(JWK_Thumbprint(accountKey))`` (RFC 8555 8.1)."""
    if _TOKEN.fullmatch(token) is None:
        raise ValueError("a challenge token is 22 to 128 base64url characters")
    if _THUMBPRINT.fullmatch(account_jwk_thumbprint) is None:
        raise ValueError("an account key thumbprint is a base64url SHA-256 digest (43 characters)")
    return f"{token}.{account_jwk_thumbprint}"


def dns01_txt_value(key_authz: str) -> str:
    """The TXT record value of dns-01: base64url(SHA-256(key authorization)) (RFC 8555 8.4)."""
    return josepy.b64.b64encode(hashlib.sha256(key_authz.encode("ascii")).digest()).decode("ascii")


# --- identifiers --------------------------------------------------------------------------------------------------


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _refuse(kind: ProblemType, detail: str) -> IdentifierError:
    return IdentifierError(ChallengeProblem(kind, detail))


def _hostname(value: str, shown: str) -> str:
    if value.endswith("."):
        raise _refuse(ProblemType.MALFORMED, f"the identifier {shown} ends with a dot; give the name without it")
    try:
        name = idna.encode(value, uts46=True, std3_rules=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as error:
        why = quote(str(error), 80)
        raise _refuse(ProblemType.MALFORMED, f"the identifier {shown} is not a valid hostname ({why})") from None
    if len(name) > MAX_IDENTIFIER_CHARS:
        raise _refuse(ProblemType.MALFORMED, f"the identifier {shown} is longer than {MAX_IDENTIFIER_CHARS} characters")
    if name.rsplit(".", 1)[-1].isdigit():
        raise _refuse(ProblemType.MALFORMED, f"the identifier {shown} ends in an all-numeric label (an IP address is type ip)")
    return name


def check_identifier(value: object, identifier_type: str = "dns", *, allow_wildcard: bool = False) -> str:
    """An ACME identifier's value, normalised: a ``dns`` name as its lower-case IDNA A-label form (a leading
    ``*.`` only when ``allow_wildcard``: wildcards are validated by dns-01 only), an ``ip`` (RFC 8738) as its
    canonical text. Raises `IdentifierError` (malformed, rejectedIdentifier, unsupportedIdentifier)."""
    if not isinstance(value, str) or not value or len(value) > 2 * MAX_IDENTIFIER_CHARS:
        raise _refuse(ProblemType.MALFORMED, f"an identifier value is a string of 1 to {MAX_IDENTIFIER_CHARS} characters")
    shown = quote(value, 80)
    if identifier_type == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise _refuse(ProblemType.MALFORMED, f"the ip identifier {shown} is not an IPv4 or IPv6 address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise _refuse(ProblemType.MALFORMED, f"the ip identifier {shown} carries a zone index")
        return str(address)
    if identifier_type != "dns":
        raise _refuse(ProblemType.UNSUPPORTED_IDENTIFIER,
                      f"identifiers of type {quote(identifier_type, 20)} are not supported (dns, ip)")
    if is_ip_literal(value.strip("[]")):
        raise _refuse(ProblemType.REJECTED_IDENTIFIER, f"the dns identifier {shown} is an IP address; use type ip (RFC 8738)")
    if value.startswith("*."):
        if not allow_wildcard:
            raise _refuse(ProblemType.REJECTED_IDENTIFIER,
                          f"the wildcard identifier {shown} can only be validated by dns-01, which this server does not offer")
        base = _hostname(value[2:], shown)
        if "." not in base:
            raise _refuse(ProblemType.REJECTED_IDENTIFIER, f"the wildcard identifier {shown} covers a top-level name")
        return "*." + base
    if "*" in value:
        raise _refuse(ProblemType.MALFORMED, f"the identifier {shown} has a '*' elsewhere than a whole leftmost label")
    return _hostname(value, shown)


# --- the policy -------------------------------------------------------------------------------------------------


_HookArgument = Annotated[str, Field(min_length=1, max_length=4096)]


class ChallengePolicy(BaseModel):
    """How far challenge validation may reach (``CERTRAIL_GATEWAY_ACME__CHALLENGES__*`` once wired)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    http01_port: int = Field(default=80, ge=1, le=65535,
                             description="The port http-01 asks (RFC 8555: 80). Another port is for tests: certbot's "
                                         "standalone server on a loopback port; redirects may then also go to it.")
    timeout_s: float = Field(default=10.0, gt=0, le=120,
                             description="The deadline of a whole http-01 validation (resolution, every redirect, the "
                                         "body) and of a whole tls-alpn-01 one (resolution, connection, handshake).")
    max_body_bytes: int = Field(default=8192, ge=256, le=1024 * 1024,
                                description="The largest http-01 body read (the key authorization is under 200 bytes).")
    denied_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ipaddress.ip_network(n) for n in DEFAULT_DENIED_NETWORKS],
        description="Addresses validation never connects to. The most specific matching network of the two lists decides; "
                    "on equal prefixes, allowed wins.")
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Exceptions to denied_networks (e.g. 127.0.0.0/8 for a test with certbot on loopback).")
    resolve: dict[str, IPvAnyAddress] = Field(
        default_factory=dict,
        description="TEST ONLY: a static name -> address map used instead of DNS (a name missing from it fails with "
                    "a dns problem). Its addresses go through the network lists like any other.")
    dns01_hook: Annotated[list[_HookArgument], Field(min_length=1, max_length=32)] | None = Field(
        default=None,
        description="argv of the program that checks a dns-01 TXT record (no shell): it gets the record name and the "
                    "expected value as two more arguments; exit 0 = found, 1 = not found. Unset: dns-01 is not offered.")
    dns01_timeout_s: float = Field(default=30.0, gt=0, le=600, description="The deadline of one dns-01 hook run.")
    tls_alpn01_enabled: bool = Field(
        default=False,
        description="Offer tls-alpn-01 (RFC 8737; not for a wildcard) beside http-01. Off by default: turning it on "
                    "makes validation open TLS connections to port tls_alpn01_port of the addresses clients name "
                    "(the same network lists apply); decision 0033's addendum.")
    tls_alpn01_port: int = Field(default=443, ge=1, le=65535,
                                 description="The port tls-alpn-01 connects to (RFC 8737: 443). Another port is for "
                                             "tests: lego's tls-alpn-01 server on a loopback port.")

    @field_validator("resolve")
    @classmethod
    def _names_are_hostnames(cls, value: dict[str, IPAddress]) -> dict[str, IPAddress]:
        try:
            return {check_identifier(name): address for name, address in value.items()}
        except IdentifierError as error:
            raise ValueError(error.problem.detail) from None

    @field_validator("dns01_hook")
    @classmethod
    def _hook_is_absolute(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not os.path.isabs(value[0]):
            raise ValueError("dns01_hook[0] must be an absolute path (the hook is run without a shell or PATH lookup)")
        return value

    def denial(self, address: IPAddress) -> IPNetwork | None:
        """The denied network that refuses ``address`` (``None``: validation may connect to it). An IPv4 address
        embedded in an IPv6 one (IPv4-mapped, IPv4-compatible, 6to4, NAT64) is checked as well."""
        for candidate in _with_embedded(address):
            denied = _most_specific(candidate, self.denied_networks)
            if denied is None:
                continue
            allowed = _most_specific(candidate, self.allowed_networks)
            if allowed is None or allowed.prefixlen < denied.prefixlen:
                return denied
        return None


def _with_embedded(address: IPAddress) -> list[IPAddress]:
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    found: list[IPAddress] = [address]
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _most_specific(address: IPAddress, networks: Sequence[IPNetwork]) -> IPNetwork | None:
    best: IPNetwork | None = None
    for network in networks:
        if address in network and (best is None or network.prefixlen > best.prefixlen):
            best = network
    return best


def offered_challenge_types(policy: ChallengePolicy, *, wildcard: bool = False) -> tuple[str, ...]:
    """The challenge types an authorization offers: http-01 always (not for a wildcard, RFC 8555 7.1.3 / 8.3),
    dns-01 when a hook is configured, tls-alpn-01 when enabled (not for a wildcard, RFC 8737 3). An empty answer
    means the identifier cannot be validated here."""
    dns = (DNS01,) if policy.dns01_hook else ()
    tls = (TLS_ALPN01,) if policy.tls_alpn01_enabled else ()
    return dns if wildcard else (HTTP01, *dns, *tls)


# --- http-01 ----------------------------------------------------------------------------------------------------


def validation_client(policy: ChallengePolicy) -> httpx.AsyncClient:
    """The HTTP client of http-01: no proxy from the environment (a proxy would reach what the policy denies),
    no automatic redirects (each is checked here), and no certificate check on a redirect to https (the key
    authorization is the proof, as with Let's Encrypt)."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=tls, timeout=policy.timeout_s,
                             headers={"User-Agent": USER_AGENT}, limits=httpx.Limits(max_keepalive_connections=0))


async def resolve_allowed(host: str, policy: ChallengePolicy, what: str, denied: ProblemType) -> list[IPAddress]:
    """The addresses of ``host`` (an IP literal is its own), every one allowed by the policy, else `ValidationFailed`
    (``denied``: the problem type of an address the policy refuses)."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        if policy.resolve:
            if host not in policy.resolve:
                raise ValidationFailed(ProblemType.DNS, f"{what} {host} is not in the static resolve map (which replaces DNS)") from None
            addresses = [policy.resolve[host]]
        else:
            addresses = await _system_resolve(host, what)
    for address in addresses:
        network = policy.denial(address)
        if network is not None:
            raise ValidationFailed(denied, f"{what} {host} resolves to {address}, which the validation policy does not reach "
                                f"({network}); nothing was connected to")
    return addresses


async def _system_resolve(host: str, what: str) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ValidationFailed(ProblemType.DNS, f"{what} {host} could not be resolved ({error.strerror})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValidationFailed(ProblemType.DNS, f"{what} {host} has no address")
    return addresses


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"


def _redirect_target(current: httpx.URL, location: str | None, policy: ChallengePolicy) -> httpx.URL:
    if not location:
        raise ValidationFailed(ProblemType.CONNECTION, f"{current} answered a redirect without a Location")
    try:
        target = current.join(location.strip())
    except (httpx.InvalidURL, ValueError):
        raise ValidationFailed(ProblemType.CONNECTION, f"{current} redirected to an invalid URL {quote(location)}") from None
    if target.scheme not in ("http", "https"):
        raise ValidationFailed(ProblemType.CONNECTION, f"{current} redirected to {quote(location)}: only http and https are followed")
    if target.userinfo:
        raise ValidationFailed(ProblemType.CONNECTION, f"{current} redirected to a URL with credentials; not followed")
    port = target.port or (443 if target.scheme == "https" else 80)
    ports = REDIRECT_PORTS | {policy.http01_port}
    if port not in ports:
        raise ValidationFailed(ProblemType.CONNECTION, f"{current} redirected to port {port}: only ports "
                                              f"{', '.join(str(p) for p in sorted(ports))} are followed")
    try:
        host = str(ipaddress.ip_address(target.host))
    except ValueError:
        try:
            host = check_identifier(target.host)
        except IdentifierError:
            raise ValidationFailed(ProblemType.CONNECTION, f"{current} redirected to an invalid host {quote(target.host)}") from None
    return target.copy_with(host=host, fragment=None)


async def _get(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress],
               policy: ChallengePolicy, records: list[ValidationRecord]) -> tuple[int, str | None, bytes]:
    """GET ``url`` from the first of ``addresses`` that accepts a connection (the name goes in Host and SNI,
    never to a resolver). Returns the status, the Location, and the body of a 200 (capped)."""
    headers = {"Host": _host_header(url), "Accept": "*/*", "Accept-Encoding": "identity", "Connection": "close"}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" and not is_ip_literal(url.host) else {}
    failure = ""
    for address in addresses:
        records.append(ValidationRecord(str(url), str(address)))
        request = client.build_request("GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as error:
            failure = f"{address}: {quote(str(error) or type(error).__name__, 80)}"
            continue
        except httpx.TimeoutException:
            raise ValidationFailed(ProblemType.CONNECTION, f"{url} ({address}) did not answer within {policy.timeout_s:g} s") from None
        except httpx.HTTPError as error:
            why = quote(str(error) or type(error).__name__, 80)
            raise ValidationFailed(ProblemType.CONNECTION, f"{url} ({address}) failed: {why}") from None
        try:
            if response.status_code != 200:
                return response.status_code, response.headers.get("location"), b""
            return 200, None, await _capped_body(response, url, policy)
        except httpx.TimeoutException:
            raise ValidationFailed(ProblemType.CONNECTION,
                          f"{url} ({address}) did not send its body within {policy.timeout_s:g} s") from None
        except httpx.HTTPError as error:
            raise ValidationFailed(ProblemType.CONNECTION, f"reading {url} ({address}) failed: {quote(str(error), 80)}") from None
        finally:
            await response.aclose()
    raise ValidationFailed(ProblemType.CONNECTION, f"could not connect to {url} ({failure})")


async def _capped_body(response: httpx.Response, url: httpx.URL, policy: ChallengePolicy) -> bytes:
    too_big = ValidationFailed(ProblemType.INCORRECT_RESPONSE, f"{url} answered more than {policy.max_body_bytes} bytes; "
                                                      "an http-01 answer is the key authorization alone")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_body_bytes:
        raise too_big
    body = bytearray()
    async for chunk in response.aiter_raw():  # raw: a content-encoding is never expanded
        body += chunk
        if len(body) > policy.max_body_bytes:
            raise too_big
    return bytes(body)


async def validate_http01(identifier: str, token: str, expected: str, policy: ChallengePolicy, *,
                          client: httpx.AsyncClient | None = None) -> ValidationResult:
    """Validates an http-01 challenge (RFC 8555 8.3) for a dns (or ip) identifier: ``expected`` is the key
    authorization. ``client``: one made by `validation_client` (reused across validations), else one is made."""
    if _TOKEN.fullmatch(token) is None:
        return ValidationResult(ChallengeProblem(ProblemType.MALFORMED,
                                                 "the challenge token is not 22 to 128 base64url characters"))
    try:
        try:
            name = str(ipaddress.ip_address(identifier))
        except ValueError:
            name = check_identifier(identifier)
    except IdentifierError as error:
        return ValidationResult(error.problem)
    url = httpx.URL(scheme="http", host=name, port=None if policy.http01_port == 80 else policy.http01_port,
                    path=WELL_KNOWN_PATH + token)
    records: list[ValidationRecord] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = client if client is not None else await stack.enter_async_context(validation_client(policy))
            async with asyncio.timeout(policy.timeout_s):
                await _fetch_and_compare(http, url, expected, policy, records)
    except ValidationFailed as failed:
        return ValidationResult(failed.problem, tuple(records))
    except TimeoutError:
        last = records[-1].url if records else str(url)
        return ValidationResult(ChallengeProblem(
            ProblemType.CONNECTION, f"the validation of {name} did not finish within {policy.timeout_s:g} s (at {last})"),
            tuple(records))
    return ValidationResult(None, tuple(records))


async def _fetch_and_compare(client: httpx.AsyncClient, url: httpx.URL, expected: str, policy: ChallengePolicy,
                             records: list[ValidationRecord]) -> None:
    what, denied = "the identifier", ProblemType.REJECTED_IDENTIFIER
    for redirects in range(MAX_REDIRECTS + 1):
        addresses = await resolve_allowed(url.host, policy, what, denied)
        status, location, body = await _get(client, url, addresses, policy, records)
        if status in REDIRECT_STATUSES:
            if redirects == MAX_REDIRECTS:
                raise ValidationFailed(ProblemType.CONNECTION, f"more than {MAX_REDIRECTS} redirects (the last from {url})")
            url = _redirect_target(url, location, policy)
            what, denied = "the redirect target", ProblemType.CONNECTION
            continue
        if status != 200:
            raise ValidationFailed(ProblemType.UNAUTHORIZED, f"{url} answered HTTP {status}, not 200 with the key authorization")
        answer = body.rstrip(_WHITESPACE)  # RFC 8555 8.3: trailing whitespace is ignored
        if answer != expected.encode("ascii"):
            raise ValidationFailed(ProblemType.UNAUTHORIZED, f"{url} answered {len(answer)} bytes that are not the key authorization "
                                                    f"(they begin {quote(answer)})")
        return


# --- dns-01 ------------------------------------------------------------------------------------------------------


def _hook_environment() -> dict[str, str]:
    """The gateway's environment without its own settings (database URLs, keys): the hook needs neither."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith("CERTRAIL_")}


async def _read_capped(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    kept = bytearray()
    while stream is not None and (chunk := await stream.read(4096)):
        kept += chunk[: max(0, limit - len(kept))]
    return bytes(kept)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def validate_dns01(identifier: str, expected_digest: str, policy: ChallengePolicy) -> ValidationResult:
    """Validates a dns-01 challenge (RFC 8555 8.4) by running ``policy.dns01_hook`` with two more arguments,
    ``_acme-challenge.<name>`` (a wildcard's base name) and ``expected_digest`` (`dns01_txt_value`): exit 0
    means the record is there; exit 1 that it is not (unauthorized); anything else, or no end within
    ``dns01_timeout_s``, a dns problem. The hook's stderr (cut) goes into the detail."""
    if not policy.dns01_hook:
        return ValidationResult(ChallengeProblem(ProblemType.MALFORMED, "dns-01 is not offered by this server"))
    try:
        name = check_identifier(identifier, allow_wildcard=True).removeprefix("*.")
    except IdentifierError as error:
        return ValidationResult(error.problem)
    if _DIGEST.fullmatch(expected_digest) is None:
        return ValidationResult(ChallengeProblem(ProblemType.MALFORMED, "the expected dns-01 value is not a base64url SHA-256"))
    record = f"_acme-challenge.{name}"
    try:
        process = await asyncio.create_subprocess_exec(
            *policy.dns01_hook, record, expected_digest, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=_hook_environment(),
            start_new_session=True)  # its own process group: a timeout kills what the hook started too
    except OSError as error:
        return ValidationResult(ChallengeProblem(ProblemType.SERVER_INTERNAL,
                                                 f"the dns-01 hook could not be started ({error.strerror})"))
    try:
        async with asyncio.timeout(policy.dns01_timeout_s):
            stderr = await _read_capped(process.stderr, HOOK_STDERR_CHARS * 4)
            code = await process.wait()
    except TimeoutError:
        _kill_group(process)
        await process.wait()
        return ValidationResult(ChallengeProblem(
            ProblemType.DNS, f"the dns-01 hook did not finish within {policy.dns01_timeout_s:g} s for {record}; it was killed"))
    finally:
        if process.returncode is None:  # cancelled from outside: leave no hook behind
            _kill_group(process)
            await process.wait()
    if code == 0:
        return ValidationResult()
    said = f": {quote(stderr.strip(), HOOK_STDERR_CHARS)}" if stderr.strip() else ""
    if code == 1:
        return ValidationResult(ChallengeProblem(
            ProblemType.UNAUTHORIZED, f"no TXT record {record} with the expected value (the dns-01 hook said so{said})"))
    return ValidationResult(ChallengeProblem(ProblemType.DNS, f"the dns-01 hook failed for {record} (exit {code}{said})"))

"""tls-alpn-01 validation (RFC 8737; services/gateway/acme/tls_alpn.py) against real TLS servers on loopback:
Python's ssl with ALPN serving certificates built with ``cryptography`` that carry (or fail to carry) the
acmeIdentifier extension. Each refusal is checked for its problem type and what its detail says; the address
policy and the deadline of challenges.py apply as they do to http-01."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto.core import OctetString
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.gateway.acme.challenges import (
    TLS_ALPN01,
    ChallengePolicy,
    ProblemType,
    key_authorization,
    offered_challenge_types,
)
from services.gateway.acme.order_routes import VALIDATORS
from services.gateway.acme.tls_alpn import (
    ACME_IDENTIFIER,
    ACME_TLS_1,
    MAX_HANDSHAKE_BYTES,
    check_certificate,
    validate_tls_alpn01,
)
from tests.conftest import free_ports, poll_until

NAME = "www.tls-alpn.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 8.3's example token
KEY_AUTHZ = key_authorization(TOKEN, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")  # RFC 7638's thumbprint
DIGEST = hashlib.sha256(KEY_AUTHZ.encode("ascii")).digest()
_KEY = ec.generate_private_key(ec.SECP256R1())


def challenge_certificate(*, names: Sequence[x509.GeneralName] | None = (x509.DNSName(NAME),),
                          value: bytes | None = None, critical: bool = True,
                          extra: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    """A self-signed tls-alpn-01 certificate: ``names`` its subjectAltName (None: no extension), the
    acmeIdentifier extension with ``value`` (default: the DER OCTET STRING of DIGEST; b"" leaves it out)."""
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-alpn-01 test")])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(_KEY.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
               .not_valid_after(now + timedelta(days=1)))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    acme_value = OctetString(DIGEST).dump() if value is None else value
    if acme_value:
        builder = builder.add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, acme_value), critical=critical)
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(_KEY, hashes.SHA256())


@dataclass
class Served:
    port: int
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    negotiated: list[str | None] = field(default_factory=list)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    def handling(self) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)

    async def finish(self) -> None:
        """Waits for the connections' handlers (each ends when the validator closes its side)."""
        if self.handlers:
            await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), 10)


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path, certificate: x509.Certificate, alpn: list[str] | None = None,
                     ) -> AsyncIterator[Served]:
    """A TLS server on a loopback port serving ``certificate`` with ``alpn`` (None: no ALPN at all); it records
    the SNI and the negotiated protocol of each connection and closes it after the handshake."""
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    served = Served(port=0)

    def sni(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        served.server_names.append(server_name)

    context.sni_callback = sni  # type: ignore[assignment]  # typeshed wants SSLSocket; SSLObject is what asyncio passes

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.handling()
        served.negotiated.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read(1)  # until the validator closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served
        await served.finish()


@contextlib.asynccontextmanager
async def tcp_server(answer: bytes | None, *, close: bool = False) -> AsyncIterator[Served]:
    """A plain TCP server on loopback: ``answer`` is written at once (None: nothing, ever); ``close``: the
    connection is closed then, once what the client sent first (its ClientHello) was read: a clean close."""
    served = Served(port=0)
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.handling()
        if answer is not None:
            writer.write(answer)
            with contextlib.suppress(OSError):
                await writer.drain()
        if close:
            await reader.read(65536)
        else:
            await stop.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield served
        finally:
            stop.set()
            await served.finish()


def policy(port: int, **changes: Any) -> ChallengePolicy:
    settings: dict[str, Any] = {"tls_alpn01_enabled": True, "tls_alpn01_port": port,
                                "allowed_networks": ["127.0.0.0/8"], "resolve": {NAME: "127.0.0.1"}, "timeout_s": 5}
    return ChallengePolicy(**(settings | changes))


async def validate(served: Served, **changes: Any) -> Any:
    return await validate_tls_alpn01(NAME, KEY_AUTHZ, policy(served.port, **changes))


# --- the settings and what is offered -----------------------------------------------------------------------------


def test_tls_alpn01_is_off_by_default_on_port_443_and_never_offered_for_a_wildcard() -> None:
    default = ChallengePolicy()
    assert (default.tls_alpn01_enabled, default.tls_alpn01_port) == (False, 443)
    assert TLS_ALPN01 not in offered_challenge_types(default)
    enabled = ChallengePolicy(tls_alpn01_enabled=True)
    assert offered_challenge_types(enabled) == ("http-01", "tls-alpn-01")
    assert offered_challenge_types(enabled, wildcard=True) == ()
    hooked = ChallengePolicy(tls_alpn01_enabled=True, dns01_hook=["/bin/true"])
    assert offered_challenge_types(hooked) == ("http-01", "dns-01", "tls-alpn-01")
    assert offered_challenge_types(hooked, wildcard=True) == ("dns-01",)
    with pytest.raises(ValueError, match="tls_alpn01_port"):
        ChallengePolicy(tls_alpn01_port=0)


# --- a right answer ---------------------------------------------------------------------------------------------


async def test_the_right_certificate_over_acme_tls_1_is_valid_and_sni_names_the_identifier(tmp_path: Path) -> None:
    async with tls_server(tmp_path, challenge_certificate(), [ACME_TLS_1]) as served:
        result = await VALIDATORS[TLS_ALPN01](NAME, TOKEN, KEY_AUTHZ, policy(served.port))
        await poll_until(lambda: served.negotiated, "the server's side of the handshake", 10)
    assert result.ok, result.problem
    assert [(r.url, r.address) for r in result.records] == [(f"{NAME}:{served.port}", "127.0.0.1")]
    assert served.server_names == [NAME] and served.negotiated == [ACME_TLS_1]


async def test_the_server_choosing_among_several_protocols_still_gets_acme_tls_1_only(tmp_path: Path) -> None:
    """The validator offers acme-tls/1 alone: a server preferring h2 can only pick acme-tls/1."""
    async with tls_server(tmp_path, challenge_certificate(), ["h2", "http/1.1", ACME_TLS_1]) as served:
        result = await validate(served)
        await poll_until(lambda: served.negotiated, "the server's side of the handshake", 10)
    assert result.ok, result.problem
    assert served.negotiated == [ACME_TLS_1]


# --- tls problems -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpn", "said"), [
    (None, "negotiated no ALPN protocol, not acme-tls/1"),
    (["h2", "http/1.1"], "negotiated no ALPN protocol, not acme-tls/1"),
], ids=["no-alpn", "other-alpn"])
async def test_a_server_that_does_not_negotiate_acme_tls_1_is_a_tls_problem(
        tmp_path: Path, alpn: list[str] | None, said: str) -> None:
    async with tls_server(tmp_path, challenge_certificate(), alpn) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.TLS
    assert result.problem.detail == f"{NAME}:{served.port} (127.0.0.1) {said}"


async def test_a_plain_tcp_answer_is_a_failed_handshake() -> None:
    async with tcp_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.TLS
    assert result.problem.detail.startswith(f"the TLS handshake with {NAME}:{served.port} (127.0.0.1) failed (")


async def test_a_connection_closed_during_the_handshake_is_a_tls_problem() -> None:
    async with tcp_server(b"", close=True) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.TLS
    assert result.problem.detail == f"{NAME}:{served.port} (127.0.0.1) closed the connection during the TLS handshake"


async def test_a_handshake_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), os.urandom(MAX_HANDSHAKE_BYTES))
    async with tls_server(tmp_path, challenge_certificate(extra=[padding]), [ACME_TLS_1]) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.TLS
    assert f"sent more than {MAX_HANDSHAKE_BYTES} bytes" in result.problem.detail


# --- the certificate: unauthorized ------------------------------------------------------------------------------


async def test_a_wrong_digest_is_unauthorized(tmp_path: Path) -> None:
    wrong = OctetString(hashlib.sha256(b"another key authorization").digest()).dump()
    async with tls_server(tmp_path, challenge_certificate(value=wrong), [ACME_TLS_1]) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.UNAUTHORIZED
    assert result.problem.detail == (f"the tls-alpn-01 certificate for {NAME} carries an acmeIdentifier digest that "
                                     "is not SHA-256 of the key authorization")


async def test_a_non_critical_acme_identifier_is_unauthorized(tmp_path: Path) -> None:
    async with tls_server(tmp_path, challenge_certificate(critical=False), [ACME_TLS_1]) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.UNAUTHORIZED
    assert "not marked critical" in result.problem.detail


async def test_two_subject_alt_names_are_unauthorized(tmp_path: Path) -> None:
    names = [x509.DNSName(NAME), x509.DNSName("other.tls-alpn.test")]
    async with tls_server(tmp_path, challenge_certificate(names=names), [ACME_TLS_1]) as served:
        result = await validate(served)
    assert result.problem is not None and result.problem.type is ProblemType.UNAUTHORIZED
    assert result.problem.detail == (f"the tls-alpn-01 certificate for {NAME} must name exactly one subjectAltName, "
                                     f'the dNSName {NAME}; it has 2 (dNSNames: "{NAME}", "other.tls-alpn.test")')


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(("certificate", "said"), [
    (lambda: challenge_certificate(names=[x509.DNSName("WWW.TLS-ALPN.TEST")]), None),  # names compare case-blind
    (lambda: challenge_certificate(names=[x509.DNSName("other.tls-alpn.test")]), "it has 1 (dNSNames: \"other"),
    (lambda: challenge_certificate(names=[x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
     "it has 2"),
    (lambda: challenge_certificate(names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
     "it has 1 (dNSNames: none)"),
    (lambda: challenge_certificate(names=None), "has no subjectAltName extension"),
    (lambda: challenge_certificate(value=b""), "has no acmeIdentifier extension"),
    (lambda: challenge_certificate(value=DIGEST), "not the DER OCTET STRING of a SHA-256 digest"),  # no header
    (lambda: challenge_certificate(value=OctetString(DIGEST[:31]).dump()), "not the DER OCTET STRING"),
    (lambda: challenge_certificate(value=OctetString(DIGEST).dump() + b"\x00"), "not the DER OCTET STRING"),
    (lambda: challenge_certificate(value=b"\x24\x22\x04\x20" + DIGEST), "not the DER OCTET STRING"),  # constructed (BER)
], ids=["upper-case", "other-name", "dns-and-ip", "ip-only", "no-san", "no-extension", "raw-digest", "short-digest",
        "trailing-byte", "constructed"])
def test_the_certificate_checks(certificate: Any, said: str | None) -> None:
    problem = check_certificate(_der(certificate()), NAME, DIGEST)
    if said is None:
        assert problem is None
    else:
        assert problem is not None and problem.type is ProblemType.UNAUTHORIZED and said in problem.detail


def test_an_unparsable_certificate_is_unauthorized() -> None:
    problem = check_certificate(b"\x30\x03\x02\x01\x00", NAME, DIGEST)
    assert problem is not None and problem.type is ProblemType.UNAUTHORIZED and "could not be parsed" in problem.detail


# --- the policy: addresses, connection, deadline ----------------------------------------------------------------


async def test_a_denied_address_is_refused_without_connecting(tmp_path: Path) -> None:
    async with tls_server(tmp_path, challenge_certificate(), [ACME_TLS_1]) as served:
        result = await validate(served, allowed_networks=[])
    assert result.problem is not None and result.problem.type is ProblemType.REJECTED_IDENTIFIER
    assert "127.0.0.0/8" in result.problem.detail and "nothing was connected to" in result.problem.detail
    assert served.connections == 0 and result.records == ()


async def test_a_name_outside_the_static_map_is_a_dns_problem() -> None:
    result = await validate_tls_alpn01("absent.tls-alpn.test", KEY_AUTHZ, policy(443))
    assert result.problem is not None and result.problem.type is ProblemType.DNS


async def test_a_refused_connection_is_a_connection_problem() -> None:
    [port] = free_ports(1)
    result = await validate_tls_alpn01(NAME, KEY_AUTHZ, policy(port))
    assert result.problem is not None and result.problem.type is ProblemType.CONNECTION
    assert result.problem.detail.startswith(f"could not connect to {NAME}:{port} for tls-alpn-01 (127.0.0.1: ")


async def test_a_server_that_never_answers_the_handshake_fails_at_the_deadline() -> None:
    async with tcp_server(None) as served:
        started = asyncio.get_running_loop().time()
        result = await validate(served, timeout_s=0.5)
        took = asyncio.get_running_loop().time() - started
    assert result.problem is not None and result.problem.type is ProblemType.CONNECTION
    assert result.problem.detail == (f"the tls-alpn-01 validation of {NAME} did not finish within 0.5 s "
                                     "(at 127.0.0.1)")
    assert served.connections == 1 and 0.5 <= took < 3


@pytest.mark.parametrize(("identifier", "kind"), [
    ("127.0.0.1", ProblemType.UNSUPPORTED_IDENTIFIER),
    ("::1", ProblemType.UNSUPPORTED_IDENTIFIER),
    ("*.tls-alpn.test", ProblemType.REJECTED_IDENTIFIER),
    ("bad_name.test", ProblemType.MALFORMED),
])
async def test_ip_wildcard_and_bad_identifiers_are_refused_before_any_network(identifier: str, kind: ProblemType) -> None:
    async with tcp_server(None) as served:
        result = await validate_tls_alpn01(identifier, KEY_AUTHZ, policy(served.port, resolve={}))
    assert result.problem is not None and result.problem.type is kind
    assert served.connections == 0

"""tls-alpn-01 validation of the ACME door (RFC 8737; issue 22, docs/acme-challenges.md).

`validate_tls_alpn01` resolves the identifier with the policy of challenges.py (every address checked, the
connection made to a checked address: no second resolution), opens a TCP connection to ``tls_alpn01_port``, and
runs a TLS handshake (1.2 or later) with the identifier in SNI and ``acme-tls/1`` as the only ALPN protocol
offered, through memory BIOs so that at most `MAX_HANDSHAKE_BYTES` are read. Nothing but the handshake is sent,
nothing is followed. The certificate's chain is not verified (RFC 8737: it is self-signed by design); the proof
is in it:

- ``acme-tls/1`` was negotiated (else a ``tls`` problem, as is any handshake failure);
- the subjectAltName extension holds exactly one entry, a dNSName equal to the identifier;
- the acmeIdentifier extension (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31) is critical and its value is the DER
  OCTET STRING of SHA-256(key authorization) (else ``unauthorized``).

One deadline (``timeout_s``) covers resolution, connection and handshake. Only dns identifiers are validated:
an ip identifier (RFC 8738 would have SNI carry its reverse-DNS name) is refused, as the door orders dns ones only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl

from asn1crypto.core import OctetString
from cryptography import x509

from services.gateway.acme.challenges import (
    ChallengePolicy,
    ChallengeProblem,
    IdentifierError,
    IPAddress,
    ProblemType,
    ValidationFailed,
    ValidationRecord,
    ValidationResult,
    check_identifier,
    is_ip_literal,
    quote,
    resolve_allowed,
)

ACME_TLS_1 = "acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 6.1)
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: the most a handshake may send before it is refused: a challenge certificate is about a kilobyte
MAX_HANDSHAKE_BYTES = 64 * 1024
_READ_CHUNK = 4096


def tls_alpn01_digest(key_authz: str) -> bytes:
    """SHA-256 of the key authorization: what the acmeIdentifier extension must carry (RFC 8737 3)."""
    return hashlib.sha256(key_authz.encode("ascii")).digest()


def _client_context() -> ssl.SSLContext:
    """TLS 1.2 or later, ``acme-tls/1`` the only ALPN protocol, no certificate verification (the certificate is
    self-signed by design: its extension is the proof, RFC 8737 3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_1])
    return context


async def validate_tls_alpn01(identifier: str, expected: str, policy: ChallengePolicy) -> ValidationResult:
    """Validates a tls-alpn-01 challenge (RFC 8737 3) for a dns identifier: ``expected`` is the key authorization."""
    if is_ip_literal(identifier.strip("[]")):
        return ValidationResult(ChallengeProblem(
            ProblemType.UNSUPPORTED_IDENTIFIER, "tls-alpn-01 validates dns identifiers only; ip identifiers are not "
                                                "supported here"))
    if identifier.startswith("*."):
        return ValidationResult(ChallengeProblem(
            ProblemType.REJECTED_IDENTIFIER, "a wildcard identifier cannot be validated by tls-alpn-01 (RFC 8737 3)"))
    try:
        name = check_identifier(identifier)
    except IdentifierError as error:
        return ValidationResult(error.problem)
    records: list[ValidationRecord] = []
    try:
        async with asyncio.timeout(policy.timeout_s):
            addresses = await resolve_allowed(name, policy, "the identifier", ProblemType.REJECTED_IDENTIFIER)
            certificate = await _handshake_any(name, addresses, policy.tls_alpn01_port, records)
    except ValidationFailed as failed:
        return ValidationResult(failed.problem, tuple(records))
    except TimeoutError:
        at = f" (at {records[-1].address})" if records else ""
        return ValidationResult(ChallengeProblem(
            ProblemType.CONNECTION, f"the tls-alpn-01 validation of {name} did not finish within "
                                    f"{policy.timeout_s:g} s{at}"), tuple(records))
    problem = check_certificate(certificate, name, tls_alpn01_digest(expected))
    return ValidationResult(problem, tuple(records))


async def _handshake_any(name: str, addresses: list[IPAddress], port: int,
                         records: list[ValidationRecord]) -> bytes:
    """The DER certificate of the first address that accepts a connection; the next address is tried only when
    one refuses it."""
    failure = ""
    for address in addresses:
        records.append(ValidationRecord(f"{name}:{port}", str(address)))
        try:
            reader, writer = await asyncio.open_connection(str(address), port)
        except OSError as error:
            failure = f"{address}: {quote(error.strerror or type(error).__name__, 80)}"
            continue
        try:
            return await _handshake(reader, writer, name, f"{name}:{port} ({address})")
        finally:
            writer.close()  # not awaited: a peer that never reads must not hold the validation past its deadline
    raise ValidationFailed(ProblemType.CONNECTION, f"could not connect to {name}:{port} for tls-alpn-01 ({failure})")


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, where: str) -> bytes:
    """The client side of the handshake through memory BIOs (at most `MAX_HANDSHAKE_BYTES` read); the server's
    certificate (DER) once ``acme-tls/1`` was negotiated."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context().wrap_bio(incoming, outgoing, server_side=False, server_hostname=name)
    received = 0
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as error:
            raise ValidationFailed(ProblemType.TLS, _handshake_failure(where, error)) from None
        try:
            if pending := outgoing.read():
                writer.write(pending)
                await writer.drain()
            if done:
                break
            chunk = await reader.read(_READ_CHUNK)
        except OSError as error:
            raise ValidationFailed(ProblemType.CONNECTION, f"{where}: the connection failed during the TLS handshake "
                                                  f"({quote(error.strerror or type(error).__name__, 80)})") from None
        if not chunk:
            raise ValidationFailed(ProblemType.TLS, f"{where} closed the connection during the TLS handshake")
        received += len(chunk)
        if received > MAX_HANDSHAKE_BYTES:
            raise ValidationFailed(ProblemType.TLS, f"{where} sent more than {MAX_HANDSHAKE_BYTES} bytes without completing "
                                           "the TLS handshake")
        incoming.write(chunk)
    protocol = tls.selected_alpn_protocol()
    if protocol != ACME_TLS_1:
        said = "no ALPN protocol" if protocol is None else f"the ALPN protocol {quote(protocol)}"
        raise ValidationFailed(ProblemType.TLS, f"{where} negotiated {said}, not {ACME_TLS_1}")
    certificate = tls.getpeercert(binary_form=True)
    if not certificate:
        raise ValidationFailed(ProblemType.TLS, f"{where} presented no certificate")
    return certificate


def _handshake_failure(where: str, error: ssl.SSLError) -> str:
    reason = str(error.reason or type(error).__name__)
    if "NO_APPLICATION_PROTOCOL" in reason.upper():
        return f"{where} refused the ALPN protocol {ACME_TLS_1} (TLS alert no_application_protocol)"
    return f"the TLS handshake with {where} failed ({quote(reason, 80)})"


def check_certificate(der: bytes, name: str, digest: bytes) -> ChallengeProblem | None:
    """The problem of a tls-alpn-01 certificate for ``name`` that should carry ``digest`` (None: it proves
    control): one subjectAltName entry, the dNSName ``name``; the critical acmeIdentifier extension whose value
    is the DER OCTET STRING of ``digest``."""
    def refused(detail: str) -> ChallengeProblem:
        return ChallengeProblem(ProblemType.UNAUTHORIZED, f"the tls-alpn-01 certificate for {name} {detail}")

    try:
        certificate = x509.load_der_x509_certificate(der)
        extensions = certificate.extensions
    except ValueError as error:
        return refused(f"could not be parsed ({quote(str(error), 80)})")
    try:
        alt_names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return refused("has no subjectAltName extension")
    entries = list(alt_names)
    dns_names = alt_names.get_values_for_type(x509.DNSName)
    if len(entries) != 1 or len(dns_names) != 1 or dns_names[0].lower() != name:
        shown = ", ".join(quote(n) for n in dns_names[:4]) or "none"
        return refused(f"must name exactly one subjectAltName, the dNSName {name}; it has {len(entries)} "
                       f"(dNSNames: {shown})")
    try:
        extension = extensions.get_extension_for_oid(ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return refused("has no acmeIdentifier extension (1.3.6.1.5.5.7.1.31)")
    if not extension.critical:
        return refused("has an acmeIdentifier extension that is not marked critical (RFC 8737 3)")
    raw = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
    value = _octet_string(raw)
    if value is None or len(value) != len(digest):
        return refused("has an acmeIdentifier extension that is not the DER OCTET STRING of a SHA-256 digest")
    if not hmac.compare_digest(value, digest):
        return refused("carries an acmeIdentifier digest that is not SHA-256 of the key authorization")
    return None


def _octet_string(raw: bytes) -> bytes | None:
    """The contents of ``raw`` when it is exactly one DER OCTET STRING of 32 octets (header 04 20), else None."""
    if raw[:2] != b"\x04\x20":
        return None
    try:
        parsed = OctetString.load(raw, strict=True)
        contents = parsed.native
    except ValueError:
        return None
    if not isinstance(contents, bytes) or parsed.dump(force=True) != raw:
        return None
    return contents

"""TLS probe: which certificate does a server present? With verification on.

The probe trusts the CA chain that came with the certificate (or a configured
CA file): partial chains are accepted, so an issuing CA is a trust anchor
without its root. The host name (SNI and the name checked) is the configured
server name or the certificate's first DNS name.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from cryptography import x509

from services.common.contracts.errors import ErrorCode
from services.common.contracts.identity import normalise_serial
from services.deployer.targets.base import TargetError


def first_dns_name(certificate_pem: str) -> str | None:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = sans.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def probe_context(*, cafile: str | None = None, cadata: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, cadata=cadata)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context  # CERT_REQUIRED and check_hostname, as created


async def served_serial(host: str, port: int, server_name: str, context: ssl.SSLContext, *, timeout_s: float = 5.0) -> str:
    """The serial of the leaf the server presents (after a verified handshake)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=server_name), timeout_s
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return normalise_serial(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def wait_for_serial(
    host: str, port: int, server_name: str, context: ssl.SSLContext, expected: str, *, timeout_s: float,
    code: ErrorCode = ErrorCode.VERIFY_FAILED, interval_s: float = 0.1, confirmations: int = 3,
) -> str:
    """Probe until the server presents ``expected`` on ``confirmations`` connections in a
    row (after a reload, old workers may still answer a few connections while they
    drain) or ``timeout_s`` passes: then TargetError(``code``) with what was seen."""
    deadline = time.monotonic() + timeout_s
    seen = "nothing"
    in_a_row = 0
    while True:
        try:
            serial = await served_serial(host, port, server_name, context, timeout_s=min(5.0, timeout_s))
            if serial == expected:
                in_a_row += 1
                if in_a_row >= confirmations:
                    return serial
                await asyncio.sleep(interval_s)
                continue
            seen = f"serial {serial}"
        except ssl.SSLCertVerificationError as exc:
            seen = f"a certificate that does not verify ({exc.verify_message})"
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            seen = f"no TLS answer ({type(exc).__name__}: {exc})"
        in_a_row = 0
        if time.monotonic() >= deadline:
            raise TargetError(
                code, f"{host}:{port} ({server_name}) still presents {seen} after {timeout_s:g}s, not serial {expected}"
            )
        await asyncio.sleep(interval_s)


async def probe_for_serial(
    host: str, port: int, *, server_name: str | None, ca_file: str | None, certificate_pem: str, chain_pem: str,
    expected: str, timeout_s: float, code: ErrorCode,
) -> str:
    """`wait_for_serial` with the usual trust and name: ``ca_file`` or the certificate's own
    chain (partial chains allowed); ``server_name`` or the certificate's first DNS name."""
    name = server_name or first_dns_name(certificate_pem)
    if name is None:
        raise TargetError(code, "no server_name configured and the certificate has no DNS name to probe with")
    context = probe_context(cafile=ca_file) if ca_file else probe_context(cadata=chain_pem or certificate_pem)
    return await wait_for_serial(host, port, name, context, expected, timeout_s=timeout_s, code=code)

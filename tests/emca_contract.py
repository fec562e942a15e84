"""The contract every `EmcaConnection` passes: the fake (tests/unit/test_emca_fake_contract.py)
and the real client against the simulator (tests/integration/test_connectors_sim.py).

A subclass provides three fixtures:
- ``version``: the `EmcaVersion` under test (parametrise it to run every dialect);
- ``driver``: a `CaDriver`, what an emCA admin (or the fault injector) can do to that emCA;
- ``connection``: an open `EmcaConnection` for the driver's current credentials (closed after).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.emca.support import certificate_sha256, probe_csr_pem
from services.common.emca.types import (
    ConnectorFaultError,
    EmcaConnection,
    EmcaError,
    EmcaVersion,
    FailureKind,
    IssuedCertificate,
    PendingIssuance,
    RequestPermanentError,
    TransientError,
    UnsupportedOperation,
)


class CaDriver(Protocol):
    issuing_ca: str
    profile: str
    manual_profile: str
    subscriber_id: str

    def approve(self, request_id: str) -> None: ...
    def reject(self, request_id: str, reason: str) -> None: ...
    def set_down(self, down: bool) -> None: ...
    def rate_limit(self, retry_after_s: int) -> None: ...
    def server_errors(self, status: int) -> None: ...
    def clear_faults(self) -> None: ...
    def rotate_credentials(self) -> None: ...


def make_csr(*names: str) -> tuple[str, bytes]:
    """A CSR (PEM) for ``names`` and the DER SubjectPublicKeyInfo of its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return csr.public_bytes(serialization.Encoding.PEM).decode(), spki


def verify_issued(issued: IssuedCertificate, spki: bytes, issuing_ca_pem: str) -> x509.Certificate:
    """The certificate carries the CSR's key and was signed by the issuing CA; returns it."""
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(issuing_ca_pem.encode()))
    assert issued.serial == format(cert.serial_number, "x")
    return cert


def crl_url(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return next(str(name.value) for point in points for name in point.full_name or ())


async def raises(kind: type[EmcaError], code: ErrorCode, call: Callable[[], object]) -> EmcaError:
    with pytest.raises(kind) as info:
        await call()  # type: ignore[misc]
    assert info.value.code is code, repr(info.value)
    assert info.value.kind is kind.kind
    return info.value


class EmcaConnectionContract:
    """Behaviour shared by every implementation of `EmcaConnection`."""

    async def test_reports_its_version(self, connection: EmcaConnection, version: EmcaVersion) -> None:
        assert connection.version is version

    async def test_connection_cas_and_profiles(self, connection: EmcaConnection, driver: CaDriver) -> None:
        await connection.check_connection()
        cas = await connection.list_issuing_cas(via_profiles=[driver.profile])
        (ca,) = [c for c in cas if c.name == driver.issuing_ca]
        assert ca.sha256 == certificate_sha256(ca.certificate_pem)
        chain = await connection.get_chain(driver.issuing_ca)
        assert certificate_sha256(chain[0]) == ca.sha256
        profiles = {p.name: p for p in await connection.list_profiles(driver.issuing_ca)}
        assert {driver.profile, driver.manual_profile} <= set(profiles)
        assert await connection.list_profiles(driver.issuing_ca.lower()) == ()  # exact names only
        info = await connection.profile_info(driver.profile)
        assert (info.name, info.issuing_ca) == (driver.profile, driver.issuing_ca)
        await raises(RequestPermanentError, ErrorCode.CA_PROFILE_NOT_FOUND, lambda: connection.profile_info("No Such Profile"))

    async def test_submit_csr_issues_a_verified_certificate(self, connection: EmcaConnection, driver: CaDriver) -> None:
        csr, spki = make_csr("contract.example.com", "www.contract.example.com")
        issued = await connection.submit_csr(
            csr_pem=csr, profile_name=driver.profile, subscriber_id=driver.subscriber_id, application_id=str(uuid.uuid4())
        )
        assert isinstance(issued, IssuedCertificate)
        issuing_ca_pem = (await connection.get_chain(driver.issuing_ca))[0]
        cert = verify_issued(issued, spki, issuing_ca_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert set(sans) == {"contract.example.com", "www.contract.example.com"}
        if issued.chain_pem:
            assert certificate_sha256(issued.chain_pem[0]) == certificate_sha256(issuing_ca_pem)
        again = await connection.get_certificate(issued.serial.upper())
        assert (again.serial, again.certificate_pem.strip()) == (issued.serial, issued.certificate_pem.strip())

    async def test_application_id_dedupe_only_where_documented(
        self, connection: EmcaConnection, driver: CaDriver, version: EmcaVersion
    ) -> None:
        application_id = str(uuid.uuid4())
        outcomes = []
        for _ in range(2):
            csr, _spki = make_csr("dedupe.example.com")
            outcomes.append(
                await connection.submit_csr(
                    csr_pem=csr, profile_name=driver.profile, subscriber_id=driver.subscriber_id, application_id=application_id
                )
            )
        first, second = outcomes
        assert isinstance(first, IssuedCertificate) and isinstance(second, IssuedCertificate)
        if version is EmcaVersion.V4_0_17:  # documented: a known applicationId returns its certificate
            assert second.serial == first.serial
        else:  # 4.2.x: nothing documented; every submission is a new certificate
            assert second.serial != first.serial

    async def test_revoke_and_the_serial_is_in_the_crl(self, connection: EmcaConnection, driver: CaDriver, version: EmcaVersion) -> None:
        csr, spki = make_csr("revoke.example.com")
        issued = await connection.submit_csr(
            csr_pem=csr, profile_name=driver.profile, subscriber_id=driver.subscriber_id, application_id=str(uuid.uuid4())
        )
        assert isinstance(issued, IssuedCertificate)
        issuing_ca = x509.load_pem_x509_certificate((await connection.get_chain(driver.issuing_ca))[0].encode())
        cert = verify_issued(issued, spki, issuing_ca.public_bytes(serialization.Encoding.PEM).decode())
        revocation = await connection.revoke(issued.serial, RevocationReason.KEY_COMPROMISE, remarks="contract test")
        assert (revocation.serial, revocation.already_revoked) == (issued.serial, False)
        again = await connection.revoke(issued.serial, RevocationReason.KEY_COMPROMISE)
        assert again.already_revoked

        crl = x509.load_der_x509_crl(await connection.get_crl(driver.issuing_ca, distribution_point=crl_url(cert)))
        assert crl.is_signature_valid(issuing_ca.public_key())  # type: ignore[arg-type]
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
        if version is EmcaVersion.V4_0_17:
            with pytest.raises(UnsupportedOperation):
                await connection.get_crl(driver.issuing_ca)
        else:
            from_api = x509.load_der_x509_crl(await connection.get_crl(driver.issuing_ca))
            assert from_api.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    async def test_unknown_serial(self, connection: EmcaConnection) -> None:
        serial = "7" + uuid.uuid4().hex[:31]
        await raises(RequestPermanentError, ErrorCode.CERTIFICATE_NOT_FOUND, lambda: connection.get_certificate(serial))
        await raises(
            RequestPermanentError, ErrorCode.CERTIFICATE_NOT_FOUND, lambda: connection.revoke(serial, RevocationReason.SUPERSEDED)
        )

    async def test_pending_approval_is_polled_to_issued(self, connection: EmcaConnection, driver: CaDriver) -> None:
        csr, spki = make_csr("manual.example.com")
        pending = await connection.submit_csr(
            csr_pem=csr, profile_name=driver.manual_profile, subscriber_id=driver.subscriber_id, application_id=str(uuid.uuid4())
        )
        assert isinstance(pending, PendingIssuance) and pending.request_id
        still = await connection.poll_request(pending.request_id)
        assert isinstance(still, PendingIssuance) and still.request_id == pending.request_id
        driver.approve(pending.request_id)
        issued = await connection.poll_request(pending.request_id)
        assert isinstance(issued, IssuedCertificate)
        verify_issued(issued, spki, (await connection.get_chain(driver.issuing_ca))[0])

    async def test_rejected_approval_is_request_permanent(self, connection: EmcaConnection, driver: CaDriver) -> None:
        csr, _ = make_csr("rejected.example.com")
        pending = await connection.submit_csr(
            csr_pem=csr, profile_name=driver.manual_profile, subscriber_id=driver.subscriber_id, application_id=str(uuid.uuid4())
        )
        assert isinstance(pending, PendingIssuance)
        driver.reject(pending.request_id, "not this one")
        await raises(RequestPermanentError, ErrorCode.APPROVAL_REJECTED, lambda: connection.poll_request(pending.request_id))

    async def test_refused_csr_and_unknown_profile_are_request_permanent(self, connection: EmcaConnection, driver: CaDriver) -> None:
        def submit(csr: str, profile: str) -> Callable[[], object]:
            return lambda: connection.submit_csr(
                csr_pem=csr, profile_name=profile, subscriber_id=driver.subscriber_id, application_id=str(uuid.uuid4())
            )

        await raises(RequestPermanentError, ErrorCode.CA_REJECTED, submit(probe_csr_pem(), driver.profile))
        await raises(RequestPermanentError, ErrorCode.CA_PROFILE_NOT_FOUND, submit(make_csr("x.example.com")[0], "No Such Profile"))

    async def test_subscriber_check_issues_nothing(self, connection: EmcaConnection, driver: CaDriver) -> None:
        probe = await connection.check_subscriber(profile_name=driver.profile, subscriber_id=driver.subscriber_id)
        assert probe.issued_serial is None
        await raises(
            ConnectorFaultError,
            ErrorCode.SUBSCRIBER_INVALID,
            lambda: connection.check_subscriber(profile_name=driver.profile, subscriber_id="SUB-NO-SUCH"),
        )

    async def test_transient_failures(self, connection: EmcaConnection, driver: CaDriver) -> None:
        await connection.check_connection()
        try:
            driver.set_down(True)
            error = await raises(TransientError, ErrorCode.CA_UNREACHABLE, connection.check_connection)
            assert error.kind is FailureKind.TRANSIENT
            driver.set_down(False)
            driver.rate_limit(7)
            error = await raises(TransientError, ErrorCode.CA_UNREACHABLE, connection.check_connection)
            assert (error.http_status, error.retry_after) == (429, 7.0)
            driver.clear_faults()
            driver.server_errors(503)
            error = await raises(TransientError, ErrorCode.CA_UNREACHABLE, connection.check_connection)
            assert error.http_status == 503
        finally:
            driver.clear_faults()
        await connection.check_connection()

    async def test_rotated_credentials_are_a_connector_fault(self, connection: EmcaConnection, driver: CaDriver) -> None:
        await connection.check_connection()
        driver.rotate_credentials()
        error = await raises(ConnectorFaultError, ErrorCode.CA_AUTH_FAILED, connection.check_connection)
        assert error.kind is FailureKind.CONNECTOR_FAULT

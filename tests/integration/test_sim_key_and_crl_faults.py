"""The simulator's ``foreign_key`` and ``crl`` faults (emca_sim/faults.py), switched through its admin API and
seen by real clients: certrail's emCA client in both dialect families, its issuer's verification, and plain
HTTP on the CRL port (tests/e2e/test_prometheus_live.py fires CertrailIssuedCertificateMismatch and the CRL
alerts with them)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from emca_sim.faults import GARBAGE_CRL
from emca_sim.server import SimServer, start_in_thread
from services.common.emca.client import open_connection
from services.common.emca.types import EmcaVersion, IssuedCertificate
from services.issuer.verify import CertificateMismatch, verify_issued
from tests.emca_sim_helpers import sim_endpoint

pytestmark = pytest.mark.integration

PROFILE, SUBSCRIBER = "TLS Server", "SUB-0001"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-faults"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture
def admin(sim: SimServer) -> Iterator[httpx.Client]:
    """The admin API; every fault is cleared afterwards."""
    trust = ssl.create_default_context(cafile=str(sim.data_dir / "tls-ca.pem"))
    with httpx.Client(base_url=sim.endpoints.admin_url, verify=trust, timeout=10,
                      headers={"Authorization": f"Bearer {sim.admin_token}"}) as client:
        yield client
        client.delete("/admin/faults").raise_for_status()


def _faults(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = admin.post("/admin/faults", json=body)
    answer.raise_for_status()
    return dict(answer.json())


def _csr(name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _issue(sim: SimServer, version: EmcaVersion, csr_pem: str, application_id: str) -> IssuedCertificate:
    async def run() -> IssuedCertificate:
        async with open_connection(sim_endpoint(sim, version)) as connection:
            outcome = await connection.submit_csr(csr_pem=csr_pem, profile_name=PROFILE, subscriber_id=SUBSCRIBER,
                                                  application_id=application_id)
        assert isinstance(outcome, IssuedCertificate), outcome
        return outcome

    return asyncio.run(run())


def _spki(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("version", [EmcaVersion.V4_0_17, EmcaVersion.V4_2_4], ids=str)
@pytest.mark.parametrize("key_type", ["EC-P256", "RSA-2048"])
def test_foreign_key_issues_a_genuine_certificate_for_another_key(sim: SimServer, admin: httpx.Client,
                                                                  version: EmcaVersion, key_type: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "EC-P256" else rsa.generate_private_key(65537, 2048)
    name = f"foreign-{key_type.lower()}-{version.name.lower().replace('_', '-')}.example.test"
    csr_pem = _csr(name, key)
    chain = sim.backend.chain("certrail Sim Issuing CA P-256")
    pinned = sim.backend.hierarchy.issuing["certrail Sim Issuing CA P-256"].sha256

    assert _faults(admin, foreign_key=True)["foreign_key"] is True
    issued = _issue(sim, version, csr_pem, f"app-{name}")
    leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    # the CA's own certificate, with what the CSR asked for, but not for the CSR's key
    assert leaf.subject == x509.load_pem_x509_csr(csr_pem.encode()).subject
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [name]
    assert _spki(issued.certificate_pem) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert type(leaf.public_key()) is type(key.public_key())  # a key of the same type, so only the key differs
    with pytest.raises(CertificateMismatch):
        verify_issued(issued, csr_pem=csr_pem, requested_sans=[f"dns:{name}"], pinned_ca_sha256=pinned,
                      pinned_chain_pem=chain, now=datetime.now(UTC))

    assert _faults(admin, foreign_key=False)["foreign_key"] is False
    again = _issue(sim, version, _csr(name, key), f"app2-{name}")
    assert _spki(again.certificate_pem) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_crl_fault_answers_unavailable_or_garbage_and_clears(sim: SimServer, admin: httpx.Client) -> None:
    ca = sim.backend.hierarchy.issuing["certrail Sim Issuing CA P-256"]
    crl_url, ca_url = f"{sim.endpoints.crl_base_url}/crl/{ca.config.slug}.crl", f"{sim.endpoints.crl_base_url}/ca/{ca.config.slug}.crt"
    assert x509.load_der_x509_crl(httpx.get(crl_url).content).issuer == ca.certificate.subject

    assert _faults(admin, crl="unavailable")["crl"] == "unavailable"
    assert httpx.get(crl_url).status_code == 503
    assert httpx.get(ca_url).status_code == 200  # CA certificates are not affected

    assert _faults(admin, crl="garbage")["crl"] == "garbage"
    answer = httpx.get(crl_url)
    assert answer.status_code == 200 and answer.content == GARBAGE_CRL
    with pytest.raises(ValueError):
        x509.load_der_x509_crl(answer.content)

    assert _faults(admin, slow_ms=0)["crl"] == "garbage"  # a patch without it leaves it as it is
    assert _faults(admin, crl=None)["crl"] is None
    assert x509.load_der_x509_crl(httpx.get(crl_url).content).issuer == ca.certificate.subject
    assert admin.post("/admin/faults", json={"crl": "sometimes"}).status_code == 422

    _faults(admin, crl="unavailable", foreign_key=True)
    cleared = admin.delete("/admin/faults").json()
    assert cleared["crl"] is None and cleared["foreign_key"] is False
    assert httpx.get(crl_url).status_code == 200

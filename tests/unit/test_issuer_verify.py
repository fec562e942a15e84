"""`services.issuer.verify.verify_issued`: a certificate emCA returned, held against its CSR, the
requested SANs and the pinned issuing CA. Throwaway CAs and leaves are built here with cryptography."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from services.common.contracts.errors import ErrorCode
from services.common.emca.support import certificate_sha256
from services.common.emca.types import IssuedCertificate
from services.issuer.verify import CLOCK_SKEW, CertificateMismatch, VerifiedCertificate, verify_issued

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SERIAL = 0x1A2B3C4D5E
CA_NAME = "certrail Test Issuing CA"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certrail"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Ca:
    key: PrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> str:
        return _pem(self.certificate)

    @property
    def sha256(self) -> str:
        return certificate_sha256(self.pem)


def make_ca(common_name: str = CA_NAME, *, key: PrivateKey | None = None, signer: Ca | None = None) -> Ca:
    """A CA certificate: self-signed, or signed by ``signer`` (an issuing CA under a root)."""
    key = key or _p256()
    issuer_name, issuer_key = (signer.certificate.subject, signer.key) if signer else (_name(common_name), key)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return Ca(key, certificate)


def make_leaf(
    ca: Ca,
    key: PrivateKey,
    *sans: x509.GeneralName,
    serial: int = SERIAL,
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(days=90),
    issuer_name: x509.Name | None = None,
) -> str:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("www.example.com"))
        .issuer_name(issuer_name or ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return _pem(builder.sign(ca.key, hashes.SHA256()))


def make_csr(key: PrivateKey, *sans: x509.GeneralName) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name("www.example.com"))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode("ascii")


def dns(name: str) -> x509.DNSName:
    return x509.DNSName(name)


def ip(address: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(address))


@dataclass(frozen=True)
class World:
    root: Ca
    ca: Ca  # the pinned issuing CA, under root
    impostor: Ca  # same name as ca, another key
    stranger: Ca  # another name, another key
    key: ec.EllipticCurvePrivateKey  # the requester's key
    csr_pem: str  # for key, asking for dns:www.example.com and dns:api.example.com

    @property
    def pinned_chain(self) -> tuple[str, str]:
        return (self.ca.pem, self.root.pem)


@pytest.fixture(scope="module")
def world() -> World:
    root = make_ca("certrail Test Root CA")
    key = _p256()
    return World(
        root=root,
        ca=make_ca(signer=root),
        impostor=make_ca(),
        stranger=make_ca("Somebody Else CA"),
        key=key,
        csr_pem=make_csr(key, dns("www.example.com"), dns("api.example.com")),
    )


def issued_by(world: World, *sans: x509.GeneralName, ca: Ca | None = None, key: PrivateKey | None = None,
              chain: tuple[str, ...] = (), serial: str | None = None, **leaf: Any) -> IssuedCertificate:
    """What emCA returns: a leaf for the world's key signed by its pinned CA, unless told otherwise."""
    pem = make_leaf(ca or world.ca, key or world.key, *sans, **leaf)
    return IssuedCertificate(serial=serial or format(leaf.get("serial", SERIAL), "x"), certificate_pem=pem, chain_pem=chain)


def verify(world: World, issued: IssuedCertificate, **overrides: Any) -> VerifiedCertificate:
    arguments: dict[str, Any] = {
        "csr_pem": world.csr_pem,
        "requested_sans": ("dns:www.example.com", "dns:api.example.com"),
        "pinned_ca_sha256": world.ca.sha256,
        "pinned_chain_pem": world.pinned_chain,
        "now": NOW,
    }
    arguments.update(overrides)
    return verify_issued(issued, **arguments)


def mismatch(world: World, issued: IssuedCertificate, **overrides: Any) -> CertificateMismatch:
    with pytest.raises(CertificateMismatch) as caught:
        verify(world, issued, **overrides)
    assert caught.value.code is ErrorCode.CERTIFICATE_MISMATCH
    assert str(caught.value) == f"CERTIFICATE_MISMATCH: {caught.value.message}"
    return caught.value


# -- what passes ---------------------------------------------------------------------------------


def test_a_matching_certificate_is_verified_with_its_facts(world: World) -> None:
    issued = issued_by(world, dns("www.example.com"), dns("api.example.com"), ip("192.0.2.10"))

    verified = verify(world, issued, requested_sans=["ip:192.0.2.10", "dns:www.example.com", "dns:api.example.com"])

    leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    spki = world.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert verified == VerifiedCertificate(
        serial="1a2b3c4d5e",
        certificate_pem=issued.certificate_pem,
        chain_pem=world.pinned_chain,
        subject="CN=www.example.com,O=certrail",
        issuer=f"CN={CA_NAME},O=certrail",
        sans=("dns:api.example.com", "dns:www.example.com", "ip:192.0.2.10"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        public_key_sha256=hashlib.sha256(spki).hexdigest(),
    )
    assert verified.not_before.tzinfo is UTC and verified.not_after == NOW + timedelta(days=90)


@pytest.mark.parametrize(
    ("certificate_sans", "requested", "announced"),
    [
        pytest.param([dns("a.example"), dns("b.example")], ["dns:b.example", "dns:a.example"], ("dns:a.example", "dns:b.example"),
                     id="order-irrelevant"),
        pytest.param([dns("WWW.Example.COM")], ["dns:www.example.com"], ("dns:www.example.com",), id="dns-case-in-certificate"),
        pytest.param([dns("www.example.com")], ["dns:WWW.EXAMPLE.com"], ("dns:www.example.com",), id="dns-case-requested"),
        pytest.param([ip("2001:db8::1")], ["ip:2001:0db8:0000:0:0:0:0:1"], ("ip:2001:db8::1",), id="ipv6-normalised"),
        pytest.param([ip("2001:db8::1")], ["ip:2001:DB8::1"], ("ip:2001:db8::1",), id="ipv6-upper-case"),
        pytest.param([x509.RFC822Name("Ops@Example.COM")], ["email:Ops@example.com"], ("email:Ops@example.com",),
                     id="email-domain-case"),
        pytest.param([x509.UniformResourceIdentifier("spiffe://example.com/web")], ["uri:spiffe://example.com/web"],
                     ("uri:spiffe://example.com/web",), id="uri"),
        pytest.param([dns("a.example"), dns("a.example")], ["dns:a.example"], ("dns:a.example",), id="duplicates-as-a-set"),
    ],
)
def test_sans_compare_as_normalised_sets(
    world: World, certificate_sans: list[x509.GeneralName], requested: list[str], announced: tuple[str, ...]
) -> None:
    assert verify(world, issued_by(world, *certificate_sans), requested_sans=requested).sans == announced


def test_no_requested_sans_means_the_csrs_sans(world: World) -> None:
    issued = issued_by(world, dns("API.example.com"), dns("www.example.com"))

    assert verify(world, issued, requested_sans=[]).sans == ("dns:api.example.com", "dns:www.example.com")


def test_a_csr_without_sans_and_none_requested_wants_a_certificate_without_sans(world: World) -> None:
    assert verify(world, issued_by(world), csr_pem=make_csr(world.key), requested_sans=()).sans == ()


def test_emcas_chain_may_repeat_the_pinned_ca_in_its_own_formatting(world: World) -> None:
    reformatted = "\r\n".join(world.ca.pem.splitlines()) + "\r\n"
    issued = issued_by(world, dns("www.example.com"), dns("api.example.com"), chain=(reformatted,))

    assert verify(world, issued).chain_pem == world.pinned_chain  # the pinned chain is the one announced


def test_the_leaf_pem_is_normalised(world: World) -> None:
    issued = issued_by(world, dns("www.example.com"), dns("api.example.com"))
    messy = dataclasses.replace(issued, certificate_pem="Bag Attributes: none\r\n" + issued.certificate_pem.replace("\n", "\r\n"))

    assert verify(world, messy).certificate_pem == issued.certificate_pem


def test_the_reported_serial_is_normalised_before_comparing(world: World) -> None:
    issued = issued_by(world, dns("www.example.com"), dns("api.example.com"), serial="00:1A:2B:3C:4D:5E")

    assert verify(world, issued).serial == "1a2b3c4d5e"


def test_not_before_up_to_the_clock_skew_ahead_is_accepted(world: World) -> None:
    issued = issued_by(world, dns("www.example.com"), dns("api.example.com"), not_before=NOW + CLOCK_SKEW)

    assert verify(world, issued).not_before == NOW + CLOCK_SKEW


def test_rsa_ca_and_rsa_leaf(world: World) -> None:
    ca = make_ca("certrail Test RSA CA", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = issued_by(world, dns("rsa.example.com"), ca=ca, key=key, chain=(ca.pem,))

    verified = verify(world, issued, csr_pem=make_csr(key, dns("rsa.example.com")), requested_sans=[],
                      pinned_ca_sha256=ca.sha256, pinned_chain_pem=[ca.pem])

    assert verified.issuer == "CN=certrail Test RSA CA,O=certrail" and verified.chain_pem == (ca.pem,)


def test_now_must_be_aware(world: World) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(world, issued_by(world, dns("www.example.com"), dns("api.example.com")), now=NOW.replace(tzinfo=None))


# -- what fails, and how it is named -------------------------------------------------------------

BOTH = (dns("www.example.com"), dns("api.example.com"))
Case = Callable[[World], tuple[IssuedCertificate, dict[str, Any]]]


def _garbage(pem: str) -> Case:
    return lambda w: (IssuedCertificate(serial="1", certificate_pem=pem, chain_pem=()), {})


MISMATCHES: list[Any] = [
    pytest.param(_garbage("this is not a certificate"), "certificate_pem holds 0 PEM blocks", id="garbage"),
    pytest.param(_garbage("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                 "certificate_pem is not a PEM X.509 certificate", id="garbage-inside-pem"),
    pytest.param(lambda w: (dataclasses.replace(issued := issued_by(w, *BOTH), certificate_pem=issued.certificate_pem + w.ca.pem), {}),
                 "certificate_pem holds 2 PEM blocks, expected exactly one certificate", id="two-certificates"),
    pytest.param(lambda w: (issued_by(w, *BOTH, serial="abc"), {}),
                 "serial differs: emCA reported abc, the certificate's serial is 1a2b3c4d5e", id="serial-differs"),
    pytest.param(lambda w: (issued_by(w, *BOTH, serial="not-hex"), {}), "serial differs: emCA reported 'not-hex'",
                 id="serial-unreadable"),
    pytest.param(lambda w: (issued_by(w, *BOTH), {"csr_pem": "not a csr"}), "the CSR does not parse", id="garbage-csr"),
    pytest.param(lambda w: (issued_by(w, *BOTH, key=_p256()), {}), "public key differs from the CSR's: certificate key sha256 ",
                 id="another-key"),
    pytest.param(lambda w: (issued_by(w, *BOTH), {"pinned_chain_pem": ()}), "no pinned chain", id="nothing-pinned"),
    pytest.param(lambda w: (issued_by(w, *BOTH), {"pinned_ca_sha256": "0" * 64}),
                 f"the pin is inconsistent: the pinned chain starts with CN={CA_NAME},O=certrail (sha256 ", id="pin-sha-differs"),
    pytest.param(lambda w: (issued_by(w, *BOTH), {"pinned_chain_pem": ("garbage",)}),
                 "the pinned issuing CA certificate does not parse", id="pinned-ca-garbage"),
    pytest.param(lambda w: (issued_by(w, *BOTH, chain=(w.stranger.pem, w.root.pem)), {}),
                 "emCA's chain starts with CN=Somebody Else CA,O=certrail (sha256 ", id="emca-chain-another-ca"),
    pytest.param(lambda w: (issued_by(w, *BOTH, chain=(w.root.pem,)), {}),
                 "emCA's chain starts with CN=certrail Test Root CA,O=certrail", id="emca-chain-starts-at-root"),
    pytest.param(lambda w: (issued_by(w, *BOTH, chain=("garbage",)), {}),
                 "emCA's chain does not start with a certificate", id="emca-chain-garbage"),
    pytest.param(lambda w: (issued_by(w, *BOTH, ca=w.stranger), {}),
                 f"issuer differs: the certificate names CN=Somebody Else CA,O=certrail, the pinned issuing CA is CN={CA_NAME}",
                 id="another-ca"),
    pytest.param(lambda w: (issued_by(w, *BOTH, issuer_name=_name("Somebody Else CA")), {}),
                 "issuer differs: the certificate names CN=Somebody Else CA,O=certrail", id="issuer-name-differs"),
    pytest.param(lambda w: (issued_by(w, *BOTH, ca=w.impostor), {}),
                 "signature does not verify: the certificate was not signed by the pinned issuing CA", id="same-name-another-ca-key"),
    pytest.param(lambda w: (issued_by(w, dns("www.example.com")), {}), "SANs differ: missing dns:api.example.com", id="san-missing"),
    pytest.param(lambda w: (issued_by(w, *BOTH, ip("192.0.2.1")), {}), "SANs differ: unexpected ip:192.0.2.1", id="san-extra"),
    pytest.param(lambda w: (issued_by(w, dns("a.example"), dns("c.example")), {"requested_sans": ["dns:a.example", "dns:b.example"]}),
                 "SANs differ: missing dns:b.example, unexpected dns:c.example", id="san-swapped"),
    pytest.param(lambda w: (issued_by(w), {}), "SANs differ: missing dns:api.example.com, dns:www.example.com", id="no-san-extension"),
    pytest.param(lambda w: (issued_by(w, *BOTH), {"requested_sans": ["ip:not-an-ip"]}), "missing ip:not-an-ip", id="san-unparseable-ip"),
    pytest.param(lambda w: (issued_by(w, *BOTH, x509.DirectoryName(_name("x"))), {}), "unexpected dirname:CN=x,O=certrail",
                 id="san-directory-name"),
    pytest.param(lambda w: (issued_by(w, dns("www.example.com")), {"requested_sans": []}),
                 "SANs differ: missing dns:api.example.com (none requested: compared with the CSR's SANs)", id="san-csr-fallback"),
    pytest.param(lambda w: (issued_by(w, *BOTH, not_after=NOW - timedelta(seconds=1)), {}), "already expired: notAfter 2025-06-01T11:59:59",
                 id="expired"),
    pytest.param(lambda w: (issued_by(w, *BOTH, not_after=NOW), {}), "already expired: notAfter 2025-06-01T12:00:00", id="expires-now"),
    pytest.param(lambda w: (issued_by(w, *BOTH, not_before=NOW + CLOCK_SKEW + timedelta(seconds=1)), {}),
                 "not yet valid: notBefore 2025-06-01T12:05:01+00:00 is more than 5 minutes after now", id="not-yet-valid"),
]


@pytest.mark.parametrize(("case", "message"), MISMATCHES)
def test_mismatches_are_named(world: World, case: Case, message: str) -> None:
    issued, overrides = case(world)

    assert message in mismatch(world, issued, **overrides).message

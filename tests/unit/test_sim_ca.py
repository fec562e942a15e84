"""The emCA simulator's CA core (`emca_sim.state.SimEmca` over `emca_sim.ca`): issuing, rejections, approval,
revocation and CRLs, persistence, counters, registered applications."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from emca_sim.backend import Counters, Dialect, Issued, Pending, SimBackend, SimError, SimErrorKind
from emca_sim.config import ProfileConfig, SanRules, SimConfig, load_config, slugify
from emca_sim.state import RequestSettled, SimEmca

P256_CA, RSA_CA = "certrail Sim Issuing CA P-256", "certrail Sim Issuing CA RSA"
BASE = "http://crl.sim.test:8080"


def _config() -> SimConfig:
    defaults = SimConfig()
    restricted = ProfileConfig(
        name="Restricted", profile_id="2001", issuing_ca=P256_CA, validity_days=30, key_types=("EC-P256",),
        extended_key_usages=("serverAuth", "clientAuth"),
        san=SanRules(dns_suffixes=("example.com",), allow_wildcards=False, allow_ip=False, max_sans=2))
    return defaults.model_copy(update={"profiles": (*defaults.profiles, restricted)})


def make_csr(*names: str, cn: str | None = None, key: object | None = None, extra: list[x509.GeneralName] | None = None,
             der: bool = False) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    sans.extend(extra or [])
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    if der:
        return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emca-sim")


@pytest.fixture(scope="module")
def sim(sim_dir: Path) -> Iterator[SimEmca]:
    with SimEmca(sim_dir, _config(), public_base_url=BASE) as backend:
        yield backend


def issue(sim: SimEmca, csr: str, profile: str = "TLS Server", application_id: str | None = None,
          dedupe: bool = False, subscriber: str = "SUB-0001") -> Issued | Pending:
    return sim.issue(profile=profile, subscriber_id=subscriber, csr_pem=csr, application_id=application_id,
                     dedupe_by_application_id=dedupe)


def issued(sim: SimEmca, csr: str, profile: str = "TLS Server", **kwargs: object) -> Issued:
    result = issue(sim, csr, profile, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Issued)
    return result


def test_implements_the_backend_protocol(sim: SimEmca) -> None:
    backend: SimBackend = sim
    assert {p.name for p in backend.profiles()} >= {"TLS Server", "TLS Server RSA", "TLS Client", "TLS Server Manual"}
    assert [ca.name for ca in backend.cas()] == [P256_CA, RSA_CA]
    assert backend.profile_by_id("1002") == backend.profile("TLS Server RSA")
    assert backend.profile("tls server") is None  # names match exactly, as in emCA
    assert backend.subscriber_exists("SUB-0001") and not backend.subscriber_exists("SUB-9999")


@pytest.mark.parametrize(("profile", "ca_name", "key_type"), [("TLS Server", P256_CA, "EC-P256"), ("TLS Server RSA", RSA_CA, "RSA-2048")])
def test_issued_certificate_has_the_profile_extensions(sim: SimEmca, profile: str, ca_name: str, key_type: str) -> None:
    result = issued(sim, make_csr("www.example.com", "10.0.0.1", cn="www.example.com"), profile, application_id="ext-1")
    cert = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    ca_info = next(ca for ca in sim.cas() if ca.name == ca_name)
    ca_cert = x509.load_pem_x509_certificate(ca_info.certificate_pem.encode())
    assert ca_info.key_type == key_type
    assert ca_info.sha256 == hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    cert.verify_directly_issued_by(ca_cert)
    assert result.chain_pem == sim.chain(ca_name) and result.chain_pem[0] == ca_info.certificate_pem
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = ext.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature and not key_usage.value.key_encipherment  # EC key
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["www.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key())  # type: ignore[arg-type]
    slug = slugify(ca_name)
    cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [f"{BASE}/crl/{slug}.crl"]
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{BASE}/ca/{slug}.crt")]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=90, minutes=1)
    assert cert.subject.rfc4514_string() == "CN=www.example.com"
    assert (result.profile, result.subscriber_id, result.application_id) == (profile, "SUB-0001", "ext-1")


def test_rsa_keys_get_key_encipherment_and_profile_ekus(sim: SimEmca) -> None:
    cert = x509.load_pem_x509_certificate(issued(sim, make_csr(cn="client-7", key=rsa.generate_private_key(65537, 2048)),
                                                 "TLS Client").certificate_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment is False  # TLS Client: digitalSignature only
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):  # no SAN asked for, none required by the profile
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    server = x509.load_pem_x509_certificate(issued(sim, make_csr("a.example.com", key=rsa.generate_private_key(65537, 2048)),
                                                   "TLS Server RSA").certificate_pem.encode())
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment is True


def test_empty_subject_makes_the_san_critical_and_der_csrs_are_accepted(sim: SimEmca) -> None:
    cert = x509.load_pem_x509_certificate(issued(sim, make_csr("bare.example.com", der=True)).certificate_pem.encode())
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_serials_are_random_positive_16_byte_integers(sim: SimEmca) -> None:
    csr = make_csr("serial.example.com")
    serials = [issued(sim, csr).serial for _ in range(64)]
    assert len(set(serials)) == 64
    for serial in serials:
        cert = sim.certificate(serial)
        number = x509.load_pem_x509_certificate(cert.certificate_pem.encode()).serial_number
        assert format(number, "032x") == serial and len(serial) == 32
        assert 0 < number and number.bit_length() // 8 + 1 == 16  # a positive DER INTEGER with exactly 16 content bytes
    assert len({s[:4] for s in serials}) > 32  # not a counter: the high bits differ too


@pytest.mark.parametrize(
    ("profile", "csr_factory", "detail"),
    [
        ("TLS Server", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "could not be parsed"),
        ("TLS Server", lambda: "not base64 at all!", "could not be parsed"),
        ("TLS Server", lambda: _tampered_csr(), "signature is invalid"),
        ("TLS Server", lambda: make_csr("a.example.com", key=rsa.generate_private_key(65537, 1024)), "RSA-1024 is not allowed"),
        ("TLS Server", lambda: make_csr("a.example.com", key=ed25519.Ed25519PrivateKey.generate()), "Ed25519 is not allowed"),
        ("Restricted", lambda: make_csr("a.example.com", key=rsa.generate_private_key(65537, 2048)), "RSA-2048 is not allowed"),
        ("Restricted", lambda: make_csr("a.example.org"), "outside the DNS suffixes"),
        ("Restricted", lambda: make_csr("notexample.com"), "outside the DNS suffixes"),
        ("Restricted", lambda: make_csr("*.example.com"), "wildcard"),
        ("Restricted", lambda: make_csr("a.example.com", "192.0.2.1"), "IP address"),
        ("Restricted", lambda: make_csr("a.example.com", "b.example.com", "c.example.com"), "allows 2"),
        ("Restricted", lambda: make_csr("a.example.com", cn="evil.example.net"), "outside the DNS suffixes"),
        ("TLS Server", lambda: make_csr(cn="no san here"), "requires a subject alternative name"),
        ("TLS Server", lambda: make_csr("bad_name.example.com"), "not a valid DNS name"),
        ("TLS Server", lambda: make_csr("*.com"), "too broad"),
        ("TLS Server", lambda: make_csr(extra=[x509.RFC822Name("a@example.com")]), "of a type"),
    ],
    ids=["garbage-pem", "garbage-der", "bad-signature", "rsa-1024", "ed25519", "key-type-not-in-profile", "suffix",
         "suffix-boundary", "wildcard", "ip", "too-many-sans", "cn-checked-too", "no-san", "invalid-dns", "broad-wildcard",
         "email-san"],
)
def test_csr_rejections(sim: SimEmca, profile: str, csr_factory: object, detail: str) -> None:
    with pytest.raises(SimError) as raised:
        issue(sim, csr_factory(), profile)  # type: ignore[operator]
    assert raised.value.kind is SimErrorKind.CSR_REJECTED
    assert detail in raised.value.detail


def _tampered_csr() -> str:
    der = bytearray(x509.load_pem_x509_csr(make_csr("a.example.com", key=rsa.generate_private_key(65537, 2048)).encode())
                    .public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the RSA signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def test_profile_rules_accept_what_they_allow(sim: SimEmca) -> None:
    result = issued(sim, make_csr("example.com", "deep.sub.example.com"), "Restricted")
    cert = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "example.com", "deep.sub.example.com"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    issued(sim, make_csr("*.example.com"))  # TLS Server allows wildcards


def test_unknown_profile_and_subscriber(sim: SimEmca) -> None:
    csr = make_csr("a.example.com")
    with pytest.raises(SimError) as raised:
        issue(sim, csr, "No Such Profile")
    assert raised.value.kind is SimErrorKind.UNKNOWN_PROFILE
    with pytest.raises(SimError) as raised:
        issue(sim, csr, subscriber="SUB-9999")
    assert raised.value.kind is SimErrorKind.UNKNOWN_SUBSCRIBER


def test_application_id_dedupe_only_when_asked(sim: SimEmca) -> None:
    first = issued(sim, make_csr("d.example.com"), application_id="dedupe-on", dedupe=True)
    again = issued(sim, make_csr("other.example.com"), application_id="dedupe-on", dedupe=True)
    assert again == first
    assert sim.counters().issued_by_application_id["dedupe-on"] == 1
    one = issued(sim, make_csr("d.example.com"), application_id="dedupe-off")
    two = issued(sim, make_csr("d.example.com"), application_id="dedupe-off")
    assert one.serial != two.serial
    assert sim.counters().issued_by_application_id["dedupe-off"] == 2


def test_concurrent_requests_with_one_application_id_yield_one_certificate(sim: SimEmca) -> None:
    csr = make_csr("race.example.com")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: issued(sim, csr, application_id="race-1", dedupe=True), range(16)))
    assert len({r.serial for r in results}) == 1
    assert sim.counters().issued_by_application_id["race-1"] == 1


def test_counters(sim: SimEmca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for _ in range(3):
        issued(sim, make_csr("c.example.com", key=key))
    sim.count_request("createCertificate")
    sim.count_request("createCertificate")
    sim.count_request("revoke")
    counters = sim.counters()
    assert counters.issued_by_public_key_sha256[hashlib.sha256(spki).hexdigest()] == 3
    assert counters.requests_by_method["createCertificate"] >= 2 and counters.requests_by_method["revoke"] >= 1


def test_manual_approval(sim: SimEmca) -> None:
    held = issue(sim, make_csr("m.example.com"), "TLS Server Manual", application_id="manual-1", dedupe=True)
    assert isinstance(held, Pending) and held.state == "pending" and held.issued is None
    assert issue(sim, make_csr("m.example.com"), "TLS Server Manual", application_id="manual-1", dedupe=True) == held
    assert sim.pending(held.request_id).state == "pending"
    assert held.request_id in {p.request_id for p in sim.pending_requests()}
    approved = sim.approve(held.request_id)
    assert approved.state == "approved" and approved.issued is not None
    assert sim.pending(held.request_id) == approved == sim.approve(held.request_id)
    assert sim.certificate(approved.issued.serial).application_id == "manual-1"
    assert issue(sim, make_csr("m.example.com"), "TLS Server Manual", application_id="manual-1", dedupe=True) == approved.issued
    other = issue(sim, make_csr("m2.example.com"), "TLS Server Manual")
    assert isinstance(other, Pending)
    rejected = sim.reject(other.request_id, "not today")
    assert (rejected.state, rejected.rejection) == ("rejected", "not today")
    with pytest.raises(RequestSettled):
        sim.approve(other.request_id)
    with pytest.raises(SimError) as raised:
        sim.pending("no-such-request")
    assert raised.value.kind is SimErrorKind.NOT_FOUND
    with pytest.raises(SimError) as raised:  # a bad CSR is refused at submission, not at approval
        issue(sim, make_csr("x.example.com", key=rsa.generate_private_key(65537, 1024)), "TLS Server Manual")
    assert raised.value.kind is SimErrorKind.CSR_REJECTED


def _crl(sim: SimEmca, ca_name: str) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(sim.crl_der(ca_name))


def test_revocation_and_crl(sim: SimEmca) -> None:
    before = _crl(sim, P256_CA)
    ca_cert = x509.load_pem_x509_certificate(sim.chain(P256_CA)[0].encode())
    assert before.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    victim = issued(sim, make_csr("r.example.com"))
    held = issued(sim, make_csr("h.example.com"))
    plain = issued(sim, make_csr("u.example.com"))
    revoked = sim.revoke(victim.serial.upper(), "KeyCompromise")
    assert revoked.revocation_reason == "keyCompromise" and revoked.revoked_at is not None
    sim.revoke(held.serial, "certificateHold")
    sim.revoke(plain.serial, "unspecified")
    crl = _crl(sim, P256_CA)
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None and crl.next_update_utc - crl.last_update_utc == timedelta(hours=24)
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == (
        ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    entry = crl.get_revoked_certificate_by_serial_number(int(victim.serial, 16))
    assert entry is not None and entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    hold = crl.get_revoked_certificate_by_serial_number(int(held.serial, 16))
    assert hold is not None and hold.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.certificate_hold
    unspecified = crl.get_revoked_certificate_by_serial_number(int(plain.serial, 16))
    assert unspecified is not None and len(unspecified.extensions) == 0  # RFC 5280: no reasonCode for unspecified
    assert sim.crl_der(P256_CA) == sim.crl_der(P256_CA)  # unchanged state: the cached CRL
    assert _crl(sim, RSA_CA).get_revoked_certificate_by_serial_number(int(victim.serial, 16)) is None
    with pytest.raises(SimError) as raised:
        sim.revoke(victim.serial, "superseded")
    assert raised.value.kind is SimErrorKind.ALREADY_REVOKED
    assert sim.reinstate(held.serial).revoked_at is None
    assert _crl(sim, P256_CA).get_revoked_certificate_by_serial_number(int(held.serial, 16)) is None
    sim.revoke(held.serial, "certificateHold")
    assert sim.revoke(held.serial, "cessationOfOperation").revocation_reason == "cessationOfOperation"


@pytest.mark.parametrize(("call", "kind"), [
    (lambda s: s.revoke("00" * 16, "keyCompromise"), SimErrorKind.NOT_FOUND),
    (lambda s: s.certificate("zz-not-hex"), SimErrorKind.NOT_FOUND),
    (lambda s: s.revoke(issued(s, make_csr("q.example.com")).serial, "removeFromCRL"), SimErrorKind.MISSING_PARAMETER),
    (lambda s: s.crl_der("No Such CA"), SimErrorKind.UNKNOWN_CA),
    (lambda s: s.chain("No Such CA"), SimErrorKind.UNKNOWN_CA),
])
def test_lookup_errors(sim: SimEmca, call: object, kind: SimErrorKind) -> None:
    with pytest.raises(SimError) as raised:
        call(sim)  # type: ignore[operator]
    assert raised.value.kind is kind


def test_replay_store(sim: SimEmca) -> None:
    assert sim.remember_txn("certrail-v423", "txn-1") is True
    assert sim.remember_txn("certrail-v423", "txn-1") is False
    assert sim.remember_txn("certrail-v424", "txn-1") is True


def test_files_written_for_clients_and_admins(sim: SimEmca, sim_dir: Path) -> None:
    tls_ca = x509.load_pem_x509_certificates((sim_dir / "tls-ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((sim_dir / "tls-server.pem").read_bytes())
    server.verify_directly_issued_by(tls_ca[0])
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(names.get_values_for_type(x509.IPAddress))
    chain = x509.load_pem_x509_certificates((sim_dir / "ca-chain.pem").read_bytes())
    assert [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in chain] == [
        P256_CA, RSA_CA, "certrail Sim Root CA"]
    assert tls_ca[0].subject != chain[-1].subject  # the TLS root is not the issuing hierarchy's root
    keys = sorted((sim_dir / "private").iterdir())
    assert len(keys) == 5  # root, two issuing CAs, TLS root, TLS server
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_registered_application_material(sim: SimEmca, sim_dir: Path) -> None:
    v4017 = sim.application("certrail-v4017")
    assert v4017 is not None and v4017.dialect is Dialect.V4_0_17 and v4017.source_addresses == ("127.0.0.1", "::1")
    folder = sim_dir / "applications" / "certrail-v4017"
    creds = json.loads((folder / "credentials.json").read_text())
    assert creds["username"] == "certrail-v4017" and creds["dialect"] == "V4.0.17"
    key, cert, extra = pkcs12.load_key_and_certificates((folder / creds["pfx_file"]).read_bytes(), creds["pfx_password"].encode())
    assert key is not None and cert is not None and len(extra) == 2
    assert cert.public_bytes(serialization.Encoding.PEM).decode() == v4017.signer_certificate_pem
    cert.verify_directly_issued_by(extra[0])
    assert bytes.fromhex((folder / creds["aes_key_file"]).read_text().strip()) == v4017.aes_key and len(v4017.aes_key or b"") == 32
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for username, dialect in (("certrail-v423", Dialect.V4_2_3), ("certrail-v424", Dialect.V4_2_4)):
        app = sim.application(username)
        assert app is not None and app.dialect is dialect and app.aes_key is None and app.client_id
        assert sim.application_by_client_id(app.client_id) == app
        creds = json.loads((sim_dir / "applications" / username / "credentials.json").read_text())
        assert (creds["password"], creds["client_id"], creds["dialect"]) == (app.password, app.client_id, dialect.value)
    assert sim.application("nobody") is None and sim.application_by_client_id("nobody") is None


def test_password_rotation(tmp_path: Path) -> None:
    with SimEmca(tmp_path) as sim:
        old = sim.application("certrail-v423")
        assert old is not None and old.client_id is not None
        new = sim.rotate_credentials("certrail-v423")
        assert new.password != old.password and new.client_id != old.client_id
        assert sim.application("certrail-v423") == new and sim.application_by_client_id(old.client_id) is None
        creds = json.loads((tmp_path / "applications" / "certrail-v423" / "credentials.json").read_text())
        assert (creds["password"], creds["client_id"]) == (new.password, new.client_id)
        v4017 = sim.rotate_credentials("certrail-v4017")
        assert v4017.aes_key is not None and v4017.signer_certificate_pem is not None  # only the password changes
        with pytest.raises(SimError):
            sim.rotate_credentials("nobody")
    with SimEmca(tmp_path) as again:
        assert again.application("certrail-v423") == new and again.application("certrail-v4017") == v4017


def test_state_survives_a_restart(tmp_path: Path) -> None:
    config = _config()
    with SimEmca(tmp_path, config, public_base_url=BASE) as first:
        cas = first.cas()
        kept = issued(first, make_csr("keep.example.com"), application_id="restart-1", dedupe=True)
        first.revoke(issued(first, make_csr("gone.example.com")).serial, "superseded")
        held = issue(first, make_csr("wait.example.com"), "TLS Server Manual")
        assert isinstance(held, Pending)
        first.count_request("getCertificate")
        first.remember_txn("certrail-v424", "t-1")
        number = _crl(first, P256_CA).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        apps = first.applications()
    with SimEmca(tmp_path, config, public_base_url=BASE) as second:
        assert second.cas() == cas and second.applications() == apps
        assert issued(second, make_csr("x.example.com"), application_id="restart-1", dedupe=True) == kept
        assert second.pending(held.request_id).state == "pending"
        assert second.approve(held.request_id).issued is not None
        assert second.counters().requests_by_method["getCertificate"] == 1
        assert second.counters().issued_by_application_id["restart-1"] == 1
        assert second.remember_txn("certrail-v424", "t-1") is False
        crl = _crl(second, P256_CA)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
        assert len(list(crl)) == 1


def test_issuance_counters_survive_a_restart_and_a_reset(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_hash = hashlib.sha256(spki).hexdigest()
    with SimEmca(tmp_path, _config(), public_base_url=BASE) as first:
        for _ in range(2):
            issued(first, make_csr("count.example.com", key=key), application_id="count-1")
    with SimEmca(tmp_path, _config(), public_base_url=BASE) as second:
        counters = second.counters()
        assert counters.issued_by_application_id == {"count-1": 2}
        assert counters.issued_by_public_key_sha256 == {key_hash: 2}
        second.count_request("createCertificates")
        second.reset_counters()
        assert second.counters() == Counters()
        issued(second, make_csr("count.example.com", key=key), application_id="count-2")
    with SimEmca(tmp_path, _config(), public_base_url=BASE) as third:
        counters = third.counters()
        assert counters.issued_by_application_id == {"count-2": 1}
        assert counters.issued_by_public_key_sha256 == {key_hash: 1}
        assert counters.requests_by_method == {}


def test_crl_is_refreshed_before_next_update(tmp_path: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    with SimEmca(tmp_path, clock=lambda: now[0]) as sim:
        first = sim.crl_der(P256_CA)
        now[0] += timedelta(hours=11)
        assert sim.crl_der(P256_CA) == first
        now[0] += timedelta(hours=2)  # past half of the 24 h validity
        assert x509.load_der_x509_crl(sim.crl_der(P256_CA)).last_update_utc == now[0]


EXAMPLE_TOML = """
subscribers = ["SUB-A", "SUB-B"]
public_base_url = "http://pki.example.test:8444"
tls_names = ["emca-sim.internal"]

[root_ca]
name = "Example Root"
key_type = "EC-P384"

[[issuing_cas]]
name = "Example Issuing CA"
key_type = "EC-P256"

[[profiles]]
name = "Web Server"
profile_id = "501"
issuing_ca = "Example Issuing CA"
validity_days = 30
key_usages = ["digitalSignature", "keyEncipherment"]
extended_key_usages = ["serverAuth"]
key_types = ["EC-P256", "RSA-2048"]
manual_approval = false
san = { dns_suffixes = ["example.test"], allow_wildcards = false, allow_ip = false, max_sans = 10 }

[[applications]]
username = "example-v4017"
dialect = "V4.0.17"
source_addresses = ["127.0.0.1"]
"""


def test_documented_config_example_loads(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "emca-simulator.md"
    assert EXAMPLE_TOML.strip() in docs.read_text(), "keep docs/emca-simulator.md's example in step with this test"
    path = tmp_path / "sim.toml"
    path.write_text(EXAMPLE_TOML)
    config = load_config(path)
    assert config.profiles[0].san.dns_suffixes == ("example.test",) and config.applications[0].dialect is Dialect.V4_0_17
    with SimEmca(tmp_path / "data", config) as sim:
        cert = x509.load_pem_x509_certificate(issued(sim, make_csr("a.example.test"), "Web Server", subscriber="SUB-A")
                                              .certificate_pem.encode())
        assert cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value == (  # type: ignore[index]
            "http://pki.example.test:8444/crl/example-issuing-ca.crl")
        assert "emca-sim.internal" in x509.load_pem_x509_certificate((tmp_path / "data" / "tls-server.pem").read_bytes()) \
            .extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize("bad", [
    {"profiles": [{"name": "P", "profile_id": "1", "issuing_ca": "Nope"}]},
    {"subscribers": ["A", "A"]},
    {"issuing_cas": [{"name": "X"}, {"name": "x"}], "profiles": []},
    {"public_base_url": "ftp://example"},
    {"applications": [{"username": "a b", "dialect": "V4.2.3"}]},
    {"applications": [{"username": "a", "dialect": "V9"}]},
])
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimConfig.model_validate(bad)


SHORT_TOML = """
[[profiles]]
name = "TLS Server Short"
profile_id = "1901"
issuing_ca = "certrail Sim Issuing CA P-256"
validity_seconds = 90
"""


def test_a_profile_can_issue_certificates_valid_for_seconds(tmp_path: Path) -> None:
    """``validity_seconds`` (short-lived certificates, the documented example): the leaf lives that long after
    issuance (plus the usual one-minute backdating, as for every leaf); the catalogue still reports whole days (1)."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "emca-simulator.md"
    assert SHORT_TOML.strip() in docs.read_text(), "keep docs/emca-simulator.md's short-lived example in step"
    (tmp_path / "sim.toml").write_text(SHORT_TOML)
    short = load_config(tmp_path / "sim.toml").profiles[0]
    config = SimConfig().model_copy(update={"profiles": (*SimConfig().profiles, short)})
    with SimEmca(tmp_path / "data", config) as sim:
        before = datetime.now(UTC).replace(microsecond=0)
        cert = x509.load_pem_x509_certificate(issued(sim, make_csr("short.example.com"), "TLS Server Short")
                                              .certificate_pem.encode())
        after = datetime.now(UTC)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=90, minutes=1)
        assert before + timedelta(seconds=90) <= cert.not_valid_after_utc <= after + timedelta(seconds=90)
        info = sim.profile("TLS Server Short")
        assert info is not None and info.validity_days == 1
        assert sim.profile("TLS Server").validity_days == 90  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    {"validity_seconds": 29},  # shorter than a pipeline can carry
    {"validity_seconds": 0},
    {"validity_seconds": 90, "validity_days": 1},  # one or the other
    {"validity_seconds": "1m"},
])
def test_short_validity_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProfileConfig.model_validate({"name": "P", "profile_id": "1", "issuing_ca": P256_CA, **bad})

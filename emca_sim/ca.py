"""The simulated emCA's certificate authority: keys, CA hierarchy, CSR checks, signing, CRLs.

Pure certificate work, no bookkeeping (that is `emca_sim.state`):

- `CaHierarchy.load_or_create`: on first start the root CA and the issuing CAs
  of the configuration, a separate TLS root and the HTTPS API's server
  certificate, the trust bundle ``tls-ca.pem`` and the chain ``ca-chain.pem``;
  later starts load them;
- `validate_csr` checks a CSR against a profile like a CA does, `sign_leaf`
  signs it with the profile's issuing CA (extensions built once per profile in
  `LeafTemplate`), `build_crl` signs a CRL with reason codes;
- `application_pfx`: the PKCS#12 emCA hands a registered V4.0.17 application.

Private keys are written unencrypted with mode 0600 under ``DIR/private`` (the
simulator is a test fixture, not a CA anyone should trust).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from emca_sim.backend import SimError, SimErrorKind
from emca_sim.config import CaConfig, ProfileConfig, SimConfig

log = logging.getLogger("emca_sim")

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Clock = Callable[[], datetime]

_CURVES = {"EC-P256": ec.SECP256R1, "EC-P384": ec.SECP384R1}
_CURVE_NAMES = {"secp256r1": "EC-P256", "secp384r1": "EC-P384", "secp521r1": "EC-P521"}
_EKU_OIDS = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
REVOCATION_REASONS = {flag.value.lower(): flag for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl}
_IP_LIKE = re.compile(r"^[0-9.]+$|:")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
BACKDATE = timedelta(minutes=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- keys and files -------------------------------------------------------------------------


def generate_key(key_type: str) -> PrivateKey:
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type.startswith("RSA-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.removeprefix("RSA-")))
    raise ValueError(f"unsupported CA key type {key_type!r}")


def key_type_of(public_key: object) -> str:
    """``EC-P256``, ``RSA-2048``, ``Ed25519``... as profiles name them."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CURVE_NAMES.get(public_key.curve.name, f"EC-{public_key.curve.name}")
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically with ``mode`` (the file never exists with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certrail emCA simulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def random_serial() -> int:
    """A random positive serial whose DER INTEGER content is exactly 16 bytes (127 random bits, top byte non-zero)."""
    while True:
        serial = secrets.randbits(127)
        if serial >> 119:
            return serial


def serial_hex(serial: int) -> str:
    return format(serial, "032x")


def parse_serial(text: str) -> int:
    """A serial as a hex string (any case, optional ``0x`` and ``:`` separators)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise SimError(SimErrorKind.NOT_FOUND, f"not a serial number: {text!r}") from None


# --- CAs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaMaterial:
    """A loaded CA with everything that signing under it needs, computed once."""

    config: CaConfig
    key: PrivateKey
    certificate: x509.Certificate
    hash: hashes.HashAlgorithm
    pem: str
    der: bytes
    sha256: str
    aki: x509.AuthorityKeyIdentifier  # for what this CA signs
    cdp: x509.CRLDistributionPoints  # for what this CA signs
    aia: x509.AuthorityInformationAccess  # for what this CA signs

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def load(cls, config: CaConfig, key: PrivateKey, certificate: x509.Certificate, public_base_url: str) -> CaMaterial:
        der = certificate.public_bytes(serialization.Encoding.DER)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        slug = config.slug
        return cls(
            config=config,
            key=key,
            certificate=certificate,
            hash=signature_hash(key),
            pem=cert_pem(certificate),
            der=der,
            sha256=hashlib.sha256(der).hexdigest(),
            aki=x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            cdp=x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(f"{public_base_url}/crl/{slug}.crl")],
                relative_name=None, reasons=None, crl_issuer=None)]),
            aia=x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(f"{public_base_url}/ca/{slug}.crt"))]),
        )


def _ca_certificate(subject: str, key: PrivateKey, issuer: CaMaterial | None, validity_days: int,
                    path_length: int | None) -> x509.Certificate:
    now = utcnow()
    issuer_name = issuer.certificate.subject if issuer else _name(subject)
    not_after = now + timedelta(days=validity_days)
    if issuer is not None:
        not_after = min(not_after, issuer.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = (builder.add_extension(issuer.aki, critical=False).add_extension(issuer.cdp, critical=False)
                   .add_extension(issuer.aia, critical=False))
    signer = issuer.key if issuer else key
    return builder.sign(signer, signature_hash(signer))


def _load_or_create_ca(private_dir: Path, certs_dir: Path, config: CaConfig, issuer: CaMaterial | None,
                       public_base_url: str) -> CaMaterial:
    key_path, cert_path = private_dir / f"{config.slug}.key.pem", certs_dir / f"{config.slug}.crt.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if key_type_of(key.public_key()) != config.key_type:
            log.warning("CA %r exists with key type %s, configuration says %s: keeping the existing CA",
                        config.name, key_type_of(key.public_key()), config.key_type)
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    else:
        log.info("creating CA %r (%s)", config.name, config.key_type)
        key = generate_key(config.key_type)
        certificate = _ca_certificate(config.name, key, issuer, config.validity_days, None if issuer is None else 0)
        write_file(key_path, key_pem(key), 0o600)
        write_file(cert_path, cert_pem(certificate).encode())
    return CaMaterial.load(config, key, certificate, public_base_url)


@dataclass(frozen=True)
class CaHierarchy:
    """The root, the issuing CAs and the HTTPS API's TLS certificate, as files in the data directory."""

    root: CaMaterial
    issuing: dict[str, CaMaterial]  # by exact name
    tls_certificate_path: Path
    tls_key_path: Path
    tls_ca_path: Path
    chain_path: Path

    @classmethod
    def load_or_create(cls, data_dir: Path, config: SimConfig, public_base_url: str) -> CaHierarchy:
        private_dir, certs_dir = data_dir / "private", data_dir / "cas"
        private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        root_is_new = not (private_dir / f"{config.root_ca.slug}.key.pem").exists()
        if root_is_new:  # a new root invalidates every issuing CA signed by an old one
            for ca in config.issuing_cas:
                (certs_dir / f"{ca.slug}.crt.pem").unlink(missing_ok=True)
        root = _load_or_create_ca(private_dir, certs_dir, config.root_ca, None, public_base_url)
        issuing = {ca.name: _load_or_create_ca(private_dir, certs_dir, ca, root, public_base_url) for ca in config.issuing_cas}
        write_file(data_dir / "ca-chain.pem", "".join([*(ca.pem for ca in issuing.values()), root.pem]).encode())
        tls = _ensure_tls(data_dir, private_dir, config.tls_names)
        return cls(root=root, issuing=issuing, tls_certificate_path=tls[0], tls_key_path=tls[1],
                   tls_ca_path=data_dir / "tls-ca.pem", chain_path=data_dir / "ca-chain.pem")

    def all(self) -> list[CaMaterial]:
        return [*self.issuing.values(), self.root]

    def by_name(self, name: str) -> CaMaterial | None:
        return self.issuing.get(name) or (self.root if name == self.root.name else None)

    def by_slug(self, slug: str) -> CaMaterial | None:
        return next((ca for ca in self.all() if ca.config.slug == slug), None)

    def chain(self, name: str) -> tuple[str, ...]:
        ca = self.issuing.get(name)
        if ca is None:
            raise SimError(SimErrorKind.UNKNOWN_CA, f"no issuing CA named {name!r}")
        return (ca.pem, self.root.pem)


def _tls_names(extra: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for value in ("localhost", "127.0.0.1", "::1", *extra):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            names.append(x509.DNSName(value))
    return list(dict.fromkeys(names))


def _ensure_tls(data_dir: Path, private_dir: Path, extra_names: tuple[str, ...]) -> tuple[Path, Path]:
    """A TLS root (``tls-ca.pem``, apart from the issuing hierarchy) and the API's server certificate."""
    root_key_path, root_path = private_dir / "tls-root.key.pem", data_dir / "tls-ca.pem"
    server_key_path, server_path = private_dir / "tls-server.key.pem", data_dir / "tls-server.pem"
    if root_key_path.exists() and root_path.exists():
        root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), password=None)
        assert isinstance(root_key, ec.EllipticCurvePrivateKey)
        root_cert = x509.load_pem_x509_certificate(root_path.read_bytes())
    else:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_cert = _ca_certificate("certrail Sim TLS Root CA", root_key, None, 3650, 0)
        write_file(root_key_path, key_pem(root_key), 0o600)
        write_file(root_path, cert_pem(root_cert).encode())
        server_path.unlink(missing_ok=True)
    names = _tls_names(extra_names)
    if server_path.exists() and server_key_path.exists():
        current = x509.load_pem_x509_certificate(server_path.read_bytes())
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        fresh = current.not_valid_after_utc - utcnow() > timedelta(days=30)
        if fresh and set(san) == set(names):
            return server_path, server_key_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    root_ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("certrail emCA simulator API"))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=397))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    write_file(server_key_path, key_pem(key), 0o600)
    write_file(server_path, cert_pem(cert).encode())
    return server_path, server_key_path


# --- CSR validation and leaf signing ----------------------------------------------------------


@dataclass(frozen=True)
class ValidatedCsr:
    subject: x509.Name
    public_key: object
    key_type: str
    sans: tuple[x509.GeneralName, ...]
    public_key_sha256: str  # of the DER SubjectPublicKeyInfo


def _reject(detail: str) -> SimError:
    return SimError(SimErrorKind.CSR_REJECTED, detail)


def load_csr(csr_text: str) -> x509.CertificateSigningRequest:
    """A CSR given as PEM or as base64 DER (without PEM armour)."""
    text = csr_text.strip()
    try:
        if text.startswith("-----BEGIN"):
            return x509.load_pem_x509_csr(text.encode())
        return x509.load_der_x509_csr(base64.b64decode("".join(text.split()), validate=True))
    except ValueError as exc:
        raise _reject(f"the CSR could not be parsed: {exc}") from None


def _check_dns(name: str, profile: ProfileConfig) -> str:
    rules = profile.san
    lowered = name.lower().rstrip(".")
    labels = lowered.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        if not rules.allow_wildcards:
            raise _reject(f"wildcard name {name!r} is not allowed by profile {profile.name!r}")
        labels = labels[1:]
        if len(labels) < 2:
            raise _reject(f"wildcard name {name!r} is too broad")
    if len(lowered) > 253 or not labels or not all(_LABEL.match(label) for label in labels):
        raise _reject(f"{name!r} is not a valid DNS name")
    base = ".".join(labels)
    if rules.dns_suffixes and not any(base == s or base.endswith("." + s) for s in rules.dns_suffixes):
        raise _reject(f"{name!r} is outside the DNS suffixes allowed by profile {profile.name!r}")
    return lowered


def _check_san(general_name: x509.GeneralName, profile: ProfileConfig) -> x509.GeneralName:
    if isinstance(general_name, x509.DNSName):
        return x509.DNSName(_check_dns(general_name.value, profile))
    if isinstance(general_name, x509.IPAddress):
        if not profile.san.allow_ip:
            raise _reject(f"IP address {general_name.value} is not allowed by profile {profile.name!r}")
        return general_name
    raise _reject(f"subject alternative name {general_name!r} is of a type profile {profile.name!r} does not allow")


def _cn_as_san(common_name: str) -> x509.GeneralName | None:
    """A CN that names a host (an IP address or a dotted name) is checked and issued as a SAN too."""
    if _IP_LIKE.search(common_name):
        try:
            return x509.IPAddress(ipaddress.ip_address(common_name))
        except ValueError:
            pass
    return x509.DNSName(common_name) if "." in common_name and " " not in common_name else None


def validate_csr(csr_text: str, profile: ProfileConfig) -> ValidatedCsr:
    """Check a CSR against a profile; raises SimError(CSR_REJECTED) naming the rule it breaks."""
    csr = load_csr(csr_text)
    if not csr.is_signature_valid:
        raise _reject("the CSR's signature is invalid")
    try:
        public_key = csr.public_key()
        extensions = csr.extensions
        requested = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        requested = x509.SubjectAlternativeName([])
    except ValueError as exc:
        raise _reject(f"the CSR could not be parsed: {exc}") from None
    key_type = key_type_of(public_key)
    if key_type not in profile.key_types:
        raise _reject(f"key type {key_type} is not allowed by profile {profile.name!r} (allowed: {', '.join(profile.key_types)})")
    sans = [_check_san(name, profile) for name in requested]
    subject = csr.subject  # parsed anew on each access
    common_names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common_names:
        cn_san = _cn_as_san(str(common_names[0].value))
        if cn_san is not None:
            sans.append(_check_san(cn_san, profile))
    unique = tuple(dict.fromkeys(sans))
    if not unique and profile.san.required:
        raise _reject(f"profile {profile.name!r} requires a subject alternative name")
    if len(unique) > profile.san.max_sans:
        raise _reject(f"{len(unique)} subject alternative names, profile {profile.name!r} allows {profile.san.max_sans}")
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ValidatedCsr(subject, public_key, key_type, unique, hashlib.sha256(spki).hexdigest())


@dataclass(frozen=True)
class LeafTemplate:
    """A profile's leaf certificate, as far as it does not depend on the CSR, built once.

    ``bases`` holds, per kind of subject key (``rsa``, ``ec``, ``other``: keyUsage differs), a
    `x509.CertificateBuilder` with the issuer name and the static extensions (basicConstraints, keyUsage,
    AKI, CRL distribution point, AIA, extendedKeyUsage) already added: builders are immutable, so each
    leaf starts from one and adds only what the CSR decides.
    """

    profile: ProfileConfig
    ca: CaMaterial
    validity: timedelta
    ca_not_after: datetime
    bases: dict[str, x509.CertificateBuilder]

    @classmethod
    def build(cls, profile: ProfileConfig, ca: CaMaterial) -> LeafTemplate:
        def usage(drop: set[str]) -> x509.KeyUsage:
            names = set(profile.key_usages) - drop or {"digitalSignature"}
            return x509.KeyUsage(
                digital_signature="digitalSignature" in names, content_commitment="nonRepudiation" in names,
                key_encipherment="keyEncipherment" in names, data_encipherment="dataEncipherment" in names,
                key_agreement="keyAgreement" in names, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False)

        eku = x509.ExtendedKeyUsage([_EKU_OIDS[n] for n in profile.extended_key_usages]) if profile.extended_key_usages else None
        usages = {"rsa": usage({"keyAgreement"}), "ec": usage({"keyEncipherment", "dataEncipherment"}),
                  "other": usage({"keyEncipherment", "dataEncipherment", "keyAgreement"})}

        def base(key_usage: x509.KeyUsage) -> x509.CertificateBuilder:
            builder = (
                x509.CertificateBuilder()
                .issuer_name(ca.certificate.subject)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(key_usage, critical=True)
                .add_extension(ca.aki, critical=False)
                .add_extension(ca.cdp, critical=False)
                .add_extension(ca.aia, critical=False)
            )
            return builder if eku is None else builder.add_extension(eku, critical=False)

        return cls(profile=profile, ca=ca, validity=profile.validity,
                   ca_not_after=ca.certificate.not_valid_after_utc,
                   bases={kind: base(key_usage) for kind, key_usage in usages.items()})

    @staticmethod
    def key_kind(key_type: str) -> str:
        """``rsa``, ``ec`` or ``other`` for a `key_type_of` name."""
        return "rsa" if key_type.startswith("RSA-") else "ec" if key_type.startswith("EC-") else "other"


def sign_leaf(template: LeafTemplate, csr: ValidatedCsr, serial: int, now: datetime) -> x509.Certificate:
    """The leaf for a checked CSR: the template's base, then subject, key, serial, validity, SKI and SANs."""
    builder = (
        template.bases[template.key_kind(csr.key_type)]
        .subject_name(csr.subject)
        .public_key(csr.public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + template.validity, template.ca_not_after))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key), critical=False)  # type: ignore[arg-type]
    )
    if csr.sans:  # RFC 5280: critical when the subject is empty
        builder = builder.add_extension(x509.SubjectAlternativeName(list(csr.sans)), critical=len(csr.subject) == 0)
    return builder.sign(template.ca.key, template.ca.hash)


def build_crl(ca: CaMaterial, revoked: list[tuple[int, datetime, str]], number: int, now: datetime,
              next_update: timedelta) -> bytes:
    """A signed CRL (DER) with reason codes (none for ``unspecified``, as RFC 5280 recommends)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        flag = REVOCATION_REASONS[reason.lower()]
        if flag is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, ca.hash).public_bytes(serialization.Encoding.DER)


def revocation_reason(name: str) -> str:
    """The RFC 5280 spelling of a reason name (any case); raises SimError(MISSING_PARAMETER)."""
    flag = REVOCATION_REASONS.get(name.strip().lower())
    if flag is None:
        raise SimError(SimErrorKind.MISSING_PARAMETER, f"unknown revocation reason {name!r}")
    return flag.value


# --- registered applications --------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicationPfx:
    """What emCA's "Sign and Save" hands a V4.0.17 application: a PFX (key + certificate) and its password."""

    pfx: bytes
    password: str
    certificate_pem: str


def application_pfx(username: str, ca: CaMaterial, chain: tuple[str, ...], key_type: str) -> ApplicationPfx:
    """A key and a client certificate for a registered application, issued by ``ca``, packed as PKCS#12."""
    key = generate_key(key_type)
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(username))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=730), ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.aki, critical=False)
        .sign(ca.key, ca.hash)
    )
    password = secrets.token_urlsafe(18)
    cas = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain]
    pfx = pkcs12.serialize_key_and_certificates(
        username.encode(), key, certificate, cas, serialization.BestAvailableEncryption(password.encode()))
    return ApplicationPfx(pfx=pfx, password=password, certificate_pem=cert_pem(certificate))

"""A small CA for the issuer's unit tests (revocation confirmation, duplicates): a self-signed issuing CA, its
leaves and its CRLs, all at a fixed time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.issuer.revocation.source import Pin

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
CDP = "http://pki.example.test/crl/issuing.crl"


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    revoked: list[tuple[int, x509.ReasonFlags | None]] = field(default_factory=list)
    number: int = 0

    @classmethod
    def make(cls, name: str = "Issuing CA 1") -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                       .serial_number(1).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=365))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .sign(key, hashes.SHA256()))
        return cls(key, certificate)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def pin(self) -> Pin:
        return Pin((self.pem,), self.sha256)

    def leaf(self, serial: int, key: ec.EllipticCurvePrivateKey | None = None, *, cdp: str | None = CDP) -> str:
        """A leaf for www.example.test with ``serial`` (for ``key``, else a fresh one), naming ``cdp`` if any."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")]))
                   .issuer_name(self.certificate.subject).public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(T0 - timedelta(hours=1)).not_valid_after(T0 + timedelta(days=90)))
        if cdp is not None:
            builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier("ldap://ldap.example.test/cn=crl"),
                           x509.UniformResourceIdentifier(cdp)], relative_name=None, reasons=None, crl_issuer=None)]),
                critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    def revoke(self, serial: str, reason: x509.ReasonFlags | None) -> None:
        self.revoked.append((int(serial, 16), reason))

    def crl(self, *, signer: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        self.number += 1
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.certificate.subject)
                   .last_update(T0).next_update(T0 + timedelta(days=1))
                   .add_extension(x509.CRLNumber(self.number), critical=False))
        for number, reason in self.revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(number).revocation_date(T0)
            if reason is not None:
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(signer or self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

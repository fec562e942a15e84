"""Bot-held keys: generate a key of the profile's algorithm and a CSR for it.
The private key is PEM (PKCS#8) in memory only; at rest it is a Fernet token."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from services.common.contracts.fields import KeyAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def generate_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_3072: 3072, KeyAlgorithm.RSA_4096: 4096}[algorithm]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _general_name(san: str) -> x509.GeneralName:
    kind, _, value = san.partition(":")
    if kind == "dns":
        return x509.DNSName(value)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "email":
        return x509.RFC822Name(value)
    if kind == "uri":
        return x509.UniformResourceIdentifier(value)
    raise ValueError(f"unsupported subjectAltName {san!r}")


def make_csr(key: PrivateKey, sans: list[str], common_name: str | None = None) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
    digest = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384 else hashes.SHA256()
    return builder.sign(key, digest).public_bytes(serialization.Encoding.PEM).decode()


def names_of(certificate_pem: str) -> tuple[str | None, list[str]]:
    """The CN and the SANs (as ``dns:``/``ip:``/``email:``/``uri:``) of a certificate, for its renewal CSR."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(cns[0].value) if cns else None
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return common_name, sans
    sans += [f"dns:{v}" for v in ext.get_values_for_type(x509.DNSName)]
    sans += [f"ip:{v}" for v in ext.get_values_for_type(x509.IPAddress)]
    sans += [f"email:{v}" for v in ext.get_values_for_type(x509.RFC822Name)]
    sans += [f"uri:{v}" for v in ext.get_values_for_type(x509.UniformResourceIdentifier)]
    return common_name, sans

"""A profile's subject rules applied to a CSR's subject (SUBJECT_NOT_ALLOWED)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.names import San, SanKind
from services.gateway.policy.profile import ProvisioningProfile, SubjectAttribute
from services.gateway.policy.violation import PolicyViolation, shown

_OIDS: dict[x509.ObjectIdentifier, SubjectAttribute] = {
    NameOID.COMMON_NAME: SubjectAttribute.CN,
    NameOID.ORGANIZATION_NAME: SubjectAttribute.O,
    NameOID.ORGANIZATIONAL_UNIT_NAME: SubjectAttribute.OU,
    NameOID.COUNTRY_NAME: SubjectAttribute.C,
    NameOID.STATE_OR_PROVINCE_NAME: SubjectAttribute.ST,
    NameOID.LOCALITY_NAME: SubjectAttribute.L,
    NameOID.SERIAL_NUMBER: SubjectAttribute.SERIAL_NUMBER,
}


def _refuse(profile: str, why: str) -> PolicyViolation:
    return PolicyViolation(ErrorCode.SUBJECT_NOT_ALLOWED, f"CSR subject not allowed by profile {profile!r}: {why}")


def _cn_matches(cn: str, sans: Sequence[San]) -> bool:
    for san in sans:
        if san.kind is SanKind.DNS and san.value == cn.lower():
            return True
        if san.kind is SanKind.IP:
            try:
                if ipaddress.ip_address(cn) == ipaddress.ip_address(san.value):
                    return True
            except ValueError:
                continue
    return False


def check_subject(subject: x509.Name, sans: Sequence[San], profile: ProvisioningProfile) -> dict[SubjectAttribute, str]:
    """The subject's attributes (attribute -> value) if the profile's subject
    rules allow them; raises PolicyViolation(SUBJECT_NOT_ALLOWED)."""
    rules = profile.subject_rules
    found: dict[SubjectAttribute, str] = {}
    for rdn in subject.rdns:
        for attribute in rdn:
            kind = _OIDS.get(attribute.oid)
            label = kind or attribute.rfc4514_attribute_name
            if kind is None or kind not in rules.allowed_attributes:
                allowed = ", ".join(rules.allowed_attributes) or "none"
                raise _refuse(profile.name, f"attribute {label} is not allowed (allowed: {allowed})")
            if kind in found:
                raise _refuse(profile.name, f"attribute {kind} appears more than once")
            value = attribute.value
            if not isinstance(value, str) or not value.strip():
                raise _refuse(profile.name, f"attribute {kind} is empty or not text")
            found[kind] = value
    for kind in rules.required_attributes:
        if kind not in found:
            raise _refuse(profile.name, f"attribute {kind} is required")
    for kind, expected in rules.fixed_values.items():
        if kind in found and found[kind] != expected:
            raise _refuse(profile.name, f"{kind} must be {expected!r}, not {shown(found[kind])}")
    cn = found.get(SubjectAttribute.CN)
    if cn is not None and rules.cn_must_be_san and not _cn_matches(cn, sans):
        raise _refuse(profile.name, f"CN {shown(cn)} is not one of the certificate's DNS or IP subjectAltNames")
    return found

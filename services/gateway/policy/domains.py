"""A profile's domain rules applied to normalised subjectAltNames (SAN_NOT_ALLOWED)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.names import San, SanKind
from services.gateway.policy.profile import DomainRules, ProvisioningProfile
from services.gateway.policy.violation import PolicyViolation, shown


def _under(name: str, domains: Iterable[str]) -> bool:
    """``name`` is one of ``domains`` or below one of them (at a label boundary)."""
    return any(name == domain or name.endswith("." + domain) for domain in domains)


def _refuse(profile: str, san: San, why: str) -> PolicyViolation:
    # the name is the requester's (or the CSR's): shown bounded and escaped, never verbatim
    return PolicyViolation(ErrorCode.SAN_NOT_ALLOWED, f"subjectAltName {shown(str(san))} is not allowed by profile "
                                                      f"{shown(profile)}: {why}")


def check_san_allowed(san: San, rules: DomainRules, profile: str) -> None:
    """Raises PolicyViolation(SAN_NOT_ALLOWED) unless ``rules`` allow ``san``."""
    if san.kind is SanKind.DNS:
        if san.is_wildcard:
            if not rules.allow_wildcards:
                raise _refuse(profile, san, "the profile does not allow wildcard names")
            if san.value in rules.dns_names or _under(san.value[2:], rules.dns_suffixes):
                return
        elif san.value in rules.dns_names or _under(san.value, rules.dns_suffixes):
            return
        if not rules.dns_names and not rules.dns_suffixes:
            raise _refuse(profile, san, "the profile allows no DNS names")
        raise _refuse(profile, san, "the name is outside the profile's DNS suffixes and names")
    if san.kind is SanKind.IP:
        if not rules.ip_networks:
            raise _refuse(profile, san, "the profile allows no IP addresses")
        address = ipaddress.ip_address(san.value)
        if any(address in ipaddress.ip_network(network) for network in rules.ip_networks):
            return
        raise _refuse(profile, san, "the address is outside the profile's networks " + ", ".join(rules.ip_networks))
    if san.kind is SanKind.EMAIL:
        if not rules.email_domains:
            raise _refuse(profile, san, "the profile allows no email addresses")
        if _under(san.value.rpartition("@")[2], rules.email_domains):
            return
        raise _refuse(profile, san, "the mailbox domain is outside the profile's email domains")
    if not rules.uri_prefixes:
        raise _refuse(profile, san, "the profile allows no URIs")
    if any(san.value.startswith(prefix) for prefix in rules.uri_prefixes):
        return
    raise _refuse(profile, san, "the URI does not start with one of the profile's URI prefixes")


def check_sans_allowed(sans: Iterable[San], profile: ProvisioningProfile) -> None:
    """Every SAN allowed by the profile's domain rules (the first refusal raises)."""
    for san in sans:
        check_san_allowed(san, profile.domain_rules, profile.name)

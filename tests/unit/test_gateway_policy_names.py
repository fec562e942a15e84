"""subjectAltName syntax (SAN_INVALID) and a profile's domain rules (SAN_NOT_ALLOWED)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.contracts.errors import ErrorCode
from services.gateway.policy.domains import check_san_allowed
from services.gateway.policy.names import SanKind, parse_san
from services.gateway.policy.profile import DomainRules
from services.gateway.policy.violation import PolicyViolation


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("dns:Example.COM", "dns:example.com"),
        ("dns:a-b.c1.example.com", "dns:a-b.c1.example.com"),
        ("dns:*.example.com", "dns:*.example.com"),
        ("dns:xn--bcher-kva.example", "dns:xn--bcher-kva.example"),
        ("dns:localhost", "dns:localhost"),
        ("ip:10.0.0.1", "ip:10.0.0.1"),
        ("ip:2001:DB8:0:0::1", "ip:2001:db8::1"),
        ("email:Ops.Team@Example.COM", "email:Ops.Team@example.com"),
        ("uri:SPIFFE://example.org/ns/web", "uri:spiffe://example.org/ns/web"),
    ],
)
def test_well_formed_sans_are_normalised(text: str, normalised: str) -> None:
    assert str(parse_san(text)) == normalised


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ftp:example.com", "must start with dns:, ip:, email: or uri:"),
        ("example.com", "must start with dns:"),
        ("dns:-a.example.com", "not starting or ending with a hyphen"),
        ("dns:a_b.example.com", "must be letters, digits and hyphens"),
        ("dns:a..example.com", "has an empty label"),
        ("dns:example.com.", "ends with a dot"),
        ("dns:*.com", "a wildcard must be followed by at least two labels"),
        ("dns:w*.example.com", "'*' is allowed only as the whole left-most label"),
        ("dns:a.*.example.com", "'*' is allowed only as the whole left-most label"),
        ("dns:*.*.example.com", "'*' is allowed only as the whole left-most label"),
        ("dns:bücher.example", "write internationalised names as A-labels ('xn--bcher-kva.example')"),
        ("dns:xn--zz-0.example", "is not a valid IDNA A-label"),
        ("dns:ab--cd.example", "has '--' in positions 3-4"),
        ("dns:" + "a" * 64 + ".example.com", "a label of 64 characters, over 63"),
        ("dns:" + ".".join(["a" * 60] * 5), "over 253"),
        ("dns:1.2.3.4", "the last label is all digits"),
        ("ip:10.0.0.256", "is not an IPv4 or IPv6 address"),
        ("ip:010.0.0.1", "is not an IPv4 or IPv6 address"),
        ("ip:fe80::1%eth0", "zone id"),
        ("email:no-at-sign", "is not an email address"),
        ("email:a..b@example.com", "the local part must be an ASCII dot-atom"),
        ("email:ops@*.example.com", "a wildcard is not allowed here"),
        ("uri:/relative/path", "is not an absolute URI"),
    ],
)
def test_malformed_sans_are_san_invalid(text: str, fragment: str) -> None:
    with pytest.raises(PolicyViolation) as caught:
        parse_san(text)
    assert caught.value.code is ErrorCode.SAN_INVALID
    assert fragment in caught.value.message


def test_parsed_san_parts() -> None:
    san = parse_san("dns:*.Web.Example.com")
    assert san.kind is SanKind.DNS and san.value == "*.web.example.com" and san.is_wildcard
    assert not parse_san("dns:web.example.com").is_wildcard


def rules(**fields: Any) -> DomainRules:
    return DomainRules.model_validate_json(json.dumps(fields))


RULES = rules(
    dns_suffixes=["example.com"],
    dns_names=["exact.other.org"],
    ip_networks=["10.0.0.0/24", "2001:db8::/32"],
    email_domains=["example.com"],
    uri_prefixes=["spiffe://example.org/"],
)
WILDCARDS = rules(dns_suffixes=["example.com"], dns_names=["*.web.other.org"], allow_wildcards=True)
DNS_ONLY = rules(dns_suffixes=["example.com"])


@pytest.mark.parametrize(
    ("rules_", "san"),
    [
        (RULES, "dns:example.com"),
        (RULES, "dns:a.b.example.com"),
        (RULES, "dns:exact.other.org"),
        (RULES, "ip:10.0.0.254"),
        (RULES, "ip:2001:db8::5"),
        (RULES, "email:ops@mail.example.com"),
        (RULES, "uri:spiffe://example.org/ns/web"),
        (WILDCARDS, "dns:*.example.com"),
        (WILDCARDS, "dns:*.a.example.com"),
        (WILDCARDS, "dns:*.web.other.org"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_allowed_sans(rules_: DomainRules, san: str) -> None:
    check_san_allowed(parse_san(san), rules_, "web")


@pytest.mark.parametrize(
    ("rules_", "san", "fragment"),
    [
        (RULES, "dns:badexample.com", "outside the profile's DNS suffixes and names"),
        (RULES, "dns:evil.other.org", "outside the profile's DNS suffixes and names"),
        (RULES, "dns:*.example.com", "the profile does not allow wildcard names"),
        (RULES, "ip:10.0.1.5", "outside the profile's networks 10.0.0.0/24, 2001:db8::/32"),
        (DNS_ONLY, "ip:10.0.0.5", "the profile allows no IP addresses"),
        (RULES, "email:ops@evil.com", "outside the profile's email domains"),
        (DNS_ONLY, "email:ops@example.com", "the profile allows no email addresses"),
        (RULES, "uri:spiffe://example.org.evil/x", "does not start with one of the profile's URI prefixes"),
        (DNS_ONLY, "uri:spiffe://example.org/x", "the profile allows no URIs"),
        (WILDCARDS, "dns:*.other.org", "outside the profile's DNS suffixes and names"),
        (rules(ip_networks=["10.0.0.0/8"]), "dns:example.com", "the profile allows no DNS names"),
    ],
    ids=lambda v: v if isinstance(v, str) and ":" in v else "",
)
def test_forbidden_sans_are_san_not_allowed(rules_: DomainRules, san: str, fragment: str) -> None:
    with pytest.raises(PolicyViolation) as caught:
        check_san_allowed(parse_san(san), rules_, "web")
    assert caught.value.code is ErrorCode.SAN_NOT_ALLOWED
    assert f"subjectAltName '{parse_san(san)}' is not allowed by profile 'web'" in caught.value.message
    assert fragment in caught.value.message

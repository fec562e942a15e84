"""Provisioning profiles: what a valid profile is, and precise errors for the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.contracts.fields import KeyAlgorithm, KeyGeneration
from services.gateway.policy.profile import EcCurve, KeyPolicy, ProvisioningProfile, RenewalPolicy

BASE: dict[str, Any] = {
    "name": "web",
    "connector": "emca-main",
    "ca_profile": "TLS Server",
    "key_generation": "requester",
    "allowed_requesters": ["ci-pipeline"],
    "domain_rules": {"dns_suffixes": ["example.com"]},
    "validity_days": 90,
}


def profile(**overrides: Any) -> ProvisioningProfile:
    return ProvisioningProfile.model_validate_json(json.dumps(BASE | overrides))


def test_minimal_profile_gets_safe_defaults() -> None:
    p = profile()
    assert p.key_policy.rsa_min_bits == 2048
    assert p.key_policy.ec_curves == [EcCurve.P256, EcCurve.P384]
    assert not p.key_policy.ed25519
    assert not p.domain_rules.allow_wildcards and p.domain_rules.ip_networks == []
    assert p.subject_rules.cn_must_be_san
    assert p.key_generation is KeyGeneration.REQUESTER


def test_profile_round_trips_through_json() -> None:
    p = profile(
        key_policy={"rsa_min_bits": 3072, "rsa_max_bits": 4096, "ec_curves": ["P-384", "P-521"], "ed25519": True},
        domain_rules={
            "dns_suffixes": ["Example.COM"],
            "dns_names": ["*.web.example.org"],
            "allow_wildcards": True,
            "ip_networks": ["10.0.0.0/24", "2001:db8::/32"],
            "uri_prefixes": ["spiffe://example.org/"],
        },
        subject_rules={"allowed_attributes": ["CN", "O"], "required_attributes": ["O"], "fixed_values": {"O": "Example Ltd"}},
        renewal={"renew_before": "P30D"},
        deployment_target="nginx-edge",
    )
    assert p.domain_rules.dns_suffixes == ["example.com"]  # normalised
    again = ProvisioningProfile.model_validate_json(p.model_dump_json())
    assert again == p


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"key_policy": {"rsa_min_bits": 1024}}, "shorter than 2048 bits are never allowed"),
        ({"key_policy": {"rsa_min_bits": 4096, "rsa_max_bits": 3072}}, "rsa_max_bits (3072) is below rsa_min_bits (4096)"),
        ({"key_policy": {"rsa_max_bits": 32768}}, "over the 16384-bit ceiling"),
        ({"key_policy": {"rsa_min_bits": None, "ec_curves": []}}, "allows no key type"),
        ({"key_policy": {"ec_curves": ["P-256", "P-256"]}}, "ec_curves lists 'P-256' twice"),
        ({"key_policy": {"ec_curves": ["secp256k1"]}}, "ec_curves.0"),
        ({"key_generation": "bot", "deployment_target": "t"}, "bot_key_algorithm is required"),
        (
            {
                "key_generation": "bot",
                "bot_key_algorithm": "RSA-2048",
                "deployment_target": "t",
                "key_policy": {"rsa_min_bits": 3072},
            },
            "bot_key_algorithm RSA-2048 is not allowed by the key policy (RSA 3072-4096 bits, EC P-256/P-384)",
        ),
        ({"key_generation": "bot", "bot_key_algorithm": "EC-P256"}, "deployment_target is required"),
        ({"bot_key_algorithm": "EC-P256"}, "bot_key_algorithm is only for key_generation 'bot'"),
        ({"allowed_requesters": []}, "allowed_requesters"),
        ({"allowed_requesters": ["ci", "ci"]}, "allowed_requesters lists 'ci' twice"),
        ({"allowed_requesters": ["bad name"]}, "allowed_requesters.0"),
        ({"domain_rules": {"dns_names": ["*.example.com"]}}, "lists the wildcard '*.example.com' but allow_wildcards is false"),
        ({"domain_rules": {"dns_suffixes": ["*.example.com"]}}, "write the suffix without '*.'"),
        ({"domain_rules": {"dns_suffixes": ["exa_mple.com"]}}, "dns_suffixes[0]"),
        ({"domain_rules": {"ip_networks": ["10.0.0.1/24"]}}, "ip_networks[0]: '10.0.0.1/24' is not a network in CIDR form"),
        ({"domain_rules": {"uri_prefixes": ["spiffe://example.org"]}}, "must end with '/' or ':'"),
        ({"domain_rules": {"uri_prefixes": ["example.org/"]}}, "must start with a URI scheme"),
        ({"domain_rules": {}}, "the domain rules allow no subjectAltName at all"),
        ({"subject_rules": {"required_attributes": ["O"]}}, "required attribute O is not in allowed_attributes"),
        ({"subject_rules": {"fixed_values": {"O": "Example"}}}, "fixed_values names O, which is not in allowed_attributes"),
        (
            {"subject_rules": {"allowed_attributes": ["CN", "C"], "fixed_values": {"C": "in"}}},
            "C must be a two-letter ISO 3166 code",
        ),
        ({"renewal": {"renew_before": "P10D", "renew_at_fraction": 0.5}}, "give renew_before or renew_at_fraction, not both"),
        ({"renewal": {"renew_at_fraction": 1.5}}, "renew_at_fraction must be between 0 and 1"),
        ({"renewal": {"renew_before": "-P1D"}}, "renew_before must be a positive duration"),
        ({"renewal": {"renew_before": "P90D"}}, "renewal.renew_before (90 days) is not shorter than validity_days (90)"),
        ({"validity_days": 0}, "validity_days"),
        ({"connector": "Not A Connector"}, "connector"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_profiles_are_refused_precisely(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        profile(**overrides)
    assert fragment in str(caught.value)


def test_bot_profile_with_allowed_algorithm() -> None:
    p = profile(key_generation="bot", bot_key_algorithm="EC-P384", deployment_target="nginx-edge")
    assert p.bot_key_algorithm is KeyAlgorithm.EC_P384


def test_key_policy_allows_algorithm() -> None:
    policy = KeyPolicy(rsa_min_bits=3072, ec_curves=[EcCurve.P384])
    assert policy.allows_algorithm(KeyAlgorithm.RSA_3072)
    assert not policy.allows_algorithm(KeyAlgorithm.RSA_2048)
    assert policy.allows_algorithm(KeyAlgorithm.EC_P384)
    assert not policy.allows_algorithm(KeyAlgorithm.EC_P256)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "not_after", "expected"),
    [
        (RenewalPolicy(), T0 + timedelta(days=90), T0 + timedelta(days=60)),  # default 2/3
        (RenewalPolicy(renew_at_fraction=0.5), T0 + timedelta(days=90), T0 + timedelta(days=45)),
        (RenewalPolicy(renew_before=timedelta(days=30)), T0 + timedelta(days=90), T0 + timedelta(days=60)),
        # not shorter than the lifetime (a CA template shorter than the profile's validity_days): 2/3, not "due at once"
        (RenewalPolicy(renew_before=timedelta(days=30)), T0 + timedelta(days=9), T0 + timedelta(days=6)),
        (RenewalPolicy(renew_before=timedelta(seconds=90)), T0 + timedelta(seconds=90), T0 + timedelta(seconds=60)),
        (RenewalPolicy(renew_before=timedelta(seconds=30)), T0 + timedelta(seconds=90), T0 + timedelta(seconds=60)),
    ],
    ids=["default-two-thirds", "fraction", "renew-before", "renew-before-longer-than-lifetime",
         "renew-before-equal-to-lifetime", "renew-before-short-lived"],
)
def test_renewal_time(policy: RenewalPolicy, not_after: datetime, expected: datetime) -> None:
    assert policy.renewal_time(T0, not_after) == expected


def test_renewal_time_refuses_inverted_validity() -> None:
    with pytest.raises(ValueError, match="not_after must be after not_before"):
        RenewalPolicy().renewal_time(T0, T0)

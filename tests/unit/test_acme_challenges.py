"""Challenge validation of the ACME door without a network (services/gateway/acme/challenges.py): key
authorizations against the RFC test vectors and certbot's own `acme` library, identifier checks, the address
policy (every denied range, IPv6, IPv4 embedded in IPv6), the policy settings, and the dns-01 hook run as a
real program (exit 0, exit 1 with stderr, another exit, a hang killed at the deadline)."""

from __future__ import annotations

import ipaddress
import stat
import time
from pathlib import Path
from typing import Any

import josepy
import pytest
from acme import challenges as certbot_challenges
from josepy.jwk import JWK
from pydantic import ValidationError

from services.gateway.acme.challenges import (
    DEFAULT_DENIED_NETWORKS,
    ChallengePolicy,
    IdentifierError,
    ProblemType,
    check_identifier,
    dns01_txt_value,
    jwk_thumbprint,
    key_authorization,
    new_token,
    offered_challenge_types,
    quote,
    validate_dns01,
    validate_http01,
)
from tests.conftest import poll_until

# RFC 7638 section 3.1: the RSA key of RFC 7517 appendix A.1 and its SHA-256 thumbprint
RFC7638_JWK = {
    "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknj"
         "hMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQ"
         "vRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJz"
         "KnqDKgw",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
RFC8555_TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # the token of RFC 8555 8.3's example
DIGEST = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"  # RFC 8555 8.4's example TXT value (a well-formed digest)


def jwk(members: dict[str, str]) -> JWK:
    key = JWK.from_json(members)
    assert isinstance(key, JWK)
    return key


def rfc_key() -> JWK:
    return jwk(RFC7638_JWK)


# --- key authorizations ------------------------------------------------------------------------------------------


def test_the_thumbprint_is_the_rfc_7638_example_and_ignores_optional_members() -> None:
    assert jwk_thumbprint(rfc_key()) == RFC7638_THUMBPRINT
    bare = jwk({k: RFC7638_JWK[k] for k in ("kty", "n", "e")})
    assert jwk_thumbprint(bare) == RFC7638_THUMBPRINT


def test_the_key_authorization_is_token_dot_thumbprint() -> None:
    assert key_authorization(RFC8555_TOKEN, RFC7638_THUMBPRINT) == f"{RFC8555_TOKEN}.{RFC7638_THUMBPRINT}"


def test_key_authorization_and_txt_value_agree_with_certbots_acme_library() -> None:
    """An implementation nobody here wrote: certbot's client computes what it will serve and publish."""
    key = rfc_key()
    token = josepy.b64.b64decode(RFC8555_TOKEN)
    ours = key_authorization(RFC8555_TOKEN, jwk_thumbprint(key))
    assert certbot_challenges.HTTP01(token=token).key_authorization(key) == ours
    assert certbot_challenges.DNS01(token=token).validation(key) == dns01_txt_value(ours)
    assert dns01_txt_value(ours) == "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"


@pytest.mark.parametrize(("token", "thumbprint"), [
    ("short", RFC7638_THUMBPRINT), (RFC8555_TOKEN + "=", RFC7638_THUMBPRINT), ("a/b+" * 8, RFC7638_THUMBPRINT),
    (RFC8555_TOKEN, RFC7638_THUMBPRINT[:-1]), (RFC8555_TOKEN, RFC7638_THUMBPRINT + "A"), (RFC8555_TOKEN, "x" * 42 + "="),
])
def test_key_authorization_refuses_what_is_not_base64url_of_the_right_size(token: str, thumbprint: str) -> None:
    with pytest.raises(ValueError):
        key_authorization(token, thumbprint)


def test_new_tokens_are_base64url_with_256_bits() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) == 43 and key_authorization(t, RFC7638_THUMBPRINT).startswith(t + ".") for t in tokens)


# --- identifiers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "normalised"), [
    ("example.com", "example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("intranet", "intranet"),
    ("a-b.c0.example", "a-b.c0.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
])
def test_dns_identifiers_are_normalised_to_lower_case_a_labels(value: str, normalised: str) -> None:
    assert check_identifier(value) == normalised


@pytest.mark.parametrize(("value", "kind"), [
    ("", "malformed"), (None, "malformed"), (5, "malformed"), ("x" * 600, "malformed"),
    ("example.com.", "malformed"), ("a..example", "malformed"), ("-a.example", "malformed"), ("a-.example", "malformed"),
    ("a_b.example", "malformed"), ("a b.example", "malformed"), ("a/b.example", "malformed"),
    ("a" * 64 + ".example", "malformed"),
    (".".join(["a" * 60] * 5), "malformed"), ("1.2.3.999", "malformed"), ("w*.example.com", "malformed"),
    ("a.*.example.com", "malformed"), ("xn--zz.example", "malformed"),
    ("192.0.2.1", "rejectedIdentifier"), ("2001:db8::1", "rejectedIdentifier"), ("[2001:db8::1]", "rejectedIdentifier"),
    ("*.example.com", "rejectedIdentifier"),
])
def test_bad_dns_identifiers_are_refused_with_their_problem_type(value: Any, kind: str) -> None:
    with pytest.raises(IdentifierError) as error:
        check_identifier(value)
    assert error.value.problem.type.value == kind
    assert len(error.value.problem.detail) < 300


def test_a_wildcard_is_accepted_only_where_dns01_is_offered_and_never_over_a_top_level_name() -> None:
    assert check_identifier("*.Example.com", allow_wildcard=True) == "*.example.com"
    with pytest.raises(IdentifierError) as error:
        check_identifier("*.com", allow_wildcard=True)
    assert error.value.problem.type is ProblemType.REJECTED_IDENTIFIER
    with pytest.raises(IdentifierError) as error:
        check_identifier("*.*.example.com", allow_wildcard=True)
    assert error.value.problem.type is ProblemType.MALFORMED


@pytest.mark.parametrize(("value", "normalised"), [("192.0.2.1", "192.0.2.1"), ("2001:DB8:0::1", "2001:db8::1")])
def test_ip_identifiers_are_canonical_text(value: str, normalised: str) -> None:
    assert check_identifier(value, "ip") == normalised


@pytest.mark.parametrize(("value", "kind", "identifier_type"), [
    ("example.com", "malformed", "ip"), ("010.0.0.1", "malformed", "ip"), ("fe80::1%eth0", "malformed", "ip"),
    ("example.com", "unsupportedIdentifier", "email"),
])
def test_other_identifier_types_and_bad_ips_are_refused(value: str, kind: str, identifier_type: str) -> None:
    with pytest.raises(IdentifierError) as error:
        check_identifier(value, identifier_type)
    assert error.value.problem.type.value == kind


def test_quote_shows_a_short_escaped_prefix_only() -> None:
    shown = quote(b"abc\x00\n\"\xff" + b"z" * 500)
    assert shown.startswith('"abc\\x00\\n\\"') and shown.endswith('"...') and len(shown) < 80
    assert quote("ok") == '"ok"'


# --- the address policy ------------------------------------------------------------------------------------------

DENIED_BY_DEFAULT = [
    ("0.0.0.0", "0.0.0.0/8"), ("0.1.2.3", "0.0.0.0/8"),
    ("127.0.0.1", "127.0.0.0/8"), ("127.255.255.254", "127.0.0.0/8"),
    ("10.0.0.1", "10.0.0.0/8"), ("172.16.0.1", "172.16.0.0/12"), ("172.31.255.255", "172.16.0.0/12"),
    ("192.168.1.1", "192.168.0.0/16"), ("100.64.0.1", "100.64.0.0/10"),
    ("169.254.1.1", "169.254.0.0/16"), ("169.254.169.254", "169.254.169.254/32"),
    ("224.0.0.1", "224.0.0.0/4"), ("239.255.255.250", "224.0.0.0/4"), ("255.255.255.255", "240.0.0.0/4"),
    ("::", "::/128"), ("::1", "::1/128"), ("fe80::1", "fe80::/10"), ("fc00::1", "fc00::/7"), ("fd12:3456::1", "fc00::/7"),
    ("fd00:ec2::254", "fd00:ec2::254/128"), ("ff02::1", "ff00::/8"),
    # IPv4 inside IPv6: mapped, compatible, 6to4, NAT64
    ("::ffff:127.0.0.1", "127.0.0.0/8"), ("::ffff:169.254.169.254", "169.254.169.254/32"), ("::ffff:10.1.2.3", "10.0.0.0/8"),
    ("::10.0.0.1", "10.0.0.0/8"), ("2002:c0a8:0101::1", "192.168.0.0/16"), ("64:ff9b::7f00:1", "127.0.0.0/8"),
]


@pytest.mark.parametrize(("address", "network"), DENIED_BY_DEFAULT)
def test_the_default_policy_denies_every_internal_range(address: str, network: str) -> None:
    assert ChallengePolicy().denial(ipaddress.ip_address(address)) == ipaddress.ip_network(network)


def test_every_default_denied_network_is_exercised_above() -> None:
    assert {ipaddress.ip_network(n) for _, n in DENIED_BY_DEFAULT} == {ipaddress.ip_network(n) for n in DEFAULT_DENIED_NETWORKS}


@pytest.mark.parametrize("address", ["8.8.8.8", "192.0.2.1", "172.32.0.1", "100.128.0.1", "2001:db8::1", "2606:4700::1111",
                                     "::ffff:8.8.8.8", "2002:0808:0808::1", "64:ff9b::808:808"])
def test_public_addresses_are_reachable(address: str) -> None:
    assert ChallengePolicy().denial(ipaddress.ip_address(address)) is None


def test_allowed_networks_open_exceptions_and_the_most_specific_network_decides() -> None:
    loopback = ChallengePolicy.model_validate({"allowed_networks": ["127.0.0.0/8"]})
    assert loopback.denial(ipaddress.ip_address("127.0.0.1")) is None
    assert loopback.denial(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert loopback.denial(ipaddress.ip_address("::1")) == ipaddress.ip_network("::1/128")  # IPv6 loopback stays denied
    assert loopback.denial(ipaddress.ip_address("10.0.0.1")) == ipaddress.ip_network("10.0.0.0/8")

    link_local = ChallengePolicy.model_validate({"allowed_networks": ["169.254.0.0/16"]})
    assert link_local.denial(ipaddress.ip_address("169.254.1.1")) is None
    assert link_local.denial(ipaddress.ip_address("169.254.169.254")) == ipaddress.ip_network("169.254.169.254/32")

    everything = ChallengePolicy.model_validate({"allowed_networks": ["0.0.0.0/0", "::/0"]})
    assert everything.denial(ipaddress.ip_address("10.0.0.1")) is not None  # a wider allow does not beat a narrower deny

    nothing_denied = ChallengePolicy(denied_networks=[])
    assert nothing_denied.denial(ipaddress.ip_address("127.0.0.1")) is None


def test_the_policy_settings_validate_their_values() -> None:
    policy = ChallengePolicy.model_validate({"resolve": {"Acme.TEST": "127.0.0.1", "bücher.test": "::1"}})
    assert policy.resolve == {"acme.test": ipaddress.ip_address("127.0.0.1"), "xn--bcher-kva.test": ipaddress.ip_address("::1")}
    assert (policy.http01_port, policy.timeout_s, policy.max_body_bytes, policy.dns01_hook) == (80, 10.0, 8192, None)


@pytest.mark.parametrize("bad", [
    pytest.param({"resolve": {"a_b.test": "127.0.0.1"}}, id="map-name-not-a-hostname"),
    pytest.param({"resolve": {"acme.test": "not-an-ip"}}, id="map-value-not-an-address"),
    pytest.param({"denied_networks": ["10.0.0.1/8"]}, id="network-with-host-bits"),
    pytest.param({"dns01_hook": ["check-txt"]}, id="hook-not-absolute"),
    pytest.param({"dns01_hook": []}, id="hook-empty"),
    pytest.param({"http01_port": 0}, id="port-zero"),
    pytest.param({"timeout_s": 0}, id="no-deadline"),
    pytest.param({"max_body_bytes": 10}, id="body-cap-below-a-key-authorization"),
    pytest.param({"unknown": 1}, id="unknown-setting"),
])
def test_the_policy_refuses_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChallengePolicy.model_validate(bad)


def test_offered_challenge_types_follow_the_dns01_hook() -> None:
    plain = ChallengePolicy()
    hooked = ChallengePolicy(dns01_hook=["/usr/local/bin/check-txt"])
    assert offered_challenge_types(plain) == ("http-01",)
    assert offered_challenge_types(plain, wildcard=True) == ()
    assert offered_challenge_types(hooked) == ("http-01", "dns-01")
    assert offered_challenge_types(hooked, wildcard=True) == ("dns-01",)


async def test_http01_refuses_bad_input_before_any_network() -> None:
    policy = ChallengePolicy.model_validate({"resolve": {"acme.test": "192.0.2.1"}})
    bad_token = await validate_http01("acme.test", "../../etc/passwd", "x", policy)
    assert bad_token.problem is not None and bad_token.problem.type is ProblemType.MALFORMED and not bad_token.records
    bad_name = await validate_http01("a_b.test", RFC8555_TOKEN, "x", policy)
    assert bad_name.problem is not None and bad_name.problem.type is ProblemType.MALFORMED and not bad_name.records
    wildcard = await validate_http01("*.acme.test", RFC8555_TOKEN, "x", policy)
    assert wildcard.problem is not None and wildcard.problem.type is ProblemType.REJECTED_IDENTIFIER


# --- dns-01 through the hook --------------------------------------------------------------------------------------


def hook(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "check-txt"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


async def test_the_hook_gets_the_record_name_and_value_and_exit_0_is_success(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTRAIL_DATABASE__URL", "postgresql://user:secret@db/certrail")
    monkeypatch.setenv("HOOK_CREDENTIAL", "visible-to-the-hook")
    argv = hook(tmp_path, f'printf "%s|%s" "$1" "$2" > {tmp_path}/args; env > {tmp_path}/env; exit 0')
    policy = ChallengePolicy(dns01_hook=argv)
    result = await validate_dns01("Example.COM", DIGEST, policy)
    assert result.ok and result.problem is None
    assert (tmp_path / "args").read_text() == f"_acme-challenge.example.com|{DIGEST}"
    env = (tmp_path / "env").read_text()
    assert "HOOK_CREDENTIAL=visible-to-the-hook" in env and "CERTRAIL_" not in env and "secret" not in env

    assert (await validate_dns01("*.example.com", DIGEST, policy)).ok
    assert (tmp_path / "args").read_text() == f"_acme-challenge.example.com|{DIGEST}"


async def test_exit_1_is_unauthorized_with_the_hooks_stderr_cut_short(tmp_path: Path) -> None:
    noisy = 'echo "no TXT at $1" >&2; head -c 20000 /dev/zero | tr "\\0" x >&2; exit 1'
    policy = ChallengePolicy(dns01_hook=hook(tmp_path, noisy))
    result = await validate_dns01("example.com", DIGEST, policy)
    assert result.problem is not None and result.problem.type is ProblemType.UNAUTHORIZED
    assert "no TXT at _acme-challenge.example.com" in result.problem.detail
    assert len(result.problem.detail) < 400 and result.problem.detail.count("x") < 250


async def test_another_exit_code_is_a_dns_problem(tmp_path: Path) -> None:
    policy = ChallengePolicy(dns01_hook=hook(tmp_path, 'echo "SERVFAIL" >&2; exit 3'))
    result = await validate_dns01("example.com", DIGEST, policy)
    assert result.problem is not None and result.problem.type is ProblemType.DNS
    assert "exit 3" in result.problem.detail and "SERVFAIL" in result.problem.detail


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


async def test_a_hanging_hook_and_what_it_started_are_killed_at_the_deadline(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    policy = ChallengePolicy(dns01_hook=hook(tmp_path, f"sleep 300 & echo $! > {pidfile}; wait"), dns01_timeout_s=0.5)
    started = time.monotonic()
    result = await validate_dns01("example.com", DIGEST, policy)
    assert time.monotonic() - started < 5
    assert result.problem is not None and result.problem.type is ProblemType.DNS and "0.5 s" in result.problem.detail
    child = int(pidfile.read_text())
    await poll_until(lambda: _gone(child), f"the hook's child {child} to be killed", timeout_s=5)


async def test_a_missing_hook_program_is_a_server_problem_and_no_hook_means_no_dns01(tmp_path: Path) -> None:
    missing = await validate_dns01("example.com", DIGEST, ChallengePolicy(dns01_hook=[str(tmp_path / "absent")]))
    assert missing.problem is not None and missing.problem.type is ProblemType.SERVER_INTERNAL
    off = await validate_dns01("example.com", DIGEST, ChallengePolicy())
    assert off.problem is not None and off.problem.type is ProblemType.MALFORMED and "not offered" in off.problem.detail


async def test_the_hook_is_not_run_for_a_bad_name_or_value(tmp_path: Path) -> None:
    policy = ChallengePolicy(dns01_hook=hook(tmp_path, f"touch {tmp_path}/ran"))
    for name, digest in (("a_b.example", DIGEST), ("example.com", "short"), ("example.com", DIGEST[:-1] + "=")):
        result = await validate_dns01(name, digest, policy)
        assert result.problem is not None and result.problem.type is ProblemType.MALFORMED
    assert not (tmp_path / "ran").exists()

"""Connector validation against the fake emCA: one named case per failure, near-match suggestions,
and the input rules of a connector spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretBytes, SecretStr, ValidationError

from services.common.connectors.models import ConnectorEdit, ConnectorSecrets, ConnectorSpec, changed_fields
from services.common.contracts.errors import ErrorCode
from services.common.emca.fake import FakeEmca
from services.common.emca.types import EmcaVersion, ProfileInfo
from services.issuer.registry.validation import CHECKS, near_matches, validate_connector

USERS = {EmcaVersion.V4_0_17: "app-v4017", EmcaVersion.V4_2_3: "app-v423", EmcaVersion.V4_2_4: "app-v424"}
CA, OTHER_CA = "Fake Issuing CA P-256", "Fake Issuing CA RSA"


@pytest.fixture
def emca() -> FakeEmca:
    return FakeEmca(
        issuing_cas=(CA, OTHER_CA),
        profiles=(
            ProfileInfo("TLS Server", "1001", CA, 90, ("EC-P256",), False),
            ProfileInfo("TLS Client", "1003", CA, 90, ("EC-P256",), False),
            ProfileInfo("RSA Server", "1002", OTHER_CA, 90, ("RSA-2048",), False),
        ),
    )


def spec_for(emca: FakeEmca, version: EmcaVersion, **overrides: Any) -> ConnectorSpec:
    endpoint = emca.endpoint_for(USERS[version])
    secrets: dict[str, Any] = {"password": SecretStr(overrides.pop("password", endpoint.password))}
    if version is EmcaVersion.V4_0_17:
        secrets |= {"aes_key": SecretStr(str(overrides.pop("aes_key", endpoint.aes_key))),
                    "pfx": SecretBytes(endpoint.pfx or b""), "pfx_password": SecretStr("fake")}
    else:
        secrets["client_id"] = SecretStr(overrides.pop("client_id", endpoint.client_id))
    values: dict[str, Any] = {"name": "c1", "version": version, "base_url": endpoint.base_url, "username": endpoint.username,
                              "issuing_ca": CA, "subscriber_id": "SUB-0001", "default_profile": "TLS Server",
                              "ca_bundle_pem": emca.tls_ca_pem}
    values.update(overrides)
    return ConnectorSpec.model_validate({**values, "secrets": ConnectorSecrets.model_validate(secrets)})


# name -> (what to do to the fake, spec overrides, the check that fails, code, text in the message)
Case = tuple[Callable[[FakeEmca], None], dict[str, Any], str, ErrorCode, str]
NOTHING: Callable[[FakeEmca], None] = lambda emca: None  # noqa: E731
FAILURES: dict[str, Case] = {
    "unreachable": (lambda e: setattr(e.faults, "down", True), {}, "connection", ErrorCode.CA_UNREACHABLE, "unreachable"),
    "wrong base URL": (NOTHING, {"base_url": "https://elsewhere.invalid"}, "connection", ErrorCode.CA_UNREACHABLE, "elsewhere"),
    "rate limited": (lambda e: setattr(e.faults, "rate_limit_retry_after", 5.0), {}, "connection", ErrorCode.CA_UNREACHABLE, "429"),
    "TLS untrusted": (NOTHING, {"ca_bundle_pem": None}, "connection", ErrorCode.CA_TLS_UNTRUSTED, "not trusted"),
    "wrong password": (NOTHING, {"password": "nope"}, "connection", ErrorCode.CA_AUTH_FAILED, "credentials"),
    "CA case differs": (NOTHING, {"issuing_ca": "fake issuing ca p-256"}, "issuing_ca", ErrorCode.ISSUING_CA_NOT_FOUND,
                        "Did you mean 'Fake Issuing CA P-256'?"),
    "CA unknown": (NOTHING, {"issuing_ca": "Nothing Like It"}, "issuing_ca", ErrorCode.ISSUING_CA_NOT_FOUND, "exactly 'Nothing"),
    "profile unknown": (NOTHING, {"default_profile": "TLS Srever"}, "profile", ErrorCode.CA_PROFILE_NOT_FOUND,
                        "Did you mean 'TLS Server'?"),
    "profile of another CA": (NOTHING, {"default_profile": "RSA Server"}, "profile", ErrorCode.CA_PROFILE_NOT_FOUND,
                              "issued by 'Fake Issuing CA RSA'"),
    "subscriber unknown": (NOTHING, {"subscriber_id": "SUB-9999"}, "subscriber", ErrorCode.SUBSCRIBER_INVALID, "Subscriber"),
}


@pytest.mark.parametrize("version", list(EmcaVersion), ids=str)
@pytest.mark.parametrize("case", list(FAILURES))
async def test_each_failure_has_its_code_and_stops_the_checks(emca: FakeEmca, version: EmcaVersion, case: str) -> None:
    arrange, overrides, check, code, text = FAILURES[case]
    arrange(emca)
    report = await validate_connector(spec_for(emca, version, **overrides), emca.connect)
    assert not report.ok and report.pin is None
    failure = report.failure
    assert failure is not None and (failure.check, failure.code) == (check, code), failure
    assert text in failure.message
    assert [c.check for c in report.checks] == list(CHECKS[: CHECKS.index(check) + 1])  # stops at the first failure
    assert report.summary().startswith(f"{code}: ")


async def test_v4_0_17_decryption_failure(emca: FakeEmca) -> None:
    report = await validate_connector(spec_for(emca, EmcaVersion.V4_0_17, aes_key="0" * 64), emca.connect)
    assert report.failure is not None and report.failure.code is ErrorCode.CA_DECRYPTION_FAILED


@pytest.mark.parametrize("version", list(EmcaVersion), ids=str)
async def test_success_pins_the_issuing_ca_and_issues_nothing(emca: FakeEmca, version: EmcaVersion) -> None:
    report = await validate_connector(spec_for(emca, version), emca.connect)
    assert report.ok, report.summary()
    assert report.pin is not None and report.pin.sha256 == emca.issuing_ca(CA).sha256
    assert report.pin.chain_pem[0].strip() == emca.issuing_ca(CA).certificate_pem.strip()
    assert [c.check for c in report.checks] == list(CHECKS)
    assert "submit_csr" not in emca.calls and emca.issued_by_application_id == {}


@pytest.mark.parametrize(
    ("name", "candidates", "expected"),
    [
        ("certrail Sim Issuing CA p-256", ["certrail Sim Issuing CA P-256", "certrail Sim Issuing CA RSA"],
         ["certrail Sim Issuing CA P-256"]),  # a case slip: only that one
        ("Issuing CA P256", ["Issuing CA P-256", "Root CA", "Issuing CA RSA"], ["Issuing CA P-256", "Issuing CA RSA"]),
        ("TLS Srever", ["TLS Server", "TLS Client"], ["TLS Server"]),
        ("Something else", ["TLS Server"], []),
        ("TLS Server", ["TLS Server"], []),  # an exact match is not a suggestion
        ("x", [], []),
    ],
    ids=["case-only", "close", "typo", "none", "exact", "empty"],
)
def test_near_matches(name: str, candidates: list[str], expected: list[str]) -> None:
    assert near_matches(name, candidates) == expected


# -- the spec's input rules --------------------------------------------------------------------------


def base(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"name": "c1", "version": "V4.2.3", "base_url": "https://emca.example.com/", "username": "app",
                              "issuing_ca": "CA", "subscriber_id": "S", "default_profile": "P",
                              "secrets": {"password": "pw", "client_id": "cid"}}
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "http://emca.example.com"}, "https://"),
        ({"base_url": "https://user:pw@emca.example.com"}, "credentials"),
        ({"base_url": "https://emca.example.com/?x=1"}, "query"),
        ({"name": "Bad_Name"}, "name"),
        ({"issuing_ca": " CA"}, "whitespace"),
        ({"ca_bundle_pem": "not a pem"}, "CA bundle"),
        ({"secrets": {"password": "pw"}}, "ClientID"),
        ({"secrets": {"password": "pw", "client_id": "c", "aes_key": "k"}}, "belong to V4.0.17"),
        ({"version": "V4.0.17", "secrets": {"password": "pw", "aes_key": "k"}}, "pfx"),
        ({"version": "V4.0.17", "secrets": {"password": "pw", "aes_key": "k", "pfx": b"p", "client_id": "c"}}, "4.2.x"),
        ({"secrets": {"password": " ", "client_id": "c"}}, "empty"),
        ({"concurrency": 0}, "concurrency"),
    ],
    ids=["http", "userinfo", "query", "name", "whitespace", "bundle", "no-client-id", "aes-on-42", "no-pfx", "client-id-on-4017",
         "blank-password", "concurrency"],
)
def test_spec_input_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConnectorSpec.model_validate(base(**overrides))


def test_spec_normalises_the_url_and_describes_without_secrets() -> None:
    spec = ConnectorSpec.model_validate(base())
    assert spec.base_url == "https://emca.example.com"
    described = spec.describe()
    assert described["password"] == described["client_id"] == "***" and "pw" not in str(described.values())
    assert "pw" not in repr(spec) and "cid" not in spec.model_dump_json()


def test_an_edit_changes_fields_and_drops_secrets_of_another_version() -> None:
    spec = ConnectorSpec.model_validate(base())
    edited = ConnectorEdit(concurrency=4, password=SecretStr("new")).apply(spec)
    assert changed_fields(spec, edited) == {"concurrency": 4, "password": "***"}
    legacy = ConnectorEdit(version=EmcaVersion.V4_0_17, aes_key=SecretStr("k"), pfx=SecretBytes(b"p")).apply(spec)
    assert legacy.secrets.client_id is None and legacy.secrets.password.get_secret_value() == "pw"
    assert changed_fields(spec, legacy) == {"version": "V4.0.17", "client_id": None, "aes_key": "***", "pfx": "***"}
    with pytest.raises(ValidationError, match="https"):
        ConnectorEdit(base_url="http://x").apply(spec)

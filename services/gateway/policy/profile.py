"""Provisioning profiles: what one kind of certificate may look like and who may
ask for it. A profile is validated when it is created or edited (pydantic
errors with precise messages); the request checks then trust it.

Strict like the message contracts: unknown fields are refused; from Python,
enums must be enum members (from JSON, their string values).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from services.common.contracts.commands import ValidityDays
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, ShortText
from services.common.contracts.identity import ConnectorName, Identity, ProfileName
from services.common.contracts.undeploy import ExternalRevocation, OnRevocation
from services.gateway.policy.names import NameSyntaxError, normalise_dns_name

#: RSA keys shorter than this are never allowed, whatever a profile says
RSA_FLOOR_BITS = 2048
RSA_CEILING_BITS = 16384
DEFAULT_RENEW_AT_FRACTION = 2 / 3
MAX_RULE_ENTRIES = 500


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class KeyType(StrEnum):
    RSA = "rsa"
    EC = "ec"
    ED25519 = "ed25519"


class EcCurve(StrEnum):
    P256 = "P-256"
    P384 = "P-384"
    P521 = "P-521"


#: key algorithms the deployer bot can generate -> (type, RSA bits or curve)
_BOT_ALGORITHMS: dict[KeyAlgorithm, tuple[KeyType, int | EcCurve]] = {
    KeyAlgorithm.RSA_2048: (KeyType.RSA, 2048),
    KeyAlgorithm.RSA_3072: (KeyType.RSA, 3072),
    KeyAlgorithm.RSA_4096: (KeyType.RSA, 4096),
    KeyAlgorithm.EC_P256: (KeyType.EC, EcCurve.P256),
    KeyAlgorithm.EC_P384: (KeyType.EC, EcCurve.P384),
}


def _unique(values: list, what: str) -> list:  # type: ignore[type-arg]
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} lists {str(value)!r} twice")
        seen.add(value)
    return values


class KeyPolicy(_Strict):
    """The public keys a CSR may carry. RSA needs at least 2048 bits always."""

    # the JSON Schema states what the validators below check, so that what the schema accepts the API accepts
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"not": {"required": ["rsa_min_bits"]}},
        {"required": ["rsa_min_bits"], "properties": {"rsa_min_bits": {"type": "integer"}}},
        {"not": {"required": ["ec_curves"]}},
        {"required": ["ec_curves"], "properties": {"ec_curves": {"minItems": 1}}},
        {"required": ["ed25519"], "properties": {"ed25519": {"const": True}}},
    ]})

    rsa_min_bits: int | None = Field(default=RSA_FLOOR_BITS, description="None: RSA keys are not allowed",
                                     json_schema_extra={"minimum": RSA_FLOOR_BITS, "maximum": RSA_CEILING_BITS})
    rsa_max_bits: int = Field(default=4096, description="longer RSA keys are refused (CA limits, verification cost)",
                              json_schema_extra={"minimum": RSA_FLOOR_BITS, "maximum": RSA_CEILING_BITS})
    ec_curves: list[EcCurve] = Field(default_factory=lambda: [EcCurve.P256, EcCurve.P384], max_length=3,
                                     json_schema_extra={"uniqueItems": True})
    ed25519: bool = False

    @field_validator("rsa_min_bits")
    @classmethod
    def _rsa_floor(cls, value: int | None) -> int | None:
        if value is not None and value < RSA_FLOOR_BITS:
            raise ValueError(f"rsa_min_bits is {value}: RSA keys shorter than {RSA_FLOOR_BITS} bits are never allowed")
        return value

    @field_validator("rsa_max_bits")
    @classmethod
    def _rsa_ceiling(cls, value: int) -> int:
        if value > RSA_CEILING_BITS:
            raise ValueError(f"rsa_max_bits is {value}, over the {RSA_CEILING_BITS}-bit ceiling")
        return value

    @field_validator("ec_curves")
    @classmethod
    def _curves_unique(cls, value: list[EcCurve]) -> list[EcCurve]:
        return _unique(value, "ec_curves")

    @model_validator(mode="after")
    def _consistent(self) -> KeyPolicy:
        if self.rsa_min_bits is not None and self.rsa_max_bits < self.rsa_min_bits:
            raise ValueError(f"rsa_max_bits ({self.rsa_max_bits}) is below rsa_min_bits ({self.rsa_min_bits})")
        if self.rsa_min_bits is None and not self.ec_curves and not self.ed25519:
            raise ValueError("the key policy allows no key type: set rsa_min_bits, ec_curves or ed25519")
        return self

    def allowed_summary(self) -> str:
        """The allowed keys in words, for error messages: ``RSA 2048-4096 bits, EC P-256/P-384``."""
        parts = []
        if self.rsa_min_bits is not None:
            parts.append(f"RSA {self.rsa_min_bits}-{self.rsa_max_bits} bits")
        if self.ec_curves:
            parts.append("EC " + "/".join(self.ec_curves))
        if self.ed25519:
            parts.append("Ed25519")
        return ", ".join(parts)

    def allows_algorithm(self, algorithm: KeyAlgorithm) -> bool:
        """Whether a key the bot generates with ``algorithm`` passes this policy."""
        key_type, detail = _BOT_ALGORITHMS[algorithm]
        if key_type is KeyType.RSA:
            assert isinstance(detail, int)
            return self.rsa_min_bits is not None and self.rsa_min_bits <= detail <= self.rsa_max_bits
        return detail in self.ec_curves


DnsEntry = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class DomainRules(_Strict):
    """Which subjectAltNames a profile allows. Every list is exhaustive: an empty
    list allows nothing of its kind.

    * ``dns_suffixes``: ``example.com`` allows ``example.com`` itself and every
      name under it (``a.b.example.com``), never ``badexample.com``.
    * ``dns_names``: exact names; may be wildcards (``*.web.example.com``) when
      ``allow_wildcards`` is set.
    * ``allow_wildcards``: whether ``*.x`` names are allowed at all; a wildcard
      is allowed when its base (``x``) is under a suffix or it is listed exactly.
    * ``ip_networks``: CIDR networks whose addresses are allowed; empty: no IP SANs.
    * ``email_domains``: mailbox domains (and their subdomains); empty: no email SANs.
    * ``uri_prefixes``: URI SANs must start with one of these (each ends with
      ``/`` or ``:`` so that a match stops at a boundary); empty: no URI SANs.
    """

    # at least one kind of name must be allowed (see _consistent): stated in the JSON Schema too
    model_config = ConfigDict(json_schema_extra={
        "minProperties": 1,
        "anyOf": [{"required": [name], "properties": {name: {"minItems": 1}}}
                  for name in ("dns_suffixes", "dns_names", "ip_networks", "email_domains", "uri_prefixes")],
    })

    dns_suffixes: list[DnsEntry] = Field(default_factory=list, max_length=MAX_RULE_ENTRIES)
    dns_names: list[DnsEntry] = Field(default_factory=list, max_length=MAX_RULE_ENTRIES)
    allow_wildcards: bool = False
    ip_networks: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_RULE_ENTRIES
    )
    email_domains: list[DnsEntry] = Field(default_factory=list, max_length=MAX_RULE_ENTRIES)
    uri_prefixes: list[Annotated[str, StringConstraints(min_length=3, max_length=512)]] = Field(
        default_factory=list, max_length=MAX_RULE_ENTRIES
    )

    @field_validator("dns_suffixes", "email_domains")
    @classmethod
    def _plain_domains(cls, values: list[str], info) -> list[str]:  # type: ignore[no-untyped-def]
        out = []
        for i, value in enumerate(values):
            try:
                out.append(normalise_dns_name(value, allow_wildcard=False))
            except NameSyntaxError as exc:
                hint = " (write the suffix without '*.'; wildcards are governed by allow_wildcards)" if "*" in value else ""
                raise ValueError(f"{info.field_name}[{i}]: {exc}{hint}") from None
        return _unique(out, info.field_name)

    @field_validator("dns_names")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        out = []
        for i, value in enumerate(values):
            try:
                out.append(normalise_dns_name(value, allow_wildcard=True))
            except NameSyntaxError as exc:
                raise ValueError(f"dns_names[{i}]: {exc}") from None
        return _unique(out, "dns_names")

    @field_validator("ip_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        out = []
        for i, value in enumerate(values):
            try:
                out.append(str(ipaddress.ip_network(value, strict=True)))
            except ValueError as exc:
                raise ValueError(f"ip_networks[{i}]: {value!r} is not a network in CIDR form ({exc})") from None
        return _unique(out, "ip_networks")

    @field_validator("uri_prefixes")
    @classmethod
    def _uri_prefixes(cls, values: list[str]) -> list[str]:
        for i, value in enumerate(values):
            scheme, colon, _ = value.partition(":")
            if not colon or not scheme.isascii() or not scheme[:1].isalpha() or any(c.isspace() for c in value):
                raise ValueError(f"uri_prefixes[{i}]: {value!r} must start with a URI scheme (e.g. 'spiffe://example.org/')")
            if not value.endswith(("/", ":")):
                raise ValueError(f"uri_prefixes[{i}]: {value!r} must end with '/' or ':' so that a match stops at a boundary")
        return _unique(values, "uri_prefixes")

    @model_validator(mode="after")
    def _consistent(self) -> DomainRules:
        wildcards = [name for name in self.dns_names if name.startswith("*.")]
        if wildcards and not self.allow_wildcards:
            raise ValueError(f"dns_names lists the wildcard {wildcards[0]!r} but allow_wildcards is false")
        if not (self.dns_suffixes or self.dns_names or self.ip_networks or self.email_domains or self.uri_prefixes):
            raise ValueError(
                "the domain rules allow no subjectAltName at all: give dns_suffixes, dns_names, ip_networks,"
                " email_domains or uri_prefixes"
            )
        return self


class SubjectAttribute(StrEnum):
    """Subject attributes a profile may allow (RFC 4514 short names)."""

    CN = "CN"
    O = "O"  # noqa: E741
    OU = "OU"
    C = "C"
    ST = "ST"
    L = "L"
    SERIAL_NUMBER = "serialNumber"


class SubjectRules(_Strict):
    """What the CSR's subject may hold.

    * ``allowed_attributes``: the only attributes it may contain (each at most once);
    * ``required_attributes``: those it must contain (a subset of the allowed);
    * ``fixed_values``: attribute -> the only value accepted when the attribute
      is present (add it to ``required_attributes`` to make it mandatory);
    * ``cn_must_be_san``: a CN must equal one of the certificate's DNS or IP names.
    An empty subject is fine unless something is required (names live in the SANs).
    """

    allowed_attributes: list[SubjectAttribute] = Field(default_factory=lambda: [SubjectAttribute.CN], max_length=7)
    required_attributes: list[SubjectAttribute] = Field(default_factory=list, max_length=7)
    fixed_values: dict[SubjectAttribute, Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        default_factory=dict
    )
    cn_must_be_san: bool = True

    @field_validator("allowed_attributes", "required_attributes")
    @classmethod
    def _attributes_unique(cls, values: list[SubjectAttribute], info) -> list[SubjectAttribute]:  # type: ignore[no-untyped-def]
        return _unique(values, info.field_name)

    @model_validator(mode="after")
    def _consistent(self) -> SubjectRules:
        for attribute in self.required_attributes:
            if attribute not in self.allowed_attributes:
                raise ValueError(f"required attribute {attribute} is not in allowed_attributes")
        for attribute, value in self.fixed_values.items():
            if attribute not in self.allowed_attributes:
                raise ValueError(f"fixed_values names {attribute}, which is not in allowed_attributes")
            if attribute is SubjectAttribute.C and not (
                len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()
            ):
                raise ValueError(f"fixed_values: C must be a two-letter ISO 3166 code in upper case, not {value!r}")
        return self


class RenewalPolicy(_Strict):
    """When a certificate is renewed: ``renew_before`` its expiry, or once
    ``renew_at_fraction`` of its lifetime has passed; neither given means a
    fraction of 2/3. A ``renew_before`` not shorter than the certificate's actual
    lifetime (the CA's template decides it, not ``validity_days``) falls back to
    the 2/3 fraction, as cert-manager does: otherwise every new certificate would
    be due at once, a renewal loop (docs/decisions/0022-renew-before-longer-than-lifetime.md).
    (The scheduler adds its jitter to this time.)"""

    renew_before: timedelta | None = None
    renew_at_fraction: float | None = None

    @field_validator("renew_before")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("renew_before must be a positive duration")
        return value

    @field_validator("renew_at_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"renew_at_fraction must be between 0 and 1 (exclusive), not {value}")
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> RenewalPolicy:
        if self.renew_before is not None and self.renew_at_fraction is not None:
            raise ValueError("give renew_before or renew_at_fraction, not both")
        return self

    def renewal_time(self, not_before: datetime, not_after: datetime) -> datetime:
        """When a certificate valid from ``not_before`` to ``not_after`` is due
        (before any jitter); always after ``not_before``."""
        if not_after <= not_before:
            raise ValueError("not_after must be after not_before")
        lifetime = not_after - not_before
        if self.renew_before is not None and self.renew_before < lifetime:
            return not_after - self.renew_before
        fraction = self.renew_at_fraction if self.renew_at_fraction is not None else DEFAULT_RENEW_AT_FRACTION
        return not_before + lifetime * fraction


class ProvisioningProfile(_Strict):
    """A provisioning profile ("provisioning bot"): which emCA connector and
    certificate profile issue it, who may ask, and what the certificate may hold."""

    name: ProfileName
    connector: ConnectorName
    ca_profile: ShortText  # emCA's certificate profile name
    key_generation: KeyGeneration
    key_policy: KeyPolicy = Field(default_factory=KeyPolicy)
    bot_key_algorithm: KeyAlgorithm | None = None  # what the deployer generates (bot profiles only)
    allowed_requesters: list[Identity] = Field(min_length=1, max_length=MAX_RULE_ENTRIES)
    domain_rules: DomainRules
    subject_rules: SubjectRules = Field(default_factory=SubjectRules)
    validity_days: ValidityDays
    renewal: RenewalPolicy = Field(default_factory=RenewalPolicy)
    deployment_target: ShortText | None = None  # an opaque target name the deployer resolves
    on_external_revocation: ExternalRevocation = ExternalRevocation.NOTIFY
    #: what happens to a revoked certificate on its targets when the revocation asks for no replacement
    #: (``replace=false``): kept installed, or removed from every target serving it (the deployer; decision 0028)
    on_revocation: OnRevocation = Field(default=OnRevocation.KEEP, description=(
        "keep: a revoked certificate stays installed unless a replacement is deployed over it; remove: the deployer "
        "removes it (and its key files) from every target serving the revoked serial. Ignored for replace=true."))

    @field_validator("allowed_requesters")
    @classmethod
    def _requesters_unique(cls, values: list[str]) -> list[str]:
        return _unique(values, "allowed_requesters")

    @model_validator(mode="after")
    def _consistent(self) -> ProvisioningProfile:
        if self.key_generation is KeyGeneration.BOT:
            if self.bot_key_algorithm is None:
                raise ValueError("bot_key_algorithm is required when key_generation is 'bot' (the deployer generates that key)")
            if not self.key_policy.allows_algorithm(self.bot_key_algorithm):
                raise ValueError(
                    f"bot_key_algorithm {self.bot_key_algorithm} is not allowed by the key policy ({self.key_policy.allowed_summary()})"
                )
            if self.deployment_target is None:
                raise ValueError("deployment_target is required when key_generation is 'bot' (the key is generated beside it)")
        elif self.bot_key_algorithm is not None:
            raise ValueError("bot_key_algorithm is only for key_generation 'bot'; requesters choose their own keys")
        before = self.renewal.renew_before
        if before is not None and before >= timedelta(days=self.validity_days):
            raise ValueError(
                f"renewal.renew_before ({before.days} days) is not shorter than validity_days ({self.validity_days}):"
                " certificates would be due at once"
            )
        return self

    def allows_requester(self, requester: str) -> bool:
        return requester in self.allowed_requesters

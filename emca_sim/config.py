"""The emCA simulator's configuration: CAs, certificate profiles, subscribers, applications.

Loaded from a TOML file (`load_config`) or `SimConfig()` defaults that work out
of the box. The file format is documented, with an example, in
``docs/emca-simulator.md``. Names are matched exactly (as emCA does): a
connector must type the issuing CA's and the profile's names as written here.
"""

from __future__ import annotations

import math
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from emca_sim.backend import Dialect

CaKeyType = Literal["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"]
SubjectKeyType = Literal["EC-P256", "EC-P384", "EC-P521", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519"]
KeyUsageName = Literal["digitalSignature", "nonRepudiation", "keyEncipherment", "dataEncipherment", "keyAgreement"]
ExtendedKeyUsageName = Literal["serverAuth", "clientAuth", "codeSigning", "emailProtection", "timeStamping", "OCSPSigning"]

#: the shortest leaf validity a profile may have: less cannot cross a real pipeline before it expires
MIN_VALIDITY_SECONDS = 30

_ALL_SUBJECT_KEY_TYPES: tuple[SubjectKeyType, ...] = ("EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096")


def slugify(name: str) -> str:
    """A URL-safe file name for a CA: ``certrail Sim Issuing CA P-256`` -> ``certrail-sim-issuing-ca-p-256``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"name {name!r} has no letters or digits")
    return slug


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaConfig(_Model):
    """A CA. Issuing CAs are signed by the root; the name becomes the subject CN."""

    name: str = Field(min_length=1)
    key_type: CaKeyType = "EC-P256"
    validity_days: int = Field(default=3650, ge=1)

    @property
    def slug(self) -> str:
        return slugify(self.name)


class SanRules(_Model):
    """What subject alternative names a profile accepts from a CSR."""

    dns_suffixes: tuple[str, ...] = ()  # empty: any DNS name; "example.com" allows it and its subdomains
    allow_wildcards: bool = True
    allow_ip: bool = True
    max_sans: int = Field(default=100, ge=1)
    required: bool = True  # without any SAN (nor a host-name CN to copy) the CSR is rejected

    @field_validator("dns_suffixes")
    @classmethod
    def _normalise_suffixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s.strip().lstrip("*").lstrip(".").lower().rstrip(".") for s in value if s.strip())


class ProfileConfig(_Model):
    """A certificate profile: the CA that signs, validity, usages, allowed keys and SANs."""

    name: str = Field(min_length=1)
    profile_id: str = Field(min_length=1)
    issuing_ca: str
    validity_days: int = Field(default=90, ge=1, le=36135)
    #: a validity shorter than a day (short-lived certificates, renewal tests); replaces ``validity_days``
    validity_seconds: int | None = Field(default=None, ge=MIN_VALIDITY_SECONDS, le=86400 * 36135)
    key_usages: tuple[KeyUsageName, ...] = ("digitalSignature", "keyEncipherment")
    extended_key_usages: tuple[ExtendedKeyUsageName, ...] = ("serverAuth",)
    key_types: tuple[SubjectKeyType, ...] = _ALL_SUBJECT_KEY_TYPES
    san: SanRules = SanRules()
    manual_approval: bool = False

    @model_validator(mode="after")
    def _one_validity(self) -> ProfileConfig:
        if self.validity_seconds is not None and "validity_days" in self.model_fields_set:
            raise ValueError(f"profile {self.name!r}: give validity_days or validity_seconds, not both")
        return self

    @property
    def validity(self) -> timedelta:
        """How long its leaf certificates are valid from the moment of issuance."""
        if self.validity_seconds is not None:
            return timedelta(seconds=self.validity_seconds)
        return timedelta(days=self.validity_days)

    @property
    def catalogue_validity_days(self) -> int:
        """The validity the API's profile listings report, in whole days as emCA's do (a shorter one: 1)."""
        return max(1, math.ceil(self.validity / timedelta(days=1)))


class ApplicationConfig(_Model):
    """An external application registered at the simulated emCA.

    ``password`` is generated at first start when not given. Source addresses
    are the client addresses the dialects accept requests from.
    """

    username: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    dialect: Dialect
    source_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    password: SecretStr | None = None


def _default_cas() -> tuple[CaConfig, ...]:
    return (
        CaConfig(name="certrail Sim Issuing CA P-256", key_type="EC-P256"),
        CaConfig(name="certrail Sim Issuing CA RSA", key_type="RSA-2048"),
    )


def _default_profiles() -> tuple[ProfileConfig, ...]:
    p256, rsa = "certrail Sim Issuing CA P-256", "certrail Sim Issuing CA RSA"
    return (
        ProfileConfig(name="TLS Server", profile_id="1001", issuing_ca=p256),
        ProfileConfig(name="TLS Server RSA", profile_id="1002", issuing_ca=rsa),
        ProfileConfig(
            name="TLS Client",
            profile_id="1003",
            issuing_ca=p256,
            key_usages=("digitalSignature",),
            extended_key_usages=("clientAuth",),
            san=SanRules(allow_wildcards=False, required=False),
        ),
        ProfileConfig(name="TLS Server Manual", profile_id="1004", issuing_ca=p256, manual_approval=True),
    )


def _default_applications() -> tuple[ApplicationConfig, ...]:
    return (
        ApplicationConfig(username="certrail-v4017", dialect=Dialect.V4_0_17),
        ApplicationConfig(username="certrail-v423", dialect=Dialect.V4_2_3),
        ApplicationConfig(username="certrail-v424", dialect=Dialect.V4_2_4),
    )


class SimConfig(_Model):
    root_ca: CaConfig = CaConfig(name="certrail Sim Root CA", key_type="EC-P384", validity_days=7300)
    issuing_cas: tuple[CaConfig, ...] = Field(default_factory=_default_cas, min_length=1)
    profiles: tuple[ProfileConfig, ...] = Field(default_factory=_default_profiles)
    subscribers: tuple[str, ...] = ("SUB-0001", "SUB-0002")
    applications: tuple[ApplicationConfig, ...] = Field(default_factory=_default_applications)
    # Base of the CRL distribution point and AIA URLs put into certificates; None: http://127.0.0.1:<crl-port>
    public_base_url: str | None = None
    # Extra names for the HTTPS API's TLS certificate (always: localhost, 127.0.0.1, ::1)
    tls_names: tuple[str, ...] = ()
    crl_next_update_hours: int = Field(default=24, ge=1)
    # Key type of the PFX generated for V4.0.17 applications (the key that signs their requests)
    application_key_type: Literal["RSA-2048", "EC-P256"] = "RSA-2048"

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("public_base_url must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> SimConfig:
        ca_names = [ca.name for ca in self.issuing_cas]
        all_slugs = [ca.slug for ca in (self.root_ca, *self.issuing_cas)]
        if len(set(all_slugs)) != len(all_slugs):
            raise ValueError("CA names must be distinct (also once lower-cased, as file names)")
        for field_name, values in (
            ("profile names", [p.name for p in self.profiles]),
            ("profile ids", [p.profile_id for p in self.profiles]),
            ("subscribers", list(self.subscribers)),
            ("application usernames", [a.username for a in self.applications]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"{field_name} must be distinct")
        for profile in self.profiles:
            if profile.issuing_ca not in ca_names:
                raise ValueError(f"profile {profile.name!r}: issuing CA {profile.issuing_ca!r} is not configured")
        return self

    def issuing_ca(self, name: str) -> CaConfig | None:
        return next((ca for ca in self.issuing_cas if ca.name == name), None)

    def with_overrides(self, *, public_base_url: str | None = None) -> SimConfig:
        if public_base_url is None:
            return self
        return self.model_validate({**self.model_dump(), "public_base_url": public_base_url})


def load_config(path: Path | str | None) -> SimConfig:
    """The configuration in a TOML file, or the defaults when ``path`` is None."""
    if path is None:
        return SimConfig()
    with open(path, "rb") as handle:
        return SimConfig.model_validate(tomllib.load(handle))

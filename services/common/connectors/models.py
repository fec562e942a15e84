"""The emCA connector: what an admin enters (`ConnectorSpec`), what is stored and shown
(`Connector`, secrets never included), and what a change was (`ConnectorChange`).

Fields per version (DESIGN.md "The emCA connector"): every connector has a name, the emCA
version, an HTTPS base URL, a username, the issuing CA (exact, case-sensitive), a subscriber
ID, a password, a default emCA certificate profile, a concurrency and optionally a CA bundle
(PEM) for emCA's TLS. V4.0.17 adds the PFX emCA issued at registration, its password and the
AES-256 key; 4.2.x adds the ClientID.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretBytes, SecretStr, field_validator, model_validator

from services.common.contracts.admin import REDACTED, AdminOutcome
from services.common.contracts.errors import ErrorCode
from services.common.contracts.topics import CONNECTOR_NAME_PATTERN
from services.common.emca.types import EmcaVersion

__all__ = [
    "REDACTED",
    "SECRET_FIELDS",
    "ChangeAction",
    "Connector",
    "ConnectorChange",
    "ConnectorEdit",
    "ConnectorError",
    "ConnectorSecrets",
    "ConnectorSpec",
    "ConnectorStatus",
    "EmcaVersion",
    "LastTest",
    "RegistryCode",
    "changed_fields",
    "edit_from_wire",
    "edit_to_wire",
    "spec_from_wire",
    "spec_to_wire",
]

MAX_BUNDLE_CHARS = 1024 * 1024
MAX_PFX_BYTES = 256 * 1024
Text256 = Annotated[str, Field(min_length=1, max_length=256)]


class ConnectorStatus(StrEnum):
    ENABLED = "enabled"  # validated; the gateway routes to it, the issuer works its queue
    DISABLED = "disabled"  # an operator switched it off
    MISCONFIGURED = "misconfigured"  # a connector fault (at test time or seen by the issuer): queue kept, alert


class RegistryCode(StrEnum):
    """Refusals of the registry that are not emCA's answers (ErrorCode has no code for them yet)."""

    INVALID_INPUT = "INVALID_INPUT"
    CONNECTOR_EXISTS = "CONNECTOR_EXISTS"
    CONNECTOR_IN_USE = "CONNECTOR_IN_USE"
    CHANGED_MEANWHILE = "CHANGED_MEANWHILE"
    SECRETS_UNAVAILABLE = "SECRETS_UNAVAILABLE"
    TOPIC_NOT_CREATED = "TOPIC_NOT_CREATED"


class ConnectorError(Exception):
    """A refused registry operation: a stable code (an ErrorCode or a RegistryCode) and a message."""

    def __init__(self, code: ErrorCode | RegistryCode, message: str, *, change: ConnectorChange | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.change = change  # the refused change, for the gateway to publish


class ConnectorSecrets(BaseModel):
    """The secrets of one connector. Never logged, never returned (SecretStr / SecretBytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password: SecretStr
    client_id: SecretStr | None = None  # 4.2.x
    aes_key: SecretStr | None = None  # V4.0.17: base64 (44 chars), hex (64) or raw
    pfx: SecretBytes | None = None  # V4.0.17: the PKCS#12 emCA issued at registration
    pfx_password: SecretStr | None = None  # V4.0.17

    @field_validator("password", "client_id", "aes_key")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("pfx")
    @classmethod
    def _pfx_size(cls, value: SecretBytes | None) -> SecretBytes | None:
        if value is not None and not 0 < len(value.get_secret_value()) <= MAX_PFX_BYTES:
            raise ValueError(f"the PFX must be 1..{MAX_PFX_BYTES} bytes")
        return value

    def present(self) -> tuple[str, ...]:
        """The names of the secrets that are set."""
        return tuple(name for name in SECRET_FIELDS if getattr(self, name) is not None)


SECRET_FIELDS = ("password", "client_id", "aes_key", "pfx", "pfx_password")
_V4017_ONLY = ("aes_key", "pfx", "pfx_password")


class ConnectorSpec(BaseModel):
    """A connector as an admin enters it (create, or the result of an edit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CONNECTOR_NAME_PATTERN)
    version: EmcaVersion
    base_url: str = Field(min_length=9, max_length=2048)
    username: Text256
    issuing_ca: Text256  # exactly as emCA spells it
    subscriber_id: Text256
    default_profile: Text256
    concurrency: int = Field(default=8, ge=1, le=256)
    ca_bundle_pem: str | None = Field(default=None, max_length=MAX_BUNDLE_CHARS)
    secrets: ConnectorSecrets

    @field_validator("base_url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() != "https":
            raise ValueError("the base URL must be https:// (HTTPS only)")
        if not parts.hostname:
            raise ValueError("the base URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the base URL must not hold credentials")
        if parts.query or parts.fragment:
            raise ValueError("the base URL must not have a query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"the base URL has an invalid port: {exc}") from None
        return value.strip().rstrip("/")

    @field_validator("username", "subscriber_id", "default_profile", "issuing_ca")
    @classmethod
    def _no_outer_whitespace(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError("must not start or end with whitespace (names are matched exactly)")
        return value

    @field_validator("ca_bundle_pem")
    @classmethod
    def _bundle(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            certs = x509.load_pem_x509_certificates(value.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"the CA bundle is not PEM certificates: {exc}") from None
        if not certs:
            raise ValueError("the CA bundle holds no certificate")
        return value

    @model_validator(mode="after")
    def _version_secrets(self) -> ConnectorSpec:
        s = self.secrets
        if self.version is EmcaVersion.V4_0_17:
            missing = [n for n in ("aes_key", "pfx") if getattr(s, n) is None]
            if missing:
                raise ValueError(f"V4.0.17 needs {' and '.join(missing)} (the PFX and AES key emCA handed over)")
            if s.client_id is not None:
                raise ValueError("the ClientID belongs to 4.2.x, not V4.0.17")
        else:
            if s.client_id is None:
                raise ValueError(f"{self.version} needs the ClientID emCA issued at registration")
            extra = [n for n in _V4017_ONLY if getattr(s, n) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to V4.0.17, not {self.version}")
        return self

    def describe(self) -> dict[str, JsonValue]:
        """Every field, secrets as "***" (only those that are set), the CA bundle as a summary."""
        return {
            "name": self.name,
            "version": self.version.value,
            "base_url": self.base_url,
            "username": self.username,
            "issuing_ca": self.issuing_ca,
            "subscriber_id": self.subscriber_id,
            "default_profile": self.default_profile,
            "concurrency": self.concurrency,
            "ca_bundle": _bundle_summary(self.ca_bundle_pem),
            **{name: REDACTED for name in self.secrets.present()},
        }


def _bundle_summary(pem: str | None) -> str | None:
    if pem is None:
        return None
    certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    return f"{len(certs)} certificate(s): " + "; ".join(c.subject.rfc4514_string() for c in certs[:4])


@dataclass(frozen=True)
class LastTest:
    """The last validation of a connector (on create, edit, enable or `test`)."""

    ok: bool
    tested_at: datetime
    code: str | None = None  # the failure's code when not ok
    message: str = ""


@dataclass(frozen=True)
class Connector:
    """A stored connector, as anyone may see it: no secret values, only which ones are set."""

    name: str
    version: EmcaVersion
    base_url: str
    username: str
    issuing_ca: str
    subscriber_id: str
    default_profile: str
    concurrency: int
    status: ConnectorStatus
    status_reason: str | None
    last_test: LastTest | None
    pinned_ca_sha256: str
    pinned_chain_pem: tuple[str, ...] = field(repr=False)  # the issuing CA first, as learnt at validation
    ca_bundle_pem: str | None = field(repr=False)
    secret_fields: tuple[str, ...]
    secrets_key_id: str
    revision: int
    created_at: datetime
    updated_at: datetime

    def describe(self) -> dict[str, JsonValue]:
        """For `show` and change descriptions: secrets as "***"."""
        last = self.last_test
        return {
            "name": self.name,
            "version": self.version.value,
            "base_url": self.base_url,
            "username": self.username,
            "issuing_ca": self.issuing_ca,
            "subscriber_id": self.subscriber_id,
            "default_profile": self.default_profile,
            "concurrency": self.concurrency,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "last_test": None
            if last is None
            else {"ok": last.ok, "tested_at": last.tested_at.isoformat(), "code": last.code, "message": last.message},
            "pinned_ca_sha256": self.pinned_ca_sha256,
            "ca_bundle": _bundle_summary(self.ca_bundle_pem),
            **{name: REDACTED for name in self.secret_fields},
            "revision": self.revision,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class ChangeAction(StrEnum):
    """What happened; the gateway publishes ConnectorCreated / Updated / Activated / Deactivated / Deleted."""

    CREATED = "created"
    UPDATED = "updated"
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    DELETED = "deleted"


@dataclass(frozen=True)
class ConnectorChange:
    """A structured description of one registry change (or refusal), ready to become an admin event:
    ``change`` maps each changed field to its new value, secrets as "***"."""

    action: ChangeAction
    connector: str
    outcome: AdminOutcome
    change: dict[str, JsonValue]
    error_code: str | None = None
    error_message: str | None = None
    connector_after: Connector | None = field(default=None, repr=False)


class ConnectorEdit(BaseModel):
    """An edit: the fields to change (None: unchanged). The name cannot change (it names the
    command topic). When the version changes, secrets the new version does not use are dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: EmcaVersion | None = None
    base_url: str | None = None
    username: str | None = None
    issuing_ca: str | None = None
    subscriber_id: str | None = None
    default_profile: str | None = None
    concurrency: int | None = None
    ca_bundle_pem: str | None = None
    remove_ca_bundle: bool = False
    password: SecretStr | None = None
    client_id: SecretStr | None = None
    aes_key: SecretStr | None = None
    pfx: SecretBytes | None = None
    pfx_password: SecretStr | None = None
    repin: bool = False  # accept a changed issuing CA certificate (emCA renewed or re-keyed its CA)

    def apply(self, current: ConnectorSpec) -> ConnectorSpec:
        """The spec after this edit (validated like a new one: raises pydantic.ValidationError)."""
        version = self.version or current.version
        secrets: dict[str, object] = {name: getattr(current.secrets, name) for name in SECRET_FIELDS}
        if version is not current.version:
            keep = ("password", "aes_key", "pfx", "pfx_password") if version is EmcaVersion.V4_0_17 else ("password", "client_id")
            secrets = {name: value for name, value in secrets.items() if name in keep}
        for name in SECRET_FIELDS:
            if getattr(self, name) is not None:
                secrets[name] = getattr(self, name)
        values = current.model_dump(exclude={"secrets"})
        for name in ("base_url", "username", "issuing_ca", "subscriber_id", "default_profile", "concurrency", "ca_bundle_pem"):
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        if self.remove_ca_bundle:
            values["ca_bundle_pem"] = None
        values["version"] = version
        return ConnectorSpec.model_validate({**values, "secrets": ConnectorSecrets.model_validate(secrets)})


def changed_fields(before: ConnectorSpec, after: ConnectorSpec) -> dict[str, JsonValue]:
    """What an edit changed: new values, secrets as "***" (and removed secrets as None)."""
    old, new = before.describe(), after.describe()
    change: dict[str, JsonValue] = {k: v for k, v in new.items() if k not in SECRET_FIELDS and old.get(k) != v}
    for name in SECRET_FIELDS:
        was, now = getattr(before.secrets, name), getattr(after.secrets, name)
        if now is None and was is not None:
            change[name] = None
        elif now is not None and (was is None or was.get_secret_value() != now.get_secret_value()):
            change[name] = REDACTED
    return change


# -- the wire: a spec or an edit as JSON between the gateway and the issuer's internal API (decision 0034) -------------
# Secrets travel in clear inside the internal API's body (behind its token, as the admin gave them to the gateway);
# the PFX as base64. Never logged, never stored in clear, never answered.


def _revealed(value: object) -> str | None:
    if isinstance(value, SecretBytes):
        return base64.b64encode(value.get_secret_value()).decode("ascii")
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return None


def _secrets_in(values: dict[str, object]) -> dict[str, object]:
    out = dict(values)
    if isinstance(out.get("pfx"), str):
        try:
            out["pfx"] = base64.b64decode(str(out["pfx"]), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("pfx is not base64") from None
    return out


def spec_to_wire(spec: ConnectorSpec) -> dict[str, JsonValue]:
    """``spec`` as JSON for the issuer's internal API: its fields, and ``secrets`` revealed (the PFX as base64)."""
    plain: dict[str, JsonValue] = spec.model_dump(mode="json", exclude={"secrets"})
    secrets: dict[str, JsonValue] = {n: _revealed(getattr(spec.secrets, n)) for n in spec.secrets.present()}
    return {**plain, "secrets": secrets}


def spec_from_wire(values: dict[str, object]) -> ConnectorSpec:
    """The spec `spec_to_wire` sent (raises pydantic.ValidationError, or ValueError for a PFX that is not base64)."""
    secrets = values.get("secrets")
    given = _secrets_in(dict(secrets)) if isinstance(secrets, dict) else secrets
    return ConnectorSpec.model_validate({**values, "secrets": given})


def edit_to_wire(edit: ConnectorEdit) -> dict[str, JsonValue]:
    """``edit`` as JSON: the fields it sets (secrets revealed, the PFX as base64)."""
    plain: dict[str, JsonValue] = edit.model_dump(mode="json", exclude=set(SECRET_FIELDS), exclude_none=True)
    secrets: dict[str, JsonValue] = {n: _revealed(getattr(edit, n)) for n in SECRET_FIELDS if getattr(edit, n) is not None}
    return {**plain, **secrets}


def edit_from_wire(values: dict[str, object]) -> ConnectorEdit:
    return ConnectorEdit.model_validate(_secrets_in(values))

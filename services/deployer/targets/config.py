"""What a deployment target is configured with, per kind (validated when a target is added).

Non-secret settings are stored as JSON in ``deployer_targets.config``; secrets
(the webhook's HMAC secret, the SSH client key) are stored encrypted under the
deployer's key (``deployer_targets.secrets``) and are never shown.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Mode = Annotated[str, StringConstraints(pattern=r"^0?[0-7]{3}$")]
Command = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]], Field(min_length=1, max_length=64)]


class TargetKind(StrEnum):
    FILE = "file"
    NGINX = "nginx"
    WEBHOOK = "webhook"
    SSH = "ssh"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, not {value!r}")
    return posixpath.normpath(value)


def certificate_dir_name(certificate_id: str) -> str:
    """A directory name for a certificate id (ids may hold '/' and ':'): the safe
    characters kept, plus a short hash so that two ids never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", certificate_id)[:120].lstrip(".") or "_"
    return f"{safe}-{hashlib.sha256(certificate_id.encode()).hexdigest()[:8]}"


class _Directory(_Config):
    dir: str = Field(description="Where the versions live (absolute); the service reads <dir>/current/...")
    per_certificate: bool = Field(default=False, description="One subdirectory per certificate id under dir.")
    cert_mode: Mode = "0644"
    key_mode: Mode = "0600"
    dir_mode: Mode = "0755"

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str) -> str:
        return _absolute(value, "dir")

    @field_validator("key_mode")
    @classmethod
    def _key_not_shared(cls, value: str) -> str:
        if int(value, 8) & 0o007:
            raise ValueError(f"key_mode {value} would let every user read the private key (no 'other' bits allowed)")
        return value

    def directory_for(self, certificate_id: str) -> str:
        return posixpath.join(self.dir, certificate_dir_name(certificate_id)) if self.per_certificate else self.dir

    def modes(self) -> dict[str, int]:
        return {"cert_mode": int(self.cert_mode, 8), "key_mode": int(self.key_mode, 8), "dir_mode": int(self.dir_mode, 8)}


class FileTargetConfig(_Directory):
    reload_command: Command | None = Field(default=None, description="argv run after the swap (no shell).")
    command_timeout_s: float = Field(default=30.0, gt=0, le=600)


class NginxTargetConfig(_Directory):
    nginx_binary: str = "/usr/sbin/nginx"
    nginx_config: str = Field(description="The nginx.conf that reads <dir>/current/fullchain.pem (absolute).")
    nginx_args: list[str] = Field(default_factory=list, max_length=16, description="Extra arguments, e.g. ['-p', prefix].")
    reload_command: Command | None = Field(default=None, description="Default: nginx -s reload with the same config.")
    command_timeout_s: float = Field(default=30.0, gt=0, le=600)
    probe_host: str = "127.0.0.1"
    probe_port: int = Field(default=443, ge=1, le=65535)
    server_name: str | None = Field(default=None, description="SNI and the name checked; default: the first DNS SAN.")
    probe_ca_file: str | None = Field(default=None, description="Trust for the probe; default: the certificate's own chain.")
    probe_timeout_s: float = Field(default=15.0, gt=0, le=600, description="How long the probe waits for the new serial.")

    @field_validator("nginx_binary", "nginx_config")
    @classmethod
    def _paths(cls, value: str, info) -> str:  # type: ignore[no-untyped-def]
        return _absolute(value, info.field_name)


class WebhookTargetConfig(_Config):
    url: str = Field(description="HTTPS URL the bundle is POSTed to.")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM) the receiver's TLS chains to; default: system trust.")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    attempts: int = Field(default=4, ge=1, le=20)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=8.0, gt=0, le=600)
    include_private_key: bool = Field(default=False, description="Send a bot-held key to the receiver (over verified TLS).")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("a webhook URL must be https:// (TLS is verified)")
        return value


class SshTargetConfig(_Directory):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64)
    known_hosts: str | None = Field(default=None, description="known_hosts file (absolute) holding the host's key.")
    host_key: str | None = Field(default=None, description="The host's public key, one OpenSSH line ('ssh-ed25519 AAAA...').")
    reload_command: Command | None = Field(
        default=None, description="Remote argv run after the swap and after a rollback (sent shell-quoted)."
    )
    connect_timeout_s: float = Field(default=15.0, gt=0, le=300)
    command_timeout_s: float = Field(default=60.0, gt=0, le=600, description="Per remote command, and for the upload.")
    probe_port: int | None = Field(default=None, ge=1, le=65535, description="TLS probe after the reload (off when unset).")
    probe_host: str | None = Field(default=None, description="Where the probe connects; default: host.")
    server_name: str | None = Field(default=None, description="SNI and the name checked; default: the first DNS SAN.")
    probe_ca_file: str | None = Field(default=None, description="Trust for the probe; default: the certificate's own chain.")
    probe_timeout_s: float = Field(default=15.0, gt=0, le=600, description="How long the probe waits for the new serial.")

    @model_validator(mode="after")
    def _host_key_checked(self) -> SshTargetConfig:
        if (self.known_hosts is None) == (self.host_key is None):
            raise ValueError("give exactly one of known_hosts and host_key: the host key is always checked")
        if self.known_hosts is not None:
            _absolute(self.known_hosts, "known_hosts")
        if self.host_key is not None:
            _public_key(self.host_key)
        return self


def _public_key(line: str) -> None:
    """Refuse a host_key that is not one OpenSSH public key line (asyncssh parses it)."""
    import asyncssh  # only where an ssh target is configured

    try:
        asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"host_key is not an OpenSSH public key line ('ssh-ed25519 AAAA...'): {exc}") from None


CONFIG_MODELS: dict[TargetKind, type[_Config]] = {
    TargetKind.FILE: FileTargetConfig,
    TargetKind.NGINX: NginxTargetConfig,
    TargetKind.WEBHOOK: WebhookTargetConfig,
    TargetKind.SSH: SshTargetConfig,
}

#: the secrets each kind needs (stored encrypted) -> whether required
SECRET_FIELDS: dict[TargetKind, dict[str, bool]] = {
    TargetKind.FILE: {},
    TargetKind.NGINX: {},
    TargetKind.WEBHOOK: {"hmac_secret": True},
    TargetKind.SSH: {"client_key": True},
}

MIN_WEBHOOK_SECRET_BYTES = 32


def validate_secrets(kind: TargetKind, secrets: dict[str, str]) -> dict[str, str]:
    allowed = SECRET_FIELDS[kind]
    unknown = sorted(set(secrets) - set(allowed))
    if unknown:
        raise ValueError(f"a {kind} target has no secret named {', '.join(unknown)} (it takes: {', '.join(allowed) or 'none'})")
    missing = sorted(name for name, required in allowed.items() if required and not secrets.get(name))
    if missing:
        raise ValueError(f"a {kind} target needs the secret {', '.join(missing)}")
    if kind is TargetKind.WEBHOOK and len(secrets["hmac_secret"].encode()) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(f"the webhook hmac_secret needs at least {MIN_WEBHOOK_SECRET_BYTES} bytes")
    if kind is TargetKind.SSH:
        _client_key(secrets["client_key"])
    return secrets


def _client_key(text: str) -> None:
    """Refuse a client_key that is not an unencrypted private key (the message never holds key bytes)."""
    import asyncssh

    try:
        asyncssh.import_private_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        reason = "it is encrypted (store it without a passphrase: certrail encrypts it)" if "passphrase" in str(exc).lower() else \
            "it is not an OpenSSH or PEM private key"
        raise ValueError(f"the ssh client_key cannot be used: {reason}") from None

"""The Deployment Targets screen's form: the fields of each target kind (services/deployer/targets/config.py
validates them; the console only shapes the body), the ``PUT /v1/targets/{name}`` body built from a form,
a stored target (as ``/v1/targets`` answers it: secret names, never values) as the form's values, and an
API refusal placed next to the field it concerns. Pure functions (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.gateway.console import views
from services.gateway.console.client import Reply
from services.gateway.console.forms import Form

KINDS = ("file", "nginx", "webhook", "ssh")
DIRECTORY_KINDS = ("file", "nginx", "ssh")
PROBE_KINDS = ("nginx", "ssh")


@dataclass(frozen=True)
class TargetField:
    name: str
    label: str
    kinds: tuple[str, ...]
    kind: str = "text"  # text, number, lines (one item per line), check, password, file
    help: str = ""
    required: bool = False
    secret: bool = False


#: every kind's settings in one list: a field shared by several kinds is one input (``kinds`` says whose it is)
TARGET_FIELDS: tuple[TargetField, ...] = (
    TargetField("dir", "Directory", DIRECTORY_KINDS, help="Absolute path where the versions live; the service reads "
                "<dir>/current/fullchain.pem (and privkey.pem for bot-held keys).", required=True),
    TargetField("per_certificate", "One subdirectory per certificate", DIRECTORY_KINDS, "check"),
    TargetField("url", "Receiver URL", ("webhook",), help="HTTPS URL the bundle is POSTed to (TLS is verified).", required=True),
    TargetField("hmac_secret", "HMAC secret", ("webhook",), "password", help="At least 32 bytes; the receiver checks the "
                "signature with it. Write-only: never shown.", required=True, secret=True),
    TargetField("ca_file", "Receiver CA file", ("webhook",), help="PEM the receiver's TLS chains to; empty: system trust."),
    TargetField("include_private_key", "Send a bot-held private key to the receiver", ("webhook",), "check"),
    TargetField("host", "SSH host", ("ssh",), required=True),
    TargetField("port", "SSH port", ("ssh",), "number", help="Default 22."),
    TargetField("user", "SSH user", ("ssh",), required=True),
    TargetField("host_key", "Host key", ("ssh",), help="The host's public key, one OpenSSH line ('ssh-ed25519 AAAA...'); "
                "or give a known_hosts file instead."),
    TargetField("known_hosts", "known_hosts file", ("ssh",), help="Absolute path of a known_hosts file holding the host's key."),
    TargetField("client_key", "SSH client key (file)", ("ssh",), "file", help="The unencrypted private key the deployer logs "
                "in with (certrail encrypts it). Write-only: never shown.", required=True, secret=True),
    TargetField("nginx_config", "nginx.conf", ("nginx",), help="Absolute path of the nginx.conf that reads "
                "<dir>/current/fullchain.pem.", required=True),
    TargetField("nginx_binary", "nginx binary", ("nginx",), help="Default /usr/sbin/nginx."),
    TargetField("nginx_args", "Extra nginx arguments", ("nginx",), "lines", help="One per line, e.g. -p and a prefix."),
    TargetField("reload_command", "Reload command", DIRECTORY_KINDS, "lines", help="Run after the swap, one argument per "
                "line, no shell (nginx: default nginx -s reload)."),
    TargetField("command_timeout_s", "Command timeout (seconds)", DIRECTORY_KINDS, "number"),
    TargetField("probe_host", "Probe host", PROBE_KINDS, help="Where the TLS check after the reload connects."),
    TargetField("probe_port", "Probe port", PROBE_KINDS, "number", help="nginx: default 443; ssh: no TLS check when empty."),
    TargetField("server_name", "Server name", PROBE_KINDS, help="SNI and the name checked; default: the first DNS name."),
    TargetField("probe_ca_file", "Probe CA file", PROBE_KINDS, help="Trust for the check; default: the certificate's chain."),
    TargetField("timeout_s", "Timeout (seconds)", ("webhook",), "number"),
    TargetField("attempts", "Attempts", ("webhook",), "number"),
)
FIELD_NAMES = frozenset(f.name for f in TARGET_FIELDS) | {"name", "kind"}
SECRET_NAMES = frozenset(f.name for f in TARGET_FIELDS if f.secret)


def fields_of(kind: str) -> list[TargetField]:
    return [f for f in TARGET_FIELDS if kind in f.kinds]


def _number(text: str) -> int | float | str:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text  # the API says what is wrong with it, next to the field


def target_body(form: Form, kind: str) -> dict[str, Any]:
    """``{"kind", "config", "secrets"}`` from the form: only ``kind``'s fields; a blank optional field is left
    out (the kind's default applies); a blank secret is left out, so an edit keeps the stored one."""
    config: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for f in fields_of(kind):
        if f.kind == "file":
            if form.files.get(f.name):
                secrets[f.name] = form.files[f.name].decode("utf-8", errors="replace")
            continue
        value = form.get(f.name) if f.kind == "password" else form.text(f.name)
        if f.secret:
            if value:
                secrets[f.name] = value
        elif f.kind == "check":
            config[f.name] = bool(value)
        elif f.kind == "lines":
            lines = [line.strip() for line in form.get(f.name).splitlines() if line.strip()]
            if lines:
                config[f.name] = lines
        elif value:
            config[f.name] = _number(value) if f.kind == "number" else value
    return {"kind": kind, "config": config, "secrets": secrets}


def form_values(form: Form) -> dict[str, Any]:
    """What the form shows again after a refusal: every plain field, never a secret."""
    return {k: v for k, v in form.fields.items() if k not in SECRET_NAMES and k != "csrf"}


def stored_values(view: dict[str, Any]) -> dict[str, Any]:
    """A stored target as the edit form's values (lists one item per line, booleans as checked boxes)."""
    values: dict[str, Any] = {"name": view.get("name", ""), "kind": view.get("kind", "")}
    for name, value in (view.get("config") or {}).items():
        if name not in FIELD_NAMES or value is None:
            continue
        if isinstance(value, bool):
            values[name] = "on" if value else ""
        elif isinstance(value, list):
            values[name] = "\n".join(str(v) for v in value)
        else:
            values[name] = str(value)
    return values


def where(view: dict[str, Any]) -> str:
    """Where a target installs, in one line."""
    config = view.get("config") or {}
    if view.get("kind") == "webhook":
        return str(config.get("url", ""))
    if view.get("kind") == "ssh":
        return f"{config.get('user')}@{config.get('host')}:{config.get('port', 22)}:{config.get('dir')}"
    return str(config.get("dir", ""))


def refusal_errors(reply: Reply, form: Form, kind: str) -> views.FormErrors:
    """An API refusal as form errors. Field paths and "field: message" parts go next to their field; a message
    that names a field of this kind (a secret's, "known_hosts") or quotes a value the user entered (the probe's "/srv/x
    is not a directory") goes next to that field; the rest to the summary."""
    errors = views.problem_errors(reply, set(FIELD_NAMES))
    general, errors.general = errors.general, []
    for text in general:
        errors.add(_field_named(text, form, kind), text)
    return errors


def _field_named(text: str, form: Form, kind: str) -> str | None:
    for f in fields_of(kind):  # a secret's name, or a name no word holds ("known_hosts")
        if (f.secret or "_" in f.name) and f.name in text:
            return f.name
    for f in fields_of(kind):
        value = form.text(f.name)
        if not f.secret and f.kind not in ("check", "file") and len(value) >= 3 and value in text:
            return f.name
    name = form.text("name")
    return "name" if name and f"'{name}'" in text else None

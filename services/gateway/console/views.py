"""What the console's forms and tables are made of: the connector and profile form fields, the
mapping of an API problem onto the field it concerns, and the JSON bodies built from the forms.
Pure functions (no I/O), so that they are tested without a browser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.contracts.fields import KeyAlgorithm, RevocationReason
from services.gateway.console.client import Reply
from services.gateway.console.forms import Form

VERSIONS = ("V4.0.17", "V4.2.3", "V4.2.4+")
LEGACY = ("V4.0.17",)
REST = ("V4.2.3", "V4.2.4+")
REASONS = [r.value for r in RevocationReason]
BOT_ALGORITHMS = [a.value for a in KeyAlgorithm]
INVENTORY_STATUSES = ("pending", "active", "revoked", "superseded", "expired", "failed")


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"  # text, url, password, number, file, select
    help: str = ""
    required: bool = True
    versions: tuple[str, ...] = ()  # () for every version
    autocomplete: str = "off"


#: the CERTInext "Create emCA Connector" screen, in its order
CONNECTOR_FIELDS: tuple[Field, ...] = (
    Field("name", "Connector name", help="Lower-case letters, digits and dashes; it names the command topic."),
    Field("base_url", "Base URL", "url", help="emCA's API over HTTPS, e.g. https://emca.example.com"),
    Field("username", "Username", help="The external application's user at emCA."),
    Field("issuing_ca", "Issuing CA", help="Exactly as emCA names it (case-sensitive)."),
    Field("subscriber_id", "Subscriber ID"),
    Field("default_profile", "emCA certificate profile", help="The certificate profile used when a provisioning bot names none."),
    Field("password", "Password", "password", autocomplete="new-password"),
    Field("client_id", "Client ID", "password", help="Issued by emCA when the application was registered (4.2.x).",
          versions=REST, autocomplete="new-password"),
    Field("aes_key", "AES key", "password", help="The AES-256 key handed over at registration (V4.0.17).",
          versions=LEGACY, autocomplete="new-password"),
    Field("pfx", "Application PFX", "file", help="The PFX emCA issued for this application (V4.0.17).", versions=LEGACY),
    Field("pfx_password", "PFX password", "password", versions=LEGACY, autocomplete="new-password"),
    Field("ca_bundle", "emCA TLS CA bundle", "file", required=False,
          help="PEM file of the CA that emCA's HTTPS certificate chains to, when the system trust store does not know it."),
    Field("concurrency", "Concurrency", "number", required=False, help="Requests in flight to this emCA at once (default 8)."),
)
SECRET_NAMES = frozenset({"password", "client_id", "aes_key", "pfx", "pfx_password"})
#: which field an emCA validation failure concerns
CODE_FIELDS = {
    "CA_UNREACHABLE": "base_url",
    "CA_TLS_UNTRUSTED": "base_url",
    "CA_AUTH_FAILED": "password",
    "CA_SIGNATURE_FAILED": "pfx",
    "ISSUING_CA_NOT_FOUND": "issuing_ca",
    "CA_PROFILE_NOT_FOUND": "default_profile",
    "SUBSCRIBER_INVALID": "subscriber_id",
    "CONNECTOR_EXISTS": "name",
    "CONNECTOR_NOT_FOUND": "connector",
    "PROFILE_EXISTS": "name",
    "TARGET_EXISTS": "name",
}
HINTS = {
    "CA_TLS_UNTRUSTED": "Upload the CA bundle that emCA's HTTPS certificate chains to.",
    "CA_UNREACHABLE": "Check the URL, the port and that emCA answers from the gateway's network.",
    "CA_AUTH_FAILED": "emCA refused the username and password (enter the password again).",
}
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


@dataclass
class FormErrors:
    """Errors to show: per field (next to it) and for the whole form (in the summary)."""

    fields: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    suggestions: dict[str, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.fields or self.general)

    def add(self, name: str | None, text: str) -> None:
        if name is None:
            self.general.append(text)
        elif name in self.fields:
            self.fields[name] += " " + text
        else:
            self.fields[name] = text


def near_matches(message: str) -> list[str]:
    """The names a "Did you mean 'A' or 'B'?" message offers."""
    _, found, rest = message.partition("Did you mean ")
    if not found:
        return []
    return [a or b for a, b in _QUOTED.findall(rest.split("?")[0])][:5]


def _field_of_path(path: str, known: set[str], aliases: dict[str, str]) -> str | None:
    parts = [p for p in path.split(".") if p not in ("body", "secrets", "") and not p.isdigit()]
    for part in parts:
        part = aliases.get(part, part)
        if part in known:
            return part
    return None


def problem_errors(reply: Reply, known: set[str], aliases: dict[str, str] | None = None) -> FormErrors:
    """An API problem as form errors: the field it concerns when there is one, else the whole form."""
    aliases = aliases or {}
    errors = FormErrors()
    code, message = reply.code, reply.message
    target = CODE_FIELDS.get(code)
    if target is not None and target in known:
        text = f"{message}"
        if code in HINTS:
            text += f" {HINTS[code]}"
        errors.add(target, f"{code}: {text}")
        if code in ("ISSUING_CA_NOT_FOUND", "CA_PROFILE_NOT_FOUND"):
            errors.suggestions[target] = near_matches(message)
        return errors
    if reply.errors:  # SCHEMA_VIOLATION: one per field path
        for item in reply.errors:
            errors.add(_field_of_path(str(item.get("field", "")), known, aliases), str(item.get("message", "invalid")))
        return errors
    if code == "INVALID_INPUT":  # "loc: msg; loc: msg"
        for part in message.split("; "):
            loc, sep, text = part.partition(": ")
            name = _field_of_path(loc, known, aliases) if sep else None
            errors.add(name, text if name else part)  # "the ssh client_key cannot be used: ..." keeps its start
        return errors
    errors.add(None, f"{code}: {message}")
    return errors


# -- connectors --------------------------------------------------------------------------------------------------------


def connector_body(form: Form, *, create: bool) -> dict[str, Any]:
    """The /v1/connectors body from the form: the chosen version's fields only; secrets and files
    only when given (an edit keeps what is not given)."""
    import base64

    version = form.text("version")
    body: dict[str, Any] = {"version": version} if version else {}
    for f in CONNECTOR_FIELDS:
        if f.versions and version not in f.versions:
            continue
        if f.kind == "file":
            data = form.files.get(f.name)
            if data:
                body[f"{f.name}_base64"] = base64.b64encode(data).decode("ascii")
            continue
        value = form.get(f.name) if f.name in SECRET_NAMES else form.text(f.name)
        if not value:
            continue
        if f.kind == "number":
            body[f.name] = int(value) if value.isdigit() else value
        else:
            body[f.name] = value
    if not create:
        body.pop("name", None)
        if form.get("remove_ca_bundle"):
            body["remove_ca_bundle"] = True
        if form.get("repin"):
            body["repin"] = True
    return body


def connector_values(form: Form) -> dict[str, str]:
    """What the form shows again after a refusal: every plain field, never a secret or a file."""
    return {k: v for k, v in form.fields.items() if k not in SECRET_NAMES and k != "csrf"}


CONNECTOR_ALIASES = {"pfx_base64": "pfx", "ca_bundle_base64": "ca_bundle", "ca_bundle_pem": "ca_bundle"}


def connector_status(status: str) -> str:
    return {"enabled": "Active", "disabled": "Inactive", "misconfigured": "Inactive (misconfigured)"}.get(status, status)


# -- provisioning profiles ("bots") --------------------------------------------------------------------------------------

PROFILE_FIELD_NAMES = {"name", "connector", "ca_profile", "key_generation", "bot_key_algorithm", "allowed_requesters",
                       "dns_suffixes", "dns_names", "allow_wildcards", "ip_networks", "rsa_min_bits", "ec_curves",
                       "validity_days", "renew_before_days", "renew_at_fraction", "targets"}
PROFILE_ALIASES = {"domain_rules": "dns_suffixes", "key_policy": "rsa_min_bits", "renewal": "renew_before_days",
                   "renew_before": "renew_before_days", "rsa_max_bits": "rsa_min_bits", "ed25519": "ec_curves",
                   "deployment_target": "targets"}


def _lines(value: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", value) if item]


def profile_body(form: Form) -> dict[str, Any]:
    """The ProvisioningProfile JSON from the Configure Bot form (the API validates it)."""
    body: dict[str, Any] = {
        "name": form.text("name"),
        "connector": form.text("connector"),
        "ca_profile": form.text("ca_profile"),
        "key_generation": form.text("key_generation") or "requester",
        "allowed_requesters": _lines(form.get("allowed_requesters")),
        "domain_rules": {"dns_suffixes": _lines(form.get("dns_suffixes")), "dns_names": _lines(form.get("dns_names")),
                         "allow_wildcards": bool(form.get("allow_wildcards")), "ip_networks": _lines(form.get("ip_networks"))},
        "key_policy": {"rsa_min_bits": int(form.text("rsa_min_bits")) if form.text("rsa_min_bits").isdigit() else None,
                       "ec_curves": form.getlist("ec_curves")},
    }
    validity = form.text("validity_days")
    body["validity_days"] = int(validity) if validity.isdigit() else validity or None
    if body["key_generation"] == "bot":
        body["bot_key_algorithm"] = form.text("bot_key_algorithm") or None
    target = deployment_target(form)
    if target:
        body["deployment_target"] = target
    renewal: dict[str, Any] = {}
    days, fraction = form.text("renew_before_days"), form.text("renew_at_fraction")
    if days:
        renewal["renew_before"] = f"P{days}D" if days.isdigit() else days
    if fraction:
        try:
            renewal["renew_at_fraction"] = float(fraction)
        except ValueError:
            renewal["renew_at_fraction"] = fraction
    body["renewal"] = renewal
    body["on_revocation"] = form.text("on_revocation") or "keep"
    body["on_external_revocation"] = form.text("on_external_revocation") or "notify"
    return body


#: a profile's parts the form shows only some fields of: the stored ones it does not show are kept on an edit
_PARTLY_SHOWN = ("key_policy", "domain_rules")


def profile_edit_body(stored: dict[str, Any], body: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """The PUT body of an edit: the form's fields over the stored profile (``fields``: the profile's own fields,
    whatever else the API's view carries is dropped), so what the form does not show (subject rules, the RSA
    ceiling and exponent, Ed25519, and any field added later) is kept rather than reset to its default."""
    merged = {k: v for k, v in stored.items() if k in fields}
    merged.update(body)
    for part in _PARTLY_SHOWN:
        if isinstance(stored.get(part), dict) and isinstance(body.get(part), dict):
            merged[part] = {**stored[part], **body[part]}
    return merged


def deployment_target(form: Form) -> str | None:
    """The profile's ``deployment_target`` (the target a bot-held key is generated beside; decision 0021) from
    the targets chosen on the page: the stored one while it stays chosen, else the first chosen one. With none
    chosen, a stored name that was not on the page (no target the deployer lists) is kept; when the targets
    could not be listed (no ``targets_listed`` in the form) the stored one is kept."""
    chosen, shown, stored = form.getlist("targets"), form.getlist("shown_targets"), form.text("stored_target")
    if not form.get("targets_listed"):
        return stored or None
    if chosen:
        return stored if stored in chosen else chosen[0]
    return stored if stored and stored not in shown else None


def profile_values(profile: dict[str, Any]) -> dict[str, Any]:
    """A stored profile (as /v1/profiles answers it) as the form's values."""
    rules = profile.get("domain_rules") or {}
    policy = profile.get("key_policy") or {}
    renewal = profile.get("renewal") or {}
    before = renewal.get("renew_before") or ""
    match = re.fullmatch(r"P(\d+)D", str(before))
    return {
        "name": profile.get("name", ""), "connector": profile.get("connector", ""), "ca_profile": profile.get("ca_profile", ""),
        "key_generation": profile.get("key_generation", "requester"), "bot_key_algorithm": profile.get("bot_key_algorithm") or "",
        "allowed_requesters": "\n".join(profile.get("allowed_requesters") or []),
        "dns_suffixes": "\n".join(rules.get("dns_suffixes") or []), "dns_names": "\n".join(rules.get("dns_names") or []),
        "allow_wildcards": "on" if rules.get("allow_wildcards") else "", "ip_networks": "\n".join(rules.get("ip_networks") or []),
        "rsa_min_bits": str(policy.get("rsa_min_bits") or ""), "ec_curves": list(policy.get("ec_curves") or []),
        "validity_days": str(profile.get("validity_days") or ""),
        "renew_before_days": match.group(1) if match else str(before),
        "renew_at_fraction": "" if renewal.get("renew_at_fraction") is None else str(renewal["renew_at_fraction"]),
        "deployment_target": profile.get("deployment_target") or "",
        "on_revocation": profile.get("on_revocation") or "keep",
        "on_external_revocation": profile.get("on_external_revocation") or "notify",
    }


def profile_form_values(form: Form) -> dict[str, Any]:
    values: dict[str, Any] = {k: v for k, v in form.fields.items() if k not in ("csrf", "stored_target", "shown_targets")}
    values["ec_curves"] = form.getlist("ec_curves")
    values["deployment_target"] = form.text("stored_target")
    return values


NEW_PROFILE_VALUES: dict[str, Any] = {"key_generation": "requester", "rsa_min_bits": "2048", "ec_curves": ["P-256", "P-384"],
                                      "validity_days": "90", "renew_before_days": "30"}


# -- certificates ----------------------------------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def days_left(not_after: Any, now: datetime) -> int | None:
    end = parse_time(not_after)
    if end is None:
        return None
    return int((end - now).total_seconds() // 86400)


def urgency(days: int | None, status: str) -> str:
    """A class for the days-to-expiry cell: expired, soon (<= 14 days), due (<= 30), ok."""
    if days is None or status in ("revoked", "failed"):
        return "none"
    if days < 0:
        return "expired"
    if days <= 14:
        return "soon"
    if days <= 30:
        return "due"
    return "ok"


def short_type(event_type: str | None) -> str:
    """``io.certrail.certificate.issued.v1`` -> ``certificate issued``."""
    if not event_type:
        return "(undecodable record)"
    parts = event_type.split(".")
    if parts[:2] == ["io", "certrail"]:
        parts = parts[2:]
    if parts and re.fullmatch(r"v\d+", parts[-1]):
        parts = parts[:-1]
    return " ".join(p.replace("_", " ") for p in parts)

"""`certrail connectors ...`: the emCA connector registry from the command line.

Settings come from the environment when a command runs: the issuer's database
(``CERTRAIL_ISSUER_DB_URL``, else ``CERTRAIL_DB_URL``, else var/issuer.db; migrated with ``certrail db upgrade``)
and, for a delete's checks, the gateway's (``CERTRAIL_GATEWAY_DB_URL``, ...), ``CERTRAIL_SECRETS_*`` (the keys that encrypt connector
secrets) and, for ``create``, ``CERTRAIL_KAFKA_*`` (the connector's command topic is created).

Secrets never come from arguments: each is read from an environment variable or prompted for
with hidden input (files for the PFX, the AES key and the CA bundle). Failures print
``error: <CODE>: <message>`` and exit with 1 (2 for invalid input). See docs/connectors.md.

Every change (create, update, enable, disable, delete, rotate-secrets) goes through the issuer's one
path for connectors (services/issuer/registry/changes.py; decisions 0019 and 0034), run here on the issuer's
database, as ``certrail targets`` runs the deployer's: refused ones too, it is recorded as an admin event naming
``cli:<OS user>`` or ``--actor`` in the issuer's outbox, which the running issuer publishes (the CLI needs no
Kafka for it, and no running service); the gateway learns the change from that event. A delete is refused
while the gateway's profiles or live certificates use the connector (its checks, on its tables, in its database).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import SecretBytes, SecretStr, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common import migrate
from services.common.admin_outbox import Actor
from services.common.connectors.models import ConnectorEdit, ConnectorError, ConnectorSecrets, ConnectorSpec, EmcaVersion
from services.common.connectors.secretbox import SecretBoxError, SecretsSettings, generate_key, load_secret_box
from services.common.db import make_engine, read_session, safe_url
from services.common.emca.client import connect
from services.common.settings import DatabaseSettings, KafkaSettings
from services.gateway.config.actor import cli_actor_name
from services.issuer.registry import changes as config_connectors
from services.issuer.registry.registry import ConnectorRegistry, KafkaTopicCreator, UsageCheck, input_error

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

PASSWORD_ENV, CLIENT_ID_ENV = "CERTRAIL_CONNECTOR_PASSWORD", "CERTRAIL_CONNECTOR_CLIENT_ID"
AES_KEY_ENV, PFX_PASSWORD_ENV = "CERTRAIL_CONNECTOR_AES_KEY", "CERTRAIL_CONNECTOR_PFX_PASSWORD"
SIM_DEFAULTS = {"issuing_ca": "certrail Sim Issuing CA P-256", "subscriber_id": "SUB-0001", "default_profile": "TLS Server"}
SIM_USERS = {EmcaVersion.V4_0_17: "certrail-v4017", EmcaVersion.V4_2_3: "certrail-v423", EmcaVersion.V4_2_4: "certrail-v424"}

Name = Annotated[str, typer.Argument(help="The connector's name (lower-case letters, digits, '-').")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Version = Annotated[EmcaVersion | None, typer.Option("--version", help="emCA version.")]
BaseUrl = Annotated[str | None, typer.Option("--base-url", help="emCA's HTTPS base URL.")]
Username = Annotated[str | None, typer.Option("--username", help="The registered application's username.")]
IssuingCa = Annotated[str | None, typer.Option("--issuing-ca", help="The issuing CA, exactly as emCA names it.")]
Subscriber = Annotated[str | None, typer.Option("--subscriber-id", help="The emCA subscriber ID.")]
Profile = Annotated[str | None, typer.Option("--profile", help="The default emCA certificate profile.")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", min=1, max=256, help="Concurrent calls to emCA (default 8).")]
CaBundle = Annotated[Path | None, typer.Option("--ca-bundle", exists=True, dir_okay=False, help="PEM bundle emCA's TLS chains to.")]
Pfx = Annotated[Path | None, typer.Option("--pfx", exists=True, dir_okay=False, help="V4.0.17: the PFX emCA issued.")]
AesKeyFile = Annotated[Path | None, typer.Option("--aes-key-file", exists=True, dir_okay=False, help="V4.0.17: file with the AES key.")]
SimDir = Annotated[Path | None, typer.Option("--from-sim-dir", file_okay=False, help="Take URL, trust and credentials from an emCA simulator's data dir.")]
SimUser = Annotated[str | None, typer.Option("--sim-user", help="The simulator application (default: the version's).")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who acts, as the admin event names it (default: cli:<OS user>).")]


def _fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ConnectorError as exc:
        _fail(str(exc.code), exc.message, 2 if exc.code == "INVALID_INPUT" else 1)
    except ValidationError as exc:
        error = input_error(exc)
        _fail(str(error.code), error.message, 2)
    except SecretBoxError as exc:
        _fail("SECRETS_UNAVAILABLE", str(exc))
    except SQLAlchemyError as exc:
        _fail("DATABASE_ERROR", str(getattr(exc, "orig", None) or exc).splitlines()[0])


@contextmanager
def _registry(*, create_key: bool = False) -> Iterator[ConnectorRegistry]:
    settings = DatabaseSettings.for_service("issuer")
    if not migrate.check_at_head(settings):
        _fail("DATABASE_NOT_MIGRATED", f"{safe_url(settings.url)} is not at the newest schema: run `certrail db upgrade`")
    box = load_secret_box(SecretsSettings(), create=create_key)
    gateway_settings = DatabaseSettings.for_service("gateway")
    shared = migrate.same_database(gateway_settings.url, settings.url)
    engine = make_engine(settings)
    gateway_engine = engine if shared else make_engine(gateway_settings)
    try:
        from services.gateway.api_connectors import usage_checks  # the gateway's profiles and certificates; lazily

        checks = usage_checks() if shared else _in_database(usage_checks(), gateway_engine)
        yield ConnectorRegistry(engine, box, connect=connect, topics=KafkaTopicCreator(KafkaSettings()),
                                usage_checks=checks)
    finally:
        engine.dispose()
        gateway_engine.dispose()


class _InDatabase:
    """A usage check of the gateway run on the gateway's own database (not in the issuer's delete transaction)."""

    def __init__(self, check: UsageCheck, engine: Engine) -> None:
        self.name = check.name
        self._check, self._engine = check, engine

    def usages(self, session: Session, connector: str) -> list[str]:  # noqa: ARG002 - the issuer's, not the gateway's
        with read_session(self._engine) as own:
            return self._check.usages(own, connector)


def _in_database(checks: Sequence[UsageCheck], engine: Engine) -> list[UsageCheck]:
    return [_InDatabase(check, engine) for check in checks]


def _actor(registry: ConnectorRegistry, given: str | None) -> Actor:
    try:
        name = cli_actor_name(given)
    except ValueError as exc:
        _fail("INVALID_INPUT", str(exc), 2)
    return Actor(registry.engine, name, lambda: datetime.now(UTC))


def _secret(env: str, prompt: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    return str(typer.prompt(f"{prompt} (or set {env})", hide_input=True))


def _sim(sim_dir: Path, user: str) -> dict[str, Any]:
    """What the simulator handed over for ``user``: fields, secrets and files."""
    app_dir = sim_dir / "applications" / user
    try:
        creds = json.loads((app_dir / "credentials.json").read_text())
        server = json.loads((sim_dir / "server.json").read_text())
    except (OSError, ValueError) as exc:
        _fail("INVALID_INPUT", f"cannot read the simulator's files in {sim_dir}: {exc}", 2)
    found: dict[str, Any] = {
        "version": EmcaVersion(creds["dialect"]),
        "base_url": server["api_url"],
        "username": creds["username"],
        "ca_bundle_pem": (sim_dir / "tls-ca.pem").read_text(),
        "password": SecretStr(creds["password"]),
    }
    if creds.get("client_id"):
        found["client_id"] = SecretStr(creds["client_id"])
    if creds.get("pfx_file"):
        found["pfx"] = SecretBytes((app_dir / creds["pfx_file"]).read_bytes())
        found["pfx_password"] = SecretStr(creds.get("pfx_password") or "")
        found["aes_key"] = SecretStr((app_dir / creds["aes_key_file"]).read_text().strip())
    return found


def _sim_user(version: EmcaVersion | None, sim_user: str | None) -> str:
    if sim_user:
        return sim_user
    if version is None:
        _fail("INVALID_INPUT", "give --sim-user or --version with --from-sim-dir", 2)
    return SIM_USERS[version]


def _print(data: object, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))


@app.command()
def create(
    name: Name, version: Version = None, base_url: BaseUrl = None, username: Username = None, issuing_ca: IssuingCa = None,
    subscriber_id: Subscriber = None, profile: Profile = None, concurrency: Concurrency = None, ca_bundle: CaBundle = None,
    pfx: Pfx = None, aes_key_file: AesKeyFile = None, from_sim_dir: SimDir = None, sim_user: SimUser = None, as_json: Json = False,
    actor: ActorOption = None,
) -> None:
    """Validate a new connector against emCA, pin its issuing CA, create its command topic, store it enabled."""
    values: dict[str, Any] = {}
    if from_sim_dir is not None:
        values.update(SIM_DEFAULTS)
        values.update(_sim(from_sim_dir, _sim_user(version, sim_user)))
    given = {"version": version, "base_url": base_url, "username": username, "issuing_ca": issuing_ca,
             "subscriber_id": subscriber_id, "default_profile": profile, "concurrency": concurrency}
    values.update({k: v for k, v in given.items() if v is not None})
    if ca_bundle is not None:
        values["ca_bundle_pem"] = ca_bundle.read_text()
    if pfx is not None:
        values["pfx"] = SecretBytes(pfx.read_bytes())
    if aes_key_file is not None:
        values["aes_key"] = SecretStr(aes_key_file.read_text().strip())
    if "version" not in values:
        _fail("INVALID_INPUT", "--version is required", 2)
    legacy = values["version"] is EmcaVersion.V4_0_17
    needed = [("password", PASSWORD_ENV, "emCA password")]
    if legacy:
        needed += [("aes_key", AES_KEY_ENV, "AES key"), ("pfx_password", PFX_PASSWORD_ENV, "PFX password")]
    else:
        needed += [("client_id", CLIENT_ID_ENV, "ClientID")]
    for key, env, prompt in needed:
        if key not in values:
            values[key] = SecretStr(_secret(env, prompt))
    secret_names = ("password", "client_id", "aes_key", "pfx", "pfx_password")
    secrets = {k: values.pop(k) for k in secret_names if k in values}
    with _errors():
        spec = ConnectorSpec.model_validate({"name": name, **values, "secrets": ConnectorSecrets.model_validate(secrets)})
        with _registry(create_key=True) as registry:
            change = asyncio.run(config_connectors.create_connector(_actor(registry, actor), registry, spec))
    if as_json:
        _print(change.change, True)
        return
    typer.echo(f"created connector {name}: {change.change['status']}, issuing CA {spec.issuing_ca!r} "
               f"pinned (SHA-256 {change.change['pinned_ca_sha256']}), command topic {change.change['command_topic']}")


@app.command()
def update(
    name: Name, version: Version = None, base_url: BaseUrl = None, username: Username = None, issuing_ca: IssuingCa = None,
    subscriber_id: Subscriber = None, profile: Profile = None, concurrency: Concurrency = None, ca_bundle: CaBundle = None,
    no_ca_bundle: Annotated[bool, typer.Option("--no-ca-bundle", help="Use the system trust instead.")] = False,
    pfx: Pfx = None, aes_key_file: AesKeyFile = None,
    set_password: Annotated[bool, typer.Option("--set-password", help=f"New password ({PASSWORD_ENV} or prompt).")] = False,
    set_client_id: Annotated[bool, typer.Option("--set-client-id", help=f"New ClientID ({CLIENT_ID_ENV} or prompt).")] = False,
    set_aes_key: Annotated[bool, typer.Option("--set-aes-key", help=f"New AES key ({AES_KEY_ENV} or prompt).")] = False,
    set_pfx_password: Annotated[bool, typer.Option("--set-pfx-password", help=f"({PFX_PASSWORD_ENV} or prompt).")] = False,
    repin: Annotated[bool, typer.Option("--repin", help="Accept a changed issuing CA certificate.")] = False,
    from_sim_dir: SimDir = None, sim_user: SimUser = None, as_json: Json = False, actor: ActorOption = None,
) -> None:
    """Edit a connector: validated again; stored only when every check passes."""
    values: dict[str, Any] = {}
    if from_sim_dir is not None:
        with _errors():
            with _registry() as registry:
                current = registry.get(name)
        values.update(_sim(from_sim_dir, _sim_user(version or current.version, sim_user)))
    given = {"version": version, "base_url": base_url, "username": username, "issuing_ca": issuing_ca,
             "subscriber_id": subscriber_id, "default_profile": profile, "concurrency": concurrency}
    values.update({k: v for k, v in given.items() if v is not None})
    if ca_bundle is not None:
        values["ca_bundle_pem"] = ca_bundle.read_text()
    if pfx is not None:
        values["pfx"] = SecretBytes(pfx.read_bytes())
    if aes_key_file is not None:
        values["aes_key"] = SecretStr(aes_key_file.read_text().strip())
    for flag, key, env, prompt in ((set_password, "password", PASSWORD_ENV, "new emCA password"),
                                   (set_client_id, "client_id", CLIENT_ID_ENV, "new ClientID"),
                                   (set_aes_key, "aes_key", AES_KEY_ENV, "new AES key"),
                                   (set_pfx_password, "pfx_password", PFX_PASSWORD_ENV, "new PFX password")):
        if flag:
            values[key] = SecretStr(_secret(env, prompt))
    with _errors():
        edit = ConnectorEdit.model_validate({**values, "remove_ca_bundle": no_ca_bundle, "repin": repin})
        with _registry() as registry:
            change = asyncio.run(config_connectors.update_connector(_actor(registry, actor), registry, name, edit))
    _print(change.change, as_json)
    if not as_json:
        changed = ", ".join(f"{k}={v}" for k, v in change.change.items()) or "nothing changed"
        typer.echo(f"updated connector {name}: {changed}")


@app.command("list")
def list_(as_json: Json = False) -> None:
    """Every connector (no secrets)."""
    with _errors():
        with _registry() as registry:
            connectors = registry.list()
    if as_json:
        _print([c.describe() for c in connectors], True)
        return
    if not connectors:
        typer.echo("no connectors")
    for c in connectors:
        last = "never tested" if c.last_test is None else ("ok" if c.last_test.ok else f"failed {c.last_test.code}")
        typer.echo(f"{c.name:<24} {c.version.value:<8} {c.status.value:<13} {c.base_url}  {c.issuing_ca!r}  last test: {last}")


@app.command()
def show(name: Name, as_json: Json = False) -> None:
    """One connector; secrets shown as ***."""
    with _errors():
        with _registry() as registry:
            described = registry.get(name).describe()
    if as_json:
        _print(described, True)
        return
    for key, value in described.items():
        typer.echo(f"{key + ':':<18} {json.dumps(value) if isinstance(value, dict) else value}")


@app.command()
def test(name: Name) -> None:
    """Validate a connector against emCA now (records the result; may change misconfigured <-> enabled)."""
    with _errors():
        with _registry() as registry:
            connector, report = asyncio.run(registry.test(name))
    for check in report.checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.check:<11} {check.code + ': ' if check.code else ''}{check.message}")
    typer.echo(f"status: {connector.status.value}")
    last = connector.last_test
    if last is None or not last.ok:
        _fail(last.code if last and last.code else "CA_PROTOCOL_ERROR", last.message if last else "not tested")


@app.command()
def enable(name: Name, actor: ActorOption = None) -> None:
    """Validate, then enable."""
    with _errors():
        with _registry() as registry:
            asyncio.run(config_connectors.enable_connector(_actor(registry, actor), registry, name))
    typer.echo(f"connector {name}: enabled")


@app.command()
def disable(name: Name, reason: Annotated[str | None, typer.Option("--reason")] = None, actor: ActorOption = None) -> None:
    """Disable (the gateway stops routing to it; its queue is kept)."""
    with _errors():
        with _registry() as registry:
            asyncio.run(config_connectors.disable_connector(_actor(registry, actor), registry, name, reason))
    typer.echo(f"connector {name}: disabled")


@app.command()
def delete(name: Name, actor: ActorOption = None) -> None:
    """Delete (refused while a profile or a live certificate uses it; the command topic is kept)."""
    with _errors():
        with _registry() as registry:
            asyncio.run(config_connectors.delete_connector(_actor(registry, actor), registry, name))
    typer.echo(f"connector {name}: deleted")


@app.command("rotate-secrets")
def rotate_secrets(actor: ActorOption = None) -> None:
    """Re-encrypt every connector's secrets under the first key of CERTRAIL_SECRETS_KEYS."""
    with _errors():
        with _registry() as registry:
            report = config_connectors.rotate_secrets(_actor(registry, actor), registry)
    typer.echo(f"rotated {len(report.rotated)}, already current {len(report.already_current)}, failed {len(report.failed)}")
    for name, why in report.failed.items():
        typer.echo(f"  {name}: {why}", err=True)
    if report.failed:
        _fail("SECRETS_UNAVAILABLE", f"{len(report.failed)} connector(s) could not be re-encrypted")


@app.command("generate-key")
def generate_key_() -> None:
    """Print a new secrets key (put it first in CERTRAIL_SECRETS_KEYS, then rotate-secrets)."""
    typer.echo(generate_key())

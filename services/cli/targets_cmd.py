"""`certrail targets ...`: the deployer's deployment targets and which profiles deploy to them.

Settings come from the environment: the deployer's database (``CERTRAIL_DEPLOYER_DB_URL``, else
``CERTRAIL_DB_URL``, else var/deployer.db) and
``CERTRAIL_DEPLOYER_KEYS`` / ``CERTRAIL_DEPLOYER_KEYS_FILE`` (the deployer's key, which
encrypts target secrets). Secrets are read from files or environment variables, never
from the command line, and are never shown.

add/remove/bind/unbind go through the deployer's one configuration path (services/deployer/config/):
a target is probed before it is stored, and each change (or its refusal) is recorded with its admin
event (actor ``cli:<OS user>`` or ``--actor``), which the running deployer publishes to
``<prefix>.events.deployer``.

    certrail targets add edge --kind nginx --config-file edge.json
    certrail targets add hook --kind webhook --config '{"url": "https://..."}' --secret-file hmac_secret=/run/hook.secret
    certrail targets add web1 --kind ssh --config-file web1.json --secret-file client_key=/run/certrail/web1_ed25519
    certrail targets bind web-servers edge
    certrail targets list | show edge | unbind web-servers edge | remove edge
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common import migrate
from services.common.connectors.secretbox import SecretBoxError
from services.common.db import make_engine, read_session, safe_url
from services.common.settings import DatabaseSettings
from services.deployer import store
from services.deployer.config import targets as one_path
from services.deployer.config.change import Actor, ConfigCode, Refused
from services.deployer.keys import deployer_box
from services.deployer.settings import DeployerSettings
from services.deployer.targets.config import TargetKind
from services.gateway.config.actor import cli_actor_name

app = typer.Typer(no_args_is_help=True, help=__doc__)
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who acts, as the admin event names it (default: cli:<OS user>).")]
#: refusals answered with exit code 2 (the input), as before the path; the others exit 1
INPUT_CODES = frozenset({ConfigCode.INVALID_INPUT, ConfigCode.TARGET_EXISTS, ConfigCode.TARGET_IN_USE})


def _fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def _engine() -> Iterator[Engine]:
    settings = DatabaseSettings.for_service("deployer")
    if not migrate.check_at_head(settings):
        _fail("DATABASE_NOT_MIGRATED", f"{safe_url(settings.url)} is not at the newest schema: run `certrail db upgrade`")
    engine = make_engine(settings)
    try:
        yield engine
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors(include_url=False))
        _fail("INVALID_INPUT", problems, 2)
    except Refused as refused:
        _fail(refused.code, refused.message, 2 if refused.code in INPUT_CODES else 1)
    except store.TargetNotFound as exc:
        _fail("TARGET_NOT_FOUND", str(exc))
    except ValueError as exc:
        _fail("INVALID_INPUT", str(exc), 2)
    except SecretBoxError as exc:
        _fail("SECRETS_UNAVAILABLE", str(exc))
    except SQLAlchemyError as exc:
        _fail("DATABASE_ERROR", str(getattr(exc, "orig", None) or exc).splitlines()[0])
    finally:
        engine.dispose()


def _recorded(actor: Actor) -> None:
    if actor.recorded:
        typer.echo(f"recorded as an admin event (actor {actor.name}); the running deployer publishes it", err=True)


def _actor(engine: Engine, given: str | None) -> Actor:
    try:
        return Actor(engine, cli_actor_name(given), lambda: datetime.now(UTC))
    except ValueError as exc:
        _fail("INVALID_INPUT", str(exc), 2)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            _fail("INVALID_INPUT", f"{what} takes NAME=VALUE, not {value!r}", 2)
        out[name] = rest
    return out


@app.command()
def add(
    name: str,
    kind: Annotated[TargetKind, typer.Option(help="file, nginx, webhook or ssh")],
    config: Annotated[str | None, typer.Option(help="The configuration as a JSON object.")] = None,
    config_file: Annotated[Path | None, typer.Option(help="A file holding the JSON configuration.")] = None,
    secret_file: Annotated[list[str], typer.Option(help="NAME=PATH: a secret read from a file (hmac_secret=..., client_key=...).")] = [],  # noqa: B006
    secret_env: Annotated[list[str], typer.Option(help="NAME=VARIABLE: a secret read from an environment variable.")] = [],  # noqa: B006
    replace: Annotated[bool, typer.Option(help="Replace an existing target of that name.")] = False,
    actor: ActorOption = None,
) -> None:
    """Add (validated and probed) a deployment target."""
    if (config is None) == (config_file is None):
        _fail("INVALID_INPUT", "give --config or --config-file", 2)
    try:
        parsed = json.loads(config if config is not None else config_file.read_text())  # type: ignore[union-attr]
    except (OSError, ValueError) as exc:
        _fail("INVALID_INPUT", f"the configuration is not a JSON object: {exc}", 2)
    if not isinstance(parsed, dict):
        _fail("INVALID_INPUT", "the configuration must be a JSON object", 2)
    secrets: dict[str, str] = {}
    for secret_name, path in _pairs(secret_file, "--secret-file").items():
        try:
            secrets[secret_name] = Path(path).read_text().strip()
        except OSError as exc:
            _fail("INVALID_INPUT", f"cannot read the secret {secret_name} from {path}: {exc.strerror}", 2)
    for secret_name, variable in _pairs(secret_env, "--secret-env").items():
        if not os.environ.get(variable):
            _fail("INVALID_INPUT", f"the environment variable {variable} (secret {secret_name}) is not set", 2)
        secrets[secret_name] = os.environ[variable]
    with _engine() as engine:
        acting = _actor(engine, actor)
        spec = asyncio.run(one_path.put_target(acting, deployer_box(DeployerSettings()), name=name, kind=kind,
                                               config=parsed, secrets=secrets, replace=replace))
    _recorded(acting)
    typer.echo(f"target {spec.name} ({spec.kind}) stored" + (f"; secrets: {', '.join(spec.secret_names)}" if secrets else ""))


@app.command("list")
def list_() -> None:
    """The targets and the profiles bound to them."""
    with _engine() as engine, read_session(engine) as session:
        targets = store.list_targets(session)
        bound: dict[str, list[str]] = {}
        for profile, target in store.bindings(session):
            bound.setdefault(target, []).append(profile)
    for spec in targets:
        typer.echo(f"{spec.name}\t{spec.kind}\tprofiles: {', '.join(bound.get(spec.name, [])) or '-'}")


@app.command()
def show(name: str) -> None:
    """One target's configuration (secrets are never shown) and bindings."""
    with _engine() as engine, read_session(engine) as session:
        spec = store.get_target(session, name)
        profiles = [p for p, t in store.bindings(session) if t == name]
    typer.echo(json.dumps({"name": spec.name, "kind": spec.kind.value, "config": spec.config.model_dump(mode="json"),
                           "secrets": list(spec.secret_names), "profiles": profiles}, indent=2))


@app.command()
def remove(name: str, actor: ActorOption = None) -> None:
    """Remove a target (refused while a profile is bound to it)."""
    with _engine() as engine:
        acting = _actor(engine, actor)
        one_path.remove_target(acting, name)
    _recorded(acting)
    typer.echo(f"target {name} removed")


@app.command()
def bind(profile: str, target: str, actor: ActorOption = None) -> None:
    """Deploy the certificates of PROFILE to TARGET (a profile may have several targets)."""
    with _engine() as engine:
        acting = _actor(engine, actor)
        one_path.bind(acting, profile, target)
    _recorded(acting)
    typer.echo(f"profile {profile} -> target {target}")


@app.command()
def unbind(profile: str, target: str, actor: ActorOption = None) -> None:
    """Stop deploying PROFILE's certificates to TARGET."""
    with _engine() as engine:
        acting = _actor(engine, actor)
        one_path.unbind(acting, profile, target)
    _recorded(acting)
    typer.echo(f"profile {profile} no longer deploys to {target}")

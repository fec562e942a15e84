"""`certrail tokens ...`: HTTP API tokens, in the gateway's database (``CERTRAIL_GATEWAY_DB_URL``, else
``CERTRAIL_DB_URL``, else var/gateway.db).

This is how the first admin token exists; later ones can come from ``POST /v1/tokens``. The
token is printed once and only its SHA-256 is stored. A change goes through the gateway's one
configuration path (services/gateway/config/; decision 0019): the token and its admin event
(TokenCreated/TokenRevoked, actor ``cli:<os user>`` or ``--actor``) are written in one
transaction, and the running gateway publishes the event (the CLI needs no Kafka). See docs/gateway.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

import typer
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common import migrate
from services.common.contracts.identity import Identity, ProfileName
from services.common.db import make_engine, safe_url
from services.common.settings import DatabaseSettings
from services.gateway.api_common import Problem
from services.gateway.api_tokens import MAX_TOKEN_DAYS, list_tokens
from services.gateway.config import tokens as config_tokens
from services.gateway.config.actor import Actor, cli_actor_name
from services.gateway.policy.tokens import Role

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who acts, as the admin event names it (default: cli:<OS user>).")]
RECORDED = "recorded as an admin event; the gateway publishes it"


def _fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def _engine() -> Iterator[Engine]:
    settings = DatabaseSettings.for_service("gateway")
    try:
        if not migrate.check_at_head(settings):
            _fail("DATABASE_NOT_MIGRATED", f"{safe_url(settings.url)} is not at the newest schema: run `certrail db upgrade`")
        engine = make_engine(settings)
    except SQLAlchemyError as exc:
        _fail("DATABASE_ERROR", str(getattr(exc, "orig", None) or exc).splitlines()[0])
    try:
        yield engine
    except Problem as problem:
        _fail(problem.code, problem.message, 2 if problem.status == 422 else 1)
    except SQLAlchemyError as exc:
        _fail("DATABASE_ERROR", str(getattr(exc, "orig", None) or exc).splitlines()[0])
    finally:
        engine.dispose()


def _checked(adapter: TypeAdapter[str], value: str, what: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        _fail("SCHEMA_VIOLATION", f"{what} {value[:80]!r} is not valid (letters, digits and ._:@- ; at most 128)", 2)


@app.command()
def create(
    role: Annotated[Role, typer.Option("--role", help="admin, requester or auditor.")],
    identity: Annotated[str, typer.Option("--identity", help="The acting identity (the requester of its requests).")],
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Scope to this profile (repeat); default: all.")] = None,
    expires_in_days: Annotated[int | None, typer.Option("--expires-in-days", min=1, max=MAX_TOKEN_DAYS)] = None,
    description: Annotated[str | None, typer.Option("--description", help="What the token is for.")] = None,
    actor: ActorOption = None,
    as_json: Json = False,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    identity = _checked(TypeAdapter(Identity), identity, "identity")
    profiles = [_checked(TypeAdapter(ProfileName), p, "profile") for p in profile] if profile else None
    if description is not None and len(description) > 256:
        _fail("SCHEMA_VIOLATION", "the description is longer than 256 characters", 2)
    now = datetime.now(UTC)
    expires = now + timedelta(days=expires_in_days) if expires_in_days else None
    acting = _actor(actor)
    with _engine() as engine:
        new, described = config_tokens.create_token(Actor(engine, acting, lambda: now), identity=identity, role=role,
                                                    profiles=profiles, description=description, expires_at=expires)
    if as_json:
        typer.echo(json.dumps({**described, "token": new.token}, indent=2))
        return
    scope = ", ".join(described["profiles"]) if described["profiles"] is not None else "every profile"
    typer.echo(f"created token {new.token_id}: role {role.value}, identity {identity}, scope {scope}, "
               f"expires {described['expires_at'] or 'never'}", err=True)
    typer.echo(f"{RECORDED} (actor {acting})", err=True)
    typer.echo("store it now, it is not shown again:", err=True)
    typer.echo(new.token)


def _actor(given: str | None) -> str:
    try:
        return cli_actor_name(given)
    except ValueError as exc:
        _fail("SCHEMA_VIOLATION", str(exc), 2)


@app.command("list")
def list_(as_json: Json = False) -> None:
    """Every token (never the tokens themselves)."""
    with _engine() as engine:
        tokens: list[dict[str, Any]] = list_tokens(engine)
    if as_json:
        typer.echo(json.dumps(tokens, indent=2))
        return
    if not tokens:
        typer.echo("no tokens")
    for t in tokens:
        scope = ",".join(t["profiles"]) if t["profiles"] is not None else "*"
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else f"expires {t['expires_at'] or 'never'}"
        typer.echo(f"{t['token_id']}  {t['role']:<9} {t['identity']:<24} profiles={scope}  {state}")


@app.command()
def revoke(token_id: Annotated[str, typer.Argument(help="The token id (ctr_<token id>_...).")],
           actor: ActorOption = None) -> None:
    """Revoke a token (it answers 401 from now on)."""
    acting = _actor(actor)
    with _engine() as engine:
        config_tokens.revoke_token(Actor(engine, acting, lambda: datetime.now(UTC)), token_id)
    typer.echo(f"token {token_id}: revoked ({RECORDED}, actor {acting})")

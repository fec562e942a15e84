"""`certrail tokens ...`: HTTP API tokens, written straight to the database (``CERTRAIL_DB_*``).

This is how the first admin token exists; later ones can come from ``POST /v1/tokens``. The
token is printed once and only its SHA-256 is stored. Tokens made here are not announced as
TokenCreated events (the CLI does not talk to Kafka); the API's are. See docs/gateway.md.
"""

from __future__ import annotations

import getpass
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
from services.gateway.api_tokens import MAX_TOKEN_DAYS, create_token, list_tokens, revoke_token
from services.gateway.policy.tokens import Role

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def _engine() -> Iterator[Engine]:
    settings = DatabaseSettings()
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
    as_json: Json = False,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    identity = _checked(TypeAdapter(Identity), identity, "identity")
    profiles = [_checked(TypeAdapter(ProfileName), p, "profile") for p in profile] if profile else None
    if description is not None and len(description) > 256:
        _fail("SCHEMA_VIOLATION", "the description is longer than 256 characters", 2)
    now = datetime.now(UTC)
    expires = now + timedelta(days=expires_in_days) if expires_in_days else None
    with _engine() as engine:
        new, described = create_token(engine, identity=identity, role=role, profiles=profiles, description=description,
                                      created_by=f"cli:{_user()}", now=now, expires_at=expires)
    if as_json:
        typer.echo(json.dumps({**described, "token": new.token}, indent=2))
        return
    scope = ", ".join(described["profiles"]) if described["profiles"] is not None else "every profile"
    typer.echo(f"created token {new.token_id}: role {role.value}, identity {identity}, scope {scope}, "
               f"expires {described['expires_at'] or 'never'}", err=True)
    typer.echo("store it now, it is not shown again:", err=True)
    typer.echo(new.token)


def _user() -> str:
    try:
        return getpass.getuser()[:100]
    except (OSError, KeyError):
        return "unknown"


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
def revoke(token_id: Annotated[str, typer.Argument(help="The token id (ctr_<token id>_...).")]) -> None:
    """Revoke a token (it answers 401 from now on)."""
    with _engine() as engine:
        revoke_token(engine, token_id, datetime.now(UTC))
    typer.echo(f"token {token_id}: revoked")

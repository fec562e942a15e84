"""`certrail acme ...`: the ACME door's External Account Binding keys and accounts, through the gateway's HTTP
API (``/v1/acme``; decision 0033, docs/acme.md).

    certrail acme eab create --requester ci-pipeline --profile web [--profile api] [--json]
    certrail acme eab list [--json]
    certrail acme eab revoke eab-0123456789abcdef0123
    certrail acme accounts list [--json]

``eab create`` prints the key id and the HMAC key (base64url) once: give both to the ACME client
(``certbot register --eab-kid KEY_ID --eab-hmac-key HMAC_KEY --server .../acme/directory``). Each key creates
one account, which acts as the requester under those profiles. An admin token is needed (``--token`` or
``CERTRAIL_TOKEN``; ``accounts list``: admin or auditor); the gateway is ``--url`` (``CERTRAIL_GATEWAY_URL``).
Failures print ``error: <CODE>: <message>``.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer
from pydantic import TypeAdapter

from services.cli.request_cmd import DEFAULT_URL, Gateway, Token, Url
from services.cli.tokens_cmd import _checked
from services.common.contracts.identity import Identity, ProfileName

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False, help=__doc__)
eab = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="External Account Binding keys: create (the HMAC key printed once), list, revoke.")
accounts = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                       help="ACME accounts.")
app.add_typer(eab, name="eab")
app.add_typer(accounts, name="accounts")

Json = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON answer.")]


@eab.command("create")
def eab_create(requester: Annotated[str, typer.Option("--requester", help="The requester the ACME account acts as.")],
               profile: Annotated[list[str], typer.Option("--profile", help="A profile the account may order under (repeat).")],
               as_json: Json = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Create an EAB key and print its key id and HMAC key (once: it is never shown again)."""
    body = {"requester": _checked(TypeAdapter(Identity), requester, "requester"),
            "profiles": [_checked(TypeAdapter(ProfileName), p, "profile") for p in profile]}
    with Gateway(url, token) as gateway:
        answer = gateway.call("POST", "/v1/acme/eab-keys", body)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo(f"EAB key for requester {answer['requester']}, profiles {', '.join(answer['profiles'])}; it creates one "
               f"ACME account at {answer['directory']}", err=True)
    typer.echo("store the HMAC key now, it is not shown again:", err=True)
    typer.echo(f"key id:   {answer['key_id']}")
    typer.echo(f"hmac key: {answer['hmac_key']}")


@eab.command("list")
def eab_list(as_json: Json = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Every EAB key (never the HMAC keys): unused, used (by which account) or revoked."""
    with Gateway(url, token) as gateway:
        keys = gateway.call("GET", "/v1/acme/eab-keys")["eab_keys"]
    if as_json:
        typer.echo(json.dumps(keys, indent=2))
        return
    if not keys:
        typer.echo("no EAB keys")
    for k in keys:
        used = f" by account {k['account_id']}" if k["account_id"] else ""
        typer.echo(f"{k['key_id']}  {k['requester']:<24} profiles={','.join(k['profiles'])}  {k['state']}{used}  "
                   f"created {k['created_at']} by {k['created_by']}")


@eab.command("revoke")
def eab_revoke(key_id: Annotated[str, typer.Argument(help="The EAB key id (eab-...).")],
               url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Revoke an EAB key: no account can be created with it any more."""
    with Gateway(url, token) as gateway:
        answer = gateway.call("DELETE", f"/v1/acme/eab-keys/{quote(key_id, safe='')}")
    typer.echo(f"EAB key {answer['key_id']}: revoked ({answer['state']}; recorded as an admin event)")


@accounts.command("list")
def accounts_list(as_json: Json = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """The ACME accounts: status, requester, profiles, contacts, the EAB key each was created with."""
    with Gateway(url, token) as gateway:
        listed = gateway.call("GET", "/v1/acme/accounts")["accounts"]
    if as_json:
        typer.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        typer.echo("no ACME accounts")
    for a in listed:
        typer.echo(f"{a['account_id']}  {a['status']:<11} {a['requester']:<24} profiles={','.join(a['profiles'])}  "
                   f"eab {a['eab_key_id']}  contact={','.join(a['contact']) or '-'}  created {a['created_at']}")

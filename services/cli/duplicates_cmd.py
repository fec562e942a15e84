"""`certrail duplicates ...`: possible duplicate issuances (emCA 4.2.x has no applicationId dedupe) and their
resolution, through the gateway's HTTP API (``/v1/duplicates``; decision 0032).

    certrail duplicates list [--state unresolved|resolved|all] [--json]
    certrail duplicates resolve CERTIFICATE_ID --extra-serial 3f9a...   # checked, then revoked as superseded
    certrail duplicates resolve CERTIFICATE_ID --no-extra --note "searched emCA's console for the applicationId"

Find the extra certificate at emCA (its console: search the issuance id, the applicationId; for the simulator:
``certrail emca-sim certificates --application-id ID``). The issuer fetches the serial from emCA, checks it carries
the CSR's public key under another serial and chains to the connector's pinned issuing CA, revokes it as superseded
and confirms it on the CRL. Listing needs an admin or auditor token, resolving an admin token: ``--token`` or
``CERTRAIL_TOKEN``; the gateway is ``--url`` (``CERTRAIL_GATEWAY_URL``). Failures print ``error: <CODE>: <message>``.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote, urlencode

import typer

from services.cli.request_cmd import DEFAULT_URL, Gateway, Token, Url, _fail

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False, help=__doc__)

Json = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON answer.")]


@app.command("list")
def list_(state: Annotated[str, typer.Option(help="unresolved, resolved or all.")] = "unresolved",
          certificate_id: Annotated[str | None, typer.Option("--certificate-id", help="Only this certificate's.")] = None,
          as_json: Json = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Possible duplicate issuances (unresolved by default)."""
    if state not in ("unresolved", "resolved", "all"):
        _fail("SCHEMA_VIOLATION", f"--state must be unresolved, resolved or all, not {state!r}", 2)
    query = urlencode({"state": state, **({"certificate_id": certificate_id} if certificate_id else {})})
    with Gateway(url, token) as gateway:
        answer = gateway.call("GET", f"/v1/duplicates?{query}")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    duplicates = answer.get("duplicates", [])
    if not duplicates:
        typer.echo(f"no {state if state != 'all' else ''} duplicates".replace("  ", " "))
    for d in duplicates:
        line = (f"{d['certificate_id']}  issuance {d['issuance_id']}  connector {d['connector']}  "
                f"delivered {d['delivered_serial']}  detected {d['detected_at']}  {d['state']}")
        if d.get("resolution"):
            extra = f" {d['extra_serial']}" if d.get("extra_serial") else ""
            line += f" ({d['resolution']}{extra}, by {d['resolved_by']})"
        typer.echo(line)


@app.command()
def resolve(certificate_id: Annotated[str, typer.Argument(help="The certificate whose duplicate is resolved.")],
            extra_serial: Annotated[str | None, typer.Option("--extra-serial", help="The extra certificate's serial at "
                                                             "emCA: checked, then revoked as superseded.")] = None,
            no_extra: Annotated[bool, typer.Option("--no-extra", help="emCA holds no extra certificate.")] = False,
            note: Annotated[str | None, typer.Option(help="Why (required with --no-extra).")] = None,
            issuance_id: Annotated[str | None, typer.Option("--issuance-id", help="Which duplicate, when the "
                                                            "certificate has several unresolved.")] = None,
            as_json: Json = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Resolve a possible duplicate: revoke the extra certificate (after checking it), or state there is none."""
    if (extra_serial is None) == (not no_extra):
        _fail("SCHEMA_VIOLATION", "give either --extra-serial SERIAL or --no-extra --note TEXT", 2)
    if no_extra and not note:
        _fail("SCHEMA_VIOLATION", "--no-extra needs --note (how emCA was searched)", 2)
    body: dict[str, object] = {"extra_serial": extra_serial} if extra_serial else {"no_extra": True}
    body.update({k: v for k, v in (("note", note), ("issuance_id", issuance_id)) if v})
    with Gateway(url, token) as gateway:
        answer = gateway.call("POST", f"/v1/duplicates/{quote(certificate_id, safe='')}/resolve", body)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    d = answer["duplicate"]
    if d.get("resolution") == "revoked":
        typer.echo(f"{d['certificate_id']}: extra serial {d['extra_serial']} revoked (superseded) at emCA; the delivered "
                   f"serial {d['delivered_serial']} is untouched; the revocation is confirmed on the CRL next")
    else:
        typer.echo(f"{d['certificate_id']}: resolved without an extra certificate ({d.get('note')})")

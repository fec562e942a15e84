"""`certrail request ...`: ask the gateway's HTTP API for certificates, as a person would.

    certrail request issue --csr web.csr --profile web --certificate-id web-1 --wait --out web.pem
    certrail request renew web-1 --csr web.csr --wait --out web.pem
    certrail request revoke web-1 --reason keyCompromise
    certrail request status REQUEST_ID

The gateway is ``--url`` (env ``CERTRAIL_GATEWAY_URL``, default http://127.0.0.1:8080) and the
token ``--token`` (env ``CERTRAIL_TOKEN``; prefer the environment: arguments show in ``ps``).
Each request gets a request id (``--request-id``, default a new one, printed): run the same
command with the same id again to retry safely. ``--wait`` polls the request's status until it is
issued or has failed (``--timeout``) and writes the certificate and its chain (PEM) to ``--out``
(or prints them). Failures print ``error: <CODE>: <message>`` and exit 1 (2 for bad input).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer

from services.common.contracts.fields import RevocationReason

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)

DEFAULT_URL = "http://127.0.0.1:8080"
FINAL_STATES = frozenset({"issued", "failed", "rejected", "revoked"})

Url = Annotated[str, typer.Option("--url", envvar="CERTRAIL_GATEWAY_URL", help="The gateway's base URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="CERTRAIL_TOKEN", help="API token (better: CERTRAIL_TOKEN).",
                                           show_default=False)]
Csr = Annotated[Path, typer.Option("--csr", exists=True, dir_okay=False, help="The CSR (PEM).")]
RequestIdOpt = Annotated[str | None, typer.Option("--request-id", help="Your request id (default: a new one); reuse it to retry.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the certificate is issued (or the request failed).")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="Seconds --wait waits at most.")]
Out = Annotated[Path | None, typer.Option("--out", dir_okay=False, help="Write the certificate and chain (PEM) here.")]
Json = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON answer.")]


def _fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


class Gateway:
    """A small client of the gateway's /v1 API."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        if not token:
            _fail("UNAUTHENTICATED", "no API token: set CERTRAIL_TOKEN (or --token)", 2)
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {token}", "User-Agent": "certrail-cli"})

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            _fail("GATEWAY_UNREACHABLE", f"{self._client.base_url}: {type(exc).__name__}: {exc}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400 or not isinstance(answer, dict):
            if isinstance(answer, dict) and "code" in answer:
                _fail(str(answer["code"]), str(answer.get("message", "")), 2 if response.status_code == 422 else 1)
            _fail(f"HTTP_{response.status_code}", response.text[:300])
        return answer


def _csr(path: Path) -> str:
    text = path.read_text(errors="replace")
    if "PRIVATE KEY" in text:  # never send a key anywhere
        _fail("PRIVATE_KEY_SUBMITTED", f"{path} contains a private key: give the CSR only (nothing was sent)", 2)
    return text


def _request_id(given: str | None) -> str:
    return given or f"cli-{uuid.uuid4()}"


def _accepted(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        replay = " (replayed: this request id was answered before)" if answer.get("replayed") else ""
        typer.echo(f"accepted {answer['kind']} request {answer['request_id']} for certificate {answer['certificate_id']}{replay}")
        typer.echo(f"status: certrail request status {answer['request_id']}")


def _wait(gateway: Gateway, request_id: str, timeout_s: float, out: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    while True:
        status = gateway.call("GET", f"/v1/requests/{quote(request_id, safe='')}")
        state = status.get("state")
        if state in FINAL_STATES:
            break
        if time.monotonic() + delay > deadline:
            _fail("TIMEOUT", f"request {request_id} is still {state} after {timeout_s:.0f}s: "
                  f"check later with `certrail request status {request_id}`")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    result = status.get("result") or {}
    if state != "issued":
        error = result.get("error") or (status.get("answer") or {}).get("error") or {}
        _fail(str(error.get("code", state.upper())), str(error.get("message", f"request {request_id} ended {state}")))
    pem = "".join(p if p.endswith("\n") else p + "\n" for p in [result["certificate"], *(result.get("chain") or [])])
    if out is None:
        typer.echo(pem, nl=False)
    else:
        out.write_text(pem)
        typer.echo(f"issued serial {result.get('serial')} (not after {result.get('not_after')}): wrote {out}", err=True)


@app.command()
def issue(
    csr: Csr,
    profile: Annotated[str, typer.Option("--profile", help="The provisioning profile.")],
    certificate_id: Annotated[str, typer.Option("--certificate-id", help="The managed certificate's id (stable across renewals).")],
    san: Annotated[list[str] | None, typer.Option("--san", help="Expected SAN, e.g. dns:www.example.com (repeat).")] = None,
    request_id: RequestIdOpt = None, wait: Wait = False, timeout: Timeout = 120.0, out: Out = None,
    url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False,
) -> None:
    """Request a new certificate for a CSR under a provisioning profile."""
    body: dict[str, Any] = {"request_id": _request_id(request_id), "profile": profile, "certificate_id": certificate_id,
                            "csr": _csr(csr)}
    if san:
        body["sans"] = list(san)
    with Gateway(url, token) as gateway:
        answer = gateway.call("POST", "/v1/certificates", body)
        _accepted(answer, as_json)
        if wait:
            _wait(gateway, answer["request_id"], timeout, out)


@app.command()
def renew(
    certificate_id: Annotated[str, typer.Argument(help="The managed certificate's id.")],
    csr: Csr, request_id: RequestIdOpt = None, wait: Wait = False, timeout: Timeout = 120.0, out: Out = None,
    url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False,
) -> None:
    """Renew a certificate with a new CSR."""
    body = {"request_id": _request_id(request_id), "csr": _csr(csr)}
    with Gateway(url, token) as gateway:
        answer = gateway.call("POST", f"/v1/certificates/{quote(certificate_id, safe='')}/renew", body)
        _accepted(answer, as_json)
        if wait:
            _wait(gateway, answer["request_id"], timeout, out)


@app.command()
def revoke(
    certificate_id: Annotated[str, typer.Argument(help="The managed certificate's id.")],
    reason: Annotated[RevocationReason, typer.Option("--reason", help="RFC 5280 reason.")],
    serial: Annotated[str | None, typer.Option("--serial", help="Default: the current serial.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Request a replacement after the revocation.")] = False,
    request_id: RequestIdOpt = None, url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False,
) -> None:
    """Revoke a certificate."""
    body: dict[str, Any] = {"request_id": _request_id(request_id), "reason": reason.value, "replace": replace}
    if serial:
        body["serial"] = serial
    with Gateway(url, token) as gateway:
        _accepted(gateway.call("POST", f"/v1/certificates/{quote(certificate_id, safe='')}/revoke", body), as_json)


@app.command()
def status(
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False,
) -> None:
    """A request's status (and its certificate, once issued)."""
    with Gateway(url, token) as gateway:
        answer = gateway.call("GET", f"/v1/requests/{quote(request_id, safe='')}")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo(f"request {request_id}: {answer['kind']} {answer['status']}, now {answer['state']}")
    error = (answer.get("result") or {}).get("error") or (answer.get("answer") or {}).get("error")
    if error:
        typer.echo(f"error: {error.get('code')}: {error.get('message')}")
    certificate = answer.get("certificate")
    if certificate:
        typer.echo(f"certificate {certificate['certificate_id']}: {certificate['status']}, serial {certificate['serial']}, "
                   f"not after {certificate['not_after']}")

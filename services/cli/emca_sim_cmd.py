"""`certrail emca-sim`: run the emCA simulator and drive its admin API (faults, approvals, counters).

The admin commands find the admin API through ``--data-dir`` (``DIR/server.json``,
``DIR/admin-token`` and ``DIR/tls-ca.pem``, all written by ``serve``) or through
``--admin-url``/``--token``/``--ca-file``; TLS is always verified.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

import httpx
import typer

app = typer.Typer(help="The emCA simulator: a real CA over HTTPS speaking emCA's API dialects.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
fault_app = typer.Typer(help="Inject faults into a running simulator's emCA API port.", no_args_is_help=True)
app.add_typer(fault_app, name="fault")

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="CERTRAIL_EMCA_SIM_DATA_DIR",
                                              help="The simulator's data directory (finds URL, token and TLS trust).")]
AdminUrl = Annotated[str | None, typer.Option("--admin-url", envvar="CERTRAIL_EMCA_SIM_ADMIN_URL",
                                              help="Admin API base URL, e.g. https://127.0.0.1:8445.")]
Token = Annotated[str | None, typer.Option("--token", envvar="CERTRAIL_EMCA_SIM_ADMIN_TOKEN", help="Admin API token.")]
CaFile = Annotated[Path | None, typer.Option("--ca-file", help="PEM bundle to verify the admin API's TLS (default DIR/tls-ca.pem).")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class _Admin:
    def __init__(self, data_dir: Path | None, admin_url: str | None, token: str | None, ca_file: Path | None) -> None:
        if data_dir is not None:
            server_json = data_dir / "server.json"
            if admin_url is None:
                if not server_json.exists():
                    _fail(f"{server_json} not found: is the simulator running with --data-dir {data_dir}?")
                admin_url = json.loads(server_json.read_text())["admin_url"]
            if token is None:
                token_file = data_dir / "admin-token"
                if not token_file.exists():
                    _fail(f"{token_file} not found: has the simulator started with --data-dir {data_dir}?")
                token = token_file.read_text().strip()
            ca_file = ca_file or data_dir / "tls-ca.pem"
        if admin_url is None or token is None or ca_file is None:
            _fail("give --data-dir, or --admin-url, --token and --ca-file")
        if not ca_file.exists():
            _fail(f"{ca_file} not found (the simulator's TLS trust bundle)")
        self.url, self.token, self.ca_file = admin_url.rstrip("/"), token, ca_file

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        trust = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with httpx.Client(verify=trust, headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as client:
                response = client.request(method, f"{self.url}{path}", json=body)
        except httpx.TransportError as exc:
            _fail(f"the simulator's admin API at {self.url} is not reachable: {exc}", 2)
        if response.status_code >= 400:
            _fail(f"{response.status_code} {response.text}")
        return response.json()


def _show(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2))


def _faults(data_dir: Path | None, admin_url: str | None, token: str | None, ca_file: Path | None,
            body: dict[str, Any]) -> None:
    _show(_Admin(data_dir, admin_url, token, ca_file).call("POST", "/admin/faults", body))


@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where keys, certificates, state and credentials live.")],
    host: Annotated[str, typer.Option(help="Address to listen on (all three ports).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="emCA API port (HTTPS).")] = 8443,
    crl_port: Annotated[int, typer.Option(help="CRL and CA certificate port (plain HTTP).")] = 8444,
    admin_port: Annotated[int, typer.Option(help="Admin API port (HTTPS).")] = 8445,
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration (default: built-in).")] = None,
    public_base_url: Annotated[str | None, typer.Option(
        help="Base URL of CRL/AIA in certificates (default http://127.0.0.1:<crl-port>).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Run the emCA simulator in the foreground (Ctrl+C stops it)."""
    from emca_sim.server import serve as run

    run(data_dir, host, port, crl_port, config, public_base_url, admin_port=admin_port, log_level=log_level,
        access_log=access_log)


@fault_app.command()
def status(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Show the current faults."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("GET", "/admin/faults"))


@fault_app.command()
def down(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Close the API port: new connections are refused, open ones reset."""
    _faults(data_dir, admin_url, token, ca_file, {"down": True})


@fault_app.command()
def up(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Reopen the API port (and stop a flapping schedule)."""
    _faults(data_dir, admin_url, token, ca_file, {"down": False})


@fault_app.command()
def slow(ms: Annotated[int, typer.Argument(help="Latency added to every API request, in milliseconds (0: none).")],
         data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Add latency to every API request."""
    _faults(data_dir, admin_url, token, ca_file, {"slow_ms": ms})


@fault_app.command()
def errors(rate: Annotated[float, typer.Argument(help="Fraction of API requests answered with a 5xx (0..1).")],
           error_status: Annotated[int, typer.Option("--status", help="The 5xx status to answer.")] = 500,
           data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Answer a fraction of API requests with "Internal server error"."""
    _faults(data_dir, admin_url, token, ca_file, {"error_rate": rate, "error_status": error_status})


@fault_app.command("rate-limit")
def rate_limit(retry_after: Annotated[int, typer.Option("--retry-after", help="Retry-After seconds.")],
               rate: Annotated[float, typer.Option(help="Fraction of API requests answered 429 (0 clears).")] = 1.0,
               data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Answer a fraction of API requests with 429 and Retry-After."""
    _faults(data_dir, admin_url, token, ca_file, {"rate_limit": {"rate": rate, "retry_after_s": retry_after}})


@fault_app.command()
def flap(up_s: Annotated[float, typer.Option("--up", help="Seconds up per cycle.")],
         down_s: Annotated[float, typer.Option("--down", help="Seconds down per cycle.")],
         data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Take the API port down and up on a schedule (down first), until `up` or `clear`."""
    _faults(data_dir, admin_url, token, ca_file, {"flap": {"up_s": up_s, "down_s": down_s}})


@fault_app.command("rotate-credentials")
def rotate_credentials(username: Annotated[str, typer.Argument(help="The registered application.")],
                       data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None,
                       ca_file: CaFile = None) -> None:
    """Give an application a new password (4.2.x: and ClientID); its requests stop authenticating."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("POST", f"/admin/applications/{username}/rotate-credentials"))


@fault_app.command()
def clear(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Remove every fault; the API is up again (rotated credentials stay rotated)."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("DELETE", "/admin/faults"))


@app.command()
def counters(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None,
             reset: Annotated[bool, typer.Option(help="Reset them to zero.")] = False) -> None:
    """Certificates issued per applicationId and per CSR public key, requests per API method."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("DELETE" if reset else "GET", "/admin/counters"))


@app.command()
def pending(data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None,
            state: Annotated[str, typer.Option(help="pending, approved, rejected or all.")] = "pending") -> None:
    """Requests held for manual approval."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("GET", f"/admin/pending?state={state}"))


@app.command()
def approve(request_id: str, data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None,
            ca_file: CaFile = None) -> None:
    """Approve a held request: the certificate is signed."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("POST", f"/admin/pending/{request_id}/approve"))


@app.command()
def reject(request_id: str, reason: Annotated[str | None, typer.Option(help="Why (shown to the requester).")] = None,
           data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Reject a held request."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("POST", f"/admin/pending/{request_id}/reject",
                                                           {"reason": reason} if reason else {}))


@app.command("certificates")
def certificates(application_id: Annotated[str, typer.Option("--application-id", help="The applicationId (certrail's "
                                                             "issuance id) to search for.")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print the certificates as JSON.")] = False,
                 data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Certificates the CA issued for an applicationId: the stand-in for emCA's own console search, where an operator
    finds the extra certificate of a possible duplicate (certrail's product never calls it: 4.2.x's API cannot)."""
    found = _Admin(data_dir, admin_url, token, ca_file).call("GET", "/admin/certificates?" + urlencode(
        {"application_id": application_id}))
    if as_json:
        _show(found)
        return
    for issued in found:
        state = f"revoked ({issued['revocation_reason']})" if issued["revoked_at"] else "live"
        typer.echo(f"{issued['serial']}  issued {issued['issued_at']}  {issued['profile']}  {state}")


@app.command("revoke")
def revoke_at_ca(serial: Annotated[str, typer.Argument(help="The certificate's serial (hex).")],
                 reason: Annotated[str, typer.Option(help="RFC 5280 reason name, e.g. keyCompromise, superseded.")] = "unspecified",
                 data_dir: DataDir = None, admin_url: AdminUrl = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Revoke a certificate directly at the CA, as an emCA administrator would: outside certrail (its CRL lists it;
    certrail's CRL watch reports it as RevokedOutOfBand)."""
    _show(_Admin(data_dir, admin_url, token, ca_file).call("POST", f"/admin/certificates/{serial}/revoke", {"reason": reason}))

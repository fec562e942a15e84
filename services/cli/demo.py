"""The embedded run's demo: through the gateway's HTTP API (the same path as any client) it
registers a demo emCA connector against the simulator (validated like any other), the
deployer's request key, a provisioning profile whose keys the deployer bot generates, binds
it to a file target under ``var/deploy``, and puts one certificate through
issue -> deploy -> audit. Every step is idempotent: running it again reuses what exists and
requests one more certificate. The target and its binding go through the deployer's one path of
configuration changes (services/deployer/config/, as `certrail targets`): the target is probed, and
each change is an admin event naming the local operator (``cli:<OS user>``). The demo's tokens are written in
the gateway's database, the target and its binding in the deployer's (each service has its own: decision 0017)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from sqlalchemy import Engine
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from services.common.db import read_session
from services.deployer import store as deployer_store
from services.deployer.config.change import Actor as DeployerActor
from services.deployer.config.change import Refused
from services.deployer.config.targets import bind, put_target
from services.deployer.keys import deployer_box, request_signing_key
from services.deployer.settings import DeployerSettings
from services.gateway import store as gateway_store
from services.gateway.config.actor import Actor, cli_actor_name
from services.gateway.config.tokens import create_token
from services.gateway.policy import PolicyViolation
from services.gateway.policy.tokens import Role, token_id_of

CONNECTOR = "emca-demo"
PROFILE = "demo-web"
TARGET = "demo-files"
DOMAIN = "demo.certrail.test"
SIM_APPLICATION = "certrail-v424"
ISSUING_CA = "certrail Sim Issuing CA P-256"
ADMIN, REQUESTER, DEPLOYER = "demo-admin", "demo-requester", "certrail-deployer"
#: `certrail up --https`: the gateway's own certificate, issued through certrail (a bot-key profile, a file target)
GATEWAY_PROFILE = GATEWAY_TARGET = "certrail-gateway-tls"
GATEWAY_CERTIFICATE = "certrail-gateway"
GATEWAY_SANS = ("dns:localhost", "ip:127.0.0.1")


class DemoError(RuntimeError):
    pass


@dataclass
class DemoResult:
    certificate_id: str
    request_id: str
    serial: str
    deployed_dir: Path
    files: list[Path] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


def _token(engine: Engine, path: Path, identity: str, role: Role) -> str:
    """A token kept in ``path`` (mode 0600); a new one when the file is missing or the token is unknown."""
    if path.exists():
        token = path.read_text().strip()
        try:
            with read_session(engine) as session:
                stored = gateway_store.get_token(session, token_id_of(token))
        except PolicyViolation:  # not a certrail token: make a new one
            stored = None
        if stored is not None and stored.revoked_at is None:
            return token
    # through the one path of configuration changes (decision 0019): an audited TokenCreated by "certrail up"
    new, _ = create_token(Actor(engine, "cli:certrail-up", lambda: datetime.now(UTC)), identity=identity, role=role,
                          profiles=None, description="certrail up demo", expires_at=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(new.token + "\n")
    return new.token


def _check(response: httpx.Response, *ok: int) -> dict[str, Any]:
    if response.status_code not in ok:
        raise DemoError(f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:500]}")
    return response.json() if response.content else {}


Step = Callable[[str], None]


@dataclass(frozen=True)
class _Session:
    """A client of the gateway with the demo's admin and requester headers, and the step reporter."""

    client: httpx.Client
    as_admin: dict[str, str]
    as_requester: dict[str, str]
    step: Step


@contextmanager
def _session(gateway_engine: Engine, gateway_url: str, var_dir: Path, sim_api_url: str,
             progress: Step | None) -> Iterator[_Session]:
    """What the demo and the gateway's certificate both start with: the demo's admin and requester tokens (written
    under var/demo), a client of the gateway, the demo connector and requester key in place."""
    def step(text: str) -> None:
        if progress is not None:
            progress(text)

    demo_dir = var_dir / "demo"
    admin = _token(gateway_engine, demo_dir / "admin.token", ADMIN, Role.ADMIN)
    requester = _token(gateway_engine, demo_dir / "requester.token", REQUESTER, Role.REQUESTER)
    with httpx.Client(base_url=gateway_url, timeout=60.0) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        _ensure_connector_and_key(client, as_admin, var_dir, sim_api_url, step)
        yield _Session(client, as_admin, {"Authorization": f"Bearer {requester}"}, step)


def _ensure_profile(client: httpx.Client, as_admin: dict[str, str], step: Step, what: str, fields: dict[str, Any]) -> None:
    """Create the bot-key profile on the demo connector with ``fields`` (name, domain rules, target) unless it exists."""
    name = fields["name"]
    profile = {"connector": CONNECTOR, "ca_profile": "TLS Server", "key_generation": "bot", "bot_key_algorithm": "EC-P256",
               "allowed_requesters": [REQUESTER, DEPLOYER], "validity_days": 90, **fields}
    if client.get(f"/v1/profiles/{name}", headers=as_admin).status_code == 404:
        _check(client.post("/v1/profiles", json=profile, headers=as_admin), 201)
        step(f"provisioning profile {name} created ({what})")


def run_demo(*, gateway_engine: Engine, deployer_engine: Engine, gateway_url: str, var_dir: Path, sim_api_url: str,
             timeout_s: float = 120.0, progress: Step | None = None) -> DemoResult:
    """``gateway_engine``: the gateway's database (the demo's tokens); ``deployer_engine``: the deployer's (the target)."""
    with _session(gateway_engine, gateway_url, var_dir, sim_api_url, progress) as demo:
        client, as_admin, step = demo.client, demo.as_admin, demo.step
        _ensure_profile(client, as_admin, step, "keys generated by the deployer bot", {
            "name": PROFILE, "domain_rules": {"dns_suffixes": [DOMAIN]}, "deployment_target": TARGET})

        deploy_dir = var_dir / "deploy" / "demo-web"
        _bind_file_target(deployer_engine, var_dir, deploy_dir)
        step(f"file target {TARGET} -> {deploy_dir} bound to {PROFILE}")

        n = uuid.uuid4().hex[:6]
        certificate_id = f"www-{n}.{DOMAIN}"
        request_id = f"demo-{n}"
        issue = {"request_id": request_id, "profile": PROFILE, "certificate_id": certificate_id,
                 "sans": [f"dns:{certificate_id}"]}
        _check(client.post("/v1/certificates", json=issue, headers=demo.as_requester), 202)
        step(f"requested {certificate_id} (request {request_id})")

        serial = _wait_deployed(client, as_admin, certificate_id, timeout_s, var_dir, step)
        step(f"deployed serial {serial} to {TARGET} (verified by the deployer, recorded by the auditor)")
        current = deploy_dir / "current"
        files = sorted(p for p in current.iterdir()) if current.exists() else []
        return DemoResult(certificate_id, request_id, serial, current, files)


@dataclass(frozen=True)
class GatewayTls:
    """The gateway's own TLS certificate as certrail's file target deploys it under ``var/gateway-tls`` (renewed and
    redeployed there by the scheduler; the gateway reads it again when it changes) and the emCA chain that clients
    trust it with (``var/gateway-tls-trust.pem``)."""

    cert_file: Path
    key_file: Path
    trust_bundle: Path


def gateway_tls_files(var_dir: Path) -> GatewayTls:
    current = var_dir / "gateway-tls" / "current"  # the file target's served version (a link swapped on redeploy)
    return GatewayTls(current / "fullchain.pem", current / "privkey.pem", var_dir / "gateway-tls-trust.pem")


def usable_gateway_tls(var_dir: Path, now: datetime, *, min_left: timedelta = timedelta(days=1)) -> GatewayTls | None:
    """The deployed gateway certificate when its files are all there and it is valid for ``min_left`` more; else None."""
    files = gateway_tls_files(var_dir)
    try:
        [leaf, *_] = x509.load_pem_x509_certificates(files.cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    if not files.key_file.is_file() or not files.trust_bundle.is_file():
        return None
    return files if leaf.not_valid_after_utc - now >= min_left else None


def issue_gateway_tls(*, gateway_engine: Engine, deployer_engine: Engine, gateway_url: str, var_dir: Path,
                      sim_api_url: str, timeout_s: float = 120.0, progress: Step | None = None) -> GatewayTls:
    """Certrail issues the gateway's own certificate (localhost, 127.0.0.1) through its own pipeline: the demo
    connector, a bot-key profile bound to a file target writing ``var/gateway-tls``; requested as the demo requester
    and deployed by the deployer (as any certificate; the scheduler renews and redeploys it). Then the emCA chain
    (the simulator's issuing CAs and root) is written as the trust bundle."""
    deploy_dir = var_dir / "gateway-tls"
    with _session(gateway_engine, gateway_url, var_dir, sim_api_url, progress) as demo:
        client, as_admin, step = demo.client, demo.as_admin, demo.step
        _ensure_profile(client, as_admin, step, "the gateway's own certificate, a bot key", {
            "name": GATEWAY_PROFILE, "domain_rules": {"dns_names": ["localhost"], "ip_networks": ["127.0.0.1/32"]},
            "deployment_target": GATEWAY_TARGET})
        _bind_file_target(deployer_engine, var_dir, deploy_dir, GATEWAY_TARGET, GATEWAY_PROFILE)
        shown = client.get(f"/v1/certificates/{GATEWAY_CERTIFICATE}", headers=as_admin)
        before = ((shown.json().get("inventory") or {}).get("serial")) if shown.status_code == 200 else None
        request_id = f"gateway-tls-{uuid.uuid4().hex[:6]}"
        issue = {"request_id": request_id, "profile": GATEWAY_PROFILE, "certificate_id": GATEWAY_CERTIFICATE,
                 "sans": list(GATEWAY_SANS)}
        _check(client.post("/v1/certificates", json=issue, headers=demo.as_requester), 202)
        step(f"requested the gateway's certificate {GATEWAY_CERTIFICATE} (request {request_id})")
        serial = _wait_deployed(client, as_admin, GATEWAY_CERTIFICATE, timeout_s, var_dir, step, new_serial_than=before)
    step(f"deployed serial {serial} to {deploy_dir / 'current'}")
    files = gateway_tls_files(var_dir)
    staged = files.trust_bundle.with_suffix(".new")
    staged.write_bytes((var_dir / "emca-sim" / "ca-chain.pem").read_bytes())
    staged.replace(files.trust_bundle)
    return files


def _wait_deployed(client: httpx.Client, as_admin: dict[str, str], certificate_id: str, timeout_s: float,
                   var_dir: Path, step: Any, *, new_serial_than: str | None = None) -> str:
    """Poll the certificate's view until its current serial is deployed (and differs from ``new_serial_than``);
    that serial. DemoError when it fails, is revoked or takes longer than ``timeout_s``."""
    seen: set[str] = set()

    def deployed_serial() -> tuple[str | None, str | None]:
        """(the serial deployed, or None while waiting; the status seen)."""
        shown = client.get(f"/v1/certificates/{certificate_id}", headers=as_admin)
        view = shown.json() if shown.status_code == 200 else {}
        status = view.get("status")
        if status and status not in seen:
            seen.add(status)
            step(f"{certificate_id} status: {status}")
        inventory = view.get("inventory") or {}
        serial = inventory.get("serial")
        deployed = [d for d in inventory.get("deployments", []) if d.get("status") == "deployed" and d.get("serial") == serial]
        if deployed and serial and serial != new_serial_than:
            return str(serial), status
        if status in ("failed", "revoked"):
            raise DemoError(f"{certificate_id} ended {status}: {json.dumps(view)[:800]}")
        return None, status

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.5),
                        retry=retry_if_result(lambda found: found[0] is None))
    try:
        serial, _ = retrying(deployed_serial)
    except RetryError as error:
        status = error.last_attempt.result()[1]
        raise DemoError(f"{certificate_id} was not deployed within {timeout_s:.0f}s (last: {status or 'unknown'}); "
                        f"see {var_dir / 'log'}/") from None
    assert serial is not None
    return serial


def _ensure_connector_and_key(client: httpx.Client, as_admin: dict[str, str], var_dir: Path, sim_api_url: str,
                              step: Any) -> None:
    """The demo connector to the emCA simulator and the deployer's request key (each made when missing)."""
    sim_dir = var_dir / "emca-sim"
    if client.get(f"/v1/connectors/{CONNECTOR}", headers=as_admin).status_code == 404:
        creds = json.loads((sim_dir / "applications" / SIM_APPLICATION / "credentials.json").read_text())
        body = {"name": CONNECTOR, "version": "V4.2.4+", "base_url": sim_api_url, "username": creds["username"],
                "issuing_ca": ISSUING_CA, "subscriber_id": "SUB-0001", "default_profile": "TLS Server",
                "ca_bundle_pem": (sim_dir / "tls-ca.pem").read_text(), "password": creds["password"],
                "client_id": creds["client_id"]}
        _check(client.post("/v1/connectors", json=body, headers=as_admin), 201)
        step(f"connector {CONNECTOR} created and validated against the emCA simulator")
    else:
        step(f"connector {CONNECTOR} exists")

    key = request_signing_key(_deployer_settings(var_dir))
    answer = client.post(f"/v1/requesters/{DEPLOYER}/keys", headers=as_admin,
                         json={"key_id": "deployer-1", "secret_base64": base64.b64encode(key).decode()})
    _check(answer, 201, 409)
    step("the deployer's request key is registered" if answer.status_code == 201 else "the deployer's key is registered")


def _deployer_settings(var_dir: Path) -> DeployerSettings:
    return DeployerSettings(keys_file=var_dir / "deployer.keys", request_key_file=var_dir / "deployer-request.key")


def _bind_file_target(engine: Engine, var_dir: Path, deploy_dir: Path, target: str = TARGET,
                      profile: str = PROFILE) -> None:
    """Add a file target (when missing) and bind ``profile`` to it (when not bound), through the deployer's one
    path: probed, recorded as TargetCreated / TargetBound by the local operator."""
    box = deployer_box(_deployer_settings(var_dir))
    actor = DeployerActor(engine, cli_actor_name(), lambda: datetime.now(UTC))
    with read_session(engine) as session:
        exists = target in {spec.name for spec in deployer_store.list_targets(session)}
    try:
        if not exists:
            asyncio.run(put_target(actor, box, name=target, kind="file", config={"dir": str(deploy_dir)}, secrets={},
                                   replace=False))
        bind(actor, profile, target)
    except Refused as refused:
        raise DemoError(f"the file target {target} -> {deploy_dir}: {refused.code}: {refused.message}") from None


def stack_env(var_dir: Path) -> dict[str, str]:
    """Where the embedded stack's processes keep their keys (all under ``var_dir``)."""
    return {
        "CERTRAIL_SECRETS_KEYS_FILE": str(var_dir / "secrets.keys"),
        "CERTRAIL_DEPLOYER_KEYS_FILE": str(var_dir / "deployer.keys"),
        "CERTRAIL_DEPLOYER_REQUEST_KEY_FILE": str(var_dir / "deployer-request.key"),
    }


__all__ = ["DemoError", "DemoResult", "GatewayTls", "gateway_tls_files", "issue_gateway_tls", "run_demo", "stack_env",
           "usable_gateway_tls"]

"""The README's run command, end to end: `certrail up --detach` (with ``--https``) starts Kafka, the emCA
simulator and the four services, and puts a demo certificate (bot-held key) through issue -> deploy ->
audit; the gateway then serves HTTPS with its own certificate issued through certrail, and the printed HTTPS ACME
directory answers verified against the printed trust bundle (a renewal is served without a restart). Then, through the HTTP API: the bot-held key renewed (fresh key, new serial deployed),
a revocation with replacement, every metrics endpoint scraped for the documented names,
`certrail audit verify` clean, no private key bytes in any Kafka record or the audit store,
and `certrail down` leaves no process and no listening port behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from services.cli.demo import GATEWAY_CERTIFICATE
from services.common.db_schema import owner_of
from services.common.kafka_config import admin_kwargs, producer_kwargs
from services.common.proc import port_free
from services.common.settings import DATABASE_OWNERS, SHARED_DB_URL_ENV, KafkaSettings, service_db_url_env
from services.common.stack_db import sqlite_urls
from tests.conftest import free_ports, wait_until
from tests.e2e.support import principal_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
METRICS = {
    "gateway": ["certrail_messages_consumed_total", "certrail_gateway_scheduler_leader"],
    "issuer": ["certrail_issuer_commands_total", "certrail_issuer_emca_request_duration_seconds_bucket",
               "certrail_issuer_connector_up", "certrail_issuer_oldest_queued_command_age_seconds"],
    "deployer": ["certrail_messages_consumed_total"],
    "auditor": ["certrail_audit_records_stored_total", "certrail_audit_inventory_certificates"],
}


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    var_dir = tmp_path_factory.mktemp("embedded") / "var"
    names = ["KAFKA", "KAFKA_CONTROLLER", "GATEWAY", "ISSUER", "DEPLOYER", "AUDITOR", "SIM", "SIM_CRL", "SIM_ADMIN",
             "GATEWAY_HTTPS"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {**os.environ, "CERTRAIL_UP_VAR_DIR": str(var_dir), "CERTRAIL_UP_CACHE_DIR": str(ROOT / ".cache"),
           **{f"CERTRAIL_UP_{name}_PORT": str(port) for name, port in ports.items()},
           "CERTRAIL_UP_HTTPS": "1"}  # the gateway over HTTPS with its own certificate from certrail
    for name in (SHARED_DB_URL_ENV, *map(service_db_url_env, DATABASE_OWNERS)):
        env.pop(name, None)
    up = _cli(env, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr + _logs(var_dir)
        yield {"env": env, "var": var_dir, "ports": ports, "up": up.stdout}
    finally:
        down = _cli(env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        wait_until(lambda: all(port_free("127.0.0.1", port) for port in ports.values()),
                   f"every port to be free after `certrail down`: {ports}", 30, interval_s=0.5)
        assert not list((var_dir / "run").glob("*.pid")), "pid files left behind"


def _logs(var_dir: Path) -> str:
    out = []
    for log in sorted((var_dir / "log").glob("*.log")) if (var_dir / "log").exists() else []:
        out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(out)


def _api(stack: dict[str, object], role: str) -> httpx.Client:
    var_dir = stack["var"]
    assert isinstance(var_dir, Path)
    token = (var_dir / "demo" / f"{role}.token").read_text().strip()
    port = stack["ports"]["GATEWAY"]  # type: ignore[index]
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _wait_deployed(client: httpx.Client, certificate_id: str, *, not_serial: str | None = None, timeout_s: float = 120) -> dict:
    view: dict = {}

    def deployed() -> dict | None:
        nonlocal view
        view = client.get(f"/v1/certificates/{certificate_id}").json()
        inventory = view.get("inventory") or {}
        serial = inventory.get("serial")
        if serial and serial != not_serial and any(
                d["status"] == "deployed" and d["serial"] == serial for d in inventory.get("deployments", [])):
            return inventory
        return None

    found = wait_until(deployed, lambda: f"{certificate_id} to be deployed (last view: {view})", timeout_s, interval_s=0.5)
    assert isinstance(found, dict)
    return found


def _demo_certificate(stack: dict[str, object]) -> str:
    match = re.search(r"demo certificate (\S+) serial", str(stack["up"]))
    assert match, stack["up"]
    return match.group(1)


def test_demo_certificate_was_issued_deployed_and_audited(stack: dict[str, object]) -> None:
    var_dir = stack["var"]
    assert isinstance(var_dir, Path)
    certificate_id = _demo_certificate(stack)
    current = var_dir / "deploy" / "demo-web" / "current"
    cert = x509.load_pem_x509_certificate((current / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((current / "privkey.pem").read_bytes(), None)
    assert cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (current / "privkey.pem").stat().st_mode & 0o077 == 0
    assert certificate_id in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    with _api(stack, "admin") as client:
        inventory = _wait_deployed(client, certificate_id)
    assert inventory["serial"] == format(cert.serial_number, "x")


def test_bot_key_renewal_and_revocation_with_replacement(stack: dict[str, object]) -> None:
    certificate_id = _demo_certificate(stack)
    with _api(stack, "requester") as requester, _api(stack, "admin") as admin:
        first = _wait_deployed(admin, certificate_id)
        renew = requester.post(f"/v1/certificates/{certificate_id}/renew", json={"request_id": f"renew-{first['serial']}"})
        assert renew.status_code == 202, renew.text
        renewed = _wait_deployed(admin, certificate_id, not_serial=first["serial"])
        revoke = requester.post(f"/v1/certificates/{certificate_id}/revoke",
                                json={"request_id": f"revoke-{renewed['serial']}", "reason": "keyCompromise", "replace": True})
        assert revoke.status_code == 202, revoke.text
        replaced = _wait_deployed(admin, certificate_id, not_serial=renewed["serial"])
    assert len({first["serial"], renewed["serial"], replaced["serial"]}) == 3
    var_dir = stack["var"]
    assert isinstance(var_dir, Path)
    cert = x509.load_pem_x509_certificate((var_dir / "deploy" / "demo-web" / "current" / "cert.pem").read_bytes())
    assert format(cert.serial_number, "x") == replaced["serial"]


def _served_serial(url: str, bundle: Path) -> str:
    """The serial (hex) of the certificate the HTTPS listener at ``url`` serves, verified against ``bundle``."""
    host, port = url.removeprefix("https://").split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ssl.create_default_context(cafile=str(bundle)).wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def test_the_printed_https_acme_directory_answers_verified_by_the_printed_bundle(stack: dict[str, object]) -> None:
    printed = str(stack["up"])
    directory = re.search(r"ACME directory: (https://\S+/acme/directory)", printed)
    bundle = re.search(r"ACME trust bundle: (\S+)", printed)
    assert directory and bundle, printed
    trust = ssl.create_default_context(cafile=bundle.group(1))
    answer = httpx.get(directory.group(1), timeout=10, verify=trust)
    assert answer.status_code == 200 and answer.json()["newAccount"].startswith(directory.group(1).split("/acme")[0])
    plain = httpx.get(f"http://127.0.0.1:{stack['ports']['GATEWAY']}/acme/directory", timeout=10)  # type: ignore[index]
    assert plain.status_code == 403, "the door is HTTPS only once the listener serves"

    # the served certificate is certrail's own managed certificate; renewed, the new serial is served without a restart
    with _api(stack, "requester") as requester, _api(stack, "admin") as admin:
        first = _wait_deployed(admin, GATEWAY_CERTIFICATE)
        assert _served_serial(directory.group(1), Path(bundle.group(1))) == first["serial"]
        renew = requester.post(f"/v1/certificates/{GATEWAY_CERTIFICATE}/renew",
                               json={"request_id": f"renew-{first['serial']}"})
        assert renew.status_code == 202, renew.text
        renewed = _wait_deployed(admin, GATEWAY_CERTIFICATE, not_serial=first["serial"])
    wait_until(lambda: _served_serial(directory.group(1), Path(bundle.group(1))) == renewed["serial"],
               "the renewed gateway certificate served over HTTPS", 30, interval_s=0.2)


def test_every_metrics_endpoint_has_the_documented_names(stack: dict[str, object]) -> None:
    ports = stack["ports"]
    for service, names in METRICS.items():
        text = httpx.get(f"http://127.0.0.1:{ports[service.upper()]}/metrics", timeout=10).text  # type: ignore[index]
        for name in names:
            assert re.search(rf"^{re.escape(name)}[{{ ]", text, re.M), f"{service} /metrics lacks {name}"


def test_the_broker_authenticates_every_client_and_the_acls_hold(stack: dict[str, object]) -> None:
    """The embedded default is the production shape: no anonymous client, an upstream requester can
    write certrail.requests and nothing else, no principal's password in any log."""
    var_dir = stack["var"]
    assert isinstance(var_dir, Path)
    port = stack["ports"]["KAFKA"]  # type: ignore[index]
    passwords = json.loads((var_dir / "kafka" / "principals.json").read_text())
    assert (var_dir / "kafka" / "principals.json").stat().st_mode & 0o077 == 0

    def settings(principal: str | None) -> KafkaSettings:
        if principal is None:
            return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", security_protocol="PLAINTEXT",
                                 request_timeout_ms=5_000)
        return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
                             sasl_password=SecretStr(passwords[principal]), request_timeout_ms=5_000)

    async def write(principal: str, topic: str) -> None:
        producer = AIOKafkaProducer(**producer_kwargs(settings(principal)))
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, b"\x00forged", key=b"forged"), 30)
        finally:
            await producer.stop()

    async def anonymous() -> None:
        admin = AIOKafkaAdminClient(**admin_kwargs(settings(None)))
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            await admin.close()

    async def denied(principal: str, topics: list[str]) -> list[str]:
        """The topics of ``topics`` that ``principal`` could write (it should be none)."""
        written = []
        for topic in topics:
            try:
                await write(principal, topic)
                written.append(topic)
            except TopicAuthorizationFailedError:
                pass
        return written

    # every internal topic against every principal that may not write it (decisions 0012 and 0016)
    internal = ["certrail.requests", "certrail.provisioning", "certrail.events.gateway", "certrail.events.issuer",
                "certrail.events.deployer", "certrail.deadletter", "certrail.audit.checkpoints",
                "certrail.commands.emca-demo"]
    may_write = {
        "requester": {"certrail.requests"},
        "gateway": {"certrail.provisioning", "certrail.events.gateway", "certrail.deadletter",
                    "certrail.commands.emca-demo"},
        "issuer": {"certrail.events.issuer", "certrail.deadletter"},
        "deployer": {"certrail.events.deployer", "certrail.requests", "certrail.deadletter"},
        "auditor": {"certrail.audit.checkpoints"},
    }
    for principal, allowed in may_write.items():
        forbidden = [topic for topic in internal if topic not in allowed]
        assert asyncio.run(denied(principal, forbidden)) == [], f"{principal} wrote a topic it does not produce"
    with pytest.raises((KafkaError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(anonymous(), 30))
    logs = "".join(p.read_text(errors="replace") for p in [*(var_dir / "log").glob("*.log"),
                                                           *(var_dir / "kafka").glob("*.out"),
                                                           *(var_dir / "kafka" / "logs").glob("*.log")])
    assert not any(password in logs for password in passwords.values()), "a Kafka password reached a log"


def test_audit_verifies_and_no_private_key_reached_kafka_or_the_audit_store(stack: dict[str, object]) -> None:
    env = dict(stack["env"])  # type: ignore[call-overload]
    var_dir = stack["var"]
    assert isinstance(var_dir, Path)
    env.update({service_db_url_env(service): url for service, url in sqlite_urls(var_dir).items()})  # var/<service>.db
    env.update(principal_env(var_dir, "admin"))  # the broker authenticates: the CLI tools are its admin principal
    env["CERTRAIL_AUDITOR_SIGNING_KEY_FILE"] = str(var_dir / "auditor" / "checkpoint-signing-key.pem")
    runs: list[subprocess.CompletedProcess[str]] = []

    def verified() -> bool:  # the auditor stores asynchronously; verify once it has caught up
        runs.append(_cli(env, "audit", "verify"))
        return runs[-1].returncode == 0

    wait_until(verified, lambda: f"`audit verify` to pass:\n{runs[-1].stdout}{runs[-1].stderr}", 60, interval_s=2)
    verify = runs[-1]
    assert verify.returncode == 0, verify.stdout + verify.stderr
    keys = list((var_dir / "deploy" / "demo-web" / "versions").glob("*/privkey.pem"))
    assert keys, "no deployed private keys to look for"
    needles = []
    for path in keys:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        needles += [der, base64.b64encode(der)[:48], path.read_bytes().splitlines()[1]]
    blobs = []
    for table in ("audit_records", "deployer_bot_keys", "gateway_requests", "issuer_operations"):
        connection = sqlite3.connect(var_dir / f"{owner_of(table)}.db")  # each table in its owner's file
        try:
            blobs += [bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                      for row in connection.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
                      for value in row if value is not None]
        finally:
            connection.close()
    assert blobs
    assert not (var_dir / "certrail.db").exists()  # each service its own file (decision 0017, "Storage")
    for service in DATABASE_OWNERS:
        connection = sqlite3.connect(var_dir / f"{service}.db")
        try:
            heartbeats = {row[0] for row in connection.execute("SELECT service FROM service_heartbeats")}
            filled = {table for table in ("gateway_requests", "issuer_operations", "deployer_deployments", "audit_records")
                      if connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]}  # noqa: S608 - fixed names
        finally:
            connection.close()
        assert heartbeats == {service}, f"{service}.db holds the heartbeats of {heartbeats}"
        assert {owner_of(table) for table in filled} == {service}, f"{service}.db holds rows of {filled}"
    for needle in needles:
        assert not any(needle in blob for blob in blobs), "a private key reached the database in clear"

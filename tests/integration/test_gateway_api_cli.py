"""`certrail tokens ...` (straight to the database) and `certrail request ...` (an HTTP client of the
API, here against `create_api(runtime)` served by uvicorn on a free port), through typer's CliRunner."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from emca_sim.server import SimServer
from services.cli.request_cmd import app as request_cli
from services.cli.tokens_cmd import app as tokens_cli
from services.common.contracts.commands import IssueCertificate, RenewCertificate
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import IssuanceFailed
from services.common.contracts.fields import ErrorInfo
from services.common.db import make_engine
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.gateway.api_common import authenticate
from services.gateway.policy import PolicyViolation
from services.gateway.policy.tokens import Role
from tests.conftest import free_ports, poll_until, wait_until
from tests.integration.test_gateway_api import (
    Gateway,
    RecordingTopics,
    make_key_and_csr,
    open_gateway,
    play_auditor,
    sign,
    with_connector,
    with_profile,
)
from tests.integration.test_gateway_api import issued_event as issued_of
from tests.integration.test_gateway_api import sim as sim  # noqa: F401 - the module's simulator fixture

runner = CliRunner()


def test_tokens_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"CERTRAIL_DB_URL": url}
    not_migrated = runner.invoke(tokens_cli, ["list"], env=env)
    assert not_migrated.exit_code == 1 and "DATABASE_NOT_MIGRATED" in not_migrated.output
    upgrade(DatabaseSettings(url=url))
    engine = make_engine(DatabaseSettings(url=url))
    try:
        created = runner.invoke(tokens_cli, ["create", "--role", "admin", "--identity", "root-admin", "--expires-in-days", "7"],
                                env=env)
        assert created.exit_code == 0, created.output
        token = created.stdout.strip().splitlines()[-1]
        claims = authenticate(engine, f"Bearer {token}", datetime.now(UTC))
        assert (claims.identity, claims.role, claims.profiles) == ("root-admin", Role.ADMIN, None)

        listed = runner.invoke(tokens_cli, ["list", "--json"], env=env)
        assert listed.exit_code == 0 and claims.token_id in listed.stdout and token not in listed.stdout
        assert "expires" in runner.invoke(tokens_cli, ["list"], env=env).stdout

        bad_identity = runner.invoke(tokens_cli, ["create", "--role", "admin", "--identity", "has space"], env=env)
        assert bad_identity.exit_code == 2 and "SCHEMA_VIOLATION" in bad_identity.output
        unknown_profile = runner.invoke(tokens_cli, ["create", "--role", "requester", "--identity", "ci", "--profile", "ghost"],
                                        env=env)
        assert unknown_profile.exit_code == 2 and "PROFILE_NOT_FOUND" in unknown_profile.output
        bad_role = runner.invoke(tokens_cli, ["create", "--role", "root", "--identity", "ci"], env=env)
        assert bad_role.exit_code == 2

        assert runner.invoke(tokens_cli, ["revoke", claims.token_id], env=env).exit_code == 0
        with pytest.raises(PolicyViolation, match="revoked"):
            authenticate(engine, f"Bearer {token}", datetime.now(UTC))
        missing = runner.invoke(tokens_cli, ["revoke", "000000000000"], env=env)
        assert missing.exit_code == 1 and "TOKEN_NOT_FOUND" in missing.output
    finally:
        engine.dispose()


# -- the request CLI against a served API ---------------------------------------------------------------


class Served:
    """uvicorn serving an ASGI app on a free port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_ports(1)[0]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="gateway-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start", 20, interval_s=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
async def served(tmp_path: Path, sim: SimServer) -> AsyncIterator[tuple[Gateway, Served, str]]:  # noqa: F811
    gw = open_gateway(tmp_path, KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-cli.certrail"),
                      registry_topics=RecordingTopics())
    admin = gw.token(Role.ADMIN, "root-admin")
    await with_connector(gw, sim, admin)
    await with_profile(gw, admin)
    try:
        with Served(gw.client._transport.app) as server:  # type: ignore[attr-defined]
            yield gw, server, admin
    finally:
        await gw.client.aclose()
        gw.engine.dispose()


def command_of(gw: Gateway, request_id: str) -> IssueCertificate | RenewCertificate | None:
    found = [e.data for e in gw.published.events() if isinstance(e.data, IssueCertificate | RenewCertificate) and e.data.request_id == request_id]
    return found[0] if found else None


async def answer_when_asked(gw: Gateway, request_id: str, outcome: Any) -> None:
    """Play the issuer and the auditor: once the command is published, store ``outcome(command)``."""
    command = await poll_until(lambda: command_of(gw, request_id), f"a command for {request_id}", 10, interval_s=0.05)
    play_auditor(gw, [outcome(command)])


def failed_event(command: IssueCertificate | RenewCertificate) -> Envelope:
    data = IssuanceFailed(issuance_id=command.issuance_id, certificate_id=command.certificate_id, request_id=command.request_id,
                          connector=command.connector, error=ErrorInfo(code=ErrorCode.CA_REJECTED, message="emCA refused the CSR"))
    return make_event(data, id=f"failed-{command.request_id}", source="/tests/issuer", time=datetime.now(UTC),
                      subject=command.certificate_id, correlationid=command.request_id)


async def test_request_cli(served: tuple[Gateway, Served, str], tmp_path: Path) -> None:
    gw, server, _ = served
    alice = gw.token(Role.REQUESTER, "alice")
    env = {"CERTRAIL_GATEWAY_URL": server.url, "CERTRAIL_TOKEN": alice}
    key, csr = make_key_and_csr("www.example.com")
    csr_file, out = tmp_path / "www.csr", tmp_path / "www.pem"
    csr_file.write_text(csr)
    leaves: dict[str, str] = {}

    def issued(command: IssueCertificate) -> Envelope:
        leaf, ca = sign(command.csr)
        leaves["leaf"], leaves["ca"] = leaf, ca
        return issued_of(command, leaf, [ca], "0abc")

    args = ["issue", "--csr", str(csr_file), "--profile", "web", "--certificate-id", "www", "--san", "dns:www.example.com",
            "--request-id", "cli-1", "--wait", "--timeout", "30", "--out", str(out)]
    invoked = asyncio.to_thread(runner.invoke, request_cli, args, env=env)
    result, _ = await asyncio.gather(invoked, answer_when_asked(gw, "cli-1", issued))
    assert result.exit_code == 0, result.output
    assert "accepted issue request cli-1 for certificate www" in result.stdout
    assert out.read_text() == leaves["leaf"] + leaves["ca"]

    status = runner.invoke(request_cli, ["status", "cli-1"], env=env)
    assert status.exit_code == 0 and "now issued" in status.stdout and "serial 0abc" in status.stdout
    again = runner.invoke(request_cli, args[:-5], env=env)  # the same request id: the same answer
    assert again.exit_code == 0 and "replayed" in again.stdout

    renew_csr = tmp_path / "renew.csr"
    renew_csr.write_text(make_key_and_csr("www.example.com")[1])
    invoked = asyncio.to_thread(runner.invoke, request_cli, ["renew", "www", "--csr", str(renew_csr), "--request-id", "cli-2",
                                                             "--wait", "--timeout", "30"], env=env)
    result, _ = await asyncio.gather(invoked, answer_when_asked(gw, "cli-2", failed_event))
    assert result.exit_code == 1 and "error: CA_REJECTED: emCA refused the CSR" in result.output
    revoked = runner.invoke(request_cli, ["revoke", "www", "--reason", "keyCompromise", "--request-id", "cli-3"], env=env)
    assert revoked.exit_code == 0 and "accepted revoke request cli-3" in revoked.stdout

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    with_key = tmp_path / "with-key.pem"
    with_key.write_text(csr + key_pem)
    pasted = runner.invoke(request_cli, ["issue", "--csr", str(with_key), "--profile", "web", "--certificate-id", "x"], env=env)
    assert pasted.exit_code == 2 and "PRIVATE_KEY_SUBMITTED" in pasted.output and "nothing was sent" in pasted.output

    other = tmp_path / "other.csr"
    other.write_text(make_key_and_csr("www.other.org")[1])
    refused = runner.invoke(request_cli, ["issue", "--csr", str(other), "--profile", "web", "--certificate-id", "o"], env=env)
    assert refused.exit_code == 2 and "error: SAN_NOT_ALLOWED" in refused.output
    no_token = runner.invoke(request_cli, ["status", "cli-1"], env={"CERTRAIL_GATEWAY_URL": server.url, "CERTRAIL_TOKEN": ""})
    assert no_token.exit_code == 2 and "UNAUTHENTICATED" in no_token.output
    wrong = runner.invoke(request_cli, ["status", "cli-1", "--token", "ctr_0123456789ab_" + "A" * 43], env=env)
    assert wrong.exit_code == 1 and "error: UNAUTHENTICATED" in wrong.output
    down = runner.invoke(request_cli, ["status", "cli-1", "--url", f"http://127.0.0.1:{free_ports(1)[0]}"], env=env)
    assert down.exit_code == 1 and "GATEWAY_UNREACHABLE" in down.output
    assert alice not in "".join(r.output for r in (status, again, revoked, wrong, down))

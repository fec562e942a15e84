"""Issue 19, the three-door test: every configuration change through each door that offers it -- the
HTTP API, the CLI and the console in Chromium -- against one real stack (gateway, issuer, deployer
and auditor as subprocesses, services/common/stack.py, on the test run's Kafka broker; the emCA
simulator; SQLite). Refusals are made too where they are audited (a validation refusal, a 403 from
a non-admin token), and each is shown to change nothing. A bot-held key is issued and deployed to a
file target. Then the audit store (the auditor's table) must hold exactly one admin record per change,
with the right actor (the token's identity for the API and the console, ``--actor`` or ``cli:<user>``
for the CLI) and outcome, and no secret -- connector password, ClientID, AES key, PFX and its password,
requester and webhook HMAC keys, the deployer's request key, API tokens, the bot's private key (PEM
and DER) -- is in any topic of the run, the audit store, any page source the browser saw or the
services' logs, byte for byte (raw, base64, hex)."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from emca_sim.server import SimServer, start_in_thread
from services.common.connectors.secretbox import generate_key
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.types import EmcaVersion
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import SERVICES, Stack, tail
from services.common.topics_admin import ensure_topics
from services.gateway.config.actor import cli_actor_name
from services.gateway.config.tokens import REFUSED_TOKEN_ID
from tests.conftest import free_ports, wait_until
from tests.e2e.three_doors import (
    CONSOLE_ADMIN,
    CONSOLE_HOOK_KEY,
    REQUESTER,
    Cli,
    Ledger,
    Seen,
    admin_records,
    audit_rows,
    chromium_page,
    console_changes,
    drop_topics,
    leaked,
    row_bytes,
    run_async,
)
from tests.emca_sim_helpers import ISSUING_CA, sim_credentials, sim_endpoint
from tests.integration.test_config_changes_live import every_record
from tests.integration.test_gateway_api import connector_json, profile_body
from tests.tls_listener import tls_listener

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT_ADMIN, AUDITOR, OPERATOR = "root-admin", "audit-team", "ops-oncall"
HMAC_SECRET = b"requester-hmac-of-three-doors-" + bytes(range(7, 30))
API_HOOK_KEY = "api-webhook-hmac-" + secrets.token_urlsafe(24)
CLI_HOOK_KEY = "cli-webhook-hmac-" + secrets.token_urlsafe(24)
REQUEST_KEY = "deployer-request-key-" + secrets.token_urlsafe(24)


class Api:
    """The HTTP API door: the real gateway, one token; every answer kept."""

    def __init__(self, base: str, token: str, answers: list[str]) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.answers = answers

    def __call__(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        answer = self.client.request(method, path, **kwargs)
        assert answer.status_code == status, (method, path, answer.status_code, answer.text)
        self.answers.append(answer.text)
        return answer.json() if answer.content else None


def stack_env(kafka_settings: KafkaSettings, prefix: str, db: DatabaseSettings, tmp_path: Path, secrets_keys: str
              ) -> dict[str, str]:
    return {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_SECRETS_KEYS": secrets_keys,
        "CERTRAIL_DEPLOYER_KEYS": generate_key(),
        "CERTRAIL_DEPLOYER_REQUEST_KEY": REQUEST_KEY,
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "auditor" / "checkpoint-signing-key.pem"),
        "CERTRAIL_AUDITOR_TOPIC_REFRESH_INTERVAL_MS": "1000",
        "CERTRAIL_ISSUER_TOPIC_REFRESH_INTERVAL_MS": "1000",
        "CERTRAIL_ISSUER_REGISTRY_POLL_S": "0.5",
        "CERTRAIL_ISSUER_PROBE_INITIAL_S": "0.3",
        "CERTRAIL_ISSUER_PROBE_MAX_S": "1.5",
    }


def token_id(token: str) -> str:
    return token.split("_")[1]


@pytest.mark.timeout(480)
def test_every_change_through_every_door_is_one_audited_record_without_secrets(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    run_async(ensure_topics(kafka, list(topics.fixed()), partitions=1))
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    first_key, next_key = generate_key(), generate_key()  # the services know both; the CLI rotates to the second
    env = stack_env(kafka_settings, prefix, db, tmp_path, f"{first_key},{next_key}")
    cli = Cli(env, tmp_path)
    ledger = Ledger()
    me = cli_actor_name()
    answers: list[str] = []
    seen = Seen()
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    stack = Stack(var_dir=tmp_path / "var", ports=ports, env=env)
    base = f"http://127.0.0.1:{ports['gateway']}"
    engine = make_engine(db)
    with ExitStack() as cleanup:
        sim: SimServer = cleanup.enter_context(start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0))
        hook_port, hook_ca = cleanup.enter_context(tls_listener(tmp_path))
        cleanup.callback(lambda: run_async(drop_topics(kafka, prefix)))
        cleanup.callback(engine.dispose)
        cleanup.callback(stack.stop)

        # -- the first admin token: only the CLI (the real executable) can make it, before the gateway runs
        root_token = cli("tokens", "create", "--role", "admin", "--identity", ROOT_ADMIN, "--actor", OPERATOR, binary=True)[0].strip()
        auditor_token = cli("tokens", "create", "--role", "auditor", "--identity", AUDITOR)[0].strip()
        ledger.add("TokenCreated", f"token_id:{token_id(root_token)}", OPERATOR)
        ledger.add("TokenCreated", f"token_id:{token_id(auditor_token)}", me)
        stack.start(120.0)
        # no wait for the gateway's relay: the API's changes below race its first round on purpose (that round
        # once took the doors' fresh rows too and put their events on the topic twice; it leaves them now)
        api = Api(base, root_token, answers)
        cleanup.callback(api.client.close)
        as_auditor = Api(base, auditor_token, answers)
        cleanup.callback(as_auditor.client.close)

        # == door 1: the HTTP API, as root-admin (and audit-team, refused) ==========================================
        tokens = api_door(api, as_auditor, sim, tmp_path, (hook_port, hook_ca), ledger)
        requester, console = tokens["requester"], tokens["console"]
        bot_dir = tmp_path / "deploy" / "bots"

        # == door 2: the CLI (Typer's app in-process, the real executable for the first token above) ================
        temp_token = cli_door(cli, sim, tmp_path, (hook_port, hook_ca), ledger, (first_key, next_key))

        # == door 3: the console in Chromium, as console-admin =========================================================
        page = cleanup.enter_context(chromium_page())
        console_changes(page, base, console["token"], sim, (hook_port, hook_ca), seen, ledger)

        # == the bot's key, deployed =====================================================================================
        key_file = bot_dir / "current" / "privkey.pem"
        wait_until(lambda: key_file.exists() and (bot_dir / "current" / "cert.pem").exists(),
                   lambda: f"the bot's certificate deployed to {bot_dir}\n{stack_logs(stack)}", 120, interval_s=0.5)
        private_key = key_file.read_bytes()

        # == the audit store: exactly one admin record per change, with its actor and outcome ===========================
        expected = sorted(ledger.records)

        def stored() -> list[Any] | None:
            rows = audit_rows(engine)
            return rows if len(admin_records(rows)) >= len(expected) else None

        def still_missing() -> str:
            have = Counter(s.record for s in admin_records(audit_rows(engine)))
            return f"{len(expected)} admin records in the audit store; missing {dict(Counter(expected) - have)}"

        rows = wait_until(stored, still_missing, 90, interval_s=0.5)
        assert isinstance(rows, list)
        admin = admin_records(rows)
        assert len({s.event_id for s in admin}) == len(admin), "an admin event stored twice"
        missing = Counter(expected) - Counter(s.record for s in admin)
        extra = Counter(s.record for s in admin) - Counter(expected)
        assert not missing and not extra, f"missing: {dict(missing)}; unexpected: {dict(extra)}"
        refusals = {s.record: s.code for s in admin if s.record[3] == "refused"}
        assert all(refusals.values()), refusals  # every refusal names its error code

        # the investigator's tool finds the console's changes by actor (the real executable)
        trail_env = {**env, "CERTRAIL_DB_URL": db.url}
        lines = Cli(trail_env, tmp_path)("audit", "trail", "--actor", CONSOLE_ADMIN, "--json", binary=True)[0].splitlines()
        assert len(lines) == sum(1 for r in expected if r[2] == CONSOLE_ADMIN) and all(
            json.loads(line)["actor"] == CONSOLE_ADMIN for line in lines)

        # == no secret anywhere ===========================================================================================
        records = run_async(every_record(kafka, prefix))
        admin_topics = [v for t, v, _ in records if t in (topics.gateway_events, topics.issuer_events, topics.deployer_events)
                        and b'"io.certrail.admin.' in v]
        assert len(admin_topics) == len(expected), "each admin event published once"
        v4017 = sim_endpoint(sim, EmcaVersion.V4_0_17)
        config_secrets = {
            "v4.0.17 password": v4017.password.encode(), "AES key": str(v4017.aes_key).encode(),
            "PFX": v4017.pfx or b"", "PFX password": str(v4017.pfx_password).encode(),
            "v4.2.3 password": str(sim_credentials(sim, EmcaVersion.V4_2_3)["password"]).encode(),
            "v4.2.3 ClientID": str(sim_credentials(sim, EmcaVersion.V4_2_3)["client_id"]).encode(),
            "v4.2.4 password": str(sim_credentials(sim, EmcaVersion.V4_2_4)["password"]).encode(),
            "v4.2.4 ClientID": str(sim_credentials(sim, EmcaVersion.V4_2_4)["client_id"]).encode(),
            "requester HMAC key": HMAC_SECRET, "deployer request key": REQUEST_KEY.encode(),
            "API webhook HMAC key": API_HOOK_KEY.encode(), "CLI webhook HMAC key": CLI_HOOK_KEY.encode(),
            "console webhook HMAC key": CONSOLE_HOOK_KEY.encode(),
            "secrets key": first_key.encode(), "next secrets key": next_key.encode(),
            "deployer key": env["CERTRAIL_DEPLOYER_KEYS"].encode(),
            "private key (bot)": private_key,
        }
        assert all(len(s) >= 8 for s in config_secrets.values())
        made = (root_token, auditor_token, tokens["ci"]["token"], requester["token"], console["token"], temp_token)
        token_secrets = {f"token {token_id(t)}": t.encode() for t in made}
        logs = [p.read_bytes() for p in (stack.var_dir / "log").glob("*.log")]
        everywhere = {"topics": [b for _, _, b in records], "the audit store": [row_bytes(r) for r in rows],
                      "the browser's pages": [s.encode() for s in seen.sources], "the services' logs": logs}
        assert seen.sources and logs
        assert leaked({**config_secrets, **token_secrets}, everywhere) == []
        # answers and CLI output carry a token once, when it is made (which shows the search finds what is there);
        # never any other secret
        said = {"API answers": [t.encode() for t in answers], "CLI output": [t.encode() for t in cli.printed]}
        assert leaked({"the console's token": console["token"].encode(), "the first token": root_token.encode()}, said) == [
            "the console's token in API answers", "the first token in CLI output"]
        assert leaked(config_secrets, said) == []


def api_door(api: Api, as_auditor: Api, sim: SimServer, tmp_path: Path, hook: tuple[int, Path], ledger: Ledger
             ) -> dict[str, dict[str, Any]]:
    """Door 1: every change the HTTP API offers, succeeded once, and the refusals that are audited; a bot-held
    key requested under "bots" (deployed to bot-files). The tokens it made, by name."""
    hook_port, hook_ca = hook
    a = ROOT_ADMIN
    api("POST", "/v1/connectors", 201, json=connector_json(sim, EmcaVersion.V4_0_17, "api-ca"))
    password = sim_endpoint(sim, EmcaVersion.V4_0_17).password
    assert api("PATCH", "/v1/connectors/api-ca", 200, json={"concurrency": 3, "password": password})["changed"]["concurrency"] == 3
    invalid = api("PATCH", "/v1/connectors/api-ca", 422, json={"concurrency": 0})  # validation refusal
    assert invalid["code"] in ("SCHEMA_VIOLATION", "INVALID_INPUT"), invalid
    api("POST", "/v1/connectors/api-ca/deactivate", 200)
    api("POST", "/v1/connectors/api-ca/activate", 200)
    forbidden = as_auditor("POST", "/v1/connectors/api-ca/deactivate", 403)
    assert forbidden["code"] == "REQUESTER_NOT_AUTHORISED", forbidden
    shown = api("GET", "/v1/connectors/api-ca", 200)
    assert (shown["status"], shown["concurrency"]) == ("enabled", 3), shown  # neither refusal changed it
    ledger.add("ConnectorCreated", "connector:api-ca", a)
    ledger.add("ConnectorUpdated", "connector:api-ca", a)
    ledger.add("ConnectorUpdated", "connector:api-ca", a, "refused")
    ledger.add("ConnectorDeactivated", "connector:api-ca", a)
    ledger.add("ConnectorActivated", "connector:api-ca", a)
    ledger.add("ConnectorDeactivated", "connector:api-ca", AUDITOR, "refused")
    api("POST", "/v1/connectors", 201, json=connector_json(sim, EmcaVersion.V4_2_3, "api-rest"))
    api("DELETE", "/v1/connectors/api-rest", 204)
    api("GET", "/v1/connectors/api-rest", 404)
    ledger.add("ConnectorCreated", "connector:api-rest", a)
    ledger.add("ConnectorDeleted", "connector:api-rest", a)

    # requester keys: one refused (too short: nothing stored, so the same key id is then accepted), the
    # deployer's request key (its bot CSRs), one revoked
    short = api("POST", "/v1/requesters/ci/keys", 422, json={"key_id": "k1", "secret_base64": base64.b64encode(b"short").decode()})
    assert short["code"] == "SCHEMA_VIOLATION", short
    api("POST", "/v1/requesters/ci/keys", 201, json={"key_id": "k1", "secret_base64": base64.b64encode(HMAC_SECRET).decode()})
    api("DELETE", "/v1/requesters/ci/keys/k1", 204)
    api("POST", "/v1/requesters/certrail-deployer/keys", 201,
        json={"key_id": "deployer-1", "secret_base64": base64.b64encode(REQUEST_KEY.encode()).decode()})
    ledger.add("RequesterKeyAdded", "requester:ci/k1", a, "refused")
    ledger.add("RequesterKeyAdded", "requester:ci/k1", a)
    ledger.add("RequesterKeyRevoked", "requester:ci/k1", a)
    ledger.add("RequesterKeyAdded", "requester:certrail-deployer/deployer-1", a)

    # tokens: one created and revoked, the requester's, the console's admin; a 403 changes nothing
    tokens_before = api("GET", "/v1/tokens", 200)
    refused_token = as_auditor("POST", "/v1/tokens", 403, json={"identity": "sneaky", "role": "admin"})
    assert refused_token["code"] == "REQUESTER_NOT_AUTHORISED", refused_token
    assert api("GET", "/v1/tokens", 200) == tokens_before
    ci = api("POST", "/v1/tokens", 201, json={"identity": "ci", "role": "requester"})
    api("DELETE", f"/v1/tokens/{ci['token_id']}", 204)
    requester = api("POST", "/v1/tokens", 201, json={"identity": REQUESTER, "role": "requester"})
    console = api("POST", "/v1/tokens", 201, json={"identity": CONSOLE_ADMIN, "role": "admin"})
    ledger.add("TokenCreated", f"token_id:{REFUSED_TOKEN_ID}", AUDITOR, "refused")
    ledger.add("TokenCreated", f"token_id:{ci['token_id']}", a)
    ledger.add("TokenRevoked", f"token_id:{ci['token_id']}", a)
    ledger.add("TokenCreated", f"token_id:{requester['token_id']}", a)
    ledger.add("TokenCreated", f"token_id:{console['token_id']}", a)

    # profiles: a requester-held one created, edited, refused twice (validation, 403) and deleted; the bot
    api("POST", "/v1/profiles", 201, json=profile_body("api-web", "api-ca"))
    api("PUT", "/v1/profiles/api-web", 200, json=profile_body("api-web", "api-ca", validity_days=30))
    lost = api("POST", "/v1/profiles", 422, json=profile_body("lost", "no-such-connector"))
    assert lost["code"] == "CONNECTOR_NOT_FOUND", lost
    api("GET", "/v1/profiles/lost", 404)
    as_auditor("PUT", "/v1/profiles/api-web", 403, json=profile_body("api-web", "api-ca", validity_days=5))
    assert api("GET", "/v1/profiles/api-web", 200)["validity_days"] == 30
    bot = {**profile_body("bots", "api-ca", requesters=[REQUESTER]), "key_generation": "bot",
           "bot_key_algorithm": "EC-P256", "deployment_target": "bot-files"}
    api("POST", "/v1/profiles", 201, json=bot)
    ledger.add("ProfileCreated", "profile:api-web", a)
    ledger.add("ProfileUpdated", "profile:api-web", a)
    ledger.add("ProfileCreated", "profile:lost", a, "refused")
    ledger.add("ProfileUpdated", "profile:api-web", AUDITOR, "refused")
    ledger.add("ProfileCreated", "profile:bots", a)

    # targets and bindings (the gateway forwards to the deployer, which records them)
    bot_dir = tmp_path / "deploy" / "bots"
    api("PUT", "/v1/targets/bot-files", 201, json={"kind": "file", "config": {"dir": str(bot_dir)}})
    api("PUT", "/v1/profiles/bots/targets/bot-files", 201)
    api("PUT", "/v1/targets/api-spare", 201, json={"kind": "file", "config": {"dir": str(tmp_path / "spare1")}})
    api("PUT", "/v1/targets/api-spare", 200, json={"kind": "file", "config": {"dir": str(tmp_path / "spare2")}})
    api("PUT", "/v1/profiles/api-web/targets/api-spare", 201)
    assert api("DELETE", "/v1/targets/api-spare", 409)["code"] == "TARGET_IN_USE"
    api("DELETE", "/v1/profiles/api-web/targets/api-spare", 204)
    api("DELETE", "/v1/targets/api-spare", 204)
    bad = api("PUT", "/v1/targets/bad", 422, json={"kind": "file", "config": {"dir": "relative/dir"}})
    assert bad["code"] == "INVALID_INPUT", bad
    api("GET", "/v1/targets/bad", 404)
    hook = {"kind": "webhook", "config": {"url": f"https://localhost:{hook_port}/in", "ca_file": str(hook_ca)},
            "secrets": {"hmac_secret": API_HOOK_KEY}}
    assert api("PUT", "/v1/targets/api-hook", 201, json=hook)["secrets"] == ["hmac_secret"]
    # the gateway's own refusals (403, a body that is not a target), recorded by the deployer; nothing changes
    as_auditor("PUT", "/v1/targets/api-hook", 403, json={**hook, "secrets": {"hmac_secret": "x" * 40}})
    as_auditor("DELETE", "/v1/targets/api-hook", 403)
    as_auditor("PUT", "/v1/profiles/api-web/targets/bot-files", 403)
    odd = api("PUT", "/v1/targets/api-odd", 422, json={"kind": "file", "config": {"dir": str(tmp_path / "odd")}, "extra": 1})
    assert odd["code"] in ("SCHEMA_VIOLATION", "INVALID_INPUT"), odd
    api("GET", "/v1/targets/api-odd", 404)
    assert api("GET", "/v1/targets/api-hook", 200)["config"]["url"] == hook["config"]["url"]
    assert api("GET", "/v1/profiles/api-web/targets", 200)["targets"] == []
    ledger.add("TargetCreated", "target:bot-files", a)
    ledger.add("TargetBound", "target:bot-files@bots", a)
    ledger.add("TargetCreated", "target:api-spare", a)
    ledger.add("TargetUpdated", "target:api-spare", a)
    ledger.add("TargetBound", "target:api-spare@api-web", a)
    ledger.add("TargetDeleted", "target:api-spare", a, "refused")
    ledger.add("TargetUnbound", "target:api-spare@api-web", a)
    ledger.add("TargetDeleted", "target:api-spare", a)
    ledger.add("TargetCreated", "target:bad", a, "refused")
    ledger.add("TargetCreated", "target:api-hook", a)
    ledger.add("TargetUpdated", "target:api-hook", AUDITOR, "refused")
    ledger.add("TargetDeleted", "target:api-hook", AUDITOR, "refused")
    ledger.add("TargetBound", "target:bot-files@api-web", AUDITOR, "refused")
    ledger.add("TargetCreated", "target:api-odd", a, "refused")

    api("DELETE", "/v1/profiles/api-web", 204)
    assert api("DELETE", "/v1/connectors/api-ca", 409)["code"] == "CONNECTOR_IN_USE"  # the bot uses it
    ledger.add("ProfileDeleted", "profile:api-web", a)
    ledger.add("ConnectorDeleted", "connector:api-ca", a, "refused")

    # a bot-held key: the deployer generates it beside bot-files (searched for at the end)
    issue = {"request_id": "three-doors-1", "profile": "bots", "certificate_id": "www.example.com", "sans": ["dns:www.example.com"]}
    as_requester = Api(str(api.client.base_url), requester["token"], api.answers)
    try:
        as_requester("POST", "/v1/certificates", 202, json=issue)
    finally:
        as_requester.client.close()
    return {"ci": ci, "requester": requester, "console": console}


def cli_door(cli: Cli, sim: SimServer, tmp_path: Path, hook: tuple[int, Path], ledger: Ledger, keys: tuple[str, str]) -> str:
    """Door 2: every change the CLI offers (connectors, tokens, targets and bindings), with and without
    --actor; the token it made and revoked."""
    hook_port, hook_ca = hook
    first_key, next_key = keys
    me = cli_actor_name()
    rest = EmcaVersion.V4_2_4
    sim_dir = str(sim.data_dir)
    _, wrong = cli("connectors", "create", "cli-ca", "--from-sim-dir", sim_dir, "--version", rest.value,
                   "--issuing-ca", ISSUING_CA.lower(), code=1)
    assert "ISSUING_CA_NOT_FOUND" in wrong
    cli("connectors", "create", "cli-ca", "--from-sim-dir", sim_dir, "--version", rest.value)
    cli.env["CERTRAIL_CONNECTOR_PASSWORD"] = str(sim_credentials(sim, rest)["password"])  # the same, entered again
    cli("connectors", "update", "cli-ca", "--concurrency", "2", "--set-password", "--actor", OPERATOR)
    cli("connectors", "disable", "cli-ca", "--reason", "maintenance")
    cli("connectors", "enable", "cli-ca")
    cli("connectors", "delete", "cli-ca", "--actor", OPERATOR)
    ledger.add("ConnectorCreated", "connector:cli-ca", me, "refused")
    ledger.add("ConnectorCreated", "connector:cli-ca", me)
    ledger.add("ConnectorUpdated", "connector:cli-ca", OPERATOR)
    ledger.add("ConnectorDeactivated", "connector:cli-ca", me)
    ledger.add("ConnectorActivated", "connector:cli-ca", me)
    ledger.add("ConnectorDeleted", "connector:cli-ca", OPERATOR)
    # re-encrypt the connectors' secrets under the next key: api-ca is the one connector left
    rotated, _ = Cli({**cli.env, "CERTRAIL_SECRETS_KEYS": f"{next_key},{first_key}"}, tmp_path, cli.printed)(
        "connectors", "rotate-secrets", "--actor", OPERATOR)
    assert rotated.startswith("rotated 1,"), rotated
    ledger.add("ConnectorUpdated", "connector:api-ca", OPERATOR)

    temp_token = cli("tokens", "create", "--role", "requester", "--identity", "cli-temp")[0].strip()
    cli("tokens", "revoke", token_id(temp_token), "--actor", OPERATOR)
    ledger.add("TokenCreated", f"token_id:{token_id(temp_token)}", me)
    ledger.add("TokenRevoked", f"token_id:{token_id(temp_token)}", OPERATOR)

    cli("targets", "add", "cli-files", "--kind", "file", "--config", json.dumps({"dir": str(tmp_path / "cli-files")}),
        "--actor", OPERATOR)
    cli("targets", "add", "cli-files", "--replace", "--kind", "file", "--config",
        json.dumps({"dir": str(tmp_path / "cli-files-2")}))
    cli("targets", "bind", "cli-web", "cli-files")
    assert "TARGET_IN_USE" in "".join(cli("targets", "remove", "cli-files", code=2))
    cli("targets", "unbind", "cli-web", "cli-files")
    cli("targets", "remove", "cli-files", "--actor", OPERATOR)
    cli.env["THREE_DOORS_HOOK_KEY"] = CLI_HOOK_KEY
    cli("targets", "add", "cli-hook", "--kind", "webhook", "--secret-env", "hmac_secret=THREE_DOORS_HOOK_KEY",
        "--config", json.dumps({"url": f"https://localhost:{hook_port}/in", "ca_file": str(hook_ca)}))
    ledger.add("TargetCreated", "target:cli-files", OPERATOR)
    ledger.add("TargetUpdated", "target:cli-files", me)
    ledger.add("TargetBound", "target:cli-files@cli-web", me)
    ledger.add("TargetDeleted", "target:cli-files", me, "refused")
    ledger.add("TargetUnbound", "target:cli-files@cli-web", me)
    ledger.add("TargetDeleted", "target:cli-files", OPERATOR)
    ledger.add("TargetCreated", "target:cli-hook", me)
    return temp_token

def stack_logs(stack: Stack) -> str:
    return "\n".join(f"--- {s.name}\n{tail(s.log_file)}" for s in stack.services)

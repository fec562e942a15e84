"""The ACME door's account layer driven by a real ACME client nobody here wrote: the `acme` package (certbot's
client library), over HTTP against the gateway's HTTP app (`create_api(runtime)` behind the gateway's prefix
router, served by uvicorn on a free port) on SQLite and on PostgreSQL. `certrail acme eab create` makes the
EAB key through ``/v1/acme``; the client registers with it, changes its contacts, rolls its key over (RFC 8555
7.3.5, the inner JWS made with the library's own JWS class) and deactivates the account. Each step is an admin
event the gateway published; the HMAC key is in none of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import client as acme_client
from acme import jws as acme_jws
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.responses import PlainTextResponse
from typer.testing import CliRunner

from services.cli.acme_cmd import app as acme_cli
from services.common.connectors.secretbox import SecretBox, generate_key
from services.common.contracts import admin
from services.common.contracts.topics import Topics
from services.common.db import make_engine, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.gateway import store
from services.gateway.acme.settings import AcmeSettings
from services.gateway.api import create_api
from services.gateway.api_tokens import create_token
from services.gateway.app import GatewayRuntime, PrefixRouter
from services.gateway.intake import Intake
from services.gateway.policy.tokens import Role
from services.gateway.settings import GatewaySettings
from services.gateway.store import SqlRequesterKeys
from tests.gateway_fixtures import NOW, _connector, _profile, auditor_api
from tests.integration.test_gateway_api import FakeService, Published
from tests.integration.test_gateway_api_cli import Served

runner = CliRunner()


@dataclass
class Door:
    url: str
    env: dict[str, str]
    published: Published

    @property
    def directory_url(self) -> str:
        return f"{self.url}/acme/directory"

    def cli(self, *args: str) -> Any:
        result = runner.invoke(acme_cli, list(args), env=self.env)
        assert result.exit_code == 0, result.output
        return result

    def eab_key(self) -> tuple[str, str]:
        created = json.loads(self.cli("eab", "create", "--requester", "ci-pipeline", "--profile", "web", "--json").stdout)
        return created["key_id"], created["hmac_key"]

    def client(self, key: jose.JWK, alg: jose.JWASignature) -> acme_client.ClientV2:
        net = acme_client.ClientNetwork(key=key, alg=alg, user_agent="certrail-acme-test")
        return acme_client.ClientV2(acme_client.ClientV2.get_directory(self.directory_url, net), net)


@pytest.fixture
def door(tmp_path: Path, db_settings: DatabaseSettings) -> Iterator[Door]:
    upgrade(db_settings)
    engine = make_engine(db_settings)
    _connector(engine, "emca")
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)
    box = SecretBox([generate_key()])
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-acme.certrail")
    published = Published()
    holder: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await holder["app"](scope, receive, send)

    served = Served(app)
    settings = GatewaySettings(kafka=kafka, db=db_settings, scheduler_enabled=False, http_port=served.port,
                               acme=AcmeSettings(nonce_lifetime_s=300))  # default external URL: http://127.0.0.1:<port>
    service = FakeService(engine, Topics(kafka.topic_prefix))
    intake = Intake(engine=engine, topics=service.topics, keys=SqlRequesterKeys(engine, box), clock=lambda: datetime.now(UTC))
    runtime = GatewayRuntime(service, settings, intake, box, published)  # type: ignore[arg-type]
    api = create_api(runtime, auditor=auditor_api(engine))
    holder["app"] = PrefixRouter(PlainTextResponse("the service app", status_code=404), api)  # type: ignore[arg-type]
    token, _ = create_token(engine, identity="root-admin", role=Role.ADMIN, profiles=None, description=None,
                            created_by="tests", now=datetime.now(UTC) - timedelta(seconds=1), expires_at=None)
    try:
        with served:
            assert served.url == f"http://127.0.0.1:{served.port}"
            yield Door(served.url, {"CERTRAIL_GATEWAY_URL": served.url, "CERTRAIL_TOKEN": token.token}, published)
    finally:
        engine.dispose()


def test_a_real_acme_client_registers_with_eab_rolls_its_key_over_and_deactivates(door: Door) -> None:
    key_id, hmac_key = door.eab_key()
    old = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    client = door.client(old, jose.ES256)
    assert client.external_account_required()

    # without EAB: refused; with it: the account, which the same key finds again
    with pytest.raises(messages.Error) as refused:
        client.new_account(messages.NewRegistration.from_data(email="ops@example.com", terms_of_service_agreed=True))
    assert refused.value.code == "externalAccountRequired"
    binding = messages.ExternalAccountBinding.from_data(account_public_key=old.public_key(), kid=key_id, hmac_key=hmac_key,
                                                        directory=client.directory)
    regr = client.new_account(messages.NewRegistration.from_data(
        email="ops@example.com", terms_of_service_agreed=True, external_account_binding=binding))
    assert regr.uri.startswith(f"{door.url}/acme/account/") and regr.body.status == "valid"
    assert regr.body.contact == ("mailto:ops@example.com",)
    account_id = regr.uri.rsplit("/", 1)[1]

    # the EAB key is spent: another key cannot use it
    thief_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    thief = door.client(thief_key, jose.ES256)
    stolen = messages.ExternalAccountBinding.from_data(account_public_key=thief_key.public_key(), kid=key_id,
                                                       hmac_key=hmac_key, directory=thief.directory)
    with pytest.raises(messages.Error) as reused:
        thief.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True, external_account_binding=stolen))
    assert reused.value.code == "unauthorized"

    # contacts changed (the library asks newAccount onlyReturnExisting first, then POSTs to the account)
    regr = client.update_registration(regr, regr.body.update(contact=("mailto:pki@example.com",)))
    assert regr.body.contact == ("mailto:pki@example.com",)

    # key rollover: the inner JWS signed by the new key, posted by the old one (kid)
    new = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    key_change_url = client.directory["keyChange"]
    inner = acme_jws.JWS.sign(json.dumps({"account": regr.uri, "oldKey": old.public_key().to_partial_json()}).encode(),
                              key=new, alg=jose.RS256, nonce=None, url=key_change_url)
    client.net.account = regr
    rolled = client.net.post(key_change_url, inner, new_nonce_url=client.directory["newNonce"])
    assert rolled.status_code == 200 and rolled.json()["key"] == new.public_key().to_partial_json()
    client.net.key, client.net.alg = new, jose.RS256
    regr = client.query_registration(regr)
    assert regr.uri.endswith(account_id) and regr.body.key == new.public_key()
    stale = door.client(old, jose.ES256)
    with pytest.raises(messages.Error) as gone:
        stale.net.post(stale.directory["newAccount"], messages.NewRegistration(only_return_existing=True),
                       new_nonce_url=stale.directory["newNonce"])
    assert gone.value.code == "accountDoesNotExist"

    # deactivation: the account's key authorises nothing from now on
    regr = client.deactivate_registration(regr)
    assert regr.body.status == "deactivated"
    with pytest.raises(messages.Error) as deactivated:
        client.query_registration(regr)
    assert deactivated.value.code == "unauthorized"

    # the CLI sees it; an unused key revoked creates nothing
    accounts = json.loads(door.cli("accounts", "list", "--json").stdout)
    assert [(a["account_id"], a["status"], a["requester"], a["profiles"], a["eab_key_id"]) for a in accounts] == [
        (account_id, "deactivated", "ci-pipeline", ["web"], key_id)]
    unused_id, unused_hmac = door.eab_key()
    assert "revoked" in door.cli("eab", "revoke", unused_id).stdout
    keys = {k["key_id"]: k for k in json.loads(door.cli("eab", "list", "--json").stdout)}
    assert (keys[key_id]["state"], keys[key_id]["account_id"], keys[unused_id]["state"]) == ("used", account_id, "revoked")
    late_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    late = door.client(late_key, jose.ES256)
    with pytest.raises(messages.Error) as revoked:
        late.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True,
                                                            external_account_binding=messages.ExternalAccountBinding.from_data(
                                                                account_public_key=late_key.public_key(), kid=unused_id,
                                                                hmac_key=unused_hmac, directory=late.directory)))
    assert revoked.value.code == "unauthorized"

    # every step is an admin event the gateway published, in order; no HMAC key in any record
    steps = [(type(e.data).__name__, getattr(e.data, "outcome", None)) for e in door.published.events()
             if type(e.data).__name__.startswith("Acme")]
    succeeded = admin.AdminOutcome.SUCCEEDED
    assert steps == [("AcmeEabKeyCreated", succeeded), ("AcmeAccountCreated", succeeded), ("AcmeAccountUpdated", succeeded),
                     ("AcmeAccountKeyChanged", succeeded), ("AcmeAccountDeactivated", succeeded),
                     ("AcmeEabKeyCreated", succeeded), ("AcmeEabKeyRevoked", succeeded)]
    for _, _, value in door.published.records:
        assert hmac_key.encode() not in value and unused_hmac.encode() not in value

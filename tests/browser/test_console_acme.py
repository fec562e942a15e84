"""Integrations → ACME in the console (services/gateway/console/screens/acme.py) over HTTP, through the real API:
an admin creates an EAB key (its HMAC key on the answer page once, in no list after), sees it unused, revokes it;
an auditor sees the accounts without the keys; a requester is refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.db import write_session
from services.common.db_schema import GatewayAcmeAuthorization
from services.common.settings import KafkaSettings
from services.gateway.acme import orders_store
from services.gateway.policy.tokens import Role
from tests.browser.test_console_http import hidden, sign_in
from tests.gateway_fixtures import seed
from tests.integration.test_gateway_api import Gateway, RecordingTopics, open_gateway

ACME = "/console/integrations/acme"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = open_gateway(tmp_path, KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix="t-nokafka.certrail"),
                      registry_topics=RecordingTopics())
    seed(gw.engine)  # profiles web (requester keys, allows ci-pipeline) and bots
    yield gw
    await gw.client.aclose()
    gw.engine.dispose()


async def test_an_admin_creates_and_revokes_an_eab_key_and_sees_the_accounts(gateway: Gateway) -> None:
    client = gateway.client
    csrf = await sign_in(client, gateway.token(Role.ADMIN, "root-admin"))
    empty = await client.get(ACME)
    assert empty.status_code == 200 and "No EAB keys yet" in empty.text and "No ACME accounts yet" in empty.text
    assert 'href="/console/integrations/acme" aria-current="page"' in empty.text

    made = await client.post(f"{ACME}/eab-keys", data={"csrf": csrf, "requester": "ci-pipeline", "profiles": "web"})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    key_id = re.search(r"<dt>Key id</dt><dd><code>([^<]+)</code>", made.text).group(1)  # type: ignore[union-attr]
    hmac_key = re.search(r'<code class="secret">([A-Za-z0-9_-]{20,})</code>', made.text).group(1)  # type: ignore[union-attr]
    assert "/acme/directory" in made.text

    listed = await client.get(ACME)
    assert key_id in listed.text and "Unused" in listed.text and hmac_key not in listed.text
    api_keys = (await gateway.call("GET", "/v1/acme/eab-keys", gateway.token(Role.ADMIN, "root-admin"))).json()["eab_keys"]
    assert [(k["key_id"], k["requester"], k["profiles"], k["state"]) for k in api_keys] == [(key_id, "ci-pipeline", ["web"], "unused")]

    refused = await client.post(f"{ACME}/eab-keys", data={"csrf": csrf, "requester": "ci-pipeline", "profiles": "no-such"})
    assert refused.status_code == 303
    shown = await client.get(ACME)
    assert "New EAB key for ci-pipeline refused: " in shown.text and shown.text.count("<code>eab-") == 1

    forged = await client.post(f"{ACME}/eab-keys/{key_id}/revoke", data={"csrf": "not-the-token"})
    assert forged.status_code == 403 and "CSRF_FAILED" in forged.text
    revoked = await client.post(f"{ACME}/eab-keys/{key_id}/revoke", data={"csrf": csrf})
    assert revoked.status_code == 303
    after = await client.get(ACME)
    assert f"EAB key {key_id} revoked" in after.text and "Revoked" in after.text
    assert f"/eab-keys/{key_id}/revoke" not in after.text  # no second revoke offered


def _orders(gateway: Gateway) -> None:
    """Two orders of one account: one ready (its authorization valid), one whose expiry has passed (invalid)."""
    now = datetime.now(UTC)
    with write_session(gateway.engine) as session:
        for order_id, authz_id, name, expires in (("ord-ready", "az-1", "www.example.test", now + timedelta(days=7)),
                                                  ("ord-old", "az-2", "old.example.test", now - timedelta(minutes=1))):
            orders_store.add_authz(session, authz_id=authz_id, account_id="acct0001", identifier=name,
                                   expires_at=expires, now=now - timedelta(hours=1))
            orders_store.add_order(session, order_id=order_id, account_id="acct0001", identifiers=[name],
                                   authz_ids=[authz_id], profiles=["web"], status="ready" if order_id == "ord-ready" else "pending",
                                   expires_at=expires, now=now - timedelta(hours=1 if order_id == "ord-old" else 0))
        session.get(GatewayAcmeAuthorization, "az-1").status = "valid"  # type: ignore[union-attr]


async def test_an_auditor_sees_accounts_and_orders_only_and_a_requester_is_refused(gateway: Gateway) -> None:
    client = gateway.client
    _orders(gateway)
    await sign_in(client, gateway.token(Role.AUDITOR, "audit"))
    page = await client.get(ACME)
    assert page.status_code == 200 and "No ACME accounts yet" in page.text
    rows = re.findall(r'<th scope="row"><code>(ord-[a-z]+)</code></th>\s*<td>(?:<span class="badge[^"]*">([A-Za-z]+)</span>)', page.text)
    assert rows == [("ord-ready", "Ready"), ("ord-old", "Invalid")]  # newest first; the expired one invalid (RFC 8555 7.1.6)
    assert "www.example.test <small>(valid)</small>" in page.text and "old.example.test <small>(expired)</small>" in page.text
    listed = (await gateway.call("GET", "/v1/acme/orders?limit=1", gateway.token(Role.AUDITOR, "audit"))).json()["orders"]
    assert [o["order_id"] for o in listed] == ["ord-ready"] and "token" not in str(listed)
    bad = await gateway.call("GET", "/v1/acme/orders?limit=0", gateway.token(Role.AUDITOR, "audit"))
    assert bad.status_code == 422
    assert "External Account Binding keys" not in page.text and "New EAB key" not in page.text
    csrf = hidden(page.text, "csrf")
    tried = await client.post(f"{ACME}/eab-keys", data={"csrf": csrf, "requester": "ci-pipeline", "profiles": "web"})
    assert tried.status_code == 303
    assert "refused: " in (await client.get(ACME)).text
    await client.post("/console/signout", data={"csrf": csrf})

    await sign_in(client, gateway.token(Role.REQUESTER, "ci-pipeline"))
    denied = await client.get(ACME)
    assert denied.status_code == 403
    assert "/console/integrations/acme" not in (await client.get("/console/certificates")).text

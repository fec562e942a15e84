"""The web console in a real browser (Playwright + Debian's Chromium) against the real services:
the four certrail services as subprocesses (services/common/stack.py) on the test run's Kafka
broker and a SQLite database, and the emCA simulator. An admin signs in with a token, creates an
emCA connector (first a validation failure shown next to its field, then success), adds a file
deployment target on the Targets screen, configures a provisioning bot choosing the connector in the
Certificate Authority dropdown and the target on the same page (removing the target is then refused
while the bot uses it); a requester signs in,
requests a certificate, watches it get issued on its page (timeline from the audit store) and
revokes it. Screenshots of every screen are saved under the test's tmp dir (the path is printed).
Accessibility basics are checked on every form: each field has a label; forms submit with Enter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emca_sim.server import start_in_thread
from services.common.connectors.secretbox import generate_key
from services.common.contracts.topics import Topics
from services.common.db import make_engine
from services.common.emca.types import EmcaVersion
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings, KafkaSettings
from services.common.stack import SERVICES, Stack
from services.common.topics_admin import delete_topics, ensure_topics
from services.gateway.api_tokens import create_token
from services.gateway.policy.tokens import Role
from tests.conftest import free_ports, wait_until
from tests.emca_sim_helpers import ISSUING_CA, sim_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: every visible form control must be labelled (label[for], aria-label or aria-labelledby)
UNLABELLED_JS = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => el.type !== 'hidden' && !(el.offsetParent === null && el.type !== 'file'))
  .filter(el => !(el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]'))
                && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id || el.outerHTML.slice(0, 80))"""


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end in a thread of its own (Playwright's sync API runs a loop in this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def make_csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class Shots:
    """Saves a screenshot of each screen, and checks that its source holds no secret."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        self.secrets: list[str] = []

    def __call__(self, page: Any, name: str) -> None:
        source = page.content()
        leaked = [i for i, secret in enumerate(self.secrets) if secret in source]
        assert not leaked, f"secret(s) #{leaked} in the source of {page.url}"
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")


def assert_accessible(page: Any) -> None:
    unlabelled = page.evaluate(UNLABELLED_JS)
    assert unlabelled == [], f"form fields without a label on {page.url}: {unlabelled}"
    assert page.locator("main#main").count() == 1 and page.locator("h1").count() >= 1


def visible(locator: Any, timeout_s: float = 30.0) -> None:
    """Waits until ``locator`` is visible: after a click that submits a form the next page may still be
    loading (``is_visible`` does not wait; under load the test read the old page)."""
    locator.wait_for(state="visible", timeout=timeout_s * 1000)


def wait_for(page: Any, url: str, predicate: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Reloads ``url`` until ``predicate()`` holds on it; on failure shows the page's text."""
    def shown() -> bool:
        page.goto(url)
        return predicate()

    wait_until(shown, lambda: f"{what}; page text:\n{page.inner_text('main')[:3000]}", timeout_s, interval_s=1.0)


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/console/")
    assert "/console/signin" in page.url
    assert_accessible(page)
    page.get_by_label("API token").fill(token)
    page.get_by_label("API token").press("Enter")  # keyboard submit
    page.wait_for_url(re.compile(r".*/console/certificates$"))


def sign_out(page: Any) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/console/signin.*"))


@pytest.mark.timeout(600)
def test_console_end_to_end(browser: Any, screenshots: Path, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}.certrail"
    topics = Topics(prefix)
    kafka = kafka_settings.model_copy(update={"topic_prefix": prefix})
    run_async(ensure_topics(kafka, list(topics.fixed()), partitions=1))
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'certrail.db'}")
    upgrade(db)
    engine = make_engine(db)
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    env = {
        "CERTRAIL_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CERTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "CERTRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "CERTRAIL_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "CERTRAIL_DB_URL": db.url,
        "CERTRAIL_SECRETS_KEYS": generate_key(),
        "CERTRAIL_AUDITOR_SIGNING_KEY_FILE": str(tmp_path / "auditor" / "checkpoint-signing-key.pem"),
        "CERTRAIL_ISSUER_TOPIC_REFRESH_INTERVAL_MS": "1000",
        "CERTRAIL_ISSUER_REGISTRY_POLL_S": "0.5",
        "CERTRAIL_ISSUER_PROBE_INITIAL_S": "0.3",
        "CERTRAIL_ISSUER_PROBE_MAX_S": "1.5",
        "CERTRAIL_ISSUER_REVOKE_GRACE_S": "10",
    }
    shot = Shots(screenshots)
    now = datetime.now(UTC) - timedelta(seconds=5)
    admin, _ = create_token(engine, identity="platform-admin", role=Role.ADMIN, profiles=None, description="console test",
                            created_by="tests", now=now, expires_at=None)
    requester, _ = create_token(engine, identity="web-team", role=Role.REQUESTER, profiles=None, description="console test",
                                created_by="tests", now=now, expires_at=None)

    with start_in_thread(tmp_path / "emca-sim", port=0, crl_port=0, admin_port=0) as sim:
        endpoint = sim_endpoint(sim, EmcaVersion.V4_2_3)
        bundle = tmp_path / "emca-tls-ca.pem"
        bundle.write_text(endpoint.ca_bundle_pem or "")
        shot.secrets = [s for s in (endpoint.password, endpoint.client_id, admin.token, requester.token) if s]
        stack = Stack(var_dir=tmp_path / "var", ports=ports, env=env)
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        page = context.new_page()
        try:
            stack.start(120.0)
            base = f"http://127.0.0.1:{ports['gateway']}"

            # -- sign in (admin) ------------------------------------------------------------------------------
            page.goto(f"{base}/console/")
            shot(page, "signin")
            sign_in(page, base, admin.token)
            cookie = next(c for c in context.cookies() if c["name"] == "certrail_console")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] not in admin.token
            assert page.get_by_text("No certificate in the inventory yet").is_visible()
            shot(page, "certificates-empty")

            # -- Integrations -> CA Connectors: empty, then Create emCA Connector -------------------------------
            page.get_by_role("link", name="CA Connectors").click()
            visible(page.get_by_text("No CA connector yet"))
            shot(page, "connectors-empty")
            page.get_by_role("link", name="+ Create emCA connector").click()
            page.get_by_label("emCA version").select_option("V4.2.3")
            assert page.get_by_label("Client ID").is_visible() and not page.get_by_label("AES key").is_visible()
            page.get_by_label("emCA version").select_option("V4.0.17")
            assert page.get_by_label("AES key").is_visible() and not page.get_by_label("Client ID").is_visible()
            page.get_by_label("emCA version").select_option("V4.2.3")
            assert_accessible(page)
            shot(page, "create-connector-form")

            def fill_connector(issuing_ca: str | None) -> None:
                page.get_by_label("Connector name").fill("emca-sim")
                page.get_by_label("Base URL").fill(endpoint.base_url)
                page.get_by_label("Username").fill(endpoint.username)
                if issuing_ca is not None:
                    page.get_by_label("Issuing CA").fill(issuing_ca)
                page.get_by_label("Subscriber ID").fill("SUB-0001")
                page.get_by_label("emCA certificate profile").fill("TLS Server")
                page.get_by_label("Password", exact=True).fill(endpoint.password)
                page.get_by_label("Client ID").fill(endpoint.client_id or "")
                page.get_by_label("emCA TLS CA bundle").set_input_files(str(bundle))

            fill_connector("certrail Sim Issuing CA p-256")  # a case slip: emCA names are case-sensitive
            page.get_by_label("Subscriber ID").press("Enter")  # keyboard submit
            page.wait_for_load_state()
            error = page.locator("#e-issuing_ca")
            assert "ISSUING_CA_NOT_FOUND" in error.inner_text()
            assert page.get_by_label("Issuing CA").get_attribute("aria-invalid") == "true"
            assert page.get_by_label("Password", exact=True).input_value() == ""  # never echoed back
            assert endpoint.password not in page.content()
            shot(page, "create-connector-validation-failed")
            page.get_by_role("button", name=f"Use “{ISSUING_CA}”").click()  # the near match offered
            assert page.get_by_label("Issuing CA").input_value() == ISSUING_CA
            fill_connector(None)
            page.get_by_role("button", name="Validate and create").click()
            page.wait_for_url(re.compile(r".*/console/integrations/connectors$"))
            assert page.get_by_text("Connector emca-sim validated against emCA and created: Active.").is_visible()
            row = page.get_by_role("row", name=re.compile("emca-sim"))
            assert "Active" in row.inner_text() and "V4.2.3" in row.inner_text() and ISSUING_CA in row.inner_text()
            row.get_by_role("button", name="Test emca-sim").click()
            visible(page.get_by_text(re.compile("Test of emca-sim passed")))
            shot(page, "connectors-list")

            # -- Integrations -> Deployment Targets: add a file target (the deployer probes it first) ----------------
            page.get_by_role("link", name="Deployment Targets").click()
            visible(page.get_by_text("No deployment target yet"))
            shot(page, "targets-empty")
            page.get_by_role("link", name="+ Add target").click()
            page.get_by_label("Kind", exact=True).select_option("webhook")
            assert page.get_by_label("HMAC secret").is_visible() and not page.get_by_label(re.compile("^Directory")).is_visible()
            page.get_by_label("Kind", exact=True).select_option("file")
            assert page.get_by_label(re.compile("^Directory")).is_visible() and not page.get_by_label("HMAC secret").is_visible()
            page.get_by_label("Target name").fill("web-files")
            page.get_by_label(re.compile("^Directory")).fill(str(tmp_path / "deploy"))
            assert_accessible(page)
            shot(page, "add-target-form")
            page.get_by_label(re.compile("^Directory")).press("Enter")  # keyboard submit
            page.wait_for_url(re.compile(r".*/console/integrations/targets$"))
            assert page.get_by_text("Target web-files probed and added (file).").is_visible()
            row = page.get_by_role("row", name=re.compile("web-files"))
            assert "file" in row.inner_text() and str(tmp_path / "deploy") in row.inner_text()
            row.get_by_role("button", name="Probe now web-files").click()
            visible(page.get_by_text("Probe of web-files: reachable."))
            shot(page, "targets-list")
            page.get_by_role("link", name="Edit web-files").click()
            assert page.get_by_label(re.compile("^Directory")).input_value() == str(tmp_path / "deploy")
            assert_accessible(page)
            shot(page, "edit-target-form")

            # -- Certificates -> Provisioning -> Configure Bot, choosing the connector as Certificate Authority -------
            page.get_by_role("link", name="Provisioning").click()
            visible(page.get_by_text("No provisioning bot yet"))
            page.get_by_role("link", name="Configure bot").click()
            ca = page.get_by_label("Certificate Authority")
            options = ca.locator("option").all_inner_texts()
            assert any(o.startswith("emca-sim") for o in options), options
            page.get_by_label("Name", exact=True).fill("web")
            ca.select_option("emca-sim")
            assert page.get_by_label("emCA certificate profile").input_value() == "TLS Server"  # the connector's default
            page.get_by_label("Allowed requesters").fill("web-team")
            page.get_by_label("DNS suffixes").fill("example.com")
            page.get_by_label("Validity (days)").fill("60")
            page.get_by_label("web-files").check()  # the deployment target, on the same page as the CA
            assert_accessible(page)
            shot(page, "configure-bot")
            page.get_by_label("Validity (days)").press("Enter")
            page.wait_for_url(re.compile(r".*/console/certificates/provisioning$"))
            visible(page.get_by_text("Provisioning bot web configured on emca-sim. Targets: deploys now to web-files."))
            row = page.get_by_role("row", name=re.compile("web"))
            assert row.get_by_text("emca-sim").is_visible() and row.get_by_text("web-files").is_visible()
            shot(page, "provisioning-list")
            page.get_by_role("link", name="Edit web").click()
            assert page.get_by_label("web-files").is_checked()
            shot(page, "edit-bot")

            # -- the target cannot be removed while the bot deploys to it ------------------------------------
            page.get_by_role("link", name="Deployment Targets").click()
            page.get_by_role("link", name="Remove web-files").click()
            assert_accessible(page)
            shot(page, "remove-target-confirm")
            page.get_by_role("button", name="Remove web-files").click()
            visible(page.get_by_text(re.compile("Remove web-files refused: TARGET_IN_USE")))
            shot(page, "target-remove-refused")

            # -- the connector cannot be deleted while the bot uses it ---------------------------------------
            page.get_by_role("link", name="CA Connectors").click()
            page.get_by_role("link", name="Delete emca-sim").click()
            page.get_by_role("button", name="Delete emca-sim").click()
            visible(page.get_by_text(re.compile("Delete emca-sim refused: CONNECTOR_IN_USE")))
            shot(page, "connector-delete-refused")
            sign_out(page)

            # -- a requester asks for a certificate, sees it issued, revokes it --------------------------------
            sign_in(page, base, requester.token)
            assert page.get_by_role("link", name="CA Connectors").count() == 0  # not for requesters
            page.get_by_role("link", name="Request a certificate").first.click()
            page.get_by_label("Certificate id").fill("www-example-com")
            page.get_by_label("Subject alternative names").fill("www.example.com")
            page.get_by_label("CSR (PEM)").fill(make_csr("www.example.com"))
            assert_accessible(page)
            shot(page, "request-certificate")
            page.get_by_role("button", name="Request certificate").click()
            page.wait_for_url(re.compile(r".*/console/certificates/www-example-com$"))
            assert page.get_by_text(re.compile(r"Request console-\S+ accepted")).is_visible()
            shot(page, "certificate-requested")
            cert_url = page.url
            wait_for(page, cert_url, lambda: page.locator("#certificate-status").inner_text() == "active", "issued (active)")
            assert "certificate issued" in page.locator("ol.timeline").inner_text()
            shot(page, "certificate-issued")
            wait_for(page, cert_url, lambda: "file web-files: deployed" in page.locator("body").inner_text(), "deployed")
            assert (tmp_path / "deploy" / "current" / "cert.pem").exists()
            shot(page, "certificate-deployed")
            page.get_by_role("link", name="Inventory").click()
            row = page.get_by_role("row", name=re.compile("www-example-com"))
            assert "active" in row.inner_text(), row.inner_text()
            days = int(row.locator("td.days").inner_text())  # days to expiry, at a glance
            assert days >= 0
            page.get_by_label("Status").select_option("revoked")
            page.get_by_role("button", name="Filter").click()
            visible(page.get_by_text("No certificate matches these filters"))
            page.get_by_label("Status").select_option("active")
            page.get_by_label("Expiring within (days)").fill(str(days + 1))
            page.get_by_label("Expiring within (days)").press("Enter")
            assert page.get_by_role("row", name=re.compile("www-example-com")).is_visible()
            shot(page, "inventory")

            page.goto(cert_url)
            page.get_by_label("Reason (RFC 5280)").select_option("keyCompromise")
            assert_accessible(page)
            page.get_by_role("button", name="Revoke www-example-com").click()
            visible(page.get_by_text(re.compile(r"Revocation console-\S+ \(keyCompromise\) accepted")))
            wait_for(page, cert_url, lambda: page.locator("#certificate-status").inner_text() == "revoked", "revoked")
            assert "certificate revoked" in page.locator("ol.timeline").inner_text()
            shot(page, "certificate-revoked")
            sign_out(page)

            # -- the admin sees the whole timeline (audit store) ------------------------------------------------
            sign_in(page, base, admin.token)
            page.goto(cert_url)
            timeline = page.locator("ol.timeline").inner_text()
            assert "certificate issued" in timeline and "certificate revoked" in timeline, timeline
            shot(page, "certificate-timeline-admin")
        finally:
            context.close()
            stack.stop()
            engine.dispose()
            run_async(_drop_topics(kafka, prefix))


async def _drop_topics(kafka: KafkaSettings, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka_config import admin_kwargs

    admin = AIOKafkaAdminClient(**admin_kwargs(kafka))
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
    finally:
        await admin.close()
    if ours:
        await delete_topics(kafka, ours)

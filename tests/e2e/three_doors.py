"""Helpers of the three-door test (test_config_three_doors.py): the CLI door (the real `certrail`
executable, or the same Typer app in-process), the console door (Debian's Chromium through
Playwright: every change the console offers, every page source kept), the ledger of expected admin
records, the audit store's admin records, and the byte-for-byte secret search."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from emca_sim.server import SimServer
from services.cli.main import app as certrail_app
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import decode
from services.common.db import read_session
from services.common.db_schema import AuditRecord
from services.common.emca.types import EmcaVersion
from services.common.kafka_config import admin_kwargs
from services.common.settings import KafkaSettings
from services.common.topics_admin import delete_topics
from tests.browser.test_console import sign_in, visible
from tests.conftest import free_ports
from tests.emca_sim_helpers import ISSUING_CA, sim_endpoint

#: the console script of this virtualenv (pyproject.toml [project.scripts])
CERTRAIL = Path(sys.executable).parent / "certrail"
ADMIN_PREFIX = "io.certrail.admin."
#: (event type, subject, actor, outcome) of one admin record
Record = tuple[str, str, str, str]
#: the console's signed-in admin (a token made through the API), and the requester its bots allow
CONSOLE_ADMIN, REQUESTER = "console-admin", "web-team"
CONSOLE_HOOK_KEY = "console-webhook-hmac-" + secrets.token_hex(24)


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end in a thread of its own (Playwright's sync API runs a loop in this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def drop_topics(kafka: KafkaSettings, prefix: str) -> None:
    """Delete every topic of the run's ``prefix`` (the connectors' command topics too)."""
    admin = AIOKafkaAdminClient(**admin_kwargs(kafka))
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
    finally:
        await admin.close()
    if ours:
        await delete_topics(kafka, ours)


@dataclass
class Ledger:
    """The admin records the test expects, appended as each change is made."""

    records: list[Record] = field(default_factory=list)

    def add(self, kind: str, subject: str, actor: str, outcome: str = "succeeded") -> None:
        self.records.append((kind, subject, actor, outcome))


def summary(data: Any) -> Record:
    """An admin event's (type, subject, actor, outcome); the subject as ``field:value``."""
    if hasattr(data, "target"):
        subject = f"target:{data.target}" + (f"@{data.profile}" if hasattr(data, "profile") else "")
    elif hasattr(data, "requester"):
        subject = f"requester:{data.requester}/{data.key_id}"
    else:
        subject = next(f"{f}:{getattr(data, f)}" for f in ("connector", "profile", "token_id") if hasattr(data, f))
    return type(data).__name__, subject, data.actor, data.outcome.value


@dataclass
class StoredAdmin:
    event_id: str
    record: Record
    code: str | None


def audit_rows(engine: Engine) -> list[AuditRecord]:
    with read_session(engine) as session:
        rows = list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
        session.expunge_all()
    return rows


def admin_records(rows: list[AuditRecord]) -> list[StoredAdmin]:
    """The admin records of the audit store, decoded."""
    found = []
    for row in rows:
        if row.event_type and row.event_type.startswith(ADMIN_PREFIX):
            assert row.decode_error is None, (row.event_type, row.decode_reason)
            data = decode(row.value, CATALOG).data
            found.append(StoredAdmin(row.event_id or "", summary(data), data.error.code.value if data.error else None))
    return found


def row_bytes(row: AuditRecord) -> bytes:
    return (row.key or b"") + (row.value or b"") + (row.headers or "").encode()


# -- secrets ------------------------------------------------------------------------------------------------------------


def forms(secret: bytes) -> list[bytes]:
    """The spellings a leaked secret could take: raw, base64 (both alphabets), hex."""
    return [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"="), secret.hex().encode()]


def private_key_needles(pem: bytes) -> list[bytes]:
    """What a leaked private key would look like: the PEM, its first base64 line (found even where the PEM's
    newlines were escaped), its DER (PKCS#8 and the key's own) in every form."""
    key = serialization.load_pem_private_key(pem, None)
    needles = [pem, pem.splitlines()[1]]
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        needles += forms(key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption()))
    return needles


def leaked(secrets: dict[str, bytes], haystacks: dict[str, list[bytes]]) -> list[str]:
    """``secret name in place`` for every secret found (in any of its forms) in a place's haystacks."""
    found = []
    for name, secret in secrets.items():
        needles = forms(secret) if not name.startswith("private key") else private_key_needles(secret)
        for place, stacks in haystacks.items():
            if any(n in stack for n in needles for stack in stacks):
                found.append(f"{name} in {place}")
    return found


# -- the CLI door ---------------------------------------------------------------------------------------------------------


@dataclass
class Cli:
    """`certrail ...` with ``env``: the real executable (``binary=True``) or the same Typer app in-process
    (in a worker thread: the commands run their own event loops)."""

    env: dict[str, str]
    cwd: Path
    printed: list[str] = field(default_factory=list)

    def __call__(self, *args: str, code: int = 0, binary: bool = False) -> tuple[str, str]:
        if binary:
            done = subprocess.run([str(CERTRAIL), *args], env={**os.environ, **self.env}, cwd=self.cwd,  # noqa: S603
                                  capture_output=True, text=True, timeout=120, check=False)
            out, err, exit_code = done.stdout, done.stderr, done.returncode
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = pool.submit(CliRunner().invoke, certrail_app, list(args), env=self.env).result()
            out, err, exit_code = result.stdout, result.stderr, result.exit_code
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise AssertionError(f"certrail {' '.join(args)} raised") from result.exception
        assert exit_code == code, (args, exit_code, out, err)
        self.printed.append(out + err)
        return out, err


# -- the browser door -----------------------------------------------------------------------------------------------------


def chromium_path() -> str:
    path = os.environ.get("CERTRAIL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: run `sudo bash scripts/browser_deps.sh` (browser tests never skip)")
    return path


@dataclass
class Seen:
    """Every page source the browser showed (``seen(page)`` after each step), to search for secrets."""

    sources: list[str] = field(default_factory=list)

    def __call__(self, page: Any) -> None:
        page.wait_for_load_state()
        self.sources.append(page.content())


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a headless Chromium (Debian's, launched by its path; never a Playwright download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 900})
            try:
                yield context.new_page()
            finally:
                context.close()
        finally:
            browser.close()


# -- the console door -----------------------------------------------------------------------------------------------------


def console_changes(page: Any, base: str, token: str, sim: SimServer, hook: tuple[int, Path], seen: Seen,
                    ledger: Ledger) -> None:
    """Door 3: every change the console offers, as its signed-in admin."""
    c = CONSOLE_ADMIN
    endpoint = sim_endpoint(sim, EmcaVersion.V4_2_3)
    bundle = hook[1].parent / "emca-tls-ca.pem"
    bundle.write_text(endpoint.ca_bundle_pem or "")
    sign_in(page, base, token)
    seen(page)
    connectors = f"{base}/console/integrations/connectors"

    # connector: refused (an issuing CA name with a case slip), created, edited, deactivated, activated
    page.goto(f"{connectors}/new")
    page.get_by_label("emCA version").select_option("V4.2.3")

    def fill(issuing_ca: str) -> None:
        page.get_by_label("Connector name").fill("console-ca")
        page.get_by_label("Base URL").fill(endpoint.base_url)
        page.get_by_label("Username").fill(endpoint.username)
        page.get_by_label("Issuing CA").fill(issuing_ca)
        page.get_by_label("Subscriber ID").fill("SUB-0001")
        page.get_by_label("emCA certificate profile").fill("TLS Server")
        page.get_by_label("Password", exact=True).fill(endpoint.password)
        page.get_by_label("Client ID").fill(endpoint.client_id or "")
        page.get_by_label("emCA TLS CA bundle").set_input_files(str(bundle))

    fill(ISSUING_CA.lower())
    page.get_by_role("button", name="Validate and create").click()
    visible(page.locator("#e-issuing_ca"))
    assert "ISSUING_CA_NOT_FOUND" in page.locator("#e-issuing_ca").inner_text()
    seen(page)
    fill(ISSUING_CA)
    page.get_by_role("button", name="Validate and create").click()
    page.wait_for_url(re.compile(r".*/console/integrations/connectors$"))
    visible(page.get_by_text("Connector console-ca validated against emCA and created: Active."))
    seen(page)
    page.get_by_role("link", name="Edit console-ca").click()
    page.get_by_label("Concurrency").fill("4")
    page.get_by_label("Password", exact=True).fill(endpoint.password)
    seen(page)
    page.get_by_role("button", name="Validate and save").click()
    visible(page.get_by_text("Connector console-ca validated again and saved."))
    seen(page)
    page.get_by_role("button", name="Deactivate console-ca").click()
    visible(page.get_by_text("Connector console-ca deactivated (its queue is kept)."))
    seen(page)
    page.get_by_role("button", name="Activate console-ca").click()
    visible(page.get_by_text("Connector console-ca validated and activated."))
    seen(page)
    ledger.add("ConnectorCreated", "connector:console-ca", c, "refused")
    ledger.add("ConnectorCreated", "connector:console-ca", c)
    ledger.add("ConnectorUpdated", "connector:console-ca", c)
    ledger.add("ConnectorDeactivated", "connector:console-ca", c)
    ledger.add("ConnectorActivated", "connector:console-ca", c)

    # targets on their screen; the bot on Configure Bot (its key policy and its target boxes); then what each
    # in-use refusal blocked, once the bot moved to api-ca and to another target
    target_changes(page, base, hook, seen, ledger)
    bot_changes(page, base, seen, ledger)
    page.goto(f"{base}/console/integrations/targets/con-files/delete")
    page.get_by_role("button", name="Remove con-files").click()
    visible(page.get_by_text("Target con-files removed."))
    seen(page)
    ledger.add("TargetDeleted", "target:con-files", c)
    page.goto(connectors)
    page.get_by_role("link", name="Delete console-ca").click()
    seen(page)
    page.get_by_role("button", name="Delete console-ca").click()
    visible(page.get_by_text("Connector console-ca deleted."))
    seen(page)
    ledger.add("ConnectorDeleted", "connector:console-ca", c)


def target_changes(page: Any, base: str, hook: tuple[int, Path], seen: Seen, ledger: Ledger) -> None:
    """Integrations -> Deployment Targets: two file targets, a webhook refused (nothing answers) then added, an edit."""
    c = CONSOLE_ADMIN
    targets = f"{base}/console/integrations/targets"
    hook_port, hook_ca = hook
    for name in ("con-files", "con-move"):
        page.goto(f"{targets}/new")
        page.get_by_label("Target name").fill(name)
        page.get_by_label("Kind").select_option("file")
        page.get_by_role("textbox", name=re.compile("^Directory")).fill(str(hook_ca.parent / name))
        page.get_by_role("button", name="Probe and add").click()
        visible(page.get_by_text(f"Target {name} probed and added (file)."))
        seen(page)
        ledger.add("TargetCreated", f"target:{name}", c)
    (closed_port,) = free_ports(1)
    for port, outcome in ((closed_port, "refused"), (hook_port, "succeeded")):
        page.goto(f"{targets}/new")
        page.get_by_label("Target name").fill("con-hook")
        page.get_by_label("Kind").select_option("webhook")
        page.get_by_label("Receiver URL").fill(f"https://localhost:{port}/in")
        page.get_by_label("HMAC secret").fill(CONSOLE_HOOK_KEY)
        page.get_by_label("Receiver CA file").fill(str(hook_ca))
        page.get_by_role("button", name="Probe and add").click()
        if outcome == "refused":
            visible(page.locator("#error-summary"))
            assert "TARGET_UNREACHABLE" in page.inner_text("#error-summary"), page.inner_text("#error-summary")
        else:
            visible(page.get_by_text("Target con-hook probed and added (webhook)."))
        seen(page)
        ledger.add("TargetCreated", "target:con-hook", c, outcome)
    page.goto(f"{targets}/con-files/edit")
    page.get_by_role("textbox", name=re.compile("^Directory")).fill(str(hook_ca.parent / "con-files-2"))
    page.get_by_role("button", name="Probe and save").click()
    visible(page.get_by_text("Target con-files probed and saved."))
    seen(page)
    ledger.add("TargetUpdated", "target:con-files", c)


def bot_changes(page: Any, base: str, seen: Seen, ledger: Ledger) -> None:
    """Configure Bot: refused (a bot key algorithm its key policy forbids), configured on console-ca deploying to
    con-files; console-ca's deletion and con-files' removal refused while it uses them; edited to api-ca, another
    key algorithm and con-move."""
    c = CONSOLE_ADMIN
    provisioning = f"{base}/console/certificates/provisioning"
    page.goto(f"{provisioning}/new")

    def target_box(name: str) -> Any:
        return page.get_by_role("checkbox", name=re.compile(f"^{name} "))

    def fill(algorithm: str) -> None:
        page.get_by_label("Name", exact=True).fill("console-bot")
        page.get_by_label("Certificate Authority").select_option("console-ca")
        page.get_by_label("The deployer bot generates the key beside the target").check()
        page.get_by_label("Bot key algorithm").select_option(algorithm)
        page.get_by_label("Allowed requesters").fill(REQUESTER)
        page.get_by_label("DNS suffixes").fill("example.org")
        page.get_by_label("Smallest RSA key").select_option("none")
        page.get_by_label("P-256", exact=True).uncheck()
        page.get_by_label("P-384", exact=True).check()
        page.get_by_label("Validity (days)").fill("60")
        target_box("con-files").check()

    fill("RSA-2048")
    page.get_by_role("button", name="Configure bot").click()
    visible(page.locator("#error-summary"))
    assert "RSA-2048 is not allowed" in page.inner_text("#error-summary"), page.inner_text("#error-summary")
    seen(page)
    fill("EC-P384")
    page.get_by_role("button", name="Configure bot").click()
    page.wait_for_url(re.compile(r".*/console/certificates/provisioning$"))
    row = page.get_by_role("row", name=re.compile("console-bot"))
    assert "bot (EC-P384)" in row.inner_text() and "con-files" in row.inner_text(), row.inner_text()
    seen(page)
    ledger.add("ProfileCreated", "profile:console-bot", c, "refused")
    ledger.add("ProfileCreated", "profile:console-bot", c)
    ledger.add("TargetBound", "target:con-files@console-bot", c)

    page.goto(f"{base}/console/integrations/connectors/console-ca/delete")
    page.get_by_role("button", name="Delete console-ca").click()
    visible(page.get_by_text(re.compile("Delete console-ca refused: CONNECTOR_IN_USE")))
    seen(page)
    page.goto(f"{base}/console/integrations/targets/con-files/delete")
    page.get_by_role("button", name="Remove con-files").click()
    visible(page.get_by_text(re.compile("Remove con-files refused: TARGET_IN_USE")))
    seen(page)
    ledger.add("ConnectorDeleted", "connector:console-ca", c, "refused")
    ledger.add("TargetDeleted", "target:con-files", c, "refused")

    page.goto(provisioning)
    page.get_by_role("link", name="Edit console-bot").click()
    page.get_by_label("Certificate Authority").select_option("api-ca")
    page.get_by_label("P-256", exact=True).check()
    page.get_by_label("Bot key algorithm").select_option("EC-P256")
    page.get_by_label("Validity (days)").fill("45")
    target_box("con-files").uncheck()
    target_box("con-move").check()
    seen(page)
    page.get_by_role("button", name="Save bot").click()
    visible(page.get_by_text(re.compile(r"Provisioning bot console-bot saved")))
    row = page.get_by_role("row", name=re.compile("console-bot"))
    assert "api-ca" in row.inner_text() and "bot (EC-P256)" in row.inner_text(), row.inner_text()
    assert "con-move" in row.inner_text() and "con-files" not in row.inner_text(), row.inner_text()
    seen(page)
    ledger.add("ProfileUpdated", "profile:console-bot", c)
    ledger.add("TargetBound", "target:con-move@console-bot", c)
    ledger.add("TargetUnbound", "target:con-files@console-bot", c)

"""An ACME renewal retires the certificate it renews, and one live order per replaced certificate is the database's
rule (decision 0033, addendum "replaces retires"; migration 0024), on SQLite and on PostgreSQL. certbot's `acme`
client library drives the gateway's HTTP app over uvicorn (tests/integration/test_acme_orders_live.py's door); the
issuer's side is played by folding its events through the gateway's own fold into the same database. The renewal
scheduler is the real one (its tick, its lease, its Prometheus gauge); the inventory is the auditor's own fold of the
CertificateSuperseded the gateway wrote to its outbox."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy as jose
import pytest
from acme import client as acme_client
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text

from services.auditor.inventory import apply_events, inventory_event
from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate
from services.common.contracts.envelope import decode
from services.common.contracts.events import CertificateExpiring, CertificateSuperseded, RenewalDue
from services.common.contracts.topics import Topics
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import CertificateInventory, GatewayAcmeOrder, GatewayAdminOutbox, GatewayIssuedSerial
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.acme import orders, store
from services.gateway.acme import orders_store as db
from services.gateway.acme.challenges import ChallengePolicy
from services.gateway.acme.changes import account_actor
from services.gateway.acme.problems import AcmeError, AcmeErrorType
from services.gateway.acme.renewal_info import cert_id_of
from services.gateway.app import _fold_issuer_event
from services.gateway.scheduler import Scheduler, SchedulerSettings
from tests.conftest import wait_until
from tests.integration.test_acme_orders_live import NAMES, Door, csr_for, door, http01  # noqa: F401 - door: a fixture
from tests.integration.test_gateway_api import Published
from tests.unit.test_acme_renewal_info import issued_event

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


class NewOrderReplacing(messages.NewOrder):
    """RFC 9773 5's ``replaces`` on certbot's newOrder message (the `acme` library has no ARI newOrder of its own)."""

    replaces: str = jose.field("replaces", omitempty=True)


def new_order(client: acme_client.ClientV2, csr_pem: bytes, replaces: str) -> messages.OrderResource:
    """`ClientV2.new_order` with ``replaces``: the same request, signed and sent by the client."""
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=NAMES[0])]
    response = client._post(client.directory["newOrder"], NewOrderReplacing(identifiers=identifiers, replaces=replaces))
    body = messages.Order.from_json(response.json())
    authorizations = [client._authzr_from_response(client._post_as_get(url), uri=url) for url in body.authorizations]
    return messages.OrderResource(body=body, uri=response.headers.get("Location"), authorizations=authorizations,
                                  csr_pem=csr_pem)


def issue(gateway: Door, engine: Engine, client: acme_client.ClientV2, orderr: messages.OrderResource, serial: int,
          at: datetime) -> tuple[IssueCertificate, x509.Certificate]:
    """Validate (when pending) and finalize ``orderr``, then fold the issuer's CertificateIssued (issued at ``at``,
    valid 30 days) through the gateway's fold: the order is valid."""
    if orderr.body.status == messages.STATUS_PENDING:
        challb = http01(orderr.authorizations[0])
        response, validation = challb.response_and_validation(client.net.key)
        gateway.challenges.answers[challb.chall.path] = validation.encode()
        client.answer_challenge(challb, response)
        orderr = client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=30))
    orderr = client.begin_finalization(orderr)
    command = [e.data for e in gateway.published.of_type(IssueCertificate)][-1]
    der = x509.load_pem_x509_csr(orderr.csr_pem).public_bytes(serialization.Encoding.DER)
    event, leaf = issued_event(command, der, serial, at=at)
    with write_session(engine) as session:
        _fold_issuer_event(session, event)
    assert client.poll_finalization(orderr, datetime.now() + timedelta(seconds=30)).body.status == messages.STATUS_VALID
    return command, leaf


async def scheduler_tick(scheduler: Scheduler, registry: CollectorRegistry) -> int:
    await scheduler.tick()
    assert scheduler.is_leader
    value = registry.get_sample_value("certrail_gateway_certificates_by_days_to_expiry", {"bucket": "1d_7d"})
    assert value is not None
    return int(value)


def test_a_renewal_with_replaces_retires_the_old_certificate_for_the_scheduler_and_the_inventory(
        door: Door, engine: Engine) -> None:  # noqa: F811
    client = door.registered()
    now = datetime.now(UTC).replace(microsecond=0)
    old, leaf = issue(door, engine, client, client.new_order(csr_for(NAMES[0])), 0x0A17, now - timedelta(days=27))

    notices, registry = Published(), CollectorRegistry()
    scheduler = Scheduler(engine, Topics("t-acme.certrail"), notices, lambda: datetime.now(UTC), SchedulerSettings(),
                          registry=registry)
    # the control: three days before its expiry, the old certificate is counted and notified
    assert asyncio.run(scheduler_tick(scheduler, registry)) == 1
    assert {type(e.data) for e in notices.events() if getattr(e.data, "certificate_id", None) == old.certificate_id} == {
        RenewalDue, CertificateExpiring}

    new, _ = issue(door, engine, client, new_order(client, csr_for(NAMES[0]), cert_id_of(leaf)), 0x0B28, now)
    with read_session(engine) as session:
        statuses = {cid: status for cid, status in session.execute(select(GatewayIssuedSerial.certificate_id, GatewayIssuedSerial.status))}
    assert statuses == {old.certificate_id: "superseded", new.certificate_id: "active"}
    assert asyncio.run(scheduler_tick(scheduler, registry)) == 0  # no CertrailCertificateExpiringWithoutRenewal

    # the auditor's inventory, from the CertificateSuperseded the gateway's outbox holds (and the old issuance)
    with read_session(engine) as session:
        [value] = session.scalars(select(GatewayAdminOutbox.value)
                                  .where(GatewayAdminOutbox.event_type == CertificateSuperseded.TYPE)).all()
    superseded = decode(value.encode(), CATALOG)
    assert isinstance(superseded.data, CertificateSuperseded)
    assert superseded.data.certificate_id == old.certificate_id and superseded.data.replaced_by == new.certificate_id
    old_issued, _ = issued_event(old, x509.load_pem_x509_csr(csr_for(NAMES[0])).public_bytes(serialization.Encoding.DER),
                                 0x0A17, at=now - timedelta(days=27))
    with write_session(engine) as session:
        apply_events(session, [e for e in (inventory_event(superseded), inventory_event(old_issued)) if e is not None])
    with read_session(engine) as session:
        row = session.get(CertificateInventory, old.certificate_id)
        assert row is not None and row.status == "superseded" and row.serial == "a17"


def _account(engine: Engine, client: acme_client.ClientV2) -> store.Account:
    assert client.net.account is not None
    with read_session(engine) as session:
        account = store.get_account(session, client.net.account.uri.rsplit("/", 1)[1])
    assert account is not None
    return account


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND wait_event_type = 'Lock'")).scalar())


def test_of_two_concurrent_replacing_orders_the_second_is_already_replaced(door: Door, engine: Engine) -> None:  # noqa: F811
    client = door.registered()
    _, leaf = issue(door, engine, client, client.new_order(csr_for(NAMES[0])), 0x0C39, datetime.now(UTC))
    cert_id, account = cert_id_of(leaf), _account(engine, client)
    now = datetime.now(UTC)
    outcome: list[BaseException | db.Order] = []

    def second() -> None:
        try:
            created = orders.create_order(account_actor(engine, account.account_id, lambda: now), account,
                                          orders.NewOrder([NAMES[0]], None, cert_id), policy=ChallengePolicy(),
                                          order_lifetime=timedelta(days=1), reuse=True, now=now)
            outcome.append(created.order)
        except AcmeError as refused:
            outcome.append(refused)

    # the first newOrder has passed its check and written its order, not yet committed; the second runs its own
    # check (which cannot see the first), then its INSERT meets the first's in the unique index
    with write_session(engine) as session:
        db.add_order(session, order_id="first" + "0" * 11, account_id=account.account_id, identifiers=[NAMES[0]],
                     authz_ids=[], profiles=["web"], status=db.READY, expires_at=now + timedelta(days=1), now=now,
                     replaces=cert_id)
        racing = threading.Thread(target=second, name="second-new-order")
        racing.start()
        if engine.dialect.name == "postgresql":  # SQLite: the second waits at BEGIN IMMEDIATE, unobservable
            wait_until(lambda: _waiting_on_a_lock(engine), "the second newOrder waiting on the first's index entry", 30)
    racing.join(60)
    assert not racing.is_alive()
    [refused] = outcome
    assert isinstance(refused, AcmeError) and refused.kind is AcmeErrorType.ALREADY_REPLACED and refused.status == 409
    with read_session(engine) as session:
        live = session.scalars(select(GatewayAcmeOrder.order_id).where(GatewayAcmeOrder.replaces == cert_id)).all()
    assert live == ["first" + "0" * 11]


def test_the_database_holds_one_live_order_per_replaced_certificate(engine: Engine, db_settings: DatabaseSettings) -> None:
    upgrade(db_settings)
    now = datetime.now(UTC)

    def add(session: Any, order_id: str, replaces: str | None, status: str = db.PENDING) -> None:
        db.add_order(session, order_id=order_id, account_id="acct", identifiers=["www.example.com"], authz_ids=[],
                     profiles=["web"], status=status, expires_at=now + timedelta(days=1), now=now, replaces=replaces)

    with write_session(engine) as session:
        add(session, "one", "AAAA.AQ")
        add(session, "other", "AAAA.Ag")  # another certificate
        add(session, "plain-1", None)
        add(session, "plain-2", None)  # orders that replace nothing are not held to it
        add(session, "failed", "AAAA.AQ", db.INVALID)  # nor are invalid ones
    with pytest.raises(db.ReplacedAlready), write_session(engine) as session:
        add(session, "two", "AAAA.AQ")
    with write_session(engine) as session:  # once the first is invalid, another order may replace the certificate
        assert db.move_order(session, "one", db.PENDING, db.INVALID, now)
        add(session, "two", "AAAA.AQ")
    with pytest.raises(db.ReplacedAlready), write_session(engine) as session:  # valid orders hold it too
        assert db.move_order(session, "two", db.PENDING, db.VALID, now)
        add(session, "three", "AAAA.AQ")


def test_migration_0024_settles_the_duplicates_the_race_left(engine: Engine, db_settings: DatabaseSettings) -> None:
    upgrade(db_settings, "0023")
    now = datetime.now(UTC)
    rows = [("ready1", "AAAA.AQ", "ready", 1), ("valid1", "AAAA.AQ", "valid", 2), ("valid2", "AAAA.AQ", "valid", 3),
            ("pend1", "AAAA.AQ", "pending", 0), ("alone", "AAAA.Ag", "pending", 0)]
    with write_session(engine) as session:
        for order_id, replaces, status, age in rows:
            session.add(GatewayAcmeOrder(order_id=order_id, account_id="acct", status=status, identifiers="[]",
                                         authz_ids="[]", profiles="[]", error=None, expires_at=now + timedelta(days=1),
                                         created_at=now - timedelta(hours=age), updated_at=now, replaces=replaces))
    upgrade(db_settings)
    with read_session(engine) as session:
        got = {o.order_id: (o.status, o.replaces) for o in session.scalars(select(GatewayAcmeOrder))}
        problem = session.scalars(select(GatewayAcmeOrder.error).where(GatewayAcmeOrder.order_id == "pend1")).one()
    # the oldest valid order keeps the certificate; the other valid one keeps its certificate, not the claim; the
    # unfinalized ones become invalid (alreadyReplaced)
    assert got == {"valid2": ("valid", "AAAA.AQ"), "valid1": ("valid", None), "ready1": ("invalid", "AAAA.AQ"),
                   "pend1": ("invalid", "AAAA.AQ"), "alone": ("pending", "AAAA.Ag")}
    assert problem is not None and "alreadyReplaced" in problem

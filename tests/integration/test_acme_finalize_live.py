"""Finalize, the fold to "valid", the download and revokeCert driven by certbot's `acme` client library against the
gateway's HTTP app over uvicorn (tests/integration/test_acme_orders_live.py's door: the real intake, http-01 answered
by a real HTTP server on loopback), on SQLite and on PostgreSQL. The issuer's side is played by folding its events
through the gateway's own fold (app.py's ``_fold_issuer_event``) into the same database: the whole stack with the real
issuer and emCA simulator is tests/e2e/test_acme_live.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine

from services.common.contracts.commands import IssueCertificate, RevokeCertificate
from services.common.contracts.envelope import make_event
from services.common.contracts.events import CertificateRevoked, RequestAccepted
from services.common.db import make_engine, write_session
from services.common.settings import DatabaseSettings
from services.gateway.app import _fold_issuer_event
from tests.integration.test_acme_orders_live import NAMES, Door, csr_for, door, http01  # noqa: F401 - door: a fixture
from tests.unit.test_acme_finalize import issued_event

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def test_a_real_acme_client_finalizes_downloads_and_revokes(door: Door, engine: Engine) -> None:  # noqa: F811
    client = door.registered()
    csr = csr_for(NAMES[0])
    orderr = client.new_order(csr)
    challb = http01(orderr.authorizations[0])
    response, validation = challb.response_and_validation(client.net.key)
    door.challenges.answers[challb.chall.path] = validation.encode()
    client.answer_challenge(challb, response)
    orderr = client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=30))

    orderr = client.begin_finalization(orderr)
    assert orderr.body.status == messages.STATUS_PROCESSING
    [command] = [e.data for e in door.published.of_type(IssueCertificate)]
    [accepted] = [e.data for e in door.published.of_type(RequestAccepted)]
    assert accepted.requester == "ci-pipeline" and command.certificate_id == f"acme-{orderr.uri.rsplit('/', 1)[1]}"

    event, leaf, chain = issued_event(command, x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
    with write_session(engine) as session:
        _fold_issuer_event(session, event)
    done = client.poll_finalization(orderr, datetime.now() + timedelta(seconds=30))
    assert done.body.status == messages.STATUS_VALID
    assert done.fullchain_pem == leaf.strip() + "\n" + chain.strip() + "\n"

    certificate = x509.load_pem_x509_certificate(leaf.encode())
    client.revoke(certificate, 1)
    [revoke] = [e.data for e in door.published.of_type(RevokeCertificate)]
    assert revoke.serial == format(certificate.serial_number, "x") and revoke.certificate_id == command.certificate_id
    revoked = CertificateRevoked(certificate_id=command.certificate_id, serial=revoke.serial, request_id=revoke.request_id,
                                 connector=command.connector, reason=revoke.reason, revoked_at=datetime.now(UTC))
    with write_session(engine) as session:
        _fold_issuer_event(session, make_event(revoked, id="revoked-1", source="/certrail/issuer", time=datetime.now(UTC)))
    with pytest.raises(messages.Error) as again:
        client.revoke(certificate, 1)
    assert again.value.code == "alreadyRevoked"

"""ACME Renewal Information (RFC 9773) over real HTTP: certbot's `acme` client library (ClientV2.renewal_time, which
reads the directory's renewalInfo, builds the certID itself and fetches it) and a plain HTTP client against the
gateway's app over uvicorn (tests/integration/test_acme_orders_live.py's door), on SQLite and on PostgreSQL. The
certificate is issued through the real finalize path and the issuer's CertificateIssued folded through the gateway's
own fold; the window is compared with the renewal scheduler's own computation from its own snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine

from services.common.contracts.commands import IssueCertificate
from services.common.db import make_engine, read_session, write_session
from services.common.settings import DatabaseSettings
from services.gateway.acme.renewal_info import cert_id_of
from services.gateway.app import _fold_issuer_event
from services.gateway.policy.profile import ProvisioningProfile
from services.gateway.scheduler import SchedulerSettings, jitter_window, load_snapshot, renewal_at
from tests.integration.test_acme_orders_live import NAMES, Door, csr_for, door, http01  # noqa: F401 - door: a fixture
from tests.unit.test_acme_renewal_info import issued_event

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def test_a_real_acme_client_reads_the_schedulers_renewal_window(door: Door, engine: Engine) -> None:  # noqa: F811
    client = door.registered()
    assert client.directory["renewalInfo"] == f"{door.url}/acme/renewal-info"
    csr = csr_for(NAMES[0])
    orderr = client.new_order(csr)
    challb = http01(orderr.authorizations[0])
    response, validation = challb.response_and_validation(client.net.key)
    door.challenges.answers[challb.chall.path] = validation.encode()
    client.answer_challenge(challb, response)
    orderr = client.poll_authorizations(orderr, datetime.now() + timedelta(seconds=30))
    orderr = client.begin_finalization(orderr)
    [command] = [e.data for e in door.published.of_type(IssueCertificate)]

    issued_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    event, leaf = issued_event(command, der, 0x5A17C0DE, at=issued_at)
    with write_session(engine) as session:
        _fold_issuer_event(session, event)
    done = client.poll_finalization(orderr, datetime.now() + timedelta(seconds=30))
    assert done.body.status == messages.STATUS_VALID

    # the renewal scheduler's moment for this certificate and serial, from its own snapshot and the profile's policy
    with read_session(engine) as session:
        snapshot = load_snapshot(session, datetime.now(UTC))
    [watched] = [c for c in snapshot.certificates if c.certificate_id == command.certificate_id]
    assert watched.profile is not None
    policy = snapshot.profiles[watched.profile].renewal
    assert isinstance(snapshot.profiles[watched.profile], ProvisioningProfile)
    scheduler = SchedulerSettings()  # the door's gateway runs with the default scheduler settings
    due = renewal_at(policy, watched.certificate_id, watched.serial, watched.not_before, watched.not_after, scheduler)

    answer = httpx.get(f"{door.url}/acme/renewal-info/{cert_id_of(leaf)}", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Retry-After"] == str(6 * 3600)
    window = answer.json()["suggestedWindow"]
    start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
    assert end == due
    assert start == max(watched.not_before, due - jitter_window(watched.not_before, watched.not_after, scheduler))

    # certbot: a moment inside that window, and the next look after Retry-After
    before = datetime.now()
    suggested, next_look = client.renewal_time(done.fullchain_pem.encode())
    assert suggested is not None and start <= suggested <= end
    assert next_look >= before + timedelta(hours=6) - timedelta(seconds=5)

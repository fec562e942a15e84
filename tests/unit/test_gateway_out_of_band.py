"""RevokedOutOfBand at the gateway (services/gateway/out_of_band.py, decision 0030): the serial is revoked in the
gateway's projection, and a profile with ``on_external_revocation: replace`` gets a RenewalDue for it, as the
scheduler's (same id), recorded before it is published, once; ``notify`` (the default) gets none (SQLite)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from services.common.consumer import Outbound
from services.common.contracts.envelope import Envelope, make_event
from services.common.contracts.events import RenewalDue
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration
from services.common.contracts.identity import renewal_due_id
from services.common.contracts.revocation import RevokedOutOfBand
from services.common.contracts.undeploy import ExternalRevocation
from services.common.db import make_engine, read_session, write_session
from services.common.db_schema import GatewayIssuedSerial, GatewayNotice
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import issued, store
from services.gateway.out_of_band import on_revoked_out_of_band
from services.gateway.policy.profile import ProvisioningProfile
from tests.gateway_fixtures import NOW, TOPICS, _profile
from tests.unit.test_gateway_issued import _issued

SERIAL = "1a"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    with write_session(engine) as session:
        store.put_profile(session, _profile("web", "emca"), NOW)  # notify: the default
        store.put_profile(session, _profile("bots", "emca", key_generation=KeyGeneration.BOT,
                                            bot_key_algorithm=KeyAlgorithm.EC_P256, deployment_target="nginx-1",
                                            allowed_requesters=["ops"],
                                            on_external_revocation=ExternalRevocation.REPLACE), NOW)
        for certificate_id, profile, generation in (("www", "web", "requester"), ("bot", "bots", "bot")):
            store.ensure_certificate(session, certificate_id=certificate_id, profile=profile, connector="emca",
                                     requester="ops", key_generation=generation, sans=["dns:www.example.com"], now=NOW)
    yield engine
    engine.dispose()


class Published:
    def __init__(self) -> None:
        self.outbound: list[Outbound] = []
        self.fail = False

    async def __call__(self, outbound: Sequence[Outbound]) -> None:
        if self.fail:
            raise RuntimeError("Kafka is down")
        self.outbound.extend(outbound)


def _out_of_band(certificate_id: str, serial: str = SERIAL) -> Envelope:
    data = RevokedOutOfBand(certificate_id=certificate_id, serial=serial, connector="emca", reason="keyCompromise",
                            revoked_at_ca=NOW + timedelta(hours=1), crl_number="5",
                            distribution_point="http://pki.example.test/crl/ca.crl", detected_at=NOW + timedelta(hours=2))
    return make_event(data, id=f"oob-{certificate_id}-{serial}", source="/certrail/issuer", time=NOW + timedelta(hours=2),
                      subject=certificate_id, correlationid=f"req-{certificate_id}")


def _handle(engine: Engine, published: Published, envelope: Envelope) -> None:
    asyncio.run(on_revoked_out_of_band(engine, TOPICS, published, lambda: NOW + timedelta(hours=2), envelope))


def _notice(engine: Engine, certificate_id: str) -> str | None:
    with read_session(engine) as session:
        return session.scalar(select(GatewayNotice.event_id).where(GatewayNotice.certificate_id == certificate_id))


def test_the_profile_field_defaults_to_notify() -> None:
    assert _profile("p", "emca").on_external_revocation is ExternalRevocation.NOTIFY
    spec = _profile("p", "emca").model_dump(mode="json")
    assert ProvisioningProfile.model_validate_json(json.dumps({**spec, "on_external_revocation": "replace"})) \
        .on_external_revocation is ExternalRevocation.REPLACE
    with pytest.raises(ValueError, match="on_external_revocation"):
        ProvisioningProfile.model_validate_json(json.dumps({**spec, "on_external_revocation": "ignore"}))


def test_replace_requests_a_renewal_of_the_current_serial_once(engine: Engine) -> None:
    issued.apply_event(engine, _issued(0x1A, timedelta(0), certificate_id="bot"))
    published = Published()
    published.fail = True
    with pytest.raises(RuntimeError):
        _handle(engine, published, _out_of_band("bot"))
    assert _notice(engine, "bot") == "pending:" + renewal_due_id("bot", SERIAL)  # recorded before it was published
    published.fail = False
    _handle(engine, published, _out_of_band("bot"))  # the redelivery publishes it
    [outbound] = published.outbound
    event = outbound.event
    assert isinstance(event.data, RenewalDue) and outbound.topic == TOPICS.gateway_events
    assert event.id == renewal_due_id("bot", SERIAL) and event.causationid == "oob-bot-1a"
    assert (event.data.serial, event.data.key_generation, event.data.profile, event.data.requester) == (
        SERIAL, KeyGeneration.BOT, "bots", "ops")
    assert _notice(engine, "bot") == renewal_due_id("bot", SERIAL)  # sent: the scheduler never sends its own
    _handle(engine, published, _out_of_band("bot"))
    assert len(published.outbound) == 1, "once per serial"
    with read_session(engine) as session:
        assert issued.current_serial(session, "bot") == SERIAL
    assert _statuses(engine, "bot") == {SERIAL: "revoked"}


def test_notify_and_an_old_serial_get_no_replacement(engine: Engine) -> None:
    issued.apply_event(engine, _issued(0x1A, timedelta(0), certificate_id="www"))
    issued.apply_event(engine, _issued(0x1A, timedelta(0), certificate_id="bot"))
    issued.apply_event(engine, _issued(0x2B, timedelta(days=1), certificate_id="bot", replaces=SERIAL))
    published = Published()
    _handle(engine, published, _out_of_band("www"))  # notify
    _handle(engine, published, _out_of_band("bot", SERIAL))  # superseded by 2b already
    _handle(engine, published, _out_of_band("foreign"))  # not managed here
    assert published.outbound == [] and _notice(engine, "www") is None and _notice(engine, "bot") is None
    assert _statuses(engine, "www") == {SERIAL: "revoked"}
    assert _statuses(engine, "bot") == {SERIAL: "revoked", "2b": "active"}


def _statuses(engine: Engine, certificate_id: str) -> dict[str, str]:
    table = GatewayIssuedSerial
    with read_session(engine) as session:
        return dict(session.execute(select(table.serial, table.status).where(table.certificate_id == certificate_id)).all())

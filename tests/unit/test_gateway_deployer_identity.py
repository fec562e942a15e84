"""The deployer's identity is authorised like a requester (services/gateway/intake.py
`authorise_deployer`): it serves every bot-key profile by design and nothing else, so a forged
ProvisionCertificate for a requester-held profile ends, at the latest, in RequestRejected
REQUESTER_NOT_AUTHORISED with no command for emCA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.common.contracts.catalog import CATALOG
from services.common.contracts.commands import IssueCertificate
from services.common.contracts.envelope import decode
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import RequestRejected
from services.common.contracts.fields import KeyAlgorithm, KeyGeneration, RequestKind
from services.common.contracts.requests import IssueRequested
from services.common.contracts.signing import signed
from services.common.db import make_engine, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway import store
from services.gateway.intake import Intake, authorise_deployer, stored_records
from services.gateway.policy import PolicyViolation
from services.gateway.store import SqlRequesterKeys
from tests.gateway_fixtures import BOX, HMAC_KEY, NOW, TOPICS, _csr, _profile, seed

DEPLOYER = "certrail-deployer"
BOT = dict(key_generation=KeyGeneration.BOT, bot_key_algorithm=KeyAlgorithm.EC_P256, deployment_target="files",
           allowed_requesters=["ops"])
CASES = {
    "issue-under-a-bot-profile-not-naming-it": (RequestKind.ISSUE, BOT, True),
    "renew-under-a-bot-profile": (RequestKind.RENEW, BOT, True),
    "issue-under-a-requester-held-profile": (RequestKind.ISSUE, {}, False),
    "issue-under-a-requester-held-profile-naming-it": (RequestKind.ISSUE, {"allowed_requesters": [DEPLOYER]}, False),
    "renew-under-a-requester-held-profile": (RequestKind.RENEW, {}, False),
    "revoke-under-a-bot-profile": (RequestKind.REVOKE, BOT, False),
}


@pytest.mark.parametrize(("kind", "overrides", "allowed"), CASES.values(), ids=CASES.keys())
def test_authorise_deployer(kind: RequestKind, overrides: dict[str, object], allowed: bool) -> None:
    profile = _profile("p", "emca", **overrides)
    if allowed:
        authorise_deployer(DEPLOYER, kind, profile)
        return
    with pytest.raises(PolicyViolation) as refused:
        authorise_deployer(DEPLOYER, kind, profile)
    assert refused.value.code is ErrorCode.REQUESTER_NOT_AUTHORISED


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'gw.db'}")
    upgrade(db)
    engine = make_engine(db)
    seed(engine)
    with write_session(engine) as session:
        store.add_requester_key(session, BOX, requester=DEPLOYER, key_id="d1", secret=HMAC_KEY, public_key_pem=None, now=NOW)
    yield engine
    engine.dispose()


async def test_a_deployer_signed_csr_for_a_requester_held_profile_is_rejected_with_no_command(engine: Engine) -> None:
    intake = Intake(engine=engine, topics=TOPICS, keys=SqlRequesterKeys(engine, BOX), clock=lambda: NOW)
    for request_id, profile, certificate_id in (("d1", "web", "held-1"), ("d2", "bots", "bot-1")):
        request = signed(IssueRequested(request_id=request_id, requester=DEPLOYER, profile=profile,
                                        certificate_id=certificate_id, csr=_csr("api.example.com"),
                                        sans=["dns:api.example.com"]), "d1", HMAC_KEY)
        outcome = await intake.from_kafka(f"ev-{request_id}", request, None)
        records = [(topic, decode(value, CATALOG).data) for topic, _, value in stored_records(outcome.outbound)]
        if profile == "web":  # requester-held: refused, and nothing for emCA
            assert outcome.answer.status == "rejected"
            ((topic, rejected),) = records
            assert topic == TOPICS.gateway_events and isinstance(rejected, RequestRejected)
            assert rejected.error.code is ErrorCode.REQUESTER_NOT_AUTHORISED
        else:  # the bot-key profile it serves by design (its allowed requesters do not name the deployer)
            assert outcome.answer.status == "accepted"
            assert any(topic == TOPICS.commands("emca") and isinstance(data, IssueCertificate) for topic, data in records)

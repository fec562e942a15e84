"""The prebuilt Core statements on every certificate's path (issue 18) do on PostgreSQL what they do
on SQLite: the upserts, the RETURNING of a certificate's revision, the UPDATE that must hit one row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.db import make_engine, read_session, write_session
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.deployer import parking, projection
from services.deployer import store as deployer_store
from services.gateway import store as gateway_store

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


@pytest.fixture
def engine(db_settings: DatabaseSettings):  # type: ignore[no-untyped-def]
    upgrade(db_settings)
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


def test_gateway_certificate_revisions_and_requests(engine) -> None:  # type: ignore[no-untyped-def]
    values = {"certificate_id": "web-1", "profile": "web", "connector": "ca", "requester": "ci",
              "key_generation": "requester"}
    with write_session(engine) as session:
        gateway_store.ensure_certificate(session, **values, sans=["dns:a.example"], now=NOW)
        gateway_store.ensure_certificate(session, **values, sans=["dns:b.example"], now=NOW)  # kept as it was
        assert gateway_store.get_certificate(session, "web-1").revision == 0
        assert gateway_store.next_revision(session, **{**values, "connector": "ca2"}, sans=[], now=NOW) == 1
        assert gateway_store.next_revision(session, **values, sans=["dns:c.example"], now=NOW + timedelta(1)) == 2
        gateway_store.add_request(session, gateway_store.StoredAnswer("r-1", "h", "ci", "issue", "web-1", "accepted",
                                                                      {"status": "accepted"}, [], NOW))
    with read_session(engine) as session:
        row = gateway_store.get_certificate(session, "web-1")
        assert (row.revision, row.connector, row.sans) == (2, "ca", '["dns:c.example"]')
        assert gateway_store.get_certificate(session, "web-2") is None
        stored = gateway_store.get_request(session, "r-1")
        assert stored is not None and (stored.status, stored.answer) == ("accepted", {"status": "accepted"})
    with pytest.raises(Exception, match="(?i)unique|duplicate"), write_session(engine) as session:
        gateway_store.add_request(session, gateway_store.StoredAnswer("r-1", "h2", "ci", "issue", "web-1", "accepted",
                                                                      {}, [], NOW))


def test_deployer_attempts_outcomes_and_acceptances(engine) -> None:  # type: ignore[no-untyped-def]
    attempt = {"certificate_id": "web-1", "serial": "0a", "target_name": "t", "target_kind": "file", "cause_id": "e-1",
               "certificate_pem": "PEM", "chain_pem": ("CA",), "public_key_sha256": "ab" * 32, "now": NOW}
    with write_session(engine) as session:
        deployer_store.start_attempt(session, **attempt)
        deployer_store.start_attempt(session, **attempt)
        deployer_store.finish(session, certificate_id="web-1", serial="0a", target_name="t", status="deployed",
                              rolled_back=None, error_code=None, error_message=None, outcome="{}", now=NOW)
        with pytest.raises(AssertionError):
            deployer_store.finish(session, certificate_id="web-1", serial="0b", target_name="t", status="deployed",
                                  rolled_back=None, error_code=None, error_message=None, outcome="{}", now=NOW)
        projection.record_accepted(session, certificate_id="web-1", request_id="r-1", profile="web", connector="ca",
                                   now=NOW, public_key_sha256="AB" * 32)
        projection.record_accepted(session, certificate_id="web-1", request_id="r-2", profile="web", connector="ca",
                                   now=NOW)
        projection.set_pin(session, "ca", "CD" * 32, "e-0", NOW, replace=False)
    with read_session(engine) as session:
        [deployment] = deployer_store.list_deployments(session, "web-1")
        assert (deployment.attempts, deployment.status, deployment.chain_pem) == (2, "deployed", ("CA",))
        assert projection.accepted(session, "web-1") == projection.Accepted("r-2", None)
        assert projection.connector_pin(session, "ca") == "cd" * 32
        assert projection.bot_key_hashes(session, "web-1") == frozenset()
        assert not parking.is_parked(session, "e-1")

"""Possible duplicates resolved against the real simulator (4.2.4 dialect, no applicationId dedupe), a real issuer
process on the test run's Kafka broker, through the issuer's internal API (services/issuer/duplicates/; decision
0032): the issuer dies after emCA answered (crash point after_emca_response:1), the retry is published as
POSSIBLE_DUPLICATE with DuplicateDetected and counted in the unresolved gauge; serials that are not the extra
certificate are refused (audited); the extra serial, found through the simulator's admin listing (the stand-in for
emCA's console), is fetched by serial, checked, revoked as superseded and confirmed on the CRL; the delivered
certificate stays live."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emca_sim.server import SimServer, start_in_thread
from services.common.contracts.duplicates import (
    DuplicateDetected,
    DuplicateResolution,
    DuplicateResolutionRefused,
    DuplicateResolved,
)
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from services.common.contracts.fields import RevocationReason
from services.common.contracts.identity import normalise_serial
from services.common.contracts.revocation import RevocationConfirmed
from services.common.emca.types import EmcaVersion
from services.common.settings import KafkaSettings
from services.issuer.processor import CRASH_EXIT_CODE
from tests.conftest import poll_until
from tests.issuer_harness import IssuerBench, metric

pytestmark = [pytest.mark.integration]

TOKEN = "duplicates-internal-token-" + "y" * 24
ACTOR = "ops-anna"
GAUGE = "certrail_issuer_duplicates_unresolved"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    with start_in_thread(tmp_path_factory.mktemp("emca-sim-duplicates"), port=0, crl_port=0, admin_port=0) as server:
        yield server


@pytest.fixture
async def bench(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[IssuerBench]:
    async with IssuerBench(kafka_settings, tmp_path) as value:
        yield value


async def _resolve(client: httpx.AsyncClient, certificate_id: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/internal/v1/duplicates/{certificate_id}/resolve", json=body,
                             headers={"X-Certrail-Actor": ACTOR})


@pytest.mark.timeout(240)
async def test_a_duplicate_on_4_2_4_is_found_checked_and_revoked_as_superseded(bench: IssuerBench, sim: SimServer) -> None:
    name = await bench.connector(sim, EmcaVersion.V4_2_4, "dup-b")
    command = bench.issue_command(name)
    other = bench.issue_command(name)  # another certificate of the same CA: another public key
    env = {"CERTRAIL_INTERNAL_TOKEN": TOKEN, "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_INITIAL_S": "0.5",
           "CERTRAIL_ISSUER_REVOCATION_CONFIRM_POLL_MAX_S": "1"}
    issuer = bench.issuer()
    issuer.start({**env, "CERTRAIL_ISSUER_TEST_CRASH_POINT": "after_emca_response:1"})
    await issuer.wait_healthy()
    await bench.send(name, command)
    assert await issuer.wait_exit() == CRASH_EXIT_CODE  # emCA issued; nothing recorded
    issuer.start(env)
    await issuer.wait_healthy()
    await bench.send(name, other)
    (issued,) = await bench.wait_for(CertificateIssued, issuance_id=command.issuance_id)
    (detected,) = await bench.wait_for(DuplicateDetected, issuance_id=command.issuance_id)
    (other_issued,) = await bench.wait_for(CertificateIssued, issuance_id=other.issuance_id)
    delivered = issued.data.serial
    assert issued.data.possible_duplicate and detected.causationid == issued.causationid
    assert (detected.data.delivered_serial, detected.data.public_key_sha256) == (delivered, issued.data.public_key_sha256)

    async with httpx.AsyncClient(base_url=issuer.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api:
        assert (await api.get("/internal/v1/duplicates", headers={"Authorization": "Bearer wrong"})).status_code == 401
        listed = (await api.get("/internal/v1/duplicates", params={"state": "unresolved"})).json()["duplicates"]
        assert [(d["certificate_id"], d["delivered_serial"], d["state"]) for d in listed] == [
            (command.certificate_id, delivered, "unresolved")]
        await poll_until(lambda: metric(issuer.metrics(), GAUGE, {"connector": name}) == 1, "the gauge at 1", 30)

        # the operator's search at emCA (the simulator's admin listing): two certificates for the applicationId
        # (emCA writes serials zero-padded; certrail's events carry them without leading zeros)
        found = [normalise_serial(c.serial) for c in sim.backend.certificates_for_application_id(command.issuance_id)]
        assert len(found) == 2 and delivered in found
        [extra] = [serial for serial in found if serial != delivered]

        refusals = {  # serial -> (status, code): each refused, audited, nothing revoked
            delivered: (409, ErrorCode.CERTIFICATE_MISMATCH),
            other_issued.data.serial: (422, ErrorCode.CERTIFICATE_MISMATCH),
            "7fffffffffffffffff": (404, ErrorCode.CERTIFICATE_NOT_FOUND),
        }
        for serial, (status, code) in refusals.items():
            answer = await _resolve(api, command.certificate_id, {"extra_serial": serial})
            assert (answer.status_code, answer.json()["code"]) == (status, code.value), answer.text
        refused = await bench.wait_for(DuplicateResolutionRefused, len(refusals), issuance_id=command.issuance_id)
        assert {(e.data.extra_serial, e.data.error.code, e.data.actor) for e in refused} == {
            (s, c, ACTOR) for s, (_, c) in refusals.items()}

        answer = await _resolve(api, command.certificate_id, {"extra_serial": extra.upper(), "note": "found at emCA"})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["duplicate"]["resolution"], answer.json()["duplicate"]["extra_serial"]) == ("revoked", extra)
        (resolved,) = await bench.wait_for(DuplicateResolved, issuance_id=command.issuance_id)
        assert (resolved.data.resolution, resolved.data.extra_serial, resolved.data.actor) == (
            DuplicateResolution.REVOKED, extra, ACTOR)
        (confirmed,) = await bench.wait_for(RevocationConfirmed, serial=extra, timeout_s=60)
        assert confirmed.causationid == resolved.id and confirmed.data.reason is RevocationReason.SUPERSEDED
        assert sim.backend.certificate(extra).revocation_reason == "superseded"
        assert sim.backend.certificate(delivered).revoked_at is None  # the delivered certificate is untouched
        await poll_until(lambda: metric(issuer.metrics(), GAUGE, {"connector": name}) == 0, "the gauge back at 0", 30)
        assert (await api.get("/internal/v1/duplicates")).json()["duplicates"] == []
        again = await _resolve(api, command.certificate_id, {"extra_serial": extra})  # the same answer: the stored one
        assert again.status_code == 200 and len(bench.of_type(DuplicateResolved)) == 1

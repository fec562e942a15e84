"""Submissions in flight together share emCA calls (services/issuer/batching.py), against the fake emCA:
each command still gets its own outcome, its own refusal, or the failure of the call it was in."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.contracts.errors import ErrorCode
from services.common.emca.fake import FakeEmca
from services.common.emca.support import probe_csr_pem
from services.common.emca.types import IssuedCertificate, RequestPermanentError, TransientError
from services.issuer.batching import SubmitBatcher
from tests.emca_contract import make_csr

PROFILE, SUBSCRIBER = "TLS Server", "SUB-0001"


@pytest.fixture(scope="module")
def emca() -> FakeEmca:
    return FakeEmca()


def submit_all(batcher: SubmitBatcher, connection: object, csrs: list[str], tag: str) -> asyncio.Future[list[object]]:
    return asyncio.gather(
        *(
            batcher.submit(
                connection,
                csr_pem=csr,
                profile_name=PROFILE,
                subscriber_id=SUBSCRIBER,  # type: ignore[arg-type]
                application_id=f"{tag}-{n}",
            )
            for n, csr in enumerate(csrs)
        ),
        return_exceptions=True,
    )


def public_key_of(issued: object) -> bytes:
    assert isinstance(issued, IssuedCertificate)
    key = x509.load_pem_x509_certificate(issued.certificate_pem.encode()).public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_submissions_in_flight_share_calls_and_each_gets_its_own_certificate(emca: FakeEmca) -> None:
    sizes: list[int] = []
    batcher = SubmitBatcher(max_csrs=5, max_calls=2, on_call=sizes.append)
    connection = emca.connect(emca.endpoint_for("app-v424"))
    made = [make_csr(f"batch-{n}.example.com") for n in range(12)]
    emca.calls.clear()
    outcomes = await submit_all(batcher, connection, [csr for csr, _ in made], "share")
    assert [public_key_of(o) for o in outcomes] == [spki for _, spki in made]  # in order, each its own key
    assert len({o.serial for o in outcomes}) == 12  # type: ignore[attr-defined]
    assert sizes == [5, 5, 2] and emca.calls == ["submit_csrs"] * 3  # 12 in flight: 3 calls of at most 5
    assert all(emca.issued_by_application_id[f"share-{n}"] == 1 for n in range(12))  # each CSR keeps its issuance id


async def test_a_lone_submission_is_sent_at_once_with_its_issuance_id(emca: FakeEmca) -> None:
    batcher = SubmitBatcher(max_csrs=10, max_calls=2)
    connection = emca.connect(emca.endpoint_for("app-v423"))
    emca.calls.clear()
    (outcome,) = await submit_all(batcher, connection, [make_csr("alone.example.com")[0]], "alone")
    assert isinstance(outcome, IssuedCertificate)
    assert emca.calls == ["submit_csr"] and emca.issued_by_application_id["alone-0"] == 1


async def test_a_refused_csr_fails_alone(emca: FakeEmca) -> None:
    batcher = SubmitBatcher(max_csrs=10, max_calls=1)
    connection = emca.connect(emca.endpoint_for("app-v424"))
    csrs = [make_csr(f"mixed-{n}.example.com")[0] for n in range(4)]
    csrs[2] = probe_csr_pem()  # a broken signature: emCA refuses this CSR only
    emca.calls.clear()
    outcomes = await submit_all(batcher, connection, csrs, "mixed")
    assert [type(o) for o in outcomes] == [IssuedCertificate, IssuedCertificate, RequestPermanentError, IssuedCertificate]
    assert outcomes[2].code is ErrorCode.CA_REJECTED  # type: ignore[union-attr]
    assert emca.calls == ["submit_csrs"]  # all four were waiting when the call went


async def test_when_every_csr_of_a_call_is_refused_each_is_sent_again_alone_for_its_own_reason(emca: FakeEmca) -> None:
    batcher = SubmitBatcher(max_csrs=10, max_calls=1)
    connection = emca.connect(emca.endpoint_for("app-v424"))
    emca.calls.clear()
    outcomes = await submit_all(batcher, connection, [probe_csr_pem(), probe_csr_pem(), "not a CSR"], "refused")
    assert all(isinstance(o, RequestPermanentError) and o.code is ErrorCode.CA_REJECTED for o in outcomes)
    assert "bad signature" in str(outcomes[1]) and "Invalid CSR" in str(outcomes[2])
    assert "bad signature" not in str(outcomes[2])  # its own reason, not the first CSR's
    assert emca.calls == ["submit_csrs", "submit_csr", "submit_csr", "submit_csr"]


async def test_a_failed_call_fails_every_submission_of_it_alike(emca: FakeEmca) -> None:
    batcher = SubmitBatcher(max_csrs=10, max_calls=1)
    connection = emca.connect(emca.endpoint_for("app-v424"))
    emca.faults.down = True
    try:
        outcomes = await submit_all(batcher, connection, [make_csr(f"down-{n}.example.com")[0] for n in range(5)], "down")
    finally:
        emca.faults.down = False
    assert all(isinstance(o, TransientError) for o in outcomes)  # all stay queued
    assert len({id(o) for o in outcomes}) == 1  # the one failure of their call: certain or uncertain for all alike


async def test_v4_0_17_has_no_batch_call_and_is_called_one_csr_at_a_time(emca: FakeEmca) -> None:
    sizes: list[int] = []
    batcher = SubmitBatcher(max_csrs=10, max_calls=1, on_call=sizes.append)
    connection = emca.connect(emca.endpoint_for("app-v4017"))
    emca.calls.clear()
    outcomes = await submit_all(batcher, connection, [make_csr(f"legacy-{n}.example.com")[0] for n in range(4)], "legacy")
    assert all(isinstance(o, IssuedCertificate) for o in outcomes)
    assert emca.calls == ["submit_csr"] * 4 and sizes == [1] * 4

"""Dedupe by request id: NEW, SAME (the stored answer again) or CONFLICT."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.contracts.errors import ErrorCode
from services.common.contracts.fields import RevocationReason
from services.common.contracts.requests import RevokeRequested
from services.common.contracts.signing import signed
from services.gateway.policy.canonical import request_content_hash
from services.gateway.policy.dedupe import DedupeOutcome, StoredRequest, decide_dedupe

REQUEST = RevokeRequested(
    request_id="req-1", requester="ci-pipeline", certificate_id="web.example.com", reason=RevocationReason.SUPERSEDED
)
ANSWER = {"type": "io.certrail.request.accepted.v1", "id": "answer-1"}
STORED = StoredRequest(request_id="req-1", content_hash=request_content_hash(REQUEST), answer=ANSWER)


def test_unseen_id_is_new() -> None:
    decision = decide_dedupe(None, "req-1", request_content_hash(REQUEST))
    assert decision.outcome is DedupeOutcome.NEW and decision.answer is None and decision.violation is None


def test_same_content_gets_the_stored_answer_even_signed_by_another_key() -> None:
    resent = signed(REQUEST, "es-1", ec.generate_private_key(ec.SECP256R1()))
    decision = decide_dedupe(STORED, "req-1", request_content_hash(resent))
    assert decision.outcome is DedupeOutcome.SAME
    assert decision.answer is ANSWER


def test_different_content_is_a_conflict() -> None:
    other = REQUEST.model_copy(update={"reason": RevocationReason.KEY_COMPROMISE})
    decision = decide_dedupe(STORED, "req-1", request_content_hash(other))
    assert decision.outcome is DedupeOutcome.CONFLICT and decision.answer is None
    assert decision.violation is not None
    assert decision.violation.code is ErrorCode.DUPLICATE_REQUEST_CONFLICT
    assert "request id 'req-1' was already used for a different request" in decision.violation.message


def test_another_requester_reusing_the_id_is_a_conflict() -> None:
    other = REQUEST.model_copy(update={"requester": "mesh"})
    assert decide_dedupe(STORED, "req-1", request_content_hash(other)).outcome is DedupeOutcome.CONFLICT


def test_stored_record_of_another_id_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="the stored request is 'req-1', not 'req-2'"):
        decide_dedupe(STORED, "req-2", STORED.content_hash)


def test_a_violation_becomes_the_error_of_a_rejection() -> None:
    other = REQUEST.model_copy(update={"reason": RevocationReason.KEY_COMPROMISE})
    violation = decide_dedupe(STORED, "req-1", request_content_hash(other)).violation
    assert violation is not None
    info = violation.error_info()
    assert info.code is ErrorCode.DUPLICATE_REQUEST_CONFLICT and info.message == violation.message

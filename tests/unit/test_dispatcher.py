"""The shared consumer plumbing: handled, ignored, dead-lettered, retried."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError

from services.common.consumer import Dispatcher, InboundRecord, InvalidMessage, Outbound, Outcome
from services.common.contracts.catalog import ALL_TYPES, CATALOG
from services.common.contracts.deadletter import DeadLetter
from services.common.contracts.envelope import Envelope, decode, encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateDeployed, CertificateIssued, RequestAccepted
from services.common.contracts.identity import message_id
from services.common.contracts.requests import IssueRequested
from services.common.contracts.topics import Topics
from services.common.failures import is_transient
from services.common.fakes import RecordingPublisher
from services.common.progress import describe
from tests.unit.examples import CERT_ID, NOW, examples, private_key_pem

EXAMPLES = examples()
TOPICS = Topics()


def _own_topic(value: bytes | None) -> str:
    """The topic the producer of ``value``'s type owns (certrail.requests for anything undecodable)."""
    try:
        declared = json.loads(value or b"").get("type")
    except (ValueError, AttributeError):
        return TOPICS.requests
    cls = CATALOG.get(declared) if isinstance(declared, str) else None
    return TOPICS.topic_of(cls) if cls is not None and cls.CHANNEL != "commands" else TOPICS.requests


def _record(value: bytes | None, offset: int = 5, key: bytes | None = b"web-frontend.example.com",
            topic: str | None = None) -> InboundRecord:
    return InboundRecord(topic=topic or _own_topic(value), partition=2, offset=offset, value=value, key=key,
                         timestamp_ms=1_700_000_000_000)


def _encoded(data_cls: type) -> bytes:
    return encode(make_event(EXAMPLES[data_cls], id="evt-1", source="/t", time=NOW, subject=CERT_ID))


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome, ErrorCode | None]] = []

    def observed(self, record: InboundRecord, message_type: str, outcome: Outcome, code: ErrorCode | None) -> None:
        self.seen.append((message_type, outcome, code))


def _dispatcher(handlers: dict | None = None) -> tuple[Dispatcher, RecordingPublisher, Observer]:
    publisher = RecordingPublisher()
    observer = Observer()
    dispatcher = Dispatcher(
        service="gateway", catalog=CATALOG, topics=TOPICS, publisher=publisher, handlers=handlers or {},
        observer=observer, clock=lambda: NOW,
    )
    return dispatcher, publisher, observer


def _dead_letter(publisher: RecordingPublisher) -> DeadLetter:
    assert len(publisher.sent) == 1
    out = publisher.sent[0]
    assert out.topic == "certrail.deadletter"
    decoded = decode(out.value(), CATALOG)  # what we publish is itself valid
    assert isinstance(decoded.data, DeadLetter)
    return decoded.data


async def test_undecodable_bytes_become_a_dead_letter_with_reason_and_original() -> None:
    dispatcher, publisher, observer = _dispatcher()
    raw = b"\x00\x01 this is not json"
    assert await dispatcher.dispatch(_record(raw)) is Outcome.DEAD_LETTERED
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.UNDECODABLE
    assert "not UTF-8" in letter.reason or "not JSON" in letter.reason
    assert base64.b64decode(letter.original_b64) == raw
    assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.original_size == len(raw)
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == ("certrail.requests", 2, 5)
    assert letter.source.key == "web-frontend.example.com"
    assert letter.consumer == "gateway"
    assert observer.seen == [("invalid", Outcome.DEAD_LETTERED, ErrorCode.UNDECODABLE)]


async def test_tombstone_is_dead_lettered_not_dropped() -> None:
    dispatcher, publisher, _ = _dispatcher()
    assert await dispatcher.dispatch(_record(None)) is Outcome.DEAD_LETTERED
    assert _dead_letter(publisher).original_size == 0


async def test_private_key_never_reaches_the_dead_letter_payload() -> None:
    dispatcher, publisher, _ = _dispatcher()
    pem = private_key_pem()
    body = json.loads(_encoded(IssueRequested))
    body["data"]["csr"] = pem  # pasted a key instead of a CSR
    raw = json.dumps(body).encode()
    assert await dispatcher.dispatch(_record(raw)) is Outcome.DEAD_LETTERED
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.PRIVATE_KEY_SUBMITTED
    assert letter.private_keys_removed == 1
    published = b"".join(publisher.values())
    original = base64.b64decode(letter.original_b64)
    key_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    for line in key_lines:
        assert line.encode() not in published
        assert line.encode() not in original
    assert b"PRIVATE KEY REMOVED sha256:" in original
    # the rest of the request is kept for the investigation
    assert json.loads(original)["data"]["request_id"] == "req-1"


async def test_private_key_in_the_record_key_is_removed_too() -> None:
    dispatcher, publisher, _ = _dispatcher()
    pem = private_key_pem()
    await dispatcher.dispatch(_record(b"junk", key=pem.encode()))
    letter = _dead_letter(publisher)
    body_line = next(line for line in pem.splitlines() if not line.startswith("-----"))
    assert body_line not in (letter.source.key or "")


async def test_known_type_not_handled_is_ignored() -> None:
    dispatcher, publisher, observer = _dispatcher()
    assert await dispatcher.dispatch(_record(_encoded(CertificateDeployed))) is Outcome.IGNORED
    assert publisher.sent == []
    assert observer.seen == [(CertificateDeployed.TYPE, Outcome.IGNORED, None)]


async def test_unknown_type_is_dead_lettered() -> None:
    dispatcher, publisher, _ = _dispatcher()
    body = json.loads(_encoded(CertificateDeployed))
    body["type"] = "io.certrail.something.new.v9"
    await dispatcher.dispatch(_record(json.dumps(body).encode()))
    assert _dead_letter(publisher).code is ErrorCode.UNKNOWN_MESSAGE_TYPE


async def test_handled_message_publishes_the_handlers_output() -> None:
    received: list[Envelope] = []

    async def handle(envelope: Envelope) -> Sequence[Outbound]:
        received.append(envelope)
        accepted = EXAMPLES[RequestAccepted]
        event = make_event(
            accepted, id=message_id(envelope.id, accepted.TYPE), source="/certrail/gateway", time=NOW,
            subject=CERT_ID, correlationid="req-1", causationid=envelope.id,
        )
        return [Outbound(topic=TOPICS.topic_of(RequestAccepted), event=event, key=CERT_ID)]

    dispatcher, publisher, observer = _dispatcher({IssueRequested: handle})
    assert await dispatcher.dispatch(_record(_encoded(IssueRequested))) is Outcome.HANDLED
    assert [e.data for e in received] == [EXAMPLES[IssueRequested]]
    assert [(o.topic, o.key, o.event.type) for o in publisher.sent] == [("certrail.events.gateway", CERT_ID, RequestAccepted.TYPE)]
    assert publisher.sent[0].event.causationid == "evt-1"
    assert observer.seen == [(IssueRequested.TYPE, Outcome.HANDLED, None)]


async def test_handler_rejection_is_dead_lettered() -> None:
    async def handle(envelope: Envelope) -> Sequence[Outbound]:
        raise InvalidMessage("certificate references an unknown profile", ErrorCode.PROFILE_NOT_FOUND)

    dispatcher, publisher, _ = _dispatcher({CertificateIssued: handle})
    assert await dispatcher.dispatch(_record(_encoded(CertificateIssued))) is Outcome.DEAD_LETTERED
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.PROFILE_NOT_FOUND and "unknown profile" in letter.reason


async def test_unexpected_handler_error_propagates_for_retry_and_publishes_nothing() -> None:
    async def handle(envelope: Envelope) -> Sequence[Outbound]:
        raise ConnectionError("database went away")

    dispatcher, publisher, _ = _dispatcher({CertificateIssued: handle})
    with pytest.raises(ConnectionError):
        await dispatcher.dispatch(_record(_encoded(CertificateIssued)))
    assert publisher.sent == []


async def test_redelivered_poison_record_gives_the_same_dead_letter_bytes() -> None:
    first, pub1, _ = _dispatcher()
    second, pub2, _ = _dispatcher()
    await first.dispatch(_record(b"garbage", offset=9))
    await second.dispatch(_record(b"garbage", offset=9))
    assert pub1.values() == pub2.values()
    third, pub3, _ = _dispatcher()
    await third.dispatch(_record(b"garbage", offset=10))
    assert pub3.sent[0].event.id != pub1.sent[0].event.id


async def test_huge_record_is_dead_lettered_truncated() -> None:
    dispatcher, publisher, _ = _dispatcher()
    raw = b"x" * (300 * 1024)
    await dispatcher.dispatch(_record(raw))
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.MESSAGE_TOO_LARGE
    assert letter.truncated and letter.original_size == len(raw)
    assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()


# -- handler failures: transient ones retried by the edge, the others dead-lettered after N attempts --------


def _failing(errors: list[BaseException]):  # type: ignore[no-untyped-def]
    """A handler that raises the given errors in turn, then succeeds; it counts its calls."""
    calls: list[int] = []

    async def handle(envelope: Envelope) -> Sequence[Outbound]:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return []

    return handle, calls


def _attempting(handler, attempts: int = 3) -> tuple[Dispatcher, RecordingPublisher, list[BaseException]]:  # type: ignore[no-untyped-def]
    dispatcher, publisher, _ = _dispatcher({CertificateIssued: handler})
    failures: list[BaseException] = []
    dispatcher.handler_attempts = attempts
    dispatcher.handler_retry_initial_s = 0.0
    dispatcher.on_failure = lambda record, exc: failures.append(exc)
    return dispatcher, publisher, failures


async def test_a_handler_failing_every_time_is_dead_lettered_with_handler_failed_after_n_attempts() -> None:
    handler, calls = _failing([ValueError("cannot digest this serial")] * 10)
    dispatcher, publisher, failures = _attempting(handler, attempts=3)
    assert await dispatcher.dispatch(_record(_encoded(CertificateIssued))) is Outcome.DEAD_LETTERED
    assert len(calls) == 3 and len(failures) == 3
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.HANDLER_FAILED
    assert letter.reason == "the gateway handler failed 3 times: ValueError: cannot digest this serial"
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == ("certrail.events.issuer", 2, 5)


async def test_a_handler_failing_fewer_than_n_times_is_handled() -> None:
    handler, calls = _failing([KeyError("flaky"), RuntimeError("flaky")])
    dispatcher, publisher, failures = _attempting(handler, attempts=3)
    assert await dispatcher.dispatch(_record(_encoded(CertificateIssued))) is Outcome.HANDLED
    assert len(calls) == 3 and len(failures) == 2 and publisher.sent == []


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("database is locked")),
        KafkaConnectionError("broker down"),
        KafkaTimeoutError(),
        TimeoutError("slow"),
        ConnectionResetError("reset"),
        OSError("no route to host"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_a_transient_failure_is_never_dead_lettered(error: BaseException) -> None:
    handler, calls = _failing([error] * 10)
    dispatcher, publisher, failures = _attempting(handler, attempts=1)
    with pytest.raises(type(error)):
        await dispatcher.dispatch(_record(_encoded(CertificateIssued)))
    assert len(calls) == 1 and failures == [] and publisher.sent == []  # no in-place retry: the edge backs off


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("x", {}, Exception("gone")), True),
        (IntegrityError("INSERT", {"secret": "s3cret"}, Exception("UNIQUE constraint failed")), False),
        (KafkaConnectionError(), True),
        (httpx.ConnectTimeout("slow"), True),
        (TimeoutError(), True),
        (FileNotFoundError("x"), True),
        (ValueError("x"), False),
        (KeyError("x"), False),
        (AttributeError("x"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_transient_classification(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


async def test_the_dead_letter_reason_never_carries_statement_parameters_or_keys() -> None:
    handler, _ = _failing([IntegrityError("INSERT INTO t VALUES (?)", {"password": "s3cret"}, Exception("UNIQUE failed"))] * 3)
    dispatcher, publisher, _ = _attempting(handler, attempts=3)
    await dispatcher.dispatch(_record(_encoded(CertificateIssued)))
    reason = _dead_letter(publisher).reason
    assert "s3cret" not in reason and "INSERT" not in reason and reason.endswith("IntegrityError: UNIQUE failed")
    assert "BEGIN" not in describe(ValueError(f"bad key {private_key_pem()}"))


# -- the producer check (decision 0016): a type only from the topic its producer owns -------------------

def _own(cls: type) -> str:
    return TOPICS.commands("emca-test") if cls.CHANNEL == "commands" else TOPICS.topic_of(cls)


_CANDIDATE_TOPICS = (TOPICS.requests, TOPICS.provisioning, *TOPICS.events_topics(), TOPICS.legacy_events,
                     TOPICS.deadletter, TOPICS.audit_checkpoints, TOPICS.commands("emca-test"))
_ROUTES = [pytest.param(cls, topic, topic == _own(cls), id=f"{cls.__name__}@{topic}")
           for cls in ALL_TYPES for topic in _CANDIDATE_TOPICS]


@pytest.mark.parametrize(("cls", "topic", "own"), _ROUTES)
async def test_each_type_is_handled_only_on_its_producers_topic(cls: type, topic: str, own: bool) -> None:
    handled: list[str] = []

    async def handle(envelope: Envelope) -> Sequence[Outbound]:
        handled.append(envelope.id)
        return []

    dispatcher, publisher, observer = _dispatcher({cls: handle})
    outcome = await dispatcher.dispatch(_record(_encoded(cls), topic=topic))
    if own:
        assert (outcome, handled, publisher.sent) == (Outcome.HANDLED, ["evt-1"], [])
        return
    assert outcome is Outcome.DEAD_LETTERED and handled == []
    letter = _dead_letter(publisher)
    assert letter.code is ErrorCode.PRODUCER_NOT_ALLOWED
    assert (letter.source.topic, letter.source.offset) == (topic, 5)
    expected = "certrail.commands.<connector>" if cls.CHANNEL == "commands" else TOPICS.topic_of(cls)
    assert letter.reason == f"{cls.TYPE} may only come from {expected}, it arrived on {topic}"
    assert observer.seen == [(cls.TYPE, Outcome.DEAD_LETTERED, ErrorCode.PRODUCER_NOT_ALLOWED)]


async def test_a_misrouted_type_without_a_handler_is_dead_lettered_too() -> None:
    dispatcher, publisher, _ = _dispatcher()
    forged = _record(_encoded(CertificateIssued), topic=TOPICS.deployer_events)
    assert await dispatcher.dispatch(forged) is Outcome.DEAD_LETTERED
    assert _dead_letter(publisher).reason == (
        f"{CertificateIssued.TYPE} may only come from certrail.events.issuer, it arrived on certrail.events.deployer")


async def test_any_connectors_command_topic_carries_commands() -> None:
    from services.common.contracts.commands import IssueCertificate

    dispatcher, publisher, _ = _dispatcher()
    for connector in ("a", "emca-eu-2"):
        record = _record(_encoded(IssueCertificate), topic=TOPICS.commands(connector))
        assert await dispatcher.dispatch(record) is Outcome.IGNORED
    assert publisher.sent == []

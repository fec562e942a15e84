"""The auditor's own parsing never stops it: hostile records are stored with their decode error,
and a record that cannot be prepared at all is stored raw with HANDLER_FAILED (issue 17)."""

from __future__ import annotations

import pytest

from services.auditor.chain import content_hash
from services.auditor.records import INVALID_TYPE, RawRecord, content_of, envelope_attributes, prepare_batch, prepare_guarded
from services.common.audit_trail import _summary
from services.common.contracts.catalog import CATALOG
from services.common.contracts.envelope import encode, make_event
from services.common.contracts.errors import ErrorCode
from services.common.contracts.events import CertificateIssued
from tests.unit.examples import CERT_ID, NOW, examples, private_key_pem


def _raw(value: bytes | None, offset: int = 0, key: bytes | None = b"k") -> RawRecord:
    return RawRecord("certrail.requests", 0, offset, 1_700_000_000_000, 0, key, value, (("x-h", b"v"),))


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.JSON_LIMIT_EXCEEDED),
        (b'{"n":' + b"7" * 50_000 + b"}", ErrorCode.JSON_LIMIT_EXCEEDED),
        (b'{"type":"io.certrail.certificate.issued.v1","n":1e999999}', ErrorCode.JSON_LIMIT_EXCEEDED),
        (b'{"id":"\\ud800"}', ErrorCode.UNDECODABLE),
    ],
    ids=["deep", "huge-number", "overflow", "lone-surrogate"],
)
def test_hostile_records_are_prepared_with_their_code(value: bytes, code: ErrorCode) -> None:
    [entry] = prepare_batch([_raw(value)])
    assert entry.decode_error == code and entry.value == value and entry.type_label == INVALID_TYPE
    assert entry.content_hash == content_hash(content_of(entry))
    assert envelope_attributes(value).event_id in (None, "?")  # bounded, never raising (a lone surrogate cleaned)
    assert _summary(value, None) == ""  # the trail's summary of such bytes is empty, not an exception


class ExplodingCatalog:
    """A catalog that fails (a stand-in for any bug in preparing a record)."""

    def get(self, message_type: str) -> None:
        raise RuntimeError(f"catalog broken while looking up {message_type}")


def test_a_record_that_cannot_be_prepared_is_stored_raw_with_handler_failed_and_keys_redacted() -> None:
    value = encode(make_event(examples()[CertificateIssued], id="e", source="/t", time=NOW, subject=CERT_ID))
    entry = prepare_guarded(_raw(value, key=private_key_pem().encode()), ExplodingCatalog())  # type: ignore[arg-type]
    assert entry.decode_error == ErrorCode.HANDLER_FAILED
    assert entry.decode_reason == "preparing the record failed: RuntimeError"
    assert entry.value == value and entry.key is not None and b"BEGIN" not in entry.key and entry.private_keys_removed == 1
    assert entry.content_hash == content_hash(content_of(entry))
    assert entry.inventory is None and entry.type_label == INVALID_TYPE


def test_valid_records_are_unchanged_by_the_guard() -> None:
    value = encode(make_event(examples()[CertificateIssued], id="e", source="/t", time=NOW, subject=CERT_ID))
    entry = prepare_guarded(_raw(value), CATALOG)
    assert entry.decode_error is None and entry.type_label == CertificateIssued.TYPE and entry.inventory is not None

"""Deterministic ids (DESIGN.md "Identity"), as tables of named cases."""

from __future__ import annotations

import uuid

import pytest

from services.common.contracts.identity import (
    issuance_id,
    message_id,
    normalise_serial,
    renewal_due_id,
    root_message_id,
)


def test_message_id_is_a_uuid5_stable_across_calls() -> None:
    first = message_id("cmd-1", "io.certrail.certificate.issued.v1")
    assert first == message_id("cmd-1", "io.certrail.certificate.issued.v1")
    assert uuid.UUID(first).version == 5


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("cmd-1", "io.certrail.certificate.issued.v1"), ("cmd-2", "io.certrail.certificate.issued.v1")),
        (("cmd-1", "io.certrail.certificate.issued.v1"), ("cmd-1", "io.certrail.issuance.failed.v1")),
        (("cmd-1", "t", "target-a"), ("cmd-1", "t", "target-b")),
        (("cmd-1", "t"), ("cmd-1", "t", "x")),
        (("a\x1fb", "c"), ("a", "b\x1fc")),
    ],
    ids=["other-cause", "other-type", "other-discriminator", "discriminator-vs-none", "no-ambiguous-join"],
)
def test_message_ids_differ(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert message_id(*a) != message_id(*b)


def test_issuance_id_per_certificate_and_revision() -> None:
    assert issuance_id("c1", 1) == issuance_id("c1", 1)
    assert issuance_id("c1", 1) != issuance_id("c1", 2)
    assert issuance_id("c1", 1) != issuance_id("c2", 1)
    with pytest.raises(ValueError):
        issuance_id("c1", 0)


def test_renewal_due_id_ignores_serial_spelling() -> None:
    assert renewal_due_id("c1", "0A:BC") == renewal_due_id("c1", "abc")
    assert renewal_due_id("c1", "abc") != renewal_due_id("c1", "abd")
    assert renewal_due_id("c1", "abc") != renewal_due_id("c2", "abc")


def test_root_message_id() -> None:
    assert root_message_id("http", "req-1", "t") == root_message_id("http", "req-1", "t")
    assert root_message_id("http", "req-1", "t") != root_message_id("kafka", "req-1", "t")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("5F:2A:9C", "5f2a9c"),
        ("0x00ff", "ff"),
        ("000", "0"),
        (255, "ff"),
        ("  AB cd ", "abcd"),
    ],
    ids=["colons-upper", "0x-leading-zeros", "all-zero", "int", "spaces"],
)
def test_normalise_serial(given: str | int, expected: str) -> None:
    assert normalise_serial(given) == expected


@pytest.mark.parametrize("bad", ["", "xyz", "12g4", -1], ids=["empty", "letters", "non-hex", "negative"])
def test_normalise_serial_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        normalise_serial(bad)

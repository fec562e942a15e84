"""The auditor's inventory shows what the issuer found on the CA's CRL after a revocation (RevocationConfirmed /
RevocationUnconfirmed), whatever the order the producers' topics arrive in (SQLite)."""

from __future__ import annotations

from sqlalchemy import Engine

from services.common.contracts.revocation import RevocationConfirmed, RevocationUnconfirmed
from tests.unit.test_inventory_event_order import (
    EX,
    PRODUCERS,
    RENEWED,
    SERIAL,
    at,
    certificate_row,
    interleavings,
    inventory_rows,
    issuer,
    lifecycle,
    store,
)


def _confirmed(serial: str = RENEWED) -> RevocationConfirmed:
    return EX[RevocationConfirmed].model_copy(update={"serial": serial, "confirmed_at": at(125), "crl_number": "77"})


def _unconfirmed(serial: str = RENEWED) -> RevocationUnconfirmed:
    return EX[RevocationUnconfirmed].model_copy(update={"serial": serial, "given_up_at": at(700)})


def test_a_confirmed_revocation_shows_on_the_serial_and_the_certificate_in_any_order(engine: Engine) -> None:
    events = [*lifecycle(), issuer("k-1", _confirmed(), 125)]
    ids = [e.id for e in events]
    by_producer = [[e.id] for t in reversed(PRODUCERS) for e in events if e.topic == t]  # each topic in its own order
    orders = [[ids], by_producer, *interleavings(events, seeds=range(4))]
    for n, batches in enumerate(orders):
        store(engine, events, batches, f"c{n}")
    expected = inventory_rows(engine, "c0")
    row = certificate_row(engine, "c0")
    assert (row["status"], row["serial"], row["revocation_check"], row["revocation_checked_at"]) == (
        "revoked", RENEWED, "confirmed", at(125))
    serials = {s["serial"]: s for s in expected["certificate_serials"]}
    assert (serials[RENEWED]["status"], serials[RENEWED]["revocation_check"], serials[RENEWED]["revocation_crl_number"]) == (
        "revoked", "confirmed", "77")
    assert serials[SERIAL]["revocation_check"] is None  # the superseded serial was never revoked
    for n in range(1, len(orders)):
        assert inventory_rows(engine, f"c{n}") == expected, n


def test_an_unconfirmed_revocation_shows_and_a_confirmation_of_the_serial_prevails(engine: Engine) -> None:
    events = [*lifecycle(), issuer("u-1", _unconfirmed(), 700)]
    store(engine, events, [[e.id for e in events]], "u")
    assert certificate_row(engine, "u")["revocation_check"] == "unconfirmed"

    # two revocation commands of one serial: one check confirmed, the other given up, in either order
    later = [*events, issuer("k-2", _confirmed(), 800)]
    store(engine, later, [[e.id for e in later]], "b")
    earlier = [*lifecycle(), issuer("k-3", _confirmed(), 650), issuer("u-2", _unconfirmed(), 700)]
    store(engine, earlier, [[e.id] for e in earlier], "e")
    assert certificate_row(engine, "b")["revocation_check"] == certificate_row(engine, "e")["revocation_check"] == "confirmed"

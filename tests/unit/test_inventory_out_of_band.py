"""The auditor's inventory marks a serial the issuer found revoked at the CA outside certrail (RevokedOutOfBand)
revoked, out of band, on the serial and (when it is the current one) the certificate, in any arrival order (SQLite)."""

from __future__ import annotations

from sqlalchemy import Engine

from services.common.contracts.revocation import RevokedOutOfBand
from tests.unit.test_inventory_event_order import (
    EX,
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


def _out_of_band(serial: str = RENEWED) -> RevokedOutOfBand:
    return EX[RevokedOutOfBand].model_copy(update={"serial": serial, "revoked_at_ca": at(100), "detected_at": at(130),
                                                   "reason": "keyCompromise", "crl_number": "9"})


def test_a_serial_revoked_out_of_band_shows_on_the_serial_and_the_certificate_in_any_order(engine: Engine) -> None:
    events = [*lifecycle()[:-1], issuer("o-1", _out_of_band(), 130)]  # no revocation of certrail's
    ids = [e.id for e in events]
    orders = [[ids], *interleavings(events, seeds=range(4))]
    for n, batches in enumerate(orders):
        store(engine, events, batches, f"o{n}")
    row = certificate_row(engine, "o0")
    assert (row["status"], row["serial"], row["revoked_at"], row["revocation_reason"], row["revocation_check"],
            row["revocation_checked_at"]) == ("revoked", RENEWED, at(100), "keyCompromise", "out_of_band", at(130))
    expected = inventory_rows(engine, "o0")
    serials = {s["serial"]: s for s in expected["certificate_serials"]}
    assert (serials[RENEWED]["status"], serials[RENEWED]["revocation_check"], serials[RENEWED]["revocation_crl_number"]) == (
        "revoked", "out_of_band", "9")
    assert serials[SERIAL]["status"] == "superseded" and serials[SERIAL]["revocation_check"] is None
    for n in range(1, len(orders)):
        assert inventory_rows(engine, f"o{n}") == expected, n


def test_a_superseded_serial_revoked_out_of_band_leaves_the_certificate_active(engine: Engine) -> None:
    events = [*lifecycle()[:-1], issuer("o-2", _out_of_band(SERIAL), 130)]
    store(engine, events, [[e.id for e in events]], "s")
    row = certificate_row(engine, "s")
    assert (row["status"], row["serial"], row["revocation_check"]) == ("active", RENEWED, None)
    serials = {s["serial"]: s for s in inventory_rows(engine, "s")["certificate_serials"]}
    assert (serials[SERIAL]["status"], serials[SERIAL]["revocation_check"]) == ("revoked", "out_of_band")

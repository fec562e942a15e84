"""bench/floor.py: the per-certificate sum of the measured components, the idle subtraction, the arguments, and its
non-Kafka measurements at a tiny size (they run, and they do the work they claim to time)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from bench.floor import (
    CERTIFICATE_DEPLOYED,
    CERTIFICATE_ISSUED,
    ISSUE_CERTIFICATE,
    ISSUE_REQUESTED,
    LIFECYCLE,
    REQUEST_ACCEPTED,
    Counts,
    Figures,
    Phase,
    _broker_us,
    codec_figures,
    crypto_figures,
    crypto_material,
    floor_per_certificate,
    net_of_idle,
    parse_args,
    positive_multiple_of_5,
    report,
    sqlalchemy_rows_us,
    sqlite_rows_us,
    thread_hop_us,
)


def _figures(**overrides: object) -> Figures:
    values: dict[str, object] = dict(
        produce_us=100.0,
        consume_us=50.0,
        decode_us={ISSUE_REQUESTED: 30.0, REQUEST_ACCEPTED: 10.0, ISSUE_CERTIFICATE: 20.0, CERTIFICATE_ISSUED: 40.0,
                   CERTIFICATE_DEPLOYED: 5.0},
        encode_us={REQUEST_ACCEPTED: 4.0, ISSUE_CERTIFICATE: 6.0, CERTIFICATE_ISSUED: 8.0, CERTIFICATE_DEPLOYED: 2.0},
        row_us=10.0,
        csr_check_us=200.0,
        certificate_check_us=150.0,
        broker_produce_us=20.0,
        broker_consume_us=5.0,
    )
    values.update(overrides)
    return Figures(**values)  # type: ignore[arg-type]


def test_default_counts_are_issue_18s_lifecycle() -> None:
    counts = Counts()
    # gateway: the request and CertificateIssued; issuer: the command; deployer: RequestAccepted and
    # CertificateIssued; auditor: all five -> 2 + 1 + 2 + 5
    assert counts.consumed == 10
    assert counts.decodes() == {ISSUE_REQUESTED: 2, REQUEST_ACCEPTED: 2, ISSUE_CERTIFICATE: 2, CERTIFICATE_ISSUED: 3,
                                CERTIFICATE_DEPLOYED: 1}
    assert sum(counts.decodes().values()) == counts.consumed
    assert len(counts.produced) == 4 and ISSUE_REQUESTED not in counts.produced  # the client produces the request
    assert counts.row_writes == 17 + 6
    assert (counts.broker_produced, counts.broker_consumed) == (5, 10)


def test_floor_per_certificate_sums_each_component_times_its_count() -> None:
    floor = floor_per_certificate(_figures(), Counts())
    consume = 10 * 50.0
    produce = 4 * 100.0
    decodes = 2 * 30.0 + 2 * 10.0 + 2 * 20.0 + 3 * 40.0 + 1 * 5.0  # 245
    encodes = 4.0 + 6.0 + 8.0 + 2.0
    rows = 23 * 10.0
    crypto = 1 * 200.0 + 2 * 150.0
    expected_us = consume + produce + decodes + encodes + rows + crypto  # 1,895 µs
    assert floor.services_ms == pytest.approx(expected_us / 1000)
    assert floor.services_ms == pytest.approx(1.895)
    assert floor.broker_ms == pytest.approx((5 * 20.0 + 10 * 5.0) / 1000)
    by_item = {line.item: line for line in floor.services}
    assert by_item[f"decode {CERTIFICATE_ISSUED}"].count == 3
    assert by_item[f"decode {CERTIFICATE_ISSUED}"].ms_per_certificate == pytest.approx(0.120)
    assert by_item["row write (insert figure)"].ms_per_certificate == pytest.approx(0.230)
    # every line is listed once: the total is the sum of the lines
    assert sum(line.ms_per_certificate for line in floor.services) == pytest.approx(floor.services_ms)


def test_floor_follows_the_counts_given() -> None:
    counts = Counts(consumed_by={"auditor": LIFECYCLE}, produced=(REQUEST_ACCEPTED,), row_inserts=1, row_updates=0,
                    csr_checks=0, certificate_checks=1, broker_produced=2, broker_consumed=3)
    floor = floor_per_certificate(_figures(), counts)
    expected_us = 5 * 50.0 + 1 * 100.0 + (30 + 10 + 20 + 40 + 5) + 4.0 + 1 * 10.0 + 0 * 200.0 + 1 * 150.0
    assert floor.services_ms == pytest.approx(expected_us / 1000)
    assert floor.broker_ms == pytest.approx((2 * 20.0 + 3 * 5.0) / 1000)


def test_no_broker_floor_without_broker_figures() -> None:
    floor = floor_per_certificate(_figures(broker_produce_us=None, broker_consume_us=None), Counts())
    assert floor.broker == [] and floor.broker_ms is None
    assert floor.services_ms == pytest.approx(1.895)


def test_idle_rate_is_subtracted_over_the_phase() -> None:
    assert net_of_idle(2.0, 4.0, 0.1) == pytest.approx(1.6)
    assert net_of_idle(2.0, 4.0, 0.0) == 2.0
    # 1.5 s of broker CPU over 10 s at 0.05 idle cores: 1.0 s for 1,000 records = 1,000 µs each
    assert _broker_us(Phase(client_s=0.3, wall_s=10.0, broker_s=1.5), 0.05, 1000) == pytest.approx(1000.0)
    assert _broker_us(Phase(client_s=0.3, wall_s=10.0, broker_s=None), 0.05, 1000) is None


def test_arguments() -> None:
    args = parse_args([])
    assert (args.records, args.batch, args.rows_per_tx, args.idle_seconds, args.warmup) == (20_000, 500, 100, 3.0, 5_000)
    assert args.json is None and args.broker_pid is None
    args = parse_args(["--records", "500", "--json", "/tmp/floor.json", "--batch", "250"])
    assert (args.records, args.batch, args.json) == (500, 250, Path("/tmp/floor.json"))
    for bad in ("0", "12", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_multiple_of_5(bad)
    for bad_args in (["--records", "12"], ["--warmup", "-1"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad_args)


def test_codec_figures_cover_every_type_decoded_and_the_produced_ones_encoded() -> None:
    from bench.auditor_ingest import lifecycle_records
    from services.common.contracts.envelope import declared_type
    from services.common.contracts.topics import Topics

    values: dict[str, list[bytes]] = {t: [] for t in LIFECYCLE}
    for _, _, value in lifecycle_records(Topics("floor-test.certrail"), 2):
        message_type = declared_type(value)
        assert message_type is not None
        values[message_type].append(value)
    decode_us, encode_us = codec_figures(values, Counts().produced)
    assert set(decode_us) == set(LIFECYCLE)
    assert set(encode_us) == set(Counts().produced)
    assert all(us > 0 for us in [*decode_us.values(), *encode_us.values()])


@pytest.mark.parametrize("insert", [sqlite_rows_us, sqlalchemy_rows_us])
def test_row_inserts_write_every_row(tmp_path: Path, insert: object) -> None:
    rows = [(i, f"key-{i}", bytes(1024)) for i in range(25)]
    path = tmp_path / "rows.db"
    assert insert(path, rows, 10) > 0  # type: ignore[operator]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*), sum(length(payload)) FROM rows").fetchone() == (25, 25 * 1024)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_crypto_checks_verify_what_was_made() -> None:
    ca_pub, csrs, certs = crypto_material(3)
    assert len(csrs) == len(certs) == 3
    csr_us, cert_us = crypto_figures(ca_pub, csrs, certs)
    assert csr_us > 0 and cert_us > 0
    other_ca, _, _ = crypto_material(1)
    with pytest.raises(InvalidSignature):  # the checks do check: another CA's key refuses the certificates
        crypto_figures(other_ca, csrs, certs)


def test_report_states_the_counts_and_the_totals_beside_the_budgets() -> None:
    figures = _figures()
    counts = Counts()
    floor = floor_per_certificate(figures, counts)
    result = {
        "machine": {"date": "2026-12-07 18:00 UTC", "nproc": 2, "cpu": "Test CPU", "python": "3.11.9",
                    "command": ".venv/bin/python -m bench.floor --records 10"},
        "records": 10, "avg_record_bytes": 1024, "partitions": 6, "batch": 500, "warmup_records": 10,
        "broker_idle_cores": 0.01,
        "components": {
            "produce": {"units": 10, "client_us": figures.produce_us, "broker_us": figures.broker_produce_us},
            "consume": {"units": 10, "client_us": figures.consume_us, "broker_us": figures.broker_consume_us},
            "per_type": 2, "decode_us": figures.decode_us, "encode_us": figures.encode_us, "rows": 10,
            "rows_per_tx": 100, "sqlite_row_us": figures.row_us, "sqlalchemy_row_us": 25.0, "crypto_units": 10,
            "csr_check_us": figures.csr_check_us, "certificate_check_us": figures.certificate_check_us,
            "hops": 10, "thread_hop_us": 130.0,
        },
    }
    text = report(result, floor, counts, (3.0, 0.5))
    assert "**1.895** (budget 3.0 ms)" in text  # the thread hop (130 µs) is reported, not summed
    assert "| thread hop (asyncio.to_thread of a no-op; not in the sum) | hop | 10 | 130.0 | |" in text
    assert "**0.150** (budget 0.5 ms)" in text
    assert "consumed 10 (gateway: " in text and "row writes 23 (17 inserts + 6 updates" in text
    assert "| decode " + CERTIFICATE_ISSUED + " | 3 | 40.0 | 0.120 |" in text


def test_a_thread_hop_costs_some_cpu_and_returns() -> None:
    assert asyncio.run(thread_hop_us(20)) > 0

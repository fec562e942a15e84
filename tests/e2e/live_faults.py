"""Faults tests/e2e/test_prometheus_live.py causes besides the simulator's own (its admin API): a simulator
configuration with a short-lived certificate profile, the renewal scheduler's lease held by a gateway
Prometheus does not scrape, a scrape job left without targets, and a requester's CSR."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from emca_sim.config import SimConfig
from services.common.db import make_engine, write_session
from services.common.db_schema import GatewayLease
from services.common.settings import DatabaseSettings

#: the scheduler's lease (services/gateway/scheduler/settings.py, ``lease_name``)
SCHEDULER_LEASE = "renewal-scheduler"


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, booleans and lists of them are written alike in TOML


def profiles_toml(config: SimConfig) -> str:
    """``config``'s certificate profiles as the simulator's TOML configuration (docs/emca-simulator.md): a file
    that sets ``profiles`` replaces the built-in ones, so it lists every one."""
    out = []
    for profile in config.profiles:
        out.append("[[profiles]]")
        for key, value in profile.model_dump(mode="json", exclude_defaults=True).items():
            if value != {}:
                out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def hold_scheduler_lease(db_file: Path, holder: str | None, *, for_s: float = 3600) -> None:
    """The renewal scheduler's lease taken over by ``holder`` for ``for_s`` seconds (as a gateway that uses the same
    database and that Prometheus does not scrape would hold it), or (``None``) released by it, expired at once."""
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{db_file}"))
    try:
        now = datetime.now(UTC)
        values = {"holder": holder, "expires_at": now + timedelta(seconds=for_s)} if holder else {"expires_at": now}
        with write_session(engine) as session:
            changed = session.execute(update(GatewayLease).where(GatewayLease.name == SCHEDULER_LEASE).values(**values)
                                      .returning(GatewayLease.name)).scalars().all()
            assert changed == [SCHEDULER_LEASE], f"no {SCHEDULER_LEASE} lease row to change"
    finally:
        engine.dispose()


def without_targets(config_text: str, job: str) -> str:
    """A Prometheus configuration (JSON, as services/common/prometheus_local.py writes it) whose ``job`` has no
    target: what service discovery gives when it finds no replica of the service."""
    config = json.loads(config_text)
    jobs = [scrape for scrape in config["scrape_configs"] if scrape["job_name"] == job]
    assert len(jobs) == 1, f"no scrape job {job!r}"
    jobs[0]["static_configs"] = []
    return json.dumps(config, indent=2) + "\n"


def csr_pem(name: str) -> str:
    """A requester's CSR for ``name`` (a new P-256 key, thrown away: only the certificate's life matters here)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())

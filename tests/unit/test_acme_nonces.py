"""Replay-Nonces (services/gateway/acme/nonces.py): one contract for the table-backed store and the in-memory
fake; the table's own promises: two gateway instances accept each other's nonces (each once), expired ones
are refused and pruned."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from services.common.db import make_engine, read_session
from services.common.db_schema import GatewayAcmeNonce
from services.common.migrate import upgrade
from services.common.settings import DatabaseSettings
from services.gateway.acme.nonces import MemoryNonces, Nonces, SqlNonces
from tests.unit.acme_support import Clock


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'nonces.db'}")
    upgrade(db)
    engine = make_engine(db)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sql", "memory"])
def nonces(request: pytest.FixtureRequest, engine: Engine) -> Nonces:
    if request.param == "memory":
        return MemoryNonces()
    return SqlNonces(engine, Clock(), lifetime=timedelta(minutes=5))


class TestNonceContract:
    def test_a_nonce_is_base64url_and_usable_once(self, nonces: Nonces) -> None:
        nonce = nonces.issue()
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", nonce)
        assert nonces.use(nonce) is True
        assert nonces.use(nonce) is False

    def test_nonces_are_distinct_and_foreign_ones_unknown(self, nonces: Nonces) -> None:
        issued = {nonces.issue() for _ in range(50)}
        assert len(issued) == 50
        assert nonces.use("AAAAAAAAAAAAAAAAAAAAAA") is False
        assert nonces.use("") is False


def test_two_instances_accept_each_others_nonces_once(engine: Engine) -> None:
    clock = Clock()
    first, second = (SqlNonces(engine, clock, lifetime=timedelta(minutes=5)) for _ in range(2))
    nonce = first.issue()
    assert second.use(nonce) is True
    assert first.use(nonce) is False


def test_racing_uses_of_one_nonce_let_exactly_one_through(engine: Engine) -> None:
    clock = Clock()
    nonces = [SqlNonces(engine, clock, lifetime=timedelta(minutes=5)) for _ in range(4)]
    nonce = nonces[0].issue()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: n.use(nonce), nonces))
    assert sorted(results) == [False, False, False, True]


def test_expired_nonces_are_refused_and_pruned(engine: Engine) -> None:
    clock = Clock()
    nonces = SqlNonces(engine, clock, lifetime=timedelta(seconds=60), prune_every=timedelta(seconds=30))
    old = [nonces.issue() for _ in range(3)]
    clock.advance(61)
    assert nonces.use(old[0]) is False
    fresh = nonces.issue()  # the prune is due: the expired rows go
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(GatewayAcmeNonce)) == 1
    assert nonces.use(fresh) is True

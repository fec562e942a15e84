"""Fixtures shared by the integration modules (a module's own fixture of the same name overrides one here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from services.common.db import make_engine
from services.common.settings import DatabaseSettings


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    """An engine on the test's database (SQLite file or PostgreSQL, by ``db_settings``), not migrated here."""
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()

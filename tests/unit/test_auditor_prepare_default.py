"""The auditor prepares batches in a worker process by default only where it gets a core of its own."""

from __future__ import annotations

import pytest

from services.auditor import settings as auditor_settings
from services.auditor.settings import PREPARE_WORKER_MIN_CPUS, AuditorSettings


@pytest.mark.parametrize(("cpus", "expected"), [(None, 0), (1, 0), (2, 0), (3, 0), (4, 1), (64, 1)])
def test_the_default_prepare_worker_follows_the_cpu_count(monkeypatch: pytest.MonkeyPatch, cpus: int | None,
                                                          expected: int) -> None:
    monkeypatch.delenv("CERTRAIL_AUDITOR_PREPARE_PROCESSES", raising=False)
    monkeypatch.setattr(auditor_settings.os, "cpu_count", lambda: cpus)
    assert PREPARE_WORKER_MIN_CPUS == 4
    assert AuditorSettings().effective_prepare_processes() == expected


def test_an_explicit_setting_wins_over_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auditor_settings.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("CERTRAIL_AUDITOR_PREPARE_PROCESSES", "1")
    assert AuditorSettings().effective_prepare_processes() == 1
    monkeypatch.setattr(auditor_settings.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("CERTRAIL_AUDITOR_PREPARE_PROCESSES", "0")
    assert AuditorSettings().effective_prepare_processes() == 0

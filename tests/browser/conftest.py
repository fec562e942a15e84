"""Browser tests: Playwright for Python driving Debian's Chromium (scripts/browser_deps.sh installs
it). Playwright's own browser downloads are never used: the browser is launched by its executable
path. A missing browser or a missing ``playwright`` package fails the test, it never skips."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def chromium_path() -> str:
    path = os.environ.get("CERTRAIL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        where = " (CI is set)" if os.environ.get("CI") else ""
        pytest.fail(f"no chromium on PATH{where}: run `sudo bash scripts/browser_deps.sh` (browser tests never skip)")
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install -e '.[test]'")
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    print(f"\nconsole screenshots: {folder}")
    return folder

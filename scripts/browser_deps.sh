#!/usr/bin/env bash
# Install what the console's browser tests (tests/browser/) drive: Debian's Chromium.
#
#   sudo bash scripts/browser_deps.sh
#
# Idempotent: when a chromium binary is on PATH it does nothing (and needs no root).
# Playwright's own browser downloads are never used: the tests launch this Chromium by its
# executable path. The Python package `playwright` is a test extra in pyproject.toml
# (`pip install -e '.[test]'`, as `make test` does); this script only checks that it imports.

set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'browser_deps.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_chromium() { command -v chromium >/dev/null 2>&1; }

if have_chromium; then
    log "chromium is installed: $(chromium --version 2>/dev/null || echo unknown version)"
else
    [ "$(id -u)" -eq 0 ] || die "chromium is missing and this is not root: run it with sudo"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install Debian's chromium package by hand"
    export DEBIAN_FRONTEND=noninteractive
    log "installing chromium"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends chromium >&2
    have_chromium || die "chromium is still missing after the install"
    log "installed: $(chromium --version 2>/dev/null || echo unknown version)"
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import playwright.sync_api' 2>/dev/null; then
    die "the playwright Python package is missing from .venv: run .venv/bin/pip install -e '.[test]'"
fi

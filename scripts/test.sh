#!/usr/bin/env bash
# The whole test suite, with every service it needs: PostgreSQL, nginx, sshd, chromium and promtool (installed
# from Debian's packages when missing) and a real Apache Kafka broker (fetched with
# Maven and started by the test run itself, unless KAFKA_BOOTSTRAP_SERVERS is set), and lego's ACME client (built
# from the Go module with the machine's Go toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CERTRAIL_TEST_POSTGRES_URL:-}" ]; then
  url=$(bash scripts/postgres.sh | tail -n 1)
  export CERTRAIL_TEST_POSTGRES_URL="$url"
fi
echo "PostgreSQL for tests: ${CERTRAIL_TEST_POSTGRES_URL%%:*}://…@${CERTRAIL_TEST_POSTGRES_URL##*@}"

# nginx and sshd for the deployer's integration tests (Debian's packages; started by the tests)
bash scripts/deployer_deps.sh
# Debian's chromium for the console's browser tests (Playwright drives it; no browser download)
bash scripts/browser_deps.sh
# promtool (Debian's prometheus package): the alert rules, their unit tests, the scrape configs
bash scripts/promtool.sh
# lego's ACME client (the Go module, built with the Go toolchain into .cache/lego) for the ACME door's e2e test
bash scripts/lego.sh

# Fetch the broker once up front so that a fetch failure is reported as such.
.venv/bin/certrail kafka fetch

.venv/bin/ruff check .
# the type checker: the contracts and the shared runtime, strict (pyproject.toml [tool.mypy]; cache in .cache/mypy)
.venv/bin/mypy
.venv/bin/certrail schemas check

# the slowest tests are listed at the end: the suite's budget is about 30 minutes on the 2-CPU CI machine
# every test's duration stays in var/test-results.xml (JUnit XML) for finding where the suite's time goes
mkdir -p var
exec .venv/bin/python -m pytest --durations=40 --junitxml=var/test-results.xml "$@"

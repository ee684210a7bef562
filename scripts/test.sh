#!/usr/bin/env bash
# The test command: set up what the tests need, lint, then run the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-fhir-server
# The console's browser tests drive Debian's Chromium through its own chromedriver (no browser download).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium and chromium-driver (apt)"
    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)) >/dev/null
  else
    echo "the console's browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> pytest"
# worksteal: a process that runs out of tests takes some of the other's, so both end together
exec .venv/bin/pytest -n "${PLANBRIDGE_TEST_PROCESSES:-2}" --dist worksteal "$@"

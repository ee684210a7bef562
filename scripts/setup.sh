#!/usr/bin/env bash
# Shared set-up for the run and test commands: a virtual environment with planbridge installed,
# and the local FHIR server's npm packages. Re-running is cheap: each step is skipped when current.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v python3 >/dev/null || { echo "planbridge needs python3 (>= 3.11)" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "planbridge needs Python >= 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.planbridge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing planbridge and its test tools into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi

if [ -z "${FHIR_BASE_URL:-}" ] || [ "${1:-}" = "--with-fhir-server" ]; then
  command -v npm >/dev/null || { echo "the local FHIR server needs node and npm" >&2; exit 1; }
  # The stamp is written only after npm ci succeeds (npm ci empties node_modules first), so an
  # interrupted install is redone rather than mistaken for a finished one.
  stamp=fhir-server/node_modules/.planbridge-installed
  if [ ! -f "$stamp" ] || [ fhir-server/package-lock.json -nt "$stamp" ]; then
    echo "==> installing the local FHIR server's packages (npm ci)"
    (cd fhir-server && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
  fi
fi

if [ "${1:-}" = "--with-fhir-server" ]; then  # the test command: axe-core for the console's browser tests
  stamp=tests/e2e/axe/node_modules/.planbridge-installed
  if [ ! -f "$stamp" ] || [ tests/e2e/axe/package-lock.json -nt "$stamp" ]; then
    echo "==> installing axe-core for the console's accessibility checks (npm ci)"
    (cd tests/e2e/axe && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
  fi
fi

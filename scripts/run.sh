#!/usr/bin/env bash
# The run command: set up on a fresh machine, migrate, start a local FHIR server unless
# FHIR_BASE_URL is set, and serve the API and its outbox worker on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/planbridge dev --port "${PLANBRIDGE_PORT:-8000}"

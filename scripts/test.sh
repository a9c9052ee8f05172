#!/usr/bin/env bash
# Set up (idempotent) and run the test suite, slow end-to-end tests included.
#   bash scripts/test.sh [pytest args]     e.g. -m "not slow" for the quick subset
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT_DIR/scripts/bootstrap.sh"
cd "$ROOT_DIR"
exec "$ROOT_DIR/.venv/bin/python" -m pytest "$@"

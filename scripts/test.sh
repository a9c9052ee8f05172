#!/usr/bin/env bash
# Set up (idempotent) and run the test suite, slow end-to-end tests included.
#   bash scripts/test.sh [pytest args]     e.g. -m "not slow" for the quick subset
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT_DIR/scripts/bootstrap.sh"
cd "$ROOT_DIR"
# The layering contract (.importlinter): cli -> pipeline -> stages -> library -> infrastructure, no cycles.
"$ROOT_DIR/.venv/bin/lint-imports" --no-cache > "$ROOT_DIR/.venv/lint-imports.log" 2>&1 \
  || { cat "$ROOT_DIR/.venv/lint-imports.log"; echo "[test] import contract broken (see above)" >&2; exit 1; }
echo "[test] import contract kept: $(grep -c ' KEPT' "$ROOT_DIR/.venv/lint-imports.log") contracts (lint-imports)" >&2
# Hadoop's HDFS test-cluster jars for tests/remote (once; cached like the Horovod wheel).
bash "$ROOT_DIR/scripts/hdfs_jars.sh" > /dev/null
# Horovod (built on first need, ~7 min once per machine): the Horovod tests need it.
bash "$ROOT_DIR/scripts/horovod.sh"
exec "$ROOT_DIR/.venv/bin/python" -m pytest "$@"

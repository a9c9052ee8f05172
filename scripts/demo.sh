#!/usr/bin/env bash
# Set up (idempotent) and run the main pipeline on the built-in synthetic data.
#   bash scripts/demo.sh [--root DIR] [extra `courier pipeline` flags]
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT_DIR/scripts/bootstrap.sh"
args=("$@")
if [[ " ${args[*]-} " != *" --root "* ]]; then args=(--root "$ROOT_DIR/data/demo" "${args[@]}"); fi
# The demo world's settings (a command without --config runs on the schema's defaults).
if [[ " ${args[*]-} " != *" --config "* ]]; then args=(--config "$ROOT_DIR/conf/demo.yaml" "${args[@]}"); fi
exec "$ROOT_DIR/.venv/bin/courier" pipeline "${args[@]}"

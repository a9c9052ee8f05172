#!/usr/bin/env bash
# Feast's own virtual environment, .venv-feast, from requirements/feast.txt
# (Feast needs numpy>=2 and pyarrow>=16.1; the platform venv pins numpy 1.x
# and pyarrow 14: see the file's header). Made on first need and remade when
# requirements/feast.txt changes; a no-op otherwise. Prints the venv's python.
# Used by tests/test_feast.py and by anyone who wants to try the repository
# `courier feast` writes:  "$(bash scripts/feast_env.sh)" -m feast ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COURIER_FEAST_VENV:-$ROOT/.venv-feast}"
REQ="$ROOT/requirements/feast.txt"
log() { echo "[feast-env] $*" >&2; }
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.courier-requirements" 2>/dev/null)" = "$want" ]; then
  echo "$VENV/bin/python"; exit 0
fi
# The platform venv's interpreter (same Python) when there is one; else python3.
base="$ROOT/.venv/bin/python"; [ -x "$base" ] || base="$(command -v python3)"
base="$("$base" -c 'import sys; print(sys._base_executable)')"
log "creating $VENV (Feast 0.67.0 + Spark offline store + Redis; about 2 minutes once)"
rm -rf "$VENV"
"$base" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2 \
  || { log "installing requirements/feast.txt into $VENV failed (see above)"; exit 1; }
echo "$want" > "$VENV/.courier-requirements"
log "ready: $("$VENV/bin/python" -c 'import feast; print("feast", feast.__version__)')"
echo "$VENV/bin/python"

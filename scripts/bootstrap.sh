#!/usr/bin/env bash
# Idempotent set-up of the project-local environment (.venv at the repo root).
#
# * Python deps from requirements/*.txt (pinned where environment.md says so).
# * petastorm 0.13.1 installed --no-deps: it declares setuptools<70 while torch
#   2.13 needs >=77; its real runtime deps are listed in requirements/base.txt.
# * horovod 0.28.1 built once per machine with the C++17 fix and cached as a
#   wheel under $COURIER_CACHE (default ~/.cache/courier-spark/wheels).
# * The Delta JVM package is resolved by Spark from Maven Central at first
#   session start (ivy cache in ~/.ivy2.5.2 / ~/.ivy2); nothing to do here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VENV="$ROOT/.venv"
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
WHEELS="$CACHE/wheels"
STAMP="$VENV/.courier-installed"
HASH="$(cat requirements/*.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"

log() { echo "[bootstrap] $*" >&2; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  log "environment up to date ($VENV)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel "setuptools>=77"

log "installing pinned dependencies (torch is large: 1-2 minutes on a fresh machine)"
"${PIP[@]}" install -q -r requirements/base.txt
"${PIP[@]}" install -q --no-deps petastorm==0.13.1

# --- horovod: build once, cache the wheel --------------------------------
if ! "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  mkdir -p "$WHEELS"
  whl="$(ls "$WHEELS"/horovod-0.28.1-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$whl" ]; then
    log "building horovod 0.28.1 wheel (C++17 patch; about 7 minutes on 2 cores, once per machine)"
    tmp="$(mktemp -d)"
    "${PIP[@]}" download -q --no-deps --no-binary :all: horovod==0.28.1 -d "$tmp"
    tar -xzf "$tmp"/horovod-0.28.1.tar.gz -C "$tmp"
    src="$tmp/horovod-0.28.1"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
      "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" \
      || { log "C++17 patch did not apply"; exit 1; }
    (cd "$src" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      MAKEFLAGS="-j$(nproc)" "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$WHEELS" . \
      > "$CACHE/horovod-build.log" 2>&1) \
      || { log "horovod build failed; see $CACHE/horovod-build.log"; tail -30 "$CACHE/horovod-build.log"; exit 1; }
    rm -rf "$tmp"
    whl="$(ls "$WHEELS"/horovod-0.28.1-*.whl | head -1)"
  fi
  log "installing cached $whl"
  # no [spark] extra: it pins pyarrow<11, which petastorm's pyarrow range excludes
  "${PIP[@]}" install -q --no-deps "$whl"
  "${PIP[@]}" install -q cloudpickle psutil pyyaml cffi
fi

log "installing courier-spark (editable)"
"${PIP[@]}" install -q --no-deps -e .
echo "$HASH" > "$STAMP"
log "done: $("$VENV/bin/python" -c 'import pyspark,delta,torch,petastorm,horovod,faiss,lightgbm;print("pyspark",pyspark.__version__,"torch",torch.__version__,"horovod",horovod.__version__,"faiss",faiss.__version__)')"

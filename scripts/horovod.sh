#!/usr/bin/env bash
# Horovod 0.28.1 for train.backend=horovod, built on first need (the default
# backend, TorchDistributor, needs none of it): once per machine, from the
# sdist with the C++17 fix (torch 2.x headers need C++17; ~7 minutes on 2
# cores), cached as a wheel under $COURIER_CACHE (default
# ~/.cache/courier-spark/wheels) and installed into .venv. Idempotent: a
# no-op when `import horovod.torch` already works. scripts/test.sh runs it
# (the Horovod tests need it); `courier train --set train.backend=horovod`
# without it is an error that names this script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
WHEELS="$CACHE/wheels"
log() { echo "[horovod] $*" >&2; }
[ -x "$VENV/bin/python" ] || { log "no $VENV: run scripts/bootstrap.sh first"; exit 1; }
if "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  exit 0
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
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
# no [spark] extra: it pins pyarrow<11 (the platform pins pyarrow 23.0.1, requirements/base.txt)
"${PIP[@]}" install -q --no-deps "$whl"
"${PIP[@]}" install -q cloudpickle psutil pyyaml cffi
"$VENV/bin/python" -c "import horovod.torch, horovod.spark; print('[horovod] installed', horovod.__version__)" >&2

#!/usr/bin/env bash
# Idempotent set-up of the project-local environment (.venv at the repo root).
#
# * Python deps: requirements/base.txt (the direct ones, exact pins), with every
#   transitive package held at requirements/lock.txt's pin (pip freeze of that
#   set, resolved once). Feast 0.67 is part of it (one venv).
# * petastorm 0.13.1 patched for pyarrow >= 15 and numpy 2 (third_party/petastorm,
#   built by scripts/petastorm.sh), installed --no-deps: the wheel as released
#   declares setuptools<70 while torch 2.13 needs >=77; its real runtime deps are
#   listed in requirements/base.txt.
# * horovod 0.28.1 is not installed here: scripts/horovod.sh builds it on
#   first need (train.backend=horovod, the Horovod tests; COURIER_WITH_HOROVOD=1
#   builds it here too).
# * The Delta JVM package (DELTA_PACKAGE) is resolved once here by a one-off
#   local Spark start (Ivy's report goes to $COURIER_CACHE/delta-jars.log); its
#   jars are copied to $COURIER_CACHE/jars/ and listed, one absolute path a
#   line, in .venv/courier-delta-jars.txt. courier_spark/core/spark.py then passes
#   them as spark.jars (no Ivy resolution or report at every start) and falls
#   back to spark.jars.packages when the list is missing or stale. Re-checked
#   on every run, also when the rest is up to date.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VENV="$ROOT/.venv"
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
WHEELS="$CACHE/wheels"
STAMP="$VENV/.courier-installed"
# The patch is hashed too: a changed patch means a new petastorm wheel to install.
HASH="$(cat requirements/*.txt pyproject.toml scripts/bootstrap.sh scripts/petastorm.sh \
          third_party/petastorm/*.patch | sha256sum | cut -c1-16)"

# Keep equal to SparkConfig.delta_package (spark.py ignores a list resolved for another package).
# From Delta 4.1 on, the artifact names the Spark line it is built for (_4.1_2.13).
DELTA_PACKAGE="${COURIER_DELTA_PACKAGE:-io.delta:delta-spark_4.1_2.13:4.4.0}"
JARS_DIR="$CACHE/jars"
JARS_LIST="$VENV/courier-delta-jars.txt"

log() { echo "[bootstrap] $*" >&2; }

delta_jars_ok() {  # the list exists, is for DELTA_PACKAGE, and every jar it names is there
  [ -s "$JARS_LIST" ] && [ "$(sed -n 's/^# package: //p' "$JARS_LIST")" = "$DELTA_PACKAGE" ] || return 1
  local jar n=0
  while IFS= read -r jar; do
    case "$jar" in ''|'#'*) continue ;; esac
    [ -f "$jar" ] || return 1
    n=$((n + 1))
  done < "$JARS_LIST"
  [ "$n" -gt 0 ]
}

ensure_delta_jars() {
  delta_jars_ok && return 0
  log "resolving $DELTA_PACKAGE once (log: $CACHE/delta-jars.log)"
  mkdir -p "$JARS_DIR"
  # A one-off local Spark start with spark.jars.packages: spark-submit resolves
  # the package through Ivy and reports the resolved jar files in spark.jars.
  # Failure is reported below, from the list's state.
  SPARK_LOCAL_IP=127.0.0.1 "$VENV/bin/python" - "$DELTA_PACKAGE" "$JARS_DIR" "$JARS_LIST" \
      > "$CACHE/delta-jars.log" 2>&1 <<'PY' || true
import os, shutil, sys
from urllib.parse import unquote, urlparse
from pyspark.sql import SparkSession
package, jars_dir, list_file = sys.argv[1:4]
spark = (SparkSession.builder.master("local[1]").appName("courier-bootstrap-delta-jars")
         .config("spark.jars.packages", package).config("spark.ui.enabled", "false").getOrCreate())
uris = [u for u in spark.sparkContext.getConf().get("spark.jars", "").split(",") if u]
spark.stop()
print("spark.jars after resolution:", uris)
paths = [unquote(urlparse(u).path) if u.startswith("file:") else u for u in uris]
if not paths or not all(os.path.isfile(p) for p in paths):
    sys.exit(f"resolved jars missing: {paths}")
out = []
for p in paths:
    dst = os.path.join(jars_dir, os.path.basename(p))
    shutil.copy2(p, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    out.append(os.path.abspath(dst))
with open(list_file + ".tmp", "w") as f:
    f.write(f"# package: {package}\n# written by scripts/bootstrap.sh; read by courier_spark/core/spark.py\n")
    f.write("".join(p + "\n" for p in out))
os.replace(list_file + ".tmp", list_file)
print("listed", len(out), "jars in", list_file)
PY
  if delta_jars_ok; then
    log "Delta jars: $(grep -vc '^#' "$JARS_LIST") listed in $JARS_LIST"
  else
    # Not fatal (an offline machine may set spark.jars itself): spark.py falls back.
    log "could not resolve $DELTA_PACKAGE (see $CACHE/delta-jars.log); Spark will resolve it at every start"
  fi
}

ensure_redis_server() {  # the online store's tests start a real Redis server on loopback
  command -v redis-server >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's redis-server (the online store tests start it on loopback)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server > "$CACHE/redis-install.log" 2>&1 \
      || { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server \
             >> "$CACHE/redis-install.log" 2>&1; } \
      || log "could not install redis-server (see $CACHE/redis-install.log); the online-store tests will fail"
    # Debian starts a system service on :6379; the tests run their own server.
    (command -v systemctl >/dev/null && systemctl stop redis-server >/dev/null 2>&1) || true
  else
    log "redis-server not found: install it (Debian: apt-get install redis-server) for the online-store tests"
  fi
}
mkdir -p "$CACHE"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  ensure_redis_server
  ensure_delta_jars
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
"${PIP[@]}" install -q -r requirements/base.txt -c requirements/lock.txt
PETASTORM_WHEEL="$(PYTHON="$VENV/bin/python" bash "$ROOT/scripts/petastorm.sh")"
"${PIP[@]}" install -q --no-deps --force-reinstall "$PETASTORM_WHEEL"

# --- horovod: not here. Only train.backend=horovod needs it (the default is
# TorchDistributor): scripts/horovod.sh builds it on first need (~7 min, once
# per machine; scripts/test.sh runs it for the Horovod tests).
if [ "${COURIER_WITH_HOROVOD:-0}" = 1 ]; then bash "$ROOT/scripts/horovod.sh"; fi

log "installing courier-spark (editable)"
"${PIP[@]}" install -q --no-deps -e .
ensure_redis_server
ensure_delta_jars
echo "$HASH" > "$STAMP"
log "done: $("$VENV/bin/python" -c 'import pyspark,delta,torch,petastorm,faiss,lightgbm;print("pyspark",pyspark.__version__,"torch",torch.__version__,"faiss",faiss.__version__)')"

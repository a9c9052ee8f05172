#!/usr/bin/env bash
# Fetch (once) the JVM jars for S3-compatible roots (s3a://). Idempotent: a
# stamp over this script skips the work.
#   bash scripts/s3_jars.sh           -> hadoop-aws for Spark; prints the list's path
#   bash scripts/s3_jars.sh server    -> also s3proxy (the tests' S3 server); prints its jar's path
#
# hadoop-aws must be the exact Hadoop version PySpark bundles (its
# hadoop-client-api jar names it); it brings the AWS SDK v2 bundle it was built
# against (~560 MB, one shaded jar). The jars are listed, one absolute path a
# line under a "# package:" header, in <venv>/courier-s3a-jars.txt;
# courier_spark/core/spark.py puts them on a local driver's classpath when the list
# matches the running PySpark's Hadoop (like Delta's list from bootstrap.sh).
#
# s3proxy (Apache-2.0, org.gaul:s3proxy, one jar with its dependencies) is a real
# S3 HTTP server -- signatures, buckets, multipart uploads -- over jclouds'
# in-memory "transient" store; tests/remote/s3proxy.py starts it on loopback.
# 4.x, not 2.x: 2.6 rejects the checksum headers current botocore sends on
# every PUT ("A header you provided implies functionality that is not implemented").
# Resolution goes through the Ivy inside PySpark, like scripts/hdfs_jars.sh; the
# retrieved jars are symlinks into the Ivy cache (the bundle is not stored twice).
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COURIER_VENV:-$ROOT_DIR/.venv}"
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
S3PROXY_VERSION=4.1.0
want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
log() { echo "[s3-jars] $*" >&2; }

PYSPARK_JARS="$(ls -d "$VENV"/lib/python3*/site-packages/pyspark/jars 2>/dev/null | head -1)"
[ -n "$PYSPARK_JARS" ] || { log "no pyspark in $VENV (run scripts/bootstrap.sh first)"; exit 1; }
IVY_JAR="$(ls "$PYSPARK_JARS"/ivy-*.jar | head -1)"
HADOOP_VERSION="$(ls "$PYSPARK_JARS" | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p' | head -1)"
[ -n "$HADOOP_VERSION" ] || { log "no hadoop-client-api jar in $PYSPARK_JARS"; exit 1; }

resolve() {  # resolve NAME IVY_XML_DEPENDENCIES -> jars in $CACHE/NAME/lib
  local dir="$CACHE/$1"
  rm -rf "$dir/lib" && mkdir -p "$dir/lib"
  cat > "$dir/ivy.xml" <<XML
<ivy-module version="2.0" xmlns:m="http://ant.apache.org/ivy/maven">
  <info organisation="courier-spark" module="$1"/>
  <dependencies>$2</dependencies>
</ivy-module>
XML
  log "resolving $1 once (log: $dir/ivy.log)"
  java -jar "$IVY_JAR" -ivy "$dir/ivy.xml" -confs default -types jar bundle \
    -cache "$CACHE/ivy" -symlink -retrieve "$dir/lib/[artifact]-[revision](-[classifier]).[ext]" \
    > "$dir/ivy.log" 2>&1 || { tail -20 "$dir/ivy.log" >&2; log "resolution of $1 failed"; exit 1; }
}

# --- hadoop-aws (+ AWS SDK bundle) for Spark's s3a://
PACKAGE="org.apache.hadoop:hadoop-aws:$HADOOP_VERSION"
AWS_DIR="$CACHE/hadoop-aws-$HADOOP_VERSION"
LIST="$VENV/courier-s3a-jars.txt"
list_ok() {
  [ -s "$LIST" ] && [ "$(sed -n 's/^# package: //p' "$LIST")" = "$PACKAGE" ] && [ -f "$AWS_DIR/stamp" ] \
    && [ "$(cat "$AWS_DIR/stamp")" = "$want" ] || return 1
  local jar
  while IFS= read -r jar; do
    case "$jar" in ''|'#'*) continue ;; esac
    [ -f "$jar" ] || return 1
  done < "$LIST"
}
if ! list_ok; then
  resolve "hadoop-aws-$HADOOP_VERSION" \
    "<dependency org=\"org.apache.hadoop\" name=\"hadoop-aws\" rev=\"$HADOOP_VERSION\" conf=\"default->master,runtime\"/>"
  ls "$AWS_DIR/lib/hadoop-aws-$HADOOP_VERSION.jar" >/dev/null && ls "$AWS_DIR"/lib/bundle-*.jar >/dev/null \
    || { log "hadoop-aws or the AWS SDK bundle missing after resolution (see $AWS_DIR/ivy.log)"; exit 1; }
  { echo "# package: $PACKAGE"; echo "# written by scripts/s3_jars.sh; read by courier_spark/core/spark.py"
    ls "$AWS_DIR"/lib/*.jar; } > "$LIST.tmp"
  mv "$LIST.tmp" "$LIST"
  echo "$want" > "$AWS_DIR/stamp"
  log "$(grep -vc '^#' "$LIST") jars ($(du -shL "$AWS_DIR/lib" | cut -f1)) listed in $LIST"
fi

if [ "${1:-}" != server ]; then echo "$LIST"; exit 0; fi

# --- s3proxy, the tests' S3 server
PROXY_DIR="$CACHE/s3proxy-$S3PROXY_VERSION"
PROXY_JAR="$PROXY_DIR/lib/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar"
if [ ! -f "$PROXY_JAR" ] || [ "$(cat "$PROXY_DIR/stamp" 2>/dev/null)" != "$want" ]; then
  resolve "s3proxy-$S3PROXY_VERSION" \
    "<dependency org=\"org.gaul\" name=\"s3proxy\" rev=\"$S3PROXY_VERSION\" conf=\"default->master\">
       <artifact name=\"s3proxy\" type=\"jar\" ext=\"jar\" m:classifier=\"jar-with-dependencies\"/>
     </dependency>"
  [ -f "$PROXY_JAR" ] || { log "$PROXY_JAR missing after resolution (see $PROXY_DIR/ivy.log)"; exit 1; }
  echo "$want" > "$PROXY_DIR/stamp"
fi
echo "$PROXY_JAR"

#!/usr/bin/env bash
# Fetch (once) the Hadoop 3.4.1 jars that run a real HDFS -- NameNode and
# DataNode in one JVM, Hadoop's own MiniDFSCluster -- for the remote-root tests
# (tests/remote). Idempotent: a stamp over this script skips the work.
#   bash scripts/hdfs_jars.sh      -> prints the classpath file's path
#
# Why not the one shaded hadoop-client-minicluster jar: its WebHDFS endpoint
# answers 404 to every request (the shaded Jersey finds no resource methods),
# and WebHDFS is how Python reaches the store. The plain jars work. Resolution
# goes through the Ivy that ships inside PySpark, from the same Maven
# repository Spark resolves Delta from; test-jar classifiers are expressed in
# an ivy.xml. MiniDFSCluster refers to junit and mockito classes (test-support
# code paths), so they are on its classpath; nothing here is a mock of HDFS.
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COURIER_VENV:-$ROOT_DIR/.venv}"
CACHE="${COURIER_CACHE:-$HOME/.cache/courier-spark}"
DIR="$CACHE/hdfs-3.4.1"
CP_FILE="$DIR/classpath.txt"
STAMP="$DIR/stamp"
want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -s "$CP_FILE" ]; then
  echo "$CP_FILE"; exit 0
fi
IVY_JAR="$(ls "$VENV"/lib/python3*/site-packages/pyspark/jars/ivy-*.jar 2>/dev/null | head -1)"
[ -n "$IVY_JAR" ] || { echo "[hdfs-jars] no ivy jar in $VENV's pyspark (run scripts/bootstrap.sh first)" >&2; exit 1; }
rm -rf "$DIR/lib" && mkdir -p "$DIR/lib"
cat > "$DIR/ivy.xml" <<'XML'
<ivy-module version="2.0" xmlns:m="http://ant.apache.org/ivy/maven">
  <info organisation="courier-spark" module="hdfs-minicluster"/>
  <dependencies>
    <dependency org="org.apache.hadoop" name="hadoop-common" rev="3.4.1" conf="default->compile,runtime,master">
      <artifact name="hadoop-common" type="jar" ext="jar"/>
      <artifact name="hadoop-common" type="jar" ext="jar" m:classifier="tests"/>
    </dependency>
    <dependency org="org.apache.hadoop" name="hadoop-hdfs" rev="3.4.1" conf="default->compile,runtime,master">
      <artifact name="hadoop-hdfs" type="jar" ext="jar"/>
      <artifact name="hadoop-hdfs" type="jar" ext="jar" m:classifier="tests"/>
    </dependency>
    <dependency org="org.apache.hadoop" name="hadoop-hdfs-client" rev="3.4.1" conf="default->compile,runtime,master"/>
    <dependency org="junit" name="junit" rev="4.13.2" conf="default->compile,runtime,master"/>
    <dependency org="org.mockito" name="mockito-core" rev="4.11.0" conf="default->compile,runtime,master"/>
  </dependencies>
</ivy-module>
XML
echo "[hdfs-jars] resolving Hadoop 3.4.1 HDFS test cluster jars once (log: $DIR/ivy.log)" >&2
java -jar "$IVY_JAR" -ivy "$DIR/ivy.xml" -confs default -types jar bundle \
  -cache "$CACHE/ivy" -retrieve "$DIR/lib/[artifact]-[revision](-[classifier]).[ext]" \
  > "$DIR/ivy.log" 2>&1 || { tail -20 "$DIR/ivy.log" >&2; echo "[hdfs-jars] resolution failed" >&2; exit 1; }
for need in hadoop-common-3.4.1.jar hadoop-common-3.4.1-tests.jar hadoop-hdfs-3.4.1.jar hadoop-hdfs-3.4.1-tests.jar \
            hadoop-hdfs-client-3.4.1.jar woodstox-core-5.4.0.jar; do
  [ -f "$DIR/lib/$need" ] || { echo "[hdfs-jars] $need missing after resolution (see $DIR/ivy.log)" >&2; exit 1; }
done
ls "$DIR"/lib/*.jar | tr '\n' ':' | sed 's/:$//' > "$CP_FILE"
echo "$want" > "$STAMP"
echo "[hdfs-jars] $(ls "$DIR"/lib/*.jar | wc -l) jars, $(du -sh "$DIR/lib" | cut -f1), classpath in $CP_FILE" >&2
echo "$CP_FILE"

"""The whole pipeline with its dataset root on a real S3-compatible store
(s3proxy on loopback, see ``s3proxy.py``), reached by Spark as ``s3a://``
(hadoop-aws) and by the Python side through s3fs, both configured by the same
``spark.extra`` fs.s3a.* settings, run by the installed wheel (the packaging
test's pipeline, tests/test_wheel.py): every artefact lands in the bucket and
nothing stays on local disk; a wrong key or a missing bucket fails in seconds,
naming the root."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from courier_spark.core import fs
from courier_spark.core.spark import S3A_JARS_FILE_NAME

from . import s3proxy
from .test_hdfs_root import STAGES, TABLES, TINY, assert_models, assert_reports_and_run_records, courier, leftovers

pytestmark = pytest.mark.slow

BUCKET = "courier-data"
# Printed by Spark when it finds no log4j2 configuration of ours.
SPARK_DEFAULT_LOG4J = "Using Spark's default log4j profile"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = s3proxy.start(tmp_path_factory.mktemp("s3proxy"))
    try:
        server.client().call_s3("create_bucket", Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def _config(settings: dict[str, str], d: Path) -> list[str]:
    """``--config`` with the store's settings in ``spark.extra`` as flat Hadoop
    keys: YAML carries ``fs.s3a.endpoint`` beside ``fs.s3a.endpoint.region``,
    which ``--set`` cannot (a key cannot be both a value and a section)."""
    path = d / "s3.yaml"
    path.write_text(json.dumps({"spark": {"extra": settings}}))   # JSON is YAML
    return ["--config", str(path)]


def test_pipeline_sql_and_report_from_the_wheel_on_s3a_root(s3, wheel_venv, tmp_path):
    """Every stage with the installed wheel's `courier` (tests/installs.py: a
    fresh venv holding only the wheel, the shipped configs found inside it),
    from an empty working directory; then `courier sql NAME` reads the root
    without writing to it."""
    root = f"s3a://{BUCKET}/courier/ds"
    scratch, cwd, cache = tmp_path / "scratch", tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    cache.mkdir()
    # The s3a connector's jar list, as scripts/s3_jars.sh writes it into a venv:
    # the project venv's (the s3 fixture ran the script; the session's wheel venv
    # may be older than that).
    shutil.copy2(Path(sys.prefix) / S3A_JARS_FILE_NAME, wheel_venv["venv"] / S3A_JARS_FILE_NAME)
    conf = _config(s3.s3a_settings(), tmp_path)
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")] + conf + wheel_venv["sets"]
    wheel = {"exe": str(wheel_venv["courier"]), "base_env": {**wheel_venv["env"], "XDG_CACHE_HOME": str(cache)}}
    t0 = time.monotonic()
    out = courier(["pipeline", "--root", root, *sets], scratch, cwd, timeout=1800, **wheel)
    assert out.returncode == 0, f"pipeline on {root} failed:\n{out.stderr[-4000:]}\n{s3.tail()}"
    print(f"pipeline on s3a root, from the wheel: {time.monotonic() - t0:.0f}s")
    for stage in STAGES:
        assert f"[courier {stage}] finished in" in out.stderr, stage
    # Spark took our log4j2 file (the wheel's copy), not its default profile
    assert SPARK_DEFAULT_LOG4J not in out.stderr, out.stderr[:3000]

    store = s3.client()        # the test's own client: what is really in the bucket
    prefix = f"{BUCKET}/courier/ds/"
    rel = {f[len(prefix):] for f in store.find(prefix)}
    for t in TABLES:
        assert f"{t}/_delta_log/00000000000000000000.json" in rel, t
        assert any(r.startswith(f"{t}/") and r.endswith(".parquet") for r in rel), t
    assert_models(rel)
    # checkpoints went to the bucket and came back: the metrics name them
    fs.configure(5.0, s3.s3a_settings())
    train = json.loads(fs.read_text(fs.join(root, "_runs", "train.json")))
    assert train["metrics"]["checkpoint_steps"] == [5, 10], train["metrics"]
    assert train["path"] == fs.join(root, "models", "courier", "v0001")
    # petastorm's cache was under the root and is gone after training
    assert not any(r.startswith("_cache/petastorm/") and r.endswith(".parquet") for r in rel), \
        sorted(r for r in rel if r.startswith("_cache/"))[:10]
    assert_reports_and_run_records(root, rel)
    # the secret key reached the store as a signature only, never as bytes at rest
    secret = s3proxy.SECRET_KEY.encode()
    small = [r for r in rel if r.endswith((".json", ".log", ".md", ".csv"))]
    assert small and not [r for r in small if secret in store.cat_file(prefix + r)]
    # nothing on local disk: the working directory stays empty, scratch is cleaned up
    assert [p.name for p in cwd.iterdir()] == []
    assert leftovers(scratch) == [], leftovers(scratch)[:20]

    # `courier sql NAME` (a shipped query, by name) against that root, read-only
    def listing() -> list[tuple]:
        found = store.find(prefix, detail=True)
        return sorted((k, d.get("ETag"), str(d.get("LastModified"))) for k, d in found.items())
    before = listing()
    q = courier(["sql", "per_category_auc_lift", "--root", root, "--out", "auc.csv", "--limit", "3", *conf,
                 *wheel_venv["sets"]], scratch, cwd, timeout=600, **wheel)
    assert q.returncode == 0, q.stderr[-3000:]
    assert SPARK_DEFAULT_LOG4J not in q.stderr
    assert listing() == before
    assert list((cache / "courier" / "logs").glob("*-sql.log"))
    sql = pd.read_csv(cwd / "auc.csv")
    # against the Python per-category AUC the evaluate stage wrote (metrics.per_category_auc)
    py = pd.read_csv(io.StringIO(fs.read_text(fs.join(root, "reports", "per_category.csv"))))
    m = py.merge(sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    assert len(m) == len(sql) > 0 and m["auc_py"].notna().any()
    np.testing.assert_allclose(m["auc_sql"], m["auc_py"], atol=1e-6, rtol=0)
    # the working directory holds only what was asked for
    assert sorted(p.name for p in cwd.iterdir()) == ["auc.csv"]


def _fails_fast(root: str, settings: dict[str, str], tmp_path: Path, limit_s: float = 30.0) -> str:
    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    t0 = time.monotonic()
    out = courier(["validate", "--root", root, *_config(settings, tmp_path)], scratch, cwd, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert err and err[-1].startswith("courier: error: dataset root ") and root in err[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert took < limit_s, f"took {took:.1f}s to fail"
    return err[-1]


def test_wrong_key_fails_in_seconds(s3, tmp_path):
    msg = _fails_fast(f"s3a://{BUCKET}/courier/other", s3.s3a_settings(secret_key="not-the-secret"), tmp_path)
    assert "refused the credentials" in msg and "signature" in msg, msg
    assert "not-the-secret" not in msg


def test_missing_bucket_fails_in_seconds(s3, tmp_path):
    msg = _fails_fast("s3a://no-such-bucket/courier/ds", s3.s3a_settings(), tmp_path)
    assert "no such bucket" in msg, msg


SPARK_LOG_CHECK = """
import json, sys
from courier_spark.core.schema import SparkConfig
from courier_spark.core.spark import get_spark
spark = get_spark(SparkConfig(master="local[1]", extra=json.loads(sys.argv[1])))
jvm = spark.sparkContext._jvm
# Through slf4j, as Spark's and Hadoop's own classes log.
jvm.org.slf4j.LoggerFactory.getLogger("org.apache.spark.CourierLogCheck").warn("spark-log-line-check")
spark.range(3).write.format("delta").save(sys.argv[2])
print(spark.read.format("delta").load(sys.argv[2]).count())
jvm.org.slf4j.LoggerFactory.getLogger("org.apache.spark.CourierLogCheck").warn("after-s3a-check")
print(jvm.org.slf4j.LoggerFactory.getILoggerFactory().getClass().getName())
"""


def test_spark_log_lines_kept_with_s3a_settings(s3, tmp_path):
    """The s3a connector's SDK bundle carries an slf4j 1.x API; first on the
    classpath it sent every JVM log line to slf4j's no-operation logger."""
    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    cwd.mkdir()
    (scratch / "spark").mkdir(parents=True)
    e = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")}
    e.update({"TMPDIR": str(scratch), "SPARK_LOCAL_DIRS": str(scratch / "spark")})
    out = subprocess.run([sys.executable, "-c", SPARK_LOG_CHECK, json.dumps(s3.s3a_settings()),
                          f"s3a://{BUCKET}/log-check/t"], cwd=cwd, env=e, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split() == ["3", "org.apache.logging.slf4j.Log4jLoggerFactory"], out.stdout
    # Spark's own lines, before and after the first s3a:// use (the SDK's private,
    # shaded slf4j copy may still say it has no binding: its own logging is off,
    # as with the stock connector).
    for marker in ("spark-log-line-check", "after-s3a-check"):
        assert [ln for ln in out.stderr.splitlines() if f" WARN CourierLogCheck: {marker}" in ln], out.stderr[-2000:]

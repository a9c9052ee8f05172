"""The s3fs options come from the fs.s3a.* settings users give Spark (one
place per fact), and hadoop-aws is put on a local driver's classpath only
when it was resolved for this PySpark's Hadoop. The real store is exercised
by tests/remote/test_s3_root.py."""
from __future__ import annotations

import os

import pytest

from courier_spark.core import fs, stores


@pytest.fixture
def clean_s3(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    saved = dict(stores._S3A)
    yield
    stores._S3A.clear()
    stores._S3A.update(saved)
    fs.configure(5.0)


def test_s3a_settings_flat_nested_and_per_bucket():
    nested = {"spark": {"hadoop": {"fs": {"s3a": {"endpoint": "h:9000", "path": {"style": {"access": True}}}}}},
              "spark.hadoop.fs.s3a.access.key": "K", "fs.s3a.bucket.b1.endpoint": "other",
              "spark.hadoop.fs.s3a.bucket.b2.secret.key": "S2", "spark.sql.x": "1"}
    assert fs.s3a_settings(nested) == {"endpoint": "h:9000", "path.style.access": "true", "access.key": "K"}
    assert fs.s3a_settings(None) == {}


def test_s3_options_follow_s3a_rules():
    opts = fs.s3_options({"endpoint": "store:9000", "connection.ssl.enabled": "false", "path.style.access": "true",
                          "access.key": "K", "secret.key": "S", "endpoint.region": "eu-1"})
    assert opts["key"] == "K" and opts["secret"] == "S" and "token" not in opts
    assert opts["client_kwargs"] == {"endpoint_url": "http://store:9000", "region_name": "eu-1"}
    assert opts["config_kwargs"]["s3"] == {"addressing_style": "path"}
    # S3A's default is TLS; a URL keeps its own scheme; no path style unless asked
    assert fs.s3_options({"endpoint": "store:9000"})["client_kwargs"]["endpoint_url"] == "https://store:9000"
    assert fs.s3_options({"endpoint": "http://s:1"})["client_kwargs"]["endpoint_url"] == "http://s:1"
    assert "s3" not in fs.s3_options({})["config_kwargs"] and "client_kwargs" not in fs.s3_options({})


def test_configure_exports_the_same_store_to_child_processes(clean_s3):
    fs.configure(3.0, {"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:1",
                       "spark.hadoop.fs.s3a.access.key": "AK", "spark.hadoop.fs.s3a.secret.key": "SK"})
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:1"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AK", "SK")
    assert "AWS_SESSION_TOKEN" not in os.environ
    pytest.importorskip("s3fs")
    s3, path = fs.filesystem("s3a://bucket/x")
    assert path == "bucket/x" and s3.key == "AK" and s3.client_kwargs["endpoint_url"] == "http://127.0.0.1:1"
    assert s3.config_kwargs["connect_timeout"] == 3.0


def test_s3a_jars_only_for_this_hadoop(tmp_path):
    pytest.importorskip("pyspark")
    from courier_spark.core.spark import pyspark_hadoop_version, s3a_classpath
    version = pyspark_hadoop_version()
    assert version and version[0].isdigit()
    jar = tmp_path / "hadoop-aws.jar"
    jar.write_bytes(b"")
    f = tmp_path / "list.txt"
    f.write_text(f"# package: org.apache.hadoop:hadoop-aws:{version}\n{jar}\n")
    assert s3a_classpath(f) == [str(jar)]
    f.write_text(f"# package: org.apache.hadoop:hadoop-aws:0.0.1\n{jar}\n")    # another Hadoop: ignored
    assert s3a_classpath(f) == []
    assert s3a_classpath(tmp_path / "missing.txt") == []


def test_s3a_jars_go_after_sparks_own():
    """Appended to SPARK_DIST_CLASSPATH (after Spark's jars), once, keeping what a user set."""
    from courier_spark.core.spark import appended_classpath
    assert appended_classpath(["/a.jar", "/b.jar"], None) == os.pathsep.join(["/a.jar", "/b.jar"])
    assert appended_classpath(["/a.jar"], "/mine.jar") == os.pathsep.join(["/mine.jar", "/a.jar"])
    assert appended_classpath(["/a.jar"], os.pathsep.join(["/mine.jar", "/a.jar"])) is None
    assert appended_classpath([], "/mine.jar") is None

"""`courier feast`: a Feast feature repository for a root.

* The item_visual source query turns validity intervals into the event log
  Feast's rule ("latest row at or before the event") reads; checked against a
  brute-force search of the intervals, a row closed without successor included.
* The repository's files: types from the Delta schema, secrets as ${VAR}.
* End to end, with Feast installed in the platform's venv (one environment
  since the patched petastorm let numpy 2 / pyarrow 23 in): `feast apply`, Feast's
  `get_historical_features` equals `courier point_in_time` row for row (events
  before any feature, at a change, after a row was closed, unknown items), and
  after `materialize` a Feast online read equals `courier online`'s `lookup`,
  against a real Redis server with a password.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from courier_spark.core.config import load_config
from courier_spark.core.errors import ConfigError, MissingTableError
from courier_spark.serving.feast_repo import (DEFINITIONS, REPO_YAML, env_var_for, feast_type, feature_views,
                                      history_event_sql, offline_spark_conf, repo_files, write_repo)
from courier_spark.features.feature_tables import (IMPRESSION_VISUAL_COMMENTS, ITEM_VISUAL_COMMENTS, merge_history,
                                         merge_upsert)
from courier_spark.serving.client import VALUE_FIELDS
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.serving.retrieval import ITEM_FEATURES, as_of_join

from .test_online import IV_SCHEMA, PASSWORD, redis_server  # noqa: F401 (a fixture: a real redis-server)

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 4, 1, 9, 0)
T1 = dt.datetime(2026, 4, 1, 12, 0)
T2 = dt.datetime(2026, 4, 2, 8, 0)       # item 4's row is closed, no successor
MINUTE = dt.timedelta(minutes=1)
UTC = dt.timezone.utc
FEATURES = ("courier_cluster_id", "distance", "model_version", "centroid_version", "item_updated_at")


def _write_item_visual(spark, p: TablePaths) -> None:
    """Items 1-4 at T0; at T1 items 2 and 3 change and item 5 is new; at T2 item
    4's row is closed without a successor (as a delete would; merge_history
    never does this today, the query must still get it right)."""
    rows0 = [(i, i * 10, 0.5 * i, "courier/v0001", "c0001", T0 - dt.timedelta(days=1)) for i in (1, 2, 3, 4)]
    rows1 = [(2, 99, 0.25, "courier/v0001", "c0002", None), (3, 77, 0.75, "courier/v0001", "c0002", None),
             (5, 55, 1.5, "courier/v0001", "c0002", None)]
    for rows, at in ((rows0, T0), (rows1, T1)):
        merge_history(spark, spark.createDataFrame(rows, IV_SCHEMA), p.item_visual_features, ["item_id"],
                      ITEM_VISUAL_COMMENTS, as_of=at.replace(tzinfo=UTC))
    from delta.tables import DeltaTable
    DeltaTable.forPath(spark, p.item_visual_features).update(
        "item_id = 4 AND valid_to IS NULL", {"valid_to": F.lit(T2).cast("timestamp")})


IMPRESSIONS = [("e1", [0.5, None, 0.25], [3, None, 7], 10), ("e2", [], [], None), ("e3", [1.0], [4], 20)]


def _write_impression_visual(spark, p: TablePaths) -> None:
    df = spark.createDataFrame([(*r, "courier/v0001", "c0002") for r in IMPRESSIONS],
                               "event_id string, sim_scores array<float>, hist_cluster_ids array<int>, "
                               "target_cluster_id int, model_version string, centroid_version string")
    merge_upsert(spark, df, p.impression_visual_features, ["event_id"], IMPRESSION_VISUAL_COMMENTS)


EVENTS = [(1, T0 - MINUTE), (1, T0), (2, T1 - MINUTE), (2, T1), (3, T1 + MINUTE), (5, T1 - MINUTE), (5, T1),
          (4, T2 - MINUTE), (4, T2), (4, T2 + dt.timedelta(days=30)), (99, T1), (1, T2 + dt.timedelta(days=400))]


def test_history_event_query_equals_the_validity_intervals(spark, tmp_path):
    """Feast's rule over the query's rows == the interval that holds the event (brute force)."""
    p = TablePaths.for_root(str(tmp_path / "ds"))
    _write_item_visual(spark, p)
    table = spark.read.format("delta").load(p.item_visual_features)
    types = {f.name: f.dataType.simpleString() for f in table.schema.fields}
    log = [r.asDict() for r in spark.sql(history_event_sql(p.item_visual_features, "item_id", list(FEATURES),
                                                           types)).collect()]
    assert len(log) == table.count() + 1            # one null row: item 4 closed at T2
    events = spark.createDataFrame([(i, ts, n) for n, (i, ts) in enumerate(EVENTS)], "item_id long, event_ts timestamp, n int")
    want = {r["n"]: r.asDict() for r in as_of_join(events, table, "item_id", "event_ts", FEATURES).collect()}
    for n, (item, ts) in enumerate(EVENTS):
        at_or_before = [r for r in log if r["item_id"] == item and r["valid_from"] <= ts]
        got = max(at_or_before, key=lambda r: r["valid_from"]) if at_or_before else None
        for col in FEATURES:
            assert (got[col] if got else None) == want[n][col], (item, ts, col)
    assert want[EVENTS.index((4, T2 - MINUTE))]["courier_cluster_id"] == 40
    assert want[EVENTS.index((4, T2))]["courier_cluster_id"] is None


def test_repo_files_types_and_secrets(spark, tmp_path, monkeypatch):
    from pyspark.sql import types as T
    assert [feast_type(t) for t in (T.IntegerType(), T.LongType(), T.FloatType(), T.StringType(),
                                    T.TimestampType(), T.ArrayType(T.FloatType()))] == \
        ["Int32", "Int64", "Float32", "String", "UnixTimestamp", "Array(Float32)"]
    with pytest.raises(ConfigError, match="Feast has no type"):
        feast_type(T.MapType(T.StringType(), T.StringType()))
    iv = T.StructType([T.StructField("item_id", T.LongType()), T.StructField("courier_cluster_id", T.IntegerType()),
                       T.StructField("valid_from", T.TimestampType()), T.StructField("valid_to", T.TimestampType())])
    imp = T.StructType([T.StructField("event_id", T.StringType()),
                        T.StructField("sim_scores", T.ArrayType(T.FloatType())),
                        T.StructField("updated_at", T.TimestampType())])
    views = feature_views("/r/feature_store/item_visual", iv, "/r/feature_store/impression_visual", imp)
    assert [(v.name, v.join_key, v.key_type, v.features, v.online) for v in views] == [
        ("item_visual", "item_id", "Int64", (("courier_cluster_id", "Int32"),), True),
        ("impression_visual", "event_id", "String", (("sim_scores", "Array(Float32)"),), False)]

    cfg = load_config(None, ["spark.extra.spark.hadoop.fs.s3a.secret.key=SECRETVALUE123",
                             "spark.extra.spark.hadoop.fs.s3a.endpoint=http://127.0.0.1:9000",
                             "online.password_env=MY_REDIS_PW"])
    conf, needed = offline_spark_conf(cfg.spark, "local[1]")
    assert needed == [env_var_for("spark.hadoop.fs.s3a.secret.key")] == ["COURIER_SPARK_HADOOP_FS_S3A_SECRET_KEY"]
    assert conf["spark.hadoop.fs.s3a.secret.key"] == "${COURIER_SPARK_HADOOP_FS_S3A_SECRET_KEY}"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.sql.session.timeZone"] == "UTC" and "delta" in conf["spark.sql.extensions"].lower()
    repo = repo_files(views, project="p1", root="/r", spark_conf=conf, online=cfg.online, with_password=True,
                      env_vars=needed)
    text = "\n".join(repo.files.values())
    assert "SECRETVALUE123" not in text and "password=${MY_REDIS_PW}" in repo.files[REPO_YAML]
    compile(repo.files[DEFINITIONS], DEFINITIONS, "exec")      # valid Python
    assert "user = Entity(name='user', join_keys=['user_id'], value_type=ValueType.INT64)" in repo.files[DEFINITIONS]
    written = write_repo(repo, str(tmp_path / "repo"))
    assert sorted(Path(w).name for w in written) == sorted([REPO_YAML, DEFINITIONS])
    with pytest.raises(ConfigError, match="local directory"):
        write_repo(repo, "s3a://bucket/repo")
    # Its own files are replaced; a team's own repository is not, unless asked.
    assert write_repo(repo, str(tmp_path / "repo")) == written
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / DEFINITIONS).write_text("# our own views\n")
    with pytest.raises(ConfigError, match="courier_features.py that `courier feast` did not write"):
        write_repo(repo, str(theirs))
    assert (theirs / DEFINITIONS).read_text() == "# our own views\n" and not (theirs / REPO_YAML).exists()
    write_repo(repo, str(theirs), overwrite=True)
    assert "courier feast" in (theirs / DEFINITIONS).read_text()


def test_feast_needs_the_feature_table(spark, tmp_path):
    (tmp_path / "ds").mkdir()
    ctx = StageContext(spark, load_config(None, [f"feast.repo={tmp_path / 'repo'}"]),
                       TablePaths.for_root(str(tmp_path / "ds")))
    with pytest.raises(MissingTableError, match="features"):
        run_stage("feast", ctx)


@pytest.fixture(scope="module")
def feast_python() -> str:
    """The platform's own interpreter: Feast is installed beside it (requirements/base.txt)."""
    feast_cli = Path(sys.executable).with_name("feast")
    assert feast_cli.is_file(), f"{feast_cli} missing: Feast belongs in the platform's venv (scripts/bootstrap.sh)"
    return sys.executable


def _plain(v):
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return v


@pytest.mark.slow
def test_feast_historical_and_online_equal_courier(spark, tmp_path, redis_server, feast_python,  # noqa: F811
                                                   monkeypatch):
    p = TablePaths.for_root(str(tmp_path / "ds"))
    _write_item_visual(spark, p)
    _write_impression_visual(spark, p)
    monkeypatch.setenv("COURIER_REDIS_PASSWORD", PASSWORD)
    events = spark.createDataFrame([(i, ts, n) for n, (i, ts) in enumerate(EVENTS)],
                                   "item_id long, event_ts timestamp, event_no int")
    events.write.parquet(str(tmp_path / "events.parquet"))
    cfg = load_config(None, [f"online.port={redis_server}", "online.key_prefix=cf:", f"feast.repo={tmp_path / 'repo'}",
                             "feast.offline_master=local[1]", f"retrieval.input={tmp_path / 'events.parquet'}",
                             "retrieval.input_format=parquet", f"retrieval.output={tmp_path / 'pit'}"])
    ctx = StageContext(spark, cfg, p)
    result = run_stage("feast", ctx)
    assert result.feature_views == ["item_visual", "impression_visual"] and result.env_vars == ["COURIER_REDIS_PASSWORD"]
    assert PASSWORD not in (tmp_path / "repo" / REPO_YAML).read_text()
    run_stage("online", ctx)
    run_stage("point_in_time", ctx)
    courier_pit = {r["event_no"]: r.asDict() for r in spark.read.format("delta").load(str(tmp_path / "pit")).collect()}
    ids = sorted({i for i, _ in EVENTS})
    from courier_spark import FeatureStore
    courier_online = FeatureStore(p.root, spark=spark, config=cfg).online().lookup(ids)

    (tmp_path / "ids.json").write_text(json.dumps(ids))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK_HOME", "PYTHONPATH"))}
    env.update(PYSPARK_PYTHON=feast_python, SPARK_LOCAL_IP="127.0.0.1")
    feast_cli = str(Path(feast_python).with_name("feast"))
    for cmd in ([feast_cli, "-c", str(tmp_path / "repo"), "apply"],
                [feast_python, str(REPO / "tests" / "feast_check.py"), str(tmp_path / "repo"),
                 str(tmp_path / "events.parquet"), str(tmp_path / "ids.json"), str(tmp_path / "feast.json")]):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert out.returncode == 0, f"{cmd[:3]}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    got = json.loads((tmp_path / "feast.json").read_text())

    feast_pit = {r["event_no"]: r for r in got["historical"]}
    assert sorted(feast_pit) == sorted(courier_pit) == list(range(len(EVENTS)))
    for n, row in courier_pit.items():
        for col in ITEM_FEATURES:   # what point_in_time gives (the view also has item_updated_at)
            want = _plain(row[col])
            have = feast_pit[n][col]
            if isinstance(want, float) and have is not None:
                assert have == pytest.approx(want, rel=1e-6), (EVENTS[n], col)
            else:
                assert have == want, (EVENTS[n], col, feast_pit[n])
    assert sum(r["courier_cluster_id"] is not None for r in courier_pit.values()) == 7

    for i in ids:
        mine = courier_online[i]
        theirs = got["online"][str(i)]
        if mine is None:      # no current row: Feast holds nothing or nulls for it
            assert all(theirs[f] is None for f in FEATURES), (i, theirs)
            continue
        assert set(VALUE_FIELDS) >= set(FEATURES)
        for f in FEATURES:
            want = _plain(mine[f])
            assert theirs[f] == (pytest.approx(want, rel=1e-6) if isinstance(want, float) else want), (i, f)
    assert {i for i in ids if courier_online[i] is not None} == {1, 2, 3, 5}

    # The offline-only view: every event's values as the table holds them (asked after they were computed).
    imp = {r["event_id"]: r for r in got["impressions"]}
    assert sorted(imp) == ["e1", "e2", "e3"]
    for event_id, sims, cids, target in IMPRESSIONS:
        have = imp[event_id]["sim_scores"]
        assert len(have) == len(sims) and all(
            (h is None and w is None) or (h is not None and w is not None and abs(h - w) < 1e-6)
            for h, w in zip(have, sims)), (event_id, have, sims)
        assert (imp[event_id]["hist_cluster_ids"], imp[event_id]["target_cluster_id"]) == (cids, target)

"""item_visual's validity intervals (merge_history) and point-in-time retrieval,
checked against brute-force answers computed from the table's full history."""
from __future__ import annotations

import datetime as dt
import os
import re

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, current_rows, merge_history
from courier_spark.core.errors import FeatureTableSchemaError
from courier_spark.serving.retrieval import point_in_time_features

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
IV_SCHEMA = ("item_id long, courier_cluster_id int, distance float, model_version string, "
             "centroid_version string, item_updated_at timestamp")


def iv_rows(spark, rows):
    return spark.createDataFrame(rows, IV_SCHEMA)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def naive(t: dt.datetime) -> pd.Timestamp:
    return pd.Timestamp(t.astimezone(UTC).replace(tzinfo=None))


def history_table(spark, tmp_path, path: str | None = None):
    """Four writes: (v0001, c0001) for items 1-30; (v0001, c0002) re-assigns 1-30 and adds 31-40;
    (v0002, c0003) for 1-40; then 5 items' images change (new cluster, new item version)."""
    rng = np.random.default_rng(3)
    path = path or str(tmp_path / "item_visual")
    iu = dt.datetime(2026, 2, 1)

    def write(ids, mv, cv, hours, changed=()):
        rows = [(i, int(rng.integers(0, 8)), float(np.float32(rng.random())), mv, cv,
                 iu + dt.timedelta(days=1) if i in changed else iu) for i in ids]
        return merge_history(spark, iv_rows(spark, rows), path, ["item_id"], ITEM_VISUAL_COMMENTS, as_of=at(hours))

    stats = [write(range(1, 31), "courier/v0001", "c0001", 0),
             write(range(1, 41), "courier/v0001", "c0002", 10),
             write(range(1, 41), "courier/v0002", "c0003", 20)]
    cur = current_rows(spark.read.format("delta").load(path)).toPandas().set_index("item_id")
    changed = [3, 7, 11, 19, 33]
    again = [(i, int((cur.loc[i, "courier_cluster_id"] + 1) % 8) if i in changed else int(cur.loc[i, "courier_cluster_id"]),
              float(cur.loc[i, "distance"]), "courier/v0002", "c0003",
              iu + dt.timedelta(days=1) if i in changed else iu) for i in range(1, 41)]
    stats.append(merge_history(spark, iv_rows(spark, again), path, ["item_id"], as_of=at(30)))
    return path, stats, changed


def test_merge_history_intervals_counts_and_rerun(spark, tmp_path):
    path, stats, changed = history_table(spark, tmp_path)
    assert [(s["new_keys"], s["closed"], s["unchanged"]) for s in stats] == [
        (30, 0, 0), (10, 30, 0), (0, 40, 0), (0, 5, 35)]
    h = spark.read.format("delta").load(path).toPandas()
    assert len(h) == 30 + 40 + 40 + 5
    for item, g in h.groupby("item_id"):
        g = g.sort_values("valid_from")
        # exactly one open row; each closed row ends where the next begins (no gap, no overlap)
        assert g["valid_to"].isna().sum() == 1 and pd.isna(g["valid_to"].iloc[-1])
        assert (g["valid_to"].iloc[:-1].to_numpy() == g["valid_from"].iloc[1:].to_numpy()).all()
    assert sorted(h[h["valid_from"] == naive(at(30))]["item_id"]) == changed
    # Same values again: no commit, nothing inserted or closed.
    from courier_spark.core.tables import table_version
    v = table_version(spark, path)
    cur = current_rows(spark.read.format("delta").load(path)).drop("valid_from", "valid_to")
    s = merge_history(spark, cur, path, ["item_id"], as_of=at(40))
    assert (s["inserted"], s["closed"], s["unchanged"], s["version"]) == (0, 0, 40, v)
    assert table_version(spark, path) == v
    # The change data feed is on (the online store copies changed rows from it).
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").toPandas().set_index("key")["value"]
    assert props["delta.enableChangeDataFeed"] == "true"
    # A clock that went backwards would make overlapping intervals: refused.
    with pytest.raises(ValueError, match="is not after the newest valid_from"):
        merge_history(spark, cur.withColumn("distance", F.lit(0.5).cast("float")), path, ["item_id"], as_of=at(25))
    # A table without intervals that is not an older item_visual is named, not silently mixed.
    other = str(tmp_path / "other")
    cur.drop("distance").write.format("delta").save(other)
    with pytest.raises(FeatureTableSchemaError, match="no validity intervals"):
        merge_history(spark, cur, other, ["item_id"])


def test_an_older_release_table_is_upgraded_in_place(spark, tmp_path):
    """item_visual as the previous release wrote it (one row per item, updated_at,
    no item_updated_at): the first merge_history upgrades it in one commit, keeps
    every row as the current one valid from its updated_at, then continues."""
    from courier_spark.features.feature_tables import merge_upsert
    path = str(tmp_path / "old_iv")
    old = spark.createDataFrame([(i, i % 4, 0.5, "courier/v0001", "c0001") for i in range(1, 21)],
                                "item_id long, courier_cluster_id int, distance float, model_version string, "
                                "centroid_version string")
    merge_upsert(spark, old, path, ["item_id"])
    before = spark.read.format("delta").load(path).toPandas().set_index("item_id").sort_index()
    new = iv_rows(spark, [(i, (i % 4) + (1 if i <= 5 else 0), 0.5, "courier/v0001", "c0001", None)
                          for i in range(1, 21)])
    s = merge_history(spark, new, path, ["item_id"], ITEM_VISUAL_COMMENTS)
    assert (s["new_keys"], s["closed"], s["unchanged"]) == (0, 5, 15)
    h = spark.read.format("delta").load(path).toPandas()
    first = h.sort_values("valid_from").groupby("item_id").first().sort_index()
    assert (first["valid_from"] == before["updated_at"]).all()          # each old row valid from its updated_at
    assert (first["courier_cluster_id"] == before["courier_cluster_id"]).all()
    assert len(h) == 25 and h[h["valid_to"].isna()]["item_id"].is_unique
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").toPandas().set_index("key")["value"]
    assert props["delta.enableChangeDataFeed"] == "true"


def brute_force_item(history: pd.DataFrame, item_id: int, ts: pd.Timestamp):
    """The row of item_id valid at ts, by scanning every row the table ever had."""
    hits = [r for r in history[history["item_id"] == item_id].itertuples()
            if r.valid_from <= ts and (pd.isna(r.valid_to) or ts < r.valid_to)]
    assert len(hits) <= 1, f"overlapping intervals for item {item_id} at {ts}"
    return hits[0] if hits else None


def test_point_in_time_equals_brute_force(spark, tmp_path):
    path, _, _ = history_table(spark, tmp_path)
    history = spark.read.format("delta").load(path).toPandas()
    rng = np.random.default_rng(11)
    # Events from before any feature (-5 h) to after the last write (+35 h), on every
    # boundary exactly, for items that have features and items that never had (41-45).
    hours = list(rng.uniform(-5, 35, 300)) + [0, 10, 20, 30] * 3
    events = pd.DataFrame({"event_id": [f"e{i}" for i in range(len(hours))],
                           "item_id": rng.integers(1, 46, len(hours)),
                           "event_ts": [naive(at(h)) for h in hours], "label": rng.integers(0, 2, len(hours))})
    ev = spark.createDataFrame(events)
    got = point_in_time_features(ev, spark.read.format("delta").load(path)).toPandas().set_index("event_id")
    assert len(got) == len(events) and set(got.index) == set(events["event_id"])
    n_null = n_v1 = 0
    for e in events.itertuples():
        row, exp = got.loc[e.event_id], brute_force_item(history, e.item_id, e.event_ts)
        assert row["label"] == e.label
        if exp is None:
            n_null += 1
            assert row[["courier_cluster_id", "distance", "model_version", "centroid_version"]].isna().all()
        else:
            n_v1 += exp.model_version == "courier/v0001"
            assert (row["courier_cluster_id"], row["model_version"], row["centroid_version"]) == \
                   (exp.courier_cluster_id, exp.model_version, exp.centroid_version), e
            assert np.float32(row["distance"]) == np.float32(exp.distance)
    # The test set really spans: no features yet, both models, three centroid versions.
    assert n_null > 20 and 0 < n_v1 < len(events)
    assert set(got["centroid_version"].dropna()) == {"c0001", "c0002", "c0003"}
    # An event exactly at a write's time already sees that write (valid_from inclusive).
    at10 = got[(got["event_ts"] == naive(at(10))) & (got["item_id"] <= 30)]
    assert len(at10) and (at10["centroid_version"] == "c0002").all()


def test_point_in_time_history_features_equal_brute_force(spark, tmp_path):
    path, _, _ = history_table(spark, tmp_path)
    history = spark.read.format("delta").load(path).toPandas()
    rng = np.random.default_rng(5)
    # Embeddings of both model versions for items 1..40 (45 has none).
    emb = {(i, mv): rng.normal(size=8).astype(np.float32) for i in range(1, 41)
           for mv in ("courier/v0001", "courier/v0002")}
    emb_df = spark.createDataFrame([(i, mv, [float(v) for v in x]) for (i, mv), x in emb.items()],
                                   "item_id long, model_version string, embedding array<float>")
    # Clicks (and non-clicks) of 6 users over the whole span.
    n = 400
    imps = pd.DataFrame({"event_id": [f"i{j}" for j in range(n)], "user_id": rng.integers(1, 7, n),
                         "item_id": rng.integers(1, 46, n), "position": rng.integers(0, 10, n),
                         "event_ts": [naive(at(h)) for h in rng.uniform(-10, 35, n)],
                         "clicked": rng.random(n) < 0.5})
    events = pd.DataFrame({"item_id": rng.integers(1, 46, 120), "user_id": rng.integers(1, 8, 120),
                           "event_ts": [naive(at(h)) for h in rng.uniform(-6, 35, 120)]})
    events["key"] = range(len(events))
    k = 4
    got = point_in_time_features(spark.createDataFrame(events), spark.read.format("delta").load(path),
                                 impressions=spark.createDataFrame(imps), embeddings=emb_df, k=k
                                 ).toPandas().set_index("key")
    assert len(got) == len(events)
    clicks = imps[imps["clicked"]].sort_values(["event_ts", "position", "event_id"])
    filled = 0
    for e in events.itertuples():
        row = got.loc[e.key]
        mine = clicks[(clicks["user_id"] == e.user_id) & (clicks["event_ts"] < e.event_ts)]["item_id"].tolist()[-k:]
        assert list(row["hist_item_ids"]) == mine
        target = brute_force_item(history, e.item_id, e.event_ts)
        newest_first = mine[::-1] + [None] * (k - len(mine))
        for slot, h_item in enumerate(newest_first):
            h = None if h_item is None else brute_force_item(history, h_item, e.event_ts)
            cid, sim = row["hist_cluster_ids"][slot], row["sim_scores"][slot]
            assert (None if h is None else h.courier_cluster_id) == (None if pd.isna(cid) else cid)
            if target is None or h is None or h.model_version != target.model_version:
                assert sim is None or pd.isna(sim)
            else:
                a, b = emb[(e.item_id, target.model_version)], emb[(h_item, target.model_version)]
                exp = float(a.astype(np.float64) @ b / np.linalg.norm(a.astype(np.float64)) / np.linalg.norm(b))
                assert abs(sim - exp) < 1e-5
                filled += 1
    assert filled > 50


def test_point_in_time_refuses_bad_events(spark, tmp_path):
    from courier_spark.core.errors import DataError
    path, _, _ = history_table(spark, tmp_path)
    iv = spark.read.format("delta").load(path)
    with pytest.raises(DataError, match="must be a timestamp"):
        point_in_time_features(spark.createDataFrame([(1, "2026-03-01")], "item_id long, event_ts string"), iv)
    with pytest.raises(DataError, match=r"needs column\(s\) \['event_ts'\]"):
        point_in_time_features(spark.createDataFrame([(1,)], "item_id long"), iv)
    clash = spark.createDataFrame([(1, at(1), "x")], "item_id long, event_ts timestamp, model_version string")
    with pytest.raises(DataError, match="already have column"):
        point_in_time_features(clash, iv)


@pytest.fixture(scope="module")
def pit_root(spark, tmp_path_factory):
    """A root whose feature_store/item_visual is ``history_table``'s (read only
    by the point_in_time stage tests, which share it)."""
    from courier_spark.core.paths import TablePaths
    p = TablePaths.for_root(str(tmp_path_factory.mktemp("pit") / "ds"))
    history_table(spark, None, p.item_visual_features)
    return p


def test_point_in_time_stage_writes_what_the_function_returns(spark, tmp_path, pit_root):
    from courier_spark.core.config import load_config
    from courier_spark.core.errors import ConfigError
    from courier_spark.pipeline import StageContext, run_stage
    p = pit_root
    rng = np.random.default_rng(2)
    hours = rng.uniform(-5, 35, 50)
    events = pd.DataFrame({"key": range(50), "item_id": rng.integers(1, 46, 50),
                           "ts": [naive(at(h)) for h in hours]})
    src, out = str(tmp_path / "events"), str(tmp_path / "train_set")
    spark.createDataFrame(events).write.parquet(src)
    cfg = load_config(None, [f"retrieval.input={src}", "retrieval.input_format=parquet", f"retrieval.output={out}",
                             "retrieval.event_ts_column=ts"])
    s = run_stage("point_in_time", StageContext(spark, cfg, p))
    got = spark.read.format("delta").load(out).toPandas().sort_values("key").reset_index(drop=True)
    exp = (point_in_time_features(spark.read.parquet(src).withColumnRenamed("ts", "event_ts"),
                                  spark.read.format("delta").load(p.item_visual_features))
           .withColumnRenamed("event_ts", "ts").toPandas().sort_values("key").reset_index(drop=True))
    assert s.rows == 50 and got[exp.columns].equals(exp)
    assert s.with_item_features == int(exp["courier_cluster_id"].notna().sum()) > 0
    with pytest.raises(ConfigError, match="retrieval.input"):
        run_stage("point_in_time", StageContext(spark, load_config(None, []), p))


def test_point_in_time_outputs_cannot_clobber(spark, tmp_path, pit_root):
    """retrieval.output: never the root, its tables or artefacts (checked
    without Spark); an existing table or directory is replaced only when
    point_in_time wrote it or with retrieval.overwrite=true; pandas' default
    nanosecond timestamps are read (truncated to microseconds)."""
    from courier_spark.core.config import load_config
    from courier_spark.core.delta_log import commit_versions, snapshot
    from courier_spark.core.errors import ConfigError
    from courier_spark.pipeline import StageContext, run_stage
    from courier_spark.serving.retrieval import PARQUET_MARKER, WRITER, WRITER_PROPERTY, check_output

    p = pit_root
    rng = np.random.default_rng(4)
    events = pd.DataFrame({"key": range(40), "item_id": rng.integers(1, 46, 40),
                           "event_ts": [naive(at(h)) + pd.Timedelta(nanoseconds=789) for h in rng.uniform(-5, 35, 40)]})
    ns_src = str(tmp_path / "events_ns.parquet")
    events.to_parquet(ns_src)                                       # pandas' defaults: timestamp[ns]
    us_src = str(tmp_path / "events_us.parquet")
    events.to_parquet(us_src, coerce_timestamps="us", allow_truncated_timestamps=True)

    def cfg(out, src=ns_src, *more):
        return load_config(None, [f"retrieval.input={src}", "retrieval.input_format=parquet",
                                  f"retrieval.output={out}", *more]).retrieval

    # Refused before anything is read: the root, its tables, folders above them, its artefacts, the input.
    iv_commits = commit_versions(p.item_visual_features)
    for out, msg in ((p.item_visual_features, "is the root's table feature_store/item_visual (written by "
                                              "`courier features`)"),
                     (p.item_visual_features + "/part", "is inside the root's table feature_store/item_visual"),
                     (p.root + "/feature_store", "holds the root's table feature_store/item_visual"),
                     (p.root, "would replace the dataset root"), (os.path.dirname(p.root), "would replace the dataset root"),
                     (p.models + "/x", "is inside the root's models"), (ns_src, "retrieval.input")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            check_output(cfg(out, ns_src, "retrieval.overwrite=true"), p)
    with pytest.raises(ConfigError, match="is the root's table"):
        run_stage("point_in_time", StageContext(spark, load_config(None, [
            f"retrieval.input={ns_src}", "retrieval.input_format=parquet",
            f"retrieval.output={p.item_visual_features}"]), p))
    assert commit_versions(p.item_visual_features) == iv_commits

    # A new output from pandas' nanosecond file: the same rows as from a microsecond file.
    out = str(tmp_path / "train_set")
    s = run_stage("point_in_time", StageContext(spark, load_config(None, [
        f"retrieval.input={ns_src}", "retrieval.input_format=parquet", f"retrieval.output={out}"]), p))
    assert s.rows == 40 and snapshot(out).properties[WRITER_PROPERTY] == WRITER
    got = spark.read.format("delta").load(out)
    assert dict(got.dtypes)["event_ts"] == "timestamp_ntz"
    exp = point_in_time_features(spark.read.parquet(us_src), spark.read.format("delta").load(p.item_visual_features))
    assert sorted(map(tuple, got.select(*exp.columns).collect())) == sorted(map(tuple, exp.collect()))
    # Ours: replaced on a rerun, the property kept.
    n = len(commit_versions(out))
    run_stage("point_in_time", StageContext(spark, load_config(None, [
        f"retrieval.input={us_src}", "retrieval.input_format=parquet", f"retrieval.output={out}"]), p))
    assert len(commit_versions(out)) == n + 1 and snapshot(out).properties[WRITER_PROPERTY] == WRITER

    # Someone else's Delta table, a non-empty folder and a file: refused unless retrieval.overwrite=true.
    theirs = str(tmp_path / "theirs")
    spark.createDataFrame([(1, "keep")], "a long, b string").write.format("delta").save(theirs)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target, msg in ((theirs, "holds a Delta table that point_in_time did not write (its property "
                                 "courier.writer is unset)"),
                        (str(folder), "is a directory point_in_time did not write"), (str(a_file), "is a file")):
        with pytest.raises(ConfigError, match=re.escape(msg) + ".*retrieval.overwrite=true"):
            check_output(cfg(target), p)
    assert commit_versions(theirs) == [0] and (folder / "notes.txt").exists()
    check_output(cfg(str(tmp_path / "empty_dir_ok")), p)
    run_stage("point_in_time", StageContext(spark, load_config(None, [
        f"retrieval.input={us_src}", "retrieval.input_format=parquet", f"retrieval.output={theirs}",
        "retrieval.overwrite=true"]), p))
    assert spark.read.format("delta").load(theirs).count() == 40
    assert snapshot(theirs).properties[WRITER_PROPERTY] == WRITER    # ours from now on
    # Parquet output: the marker file says who wrote it.
    pq_out = str(tmp_path / "pq_out")
    run_stage("point_in_time", StageContext(spark, load_config(None, [
        f"retrieval.input={us_src}", "retrieval.input_format=parquet", f"retrieval.output={pq_out}",
        "retrieval.output_format=parquet"]), p))
    assert os.path.exists(os.path.join(pq_out, PARQUET_MARKER)) and spark.read.parquet(pq_out).count() == 40
    check_output(cfg(pq_out, us_src, "retrieval.output_format=parquet"), p)      # ours: may be replaced

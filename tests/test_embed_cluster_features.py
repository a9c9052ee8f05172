"""Embedding, clustering and visual features on real Spark + Delta + faiss."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.features.cluster import choose_centroid_version, train_kmeans
from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, column_comments, join_visual_features, merge_history, merge_upsert, read_features
from courier_spark.core.errors import FeatureVersionError
from courier_spark.features.assignment import assign_cluster_ids, item_visual_rows, similarity_features
from courier_spark.serving.versions import ServingVersions, assign_new_items

from .worlds import noise_png, save_untrained_encoder

EMB_SCHEMA = T.StructType([T.StructField("item_id", T.LongType(), False),
                           T.StructField("embedding", T.ArrayType(T.FloatType()), False)])
CTR_SCHEMA = T.StructType([T.StructField("event_id", T.StringType(), False),
                           T.StructField("item_id", T.LongType(), False),
                           T.StructField("hist_item_ids", T.ArrayType(T.LongType()), True)])


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def emb_frame(spark, ids, vecs):
    return spark.createDataFrame([(int(i), [float(v) for v in e]) for i, e in zip(ids, vecs)], EMB_SCHEMA)


def brute_force(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d2 = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(3)
    ids = np.arange(1, 101, dtype=np.int64)          # items 101..110 exist but have no embedding
    return ids, unit(rng, len(ids), 16), unit(rng, 6, 16)


def test_udf_cluster_ids_and_simscores_equal_numpy(spark, vectors):
    ids, x, c = vectors
    emb = emb_frame(spark, ids, x)
    got = assign_cluster_ids(emb, c, spark).toPandas().sort_values("item_id")
    exp_id, exp_d = brute_force(x, c)
    assert got["item_id"].tolist() == ids.tolist()
    assert (got["cluster_id"].to_numpy() == exp_id).all()
    np.testing.assert_allclose(got["distance"].to_numpy(), exp_d, atol=1e-5)

    E = {int(i): v.astype(np.float64) for i, v in zip(ids, x)}
    cid = {int(i): int(k) for i, k in zip(ids, exp_id)}
    hists = {"e0": [], "e1": None, "e2": [5], "e3": [1, 2, 105], "e4": [9, 8, 7, 6, 5],
             "e5": list(range(10, 40)), "e6": [104, 3, 3, 103], "e7": [1, 2, 3]}
    targets = {"e0": 1, "e1": 2, "e2": 3, "e3": 4, "e4": 50, "e5": 60, "e6": 70, "e7": 107}  # 107: no embedding
    ctr = spark.createDataFrame([(e, targets[e], h) for e, h in hists.items()], CTR_SCHEMA)
    cids = assign_cluster_ids(emb, c, spark)
    for bc in (False, True):
        rows = {r["event_id"]: r for r in similarity_features(ctr, emb, cids, k=5, broadcast_embeddings=bc).collect()}
        assert set(rows) == set(hists)
        for e, h in hists.items():
            latest = list(reversed(h or []))[:5] + [None] * 5
            t = targets[e]
            exp_sims = [None if (j is None or j not in E or t not in E) else
                        E[t] @ E[j] / np.linalg.norm(E[t]) / np.linalg.norm(E[j]) for j in latest[:5]]
            exp_cids = [cid.get(j) if j is not None else None for j in latest[:5]]
            r = rows[e]
            assert len(r["sim_scores"]) == 5 and len(r["hist_cluster_ids"]) == 5
            assert r["hist_cluster_ids"] == exp_cids, e
            assert [s is None for s in r["sim_scores"]] == [s is None for s in exp_sims], e
            np.testing.assert_allclose([s for s in r["sim_scores"] if s is not None],
                                       [s for s in exp_sims if s is not None], atol=1e-5)
            assert r["target_cluster_id"] == cid.get(t)


def test_incremental_assignment_equals_full(spark, vectors, tmp_path):
    ids, x, c = vectors
    path = str(tmp_path / "item_visual")
    emb_all = emb_frame(spark, ids, x)
    # The feature table already holds items 1..70 for (c0001, m/v0001).
    old = emb_all.filter(F.col("item_id") <= 70)
    merge_history(spark, item_visual_rows(assign_cluster_ids(old, c, spark), "m/v0001", "c0001"), path, ["item_id"])
    new = assign_new_items(spark, emb_all, c, ServingVersions("m", "m/v0001", "c0001"), path).toPandas()
    assert sorted(new["item_id"]) == list(range(71, 101))   # only the items not yet assigned
    inc = (spark.read.format("delta").load(path).toPandas()
           .rename(columns={"courier_cluster_id": "cluster_id"})[["item_id", "cluster_id", "distance"]])
    inc = pd.concat([inc, new], ignore_index=True)
    full = assign_cluster_ids(emb_all, c, spark).toPandas()
    m = inc.merge(full, on="item_id")
    assert len(inc) == len(full) == len(m) == 100
    assert (m["cluster_id_x"] == m["cluster_id_y"]).all()
    assert (m["distance_x"] == m["distance_y"]).all()  # bit-identical, whatever the batch
    # A new centroid version makes every item "new" again.
    assert assign_new_items(spark, emb_all, c, ServingVersions("m", "m/v0001", "c0002"), path).count() == 100


def test_merge_rerun_time_travel_and_missing_version(spark, tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "iv")
    rows = spark.createDataFrame(
        [(i, int(rng.integers(0, 6)), float(rng.random()), "m/v1", "c0001") for i in range(1, 101)],
        "item_id long, courier_cluster_id int, distance float, model_version string, centroid_version string")
    s1 = merge_upsert(spark, rows, path, ["item_id"], ITEM_VISUAL_COMMENTS)
    assert s1["inserted"] == 100
    v1 = read_features(spark, path).toPandas().sort_values("item_id").reset_index(drop=True)
    s2 = merge_upsert(spark, rows, path, ["item_id"], ITEM_VISUAL_COMMENTS)
    assert (s2["inserted"], s2["updated"]) == (0, 0)
    v2 = read_features(spark, path).toPandas().sort_values("item_id").reset_index(drop=True)
    assert len(v2) == 100 and v2.equals(v1)  # values and updated_at unchanged
    # Change 10 items' values: only they get a new updated_at.
    changed = rows.withColumn("courier_cluster_id", F.when(F.col("item_id") <= 10, F.lit(99))
                              .otherwise(F.col("courier_cluster_id")))
    s3 = merge_upsert(spark, changed, path, ["item_id"], ITEM_VISUAL_COMMENTS)
    assert (s3["inserted"], s3["updated"]) == (0, 10)
    v3 = read_features(spark, path).toPandas().sort_values("item_id").reset_index(drop=True)
    moved = v3["updated_at"] != v1["updated_at"]
    assert moved.sum() == 10 and (v3.loc[moved, "item_id"] <= 10).all() and len(v3) == 100
    # Time travel: the version before the change has the old values.
    old = read_features(spark, path, version=s2["version"]).toPandas().sort_values("item_id").reset_index(drop=True)
    assert old.equals(v1)
    with pytest.raises(FeatureVersionError, match=r"no version 42; available versions: 0\.\.3"):
        read_features(spark, path, version=42)
    with pytest.raises(FeatureVersionError, match="no feature table"):
        read_features(spark, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="repeats key"):
        merge_upsert(spark, rows.unionByName(rows.limit(2)), path, ["item_id"], ITEM_VISUAL_COMMENTS)
    assert column_comments(spark, path)["courier_cluster_id"].startswith("Nearest COURIER centroid")
    # A consumer joins by key.
    samples = spark.createDataFrame([("e1", 5, [1, 2])], CTR_SCHEMA)
    imp = spark.createDataFrame([("e1", [0.5], [3])], "event_id string, sim_scores array<float>, "
                                                        "hist_cluster_ids array<int>")
    j = join_visual_features(samples, read_features(spark, path), imp).first()
    assert j["courier_cluster_id"] == int(v3.loc[v3.item_id == 5, "courier_cluster_id"].iloc[0])
    assert j["sim_scores"] == [0.5]


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(11)
    centres = unit(rng, 5, 32)
    labels = rng.integers(0, 5, 1500)
    x = centres[labels] + 0.05 * rng.normal(size=(1500, 32)).astype(np.float32)
    cent, stats = train_kmeans(x, k=5, niter=20, seed=1, max_points_per_centroid=256, nredo=3)
    assert cent.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assign, _ = brute_force(xn, cent)
    mapping = {b: set(assign[labels == b]) for b in range(5)}
    assert all(len(v) == 1 for v in mapping.values())                     # each blob -> one cluster
    assert len({next(iter(v)) for v in mapping.values()}) == 5            # distinct clusters
    assert sorted(stats["size_histogram"].values()) and stats["empty_clusters"] == 0
    assert sorted(np.bincount(assign, minlength=5)) == sorted(np.bincount(labels, minlength=5))
    assert stats["n_train"] == 1280 and 0 < stats["inertia"] < 1500 * 0.1
    with pytest.raises(ValueError, match="cannot make 10 clusters from 5 vectors"):
        train_kmeans(x[:5], k=10)


def test_centroid_version_rule():
    p = {"model_version": "m/v1", "k": 4}
    assert choose_centroid_version({}, "auto", p) == ("c0001", False)
    have = {"c0001": {"params": {"model_version": "m/v1", "k": 3}}, "c0002": {"params": p}}
    assert choose_centroid_version(have, "auto", p) == ("c0002", True)
    assert choose_centroid_version(have, "auto", {**p, "k": 8}) == ("c0003", False)
    assert choose_centroid_version(have, "c0001", p) == ("c0001", True)


# ----------------------------------------------------------- embedding job + stages

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return save_untrained_encoder(str(tmp_path_factory.mktemp("root") / "models"), embed_dim=32, image_size=24)


def _items(spark, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        if i % 10 == 3:
            img, status = None, "missing"
        elif i % 10 == 7:
            img, status = b"\x89PNG not really", "ok"     # bytes that decode_image rejects
        else:
            img, status = noise_png(rng, 28 + (i % 3) * 4), "ok"  # sizes differ: decode_image resizes
        rows.append((i, f"cat{i % 3}", img, status))
    return spark.createDataFrame(rows, "item_id long, category string, image binary, image_status string")


def test_embed_equals_direct_forward(spark, artifact):
    import torch

    from courier_spark.features.embed import embed_items
    from training.images import decode_image
    items = _items(spark, 30)
    got = {r["item_id"]: np.array(r["embedding"], np.float32)
           for r in embed_items(items, artifact, batch_size=4).collect()}
    assert sorted(got) == [i for i in range(1, 31) if i % 10 not in (3, 7)]
    enc = artifact.load_encoder()
    src = {r["item_id"]: r["image"] for r in items.collect()}
    ids = sorted(got)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            enc(torch.from_numpy(np.stack([decode_image(src[i], 24) for i in ids]))), dim=1).numpy()
    out = np.stack([got[i] for i in ids])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_stages_end_to_end_and_rerun(spark, artifact, tmp_path):
    import os
    import shutil

    from courier_spark.core.config import load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.pipeline import StageContext, run_stage

    paths = TablePaths.for_root(str(tmp_path / "ds"))
    shutil.copytree(os.path.dirname(os.path.dirname(artifact.path)), paths.models)
    _items(spark, 60, seed=1).write.format("delta").save(paths.silver_items)
    rng = np.random.default_rng(5)
    ctr = [(f"e{i}", int(rng.integers(1, 61)), [int(v) for v in rng.integers(1, 61, int(rng.integers(0, 8)))])
           for i in range(80)]
    (spark.createDataFrame(ctr, CTR_SCHEMA).withColumn("split", F.lit("train"))
     .write.format("delta").save(paths.ctr_samples))
    cfg = load_config(None, ["embed.batch_size=8", "cluster.k=4", "cluster.niter=5", "cluster.nredo=1"])
    ctx = StageContext(spark, cfg, paths)

    e = run_stage("embed", ctx)
    assert e.items_in == 60 and e.embedded == 48
    assert e.not_embedded == {"missing": 6, "decode_failed_at_embed": 6}
    assert e.max_norm_error < 1e-5 and e.model_version == "courier/v0001"

    c1 = run_stage("cluster", ctx)
    assert c1.centroid_version == "c0001" and not c1.reused_version
    assert sum(c1.all_items["size_histogram"].values()) == 4 and c1.all_items["n_items"] == 48
    c2 = run_stage("cluster", ctx)                              # same inputs + params: same version, replaced
    assert c2.centroid_version == "c0001" and c2.reused_version and c2.max_centroid_change == 0.0
    cents = spark.read.format("delta").load(paths.centroids)
    assert cents.count() == 4 and cents.select("cluster_id").distinct().count() == 4
    assert json.loads(cents.first()["params"])["k"] == 4

    f1 = run_stage("features", ctx)
    assert f1.item_visual.merge["inserted"] == 48
    assert f1.impression_visual["merge"]["inserted"] == 80
    iv1 = read_features(spark, paths.impression_visual_features).toPandas().sort_values("event_id")
    f2 = run_stage("features", ctx)                             # re-run: nothing new, nothing rewritten
    assert f2.item_visual.assigned_this_run == 0
    assert (f2.impression_visual["merge"]["inserted"], f2.impression_visual["merge"]["updated"]) == (0, 0)
    iv2 = read_features(spark, paths.impression_visual_features).toPandas().sort_values("event_id")
    assert len(iv2) == 80 and iv2.reset_index(drop=True).equals(iv1.reset_index(drop=True))
    assert set(iv2["centroid_version"]) == {"c0001"}
    assert spark.read.format("delta").load(paths.item_embeddings).count() == 48


def test_embedding_matrix_reshapes_sliced_arrow_lists_and_rejects_ragged_ones():
    import pyarrow as pa

    from courier_spark.features.assignment import embedding_matrix
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    arr = pa.array(list(map(list, x)), pa.list_(pa.float32()))
    np.testing.assert_array_equal(embedding_matrix(arr, 3), x)
    np.testing.assert_array_equal(embedding_matrix(arr.slice(1, 2), 3), x[1:3])   # a batch's slice
    np.testing.assert_array_equal(embedding_matrix(pa.chunked_array([arr.slice(0, 1), arr.slice(1)]), 3), x)
    with pytest.raises(ValueError, match="embedding dimension 2 != centroid dimension 3"):
        embedding_matrix(pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]], pa.list_(pa.float32())), 3)

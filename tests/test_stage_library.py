"""Library functions the stages call (moved out of the stages): each checked
against a brute force on a tiny frame."""
from __future__ import annotations

import math

import numpy as np
import pytest

from courier_spark.features.cluster import assignment_stats, centroid_change, nearest_centroids, training_sample
from courier_spark.features.embed import embedding_accounting
from courier_spark.features.assignment import impression_visual_stats


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_assignment_stats_equal_numpy(spark):
    rng = np.random.default_rng(3)
    x, c = _unit(rng, 60, 8), _unit(rng, 5, 8)
    ids, dist = nearest_centroids(x, c)
    df = spark.createDataFrame([(i, int(a), float(b)) for i, (a, b) in enumerate(zip(ids, dist))],
                               "item_id long, cluster_id int, distance float")
    got = assignment_stats(df, k=6, tiny=5)   # cluster 5 has no items
    sizes = np.bincount(ids, minlength=6)
    assert got["n_items"] == 60 and got["empty_clusters"] == 1 >= (sizes == 0).sum()
    assert got["min_size"] == sizes.min() and got["max_size"] == sizes.max()
    assert got["tiny_clusters"] == int(((sizes > 0) & (sizes < 5)).sum())
    assert got["inertia"] == pytest.approx(float(dist.astype(np.float64).sum()), rel=1e-6)
    cos = np.einsum("ij,ij->i", x, c[ids]).mean()
    assert got["mean_cosine_to_centroid"] == pytest.approx(float(cos), abs=1e-5)


def test_training_sample_is_all_rows_or_a_fixed_sample(spark):
    df = spark.range(100).withColumnRenamed("id", "item_id")
    assert training_sample(df, 100, 100, seed=1) is df
    a = sorted(r[0] for r in training_sample(df, 100, 30, seed=1).collect())
    b = sorted(r[0] for r in training_sample(df, 100, 30, seed=1).collect())
    c = sorted(r[0] for r in training_sample(df, 100, 30, seed=2).collect())
    assert len(a) == 30 and a == b and a != c


def test_centroid_change():
    a = np.zeros((3, 2), np.float32)
    b = a.copy()
    b[1, 1] = -0.25
    assert centroid_change(a, b) == 0.25 and centroid_change(a, a) == 0.0
    assert math.isinf(centroid_change(a, np.zeros((4, 2), np.float32)))


def test_impression_visual_stats_equal_brute_force(spark):
    rows = [(1, 3, [0.5, None, 0.1]), (2, None, [None, None, None]), (3, 4, [0.2, 0.3, None]), (4, 2, [None, None, 0.4])]
    df = spark.createDataFrame(rows, "event_id long, target_cluster_id int, sim_scores array<float>")
    st = impression_visual_stats(df)
    assert st.events == 4 and st.target_cluster_coverage == 0.75
    assert st.slot0_sim_coverage == 0.5                      # slot 0 null for events 2 and 4
    assert st.slot0_sim_mean == pytest.approx((0.5 + 0.2) / 2)
    assert st.mean_filled_slots == pytest.approx((2 + 0 + 2 + 1) / 4)


def test_embedding_accounting_by_reason(spark):
    items = spark.createDataFrame(
        [(1, b"x", "ok"), (2, None, "missing"), (3, None, "undecodable"), (4, b"y", "ok"), (5, b"z", "ok")],
        "item_id long, image binary, image_status string")
    v = np.array([0.6, 0.8], np.float32)
    written = spark.createDataFrame([(1, v.tolist()), (4, (v * 1.01).tolist())], "item_id long, embedding array<float>")
    acc = embedding_accounting(items, written)
    assert acc.embedded == 2 and acc.dim == acc.dim_min == 2
    assert acc.not_embedded == {"missing": 1, "undecodable": 1, "decode_failed_at_embed": 1}
    assert acc.max_norm_error == pytest.approx(0.01, abs=1e-6) and acc.balanced(5) and not acc.balanced(6)

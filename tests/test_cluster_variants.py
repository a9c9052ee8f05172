"""In-memory cluster-ID variants (oracle clusters, k-means seeds) and paired differences."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from courier_spark.evaluate.cluster_variants import (
    factor_clusters, kmeans_clusters, paired_difference, with_cluster_ids,
)


def test_factor_clusters_one_id_per_combination():
    truth = pd.DataFrame({"item_id": [10, 11, 12, 13], "colour": [0, 0, 1, 1], "pattern": [2, 3, 2, 2]})
    c = factor_clusters(truth, ["colour", "pattern"])
    assert c[10] != c[11] and c[12] == c[13] and len(set(c)) == 3
    assert len(set(factor_clusters(truth, ["colour"]))) == 2


def test_with_cluster_ids_target_and_sequence_newest_first():
    df = pd.DataFrame({"item_id": [10, 99], "hist_item_ids": [[11, 12, 99], []]})
    clusters = pd.Series([5, 6, 7], index=[10, 11, 12])
    out = with_cluster_ids(df, clusters)
    assert out["target_cluster_id"].tolist() == [5, -1]
    assert [list(h) for h in out["hist_cluster_ids"]] == [[-1, 7, 6], []]
    assert "target_cluster_id" not in df.columns  # the input frame is untouched


def test_kmeans_clusters_recover_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4] * 10
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 8)).astype(np.float32) for c in centres])
    ids = np.arange(1000, 1200)
    cl = kmeans_clusters(ids, x, 4, seed=3)
    groups = np.repeat(np.arange(4), 50)
    # each true group is one cluster and the clusters differ
    assert all(cl.iloc[groups == g].nunique() == 1 for g in range(4))
    assert cl.nunique() == 4


def test_paired_difference_hand_computed():
    d = paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 1.5])   # differences 0.5, 1.0, 2.5
    assert d.mean == pytest.approx(4 / 3)
    assert d.sd == pytest.approx(np.std([0.5, 1.0, 2.5], ddof=1))
    # t = mean / (sd / sqrt(n)) = 2.219 on 2 degrees of freedom: two-sided p = 0.1567
    t = (4 / 3) / (np.std([0.5, 1.0, 2.5], ddof=1) / np.sqrt(3))
    assert t == pytest.approx(2.2188, abs=1e-4)
    assert d.p_value == pytest.approx(0.1567, abs=5e-4)
    assert d.n == 3 and not d.real and paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 1.5], alpha=0.2).real
    strong = paired_difference([1.0, 1.1, 1.2], [0.0, 0.0, 0.1])   # differences 1.0, 1.1, 1.1
    assert strong.real and strong.p_value < 0.01
    assert paired_difference([1.0, 1.0], [0.5, 0.5]).p_value == 0.0      # no spread, a shift
    assert paired_difference([1.0, 1.0], [1.0, 1.0]).p_value == 1.0
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_kmeans_seed_frames_run_zero_as_stored_later_runs_reclustered():
    from courier_spark.evaluate.cluster_variants import kmeans_seed_frames
    rng = np.random.default_rng(1)
    ids = np.arange(500, 560)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    train = pd.DataFrame({"item_id": ids[:30], "hist_item_ids": [list(ids[30:33])] * 30,
                          "target_cluster_id": 99, "hist_cluster_ids": [[99, 99, 99]] * 30})
    test = train.iloc[:5].copy()
    f = kmeans_seed_frames((train, test), ids, x, k=4, first_seed=10, log=lambda m: None)
    assert f(0)[0] is train and f(0)[1] is test
    tr2, te2 = f(2)
    want = kmeans_clusters(ids, x, 4, 12)               # seed first_seed + 2
    assert tr2["target_cluster_id"].tolist() == want.loc[ids[:30]].tolist()
    assert list(te2["hist_cluster_ids"].iloc[0]) == want.loc[ids[30:33]].tolist()[::-1]
    assert not tr2["target_cluster_id"].eq(99).any()

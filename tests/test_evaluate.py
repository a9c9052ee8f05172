"""Evaluation layer: metrics vs hand computation, the DNN and LightGBM CTR
models on toy frames with a known visual click signal, the runner's outputs,
metrics.json and the report."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from courier_spark.core.errors import ConfigError

from courier_spark.core.config import load_config
from courier_spark.core.schema import DnnConfig, EvaluateConfig
from courier_spark.evaluate.frames import TOY_VARIANTS, make_toy_ctr_frames
from courier_spark.evaluate.metrics import (auc, gauc, grouped_auc, is_real_difference,
                                            per_category_auc, per_category_lift, summarize_seeds)

# ---------------------------------------------------------------- metrics


def test_auc_matches_hand_computation_with_ties():
    # 4 (pos, neg) pairs: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # tie between a positive and a negative counts 1/2: (0.5 + 1 + 1 + 1) / 4
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="both clicks and non-clicks"):
        auc([1, 1], [0.2, 0.3])


def test_gauc_excludes_single_class_groups_and_states_weighting():
    labels = [1, 0, 0] + [0, 1, 0, 1] + [1, 1] + [0, 0, 0]
    scores = [0.9, 0.1, 0.5] + [0.5, 0.5, 0.2, 0.9] + [0.3, 0.7] + [0.1, 0.2, 0.3]
    groups = ["a"] * 3 + ["b"] * 4 + ["only_clicks"] * 2 + ["no_clicks"] * 3
    # group a: AUC 1.0 (3 impressions); b: 0.875 (4); the other two have no AUC.
    g = gauc(labels, scores, groups, weighting="impressions")
    assert g.value == pytest.approx((3 * 1.0 + 4 * 0.875) / 7)
    assert (g.n_groups_used, g.n_groups_total, g.n_rows_used) == (2, 4, 7)
    assert g.weighting == "impressions"
    u = gauc(labels, scores, groups, weighting="uniform")
    assert u.value == pytest.approx((1.0 + 0.875) / 2)
    assert u.weighting == "uniform" and u.n_groups_used == 2
    with pytest.raises(ValueError, match="weighting"):
        gauc(labels, scores, groups, weighting="clicks")
    none = gauc([1, 1, 0], [0.1, 0.2, 0.3], ["x", "x", "y"])
    assert math.isnan(none.value) and none.n_groups_used == 0


def test_grouped_auc_equals_sklearn_per_group_with_ties():
    rng = np.random.default_rng(3)
    n = 600
    groups = rng.integers(0, 12, n)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.random(n) * 0.5 + 0.3 * labels, 1)   # many ties
    g = grouped_auc(labels, scores, groups).set_index("group")
    for k in np.unique(groups):
        m = groups == k
        if 0 < labels[m].sum() < m.sum():
            assert g.loc[k, "auc"] == pytest.approx(roc_auc_score(labels[m], scores[m]), abs=1e-12)


def test_per_category_auc_and_lift():
    df = pd.DataFrame({
        "variant": ["baseline"] * 5 + ["v"] * 5,
        "category": ["a", "a", "a", "b", "b"] * 2,
        "label": [1, 0, 0, 1, 1] * 2,
        "score": [0.2, 0.3, 0.1, 0.5, 0.6, 0.9, 0.3, 0.1, 0.5, 0.6],
    })
    pc = per_category_auc(df)
    assert list(pc.columns) == ["variant", "category", "n", "n_pos", "n_neg", "auc"]
    a = pc.set_index(["variant", "category"])
    assert a.loc[("baseline", "a"), "auc"] == pytest.approx(0.5)
    assert a.loc[("v", "a"), "auc"] == pytest.approx(1.0)
    assert math.isnan(a.loc[("v", "b"), "auc"])          # only clicks: no AUC
    lift = per_category_lift(pc).set_index(["variant", "category"])
    assert lift.loc[("v", "a"), "lift_auc_pct"] == pytest.approx(100.0)


def test_seed_summary_and_real_difference_rule():
    s = summarize_seeds([1.0, 2.0, 3.0])
    assert (s.mean, s.std) == (pytest.approx(2.0), pytest.approx(1.0))
    assert math.isnan(summarize_seeds([0.7]).std)
    # Welch's t-test: diff 0.10 vs seed std 0.01 -> real
    assert is_real_difference([0.70, 0.71, 0.72], [0.60, 0.61, 0.62])
    # diff 0.01 vs seed std 0.02: t = 0.61, p = 0.57 -> within seed noise, unless alpha is above p
    assert not is_real_difference([0.70, 0.72, 0.74], [0.69, 0.71, 0.73])
    assert is_real_difference([0.70, 0.72, 0.74], [0.69, 0.71, 0.73], alpha=0.6)
    assert not is_real_difference([0.70, 0.72, 0.74], [0.69, 0.71, 0.73], alpha=0.5)
    # one seed: the spread is unknown, so never "real"
    assert not is_real_difference([0.9], [0.5])


def test_evaluate_config_section_defaults_overrides_and_errors():
    ev = load_config(None, []).evaluate
    assert ev.seeds == [0, 1, 2] and ev.model_kinds == ["dnn", "lgbm"] and ev.main_model == "dnn"
    assert len(ev.dnn.mlp_hidden) + 1 == 5          # 5-layer MLP by default
    ev = load_config(None, ["evaluate.dnn.epochs=3", "evaluate.seeds=[4,5]",
                                                 "evaluate.gauc_weighting=uniform"]).evaluate
    assert ev.dnn.epochs == 3 and ev.seeds == [4, 5] and ev.gauc_weighting == "uniform"
    with pytest.raises(ConfigError, match="evaluate.dnn.epoch"):
        load_config(None, ["evaluate.dnn.epoch=3"]).evaluate
    with pytest.raises(ConfigError, match="model_kinds"):
        EvaluateConfig(model_kinds=["xgboost"])
    with pytest.raises(ConfigError, match="divisible"):
        DnnConfig(emb_dim=10, attn_heads=4)

# ---------------------------------------------------------------- toy frames


def test_toy_frames_follow_the_contract():
    frames = make_toy_ctr_frames(n_users=20, n_items=200, seed=1)
    assert set(frames) == {n for n, _ in TOY_VARIANTS}
    tr, te = frames["courier_cluster_id"]
    for col in ("event_id", "request_id", "session_id", "user_id", "item_id", "category", "position",
                "label", "title", "price", "query", "hist_item_ids", "target_embedding", "sim_scores",
                "target_cluster_id", "hist_cluster_ids"):
        assert col in tr.columns
    assert set(tr["event_id"]).isdisjoint(te["event_id"])
    assert set(te["event_id"]) == set(frames["random_cluster_id"][1]["event_id"])
    # slot 0 = most recent click: its cluster is the cluster of the last history item
    row = tr[tr["hist_item_ids"].map(len) > 0].iloc[-1]
    last_item_rows = pd.concat([tr, te])
    last_cluster = last_item_rows.loc[last_item_rows["item_id"] == row["hist_item_ids"][-1],
                                      "target_cluster_id"]
    if len(last_cluster):
        assert row["hist_cluster_ids"][0] == last_cluster.iloc[0]
    miss = np.isnan(np.stack(tr["sim_scores"]))
    assert ((np.stack(tr["hist_cluster_ids"]) < 0) <= miss).all()   # missing cluster -> missing score

# ---------------------------------------------------------------- models


def test_dnn_is_deterministic_for_a_seed():
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    tr, te = make_toy_ctr_frames(n_users=40, n_items=300, seed=2)["courier_cluster_id"]
    cfg = DnnConfig(epochs=1)
    a = score_dnn(train_dnn(tr, "cluster_id", cfg, seed=7), te)
    b = score_dnn(train_dnn(tr, "cluster_id", cfg, seed=7), te)
    c = score_dnn(train_dnn(tr, "cluster_id", cfg, seed=8), te)
    assert a.shape == (len(te),) and np.isfinite(a).all() and ((a > 0) & (a < 1)).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # rows without history / embedding still get finite scores (no NaN from empty attention)
    bare = te.head(4).copy()
    bare["hist_item_ids"] = [[] for _ in range(4)]
    bare["hist_cluster_ids"] = [np.full(10, -1) for _ in range(4)]
    bare["target_cluster_id"] = -1
    bare["title"], bare["query"], bare["price"], bare["category"] = None, None, np.nan, "unseen"
    m = train_dnn(tr, "cluster_id", cfg, seed=7)
    assert np.isfinite(score_dnn(m, bare)).all()


@pytest.mark.parametrize("feature", ["vector", "simscore"])
def test_dnn_other_image_features_train_and_score(feature):
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    tr, te = make_toy_ctr_frames(n_users=20, n_items=200, seed=3)["baseline"]
    m = train_dnn(tr, feature, DnnConfig(epochs=1), seed=0)
    s = score_dnn(m, te)
    assert s.shape == (len(te),) and np.isfinite(s).all()
    with pytest.raises(KeyError, match="sim_scores" if feature == "simscore" else "target_embedding"):
        score_dnn(m, te.drop(columns=["sim_scores", "target_embedding"]))


def test_lgbm_is_deterministic_and_scores_all_variants():
    from courier_spark.evaluate.lgbm import score_lgbm, train_lgbm
    tr, te = make_toy_ctr_frames(n_users=30, n_items=300, seed=4)["baseline"]
    for feature in ("none", "vector", "simscore", "cluster_id"):
        a = score_lgbm(train_lgbm(tr, feature, seed=1), te)
        assert a.shape == (len(te),) and np.isfinite(a).all()
    b = score_lgbm(train_lgbm(tr, "cluster_id", seed=1), te)
    assert np.array_equal(a, b)


def test_lgbm_train_rows_get_out_of_fold_statistics():
    from courier_spark.evaluate.ctr_stats import oof_stat
    keys = pd.Series(["i"] * 6)
    y = np.array([1, 1, 0, 0, 0, 0], dtype=float)
    folds = np.array([0, 0, 1, 1, 2, 2])
    ctr, _, stat = oof_stat(keys, y, folds, k=3, prior=0.5, w=0.0)
    # rows of fold 0 see only folds 1-2 (no clicks); rows of folds 1/2 see 2 clicks in 4 rows
    assert ctr.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert stat.sums.loc["i", "clicks"] == 2 and stat.sums.loc["i", "imps"] == 6

def test_ctr_statistics_out_of_fold_for_train_rows_full_train_for_others():
    from courier_spark.evaluate.ctr_stats import CtrStatistics, fold_of
    train = pd.DataFrame({"request_id": [f"r{i}" for i in range(8)], "item_id": [1, 1, 1, 1, 2, 2, 2, 2]})
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    st = CtrStatistics.fit(train, y, {"item": "item_id"}, folds=2, prior_weight=0.0)
    f = fold_of(train, 2)
    ctr, log_imps = st.train_values["item"]
    for r in range(8):   # brute force: same item, other fold
        other = (train["item_id"] == train["item_id"][r]).to_numpy() & (f != f[r])
        if other.any():
            assert ctr[r] == pytest.approx(y[other].mean())
            assert log_imps[r] == pytest.approx(np.log1p(other.sum() * 2))
    test = pd.DataFrame({"request_id": ["t0", "t1", "t2"], "item_id": [1, 2, 3]})
    ctr_t, imps_t = st.values(test)["item"]
    assert ctr_t[:2].tolist() == pytest.approx([0.75, 0.25]) and imps_t[:2].tolist() == pytest.approx([np.log1p(4)] * 2)
    assert imps_t[2] == 0.0   # unseen item: no impressions (its CTR falls back to the prior when smoothed)


def test_dnn_statistics_features_match_ctr_statistics():
    from courier_spark.evaluate.ctr_dnn import DnnPreprocessor
    from courier_spark.evaluate.ctr_stats import CtrStatistics
    tr, te = make_toy_ctr_frames(n_users=20, n_items=200, seed=1)["baseline"]
    y = tr["label"].to_numpy(float)
    prep = DnnPreprocessor.fit(tr, "none", DnnConfig(), y)
    ref = CtrStatistics.fit(tr, y, folds=DnnConfig().stat_folds, prior_weight=DnnConfig().stat_prior_weight)
    got_train = prep.transform(tr, prep.stats.train_values)["stats"].numpy()
    got_test = prep.transform(te)["stats"].numpy()

    def raw(vals: dict) -> np.ndarray:
        return np.stack([c for ctr, imps in vals.values()
                         for c in (np.log(np.clip(ctr, 1e-6, None) / y.mean()), imps)], 1)
    # Both splits are standardised with the mean / std of the train rows' (out-of-fold) values.
    mu, sd = raw(ref.train_values).mean(0), raw(ref.train_values).std(0)
    for got, vals in ((got_train, ref.train_values), (got_test, ref.values(te))):
        np.testing.assert_allclose(got, (raw(vals) - mu) / sd, rtol=1e-4, atol=1e-4)
    assert "stats" not in DnnPreprocessor.fit(tr, "none", DnnConfig(statistics=False), y).transform(te)


def test_sequence_cluster_ids_cover_the_whole_history_most_recent_first():
    from courier_spark.evaluate.ctr_frames import sequence_cluster_ids
    hist = pd.Series([[1, 2, 3], [], [4, 9], [2]])
    clusters = pd.Series([10, 20, 30, 40], index=[1, 2, 3, 4])
    got = sequence_cluster_ids(hist, clusters)
    assert [g.tolist() for g in got] == [[30, 20, 10], [], [-1, 40], [20]]


# ---------------------------------------------------------------- runner


@pytest.fixture(scope="module")
def toy_frames():
    return make_toy_ctr_frames(n_users=150, n_items=1500, seed=0, signal_strength=2.5)


@pytest.fixture(scope="module")
def evaluated(toy_frames):
    from courier_spark.evaluate.runner import evaluate_variants
    variants = [("baseline", "none"), ("courier_cluster_id", "cluster_id")]
    return evaluate_variants(toy_frames, variants, model_kinds=("dnn", "lgbm"), seeds=(0, 1, 2))


def test_runner_results_schema_and_cluster_id_beats_baseline(evaluated, toy_frames):
    results, _ = evaluated
    for col in ("variant", "image_feature", "model_kind", "n_seeds", "auc", "auc_std", "gauc", "gauc_std",
                "gauc_session", "gauc_session_std", "gauc_weighting", "lift_auc_pct", "lift_gauc_pct",
                "lift_gauc_session_pct", "auc_delta", "real", "real_gauc", "real_gauc_session"):
        assert col in results.columns, col
    assert len(results) == 4 and (results["n_seeds"] == 3).all()
    assert (results["gauc_weighting"] == "impressions").all()
    r = results.set_index(["variant", "model_kind"])
    for kind in ("dnn", "lgbm"):
        base, clu = r.loc[("baseline", kind)], r.loc[("courier_cluster_id", kind)]
        # beats the baseline by more than the seed spread (the runner's "real")
        assert clu["auc"] - base["auc"] > 2 * math.sqrt((clu["auc_std"] ** 2 + base["auc_std"] ** 2) / 2)
        assert bool(clu["real"]) and bool(clu["real_gauc"]) and clu["lift_auc_pct"] > 5
        assert not bool(base["real"]) and base["lift_auc_pct"] == 0


def test_runner_predictions_for_one_seed(evaluated, toy_frames):
    from courier_spark.evaluate.runner import PREDICTION_COLUMNS
    _, preds = evaluated
    n_test = len(toy_frames["baseline"][1])
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert len(preds) == 2 * 2 * n_test
    assert preds.groupby(["variant", "model_kind"])["event_id"].nunique().eq(n_test).all()
    assert preds["score"].between(0, 1).all() and set(preds["label"]) == {0, 1}


def test_metrics_json_keys(evaluated, tmp_path):
    from courier_spark.evaluate.runner import write_metrics_json
    results, _ = evaluated
    path = write_metrics_json(str(tmp_path / "out" / "metrics.json"), results)
    data = json.loads(open(path).read())
    assert data["main_model"] == "dnn" and data["baseline"] == "baseline"
    assert set(data["variants"]) == {"baseline", "courier_cluster_id"}
    entry = data["variants"]["courier_cluster_id"]
    for key in ("auc", "auc_std", "gauc", "gauc_std", "gauc_session", "gauc_session_std",
                "lift_auc_pct", "real"):
        assert key in entry, key
    assert entry["real"] is True and entry["gauc_weighting"] == "impressions"
    assert set(data["lgbm"]["variants"]) == {"baseline", "courier_cluster_id"}
    assert data["variants"]["courier_cluster_id"]["auc"] == pytest.approx(
        results.set_index(["variant", "model_kind"]).loc[("courier_cluster_id", "dnn"), "auc"])


def test_report_writes_markdown_and_plots(evaluated, tmp_path):
    from courier_spark.evaluate.report import write_report
    from courier_spark.evaluate.runner import per_category_results
    results, preds = evaluated
    _, truth = make_toy_ctr_frames(n_users=5, n_items=300, seed=0, return_truth=True)
    path = write_report(str(tmp_path / "reports"), results, per_category_results(preds),
                        {"Extra table": pd.DataFrame({"a": [1, 2]})},
                        (np.stack(truth["embedding"]), truth["category"], truth["style"]))
    text = open(path).read()
    for needle in ("Lift per method", "Ablations", "Vector / SimScore / Cluster ID", "courier_cluster_id",
                   "per_category_lift.png", "embedding_map.png", "Extra table", "impressions"):
        assert needle in text, needle
    for png in ("per_category_lift.png", "embedding_map.png"):
        assert os.path.getsize(tmp_path / "reports" / png) > 1000


def test_random_clusters_are_not_a_real_gain_for_lgbm(toy_frames):
    from courier_spark.evaluate.runner import evaluate_variants
    res, _ = evaluate_variants(toy_frames, [("baseline", "none"), ("random_cluster_id", "cluster_id")],
                               model_kinds=["lgbm"], seeds=[0, 1, 2])
    row = res.set_index("variant").loc["random_cluster_id"]
    # no real *gain* (paired runs may call the over-fitting loss of a random ID real)
    assert row["lift_auc_pct"] < 0.5 and not (bool(row["real"]) and row["lift_auc_pct"] > 0)


def test_runner_rejects_variants_on_different_test_rows(toy_frames):
    from courier_spark.evaluate.runner import evaluate_variants
    tr, te = toy_frames["courier_cluster_id"]
    frames = {"baseline": toy_frames["baseline"], "courier_cluster_id": (tr, te.iloc[:-5])}
    with pytest.raises(ValueError, match="test rows differ"):
        evaluate_variants(frames, [("baseline", "none"), ("courier_cluster_id", "cluster_id")],
                          model_kinds=["lgbm"], seeds=[0])
    with pytest.raises(KeyError, match="target_cluster_id"):
        evaluate_variants({"baseline": toy_frames["baseline"],
                           "c": (tr.drop(columns=["target_cluster_id"]), te)},
                          [("baseline", "none"), ("c", "cluster_id")], model_kinds=["lgbm"], seeds=[0])


def test_linear_probe_recovers_an_encoded_factor_and_not_a_random_one():
    from courier_spark.evaluate.probes import linear_probe_accuracy
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"colour": rng.integers(0, 8, 600), "pattern": rng.integers(0, 4, 600)})
    # colour one-hot (plus noise) is in the vectors, pattern is not
    x = np.eye(8)[labels["colour"]] * 3.0 + rng.normal(size=(600, 8))
    acc = linear_probe_accuracy(x, labels, factors=("colour", "pattern"))
    assert acc["colour"] > 0.9
    assert acc["pattern"] < 0.4          # chance is 0.25
    with pytest.raises(ValueError, match="label rows"):
        linear_probe_accuracy(x[:10], labels)


def test_probe_factors_add_the_backdrop_only_where_it_varies():
    from courier_spark.evaluate.probes import probe_factors
    looks = {"colour": [0, 1], "pattern": [0, 1], "shape": [0, 1]}
    assert probe_factors(pd.DataFrame(looks)) == ("colour", "pattern", "shape")
    assert probe_factors(pd.DataFrame({**looks, "backdrop": [-1, -1]})) == ("colour", "pattern", "shape")
    assert probe_factors(pd.DataFrame({**looks, "backdrop": [3, 5]})) == ("colour", "pattern", "shape", "backdrop")

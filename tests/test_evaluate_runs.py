"""The runner's per-run frames (k-means seed per run), paired "real" and new-item AUC."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from courier_spark.evaluate.metrics import auc
from courier_spark.evaluate.runner import evaluate_variants, summarize_runs
from courier_spark.evaluate.frames import make_toy_ctr_frames


@pytest.fixture(scope="module")
def toy():
    return make_toy_ctr_frames(n_users=120, n_items=1000, seed=1, signal_strength=2.5)


def _runs(variant_auc: list, base_auc: list) -> pd.DataFrame:
    rows = []
    for name, vals in (("baseline", base_auc), ("v", variant_auc)):
        for s, a in enumerate(vals):
            rows.append({"variant": name, "image_feature": "none" if name == "baseline" else "cluster_id",
                         "model_kind": "lgbm", "seed": s, "n_train": 1, "n_test": 1, "train_seconds": 0.0,
                         "auc": a, "gauc": a, "gauc_session": a, "auc_new_items": a,
                         "gauc_groups": 1, "gauc_session_groups": 1})
    return pd.DataFrame(rows)


def test_real_comes_from_paired_differences():
    # every run +0.01 over the same-seed baseline: the paired sd is 0, so real,
    # although the pooled seed std (0.01) would call a 0.01 gap noise
    res = summarize_runs(_runs([0.71, 0.72, 0.73], [0.70, 0.71, 0.72]), "baseline").set_index("variant")
    assert bool(res.loc["v", "real"]) and bool(res.loc["v", "real_gauc"])
    assert res.loc["v", "p_auc"] < 1e-3 and np.isnan(res.loc["baseline", "p_auc"])
    # same means, pairs that disagree in sign: not real
    res = summarize_runs(_runs([0.73, 0.71, 0.72], [0.70, 0.72, 0.72]), "baseline").set_index("variant")
    assert not bool(res.loc["v", "real"])


def test_seed_frames_are_built_per_run_and_new_item_auc_is_the_subset_auc(toy):
    train, test = toy["courier_cluster_id"]
    rng = np.random.default_rng(0)
    test = test.assign(new_item=rng.random(len(test)) < 0.3)
    shuffled = test.assign(target_cluster_id=rng.permutation(test["target_cluster_id"].to_numpy()))
    calls = []

    def frames(i: int):
        calls.append(i)
        # run 1 gets cluster IDs that carry no signal: its AUC must drop
        return (train, shuffled if i == 1 else test)

    res, preds = evaluate_variants({"baseline": (train, test.drop(columns=["target_cluster_id"])),
                                    "clu": frames}, [("baseline", "none"), ("clu", "cluster_id")],
                                   model_kinds=("lgbm",), seeds=(0, 1, 2))
    assert calls == [0, 1, 2]
    row = res.set_index("variant").loc["clu"]
    a = row["auc_seeds"]
    assert a[1] < a[0] - 0.02 and a[1] < a[2] - 0.02
    # new-item AUC of the first seed = AUC over the flagged rows of its predictions
    p = preds[preds["variant"] == "clu"].merge(test[["event_id", "new_item"]], on="event_id")
    assert row["auc_new_items_seeds"][0] == pytest.approx(auc(p.loc[p["new_item"], "label"],
                                                              p.loc[p["new_item"], "score"]))
    assert np.isfinite(row["lift_auc_new_items_pct"])


def test_parallel_fits_give_the_sequential_results(toy):
    """Fits in spawned processes (evaluate.parallel_fits) are the same fits:
    identical metrics and predictions, in the same order, as one at a time."""
    from courier_spark.core.schema import EvaluateConfig
    frames = {"baseline": (toy["courier_cluster_id"][0].drop(columns=["target_cluster_id"]),
                           toy["courier_cluster_id"][1].drop(columns=["target_cluster_id"])),
              "clu": toy["courier_cluster_id"]}
    variants = [("baseline", "none"), ("clu", "cluster_id")]
    out = {}
    for n in (1, 2):
        cfg = EvaluateConfig(parallel_fits=n)
        out[n] = evaluate_variants(frames, variants, model_kinds=("dnn", "lgbm"), seeds=(0, 1), cfg=cfg)
    cols = ["variant", "model_kind", "auc", "gauc", "auc_seeds"]
    pd.testing.assert_frame_equal(out[1][0][cols], out[2][0][cols])
    pd.testing.assert_frame_equal(out[1][1], out[2][1])


def test_lgbm_features_do_not_depend_on_the_process_string_hash(tmp_path):
    """The text-history features are bit-identical under different
    PYTHONHASHSEEDs (a spawned fit gets its own): a set's iteration order once
    changed the summation order of the title-token shares."""
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "features.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from courier_spark.evaluate.frames import make_toy_ctr_frames\n"
        "from courier_spark.evaluate.lgbm import train_lgbm, _features\n"
        "tr, te = make_toy_ctr_frames(n_users=60, n_items=400, seed=1)['courier_cluster_id']\n"
        "m = train_lgbm(tr, 'cluster_id', 0)\n"
        "np.save(sys.argv[1], _features(te, m, None).to_numpy(float))\n")
    repo = Path(__file__).resolve().parents[1]
    got = []
    for h in ("0", "1", "2", "3"):
        out = tmp_path / f"x{h}.npy"
        subprocess.run([sys.executable, str(script), str(out)], check=True, cwd=repo, capture_output=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": h, "PYTHONPATH": str(repo)})
        got.append(np.load(out))
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])

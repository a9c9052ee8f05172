"""Training on real Spark + petastorm + Horovod: loss goes down, embeddings
learn co-clicks, and a killed run resumes from its checkpoint."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from courier_spark.core.config import load_config
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import StageContext, run_stage
from training.artifact import load_artifact

from .conftest import tiny_config

pytestmark = pytest.mark.slow

TRAIN = {"train.backbone": "small_cnn", "train.embed_dim": 64, "train.image_size": 32,
         "train.batch_size": 16, "train.loader_workers": 1, "train.lr": 3e-4}


@pytest.fixture(scope="module")
def samples_root(tiny_dataset):
    return tiny_dataset[0].paths.root


def test_horovod_training_learns(spark, samples_root, capsys):
    cfg = tiny_config(**TRAIN, **{"train.steps": 60, "train.backend": "horovod", "train.num_proc": 2,
                                  "train.log_every": 5})
    ctx = StageContext(spark, cfg, TablePaths.for_root(samples_root))
    out = run_stage("train", ctx)
    printed = capsys.readouterr().err
    # rank 0's progress reaches the driver once per line (via progress.log, see report_progress)
    for s in (1, *range(5, 61, 5)):
        assert printed.count(f"courier step {s}/60 ") == 1, s
    m = out.metrics
    print(f"\nloss {m['initial_loss']:.3f} -> {m['final_loss']:.3f}; co-click cosine "
          f"{m['co_click_cosine']:.3f} vs random {m['random_pair_cosine']:.3f}")
    assert m["steps"] == 60
    assert m["final_loss"] < 0.85 * m["initial_loss"]
    assert m["co_click_cosine"] > m["random_pair_cosine"] + 0.02
    art = load_artifact(ctx.paths.models, "courier")
    assert art.data_versions["silver/pretrain_samples"] >= 0
    assert art.config["backend"] == "horovod" and art.metrics["steps"] == 60
    enc = art.load_encoder()
    assert enc.embed_dim == 64


def test_torch_distributor_training_loop(spark, samples_root):
    """The same training loop on Spark's TorchDistributor (DDP over gloo, 2 processes)."""
    cfg = tiny_config(**TRAIN, **{"train.steps": 60, "train.backend": "torch_distributor", "train.num_proc": 2,
                                  "train.method": "courier_proj_head", "train.log_every": 2})
    ctx = StageContext(spark, cfg, TablePaths.for_root(samples_root))
    out = run_stage("train", ctx)
    m = out.metrics
    art = load_artifact(ctx.paths.models, "courier_proj_head")
    losses = [h[1] for h in art.metrics["history"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5   # 5 logged points = 10 steps each end
    print(f"\ntorch_distributor: loss {first:.3f} -> {last:.3f} ({[round(x, 2) for x in losses]})")
    assert out.complete and m["steps"] == 60
    assert last < 0.95 * first
    assert art.config["backend"] == "torch_distributor" and art.config["num_proc"] == 2
    assert art.metrics["checkpoint_steps"][-1] == 60


def test_killed_training_resumes_from_checkpoint(spark, samples_root, capsys):
    """`courier train` SIGKILLed between checkpoints; the same training, run
    again (here in this process: what resumes is the checkpoint, not a
    process), resumes from the last checkpoint."""
    sets = {**TRAIN, "train.steps": 40, "train.checkpoint_every": 10, "train.backend": "local",
            "train.method": "courier_no_ucs", "train.log_every": 1}
    args = [sys.executable, "-m", "courier_spark.cli", "train", "--root", samples_root]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    ckpts = os.path.join(samples_root, "models", "_checkpoints")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not glob.glob(os.path.join(ckpts, "*", "step_0000020.pt")):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, mid-training
    proc.wait()
    saved = sorted(os.path.basename(f) for f in glob.glob(os.path.join(ckpts, "*", "step_*.pt")))
    assert "step_0000020.pt" in saved and "step_0000040.pt" not in saved
    capsys.readouterr()
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])   # what the CLI reads: no --config
    run_stage("train", StageContext(spark, cfg, TablePaths.for_root(samples_root)))
    assert "resuming from step_" in capsys.readouterr().err
    art = load_artifact(os.path.join(samples_root, "models"), "courier_no_ucs")
    m = art.metrics
    assert m["steps"] == 40 and m["resumed_from_step"] >= 20
    assert m["checkpoint_steps"] == [10, 20, 30, 40]  # none repeated, none skipped
    steps = [h[0] for h in m["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    assert all(h[1] == h[1] and h[1] < 1e6 for h in m["history"])  # finite


def test_trained_encoder_flows_to_feature_store(spark, samples_root):
    """train (above) -> embed -> cluster -> features through the stage functions."""
    from courier_spark.core.tables import read_table
    cfg = tiny_config(**{"cluster.k": 8})
    ctx = StageContext(spark, cfg, TablePaths.for_root(samples_root))
    for s in ("embed", "cluster", "features"):
        run_stage(s, ctx)
    p = ctx.paths
    items = read_table(spark, p.silver_items)
    emb = read_table(spark, p.item_embeddings)
    with_image = items.filter("image is not null").count()
    assert emb.select("item_id").distinct().count() == with_image  # items without images: none
    iv = read_table(spark, p.item_visual_features)
    assert iv.count() == with_image and iv.select("courier_cluster_id").distinct().count() > 1
    imp = read_table(spark, p.impression_visual_features)
    assert imp.count() == read_table(spark, p.ctr_samples).count()


def test_comparisons_evaluate_report(spark, samples_root):
    """comparisons -> evaluate -> report on the tiny data (after the feature-store
    test above): every variant scored, versions recorded, metrics.json in the
    issue's shape, SQL per-category AUC equal to Python's."""
    import json

    import numpy as np
    import pandas as pd

    from courier_spark.evaluate.metrics import auc
    from courier_spark.core.tables import read_table
    cfg = tiny_config(**TRAIN, **{
        "cluster.k": 8, "train.steps": 6, "train.backend": "local", "train.log_every": 3,
        "evaluate.methods": "[courier, simclr]", "evaluate.seeds": "[0, 1]",
        "evaluate.dnn.epochs": 1, "evaluate.lgbm.num_boost_round": 20})
    ctx = StageContext(spark, cfg, TablePaths.for_root(samples_root))
    comp = run_stage("comparisons", ctx)
    assert list(comp.methods) == ["simclr"]   # courier is the serving method, trained by `train`
    assert comp.methods["simclr"].model_version.startswith("simclr/v")
    # every sub-run went through the pipeline's runner and wrote its own summary
    for sub in ("train", "embed", "cluster"):
        with open(os.path.join(ctx.paths.run_summaries, "comparisons", "simclr", f"{sub}.json")) as fh:
            assert json.load(fh)["config"]["train"]["method"] == "simclr"
    ev = run_stage("evaluate", ctx)
    assert ev.variants == ["baseline", "courier_cluster_id", "courier_simscore", "courier_vector",
                              "simclr_cluster_id"]
    assert ev.feature_sources == {"courier": "feature_store", "simclr": "computed"}
    metrics = json.load(open(os.path.join(ctx.paths.reports, "metrics.json")))
    for name in ev.variants:
        v = metrics["variants"][name]
        assert 0.0 < v["auc"] < 1.0 and v["auc_std"] >= 0.0 and len(v["auc_seeds"]) == 2
        assert 0.0 < v["gauc"] < 1.0 and "gauc_std" in v
    assert "lgbm" in metrics and set(metrics["lgbm"]["variants"]) == set(ev.variants)

    preds = read_table(spark, ctx.paths.predictions).toPandas()
    n_test = read_table(spark, ctx.paths.ctr_samples).filter("split = 'test'").count()
    assert len(preds) == n_test * len(ev.variants) * 2          # first seed, dnn + lgbm
    sim = preds[preds["variant"] == "simclr_cluster_id"]
    assert set(sim["model_version"]) == {comp.methods["simclr"].model_version}
    assert set(sim["centroid_version"]) == {comp.methods["simclr"].centroid_version}
    assert preds.loc[preds["variant"] == "baseline", "model_version"].isna().all()
    # seen: every category for encoders pre-trained on all of them; null for the baseline
    assert preds.loc[preds["variant"] == "baseline", "seen"].isna().all()
    assert preds.loc[sim.index, "seen"].eq(True).all()
    # metrics.json's first-seed AUC is the AUC of the stored predictions
    b = preds[(preds["variant"] == "courier_cluster_id") & (preds["model_kind"] == "dnn")]
    assert abs(auc(b["label"], b["score"]) - metrics["variants"]["courier_cluster_id"]["auc_seeds"][0]) < 1e-9

    rep = run_stage("report", ctx)
    assert rep.sql_vs_python_max_abs_diff < 1e-6
    text = open(rep.report).read()
    for heading in ("Lift per method", "Ablations", "Vector / SimScore / Cluster ID", "Per-category AUC lift",
                    "Embedding map"):
        assert heading in text
    for png in ("per_category_lift.png", "embedding_map.png"):
        assert os.path.getsize(os.path.join(ctx.paths.reports, png)) > 1000
    pc = pd.read_csv(os.path.join(ctx.paths.reports, "sql", "per_category_auc_lift.csv"))
    assert np.isfinite(pc["auc"]).any()

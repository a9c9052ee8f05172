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

from courier_spark.paths import TablePaths
from courier_spark.stages import StageContext, run_stage
from training.artifact import load_artifact

from .conftest import tiny_config

pytestmark = pytest.mark.slow

TRAIN = {"train.backbone": "small_cnn", "train.embed_dim": 64, "train.image_size": 32,
         "train.batch_size": 16, "train.loader_workers": 1}


@pytest.fixture(scope="module")
def samples_root(tiny_dataset):
    return tiny_dataset[0].paths.root


def test_horovod_training_learns(spark, samples_root):
    cfg = tiny_config(**TRAIN, **{"train.steps": 60, "train.backend": "horovod", "train.num_proc": 2,
                                  "train.log_every": 5})
    ctx = StageContext(spark, cfg, TablePaths.for_root(samples_root))
    out = run_stage("train", ctx)
    m = out["metrics"]
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


def test_killed_training_resumes_from_checkpoint(samples_root):
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
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from step_" in done.stderr
    art = load_artifact(os.path.join(samples_root, "models"), "courier_no_ucs")
    m = art.metrics
    assert m["steps"] == 40 and m["resumed_from_step"] >= 20
    assert m["checkpoint_steps"] == [10, 20, 30, 40]  # none repeated, none skipped
    steps = [h[0] for h in m["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    assert all(h[1] == h[1] and h[1] < 1e6 for h in m["history"])  # finite


def test_trained_encoder_flows_to_feature_store(spark, samples_root):
    """train (above) -> embed -> cluster -> features through the stage functions."""
    from courier_spark.tables import read_table
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

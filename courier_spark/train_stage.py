"""`courier train`: pre-training samples -> versioned encoder artifact."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .config import section
from .progress import say, step
from .tables import read_table, table_version


def _config_hash(cfg) -> str:
    keep = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("log_every", "checkpoint_every", "max_steps_this_run", "loader_workers", "timeout_s")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]


def co_click_similarity(encoder: torch.nn.Module, samples: DataFrame, items: DataFrame,
                        image_size: int, n_pairs: int = 2000, seed: int = 0) -> dict:
    """Mean cosine of (clicked PV item, history click) pairs of the same user
    vs random item pairs: the behaviour signal the encoder should have learned."""
    from training.images import decode_image
    pairs = (samples.select(F.col("pv_item_ids")[0].alias("a"), F.explode("hist_item_ids").alias("b"))
             .filter("a != b").orderBy(F.xxhash64("a", "b", F.lit(seed))).limit(n_pairs))
    pdf = pairs.toPandas()
    ids = sorted(set(pdf.a) | set(pdf.b))
    rng = np.random.default_rng(seed)
    all_ids = [r.item_id for r in items.filter("image is not null").select("item_id").collect()]
    rand = rng.choice(all_ids, size=(len(pdf), 2))
    ids = sorted(set(ids) | set(rand.ravel().tolist()))
    imgs = {r.item_id: r.image for r in items.filter(F.col("item_id").isin(ids)).select("item_id", "image").collect()}
    arrs = {i: decode_image(imgs.get(i), image_size) for i in ids}
    valid = [i for i in ids if arrs[i] is not None]
    encoder.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(encoder(torch.from_numpy(np.stack([arrs[i] for i in valid]))), dim=1)
    e = {i: emb[k].numpy() for k, i in enumerate(valid)}
    # Embeddings of a briefly trained encoder share a large common direction
    # (random pairs have cosine ~0.9), which hides the structure; the centred
    # cosine (mean embedding of the sampled items removed) shows it.
    mu = emb.numpy().mean(0)
    ec = {i: (v - mu) / max(float(np.linalg.norm(v - mu)), 1e-12) for i, v in e.items()}
    out = {}
    for suffix, vecs in (("", e), ("_centred", ec)):
        co = [float(np.dot(vecs[a], vecs[b])) for a, b in zip(pdf.a, pdf.b) if a in vecs and b in vecs]
        rn = [float(np.dot(vecs[int(a)], vecs[int(b)])) for a, b in rand if a in vecs and b in vecs and a != b]
        out[f"co_click_cosine{suffix}"] = float(np.mean(co))
        out[f"random_pair_cosine{suffix}"] = float(np.mean(rn))
    out.update(n_co_click_pairs=len(co), n_random_pairs=len(rn))
    return out


def run_train(ctx, keep_loader_cache: bool = False) -> dict:
    """pretrain samples -> encoder artifact (petastorm -> horovod/torch on Spark).

    ``keep_loader_cache``: leave the petastorm parquet cache in place so a
    following run in the same Spark session (the `comparisons` stage trains
    several methods on the same frame) reuses it instead of re-materialising;
    petastorm deletes it when the process exits."""
    from training.artifact import save_artifact
    from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame
    from training.train import (PROGRESS_FILE, TrainConfig, build_model, latest_checkpoint, run_distributed,
                                train_worker)

    tcfg = section(ctx.cfg, "train", TrainConfig).resolved()
    p, spark, scfg = ctx.paths, ctx.spark, ctx.cfg.samples
    samples = read_table(spark, p.pretrain_samples, made_by="samples")
    items = read_table(spark, p.silver_items, made_by="validate")
    data_versions = {"silver/pretrain_samples": table_version(spark, p.pretrain_samples),
                     "silver/items": table_version(spark, p.silver_items)}
    frame = pretrain_training_frame(samples, items, scfg.l_pv, scfg.l_click)
    spec = LoaderSpec(scfg.l_pv, scfg.l_click, tcfg.image_size, tcfg.batch_size)
    workers = 1 if tcfg.backend == "local" else tcfg.num_proc
    with step("train", "materialising the training frame for petastorm"):
        loader = SampleLoader.from_frame(frame, spec, os.path.join(p.root, "_cache", "petastorm"), workers)
    n_rows = len(loader)
    if n_rows < tcfg.batch_size * workers:
        raise ValueError(f"only {n_rows} pre-training rows: fewer than one global batch "
                         f"({tcfg.batch_size} x {workers} workers); lower train.batch_size")
    ckpt_dir = os.path.join(p.models, "_checkpoints", f"{tcfg.method}-{_config_hash(tcfg)}")
    resume = latest_checkpoint(ckpt_dir)
    say("train", f"method={tcfg.method} backbone={tcfg.backbone}@{tcfg.image_size}px backend={tcfg.backend} "
                 f"workers={workers} rows={n_rows} global batch={tcfg.batch_size * workers} "
                 f"steps={tcfg.steps}" + (f" (resuming from {os.path.basename(resume)})" if resume else ""))
    try:
        results = run_distributed(train_worker, (tcfg, loader, ckpt_dir), tcfg.backend, tcfg.num_proc,
                                  timeout_s=tcfg.timeout_s, progress_file=os.path.join(ckpt_dir, PROGRESS_FILE))
    finally:
        if not keep_loader_cache:
            loader.delete()
    r0 = results[0]
    final = latest_checkpoint(ckpt_dir)
    if r0["steps_done"] < tcfg.steps:
        say("train", f"stopped at step {r0['steps_done']} of {tcfg.steps}; re-run to resume from {final}")
        return {"complete": False, "steps_done": r0["steps_done"], "checkpoint": final}
    state = torch.load(final, map_location="cpu", weights_only=False)
    model = build_model(tcfg)
    model.load_state_dict(state["model"])
    hist = state["history"]
    head = [h[1] for h in hist[:2]]
    tail = [h[1] for h in hist[-3:]]
    metrics = {"steps": r0["steps_done"], "initial_loss": float(np.mean(head)), "final_loss": float(np.mean(tail)),
               "final_in_batch_accuracy": float(hist[-1][2]), "images_per_s": r0["images_per_s"],
               "resumed_from_step": r0["resumed_from"], "history": hist,
               "checkpoint_steps": state["checkpoint_steps"]}
    with step("train", "measuring co-click vs random-pair embedding similarity"):
        metrics.update(co_click_similarity(model.encoder, samples, items, tcfg.image_size))
    art = save_artifact(p.models, tcfg.method, model.encoder, model, backbone=tcfg.backbone,
                        embed_dim=tcfg.embed_dim, image_size=tcfg.image_size,
                        config=dataclasses.asdict(tcfg), data_versions=data_versions, metrics=metrics)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the artifact now holds the weights
    say("train", f"saved {art.model_version}: loss {metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f}, "
                 f"co-click cosine {metrics['co_click_cosine']:.3f} vs random {metrics['random_pair_cosine']:.3f} "
                 f"(centred {metrics['co_click_cosine_centred']:.3f} vs {metrics['random_pair_cosine_centred']:.3f})")
    return {"complete": True, "model_version": art.model_version, "path": art.path,
            "metrics": {k: v for k, v in metrics.items() if k != "history"}}

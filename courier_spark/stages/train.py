"""`courier train`: pre-training samples -> versioned encoder artifact
(petastorm -> Horovod / TorchDistributor / local torch)."""
from __future__ import annotations

import dataclasses
from .. import fs
from ..errors import DataError
from ..logs import debug, say, step
from ..tables import read_table, table_version
from .context import StageContext


def _relay(line: str) -> None:
    """A training step line from rank 0 -> the console, as our own log line."""
    from training.train import PROGRESS_PREFIX
    say("train", line.removeprefix(PROGRESS_PREFIX))


def _forwarded(line: str) -> None:
    """Horovod's forwarded worker output: the log file only (errors are named by the launcher)."""
    if line.strip():
        debug("train.workers", line)


def run(ctx: StageContext) -> dict:
    """pre-training samples -> encoder artifact (petastorm -> horovod/torch on Spark)."""
    import numpy as np

    from training.artifact import save_artifact
    from training.checkpoints import checkpoint_dir, latest_checkpoint, load_checkpoint
    from training.launch import run_distributed
    from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame
    from training.objectives import build_model
    from training.similarity import co_click_similarity
    from training.train import PROGRESS_FILE, train_worker

    tcfg = ctx.cfg.train.resolved()
    p, spark, scfg = ctx.paths, ctx.spark, ctx.cfg.samples
    samples = read_table(spark, p.pretrain_samples, made_by="samples")
    items = read_table(spark, p.silver_items, made_by="validate")
    data_versions = {"silver/pretrain_samples": table_version(spark, p.pretrain_samples),
                     "silver/items": table_version(spark, p.silver_items)}
    frame = pretrain_training_frame(samples, scfg.l_pv, scfg.l_click)
    spec = LoaderSpec(scfg.l_pv, scfg.l_click, tcfg.image_size, tcfg.batch_size)
    workers = 1 if tcfg.backend == "local" else tcfg.num_proc
    with step("train", "materialising the training frame (ids) and item images for petastorm"):
        loader = SampleLoader.from_frame(frame, items, spec, p.petastorm_cache, workers)
    n_rows = len(loader)
    if n_rows < tcfg.batch_size * workers:
        loader.delete()
        raise DataError(f"only {n_rows} pre-training rows: fewer than one global batch "
                        f"({tcfg.batch_size} x {workers} workers); lower train.batch_size")
    ckpt_dir = checkpoint_dir(p.checkpoints, tcfg)
    resume = latest_checkpoint(ckpt_dir)
    say("train", f"method={tcfg.method} backbone={tcfg.backbone}@{tcfg.image_size}px backend={tcfg.backend} "
                 f"workers={workers} rows={n_rows} global batch={tcfg.batch_size * workers} "
                 f"steps={tcfg.steps}" + (f" (resuming from {resume.rsplit('/', 1)[-1]})" if resume else ""))
    try:
        results = run_distributed(train_worker, (tcfg, loader, ckpt_dir), tcfg.backend, tcfg.num_proc,
                                  timeout_s=tcfg.timeout_s, progress_file=fs.join(ckpt_dir, PROGRESS_FILE),
                                  progress_emit=_relay, forward_to=_forwarded)
    finally:
        if not ctx.keep_loader_cache:
            loader.delete()
    r0 = results[0]
    final = latest_checkpoint(ckpt_dir)
    if r0["steps_done"] < tcfg.steps:
        say("train", f"stopped at step {r0['steps_done']} of {tcfg.steps}; re-run to resume from {final}")
        return {"complete": False, "steps_done": r0["steps_done"], "checkpoint": final}
    state = load_checkpoint(final)
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
    fs.rm(ckpt_dir, recursive=True)  # the artifact now holds the weights
    say("train", f"saved {art.model_version}: loss {metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f}, "
                 f"co-click cosine {metrics['co_click_cosine']:.3f} vs random {metrics['random_pair_cosine']:.3f} "
                 f"(centred {metrics['co_click_cosine_centred']:.3f} vs {metrics['random_pair_cosine_centred']:.3f})")
    return {"complete": True, "model_version": art.model_version, "path": art.path,
            "metrics": {k: v for k, v in metrics.items() if k != "history"}}

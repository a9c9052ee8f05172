"""`courier train`: pre-training samples -> versioned encoder artifact
(petastorm -> Horovod / TorchDistributor / local torch).

Two methods train nothing and never launch the distributed backend:
``random_init`` saves the encoder at its seeded initialisation, ``generic``
makes sure the generic trunk exists (``training.trunk``) and reports it. With
``train.init: generic`` every other method starts from that trunk."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from training.artifact import save_artifact
from training.checkpoints import checkpoint_dir, latest_checkpoint, load_checkpoint
from training.launch import run_distributed
from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame, split_heldout
from training.objectives import build_model, initial_encoder, needs_ctr_fields
from training.pretrain_rows import (check_categories, restrict_history_clicks, restrict_to_categories,
                                    shuffle_histories)
from training.similarity import co_click_similarity
from training.train import PROGRESS_FILE, PROGRESS_PREFIX, train_worker, training_metrics
from training.trunk import ensure_trunk

from .. import fs
from ..errors import ConfigError, DataError
from ..logs import debug, say, step
from ..schema import TrainConfig
from ..tables import read_table, table_version
from .context import StageContext
from .results import TrainResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from training.artifact import ModelArtifact


def _relay(line: str) -> None:
    """A training step line from rank 0 -> the console, as our own log line."""
    say("train", line.removeprefix(PROGRESS_PREFIX))


def _forwarded(line: str) -> None:
    """Horovod's forwarded worker output: the log file only (errors are named by the launcher)."""
    if line.strip():
        debug("train.workers", line)


def run(ctx: StageContext) -> TrainResult:
    """pre-training samples -> encoder artifact (petastorm -> horovod/torch on Spark)."""
    tcfg = ctx.cfg.train.resolved()
    p, spark, scfg = ctx.paths, ctx.spark, ctx.cfg.samples
    samples = read_table(spark, p.pretrain_samples)
    items = read_table(spark, p.silver_items)
    data_versions = {"silver/pretrain_samples": table_version(spark, p.pretrain_samples),
                     "silver/items": table_version(spark, p.silver_items)}
    tcfg, trunk = _with_init(tcfg, p.models, data_versions)
    if tcfg.objective == "none":
        return _untrained(tcfg, p.models, samples, items, data_versions, trunk)
    ctr_fields = needs_ctr_fields(tcfg)
    chosen = _chosen_rows(samples, items, tcfg.categories, tcfg.restrict_histories)
    frame = pretrain_training_frame(chosen, scfg.l_pv, scfg.l_click, with_user=ctr_fields)
    if tcfg.shuffle_histories:   # courier_shuffled: within the chosen rows
        frame = shuffle_histories(frame, tcfg.seed)
    spec = LoaderSpec(scfg.l_pv, scfg.l_click, tcfg.image_size, tcfg.batch_size, ctr_fields=ctr_fields)
    workers = 1 if tcfg.backend == "local" else tcfg.num_proc
    frame, heldout = split_heldout(frame, tcfg.heldout_share)   # same pages for every method (seed 0)
    with step("train", "materialising the training frame (ids) and item images for petastorm"):
        loader = SampleLoader.from_frame(frame, items, spec, p.petastorm_cache, workers,
                                         heldout=heldout if tcfg.heldout_share > 0 else None)
    n_rows = len(loader)
    if n_rows < tcfg.batch_size * workers:
        loader.delete()
        raise DataError(f"only {n_rows} pre-training rows: fewer than one global batch "
                        f"({tcfg.batch_size} x {workers} workers); lower train.batch_size"
                        + (" or widen train.categories" if tcfg.categories else ""))
    ckpt_dir = checkpoint_dir(p.checkpoints, tcfg)
    resume = latest_checkpoint(ckpt_dir)
    say("train", f"method={tcfg.method} backbone={tcfg.backbone}@{tcfg.image_size}px backend={tcfg.backend} "
                 f"workers={workers} rows={n_rows} global batch={tcfg.batch_size * workers} "
                 f"steps={tcfg.steps} init={trunk.model_version if trunk else (tcfg.weights_path or 'random')}"
                 + (f" categories={','.join(tcfg.categories)}" if tcfg.categories else "")
                 + (" histories shuffled across page views" if tcfg.shuffle_histories else "")
                 + (f" (resuming from {resume.rsplit('/', 1)[-1]})" if resume else ""))
    try:
        results = run_distributed(train_worker, (tcfg, loader, ckpt_dir), tcfg.backend, tcfg.num_proc,
                                  timeout_s=tcfg.timeout_s, progress_file=fs.join(ckpt_dir, PROGRESS_FILE),
                                  progress_emit=_relay, forward_to=_forwarded,
                                  horovod_cycle_time_ms=tcfg.horovod_cycle_time_ms,
                                  horovod_nics=tcfg.horovod_nics,
                                  torch_distributor_mode=tcfg.torch_distributor_mode)
    finally:
        if not ctx.keep_loader_cache:
            loader.delete()
    r0 = results[0]
    final = latest_checkpoint(ckpt_dir)
    if r0["steps_done"] < tcfg.steps:
        say("train", f"stopped at step {r0['steps_done']} of {tcfg.steps}; re-run to resume from {final}")
        return TrainResult(complete=False, steps_done=r0["steps_done"], checkpoint=final)
    state = load_checkpoint(final)
    model = build_model(tcfg)
    model.load_state_dict(state["model"])
    metrics = {**training_metrics(state, r0), "pretrain_rows": n_rows,
               "heldout_rows": len(loader.heldout["pv_labels"]) if loader.heldout else 0,
               "checkpoint_dir": ckpt_dir if tcfg.keep_checkpoints else None}
    with step("train", "measuring co-click vs random-pair embedding similarity"):
        metrics.update(co_click_similarity(model.encoder, samples, items, tcfg.image_size))
    art = save_artifact(p.models, tcfg.method, model.encoder, model, backbone=tcfg.backbone,
                        embed_dim=tcfg.embed_dim, image_size=tcfg.image_size,
                        config=dataclasses.asdict(tcfg), data_versions=data_versions, metrics=metrics)
    if not tcfg.keep_checkpoints:
        fs.rm(ckpt_dir, recursive=True)  # the artifact now holds the weights
    held = metrics["heldout_loss"]
    say("train", f"saved {art.model_version}: loss {metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f}"
                 + (f", held-out {held[0][1]:.3f} -> {held[-1][1]:.3f}" if held else "")
                 + f", {r0['images_per_s']:.0f} images/s ({r0['distinct_images_per_s']:.0f} distinct), "
                 + _co_click_line(metrics))
    return TrainResult(complete=True, model_version=art.model_version, version=art.version, path=art.path,
                       metrics={k: v for k, v in metrics.items() if k != "history"})


def _co_click_line(m: dict) -> str:
    return (f"co-click cosine {m['co_click_cosine']:.3f} vs random {m['random_pair_cosine']:.3f} "
            f"(centred {m['co_click_cosine_centred']:.3f} vs {m['random_pair_cosine_centred']:.3f})")


def _with_init(tcfg: TrainConfig, models_dir: str,
               data_versions: dict) -> tuple[TrainConfig, "ModelArtifact | None"]:
    """``train.init: generic``: the trunk made sure of (trained here once per
    dataset root) and set as the encoder's starting weights. -> (config, trunk or None)."""
    if tcfg.init != "generic":
        return tcfg, None
    if tcfg.weights_path:
        raise ConfigError(f"train.init is generic but train.weights_path is set ({tcfg.weights_path}): "
                          f"both choose the starting weights; unset one")
    trunk, _ = ensure_trunk(models_dir, tcfg)
    data_versions["models/generic"] = trunk.model_version
    return dataclasses.replace(tcfg, weights_path=trunk.encoder_uri), trunk


def _chosen_rows(samples: DataFrame, items: DataFrame, categories: list[str],
                 restrict_histories: bool = False) -> DataFrame:
    """``train.categories``: only the page views of those categories (all when
    empty); with ``train.restrict_histories`` only their history clicks too."""
    if not categories:
        if restrict_histories:
            raise ConfigError("train.restrict_histories needs train.categories (the categories to keep)")
        return samples
    check_categories(categories, {r["category"] for r in items.select("category").distinct().collect()},
                     "silver/items")
    rows = restrict_to_categories(samples, items, categories)
    if restrict_histories:
        rows = restrict_history_clicks(rows, items, categories)
    n_all, n_kept = samples.count(), rows.count()
    say("train", f"categories {', '.join(categories)}: {n_kept} of {n_all} pre-training page views"
                 + (" (history clicks of those categories only)" if restrict_histories else ""))
    return rows


def _untrained(tcfg: TrainConfig, models_dir: str, samples: DataFrame, items: DataFrame, data_versions: dict,
               trunk: "ModelArtifact | None") -> TrainResult:
    """``random_init`` / ``generic`` (objective none): the encoder as initialised,
    no optimisation and no distributed launch; ``generic``'s artifact is the trunk itself."""
    if trunk is not None:   # generic
        art, encoder = trunk, trunk.load_encoder()
    else:
        art, encoder = None, initial_encoder(tcfg)
    with step("train", "measuring co-click vs random-pair embedding similarity"):
        metrics = {"steps": 0, **co_click_similarity(encoder, samples, items, tcfg.image_size)}
    if art is None:
        art = save_artifact(models_dir, tcfg.method, encoder, None, backbone=tcfg.backbone,
                            embed_dim=tcfg.embed_dim, image_size=tcfg.image_size,
                            config=dataclasses.asdict(tcfg), data_versions=data_versions, metrics=metrics)
    say("train", f"{tcfg.method}: {art.model_version}, not optimised (init "
                 f"{trunk.model_version if trunk else 'random, seed ' + str(tcfg.seed)}); " + _co_click_line(metrics))
    return TrainResult(complete=True, model_version=art.model_version, version=art.version, path=art.path,
                       metrics=metrics)

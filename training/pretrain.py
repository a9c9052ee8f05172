"""Pre-training as one library call: pre-training samples + items -> a saved
encoder artifact (petastorm -> Horovod / TorchDistributor / local torch), or
the checkpoint to resume from when the run stopped early.

Two methods train nothing and never launch the distributed backend:
``random_init`` saves the encoder at its seeded initialisation, ``generic``
makes sure the generic trunk exists (``training.trunk``) and reports it. With
``train.init: generic`` every other method starts from that trunk. The
``courier train`` stage reads the tables and turns the outcome into its result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from courier_spark.core import fs
from courier_spark.core.errors import ConfigError, DataError
from courier_spark.core.logs import debug, say, step
from courier_spark.core.schema import SamplesConfig, TrainConfig

from .artifact import save_artifact
from .checkpoints import checkpoint_dir, latest_checkpoint, load_checkpoint
from .launch import run_distributed
from .loader import LoaderSpec, SampleLoader, pretrain_training_frame, split_heldout
from .objectives import build_model, initial_encoder, needs_ctr_fields
from .pretrain_rows import (check_categories, check_restrict_histories, restrict_history_clicks, restrict_to_categories,
                            shuffle_histories)
from .similarity import co_click_similarity
from .train import PROGRESS_FILE, PROGRESS_PREFIX, train_worker, training_metrics
from .trunk import ensure_trunk

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from .artifact import ModelArtifact


@dataclass(frozen=True)
class PretrainPlaces:
    """Where pre-training keeps what it makes: the models folder (artifacts,
    the generic trunk), the checkpoints, petastorm's materialised cache."""
    models: str
    checkpoints: str
    petastorm_cache: str


@dataclass
class PretrainOutcome:
    """A saved artifact (``complete``), or the step reached and the checkpoint
    to resume from (a run stopped by its time limit)."""
    complete: bool
    artifact: "ModelArtifact | None" = None
    metrics: dict = field(default_factory=dict)
    steps_done: int | None = None
    checkpoint: str | None = None


def _relay(line: str) -> None:
    """A training step line from rank 0 -> the console, as our own log line."""
    say("train", line.removeprefix(PROGRESS_PREFIX))


def _forwarded(line: str) -> None:
    """Horovod's forwarded worker output: the log file only (errors are named by the launcher)."""
    if line.strip():
        debug("train.workers", line)


def pretrain(samples: DataFrame, items: DataFrame, tcfg: TrainConfig, scfg: SamplesConfig,
             places: PretrainPlaces, data_versions: dict, keep_loader_cache: bool = False) -> PretrainOutcome:
    """Train ``tcfg.method`` on the pre-training ``samples`` (their images from
    ``items``) and save its artifact under ``places.models``; ``data_versions``
    (table -> Delta version) goes into the artifact, with the trunk's version
    when ``train.init`` is generic."""
    tcfg, trunk = with_init(tcfg.resolved(), places.models, data_versions)
    if tcfg.objective == "none":
        return untrained(tcfg, places.models, samples, items, data_versions, trunk)
    ctr_fields = needs_ctr_fields(tcfg)
    chosen = chosen_rows(samples, items, tcfg.categories, tcfg.restrict_histories)
    frame = pretrain_training_frame(chosen, scfg.l_pv, scfg.l_click, with_user=ctr_fields)
    if tcfg.shuffle_histories:   # courier_shuffled: within the chosen rows
        frame = shuffle_histories(frame, tcfg.seed)
    spec = LoaderSpec(scfg.l_pv, scfg.l_click, tcfg.image_size, tcfg.batch_size, ctr_fields=ctr_fields)
    workers = 1 if tcfg.backend == "local" else tcfg.num_proc
    frame, heldout = split_heldout(frame, tcfg.heldout_share)   # same pages for every method (seed 0)
    with step("train", "materialising the training frame (ids) and item images for petastorm"):
        loader = SampleLoader.from_frame(frame, items, spec, places.petastorm_cache, workers,
                                         heldout=heldout if tcfg.heldout_share > 0 else None)
    n_rows = len(loader)
    if n_rows < tcfg.batch_size * workers:
        loader.delete()
        raise DataError(f"only {n_rows} pre-training rows: fewer than one global batch "
                        f"({tcfg.batch_size} x {workers} workers); lower train.batch_size"
                        + (" or widen train.categories" if tcfg.categories else ""))
    ckpt_dir = checkpoint_dir(places.checkpoints, tcfg)
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
        if not keep_loader_cache:
            loader.delete()
    r0 = results[0]
    final = latest_checkpoint(ckpt_dir)
    if r0["steps_done"] < tcfg.steps:
        say("train", f"stopped at step {r0['steps_done']} of {tcfg.steps}; re-run to resume from {final}")
        return PretrainOutcome(complete=False, steps_done=r0["steps_done"], checkpoint=final)
    state = load_checkpoint(final)
    model = build_model(tcfg)
    model.load_state_dict(state["model"])
    metrics = {**training_metrics(state, r0), "pretrain_rows": n_rows,
               "heldout_rows": len(loader.heldout["pv_labels"]) if loader.heldout else 0,
               "checkpoint_dir": ckpt_dir if tcfg.keep_checkpoints else None}
    with step("train", "measuring co-click vs random-pair embedding similarity"):
        metrics.update(co_click_similarity(model.encoder, samples, items, tcfg.image_size))
    art = save_artifact(places.models, tcfg.method, model.encoder, model, backbone=tcfg.backbone,
                        embed_dim=tcfg.embed_dim, image_size=tcfg.image_size,
                        config=dataclasses.asdict(tcfg), data_versions=data_versions, metrics=metrics)
    if not tcfg.keep_checkpoints:
        fs.rm(ckpt_dir, recursive=True)  # the artifact now holds the weights
    held = metrics["heldout_loss"]
    say("train", f"saved {art.model_version}: loss {metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f}"
                 + (f", held-out {held[0][1]:.3f} -> {held[-1][1]:.3f}" if held else "")
                 + f", {r0['images_per_s']:.0f} images/s ({r0['distinct_images_per_s']:.0f} distinct), "
                 + _co_click_line(metrics))
    return PretrainOutcome(complete=True, artifact=art, metrics=metrics)


def _co_click_line(m: dict) -> str:
    return (f"co-click cosine {m['co_click_cosine']:.3f} vs random {m['random_pair_cosine']:.3f} "
            f"(centred {m['co_click_cosine_centred']:.3f} vs {m['random_pair_cosine_centred']:.3f})")


def with_init(tcfg: TrainConfig, models_dir: str,
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


def chosen_rows(samples: DataFrame, items: DataFrame, categories: list[str],
                restrict_histories: bool = False) -> DataFrame:
    """``train.categories``: only the page views of those categories (all when
    empty); with ``train.restrict_histories`` only their history clicks too."""
    check_restrict_histories(categories, restrict_histories)
    if not categories:
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


def untrained(tcfg: TrainConfig, models_dir: str, samples: DataFrame, items: DataFrame, data_versions: dict,
              trunk: "ModelArtifact | None") -> PretrainOutcome:
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
    return PretrainOutcome(complete=True, artifact=art, metrics=metrics)

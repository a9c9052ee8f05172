"""The generic trunk: the project's analogue of the paper's ImageNet start.

The trunk is a backbone pre-trained once, in this process, with the SimCLR
objective (``training.baselines``) on generic images the project generates
itself (``courier_spark.data.synthetic.generic``; never the marketplace). It is
saved as a normal model artifact, ``models/generic/vNNNN``, whose
``artifact.json`` config is the whole recipe (``trunk_config``); a later
request with the same recipe reuses it, so the trunk is trained once per
dataset root (an older matching version is copied forward, so ``latest``
is always the trunk last asked for). With ``train.init: generic`` every method's encoder starts from
its weights (``weights_path`` -> the trunk's ``encoder.pt``); the ``generic``
method is the trunk itself.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import torch

from courier_spark.core.logs import say
from courier_spark.core.schema import TrainConfig

from .artifact import ModelArtifact, copy_as_latest, list_versions, load_artifact, save_artifact

METHOD = "generic"
# Fixed parts of the recipe (recorded in the artifact's config all the same).
TAU = 0.2
WEIGHT_DECAY = 1e-6


def trunk_config(cfg: TrainConfig) -> dict:
    """Everything that decides the trunk's weights: reuse needs an exact match.
    ``cfg`` resolved (image_size filled in)."""
    from courier_spark.data.synthetic.generic import GENERATOR_VERSION
    return {"method": METHOD, "objective": "simclr", "generator": "courier_spark.data.synthetic.generic",
            "generator_version": GENERATOR_VERSION, "generator_seed": cfg.generic_seed,
            "n_images": cfg.generic_images, "steps": cfg.generic_steps, "batch_size": cfg.generic_batch_size,
            "lr": cfg.generic_lr, "weight_decay": WEIGHT_DECAY, "tau_simclr": TAU, "seed": cfg.generic_seed,
            "backbone": cfg.backbone, "embed_dim": cfg.embed_dim, "image_size": cfg.image_size,
            "projection_head": False}


def find_trunk(models_dir: str, config: dict) -> ModelArtifact | None:
    """The newest ``generic`` artifact made with exactly ``config``, if any."""
    for v in reversed(list_versions(models_dir, METHOD)):
        art = load_artifact(models_dir, METHOD, v)
        if art.config == config:
            return art
    return None


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] normalised like ``training.images.decode_image``."""
    from .images import MEAN, STD
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy((x - MEAN[None]) / STD[None])


def train_trunk(config: dict, log_every: int | None = None) -> tuple[torch.nn.Module, dict]:
    """SimCLR on ``config['n_images']`` generic images for ``config['steps']``
    steps in this process -> (SimCLRModel, metrics). Deterministic per config."""
    from courier_spark.data.synthetic.generic import generic_images

    from .backbones import build_backbone
    from .baselines import SimCLRModel, baseline_loss

    t0 = time.perf_counter()
    images = generic_images(config["n_images"], config["image_size"], config["generator_seed"])
    gen_s = time.perf_counter() - t0
    torch.manual_seed(config["seed"])
    model = SimCLRModel(build_backbone(config["backbone"], config["embed_dim"]))
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    loss_cfg = SimpleNamespace(tau_simclr=config["tau_simclr"], seed=config["seed"])
    pick = torch.Generator().manual_seed(config["seed"])
    steps, bs = config["steps"], min(config["batch_size"], config["n_images"])
    every = log_every or max(1, steps // 10)
    history: list[tuple[int, float, float]] = []
    window: list[tuple[float, float]] = []
    model.train()
    t1 = time.perf_counter()
    for step in range(steps):
        idx = torch.randperm(len(images), generator=pick)[:bs].numpy()
        x = _normalised(images[idx])
        # the SimCLR objective takes a COURIER batch: one valid page slot per image, no history
        batch = {"pv_images": x[:, None], "pv_mask": torch.ones(bs, 1, dtype=torch.bool),
                 "hist_images": x.new_zeros((bs, 0, *x.shape[1:])),
                 "hist_mask": torch.zeros(bs, 0, dtype=torch.bool)}
        loss, metrics = baseline_loss("simclr", model, batch, loss_cfg, None, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append((float(metrics["loss"]), float(metrics["acc"])))
        if (step + 1) % every == 0 or step + 1 == steps or step == 0:
            lv, acc = (sum(w[i] for w in window) / len(window) for i in (0, 1))
            window.clear()
            history.append((step + 1, lv, acc))
            say("train", f"generic trunk step {step + 1}/{steps} loss {lv:.4f} in-batch acc {acc:.3f} "
                         f"({time.perf_counter() - t1:.0f}s)")
            if not np.isfinite(lv):
                raise FloatingPointError(f"generic trunk loss became {lv} at step {step + 1}")
    train_s = time.perf_counter() - t1
    head, tail = [h[1] for h in history[:2]], [h[1] for h in history[-3:]]
    return model, {"steps": steps, "initial_loss": float(np.mean(head)), "final_loss": float(np.mean(tail)),
                   "final_in_batch_accuracy": history[-1][2], "generate_seconds": round(gen_s, 2),
                   "train_seconds": round(train_s, 2), "images_per_s": 2 * bs * steps / max(train_s, 1e-9),
                   "history": history}


def ensure_trunk(models_dir: str, cfg: TrainConfig) -> tuple[ModelArtifact, bool]:
    """The generic trunk for ``cfg`` (resolved): reused when one with the same
    recipe exists under ``models_dir``, else trained now and saved. -> (artifact, trained now)."""
    config = trunk_config(cfg)
    art = find_trunk(models_dir, config)
    if art is not None:
        if art.version != list_versions(models_dir, METHOD)[-1]:
            # Embed, cluster and evaluate resolve `generic` to its latest version:
            # bring the matching trunk forward (a file copy, no retraining).
            art = copy_as_latest(models_dir, art, copied_from=art.model_version)
        say("train", f"generic trunk {art.model_version} reused ({config['backbone']}@{config['image_size']}px, "
                     f"{config['n_images']} images, {config['steps']} steps)")
        return art, False
    say("train", f"generic trunk: SimCLR on {config['n_images']} generated images, {config['steps']} steps of "
                 f"{config['batch_size']}, {config['backbone']}@{config['image_size']}px, in this process")
    # As many threads as each worker (train.torch_threads, default 1): measured on this
    # 2-core machine with another job running, 47 s with 1 thread vs 54-63 s with 2
    # (2 win only on idle cores, ~30 s); and one thread gives the same trunk on any machine.
    threads = cfg.torch_threads
    t0 = time.perf_counter()
    with _torch_threads(threads):
        model, metrics = train_trunk(config)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    art = save_artifact(models_dir, METHOD, model.encoder, model, backbone=config["backbone"],
                        embed_dim=config["embed_dim"], image_size=config["image_size"], config=config,
                        data_versions={}, metrics=metrics)
    say("train", f"saved generic trunk {art.model_version} in {metrics['seconds']:.0f}s: loss "
                 f"{metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f}")
    return art, True

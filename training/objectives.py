"""Model and loss per pre-training objective (courier | simclr | supervised_ctr | supervised_image;
none: no model to train)."""
from __future__ import annotations

import torch
from torch import nn

from courier_spark.core.schema import TrainConfig

from .model import model_inputs


def build_encoder(cfg: TrainConfig) -> nn.Module:
    """The image encoder of ``cfg`` (weights from ``cfg.weights_path`` when set)."""
    from .backbones import build_backbone
    return build_backbone(cfg.backbone, cfg.embed_dim, cfg.weights_path,
                          grad_checkpointing=cfg.grad_checkpointing, projection_head=cfg.projection_head)


def initial_encoder(cfg: TrainConfig) -> nn.Module:
    """The encoder exactly as every training run of ``cfg`` starts (seeded like
    ``train_worker``, whose first random draws build the encoder): ``random_init``."""
    torch.manual_seed(cfg.seed)
    return build_encoder(cfg)


def needs_ctr_fields(cfg: TrainConfig) -> bool:
    """Whether the objective's batches carry user ids, categories and titles (the supervised CTR model)."""
    return cfg.objective == "supervised_ctr"


def build_model(cfg: TrainConfig) -> nn.Module:
    if cfg.objective == "none":
        raise ValueError(f"method {cfg.method!r} trains nothing (objective none): use initial_encoder "
                         f"or the generic trunk")
    enc = build_encoder(cfg)
    if cfg.objective == "courier":
        from .model import CourierModel
        return CourierModel(enc, attention=cfg.attention)
    if cfg.objective == "simclr":
        from .baselines import SimCLRModel
        return SimCLRModel(enc)
    if cfg.objective == "supervised_ctr":
        from .supervised_ctr import SupervisedCtrModel
        return SupervisedCtrModel(enc)
    if cfg.objective == "supervised_image":
        from .baselines import SupervisedClickModel
        return SupervisedClickModel(enc)
    raise ValueError(f"unknown objective {cfg.objective!r}")


def encoder_of(model: nn.Module) -> nn.Module:
    m = model.module if hasattr(model, "module") else model
    return m.encoder


def compute_loss(model: nn.Module, batch: dict, cfg: TrainConfig, collective,
                 step: int) -> tuple[torch.Tensor, dict]:
    if cfg.objective == "courier":
        from .losses import courier_loss
        out = model(*model_inputs(batch))
        return courier_loss(out, batch, cfg, collective)   # a TrainConfig is a TrainLoss
    if cfg.objective == "supervised_ctr":
        from .baselines import supervised_click_loss
        out = supervised_click_loss(model(batch), batch["pv_labels"], batch["pv_mask"], collective)
        return out.loss, {"loss": out.loss.detach(), "acc": out.accuracy, "n_terms": out.n_terms}
    from . import baselines
    return baselines.baseline_loss(cfg.objective, model, batch, cfg, collective, step)

"""Image backbones (``IB`` in method.md) behind one small registry.

Every backbone maps ``[B, 3, H, W]`` float images to ``[B, embed_dim]``. The
classifier of the torchvision models is replaced by a fresh ``Linear`` to
``embed_dim`` (paper: Swin-Tiny, ``d = 256``, no projection head).

Weights: random initialisation by default, because nothing can be downloaded
(environment.md); ``weights_path`` loads a state dict (a local path or any
``courier_spark.core.fs`` URI, e.g. the generic trunk's ``encoder.pt``). The returned
module *is* the torchvision model (only the head replaced), so an ImageNet
checkpoint saved from torchvision loads with its original key names, and so
does a checkpoint saved from this module (or from ``CourierModel``: the
``encoder.`` prefix is stripped).

Gradient checkpointing replaces the stage ``nn.Sequential`` containers with a
subclass that checkpoints each block; parameter names stay identical, so
checkpoints are interchangeable with and without it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from courier_spark.core.schema import BACKBONE_IMAGE_SIZE
from courier_spark.core.errors import DataError

log = logging.getLogger(__name__)

BACKBONES = tuple(BACKBONE_IMAGE_SIZE)

_DEFAULT_IMAGE_SIZE = BACKBONE_IMAGE_SIZE  # one table, in the config schema


def default_image_size(name: str) -> int:
    """Training image side in pixels for a backbone (swin_t 224, resnet18 64, small_cnn 48)."""
    try:
        return _DEFAULT_IMAGE_SIZE[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}") from None


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` that recomputes each child in the backward pass.

    Same children, hence same state-dict keys, as the container it replaces.
    Only active when gradients are being recorded (training); inference runs
    the plain path. ``use_reentrant=False`` works with inputs that do not
    require grad and keeps the RNG state (stochastic depth, dropout) so the
    recomputation is bit-identical.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not (torch.is_grad_enabled() and self.training):
            return super().forward(x)
        for module in self:
            x = checkpoint(module, x, use_reentrant=False)
        return x


def _checkpoint_sequential(seq: nn.Sequential) -> CheckpointedSequential:
    out = CheckpointedSequential()
    for name, child in seq.named_children():
        out.add_module(name, child)
    out.train(seq.training)
    return out


class SmallCNN(nn.Module):
    """Four 3x3 conv layers (stride 2) + global average pool + linear head.

    GroupNorm instead of BatchNorm on purpose: an image's embedding must not
    depend on the other images of the batch (BatchNorm leaks batch statistics
    into contrastive losses and differs per worker), and it makes padding /
    batch-splitting invariances exact in tests.
    """

    def __init__(self, embed_dim: int = 256, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers = []
        c_in = 3
        for c in widths:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False),
                    nn.GroupNorm(min(8, c), c),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head: nn.Module = nn.Linear(c_in, embed_dim)
        self.num_features = c_in

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.flatten(self.avgpool(self.features(x))))


def _make_head(in_features: int, embed_dim: int, projection_head: bool) -> nn.Module:
    linear = nn.Linear(in_features, embed_dim)
    if not projection_head:
        return linear
    # Ablation only: the paper found a projection head hurts (+0.29 % vs +0.46 %).
    return nn.Sequential(linear, nn.ReLU(inplace=True), nn.Linear(embed_dim, embed_dim))


@dataclass
class LoadReport:
    """What ``weights_path`` loading did; attached to the module as ``load_report``."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    shape_mismatch: list[str] = field(default_factory=list)  # e.g. the 1000-class head

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        return (
            f"loaded {len(self.loaded)} tensors from {self.path}; "
            f"missing {len(self.missing)} [{short(self.missing)}]; "
            f"unexpected {len(self.unexpected)} [{short(self.unexpected)}]; "
            f"shape mismatch (skipped) {len(self.shape_mismatch)} [{short(self.shape_mismatch)}]"
        )


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if "://" in path:
        # a dataset-root URI (the generic trunk under models/, shared by every worker)
        import io

        from courier_spark.core import fs
        obj = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # Accept common wrappers: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


_PREFIXES = ("", "module.", "encoder.", "module.encoder.")


def _strip_best_prefix(sd: dict[str, Tensor], own_keys: set[str]) -> dict[str, Tensor]:
    """Strip the prefix (DDP's ``module.``, CourierModel's ``encoder.``) that matches most keys.

    Keys without the chosen prefix are kept as-is, so they surface as unexpected
    (e.g. the attention weights of a full CourierModel checkpoint).
    """

    def strip(prefix: str) -> dict[str, Tensor]:
        return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in sd.items()}

    return max((strip(p) for p in _PREFIXES), key=lambda d: len(own_keys.intersection(d)))


def load_weights(model: nn.Module, path: str) -> LoadReport:
    """Load a local state dict non-strictly and report every key that did not load.

    Tensors whose shape differs from the model's (the replaced classifier head)
    are skipped rather than failing, and listed. Raises if nothing matched,
    which almost always means a wrong file.
    """
    own = model.state_dict()
    sd = _strip_best_prefix(_read_state_dict(path), set(own))
    report = LoadReport(path=path)
    usable: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.shape_mismatch.append(f"{k} {tuple(v.shape)}->{tuple(own[k].shape)}")
        else:
            usable[k] = v
    result = model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(result.missing_keys)
    if not usable:
        raise DataError(f"no tensor of {path} matches the model: {report.summary()}")
    level = logging.WARNING if (report.missing or report.unexpected or report.shape_mismatch) else logging.INFO
    log.log(level, "backbone weights: %s", report.summary())
    return report


def _build_swin_t(embed_dim: int, projection_head: bool, grad_checkpointing: bool) -> nn.Module:
    import torchvision

    m = torchvision.models.swin_t(weights=None)  # never touches the hub
    if grad_checkpointing:
        # features = [patch embed, stage1, merge, stage2, merge, stage3, merge, stage4];
        # checkpoint the attention blocks of every stage (paper: checkpointing on attention layers).
        for i, f in enumerate(m.features):
            if isinstance(f, nn.Sequential) and any(
                type(c).__name__.startswith("SwinTransformerBlock") for c in f.children()
            ):
                m.features[i] = _checkpoint_sequential(f)
    m.head = _make_head(m.head.in_features, embed_dim, projection_head)
    return m


def _build_resnet18(embed_dim: int, projection_head: bool, grad_checkpointing: bool) -> nn.Module:
    import torchvision

    m = torchvision.models.resnet18(weights=None)
    if grad_checkpointing:
        for name in ("layer1", "layer2", "layer3", "layer4"):
            setattr(m, name, _checkpoint_sequential(getattr(m, name)))
    m.fc = _make_head(m.fc.in_features, embed_dim, projection_head)
    return m


def _build_small_cnn(embed_dim: int, projection_head: bool, grad_checkpointing: bool) -> nn.Module:
    m = SmallCNN(embed_dim)
    if grad_checkpointing:
        m.features = _checkpoint_sequential(m.features)
    m.head = _make_head(m.num_features, embed_dim, projection_head)
    return m


_BUILDERS: dict[str, Callable[[int, bool, bool], nn.Module]] = {
    "swin_t": _build_swin_t,
    "resnet18": _build_resnet18,
    "small_cnn": _build_small_cnn,
}


def build_backbone(
    name: str,
    embed_dim: int = 256,
    weights_path: str | None = None,
    *,
    grad_checkpointing: bool = False,
    projection_head: bool = False,
) -> nn.Module:
    """Build an image encoder ``[B, 3, H, W] -> [B, embed_dim]``.

    name: ``swin_t`` (paper, 224 px), ``resnet18`` (CPU-friendly, 64 px) or
    ``small_cnn`` (tiny, tests / demo, 48 px).
    weights_path: optional state dict, a local path or fs URI (torchvision ImageNet
    checkpoint or one saved from this module / ``CourierModel``); the fresh head is skipped
    on shape mismatch. The outcome is logged and kept as ``model.load_report``.
    grad_checkpointing: recompute blocks in backward to save activation memory.
    projection_head: ablation; Linear -> ReLU -> Linear instead of one Linear.

    The module carries ``embed_dim`` and ``backbone_name`` attributes.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if embed_dim <= 0:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")
    model = _BUILDERS[name](embed_dim, projection_head, grad_checkpointing)
    model.embed_dim = embed_dim  # type: ignore[assignment]
    model.backbone_name = name  # type: ignore[assignment]
    model.load_report = load_weights(model, weights_path) if weights_path else None  # type: ignore[assignment]
    return model

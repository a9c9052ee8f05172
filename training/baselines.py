"""Comparison pre-training methods sharing COURIER's backbones (method.md, "Ablations and baselines").

* SimCLR: two augmented views per image, NT-Xent with 2N-2 in-batch negatives
  (global batch when a collective is given), projection head on top of the
  encoder (the embedding used downstream is the encoder output, before it).
* Image-only supervised click model (``supervised_image``, a reference row,
  not the paper's Supervised, which is ``training.supervised_ctr``): PV image
  embedding + masked-mean history embedding -> MLP -> click logit, BCE over
  valid PV items.

Images for ``simclr_augment`` are float ``[N, 3, H, W]`` in ``[0, 1]``
(normalise AFTER augmenting); all randomness comes from a ``torch.Generator``
so runs are reproducible per worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import build_backbone
from .losses import Collective, LocalCollective, LossOutput
from .model import encode_padded, encode_slots, masked_mean, model_inputs

# ---------------------------------------------------------------- augmentation


@dataclass
class AugmentConfig:
    """SimCLR's augmentation recipe (torchvision-style parameter ranges)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # fraction of a full turn
    grey_p: float = 0.2
    clamp: bool = True  # keep values in [0, 1]


_GREY = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _grey(x: Tensor) -> Tensor:
    w = x.new_tensor(_GREY).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def simclr_augment(
    images: Tensor,
    generator: torch.Generator,
    out_size: int | tuple[int, int] | None = None,
    cfg: AugmentConfig | None = None,
) -> Tensor:
    """One random view per image: resized crop, horizontal flip, colour jitter, greyscale.

    Batched (one ``grid_sample`` for all crops); parameters are drawn on the
    CPU from ``generator`` and moved to the images' device.
    """
    cfg = cfg or AugmentConfig()
    n, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got {tuple(images.shape)}")
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else (out_size or (h, w))
    g, dev = generator, images.device
    x = images.float()

    # Random resized crop + flip as one affine map in normalised coordinates [-1, 1].
    area = _uniform(n, *cfg.crop_scale, g)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g)
    ratio = torch.exp(log_r) * (h / w)  # so the crop's PIXEL aspect follows crop_ratio
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - cw)  # keep the crop inside the image
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, generator=g) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta.to(dev), [n, 3, oh, ow], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def clamp(t: Tensor) -> Tensor:
        return t.clamp(0.0, 1.0) if cfg.clamp else t

    # Colour jitter (applied to a jitter_p share of the images; identity factors otherwise).
    on = torch.rand(n, generator=g) < cfg.jitter_p

    def factor(strength: float) -> Tensor:
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, g)
        return torch.where(on, f, torch.ones_like(f)).to(dev).view(n, 1, 1, 1)

    b, k, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    x = clamp(x * b)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = clamp((x - mean) * k + mean)
    gx = _grey(x)
    x = clamp((x - gx) * s + gx)
    # Hue: rotate the chroma plane (I, Q) of YIQ, a linear map, so it works batched.
    angle = torch.where(on, _uniform(n, -cfg.hue, cfg.hue, g), torch.zeros(n)) * 2 * math.pi
    t = torch.tensor(_RGB2YIQ)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    m = (torch.linalg.inv(t) @ rot @ t).to(dev)  # [n, 3, 3]
    x = clamp(torch.einsum("nij,njhw->nihw", m, x))

    grey_on = (torch.rand(n, generator=g) < cfg.grey_p).to(dev).view(n, 1, 1, 1)
    x = torch.where(grey_on, _grey(x).expand(-1, 3, -1, -1), x)
    return x.to(images.dtype)


def two_views(
    images: Tensor, generator: torch.Generator, out_size: int | None = None, cfg: AugmentConfig | None = None
) -> tuple[Tensor, Tensor]:
    """Two independent augmented views of the same images (SimCLR's input pair)."""
    return simclr_augment(images, generator, out_size, cfg), simclr_augment(images, generator, out_size, cfg)


# ---------------------------------------------------------------- SimCLR


class SimCLRModel(nn.Module):
    """Encoder + projection MLP; ``forward`` gives projections for the loss, ``encode`` the embedding."""

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        hidden = hidden_dim or self.embed_dim
        self.projector = nn.Sequential(
            nn.Linear(self.embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim)
        )

    @classmethod
    def from_backbone(cls, name: str = "small_cnn", embed_dim: int = 256, proj_dim: int = 128, **kw: object) -> "SimCLRModel":
        return cls(build_backbone(name, embed_dim, **kw), proj_dim=proj_dim)  # type: ignore[arg-type]

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.projector(self.encoder(images))


def simclr_loss(
    z1: Tensor,
    z2: Tensor,
    tau: float = 0.2,
    collective: Collective | None = None,
    mask: Tensor | None = None,
) -> LossOutput:
    """NT-Xent over the (global) batch.

    z1, z2 ``[N, d]``: projections of two views of the same N images (same N on
    every worker; ``mask [N]`` marks real rows if the batch was padded). Each
    of the 2N views is a query whose positive is the other view of its image
    and whose negatives are the other 2N-2 views (2WN-2 globally); the query
    itself is excluded. Mean over the 2N valid queries, normalised across
    workers like the COURIER losses (see training/losses.py).
    """
    coll = collective if collective is not None else LocalCollective()
    n, d = z1.shape
    valid = torch.ones(n, dtype=torch.bool, device=z1.device) if mask is None else mask.reshape(-1).bool()
    valid2 = torch.cat([valid, valid])
    z = torch.cat([z1, z2]).float().masked_fill(~valid2[:, None], 0.0)
    z = F.normalize(z, dim=-1)  # [2N, d]: rows 0..N-1 view 1, N..2N-1 view 2
    gathered = coll.all_gather(torch.cat([z, valid2[:, None].float()], dim=1))
    z_all, m_all = gathered[:, :d], gathered[:, d] > 0.5  # [W*2N, d]

    q_idx = valid2.nonzero(as_tuple=True)[0]
    q = z[q_idx]
    self_global = coll.rank * 2 * n + q_idx
    pos_local = (q_idx + n) % (2 * n)
    pos_global = coll.rank * 2 * n + pos_local
    logits = (q @ z_all.T) / tau
    rows = torch.arange(q_idx.numel(), device=z.device)
    cand = m_all[None, :].expand(q_idx.numel(), -1).clone()
    cand[rows, self_global] = False
    logits = logits.masked_fill(~cand, float("-inf"))
    terms = torch.logsumexp(logits, dim=1) - (q * z[pos_local]).sum(-1) / tau
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == pos_global).sum() if q_idx.numel() else q_idx.new_zeros(())
        stats = coll.all_sum(torch.stack([z.new_tensor(float(q_idx.numel())), correct.float()]))
    loss = terms.sum() / stats[0].clamp_min(1.0) * coll.world_size
    return LossOutput(loss=loss, n_terms=stats[0], accuracy=stats[1] / stats[0].clamp_min(1.0))


# ---------------------------------------------------------------- supervised click model


class SupervisedClickModel(nn.Module):
    """Click prediction from images only: ``[E_pv_j, masked_mean(E_click)] -> MLP -> logit``.

    The ``supervised_image`` reference: the encoder is trained by the click
    labels directly, with nothing beside the image tower to fit them (the
    paper's Supervised is the whole CTR model: ``training.supervised_ctr``).
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        self.head = nn.Sequential(
            nn.Linear(2 * self.embed_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 1)
        )

    @classmethod
    def from_backbone(cls, name: str = "small_cnn", embed_dim: int = 256, hidden_dim: int = 256, **kw: object) -> "SupervisedClickModel":
        return cls(build_backbone(name, embed_dim, **kw), hidden_dim=hidden_dim)  # type: ignore[arg-type]

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, pv_images: Tensor, pv_mask: Tensor, hist_images: Tensor, hist_mask: Tensor,
                items: Tensor | None = None) -> Tensor:
        """Logits ``[B, Lpv]`` (0 in padded PV slots). With ``items``, the image
        arguments are slot indices into it, as in ``CourierModel.forward``."""
        pv_mask, hist_mask = pv_mask.bool(), hist_mask.bool()
        if items is not None:
            e_pv, e_hist = encode_slots(self.encoder, items, [pv_images, hist_images])
        else:
            e_pv, e_hist = encode_padded(self.encoder, [(pv_images, pv_mask), (hist_images, hist_mask)])
        user = masked_mean(e_hist, hist_mask)  # [B, d]
        feats = torch.cat([e_pv, user[:, None, :].expand_as(e_pv)], dim=-1)
        return self.head(feats).squeeze(-1) * pv_mask.to(e_pv.dtype)


def supervised_click_loss(
    logits: Tensor, pv_labels: Tensor, pv_mask: Tensor, collective: Collective | None = None
) -> LossOutput:
    """BCE over valid PV items, mean over the global batch (``accuracy`` at threshold 0.5)."""
    coll = collective if collective is not None else LocalCollective()
    mask = pv_mask.bool()
    x, y = logits.float()[mask], pv_labels.float()[mask]
    terms = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    with torch.no_grad():
        correct = ((x > 0).float() == y).sum()
        stats = coll.all_sum(torch.stack([x.new_tensor(float(x.numel())), correct]))
    loss = terms.sum() / stats[0].clamp_min(1.0) * coll.world_size
    return LossOutput(loss=loss, n_terms=stats[0], accuracy=stats[1] / stats[0].clamp_min(1.0))


# ---------------------------------------------------------------- dispatcher used by training/train.py

# ImageNet statistics used by training/images.py (the loader's normalisation).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _augment_normalised(images: Tensor, generator: torch.Generator) -> Tensor:
    """Augment ImageNet-normalised images: undo the normalisation, augment in [0, 1], redo it."""
    mean = images.new_tensor(_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_STD).view(1, 3, 1, 1)
    return (simclr_augment(images * std + mean, generator) - mean) / std


def simclr_batch_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    tau: float = 0.2,
    collective: Collective | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """SimCLR on every valid PV and history image of a COURIER batch.

    The padded slot layout is kept (invalid slots get zero projections and a
    False mask) so every worker passes the same shapes to the all_gather.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    # Two augmented views per slot (not per distinct item): the loss is exactly
    # the per-slot one whichever batch layout the loader gave.
    from .loader import slot_images
    batch = slot_images(batch)
    imgs = torch.cat([batch["pv_images"].flatten(0, 1), batch["hist_images"].flatten(0, 1)])
    mask = torch.cat([batch["pv_mask"].flatten(), batch["hist_mask"].flatten()]).bool()
    idx = mask.nonzero(as_tuple=True)[0]
    valid = imgs[idx]
    v1, v2 = _augment_normalised(valid, g), _augment_normalised(valid, g)
    z = model(torch.cat([v1, v2]))  # one encoder call for both views
    n = idx.numel()
    z1 = z.new_zeros((mask.numel(), z.shape[-1])).index_copy(0, idx, z[:n])
    z2 = z.new_zeros((mask.numel(), z.shape[-1])).index_copy(0, idx, z[n:])
    return simclr_loss(z1, z2, tau, collective, mask)


def baseline_loss(
    objective: str,
    model: nn.Module,
    batch: dict[str, Tensor],
    cfg: object,
    collective: Collective | None,
    step: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss + detached metrics (loss, acc, n_terms) for ``objective`` in {simclr, supervised_image}.

    cfg: needs ``tau_simclr`` (simclr) and ``seed``; augmentation randomness is
    seeded by (seed, step, rank) so a resumed run draws the same views.
    """
    rank = collective.rank if collective is not None else 0
    if objective == "simclr":
        seed = int(getattr(cfg, "seed", 0))
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)
        out = simclr_batch_loss(model, batch, float(getattr(cfg, "tau_simclr", 0.2)), collective, g)
    elif objective == "supervised_image":
        logits = model(*model_inputs(batch))
        out = supervised_click_loss(logits, batch["pv_labels"], batch["pv_mask"], collective)
    else:
        raise ValueError(f"unknown baseline objective {objective!r} (simclr | supervised_image)")
    return out.loss, {"loss": out.loss.detach(), "acc": out.accuracy, "n_terms": out.n_terms}

"""COURIER model: image backbone + user intention reconstruction (method.md, "Model").

Shapes (B rows, Lpv page slots, Lc history slots, d embedding size):

* ``pv_images [B, Lpv, 3, H, W]``, ``pv_mask [B, Lpv]`` (True = real item)
* ``hist_images [B, Lc, 3, H, W]``, ``hist_mask [B, Lc]`` (oldest -> newest, right-padded)

Only valid images go through the encoder (one call on the concatenation of the
valid PV and history images); padded slots get zero embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones import build_backbone

ATTENTION_MODES = ("plain", "multihead", "self")


def reconstruct(query: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
    """Paper's user intention reconstruction, parameter free.

    ``R_q = sum_k softmax_k(q . K^T / sqrt(d)) K_k`` with masked keys excluded
    from the softmax, so the result is a convex combination of the valid keys.

    query ``[B, Q, d]``, keys ``[B, K, d]``, key_mask ``[B, K]`` bool -> ``[B, Q, d]``.
    A row without any valid key reconstructs to zeros (there is nothing to
    combine; cosine similarity with it is then 0).
    """
    key_mask = key_mask.bool()
    # Zero the padded keys before the matmul: their attention weight is 0 anyway,
    # but 0 * inf = nan would otherwise leak from garbage padding into gradients.
    keys = keys.masked_fill(~key_mask[..., None], 0.0)
    d = query.shape[-1]
    scores = torch.matmul(query, keys.transpose(-1, -2)) / math.sqrt(d)  # [B, Q, K]
    # Softmax in at least float32 (fp16 / bf16 under autocast lose the small weights).
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    has_key = key_mask.any(dim=-1)  # [B]
    # All -inf rows would give nan; give them finite scores, then zero them below.
    scores = torch.where(has_key[:, None, None], scores, torch.zeros_like(scores))
    weights = torch.softmax(scores, dim=-1) * key_mask[:, None, :]
    return torch.matmul(weights.to(keys.dtype), keys)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [B, L, d]`` over the valid slots of ``mask [B, L]``; zeros for empty rows."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def encode_padded(encoder: nn.Module, groups: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """Encode only the valid images of several padded groups in ONE encoder call.

    groups: ``[(images [B, L, 3, H, W], mask [B, L]), ...]`` with equal H, W.
    Returns ``[emb [B, L, d], ...]`` with zeros in padded slots. One call keeps
    the backbone's kernels busy and runs its (checkpointed) graph once.
    """
    flats, idxs = [], []
    for images, mask in groups:
        b, l = mask.shape
        flat_mask = mask.reshape(b * l).bool()
        idx = flat_mask.nonzero(as_tuple=True)[0]
        flats.append(images.reshape(b * l, *images.shape[2:])[idx])
        idxs.append(idx)
    valid = torch.cat(flats, dim=0)
    d = int(getattr(encoder, "embed_dim"))
    if valid.shape[0] > 0:
        emb = encoder(valid)
    else:  # nothing to encode: keep dtype/device, no graph
        emb = valid.new_zeros((0, d))
    outs, start = [], 0
    for (images, mask), idx in zip(groups, idxs):
        b, l = mask.shape
        n = idx.numel()
        full = emb.new_zeros((b * l, emb.shape[-1]))
        # index_copy is differentiable w.r.t. the source: gradients reach the encoder.
        full = full.index_copy(0, idx, emb[start : start + n])
        outs.append(full.reshape(b, l, -1))
        start += n
    return outs


def encode_slots(encoder: nn.Module, items: Tensor, slots: list[Tensor]) -> list[Tensor]:
    """Encode each distinct item of a batch ONCE and lay the embeddings out per slot.

    ``items [U, 3, H, W]``: the batch's distinct images; ``slots``: index
    tensors ``[B, L]`` into ``items`` (-1 = padding). Returns ``[emb [B, L, d], ...]``
    with zeros at padding. For an encoder that embeds each image on its own
    (GroupNorm, no dropout: small_cnn) the loss and its gradients equal
    ``encode_padded`` on the per-slot images: a repeated item's slots share one
    forward, and the gather sums their gradients. (BatchNorm backbones see
    batch statistics over distinct items instead of slots.)
    """
    d = int(getattr(encoder, "embed_dim"))
    if items.shape[0] == 0:
        return [items.new_zeros((*s.shape, d)) for s in slots]
    emb = encoder(items)
    return [torch.where((s >= 0)[..., None], emb[s.clamp_min(0)], emb.new_zeros(())) for s in slots]


def model_inputs(batch: dict) -> tuple:
    """The model's positional inputs for a batch in either layout: per-slot
    images, or an indexed batch (``items`` + slot indices, each distinct item
    encoded once; ``training.loader.DecodedItems.batch``)."""
    if "items" in batch:
        return batch["pv_slot"], batch["pv_mask"], batch["hist_slot"], batch["hist_mask"], batch["items"]
    return batch["pv_images"], batch["pv_mask"], batch["hist_images"], batch["hist_mask"]


@dataclass
class CourierOutput:
    """Everything the losses need; padded slots are zero."""

    e_pv: Tensor  # [B, Lpv, d] PV item embeddings
    r_pv: Tensor  # [B, Lpv, d] reconstruction of each PV item from the history
    e_hist: Tensor  # [B, Lc, d] history embeddings
    e_ucs_target: Tensor  # [B, d] embedding of the most recent valid click
    r_ucs: Tensor  # [B, d] its reconstruction from the earlier valid clicks
    ucs_mask: Tensor  # [B] bool, row has >= 2 valid clicks (a UCS query exists)
    ucs_target_mask: Tensor  # [B] bool, row has >= 1 valid click (a UCS candidate exists)
    pv_mask: Tensor  # [B, Lpv] bool (echo of the input)
    hist_mask: Tensor  # [B, Lc] bool (echo of the input)


def ucs_split(hist_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split each history into (target = most recent valid click, earlier clicks).

    Returns ``target_idx [B]`` (0 for empty rows), ``earlier_mask [B, Lc]``,
    ``ucs_mask [B]`` (>= 2 valid clicks) and ``target_mask [B]`` (>= 1).
    Assumes right padding, as the data contract says; the target is the last
    True slot so a stray hole in the mask would still pick the newest click.
    """
    hist_mask = hist_mask.bool()
    b, lc = hist_mask.shape
    pos = torch.arange(lc, device=hist_mask.device).expand(b, lc)
    n_valid = hist_mask.sum(dim=1)
    target_idx = torch.where(hist_mask, pos, torch.full_like(pos, -1)).max(dim=1).values.clamp_min(0)
    earlier_mask = hist_mask & (pos < target_idx[:, None])
    return target_idx, earlier_mask, n_valid >= 2, n_valid >= 1


class CourierModel(nn.Module):
    """Encoder + user intention reconstruction.

    attention:
      * ``"plain"``: the paper's parameter-free formula (``reconstruct``), masked.
      * ``"multihead"``: ``nn.MultiheadAttention`` (``num_heads``, learned
        projections) as in the authors' code, but WITH the key padding mask.
      * ``"self"``: ablation "w/o Reconstruction": one user vector per row from
        masked multi-head self-attention over the history, mean-pooled over the
        valid slots, used for every PV item (it does not depend on the query).
    The UCS reconstruction uses the same mechanism (query = target click,
    keys = earlier clicks).
    """

    def __init__(self, encoder: nn.Module, attention: str = "plain", num_heads: int = 4) -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if not hasattr(encoder, "embed_dim"):
            raise ValueError("encoder needs an `embed_dim` attribute (use training.backbones.build_backbone)")
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        self.attention = attention
        self.mha: nn.MultiheadAttention | None = None
        if attention in ("multihead", "self"):
            self.mha = nn.MultiheadAttention(self.embed_dim, num_heads, batch_first=True)

    @classmethod
    def from_backbone(
        cls,
        name: str = "small_cnn",
        embed_dim: int = 256,
        attention: str = "plain",
        num_heads: int = 4,
        weights_path: str | None = None,
        grad_checkpointing: bool = False,
        projection_head: bool = False,
    ) -> "CourierModel":
        enc = build_backbone(
            name, embed_dim, weights_path, grad_checkpointing=grad_checkpointing, projection_head=projection_head
        )
        return cls(enc, attention=attention, num_heads=num_heads)

    def encode(self, images: Tensor) -> Tensor:
        """Embed ``[N, 3, H, W]`` images -> ``[N, d]`` (raw, not normalised)."""
        return self.encoder(images)

    def _attend(self, query: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        """Reconstruct ``query [B, Q, d]`` from ``keys [B, K, d]`` with the configured mechanism."""
        key_mask = key_mask.bool()
        has_key = key_mask.any(dim=1)
        if self.attention == "plain":
            return reconstruct(query, keys, key_mask)
        assert self.mha is not None
        keys = keys.masked_fill(~key_mask[..., None], 0.0)
        # A fully padded row would make the softmax nan: unmask it for the call, zero it after.
        pad = ~key_mask & has_key[:, None]
        if self.attention == "multihead":
            out, _ = self.mha(query, keys, keys, key_padding_mask=pad, need_weights=False)
        else:  # "self": query-independent user vector
            ctx, _ = self.mha(keys, keys, keys, key_padding_mask=pad, need_weights=False)
            user = masked_mean(ctx, key_mask)  # [B, d]
            out = user[:, None, :].expand(-1, query.shape[1], -1)
        return out * has_key[:, None, None].to(out.dtype)

    def forward(self, pv_images: Tensor, pv_mask: Tensor, hist_images: Tensor, hist_mask: Tensor,
                items: Tensor | None = None) -> CourierOutput:
        """Per-slot images ``[B, L, 3, H, W]``; or, with ``items`` (each distinct
        image once), ``pv_images`` / ``hist_images`` are ``[B, L]`` slot indices
        into it (``training.loader.DecodedItems.batch``)."""
        pv_mask = pv_mask.bool()
        hist_mask = hist_mask.bool()
        if items is not None:
            e_pv, e_hist = encode_slots(self.encoder, items, [pv_images, hist_images])
        else:
            e_pv, e_hist = encode_padded(self.encoder, [(pv_images, pv_mask), (hist_images, hist_mask)])

        r_pv = self._attend(e_pv, e_hist, hist_mask)
        r_pv = r_pv * pv_mask[..., None].to(r_pv.dtype)  # padded PV slots stay zero

        target_idx, earlier_mask, ucs_mask, target_mask = ucs_split(hist_mask)
        b = e_hist.shape[0]
        e_target = e_hist[torch.arange(b, device=e_hist.device), target_idx]  # zeros for empty rows
        r_ucs = self._attend(e_target[:, None, :], e_hist, earlier_mask)[:, 0]
        r_ucs = r_ucs * ucs_mask[:, None].to(r_ucs.dtype)
        return CourierOutput(
            e_pv=e_pv,
            r_pv=r_pv,
            e_hist=e_hist,
            e_ucs_target=e_target,
            r_ucs=r_ucs,
            ucs_mask=ucs_mask,
            ucs_target_mask=target_mask,
            pv_mask=pv_mask,
            hist_mask=hist_mask,
        )

"""The paper's Supervised baseline (section 4.2, "compared methods"): a CTR
model trained end to end with click labels, image backbone included; its
image network is then used like every other method's encoder.

The CTR model is the project's own downstream DNN
(``courier_spark.evaluate.ctr_dnn``, the paper's appendix model) with the
same sizes (``DnnConfig``'s defaults) and the same kinds of input, plus a
trainable image tower:

* target item: hashed item-ID, hashed category and mean-pooled title tokens;
* user: hashed user-ID, the history length, and the history clicks (item-ID +
  category + title + the clicked item's image + recency) through multi-head
  self-attention + residual + layer norm, mean-pooled and projected;
* the image: the encoder applied to the target and to every history item,
  projected to the embedding width and fed the way the cluster-ID path feeds
  a cluster (the target, target attention over the history images and their
  mean, each also times the target);
* everything concatenated into the same MLP, BCE over the valid page slots.

Trained on the pre-training window's page views (the rows every method
trains on: never the CTR days), at the same budget (steps x global batch),
optimiser and learning rate as every other method. Its ID, category and title
tables start fresh (seeded): the paper warm-starts from its production
model, but here a warm start would have to come from a CTR fit on the CTR
days, whose labels the encoder must never see. What the paper's appendix B
describes can then happen here too: the ID tables fit the clicks before the
image weights learn anything.

Left out of the downstream DNN's inputs: position, price, query and the
CTR statistics (the pre-training page views do not carry them).
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor, nn

from courier_spark.evaluate.ctr_dnn import SmallMultiheadAttention, token_matrix
from courier_spark.core.schema import DnnConfig

from .model import encode_slots, masked_mean

# The downstream DNN's sizes (evaluate.dnn defaults): one CTR architecture.
SIZES = DnnConfig()
CATEGORY_BUCKETS = 1024   # hashed category names (the downstream DNN indexes the train frame's)
_GOLDEN = -7046029254386353131   # 0x9E3779B97F4A7C15 as a signed int64 (Fibonacci hashing)


def hash_ids_torch(ids: Tensor, buckets: int) -> Tensor:
    """``ctr_dnn.hash_ids`` on int64 tensors: the same bucket for the same id
    (int64 products wrap like uint64; the mask turns the arithmetic shift
    into the logical one), 0 where ``valid`` is False is the caller's job."""
    h = ((ids * _GOLDEN) >> 33) & ((1 << 31) - 1)
    return 1 + h % (buckets - 1)


def category_codes(categories: np.ndarray | list) -> np.ndarray:
    """Stable bucket of each category name in [1, CATEGORY_BUCKETS); 0 = missing."""
    return np.array([0 if c is None else 1 + zlib.crc32(str(c).encode("utf-8")) % (CATEGORY_BUCKETS - 1)
                     for c in categories], dtype=np.int64)


def title_codes(titles: np.ndarray | list) -> np.ndarray:
    """``[n, max_title_tokens]`` hashed title tokens (0 = padding), as the downstream DNN hashes them."""
    import pandas as pd
    return token_matrix(pd.Series(list(titles), dtype=object), SIZES.max_title_tokens, SIZES.token_buckets)


class SupervisedCtrModel(nn.Module):
    """The downstream CTR DNN with a trainable image tower (``encoder``)."""

    def __init__(self, encoder: nn.Module, cfg: DnnConfig = SIZES) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        e = cfg.emb_dim
        self.cfg = cfg
        self.item = nn.Embedding(cfg.item_buckets, e, padding_idx=0)
        self.user = nn.Embedding(cfg.user_buckets, e)
        self.cat = nn.Embedding(CATEGORY_BUCKETS, e, padding_idx=0)
        self.tok = nn.Embedding(cfg.token_buckets, e, padding_idx=0)
        self.recency = nn.Embedding(64, e)
        self.image = nn.Linear(self.embed_dim, e)   # the image tower's output at the DNN's width
        self.attn = SmallMultiheadAttention(e, cfg.attn_heads)
        self.norm = nn.LayerNorm(e)
        self.hist_proj = nn.Linear(e, e)
        width = 4 * e + 1 + 5 * e   # item, cat, title, user, hist_len; image + its 4 interest parts
        width += e                  # the attended history
        layers: list[nn.Module] = []
        for h in cfg.mlp_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def _title(self, tok: Tensor) -> Tensor:
        """Mean of the non-padding token embeddings over the last dim of tok [..., T]."""
        flat = tok.reshape(-1, tok.shape[-1])
        pooled = nn.functional.embedding_bag(flat, self.tok.weight, mode="mean", padding_idx=0)
        return pooled.reshape(*tok.shape[:-1], -1)

    def _items(self, ids: Tensor, valid: Tensor, cat: Tensor, tok: Tensor) -> Tensor:
        """Item-ID + category + title embedding of every slot ([B, L, e]); zeros where not valid."""
        hashed = torch.where(valid, hash_ids_torch(ids.clamp_min(0), self.cfg.item_buckets), 0)
        return self.item(hashed), self.cat(cat), self._title(tok)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, Lpv]`` (0 in masked page slots) of an indexed batch with
        the CTR fields (``training.loader.DecodedItems.batch`` with attributes)."""
        pv_mask, hist_mask = batch["pv_mask"].bool(), batch["hist_mask"].bool()
        e_pv, e_hist = encode_slots(self.encoder, batch["items"], [batch["pv_slot"], batch["hist_slot"]])
        img_t = self.image(e_pv)                                  # [B, Lpv, e]
        img_h = self.image(e_hist) * hist_mask[..., None]         # [B, Lc, e]
        b, lc = hist_mask.shape
        lpv = pv_mask.shape[1]
        # History: what the downstream DNN's slots carry, plus the clicked image.
        hist_valid = batch["hist_known"].bool()
        hi, hc, ht = self._items(batch["hist_ids"], hist_valid, batch["hist_cat"], batch["hist_tok"])
        rec = self.recency(torch.arange(lc, device=hi.device) % self.recency.num_embeddings)
        h = (hi + hc + ht + img_h + rec[None]) * hist_valid[..., None]
        h = self.norm(h + self.attn(h, hist_valid))
        user_hist = self.hist_proj(masked_mean(h, hist_valid))    # [B, e]
        hist_len = torch.log1p(hist_valid.sum(1, keepdim=True).float())
        user = self.user(hash_ids_torch(batch["user_ids"].clamp_min(0), self.cfg.user_buckets))
        ti, tc, tt = self._items(batch["pv_ids"], pv_mask, batch["pv_cat"], batch["pv_tok"])
        # Image interest per target slot, as the cluster-ID path summarises a cluster.
        logits = torch.einsum("bje,bke->bjk", img_t, img_h) / math.sqrt(img_t.shape[-1])
        logits = logits.masked_fill(~hist_mask[:, None, :], -1e9)
        w = torch.softmax(logits, dim=-1) * hist_mask[:, None, :]
        att = w @ img_h                                           # [B, Lpv, e]
        mean = masked_mean(img_h, hist_mask)[:, None, :].expand_as(img_t)
        per_user = torch.cat([user, user_hist, hist_len], 1)[:, None, :].expand(b, lpv, -1)
        x = torch.cat([ti, tc, tt, img_t, att, img_t * att, mean, img_t * mean, per_user], dim=-1)
        return self.mlp(x).squeeze(-1) * pv_mask.to(x.dtype)

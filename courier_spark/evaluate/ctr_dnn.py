"""The downstream DNN CTR model (after the COURIER paper's appendix), small.

Item side: hashed item-ID embedding, category embedding, hashed title tokens
(mean-pooled), price bucket, position, and (``statistics``) the log CTR ratio
and log impressions of the item, the user and the category (``ctr_stats``).
User side: hashed user-ID embedding, the history length, and the last
``history_len`` clicked items through multi-head self-attention + residual +
layer norm, mean-pooled over the valid slots and projected. Each slot is the
item-ID embedding + a recency embedding and (``history_text``, default on)
the clicked item's category embedding and mean-pooled title tokens, from the
same tables as the target's; the attributes come from the item table
(``items``: the whole catalogue, else the frame's own items) via a per-item
lookup held by ``DnnPreprocessor``. With ``text_interest`` (default on) the
target's category and its title embedding each attend over the categories /
titles of the *whole* behaviour sequence, summarised exactly like the
cluster-ID path below:
the baseline then has the same "clicked this kind of item before" interaction
for everything text says that a cluster ID gets for looks. The query is hashed into the title token
table and pooled the same way ("query treated like titles"). Everything is
concatenated into an MLP (5 linear layers by default) trained with BCE.

Every numeric input (statistics, history length, SimScores, vectors) is
standardised with the mean / std of the *train* rows (``Standardiser``, fitted
in ``DnnPreprocessor.fit``), and test rows get the same transform: raw
cosines sit in a band about 0.01 wide, which an MLP with small initial
weights cannot resolve. Missing entries are 0 after standardisation, next to
their missing indicator.

The image feature is one flag, ``image_feature``:

* ``none``       - baseline, no image feature.
* ``vector``     - linear projection of ``target_embedding`` (centred by the
                   train mean vector, per-dimension std) + a missing flag
                   (all-zero vector = item without embedding; statistics over
                   the items with one).
* ``simscore``   - the K similarity scores (per-slot train mean / std over the
                   valid values; missing -> 0) plus K missing indicators.
* ``cluster_id`` - one hashed cluster-ID embedding table shared by the target
                   cluster and the history clusters (``hist_cluster_ids``: every
                   slot the frame gives; ``ctr_frames`` gives the whole behaviour
                   sequence). The history is summarised two ways, both fed
                   to the MLP with their element-wise product with the target:
                   (a) target attention (scaled dot product of the target
                   cluster over the valid history clusters), which
                   picks out "user clicked this kind of look before", and
                   (b) the mean over valid history clusters, which keeps *how
                   many* history clicks match (softmax normalises that away).
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from courier_spark.core.logs import say
from courier_spark.core.schema import DnnConfig, EvaluateConfig
from courier_spark.evaluate.ctr_stats import CtrStatistics
from courier_spark.evaluate.frames import check_ctr_frame, item_table, stack_fixed, title_tokens, train_labels

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Stable hash of integer ids into [1, buckets) (0 = padding/missing).
    Fibonacci hashing spreads structured ids (e.g. multiples of 7) evenly."""
    a = np.asarray(ids).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (a * _GOLDEN) >> np.uint64(33)
    return (1 + (h % np.uint64(buckets - 1))).astype(np.int64)


def token_matrix(texts: pd.Series, max_tokens: int, buckets: int) -> np.ndarray:
    """[n, max_tokens] hashed token ids (0 = padding); tokenises each distinct text once."""
    codes, uniques = pd.factorize(texts.fillna("").astype(str), sort=False)
    mat = np.zeros((len(uniques), max_tokens), dtype=np.int64)
    for r, text in enumerate(uniques):
        toks = title_tokens(text)[:max_tokens]
        for c, t in enumerate(toks):
            mat[r, c] = 1 + zlib.crc32(t.encode("utf-8")) % (buckets - 1)
    if len(uniques) == 0:
        return np.zeros((len(texts), max_tokens), dtype=np.int64)
    return mat[codes]


def _last_n_matrix(lists: pd.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned [rows, n] matrix of the last n values of each list (the
    newest in column n-1) and the full list lengths; -1 where empty."""
    seqs = [np.asarray(v if v is not None else [], dtype=np.int64) for v in lists]
    lens = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lens)
    take = np.minimum(lens, n)
    cols = np.arange(n)[None, :]
    valid = cols >= (n - take)[:, None]
    src = ends[:, None] - n + cols
    out = np.full((len(seqs), n), -1, dtype=np.int64)
    out[valid] = flat[src[valid]]
    return out, lens


@dataclass
class Standardiser:
    """Per-column mean/std of the *valid* train entries, applied to any frame:
    (x - mean) / std, and 0 where an entry is not valid (missing). The std is
    1 where the train std is ~0 or the column had no valid train value."""
    mean: np.ndarray   # float32 [d]
    std: np.ndarray    # float32 [d]

    @classmethod
    def fit(cls, x: np.ndarray, valid: np.ndarray, chunk: int = 1 << 16) -> "Standardiser":
        """``x`` [n, d]; ``valid`` [n, d] or [n, 1] (one flag per row). Two
        float64 passes in row chunks: cosines in a 0.01-wide band lose their
        variance to float32 sums, and a full masked copy of a wide vector
        column would double its memory."""
        n, d = x.shape
        cnt, tot, sq = np.zeros(d), np.zeros(d), np.zeros(d)
        parts = [(x[i:i + chunk], np.broadcast_to(valid[i:i + chunk], (min(chunk, n - i), d)))
                 for i in range(0, n, chunk)]
        for xs, vs in parts:
            cnt += vs.sum(0)
            tot += np.where(vs, xs, 0.0).sum(0, dtype=np.float64)
        mean = tot / np.maximum(cnt, 1)
        for xs, vs in parts:
            sq += (np.where(vs, xs - mean, 0.0) ** 2).sum(0)
        std = np.sqrt(sq / np.maximum(cnt, 1))
        return cls(mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def apply(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32, copy=True)
        out -= self.mean
        out /= self.std
        np.copyto(out, np.float32(0.0), where=~np.broadcast_to(valid, out.shape))
        return out


@dataclass
class DnnPreprocessor:
    """Everything learned from the train frame to turn a frame into tensors."""
    image_feature: str
    cfg: DnnConfig
    categories: dict = field(default_factory=dict)   # category -> index (0 = unknown)
    price_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_slots: int = 0        # K of sim_scores / hist_cluster_ids
    n_text_slots: int = 0   # text_interest: slots of the whole behaviour sequence (longest train history)
    vector_dim: int = 0     # d of target_embedding
    stats: CtrStatistics | None = None
    # History-item lookup (cfg.history_text): item id -> row (position + 1;
    # row 0 = unknown item / padding), and per row its category index and
    # title token ids. The model looks slots up by row in its forward, so no
    # per-impression lists of history titles are built.
    item_index: pd.Index | None = None
    item_cat: torch.Tensor | None = None    # int64 [R + 1]
    item_tok: torch.Tensor | None = None    # int64 [R + 1, max_title_tokens]
    # Numeric inputs -> Standardiser fitted on the train rows (see _numeric).
    scales: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, image_feature: str, cfg: DnnConfig, labels: np.ndarray | None = None,
            items: pd.DataFrame | None = None) -> "DnnPreprocessor":
        """Fit on the train frame ``df``; ``items``: the item table (``frames.item_table``;
        None = the items of ``df``) the history slots' attributes come from."""
        return cls._fit(df, image_feature, cfg, labels, items)[0]

    @classmethod
    def fit_transform(cls, df: pd.DataFrame, image_feature: str, cfg: DnnConfig,
                      labels: np.ndarray | None = None, items: pd.DataFrame | None = None
                      ) -> tuple["DnnPreprocessor", dict[str, torch.Tensor]]:
        """``fit`` and the train frame's tensors (out-of-fold statistics), its
        numeric columns read once."""
        p, raw = cls._fit(df, image_feature, cfg, labels, items)
        return p, p._tensors(df, raw)

    @classmethod
    def _fit(cls, df: pd.DataFrame, image_feature: str, cfg: DnnConfig, labels: np.ndarray | None,
             items: pd.DataFrame | None) -> tuple["DnnPreprocessor", dict]:
        cats = sorted(str(c) for c in df["category"].dropna().unique()) if "category" in df else []
        p = cls(image_feature, cfg, {c: i + 1 for i, c in enumerate(cats)})
        if cfg.statistics:
            y = labels if labels is not None else pd.to_numeric(df["label"]).to_numpy(float)
            p.stats = CtrStatistics.fit(df, y, folds=cfg.stat_folds, prior_weight=cfg.stat_prior_weight)
        if "price" in df:
            lp = np.log1p(pd.to_numeric(df["price"], errors="coerce").to_numpy(float))
            lp = lp[np.isfinite(lp)]
            if lp.size:
                qs = np.linspace(0, 1, cfg.price_buckets + 1)[1:-1]
                p.price_edges = np.unique(np.quantile(lp, qs))
        if image_feature == "simscore":
            p.n_slots = max((len(v) for v in df["sim_scores"] if v is not None), default=0)
        elif image_feature == "cluster_id":
            p.n_slots = max((len(v) for v in df["hist_cluster_ids"] if v is not None), default=0)
        elif image_feature == "vector":
            p.vector_dim = max((len(v) for v in df["target_embedding"] if v is not None), default=0)
        if image_feature != "none" and max(p.n_slots, p.vector_dim) == 0:
            raise ValueError(f"image_feature={image_feature!r}: the train frame's image columns are empty")
        if cfg.history_text:
            t = item_table(items, df)
            p.item_index = pd.Index(t["item_id"].to_numpy())
            # Categories keep the train frame's index (same table as the target's):
            # a catalogue-only category reads as unknown, as it would for a target.
            p.item_cat = torch.from_numpy(np.concatenate([[0], p._category_index(t["category"])]))
            tok = token_matrix(t["title"], cfg.max_title_tokens, cfg.token_buckets)
            used = int((tok > 0).any(0).sum()) or 1  # trailing all-padding columns cost lookups only
            p.item_tok = torch.from_numpy(np.vstack([np.zeros((1, used), np.int64), tok[:, :used]]))
            if cfg.text_interest:
                p.n_text_slots = max((len(v) for v in df["hist_item_ids"] if v is not None), default=0)
        raw = p._numeric(df, p.stats.train_values if p.stats is not None else None)
        p.scales = {name: Standardiser.fit(x, valid) for name, (x, valid) in raw.items()}
        return p, raw

    @property
    def n_stats(self) -> int:
        return 2 * len(self.stats.keys) if self.stats is not None else 0

    def _category_index(self, cat: pd.Series) -> np.ndarray:
        return cat.map(lambda c: self.categories.get(str(c), 0) if c is not None else 0).to_numpy(np.int64)

    @property
    def text_interest(self) -> bool:
        return self.item_tok is not None and self.n_text_slots > 0

    def history_rows(self, hist: np.ndarray) -> np.ndarray:
        """Item-lookup row of every slot of a [n, L] id matrix (-1 = padding); 0 = padding or unknown id."""
        at = self.item_index.get_indexer(hist.ravel()).reshape(hist.shape)
        return np.where(hist >= 0, at + 1, 0).astype(np.int64)

    def _numeric(self, df: pd.DataFrame, stat_values: dict | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The numeric inputs before standardisation: ``{name: (x [n, d], valid)}``,
        valid [n, d] or [n, 1]; invalid (missing) entries become 0 after it."""
        raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.stats is not None:
            vals = stat_values if stat_values is not None else self.stats.values(df)
            prior = max(self.stats.prior, 1e-6)
            # log CTR ratio to the prior (a CTR is multiplicative) and log impressions.
            x = np.stack([c for ctr, log_imps in vals.values()
                          for c in (np.log(np.clip(ctr, 1e-6, None) / prior), log_imps)], 1)
            raw["stats"] = (x, np.isfinite(x))
        lens = df["hist_item_ids"].map(lambda h: 0 if h is None else len(h)).to_numpy(float)
        raw["hist_len"] = (np.log1p(lens)[:, None], np.ones((len(df), 1), bool))
        if self.image_feature == "vector":
            v = np.nan_to_num(stack_fixed(df["target_embedding"], None, np.float32, 0.0))
            if v.shape[1] != self.vector_dim:
                raise ValueError(f"target_embedding has dim {v.shape[1]}, the model was trained with {self.vector_dim}")
            raw["vec"] = (v, (np.abs(v).sum(1) > 0)[:, None])   # all-zero = no embedding
        elif self.image_feature == "simscore":
            s = stack_fixed(df["sim_scores"], None, np.float32, np.nan)
            if s.shape[1] != self.n_slots:
                raise ValueError(f"sim_scores has {s.shape[1]} slots, the model was trained with {self.n_slots}")
            raw["sim"] = (s, np.isfinite(s))
        return raw

    def transform(self, df: pd.DataFrame, stat_values: dict | None = None) -> dict[str, torch.Tensor]:
        """Tensors for ``df``; ``stat_values``: the out-of-fold statistics when
        ``df`` is the train frame itself (else the full-train ones are applied)."""
        return self._tensors(df, self._numeric(df, stat_values))

    def _tensors(self, df: pd.DataFrame, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, len(df)
        out: dict[str, torch.Tensor] = {name: torch.from_numpy(self.scales[name].apply(x, valid))
                                        for name, (x, valid) in raw.items()}
        if "vec" in raw:
            out["vec_missing"] = torch.from_numpy((~raw["vec"][1]).astype(np.float32))
        if "sim" in raw:
            out["sim"] = torch.cat([out["sim"], torch.from_numpy((~raw["sim"][1]).astype(np.float32))], 1)
        out["item"] = torch.from_numpy(hash_ids(df["item_id"].to_numpy(), cfg.item_buckets))
        out["user"] = torch.from_numpy(hash_ids(df["user_id"].to_numpy(), cfg.user_buckets))
        out["cat"] = torch.from_numpy(self._category_index(df["category"] if "category" in df
                                                           else pd.Series([None] * n)))
        pos = pd.to_numeric(df["position"], errors="coerce") if "position" in df else pd.Series(np.nan, index=df.index)
        pos_idx = np.where(pos.isna(), 0, np.clip(pos.fillna(0).to_numpy(float), 0, cfg.max_position - 1) + 1)
        out["pos"] = torch.from_numpy(pos_idx.astype(np.int64))
        price = pd.to_numeric(df["price"], errors="coerce").to_numpy(float) if "price" in df else np.full(n, np.nan)
        lp = np.log1p(price)
        out["price"] = torch.from_numpy(np.where(np.isfinite(lp), 1 + np.searchsorted(self.price_edges, lp), 0)
                                        .astype(np.int64))
        empty = pd.Series([None] * n, index=df.index)
        out["title"] = torch.from_numpy(token_matrix(df["title"] if "title" in df else empty,
                                                      cfg.max_title_tokens, cfg.token_buckets))
        out["query"] = torch.from_numpy(token_matrix(df["query"] if "query" in df else empty,
                                                      cfg.max_title_tokens, cfg.token_buckets))
        hist, _ = _last_n_matrix(df["hist_item_ids"], cfg.history_len)
        out["hist"] = torch.from_numpy(np.where(hist >= 0, hash_ids(np.maximum(hist, 0), cfg.item_buckets), 0))
        if self.item_index is not None:
            out["hist_row"] = torch.from_numpy(self.history_rows(hist))
        if self.text_interest:
            whole, _ = _last_n_matrix(df["hist_item_ids"], self.n_text_slots)
            out["text_rows"] = torch.from_numpy(self.history_rows(whole))
        if self.image_feature == "cluster_id":
            tc = pd.to_numeric(df["target_cluster_id"], errors="coerce").fillna(-1).to_numpy(np.int64)
            hc = stack_fixed(df["hist_cluster_ids"], self.n_slots, np.int64, -1)
            out["tc"] = torch.from_numpy(np.where(tc >= 0, hash_ids(np.maximum(tc, 0), cfg.cluster_buckets), 0))
            out["hc"] = torch.from_numpy(np.where(hc >= 0, hash_ids(np.maximum(hc, 0), cfg.cluster_buckets), 0))
        return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of x [..., n, e] where mask [..., n] is 1; zeros for empty rows."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class SmallMultiheadAttention(nn.Module):
    """Multi-head self-attention written out with bmm: for head dims of 8 and
    sequences of 20 it is several times faster on CPU than the fused kernel
    behind ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dh).transpose(1, 2).reshape(b * self.heads, n, self.dh)
                   for t in self.qkv(x).chunk(3, dim=-1))
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.dh)
        mask = key_valid.repeat_interleave(self.heads, dim=0).unsqueeze(1)   # [b*h, 1, n]
        w = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)
        o = torch.bmm(w, v).reshape(b, self.heads, n, self.dh).transpose(1, 2).reshape(b, n, e)
        return self.out(o)


def _distinct_rows(index: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Index tensors into one table -> (the distinct rows they use, each tensor
    re-indexed into that list): per-row work is then done once per used row."""
    flat = torch.cat([i.reshape(-1) for i in index])
    used, inverse = torch.unique(flat, return_inverse=True)
    out, start = [], 0
    for i in index:
        out.append(inverse[start:start + i.numel()].reshape(i.shape))
        start += i.numel()
    return used, out


class CtrDnn(nn.Module):
    def __init__(self, prep: DnnPreprocessor) -> None:
        super().__init__()
        cfg, e = prep.cfg, prep.cfg.emb_dim
        self.image_feature = prep.image_feature
        # The big hashed tables get sparse gradients (SparseAdam): a dense Adam
        # step over every bucket would dominate CPU time.
        self.item = nn.Embedding(cfg.item_buckets, e, padding_idx=0, sparse=True)
        self.user = nn.Embedding(cfg.user_buckets, e, sparse=True)
        self.cat = nn.Embedding(len(prep.categories) + 1, e)
        self.tok = nn.Embedding(cfg.token_buckets, e, padding_idx=0, sparse=True)
        self.pos = nn.Embedding(cfg.max_position + 1, e)
        self.price = nn.Embedding(cfg.price_buckets + 2, e)
        self.recency = nn.Embedding(cfg.history_len, e)
        self.attn = SmallMultiheadAttention(e, cfg.attn_heads)
        self.norm = nn.LayerNorm(e)
        self.hist_proj = nn.Linear(e, e)
        width = 8 * e + 1 + prep.n_stats
        if prep.image_feature == "vector":
            self.vec_proj = nn.Linear(prep.vector_dim, cfg.vector_proj_dim)
            width += cfg.vector_proj_dim + 1
        elif prep.image_feature == "simscore":
            width += 2 * prep.n_slots
        elif prep.image_feature == "cluster_id":
            self.cluster = nn.Embedding(cfg.cluster_buckets, e, padding_idx=0, sparse=True)
            width += 5 * e
        self.text_interest = prep.text_interest
        if self.text_interest:
            # Tables of its own, as the cluster-ID path has: shared with the
            # target / slot encoders they learn less sharp matches (measured in
            # the pre-registration: perfect category clusters still added +0.2 %).
            self.int_cat = nn.Embedding(len(prep.categories) + 1, e)
            self.int_tok = nn.Embedding(cfg.token_buckets, e, padding_idx=0, sparse=True)
            width += 10 * e
        layers: list[nn.Module] = []
        for h in cfg.mlp_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("slots", torch.arange(cfg.history_len), persistent=False)
        self.history_text = prep.item_tok is not None
        if self.history_text:
            self.register_buffer("item_cat", prep.item_cat, persistent=False)
            self.register_buffer("item_tok", prep.item_tok, persistent=False)

    def _pooled_tokens(self, tok: torch.Tensor, table: nn.Embedding | None = None) -> torch.Tensor:
        """Mean of the non-padding token embeddings of each row of tok [n, T]
        (zeros for an all-padding row): one fused embedding_bag, several times
        faster than embedding + masked mean over the whole catalogue each step."""
        table = table if table is not None else self.tok
        return nn.functional.embedding_bag(tok, table.weight, mode="mean", padding_idx=0, sparse=table.sparse)

    @staticmethod
    def _target_interest(t: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Target attention of t [B, e] over seq [B, K, e] (valid where mask) and
        the masked mean, each with its element-wise product with t: "the user
        clicked this kind of item before", and how often."""
        logits = (seq @ t.unsqueeze(-1)).squeeze(-1) / math.sqrt(t.shape[-1])
        w = torch.softmax(logits.masked_fill(~mask, -1e9), dim=1) * mask
        att = (w.unsqueeze(-1) * seq).sum(1)             # zeros when no valid slot
        mean = _masked_mean(seq, mask)
        return [att, t * att, mean, t * mean]

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        hist = b["hist"]
        valid = hist > 0
        h = self.item(hist) + self.recency(self.slots)[None]
        if self.history_text:
            # The clicked items' category and title, embedded once per catalogue
            # row the batch uses (not the whole catalogue at every step: the same
            # values, a fraction of the work).
            used, (hist_row, text_row) = _distinct_rows(
                [b["hist_row"], b["text_rows"] if self.text_interest else b["hist_row"][:0]])
            used_cat, used_tok = self.item_cat[used], self.item_tok[used]
            item_cat, item_title = self.cat(used_cat), self._pooled_tokens(used_tok)  # [U, e]
            h = h + (item_cat + item_title)[hist_row]
        # Rows without history attend uniformly over padding (finite -1e9 mask,
        # no NaN); the masked mean below returns zeros for them anyway.
        h = self.norm(h + self.attn(h, valid))
        user_hist = self.hist_proj(_masked_mean(h, valid))
        target_cat, target_title = self.cat(b["cat"]), self._pooled_tokens(b["title"])
        parts = [self.item(b["item"]), self.user(b["user"]), target_cat,
                 target_title, self._pooled_tokens(b["query"]),
                 self.pos(b["pos"]), self.price(b["price"]), user_hist, b["hist_len"]]
        if "stats" in b:
            parts.append(b["stats"])
        if self.text_interest:
            # category and title separately, each exactly like the cluster-ID path
            valid = b["text_rows"] > 0
            tc, tt = self.int_cat(b["cat"]), self._pooled_tokens(b["title"], self.int_tok)
            parts += [tc, *self._target_interest(tc, self.int_cat(used_cat)[text_row], valid)]
            parts += [tt, *self._target_interest(
                tt, self._pooled_tokens(used_tok, self.int_tok)[text_row], valid)]
        if self.image_feature == "vector":
            parts += [self.vec_proj(b["vec"]), b["vec_missing"]]
        elif self.image_feature == "simscore":
            parts.append(b["sim"])
        elif self.image_feature == "cluster_id":
            t = self.cluster(b["tc"])                       # [B, e]
            parts += [t, *self._target_interest(t, self.cluster(b["hc"]), b["hc"] > 0)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)


@dataclass
class DnnModel:
    net: CtrDnn
    prep: DnnPreprocessor
    image_feature: str
    seed: int
    epoch_losses: list[float]
    train_seconds: float


def _resolve_cfg(cfg: DnnConfig | EvaluateConfig | None) -> DnnConfig:
    if cfg is None:
        return DnnConfig()
    return cfg.dnn if isinstance(cfg, EvaluateConfig) else cfg


class _Threads:
    """Pin torch's intra-op threads for a block, then restore them."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _batch(t: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in t.items()}


def train_dnn(train_df: pd.DataFrame, variant: str, cfg: DnnConfig | EvaluateConfig | None = None,
              seed: int = 0, log_prefix: str = "", items: pd.DataFrame | None = None) -> DnnModel:
    """Train the DNN CTR model with image feature ``variant`` (one of
    ``none|vector|simscore|cluster_id``) on ``train_df``; deterministic for a seed.
    ``items``: the item table (item_id, category, title) of the whole catalogue
    for the history slots' attributes; None = the items ``train_df`` shows."""
    y_np = train_labels(train_df, variant)
    cfg = _resolve_cfg(cfg)
    t0 = time.perf_counter()
    with _Threads(cfg.num_threads):
        torch.manual_seed(seed)
        prep, data = DnnPreprocessor.fit_transform(train_df, variant, cfg, y_np, items)
        y = torch.from_numpy(y_np.astype(np.float32))
        net = CtrDnn(prep)
        sparse = [m.weight for m in net.modules() if isinstance(m, nn.Embedding) and m.sparse]
        dense = [p for p in net.parameters() if all(p is not q for q in sparse)]
        opts = [torch.optim.SparseAdam(sparse, lr=cfg.lr),
                torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
        loss_fn = nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(seed)
        n, losses = len(y), []
        tag = f"dnn[{variant}{', ' + log_prefix if log_prefix else ''}] seed {seed}"
        say("evaluate", f"{tag}: training on {n} rows, {cfg.epochs} epoch(s), "
                        f"batch {cfg.batch_size}, {sum(p.numel() for p in net.parameters())} params")
        last_log = time.perf_counter()
        net.train()
        total_steps, step_i = cfg.epochs * math.ceil(n / cfg.batch_size), 0
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start:start + cfg.batch_size]
                if cfg.lr_schedule == "cosine":
                    # Decaying to 0 makes the end point far less seed-dependent (the
                    # seed spread is what decides whether a lift is real).
                    for opt in opts:
                        for g in opt.param_groups:
                            g["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step_i / total_steps))
                step_i += 1
                loss = loss_fn(net(_batch(data, idx)), y[idx])
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in opts:
                    opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if time.perf_counter() - last_log > cfg.log_every_s:
                    last_log = time.perf_counter()
                    say("evaluate", f"{tag}: epoch {epoch + 1}/{cfg.epochs} {seen}/{n} rows "
                                    f"loss {total / seen:.4f} elapsed {last_log - t0:.1f}s")
            losses.append(total / max(seen, 1))
            say("evaluate", f"{tag}: epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} "
                            f"elapsed {time.perf_counter() - t0:.1f}s")
    net.eval()
    return DnnModel(net, prep, variant, seed, losses, time.perf_counter() - t0)


@torch.no_grad()
def score_dnn(model: DnnModel, test_df: pd.DataFrame, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities (float64) for every row of ``test_df``."""
    check_ctr_frame(test_df, model.image_feature, "test frame")
    with _Threads(model.prep.cfg.num_threads):
        data = model.prep.transform(test_df)
        model.net.eval()
        out = [torch.sigmoid(model.net(_batch(data, torch.arange(s, min(s + batch_size, len(test_df))))))
               for s in range(0, len(test_df), batch_size)]
    return torch.cat(out).double().numpy()

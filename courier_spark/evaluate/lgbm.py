"""LightGBM screen on tabular features (fast; used to screen variants).

Feature sets by ``image_feature``:

* ``none`` (baseline): position, price, category (categorical), history
  length, query present / query equals category, and smoothed click-through
  statistics of the item, user and category with their impression counts.
* ``simscore``: + the K similarity scores (NaN stays missing) and their
  max / mean / count of valid slots.
* ``cluster_id``: + ``target_cluster_id`` as a categorical feature, its smoothed
  CTR, and how many / which share of the history clusters equal the target
  cluster (and whether the most recent one does). A tree cannot compare two
  ID columns by itself, and the cluster ID alone is item-level, so the match
  features are how a tabular model sees "this user clicked this look before".
* ``vector``: + the raw embedding dimensions.

Every variant (``history_text``, default on) also gets text-history features,
over the whole ``hist_item_ids`` list with the history items' attributes from
the item table (``items``: the catalogue, else the train frame's items):
``hist_cat_share`` (share of the history clicks in the target's category) and,
for the distinct tokens of the target title, the share of history clicks whose
title contains the token, summarised as ``hist_title_share_max`` / ``_mean``
and ``hist_title_n_shared`` (tokens with share > 0), and per position of the
target title (its j-th distinct token, j < 5) the share, the count
(``hist_title_share_j`` / ``_count_j``), whether the newest click's title
has it (``hist_title_recent_j``) and the token itself as a categorical
feature (``title_tok_j``), with
``hist_cat_count`` and ``hist_cat_recent`` (the newest click is in the target's
category): the same count / recent-match view the cluster-ID variant gets,
for what text says (set by the pre-registration, where perfect category
clusters otherwise lifted the screen's GAUC by +0.21 %). Shares are NaN without
history (and the category share without a target category; max / mean
without target title tokens, where the count is 0).

No leakage: every statistic comes from the train frame only. Train rows get
*out-of-fold* statistics (folds by request_id hash, so a page's own labels
never enter its features); test rows get statistics over all of train.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import sparse

from courier_spark.core.logs import say
from courier_spark.core.schema import EvaluateConfig, LgbmConfig
from courier_spark.evaluate.ctr_stats import STAT_KEYS, CtrStatistics
from courier_spark.evaluate.frames import check_ctr_frame, item_table, stack_fixed, title_tokens, train_labels


def _incidence(n_rows: int, cols: list[list[int]], n_cols: int) -> sparse.csr_matrix:
    """Binary [n_rows, n_cols] CSR with row r set at ``cols[r]`` (distinct per row)."""
    lens = np.fromiter((len(c) for c in cols), dtype=np.int64, count=len(cols))
    idx = np.fromiter((j for c in cols for j in c), dtype=np.int64, count=int(lens.sum()))
    return sparse.csr_matrix((np.ones(idx.size), idx, np.r_[0, np.cumsum(lens)]), shape=(n_rows, n_cols))


TEXT_POSITIONS = 5   # target title positions with their own history-share column


@dataclass
class TextHistory:
    """Item-table lookup for the text-history features: item id -> row
    (position + 1; row 0 = unknown item) and two binary incidence matrices,
    rows x categories and rows x title-token vocabulary."""
    index: pd.Index
    cat_codes: dict               # category (str) -> column of ``item_cat``
    item_cat: sparse.csr_matrix   # [R + 1, n_categories]
    vocab: dict                   # token -> column of ``item_tok``
    item_tok: sparse.csr_matrix   # [R + 1, V]

    @classmethod
    def fit(cls, items: pd.DataFrame) -> "TextHistory":
        """``items``: ``frames.item_table`` output (one row per item id)."""
        cats = [None if pd.isna(c) else str(c) for c in items["category"]]
        cat_codes = {c: i for i, c in enumerate(sorted({c for c in cats if c is not None}))}
        toks = [sorted(set(title_tokens(t))) for t in items["title"]]
        vocab = {t: i for i, t in enumerate(sorted({t for ts in toks for t in ts}))}
        n = len(items) + 1
        return cls(pd.Index(items["item_id"].to_numpy()), cat_codes,
                   _incidence(n, [[]] + [[] if c is None else [cat_codes[c]] for c in cats], len(cat_codes)),
                   vocab, _incidence(n, [[]] + [[vocab[t] for t in ts] for ts in toks], len(vocab)))

    def features(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """The text-history columns (module docstring) for every row of ``df``."""
        n = len(df)
        lists = [np.asarray(h if h is not None else [], dtype=np.int64) for h in df["hist_item_ids"]]
        lens = np.fromiter((h.size for h in lists), dtype=np.int64, count=n)
        # Click counts per *distinct* history (a page's items share one): the
        # history x item-row matrix times the incidences.
        hist_id = pd.factorize(pd.Series([h.tobytes() for h in lists], dtype=object))[0]
        first = np.unique(hist_id, return_index=True)[1]
        flat = np.concatenate([lists[i] for i in first]) if n else np.zeros(0, np.int64)
        H = sparse.csr_matrix((np.ones(flat.size), self.index.get_indexer(flat) + 1,
                               np.r_[0, np.cumsum(lens[first])]), shape=(len(first), self.item_cat.shape[0]))
        has_hist = lens > 0
        per_click = 1.0 / np.maximum(lens, 1)
        cat = df["category"] if "category" in df else pd.Series([None] * n)
        # -1: a category no catalogue item has (share 0); -2: no target category (NaN).
        tc = np.array([-2 if pd.isna(c) else self.cat_codes.get(str(c), -1) for c in cat], dtype=np.int64)
        cat_share = self._lookup(H @ self.item_cat, hist_id, tc) * per_click
        # Target title tokens as (row, vocabulary column) pairs; a token outside
        # the vocabulary is in no history title: share 0, counted in the mean.
        title = df["title"] if "title" in df else pd.Series([None] * n)
        codes, titles = pd.factorize(title.astype(object), sort=False)
        # sorted: a set's order follows the per-process string hash, and the
        # order of a row's tokens is the order its shares are summed in below
        # (a fit in another process got last-bit different features: 0.7371
        # against 0.7381 AUC on the toy frames)
        ttoks = [sorted(set(title_tokens(t))) for t in titles] + [[]]   # code -1 (null title) -> the last, empty
        n_tok = np.array([len(ts) for ts in ttoks], dtype=float)[codes]
        T = _incidence(len(ttoks), [[self.vocab[t] for t in ts if t in self.vocab] for ts in ttoks],
                       len(self.vocab))[codes].tocoo()
        tok_counts = H @ self.item_tok
        share = self._lookup(tok_counts, hist_id[T.row], T.col) * per_click[T.row]
        # The same share per *position* of the target title (its j-th distinct
        # token): a tree cannot tell which of max/mean's tokens matched, and
        # titles are built the same way (brand, colour, adjective, noun).
        pos_cols = np.full((len(ttoks), TEXT_POSITIONS), -1, dtype=np.int64)
        for r, t in enumerate(titles):
            ordered = list(dict.fromkeys(title_tokens(t)))[:TEXT_POSITIONS]
            pos_cols[r, :len(ordered)] = [self.vocab.get(x, -1) for x in ordered]
        # the newest history click (lists are oldest -> newest)
        newest = np.array([h[-1] if h.size else -1 for h in lists], dtype=np.int64)
        newest_row = np.where(newest >= 0, self.index.get_indexer(newest) + 1, 0)
        newest_tok = self.item_tok[newest_row]
        n_distinct = np.array([len(dict.fromkeys(title_tokens(t))) for t in titles] + [0])[codes]
        per_pos = {}
        for j in range(TEXT_POSITIONS):
            col = pos_cols[codes, j]
            count = self._lookup(tok_counts, hist_id, col)
            ok = has_hist & (n_distinct > j)
            per_pos[f"hist_title_share_{j}"] = np.where(ok, count * per_click, np.nan)
            per_pos[f"hist_title_count_{j}"] = np.where(ok, count, np.nan)
            per_pos[f"hist_title_recent_{j}"] = np.where(ok, self._lookup(newest_tok, np.arange(n), col), np.nan)
            # the token itself, a categorical feature (as target_cluster_id is for a look)
            per_pos[f"title_tok_{j}"] = np.where(col >= 0, col, np.nan)
        newest_cat = self.item_cat[newest_row]
        recent = np.asarray(newest_cat[np.arange(n)[tc >= 0], tc[tc >= 0]]).ravel() if (tc >= 0).any() else []
        cat_recent = np.zeros(n)
        cat_recent[tc >= 0] = recent
        mx = np.zeros(n)
        np.maximum.at(mx, T.row, share)
        has_tok = has_hist & (n_tok > 0)
        return {"hist_cat_share": np.where(has_hist & (tc > -2), cat_share, np.nan),
                "hist_cat_count": np.where(has_hist & (tc > -2), cat_share * lens, np.nan),
                "hist_cat_recent": np.where(has_hist & (tc > -2), cat_recent, np.nan),
                **per_pos,
                "hist_title_share_max": np.where(has_tok, mx, np.nan),
                "hist_title_share_mean": np.where(has_tok, np.bincount(T.row, share, n) / np.maximum(n_tok, 1),
                                                  np.nan),
                "hist_title_n_shared": np.where(has_hist, np.bincount(T.row, share > 0, n), np.nan)}

    @staticmethod
    def _lookup(counts: sparse.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """counts[rows[i], cols[i]] (0 where cols[i] < 0)."""
        ok = cols >= 0
        vals = np.zeros(len(rows))
        if ok.any():
            vals[ok] = np.asarray(counts[rows[ok], cols[ok]]).ravel()
        return vals


@dataclass
class LgbmModel:
    booster: lgb.Booster
    image_feature: str
    cfg: LgbmConfig
    seed: int
    stats: CtrStatistics
    categories: dict
    n_slots: int
    vector_dim: int
    feature_names: list = field(default_factory=list)
    train_seconds: float = 0.0
    text: TextHistory | None = None   # cfg.history_text


def _resolve_cfg(cfg: LgbmConfig | EvaluateConfig | None) -> LgbmConfig:
    if cfg is None:
        return LgbmConfig()
    return cfg.lgbm if isinstance(cfg, EvaluateConfig) else cfg


def _features(df: pd.DataFrame, m: LgbmModel, train_stats: dict | None) -> pd.DataFrame:
    """Feature frame; ``train_stats`` holds out-of-fold stats for train rows,
    None means "apply the full-train stats" (test rows).

    All columns are computed into one dict and the frame is built once:
    inserting hundreds of ``emb_j`` / ``sim_j`` columns one by one fragments
    the frame (pandas emits a PerformanceWarning per insert past 100 blocks)."""
    stats = train_stats if train_stats is not None else m.stats.values(df)
    n = len(df)
    X: dict[str, object] = {}
    X["position"] = pd.to_numeric(df["position"], errors="coerce").to_numpy(float) if "position" in df else np.nan
    price = pd.to_numeric(df["price"], errors="coerce").to_numpy(float) if "price" in df else np.full(n, np.nan)
    X["log_price"] = np.log1p(price)
    cat = df["category"] if "category" in df else pd.Series([None] * n)
    X["category"] = pd.Categorical(cat.map(lambda c: m.categories.get(str(c), -1) if c is not None else -1)
                                   .to_numpy(np.int64), categories=list(range(-1, len(m.categories))))
    X["hist_len"] = df["hist_item_ids"].map(lambda h: 0 if h is None else len(h)).to_numpy(float)
    q = df["query"] if "query" in df else pd.Series([None] * n)
    X["has_query"] = q.notna().to_numpy(float)
    X["query_is_category"] = (q.astype(object).fillna("").astype(str).str.lower().to_numpy()
                              == cat.astype(object).fillna("\0").astype(str).str.lower().to_numpy()).astype(float)
    for name, (ctr, cnt) in stats.items():
        X[f"{name}_ctr"], X[f"{name}_log_imps"] = ctr, cnt
    if m.image_feature == "simscore":
        s = stack_fixed(df["sim_scores"], m.n_slots, np.float32, np.nan).astype(float)
        X.update({f"sim_{j}": s[:, j] for j in range(m.n_slots)})
        valid = ~np.isnan(s)
        with np.errstate(all="ignore"):
            X["sim_max"] = np.where(valid.any(1), np.nanmax(np.where(valid, s, -np.inf), 1), np.nan)
            X["sim_mean"] = np.where(valid.any(1), np.nansum(s, 1) / np.maximum(valid.sum(1), 1), np.nan)
        X["sim_n_valid"] = valid.sum(1).astype(float)
    elif m.image_feature == "cluster_id":
        tc = pd.to_numeric(df["target_cluster_id"], errors="coerce").fillna(-1).to_numpy(np.int64)
        hc = stack_fixed(df["hist_cluster_ids"], m.n_slots, np.int64, -1)
        # Cluster ids as a numeric column flagged categorical (LightGBM needs ints >= 0; -1 -> missing).
        X["target_cluster_id"] = np.where(tc >= 0, tc, np.nan)
        valid = hc >= 0
        match = valid & (hc == tc[:, None]) & (tc[:, None] >= 0)
        X["cluster_match_count"] = match.sum(1).astype(float)
        X["cluster_match_frac"] = np.where(valid.any(1), match.sum(1) / np.maximum(valid.sum(1), 1), np.nan)
        X["cluster_match_recent"] = np.where(valid[:, 0], match[:, 0], np.nan) if m.n_slots else np.nan
    elif m.image_feature == "vector":
        v = stack_fixed(df["target_embedding"], m.vector_dim, np.float32, 0.0).astype(float)
        X.update({f"emb_{j}": v[:, j] for j in range(m.vector_dim)})
    if m.text is not None:
        X.update(m.text.features(df))
    # Scalars (a missing column's NaN) broadcast over the index, as before.
    return pd.DataFrame(X, index=pd.RangeIndex(n))


def train_lgbm(train_df: pd.DataFrame, variant: str, seed: int = 0,
               cfg: LgbmConfig | EvaluateConfig | None = None, items: pd.DataFrame | None = None) -> LgbmModel:
    """Train the LightGBM screen with image feature ``variant`` on ``train_df``.
    ``items``: the item table (item_id, category, title) of the whole catalogue
    for the text-history features; None = the items ``train_df`` shows."""
    y = train_labels(train_df, variant)
    cfg = _resolve_cfg(cfg)
    t0 = time.perf_counter()
    cats = sorted(str(c) for c in train_df["category"].dropna().unique()) if "category" in train_df else []
    n_slots = vector_dim = 0
    if variant == "simscore":
        n_slots = max((len(v) for v in train_df["sim_scores"] if v is not None), default=0)
    elif variant == "cluster_id":
        n_slots = max((len(v) for v in train_df["hist_cluster_ids"] if v is not None), default=0)
    elif variant == "vector":
        vector_dim = max((len(v) for v in train_df["target_embedding"] if v is not None), default=0)
    stats = CtrStatistics.fit(train_df, y, dict(STAT_KEYS, **({"cluster": "target_cluster_id"}
                                                             if variant == "cluster_id" else {})),
                              cfg.stat_folds, cfg.stat_prior_weight)
    m = LgbmModel(booster=None, image_feature=variant, cfg=cfg, seed=seed, stats=stats,  # type: ignore[arg-type]
                  categories={c: i for i, c in enumerate(cats)}, n_slots=n_slots, vector_dim=vector_dim,
                  text=TextHistory.fit(item_table(items, train_df)) if cfg.history_text else None)
    X = _features(train_df, m, stats.train_values)
    m.feature_names = list(X.columns)
    cat_feats = (["category"] + (["target_cluster_id"] if variant == "cluster_id" else [])
                 + ([f"title_tok_{j}" for j in range(TEXT_POSITIONS)] if m.text is not None else []))
    params = {
        "objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction, "bagging_freq": cfg.bagging_freq,
        "lambda_l2": cfg.lambda_l2, "num_threads": cfg.num_threads, "seed": seed,
        "deterministic": True, "force_row_wise": True, "verbose": -1,
    }
    ds = lgb.Dataset(X, label=y, categorical_feature=cat_feats, free_raw_data=True)
    m.booster = lgb.train(params, ds, num_boost_round=cfg.num_boost_round)
    m.train_seconds = time.perf_counter() - t0
    say("evaluate", f"lgbm[{variant}] seed {seed}: {len(X)} rows, {X.shape[1]} features, "
                    f"{cfg.num_boost_round} rounds in {m.train_seconds:.1f}s")
    return m


def score_lgbm(model: LgbmModel, test_df: pd.DataFrame) -> np.ndarray:
    """Click probabilities (float64) for every row of ``test_df``."""
    check_ctr_frame(test_df, model.image_feature, "test frame")
    X = _features(test_df, model, None)
    return np.asarray(model.booster.predict(X, num_threads=model.cfg.num_threads), dtype=np.float64)

"""Smoothed click-through statistics per key (item, user, category, ...), shared
by the LightGBM screen and the DNN ("statistics" in the paper's item and user
towers).

No leakage: every statistic comes from the train frame only. Train rows get
*out-of-fold* statistics (folds by request_id hash, so a page's own labels
never enter its features); every other frame gets statistics over all of train.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

STAT_KEYS = {"item": "item_id", "user": "user_id", "category": "category"}


def fold_of(df: pd.DataFrame, k: int) -> np.ndarray:
    """Fold index in [0, k) per row, by a hash of request_id (a page stays in one fold)."""
    key = df["request_id"] if "request_id" in df else pd.Series(np.arange(len(df)))
    return (pd.util.hash_pandas_object(key.astype(str), index=False).to_numpy() % np.uint64(k)).astype(np.int64)


def stat_key(s: pd.Series) -> pd.Series:
    """One hashable dtype for ids and strings alike; missing -> "<na>"."""
    return s.astype(object).where(s.notna(), "<na>").astype(str)


@dataclass
class KeyStat:
    """Click/impression sums per key over the whole train frame."""
    sums: pd.DataFrame   # index key -> columns clicks, imps


def oof_stat(keys: pd.Series, y: np.ndarray, folds: np.ndarray, k: int, prior: float,
             w: float) -> tuple[np.ndarray, np.ndarray, KeyStat]:
    """Out-of-fold smoothed CTR and log impression count for train rows, and the full sums."""
    d = pd.DataFrame({"k": keys.to_numpy(), "f": folds, "y": y})
    tot = d.groupby("k").agg(clicks=("y", "sum"), imps=("y", "size"))
    per = d.groupby(["k", "f"]).agg(clicks=("y", "sum"), imps=("y", "size"))
    t = tot.reindex(d["k"]).to_numpy(float)
    p = per.reindex(pd.MultiIndex.from_arrays([d["k"], d["f"]])).to_numpy(float)
    clicks, imps = t[:, 0] - p[:, 0], t[:, 1] - p[:, 1]
    # Rescale out-of-fold counts to the full-train scale the test rows see.
    return (clicks + w * prior) / (imps + w), np.log1p(imps * k / (k - 1)), KeyStat(tot)


def apply_stat(stat: KeyStat, keys: pd.Series, prior: float, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-train smoothed CTR and log impression count for rows of another frame."""
    t = stat.sums.reindex(keys.to_numpy()).fillna(0.0).to_numpy(float)
    return (t[:, 0] + w * prior) / (t[:, 1] + w), np.log1p(t[:, 1])


@dataclass
class CtrStatistics:
    """Fitted on a train frame: ``train_values`` (out-of-fold, for exactly that
    frame's rows) and ``values(df)`` (full-train, for any other frame).
    Each is ``{name: (ctr, log_imps)}`` for every name of ``keys``."""
    keys: dict
    prior: float
    weight: float
    stats: dict = field(default_factory=dict)
    train_values: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, train_df: pd.DataFrame, y: np.ndarray, keys: dict | None = None, folds: int = 5,
            prior_weight: float = 20.0) -> "CtrStatistics":
        keys = dict(STAT_KEYS if keys is None else keys)
        m = cls(keys, float(np.mean(y)) if len(y) else 0.0, float(prior_weight))
        f = fold_of(train_df, folds)
        for name, col in keys.items():
            ctr, cnt, stat = oof_stat(m._keys(train_df, col), np.asarray(y, float), f, folds, m.prior, m.weight)
            m.train_values[name], m.stats[name] = (ctr, cnt), stat
        return m

    @staticmethod
    def _keys(df: pd.DataFrame, col: str) -> pd.Series:
        return stat_key(df[col]) if col in df else pd.Series(["<na>"] * len(df))

    def values(self, df: pd.DataFrame) -> dict:
        return {name: apply_stat(self.stats[name], self._keys(df, col), self.prior, self.weight)
                for name, col in self.keys.items()}

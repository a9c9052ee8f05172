"""Offline CTR metrics: AUC, GAUC, per-category AUC and a seed-spread rule.

Grouped AUCs are computed from ranks (Mann-Whitney U with average ranks for
ties), which equals ``sklearn.metrics.roc_auc_score`` inside every group but
runs vectorised over thousands of groups; ``sql/per_category_auc_lift.sql``
uses the same formula so the two can be compared exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

WEIGHTINGS = ("impressions", "uniform")


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """AUC over all impressions (sklearn). Raises ValueError when only one class is present."""
    y = np.asarray(labels)
    if y.size == 0 or np.unique(y).size < 2:
        raise ValueError("AUC needs both clicks and non-clicks; got "
                         f"{int(np.sum(y == 1))} clicks in {y.size} rows")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def grouped_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                groups: Sequence | np.ndarray | pd.Series) -> pd.DataFrame:
    """One row per group: ``group, n, n_pos, n_neg, auc`` (auc NaN unless the
    group has both a click and a non-click)."""
    df = pd.DataFrame({"g": np.asarray(groups, dtype=object) if not isinstance(groups, pd.Series)
                       else groups.to_numpy(),
                       "y": np.asarray(labels).astype(np.int64),
                       "s": np.asarray(scores, dtype=np.float64)})
    if df["s"].isna().any():
        raise ValueError("scores contain NaN")
    # dropna=False keeps a None/NaN group key as its own group.
    df["r"] = df.groupby("g", sort=False, dropna=False)["s"].rank(method="average")
    df["pr"] = df["r"] * df["y"]
    agg = df.groupby("g", sort=True, dropna=False).agg(n=("y", "size"), n_pos=("y", "sum"),
                                                       pos_rank_sum=("pr", "sum"))
    agg["n_neg"] = agg["n"] - agg["n_pos"]
    p, n = agg["n_pos"].astype(float), agg["n_neg"].astype(float)
    valid = (p > 0) & (n > 0)
    agg["auc"] = np.where(valid, (agg["pos_rank_sum"] - p * (p + 1) / 2) / (p * n).where(valid, 1.0),
                          np.nan)
    return agg.drop(columns="pos_rank_sum").reset_index().rename(columns={"g": "group"})


@dataclass(frozen=True)
class GaucResult:
    value: float          # NaN when no group has both a click and a non-click
    n_groups_used: int    # groups with both a click and a non-click
    n_groups_total: int
    n_rows_used: int      # impressions inside the used groups
    weighting: str        # "impressions": weight = group size; "uniform": every group counts 1

    def __float__(self) -> float:
        return self.value


def gauc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
         groups: Sequence | np.ndarray | pd.Series, weighting: str = "impressions") -> GaucResult:
    """Group AUC: the AUC inside each group (request/page or session), averaged
    over the groups that have both a click and a non-click (the others have no
    defined AUC and are excluded). ``weighting="impressions"`` weights each
    group by its number of impressions, ``"uniform"`` gives every group the
    same weight; the result says which."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    g = grouped_auc(labels, scores, groups)
    used = g[g["auc"].notna()]
    if used.empty:
        return GaucResult(float("nan"), 0, len(g), 0, weighting)
    w = used["n"].to_numpy(float) if weighting == "impressions" else np.ones(len(used))
    return GaucResult(float(np.average(used["auc"].to_numpy(float), weights=w)), len(used), len(g),
                      int(used["n"].sum()), weighting)


def per_category_auc(df: pd.DataFrame, by: Sequence[str] | None = None, label_col: str = "label",
                     score_col: str = "score", category_col: str = "category") -> pd.DataFrame:
    """AUC per category (and per ``variant``/``model_kind`` when those columns
    exist, unless ``by`` says otherwise). Columns: ``*by, category, n, n_pos,
    n_neg, auc``; auc is NaN for a category without both classes."""
    if by is None:
        by = [c for c in ("model_kind", "variant") if c in df.columns]
    keys = list(by) + [category_col]
    missing = [c for c in keys + [label_col, score_col] if c not in df.columns]
    if missing:
        raise KeyError(f"per_category_auc: missing columns {missing}")
    out = []
    for key, part in df.groupby(list(by), sort=True, dropna=False) if by else [((), df)]:
        g = grouped_auc(part[label_col], part[score_col], part[category_col])
        g = g.rename(columns={"group": category_col})
        for name, val in zip(by, key if isinstance(key, tuple) else (key,)):
            g.insert(0, name, val)
        out.append(g)
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=keys + ["n", "n_pos", "n_neg", "auc"])
    return res[keys + ["n", "n_pos", "n_neg", "auc"]]


def per_category_lift(per_cat: pd.DataFrame, baseline: str = "baseline",
                      category_col: str = "category") -> pd.DataFrame:
    """Add ``baseline_auc`` and ``lift_auc_pct`` = 100 * (auc / baseline_auc - 1)
    to a ``per_category_auc`` frame that has a ``variant`` column."""
    if "variant" not in per_cat.columns:
        raise KeyError("per_category_lift needs a 'variant' column")
    keys = [c for c in ("model_kind",) if c in per_cat.columns] + [category_col]
    base = (per_cat[per_cat["variant"] == baseline][keys + ["auc"]]
            .rename(columns={"auc": "baseline_auc"}))
    out = per_cat.merge(base, on=keys, how="left")
    out["lift_auc_pct"] = 100.0 * (out["auc"] / out["baseline_auc"] - 1.0)
    return out


class SeedSummary(NamedTuple):
    mean: float
    std: float   # sample std (ddof=1); NaN with fewer than 2 seeds


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean and sample standard deviation (ddof=1) of a metric over seeds."""
    v = np.asarray([x for x in values], dtype=np.float64)
    if v.size == 0:
        return SeedSummary(float("nan"), float("nan"))
    return SeedSummary(float(v.mean()), float(v.std(ddof=1)) if v.size >= 2 else float("nan"))


def pooled_std(a_values: Sequence[float], b_values: Sequence[float]) -> float:
    """sqrt((var_a + var_b) / 2) with sample variances; NaN if either has < 2 values."""
    sa, sb = summarize_seeds(a_values).std, summarize_seeds(b_values).std
    return float(math.sqrt((sa ** 2 + sb ** 2) / 2.0)) if not (math.isnan(sa) or math.isnan(sb)) \
        else float("nan")


def is_real_difference(a_values: Sequence[float], b_values: Sequence[float], alpha: float = 0.05) -> bool:
    """Unpaired runs: Welch's t-test (``scipy.stats.ttest_ind``, unequal
    variances, two-sided) rejects equal means at ``alpha``. Both sides need
    >= 2 seeds (otherwise the spread is unknown -> False). Paired runs use
    ``cluster_variants.paired_difference`` instead."""
    a = np.asarray([x for x in a_values if np.isfinite(x)], float)
    b = np.asarray([x for x in b_values if np.isfinite(x)], float)
    if a.size < 2 or b.size < 2:
        return False
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return bool(a[0] != b[0])
    from scipy.stats import ttest_ind
    return bool(ttest_ind(a, b, equal_var=False).pvalue < alpha)

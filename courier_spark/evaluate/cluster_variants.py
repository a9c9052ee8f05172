"""Cluster-ID variants built in memory, for benches and honest statistics.

The pipeline's own cluster IDs come from ``gold/centroids`` and the feature
store (``ctr_frames``). A comparison that is honest about noise needs more:
the same encoder clustered with several k-means seeds, and perfect ("oracle")
cluster IDs of hidden factors. Both reduce to a mapping item_id -> cluster id
pushed through the same CTR frames, which is what this module builds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from courier_spark.evaluate.ctr_frames import sequence_cluster_ids


def with_cluster_ids(df: pd.DataFrame, clusters: pd.Series) -> pd.DataFrame:
    """A copy of the CTR frame ``df`` with ``target_cluster_id`` and the whole
    sequence's ``hist_cluster_ids`` from ``clusters`` (item_id -> id; -1 where
    an item has none), as ``ctr_frames.build_ctr_frames`` fills them."""
    out = df.copy()
    ids = clusters[~clusters.index.duplicated()]
    out["target_cluster_id"] = ids.reindex(out["item_id"].to_numpy(np.int64)).fillna(-1).to_numpy(np.int64)
    out["hist_cluster_ids"] = sequence_cluster_ids(out["hist_item_ids"], ids)
    return out


def factor_clusters(truth: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """One cluster per distinct combination of the truth ``columns`` (item_id -> id)."""
    codes = truth.groupby(list(columns), sort=True).ngroup().to_numpy(np.int64)
    return pd.Series(codes, index=truth["item_id"].to_numpy(np.int64))


def kmeans_clusters(item_ids: np.ndarray, vectors: np.ndarray, k: int, seed: int,
                    nredo: int = 3) -> pd.Series:
    """faiss k-means cluster of each item (the cluster stage's spherical k-means)."""
    from courier_spark.features.cluster import l2_normalise, nearest_centroids, train_kmeans
    unit = l2_normalise(vectors)
    ids, _ = nearest_centroids(unit, train_kmeans(unit, k, seed=seed, nredo=nredo)[0])
    return pd.Series(ids.astype(np.int64), index=np.asarray(item_ids, np.int64))


def kmeans_seed_frames(pair: tuple[pd.DataFrame, pd.DataFrame], item_ids: np.ndarray, vectors: np.ndarray,
                       k: int, first_seed: int, log=print):
    """``runner.SeedFrames`` for a cluster-ID variant: run 0 is ``pair`` as
    given (the cluster stage's centroids); run i > 0 re-clusters ``vectors``
    with k-means seed ``first_seed + i`` and replaces the cluster-ID columns."""
    def frames(i: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        if i == 0:
            return pair
        cl = kmeans_clusters(item_ids, vectors, k, first_seed + i)
        log(f"run {i}: cluster IDs from k-means seed {first_seed + i} ({cl.nunique()} clusters)")
        return with_cluster_ids(pair[0], cl), with_cluster_ids(pair[1], cl)
    return frames


@dataclass(frozen=True)
class PairedDifference:
    """Differences a[i] - b[i] of runs paired by index (same encoder seed,
    k-means seed and CTR seed on both sides), with the two-sided paired
    t-test (``scipy.stats.ttest_rel``) of mean difference 0."""
    mean: float
    sd: float
    n: int
    p_value: float
    alpha: float = 0.05

    @property
    def real(self) -> bool:
        """The paired t-test rejects "no difference" at ``alpha``."""
        return self.n > 1 and self.p_value < self.alpha

    def __str__(self) -> str:
        return f"{self.mean:+.3f} +- {self.sd:.3f} (n={self.n}, p={self.p_value:.3g}{', real' if self.real else ''})"


def paired_difference(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> PairedDifference:
    """Paired differences of two equally long run lists (NaN pairs dropped) and their t-test."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.shape != (len(a),) or len(a) != len(b):
        raise ValueError(f"paired runs must have the same length, got {len(a)} and {len(b)}")
    d = d[np.isfinite(d)]
    return PairedDifference(float(d.mean()) if d.size else float("nan"),
                            float(d.std(ddof=1)) if d.size > 1 else float("nan"), int(d.size),
                            paired_t_p_value(d), alpha)


def paired_t_p_value(d: np.ndarray) -> float:
    """Two-sided p of ``scipy.stats.ttest_rel`` for differences ``d`` (NaN below 2
    pairs; all differences equal: 0 when they are not 0, else 1)."""
    d = np.asarray(d, float)
    if d.size < 2:
        return float("nan")
    if np.ptp(d) == 0:
        return 0.0 if d[0] != 0 else 1.0
    from scipy.stats import ttest_rel
    return float(ttest_rel(d, np.zeros_like(d)).pvalue)

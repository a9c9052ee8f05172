"""What an encoder's embeddings know about the hidden look of an item.

Synthetic data only: the generator keeps each item's true colour, pattern and
shape in ``_synthetic_truth/item_factors`` (the pipeline never trains on it).
A linear probe's cross-validated accuracy per factor tells whether a
downstream lift (or its absence) comes from the encoder seeing the look.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

LOOK_FACTORS = ("colour", "pattern", "shape")


def linear_probe_accuracy(x: np.ndarray, labels: pd.DataFrame, factors: Sequence[str] = LOOK_FACTORS,
                          folds: int = 3, seed: int = 0) -> dict[str, float]:
    """Mean ``folds``-fold accuracy of a logistic regression predicting each
    factor column of ``labels`` from the rows of ``x`` (same order).

    Features are standardised first: stored embeddings are L2-normalised and
    share a large common direction, so the informative differences are tiny
    and an unscaled, regularised probe would miss them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x = np.asarray(x, dtype=np.float64)
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} vectors but {len(labels)} label rows")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return {f: float(cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), x, labels[f].to_numpy(), cv=cv).mean())
            for f in factors}


def look_probe_table(spark: SparkSession, embeddings_path: str, truth_path: str,
                     model_versions: dict[str, str], n_items: int = 1500) -> pd.DataFrame:
    """One row per method: probe accuracy of each look factor from its
    ``gold/item_embeddings`` vectors, on the same ``n_items`` items (hash order)."""
    from ..embed import read_embeddings
    truth = spark.read.format("delta").load(truth_path).select("item_id", *LOOK_FACTORS)
    rows = []
    for method, mv in model_versions.items():
        pdf = (read_embeddings(spark, embeddings_path, mv).join(truth, "item_id")
               .orderBy(F.xxhash64("item_id")).limit(n_items).toPandas())
        acc = linear_probe_accuracy(np.stack(pdf["embedding"].to_numpy()), pdf)
        rows.append({"method": method, "model_version": mv, "items": len(pdf),
                     **{f: round(v, 3) for f, v in acc.items()}})
    return pd.DataFrame(rows)

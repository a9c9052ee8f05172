"""What an encoder's embeddings know about the hidden look of an item.

Synthetic data only: the generator keeps each item's true colour, pattern and
shape in ``_synthetic_truth/item_factors`` (the pipeline never trains on it).
A linear probe's cross-validated accuracy per factor tells whether a
downstream lift (or its absence) comes from the encoder seeing the look.
The brand's studio ``backdrop`` is probed too where the data has one: a
nuisance that no click depends on, so a high accuracy there is capacity spent
on what users ignore.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from courier_spark.features.embed import read_embeddings
from courier_spark.core.tables import read_table, table_exists

LOOK_FACTORS = ("colour", "pattern", "shape")
NUISANCE_FACTORS = ("backdrop",)


def probe_factors(truth: pd.DataFrame) -> tuple[str, ...]:
    """The look factors, plus each nuisance factor that varies in `truth`
    (roots generated without backdrops have none)."""
    return LOOK_FACTORS + tuple(f for f in NUISANCE_FACTORS if f in truth.columns and truth[f].nunique() > 1)


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
    ``gold/item_embeddings`` vectors, on the same ``n_items`` items (hash
    order); a ``backdrop`` column too where the truth has more than one."""
    from courier_spark.features.embed import read_embeddings
    truth = spark.read.format("delta").load(truth_path)
    known = [c for c in truth.columns if c in LOOK_FACTORS + NUISANCE_FACTORS]
    factors = probe_factors(truth.select(*known).toPandas())  # one row per item: small
    truth = truth.select("item_id", *factors)
    rows = []
    for method, mv in model_versions.items():
        pdf = (read_embeddings(spark, embeddings_path, mv).join(truth, "item_id")
               .orderBy(F.xxhash64("item_id")).limit(n_items).toPandas())
        acc = linear_probe_accuracy(np.stack(pdf["embedding"].to_numpy()), pdf, factors)
        rows.append({"method": method, "model_version": mv, "items": len(pdf),
                     **{f: round(v, 3) for f, v in acc.items()}})
    return pd.DataFrame(rows)


def embedding_map_sample(spark, paths, model_version: str, n: int = 1500):
    """(vectors, category, hidden colour, its name) of up to n items for the PCA map."""
    emb = read_embeddings(spark, paths.item_embeddings, model_version)
    items = read_table(spark, paths.silver_items).select("item_id", "category")
    df = emb.join(items, "item_id")
    hidden = None
    if table_exists(spark, paths.truth_item_factors):
        truth = spark.read.format("delta").load(paths.truth_item_factors)
        col = next((c for c in ("colour", "color", "style") if c in truth.columns), None)
        if col:
            df = df.join(truth.select("item_id", F.col(col).alias("hidden")), "item_id", "left")
            hidden = col
    pdf = df.orderBy(F.xxhash64("item_id")).limit(n).toPandas()
    x = np.stack(pdf["embedding"].to_numpy())
    return (x, pdf["category"].to_numpy(), (pdf["hidden"].to_numpy() if hidden else None),
            f"hidden {hidden}" if hidden else "hidden factor")

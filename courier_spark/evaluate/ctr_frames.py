"""Delta tables -> the pandas CTR frames the evaluation models consume.

One base frame (``silver/ctr_samples`` joined with ``silver/items`` for
title and price) is shared by every variant; each pre-training method adds its
image-feature columns (``frames.IMAGE_COLUMNS``) for *its* model and centroid
versions:

* the serving method (the one whose versions are in the feature store) reads
  ``feature_store/item_visual`` + ``feature_store/impression_visual``, exactly
  as a feature-store consumer joins them;
* every other method gets the same features computed in memory by the same
  library functions (``assign_cluster_ids`` + ``similarity_features``) from
  ``gold/item_embeddings`` and ``gold/centroids``, so a comparison run never
  overwrites the production feature tables.

``hist_cluster_ids`` covers the whole behaviour sequence of the sample
(``hist_item_ids``, most recent first), not only the feature store's K SimScore
slots: the cluster ID is an item attribute, so a consumer joins
``item_visual`` onto every item of the sequence, as the paper's CTR model does
with its ID features. Measured on the default data (DNN with statistics,
"oracle" clusters = the true look of each item, 3 seeds): cluster ids of the
5 latest clicks AUC -0.25 %, of the whole sequence (up to 50) +0.7 %.

Missing values follow the frame contract: cluster ids -1, SimScores NaN,
embeddings zeros.

The item table (``catalogue_items``: item_id, category, title of every item
of ``silver/items``) goes to the models beside the frames: they look up the
category and title of every history item there. Attributes are not labels,
so the whole catalogue (items first shown on the test day included) is no leak.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from courier_spark.features.cluster import load_centroids
from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
from courier_spark.features.assignment import assign_cluster_ids, similarity_features
from courier_spark.core.paths import TablePaths
from courier_spark.serving.versions import ServingVersions
from courier_spark.core.tables import read_table, table_exists
from courier_spark.evaluate.frames import ITEM_COLUMNS, stack_fixed
from courier_spark.core.errors import DataError

BASE_SELECT = ("event_id", "request_id", "session_id", "user_id", "item_id", "category", "position",
               "label", "query", "hist_item_ids", "split")


def ctr_base_frame(spark: SparkSession, paths: TablePaths) -> DataFrame:
    """CTR samples with the item's title and price (left join: an item missing
    from silver/items keeps its impression with null title/price)."""
    ctr = read_table(spark, paths.ctr_samples)
    items = read_table(spark, paths.silver_items).select("item_id", "title", "price")
    return ctr.select(*BASE_SELECT).join(items, "item_id", "left")


def catalogue_items(spark: SparkSession, paths: TablePaths) -> pd.DataFrame:
    """The item table (``frames.ITEM_COLUMNS``) of the whole catalogue, as pandas."""
    return read_table(spark, paths.silver_items).select(*ITEM_COLUMNS).toPandas()


def _feature_store_visual(spark: SparkSession, paths: TablePaths, mv: ServingVersions,
                          n_events: int) -> tuple[DataFrame, DataFrame] | None:
    """The method's (impression, item) features from the feature store, or None
    when the store holds other versions (or is incomplete for this method)."""
    if not (table_exists(spark, paths.item_visual_features) and table_exists(spark, paths.impression_visual_features)):
        return None

    def of_method(path: str) -> DataFrame:
        return (spark.read.format("delta").load(path)
                .filter((F.col("model_version") == mv.model_version) & (F.col("centroid_version") == mv.centroid_version)))
    ev = of_method(paths.impression_visual_features)
    if ev.count() < n_events:
        return None
    # item_visual keeps history: of this version's rows, each item's latest.
    latest = Window.partitionBy("item_id").orderBy(F.col("valid_from").desc())
    items = (of_method(paths.item_visual_features).withColumn("_n", F.row_number().over(latest))
             .filter("_n = 1").select("item_id", F.col("courier_cluster_id").alias("cluster_id")))
    # hist_cluster_ids is not read: the frame takes the whole sequence from item_visual.
    return ev.select("event_id", "sim_scores", "target_cluster_id"), items


def method_visual_features(spark: SparkSession, paths: TablePaths, mv: ServingVersions, k: int,
                           n_events: int) -> tuple[DataFrame, DataFrame, str]:
    """Per event: sim_scores and target_cluster_id (the computed path also has the
    K-slot hist_cluster_ids, unused here); per item: cluster_id. Returns (events, items, source) with source
    ``feature_store`` or ``computed``."""
    stored = _feature_store_visual(spark, paths, mv, n_events)
    if stored is not None:
        return stored[0], stored[1], "feature_store"
    cv, model_of_cv, centroids = load_centroids(spark, paths.centroids, mv.centroid_version)
    if model_of_cv != mv.model_version:
        raise DataError(f"centroid version {cv} was made from {model_of_cv}, not {mv.model_version}")
    emb = read_embeddings(spark, paths.item_embeddings, mv.model_version)
    cids = assign_cluster_ids(emb, centroids, spark).select("item_id", "cluster_id")
    ctr = read_table(spark, paths.ctr_samples)
    return similarity_features(ctr, emb, cids, k, broadcast_embeddings=True), cids, "computed"


def sequence_cluster_ids(hist_item_ids: pd.Series, item_clusters: pd.Series) -> list:
    """Cluster id of every item of each history list, most recent first (the
    lists are oldest -> newest); -1 for an item without a cluster."""
    lens = np.fromiter((len(h) for h in hist_item_ids), dtype=np.int64, count=len(hist_item_ids))
    flat = (np.concatenate([np.asarray(h, dtype=np.int64) for h in hist_item_ids])
            if lens.sum() else np.zeros(0, np.int64))
    cl = item_clusters[~item_clusters.index.duplicated()]
    mapped = cl.reindex(flat).fillna(-1).to_numpy(np.int64)
    return [part[::-1] for part in np.split(mapped, np.cumsum(lens)[:-1])] if len(lens) else []


def _target_embeddings(spark: SparkSession, paths: TablePaths, model_version: str,
                       item_ids: np.ndarray) -> list:
    """Each impression's item vector (zeros without an embedding), looked up
    in pandas: the catalogue's vectors are collected once, not joined per event."""
    ids, x = embeddings_to_numpy(read_embeddings(spark, paths.item_embeddings, model_version))
    row = pd.Series(np.arange(len(ids)), index=ids)
    at = row.reindex(item_ids).to_numpy()
    out = np.zeros((len(item_ids), x.shape[1] if x.ndim == 2 else 0), np.float32)
    ok = ~np.isnan(at)
    out[ok] = x[at[ok].astype(np.int64)]
    return list(out)


def new_on_test_day(spark: SparkSession, paths: TablePaths) -> np.ndarray:
    """Item ids first shown in the test split (no clean impression before the
    test window starts): the cold items that ID features know nothing about."""
    ctr = read_table(spark, paths.ctr_samples)
    start = ctr.filter(F.col("split") == "test").agg(F.min("event_ts")).first()[0]
    if start is None:
        return np.zeros(0, np.int64)
    first = (read_table(spark, paths.silver_impressions)
             .groupBy("item_id").agg(F.min("event_ts").alias("first_seen")))
    return first.filter(F.col("first_seen") >= F.lit(start)).toPandas()["item_id"].to_numpy(np.int64)


def build_ctr_frames(spark: SparkSession, paths: TablePaths, methods: list[ServingVersions], k: int,
                     vector_methods: set[str] | None = None, log=print
                     ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, str], pd.DataFrame]:
    """-> (base pandas frame with ``split``, {method: its image-feature columns
    keyed by event_id, in contract encoding}, {method: source}, the catalogue's
    item table for the models' ``items``).
    ``vector_methods`` limits which methods carry the (large) raw embedding column."""
    base = ctr_base_frame(spark, paths).toPandas()
    base["label"] = base["label"].astype(np.int64)
    base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
    if base["event_id"].duplicated().any():
        raise DataError("silver/ctr_samples has duplicate event_id values; re-run `courier samples`")
    base["new_item"] = base["item_id"].isin(new_on_test_day(spark, paths))
    per_method, sources = {}, {}
    for mv in methods:
        feats, item_clusters, source = method_visual_features(spark, paths, mv, k, len(base))
        pdf = base[["event_id", "item_id"]].merge(feats.toPandas(), on="event_id", how="left",
                                                  validate="one_to_one", indicator=True)
        missing = int((pdf["_merge"] == "left_only").sum())
        if missing:
            raise DataError(f"{mv.method}: {missing} of {len(base)} CTR events have no features")
        out = pd.DataFrame({"event_id": pdf["event_id"].to_numpy()})
        out["target_cluster_id"] = pdf["target_cluster_id"].fillna(-1).astype(np.int64).to_numpy()
        ic = item_clusters.toPandas()
        out["hist_cluster_ids"] = sequence_cluster_ids(base["hist_item_ids"],
                                                       pd.Series(ic["cluster_id"].to_numpy(np.int64),
                                                                 index=ic["item_id"].to_numpy(np.int64)))
        out["sim_scores"] = list(stack_fixed(pdf["sim_scores"], k, np.float32, np.nan))
        if vector_methods is None or mv.method in vector_methods:
            out["target_embedding"] = _target_embeddings(spark, paths, mv.model_version,
                                                         pdf["item_id"].to_numpy(np.int64))
        per_method[mv.method], sources[mv.method] = out, source
        log(f"{mv.method}: features of {mv.model_version} / {mv.centroid_version} from {source} "
            f"({len(out)} events)")
    return base, per_method, sources, catalogue_items(spark, paths)


def variant_frames(base: pd.DataFrame, per_method: dict[str, pd.DataFrame],
                   variants: list[tuple[str, str, str | None]]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{variant: (train, test)}`` for (variant, image_feature, method) triples;
    frames of one method are shared between its variants (no copies)."""
    by_method: dict[str | None, tuple[pd.DataFrame, pd.DataFrame]] = {}
    out = {}
    for name, _feature, method in variants:
        if method not in by_method:
            df = base if method is None else base.merge(per_method[method], on="event_id", how="left",
                                                        validate="one_to_one")
            train = df[df["split"] == "train"].reset_index(drop=True)
            test = df[df["split"] == "test"].reset_index(drop=True)
            if train.empty or test.empty:
                raise DataError(f"CTR samples need both splits; got train={len(train)} test={len(test)} rows")
            by_method[method] = (train, test)
        out[name] = by_method[method]
    return out

"""`courier features`: centroids + embeddings + ctr_samples -> feature_store/item_visual,
feature_store/impression_visual (MERGE upserts)."""
from __future__ import annotations

import dataclasses

from pyspark import StorageLevel
from pyspark.sql import functions as F

from courier_spark.features.cluster import load_centroids
from courier_spark.features.embed import read_embeddings
from courier_spark.features.feature_tables import (IMPRESSION_VISUAL_COMMENTS, IMPRESSION_VISUAL_KEYS, ITEM_VISUAL_COMMENTS,
                             ITEM_VISUAL_KEYS, current_rows, merge_history, merge_upsert)
from courier_spark.features.assignment import (assign_cluster_ids, impression_visual_rows, impression_visual_stats, item_visual_rows,
                        similarity_features)
from courier_spark.features.health import record_write
from courier_spark.core.logs import say, step
from courier_spark.serving.versions import assign_new_items, requested_versions, serving_versions
from courier_spark.core.tables import read_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import FeaturesResult, ItemVisualWrite


def run(ctx: StageContext) -> FeaturesResult:
    """centroids + embeddings + ctr_samples -> feature_store/item_visual, impression_visual (MERGE)."""
    cfg = ctx.cfg.features
    spark, p = ctx.spark, ctx.paths
    serving = serving_versions(spark, p, *requested_versions(ctx.cfg))
    cv, mv = serving.centroid_version, serving.model_version
    _, _, centroids = load_centroids(spark, p.centroids, cv)
    emb = read_embeddings(spark, p.item_embeddings, mv)
    say("features", f"centroid_version={cv} (k={len(centroids)}) model_version={mv} "
                    f"{'incremental' if cfg.incremental else 'full'} item assignment")

    # --- item_visual: nearest centroid per item (validity-interval history: merge_history)
    silver = read_table(spark, p.silver_items)
    # Which item version each embedding was made from (an item whose image changed is assigned again).
    versions = (silver.select("item_id", F.col("updated_at").alias("item_updated_at"))
                if "updated_at" in silver.columns else None)
    if cfg.incremental:
        assigned = assign_new_items(spark, emb, centroids, serving, p.item_visual_features,
                                    faiss_threads=cfg.faiss_threads, item_versions=versions)
    else:
        assigned = assign_cluster_ids(emb, centroids, spark, faiss_threads=cfg.faiss_threads)
    # Materialise once: MERGE and its duplicate-key check would otherwise re-run the UDF.
    items_src = item_visual_rows(assigned, mv, cv, versions).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with step("features", "assigning items and merging feature_store/item_visual"):
            n_assigned = items_src.count()
            item_merge = merge_history(spark, items_src, p.item_visual_features, ITEM_VISUAL_KEYS,
                                       ITEM_VISUAL_COMMENTS)
    finally:
        items_src.unpersist()
    # Statistics (and drift, after a version change) of the version just written; once per version.
    health = record_write(spark, p, "features")
    item_visual = (current_rows(read_table(spark, p.item_visual_features))
                   .filter((F.col("centroid_version") == cv) & (F.col("model_version") == mv)))
    n_items_cv = item_visual.count()

    # --- impression_visual: SimScores + cluster ids for every CTR sample
    ctr = read_table(spark, p.ctr_samples)
    n_emb = emb.count()
    emb_mb = n_emb * centroids.shape[1] * 4 / 2 ** 20
    broadcast = emb_mb <= cfg.broadcast_embeddings_mb
    cids = item_visual.select("item_id", F.col("courier_cluster_id").alias("cluster_id"))
    sims = similarity_features(ctr, emb, cids, cfg.k, broadcast_embeddings=broadcast)
    imp_src = impression_visual_rows(sims, mv, cv).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with step("features", f"SimScores (k={cfg.k}) and merging feature_store/impression_visual"):
            st = impression_visual_stats(imp_src)
            imp_merge = merge_upsert(spark, imp_src, p.impression_visual_features, IMPRESSION_VISUAL_KEYS,
                                     IMPRESSION_VISUAL_COMMENTS)
    finally:
        imp_src.unpersist()

    result = FeaturesResult(
        centroid_version=cv, model_version=mv, k=cfg.k, incremental=cfg.incremental,
        item_visual=ItemVisualWrite(embedded_items=n_emb, assigned_this_run=n_assigned,
                                    items_with_features=n_items_cv, merge=item_merge),
        impression_visual={**dataclasses.asdict(st), "embeddings_broadcast": broadcast, "merge": imp_merge},
        health=_health_summary(health))
    say("features", f"item_visual: assigned {n_assigned} item(s) this run; {n_items_cv}/{n_emb} embedded items "
                    f"have {cv} features; merge {item_merge}")
    say("features", f"impression_visual: {st.events} events, target cluster coverage "
                    f"{st.target_cluster_coverage:.3f}, slot-0 SimScore coverage "
                    f"{st.slot0_sim_coverage:.3f}; merge {imp_merge}")
    return result


def _health_summary(row: dict | None) -> dict | None:
    """The health record's headline figures for the run summary (None: no new version)."""
    if row is None:
        return None
    keys = ("item_visual_version", "rows", "null_cluster_id", "n_clusters", "distance_p50", "prev_centroid_version",
            "drift_psi", "drift_changed_share")
    return {k: row[k] for k in keys}

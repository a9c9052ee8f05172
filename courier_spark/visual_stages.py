"""Stages `embed`, `cluster`, `features` (register in stages.STAGES in this order).

embed:    silver/items + model artifact -> gold/item_embeddings (rows of that model version replaced)
cluster:  gold/item_embeddings (one model version) -> gold/centroids (one centroid version replaced)
features: gold/centroids + embeddings + silver/ctr_samples -> feature_store/item_visual,
          feature_store/impression_visual (MERGE upserts)
"""
from __future__ import annotations

import time

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import functions as F

from .cluster import (ClusterConfig, centroids_frame, choose_centroid_version, existing_versions,
                      load_centroids, replace_rows, size_stats, train_kmeans)
from .config import section
from .embed import EmbedConfig, embed_items, embeddings_to_numpy, read_embeddings
from .feature_store import (IMPRESSION_VISUAL_COMMENTS, IMPRESSION_VISUAL_KEYS, ITEM_VISUAL_COMMENTS,
                            ITEM_VISUAL_KEYS, merge_upsert)
from .features import (FeaturesConfig, array_dot, assign_cluster_ids, assign_new_items, impression_visual_rows,
                       item_visual_rows, similarity_features)
from .progress import say, step
from .tables import read_table, table_version


def _embed_model_version(ctx) -> str:
    from training.artifact import load_artifact
    ecfg = section(ctx.cfg, "embed", EmbedConfig)
    return load_artifact(ctx.paths.models, ecfg.method, ecfg.model_version).model_version


def latest_centroid_version(spark, paths, model_version: str) -> str:
    """Highest ``cNNNN`` in ``gold/centroids`` made from ``model_version`` (clear error if none)."""
    have = existing_versions(spark, paths.centroids)
    mine = sorted((v for v, meta in have.items() if meta["model_version"] == model_version),
                  key=lambda s: int(s[1:]))
    if not mine:
        made = sorted({m["model_version"] for m in have.values()})
        raise LookupError(f"gold/centroids has no centroid version for model {model_version}; "
                          f"it has centroids for {made or 'no model'} - run `courier cluster` "
                          f"with --set embed.method=<method>")
    return mine[-1]


def run_embed(ctx) -> dict:
    """silver/items + artifact -> gold/item_embeddings (that model version's rows replaced)."""
    from training.artifact import load_artifact

    cfg = section(ctx.cfg, "embed", EmbedConfig).validate()
    spark, p = ctx.spark, ctx.paths
    art = load_artifact(p.models, cfg.method, cfg.model_version)
    mv = art.model_version
    items = read_table(spark, p.silver_items, made_by="validate")
    n_in = items.count()
    say("embed", f"model {mv} ({art.backbone}@{art.image_size}px, d={art.embed_dim}) over {n_in} items, "
                 f"batch {cfg.batch_size}, {cfg.torch_threads} torch thread(s) per worker")
    emb = embed_items(items, art, cfg.batch_size, torch_threads=cfg.torch_threads, device=cfg.device,
                      min_partitions=cfg.min_partitions)
    t0 = time.perf_counter()
    with step("embed", f"embedding and replacing model_version={mv} rows of gold/item_embeddings"):
        version = replace_rows(emb, p.item_embeddings, "model_version", mv)
    secs = time.perf_counter() - t0
    # Accounting from the written rows (no second forward pass): every input
    # item is embedded or listed by reason.
    written = read_embeddings(spark, p.item_embeddings, mv)
    n_emb = written.count()
    status = F.col("image_status") if "image_status" in items.columns else F.lit(None).cast("string")
    reason = (F.when(F.col("image").isNull(), F.coalesce(status, F.lit("missing")))
              .otherwise(F.lit("decode_failed_at_embed")))
    not_embedded = {r["reason"]: int(r["count"]) for r in
                    items.join(written.select("item_id"), "item_id", "left_anti")
                    .groupBy(reason.alias("reason")).count().collect()}
    chk = written.agg(F.max(F.size("embedding")).alias("dim"), F.min(F.size("embedding")).alias("dim_min"),
                      F.max(F.abs(F.sqrt(array_dot(F.col("embedding"), F.col("embedding"))) - 1)).alias("norm_err")
                      ).first()
    summary = {"model_version": mv, "artifact": art.path, "backbone": art.backbone,
               "image_size": art.image_size, "items_in": n_in, "embedded": n_emb,
               "not_embedded": not_embedded, "embedding_dim": chk["dim"],
               "max_norm_error": float(chk["norm_err"] or 0.0),
               "items_per_second": round(n_emb / secs, 1) if secs > 0 else None,
               "table_version": version}
    say("embed", f"embedded {n_emb}/{n_in} items (d={chk['dim']}, {summary['items_per_second']} items/s); "
                 f"not embedded: {not_embedded or 'none'}")
    if n_emb + sum(not_embedded.values()) != n_in or chk["dim"] != chk["dim_min"]:
        raise RuntimeError(f"embedding accounting failed: {summary}")
    return summary


def run_cluster(ctx) -> dict:
    """gold/item_embeddings -> gold/centroids (faiss k-means)."""
    cfg = section(ctx.cfg, "cluster", ClusterConfig).validate()
    spark, p = ctx.spark, ctx.paths
    mv = cfg.model_version or _embed_model_version(ctx)
    emb = read_embeddings(spark, p.item_embeddings, mv)
    emb_table_version = table_version(spark, p.item_embeddings)
    n = emb.count()
    cap = cfg.k * cfg.max_points_per_centroid
    # faiss trains on at most k * max_points_per_centroid points anyway, so only
    # that many vectors are collected to the driver (a seeded, deterministic
    # hash sample when there are more): driver memory is bounded by k * mpc * d
    # floats whatever the catalogue size. Cluster sizes and inertia over *all*
    # items come from the distributed assignment job below.
    sample = emb if n <= cap else emb.orderBy(F.xxhash64("item_id", F.lit(cfg.seed))).limit(cap)
    with step("cluster", f"collecting {min(n, cap)} of {n} embeddings of {mv} to the driver"):
        ids, x = embeddings_to_numpy(sample)
    x = x[np.argsort(ids, kind="stable")]  # fixed row order: same inputs -> same faiss sample -> same centres
    gpu = None if cfg.gpu == "auto" else cfg.gpu == "yes"
    with step("cluster", f"faiss k-means k={cfg.k} niter={cfg.niter} nredo={cfg.nredo} init={cfg.init}"):
        centroids, train_stats = train_kmeans(x, cfg.k, cfg.niter, cfg.seed, cfg.max_points_per_centroid,
                                              nredo=cfg.nredo, init=cfg.init, gpu=gpu,
                                              tiny_cluster_size=cfg.tiny_cluster_size)
    params = {"model_version": mv, "k": cfg.k, "niter": cfg.niter, "seed": cfg.seed, "nredo": cfg.nredo,
              "max_points_per_centroid": cfg.max_points_per_centroid, "init": cfg.init, "spherical": True,
              "embeddings_table_version": emb_table_version, "n_items": n}
    cv, reused = choose_centroid_version(existing_versions(spark, p.centroids), cfg.centroid_version, params)
    change = None
    if reused:
        # Rewriting a version that features may already use: they stay valid
        # only if the centres are the same (incremental assignment skips items
        # already assigned to this version).
        old = load_centroids(spark, p.centroids, cv)[2]
        change = float(np.abs(old - centroids).max()) if old.shape == centroids.shape else float("inf")
        if change > 1e-5:
            say("cluster", f"WARNING: {cv} is rewritten with different centres (max change {change:.2g}); "
                           f"re-run features with --set features.incremental=false")
    with step("cluster", f"{'replacing' if reused else 'writing'} centroid_version={cv} in gold/centroids"):
        tv = replace_rows(centroids_frame(spark, centroids, cv, mv, params), p.centroids, "centroid_version", cv)
    with step("cluster", "assigning every item to its nearest centroid (Spark, broadcast centroids)"):
        rows = (assign_cluster_ids(emb, centroids, spark).groupBy("cluster_id")
                .agg(F.count("*").alias("n"), F.sum("distance").alias("d")).collect())
    sizes = np.zeros(cfg.k, np.int64)
    inertia = 0.0
    for r in rows:
        sizes[r["cluster_id"]] = r["n"]
        inertia += float(r["d"])
    full = {"n_items": n, "inertia": inertia, "mean_sq_distance": inertia / max(n, 1),
            "mean_cosine_to_centroid": 1.0 - inertia / max(n, 1) / 2.0,
            **size_stats(sizes, cfg.tiny_cluster_size)}
    summary = {"centroid_version": cv, "reused_version": reused, "max_centroid_change": change,
               "model_version": mv, "params": params,
               "collected_to_driver": int(len(x)), "train": train_stats, "all_items": full,
               "table_version": tv}
    say("cluster", f"{cv}: k={cfg.k} over {n} items, inertia={inertia:.2f} "
                   f"(mean cos to centre {full['mean_cosine_to_centroid']:.3f}), sizes {full['min_size']}.."
                   f"{full['max_size']}, empty={full['empty_clusters']} tiny(<{cfg.tiny_cluster_size})="
                   f"{full['tiny_clusters']}")
    say("cluster", f"size histogram {full['size_histogram']}")
    return summary


def run_features(ctx) -> dict:
    """centroids + embeddings + ctr_samples -> feature_store/item_visual, impression_visual (MERGE)."""
    cfg = section(ctx.cfg, "features", FeaturesConfig).validate()
    spark, p = ctx.spark, ctx.paths
    # "latest" = the newest centroids of the serving model (embed.method), not
    # of whichever method was clustered last (comparison runs add versions).
    wanted = (latest_centroid_version(spark, p, _embed_model_version(ctx))
              if cfg.centroid_version == "latest" else cfg.centroid_version)
    cv, mv, centroids = load_centroids(spark, p.centroids, wanted)
    emb = read_embeddings(spark, p.item_embeddings, mv)
    say("features", f"centroid_version={cv} (k={len(centroids)}) model_version={mv} "
                    f"{'incremental' if cfg.incremental else 'full'} item assignment")

    # --- item_visual: nearest centroid per item
    if cfg.incremental:
        assigned = assign_new_items(spark, emb, centroids, cv, mv, p.item_visual_features,
                                    faiss_threads=cfg.faiss_threads)
    else:
        assigned = assign_cluster_ids(emb, centroids, spark, faiss_threads=cfg.faiss_threads)
    # Materialise once: MERGE and its duplicate-key check would otherwise re-run the UDF.
    items_src = item_visual_rows(assigned, mv, cv).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with step("features", "assigning items and merging feature_store/item_visual"):
            n_assigned = items_src.count()
            item_merge = merge_upsert(spark, items_src, p.item_visual_features, ITEM_VISUAL_KEYS,
                                      ITEM_VISUAL_COMMENTS)
    finally:
        items_src.unpersist()
    item_visual = (read_table(spark, p.item_visual_features)
                   .filter((F.col("centroid_version") == cv) & (F.col("model_version") == mv)))
    n_items_cv = item_visual.count()

    # --- impression_visual: SimScores + cluster ids for every CTR sample
    ctr = read_table(spark, p.ctr_samples, made_by="samples")
    n_emb = emb.count()
    emb_mb = n_emb * centroids.shape[1] * 4 / 2 ** 20
    cids = item_visual.select("item_id", F.col("courier_cluster_id").alias("cluster_id"))
    sims = similarity_features(ctr, emb, cids, cfg.k, broadcast_embeddings=emb_mb <= cfg.broadcast_embeddings_mb)
    imp_src = impression_visual_rows(sims, mv, cv).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with step("features", f"SimScores (k={cfg.k}) and merging feature_store/impression_visual"):
            st = imp_src.agg(
                F.count("*").alias("events"),
                F.avg(F.col("target_cluster_id").isNotNull().cast("double")).alias("target_cov"),
                F.avg(F.col("sim_scores")[0].isNotNull().cast("double")).alias("slot0_cov"),
                F.avg(F.col("sim_scores")[0]).alias("slot0_mean"),
                F.avg(F.size(F.filter("sim_scores", lambda s: s.isNotNull()))).alias("slots_filled"),
            ).first()
            imp_merge = merge_upsert(spark, imp_src, p.impression_visual_features, IMPRESSION_VISUAL_KEYS,
                                     IMPRESSION_VISUAL_COMMENTS)
    finally:
        imp_src.unpersist()

    summary = {
        "centroid_version": cv, "model_version": mv, "k": cfg.k, "incremental": cfg.incremental,
        "item_visual": {"embedded_items": n_emb, "assigned_this_run": n_assigned,
                        "items_with_features": n_items_cv, "merge": item_merge},
        "impression_visual": {"events": int(st["events"]),
                              "target_cluster_coverage": float(st["target_cov"] or 0.0),
                              "slot0_sim_coverage": float(st["slot0_cov"] or 0.0),
                              "slot0_sim_mean": None if st["slot0_mean"] is None else float(st["slot0_mean"]),
                              "mean_filled_slots": float(st["slots_filled"] or 0.0),
                              "embeddings_broadcast": emb_mb <= cfg.broadcast_embeddings_mb,
                              "merge": imp_merge},
    }
    say("features", f"item_visual: assigned {n_assigned} item(s) this run; {n_items_cv}/{n_emb} embedded items "
                    f"have {cv} features; merge {item_merge}")
    say("features", f"impression_visual: {int(st['events'])} events, target cluster coverage "
                    f"{summary['impression_visual']['target_cluster_coverage']:.3f}, slot-0 SimScore coverage "
                    f"{summary['impression_visual']['slot0_sim_coverage']:.3f}; merge {imp_merge}")
    return summary

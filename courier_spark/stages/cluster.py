"""`courier cluster`: gold/item_embeddings (one model version) -> gold/centroids (faiss k-means)."""
from __future__ import annotations

import numpy as np

from courier_spark.features.cluster import (assignment_stats, centroid_change, centroids_frame, check_k, choose_centroid_version,
                       existing_versions, load_centroids, train_kmeans, training_sample)
from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
from courier_spark.features.assignment import assign_cluster_ids
from courier_spark.core.logs import say, step, warn
from courier_spark.serving.versions import model_version_of
from courier_spark.core.tables import replace_rows, table_version
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import ClusterResult


def run(ctx: StageContext) -> ClusterResult:
    """gold/item_embeddings -> gold/centroids (faiss k-means)."""
    cfg = ctx.cfg.cluster
    spark, p = ctx.spark, ctx.paths
    mv = cfg.model_version or model_version_of(p, ctx.cfg.embed.method, ctx.cfg.embed.model_version)
    emb = read_embeddings(spark, p.item_embeddings, mv)
    emb_table_version = table_version(spark, p.item_embeddings)
    n = emb.count()
    check_k(cfg.k, n, mv)
    cap = cfg.k * cfg.max_points_per_centroid
    with step("cluster", f"collecting {min(n, cap)} of {n} embeddings of {mv} to the driver"):
        ids, x = embeddings_to_numpy(training_sample(emb, n, cap, cfg.seed))
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
        change = centroid_change(load_centroids(spark, p.centroids, cv)[2], centroids)
        if change > 1e-5:
            warn("cluster", f"{cv} is rewritten with different centres (max change {change:.2g}); "
                           f"re-run features with --set features.incremental=false")
    with step("cluster", f"{'replacing' if reused else 'writing'} centroid_version={cv} in gold/centroids"):
        tv = replace_rows(centroids_frame(spark, centroids, cv, mv, params), p.centroids, "centroid_version", cv)
    with step("cluster", "assigning every item to its nearest centroid (Spark, broadcast centroids)"):
        full = assignment_stats(assign_cluster_ids(emb, centroids, spark), cfg.k, cfg.tiny_cluster_size)
    result = ClusterResult(centroid_version=cv, reused_version=reused, max_centroid_change=change,
                           model_version=mv, params=params, collected_to_driver=int(len(x)),
                           train=train_stats, all_items=full, table_version=tv)
    say("cluster", f"{cv}: k={cfg.k} over {n} items, inertia={full['inertia']:.2f} "
                   f"(mean cos to centre {full['mean_cosine_to_centroid']:.3f}), sizes {full['min_size']}.."
                   f"{full['max_size']}, empty={full['empty_clusters']} tiny(<{cfg.tiny_cluster_size})="
                   f"{full['tiny_clusters']}")
    say("cluster", f"size histogram {full['size_histogram']}")
    return result

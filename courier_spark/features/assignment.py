"""CTR features from embeddings: nearest-centroid cluster IDs and SimScores.

* ``assign_cluster_ids``: the centroids are broadcast once (``sc.broadcast``);
  each Python worker builds one faiss ``IndexFlatL2`` per broadcast (cached in
  a module global keyed by the broadcast id, reused across tasks) and assigns
  whole Arrow record batches (``mapInArrow``; vectors reshaped from the flat
  list values, no Python object per row): no per-row calls. New items are
  assigned against the current centroid version without re-clustering
  (``serving.assign_new_items``), which is how production handles new items between
  the rare full re-clusterings (method.md).
* ``similarity_features``: cos(target, k-th latest history click) per slot
  and the history items' cluster IDs, with Spark joins (see the function).

Distances are squared Euclidean distances to the nearest centre (for unit
vectors: 2 - 2 cos), the k-means objective's per-item term.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
import uuid
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


ASSIGN_SCHEMA = T.StructType([
    T.StructField("item_id", T.LongType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("distance", T.FloatType(), False),
])


# Per-Python-worker cache: broadcast key -> (faiss index, centroids).
_INDEXES: dict[str, tuple[Any, np.ndarray]] = {}


def _worker_index(key: str, centroids_bc, threads: int) -> tuple[Any, np.ndarray]:
    if key not in _INDEXES:
        import faiss

        faiss.omp_set_num_threads(threads)
        c = np.ascontiguousarray(centroids_bc.value, dtype=np.float32)
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)
        _INDEXES.clear()  # one centroid set per worker at a time
        _INDEXES[key] = (index, c)
    return _INDEXES[key]


def embedding_matrix(embeddings, d: int):
    """An Arrow ``list<float>`` column of equal-length vectors -> a float32
    ``[n, d]`` matrix without a Python object per row (the flat values are
    reshaped, not stacked)."""
    import pyarrow as pa
    arr = embeddings.combine_chunks() if isinstance(embeddings, pa.ChunkedArray) else embeddings
    offsets = np.asarray(arr.offsets)
    lengths = np.diff(offsets)
    if len(lengths) and (lengths != d).any():
        bad = int(lengths[lengths != d][0])
        raise ValueError(f"embedding dimension {bad} != centroid dimension {d}")
    flat = arr.flatten().to_numpy(zero_copy_only=False)  # honours the array's slice offset
    return np.ascontiguousarray(flat.reshape(len(arr), d), dtype=np.float32)


def _assign_batches(batches, key: str, centroids_bc, threads: int):
    """mapInArrow body: (item_id, embedding) record batches -> (item_id, cluster_id, distance).

    Arrow end to end: measured (bench/bench_assign.py) the pandas path spent
    most of its time building one numpy object per vector and stacking them."""
    import pyarrow as pa

    from courier_spark.features.cluster import _search

    index, c = _worker_index(key, centroids_bc, threads)
    for rb in batches:
        if rb.num_rows == 0:
            continue
        x = embedding_matrix(rb.column(1), c.shape[1])
        ids, dist = _search(index, c, x)
        yield pa.RecordBatch.from_arrays([rb.column(0), pa.array(ids, pa.int32()), pa.array(dist, pa.float32())],
                                         names=["item_id", "cluster_id", "distance"])


def assign_cluster_ids(embeddings_df: DataFrame, centroids: np.ndarray, spark: SparkSession | None = None,
                       *, faiss_threads: int = 1) -> DataFrame:
    """``item_id, embedding`` -> ``item_id, cluster_id (int), distance (float,
    squared L2)`` of each item's nearest centroid. Rows with a null embedding
    are skipped."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 2 or len(c) == 0:
        raise ValueError(f"centroids must be a non-empty [k, d] array, got shape {c.shape}")
    spark = spark or embeddings_df.sparkSession
    bc = spark.sparkContext.broadcast(c)
    # A module-level function + partial pickles by reference, so the worker's
    # index cache (a module global) survives across tasks; the key (unique per
    # broadcast) tells workers when the centroids changed.
    fn = functools.partial(_assign_batches, key=uuid.uuid4().hex, centroids_bc=bc, threads=int(faiss_threads))
    return (embeddings_df.filter(F.col("embedding").isNotNull())
            .select(F.col("item_id").cast("long"), "embedding")
            .mapInArrow(fn, schema=ASSIGN_SCHEMA))


def item_visual_rows(assigned: DataFrame, model_version: str, centroid_version: str,
                     item_versions: DataFrame | None = None) -> DataFrame:
    """Assignment -> the feature_store/item_visual row shape (without the
    validity interval). ``item_versions`` (``item_id, item_updated_at``) names
    the item version each embedding was made from; without it that is null."""
    if item_versions is not None:
        assigned = assigned.join(item_versions.select("item_id", "item_updated_at"), "item_id", "left")
    else:
        assigned = assigned.withColumn("item_updated_at", F.lit(None).cast("timestamp"))
    return assigned.select("item_id", F.col("cluster_id").alias("courier_cluster_id"), "distance",
                           F.lit(model_version).alias("model_version"),
                           F.lit(centroid_version).alias("centroid_version"), "item_updated_at")


def array_dot(a: Column, b: Column) -> Column:
    """Dot product of two array<float> columns (null when either is null)."""
    # Double accumulation: float32 products summed in order, deterministic per row.
    return F.aggregate(F.zip_with(a, b, lambda x, y: x.cast("double") * y.cast("double")),
                       F.lit(0.0).cast("double"), lambda acc, v: acc + v)


def similarity_features(ctr_samples_df: DataFrame, embeddings_df: DataFrame, cluster_ids_df: DataFrame,
                        k: int = 5, *, broadcast_embeddings: bool = False) -> DataFrame:
    """Per impression: ``event_id, sim_scores array<float>[k], hist_cluster_ids
    array<int>[k], target_cluster_id int``.

    Slot 0 is the most recent history click (``hist_item_ids`` is oldest ->
    newest, so slot j is its (j+1)-th element from the end). ``sim_scores[j]``
    = cos(target embedding, slot-j click embedding), null when the slot has no
    click or either item has no embedding; ``hist_cluster_ids[j]`` is the
    click's cluster id (null when missing).

    Why explode + join + aggregate rather than a UDF over a broadcast
    embedding dict: it stays in the JVM (no Python serialisation of vectors)
    and scales to embedding tables that do not fit in one worker's memory
    (production: ~6e7 items). When the table is small the caller sets
    ``broadcast_embeddings`` and the joins become map-side lookups, the same
    data movement as a broadcast dict, so nothing is lost either way.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    emb = embeddings_df.select("item_id", "embedding",
                               F.sqrt(array_dot(F.col("embedding"), F.col("embedding"))).alias("norm"))
    emb = F.broadcast(emb) if broadcast_embeddings else emb
    cids = cluster_ids_df.select("item_id", "cluster_id")
    events = ctr_samples_df.select("event_id", F.col("item_id").cast("long").alias("item_id"),
                                   F.coalesce("hist_item_ids", F.array().cast("array<bigint>")).alias("hist"))
    # Latest k clicks, newest first: slot 0 = last element.
    slots = events.select("event_id", "item_id",
                          F.posexplode(F.slice(F.reverse("hist"), 1, k)).alias("slot", "hist_item_id"))
    t = emb.select(F.col("item_id"), F.col("embedding").alias("t_emb"), F.col("norm").alias("t_norm"))
    h = emb.select(F.col("item_id").alias("hist_item_id"), F.col("embedding").alias("h_emb"),
                   F.col("norm").alias("h_norm"))
    hc = cids.select(F.col("item_id").alias("hist_item_id"), F.col("cluster_id").alias("h_cid"))
    per_slot = (slots.join(t, "item_id", "left").join(h, "hist_item_id", "left").join(hc, "hist_item_id", "left")
                .select("event_id", "slot",
                        (array_dot(F.col("t_emb"), F.col("h_emb")) / (F.col("t_norm") * F.col("h_norm")))
                        .cast("float").alias("sim"),
                        F.col("h_cid").cast("int").alias("cid")))
    by_event = (per_slot.groupBy("event_id")
                .agg(F.map_from_entries(F.collect_list(F.struct("slot", F.struct("sim", "cid")))).alias("m")))
    idx = F.sequence(F.lit(0), F.lit(k - 1))
    target = cids.select(F.col("item_id"), F.col("cluster_id").cast("int").alias("target_cluster_id"))
    # try_element_at: a missing slot is null (plain [] errors under ANSI mode).
    return (events.select("event_id", "item_id")
            .join(by_event, "event_id", "left")
            .join(target, "item_id", "left")
            .select("event_id",
                    F.transform(idx, lambda i: F.try_element_at("m", i)["sim"]).cast("array<float>")
                    .alias("sim_scores"),
                    F.transform(idx, lambda i: F.try_element_at("m", i)["cid"]).cast("array<int>")
                    .alias("hist_cluster_ids"),
                    "target_cluster_id"))


def impression_visual_rows(sims: DataFrame, model_version: str, centroid_version: str) -> DataFrame:
    """similarity_features output -> the feature_store/impression_visual row shape."""
    return sims.select("event_id", "sim_scores", "hist_cluster_ids", "target_cluster_id",
                       F.lit(model_version).alias("model_version"),
                       F.lit(centroid_version).alias("centroid_version"))


@dataclass
class ImpressionVisualStats:
    """Coverage of the impression features about to be written (the features stage's summary)."""

    events: int
    target_cluster_coverage: float      # share of events whose target item has a cluster ID
    slot0_sim_coverage: float           # share with a SimScore for the latest history click
    slot0_sim_mean: float | None
    mean_filled_slots: float            # SimScores per event (of k)


def impression_visual_stats(rows: DataFrame) -> ImpressionVisualStats:
    """One pass over ``impression_visual_rows`` output."""
    st = rows.agg(
        F.count("*").alias("events"),
        F.avg(F.col("target_cluster_id").isNotNull().cast("double")).alias("target_cov"),
        F.avg(F.col("sim_scores")[0].isNotNull().cast("double")).alias("slot0_cov"),
        F.avg(F.col("sim_scores")[0]).alias("slot0_mean"),
        F.avg(F.size(F.filter("sim_scores", lambda s: s.isNotNull()))).alias("slots_filled"),
    ).first()
    return ImpressionVisualStats(
        events=int(st["events"]), target_cluster_coverage=float(st["target_cov"] or 0.0),
        slot0_sim_coverage=float(st["slot0_cov"] or 0.0),
        slot0_sim_mean=None if st["slot0_mean"] is None else float(st["slot0_mean"]),
        mean_filled_slots=float(st["slots_filled"] or 0.0))

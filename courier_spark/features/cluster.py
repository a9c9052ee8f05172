"""Clustering of item embeddings with faiss k-means (the "Cluster ID" feature).

Embeddings are L2-normalised and k-means runs spherically (centroids are
re-normalised every iteration), so the Euclidean nearest centre is also the
cosine nearest centre. The trained centroids go to ``gold/centroids`` under a
``centroid_version``:

* ``cluster.centroid_version: auto`` (default) reuses the version whose
  recorded parameters (model version, k, niter, seed, sampling, init and the
  Delta version of ``gold/item_embeddings`` that was read) are identical, so
  re-running the pipeline replaces that version's rows with the same centres
  instead of minting a new version; otherwise it takes the next ``cNNNN``
  (``c0001``, ``c0002``, ...).
* an explicit ``cNNNN`` always (re)writes exactly that version.

Rows of one version are replaced atomically (Delta ``replaceWhere``), never
appended twice.
"""
from __future__ import annotations

import json
import re
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core.errors import DataError, VersionNotFoundError

CENTROIDS_SCHEMA = T.StructType([
    T.StructField("centroid_version", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("cluster_id", T.IntegerType(), False),
    T.StructField("centroid", T.ArrayType(T.FloatType(), False), False),
    T.StructField("params", T.StringType(), False),      # JSON: how this version was trained
    T.StructField("created_at", T.TimestampType(), False),
])

_CVERSION = re.compile(r"^c(\d{4,})$")
INITS = ("kmeans++", "random")


def check_k(k: int, n_items: int, model_version: str) -> None:
    """More clusters than embedded items is a data problem, not a faiss crash."""
    if k > n_items:
        raise DataError(f"cluster.k={k} but model {model_version} has only {n_items} embedded item(s); "
                        f"lower cluster.k to at most {n_items}")


def centroid_model_version(spark: SparkSession, centroids_path: str, centroid_version: str) -> str:
    """The model version centroid version ``centroid_version`` was made from (clear error if absent)."""
    have = existing_versions(spark, centroids_path)
    if not have:
        raise VersionNotFoundError(f"{centroids_path} holds no centroids; run `courier cluster` first")
    if centroid_version not in have:
        avail = sorted(have, key=lambda s: int(s[1:]) if _CVERSION.match(s) else -1)
        raise VersionNotFoundError(f"centroid version {centroid_version!r} is not in {centroids_path}; "
                                   f"available: {', '.join(avail)}")
    return have[centroid_version]["model_version"]


def latest_centroid_version(spark: SparkSession, centroids_path: str, model_version: str) -> str:
    """Highest ``cNNNN`` in ``gold/centroids`` made from ``model_version`` (clear error if none)."""
    have = existing_versions(spark, centroids_path)
    mine = sorted((v for v, meta in have.items() if meta["model_version"] == model_version),
                  key=lambda s: int(s[1:]))
    if not mine:
        made = sorted({m["model_version"] for m in have.values()})
        raise VersionNotFoundError(f"gold/centroids has no centroid version for model {model_version}; "
                          f"it has centroids for {made or 'no model'} - run `courier cluster` "
                          f"with --set embed.method=<method>")
    return mine[-1]


def faiss_gpus() -> int:
    import faiss
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the GPU API
        return 0


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n == 0):
        raise DataError(f"{int((n == 0).sum())} zero vectors cannot be normalised")
    return np.ascontiguousarray(x / n)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster_id int32 [N], squared L2 distance float32 [N]) of each row's nearest centre.

    faiss finds the nearest centre; the distance is then recomputed per row in
    numpy so it is bit-identical whatever the batch the row arrived in (faiss
    switches between BLAS and direct kernels by batch size, which would move
    the last bits and make unchanged features look changed to a MERGE)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    return _search(index, c, x)


def _search(index, centroids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    _, ids = index.search(x, 1)
    ids = ids[:, 0].astype(np.int32)
    diff = x - centroids[ids]
    return ids, np.einsum("ij,ij->i", diff, diff).astype(np.float32)


def size_stats(sizes: np.ndarray, tiny: int) -> dict:
    """Cluster size histogram (log2 buckets) plus empty/tiny clusters."""
    sizes = np.asarray(sizes, dtype=np.int64)
    edges = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    hist = {}
    for lo, hi in zip(edges, edges[1:] + [None]):
        if hi is None:
            label, mask = f">={lo}", sizes >= lo
        else:
            label, mask = (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"), (sizes >= lo) & (sizes < hi)
        if mask.any():
            hist[label] = int(mask.sum())
    return {"clusters": int(len(sizes)), "min_size": int(sizes.min()) if len(sizes) else 0,
            "max_size": int(sizes.max()) if len(sizes) else 0,
            "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
            "empty_clusters": int((sizes == 0).sum()),
            "tiny_clusters": int(((sizes > 0) & (sizes < tiny)).sum()),  # non-empty, < tiny items
            "tiny_threshold": int(tiny),
            "size_histogram": hist}


def training_sample(embeddings: DataFrame, n_items: int, cap: int, seed: int) -> DataFrame:
    """The rows faiss trains on: all when ``n_items <= cap``, else a seeded,
    deterministic hash sample of ``cap`` rows. faiss trains on at most
    k * max_points_per_centroid points anyway, so only that many vectors go to
    the driver: its memory is bounded whatever the catalogue size."""
    if n_items <= cap:
        return embeddings
    return embeddings.orderBy(F.xxhash64("item_id", F.lit(seed))).limit(cap)


def assignment_stats(assigned: DataFrame, k: int, tiny: int) -> dict:
    """Cluster sizes and inertia over *all* assigned items (``item_id,
    cluster_id, distance`` rows, distances squared L2), computed by Spark."""
    rows = assigned.groupBy("cluster_id").agg(F.count("*").alias("n"), F.sum("distance").alias("d")).collect()
    sizes = np.zeros(k, np.int64)
    inertia = 0.0
    for r in rows:
        sizes[r["cluster_id"]] = r["n"]
        inertia += float(r["d"])
    n = int(sizes.sum())
    return {"n_items": n, "inertia": inertia, "mean_sq_distance": inertia / max(n, 1),
            # unit vectors: |x - c|^2 = 2 - 2 cos
            "mean_cosine_to_centroid": 1.0 - inertia / max(n, 1) / 2.0,
            **size_stats(sizes, tiny)}


def centroid_change(old: np.ndarray, new: np.ndarray) -> float:
    """Largest coordinate change between two centroid sets (inf when their shapes differ)."""
    return float(np.abs(old - new).max()) if old.shape == new.shape else float("inf")


def train_kmeans(embeddings: np.ndarray, k: int, niter: int = 20, seed: int = 1234,
                 max_points_per_centroid: int = 256, *, nredo: int = 1, init: str = "kmeans++",
                 spherical: bool = True, gpu: bool | None = None, tiny_cluster_size: int = 3
                 ) -> tuple[np.ndarray, dict]:
    """faiss k-means on L2-normalised vectors -> (centroids float32 [k, d], stats).

    When N > k * max_points_per_centroid faiss trains on a random sample of
    that size (seeded). ``gpu=None`` uses faiss GPUs when this faiss build has
    any. Stats: ``inertia`` (sum of squared L2 distances of *all* given points
    to their nearest centre: the k-means objective; 2 - 2 cos per point),
    ``objective_per_iter`` (faiss's own objective on the training sample, a
    sum of inner products when spherical), cluster sizes and their histogram.
    """
    import faiss

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    x = l2_normalise(embeddings) if spherical else np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {x.shape}")
    n, d = x.shape
    if n < k:
        raise DataError(f"cannot make {k} clusters from {n} vectors; lower cluster.k")
    use_gpu = faiss_gpus() > 0 if gpu is None else bool(gpu)
    init_method = (faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS if init == "kmeans++"
                   else faiss.ClusteringInitMethod_RANDOM)
    km = faiss.Kmeans(d, int(k), niter=int(niter), seed=int(seed), spherical=spherical, nredo=int(nredo),
                      max_points_per_centroid=int(max_points_per_centroid), init_method=init_method,
                      gpu=use_gpu, verbose=False)
    t0 = time.perf_counter()
    km.train(x)
    train_s = time.perf_counter() - t0
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    ids, dist = nearest_centroids(x, centroids)
    sizes = np.bincount(ids, minlength=k)
    stats = {"n_points": int(n), "dim": int(d), "k": int(k), "niter": int(niter), "nredo": int(nredo),
             "seed": int(seed), "init": init, "spherical": spherical, "gpu": use_gpu,
             "n_train": int(min(n, k * max_points_per_centroid)),
             "train_seconds": round(train_s, 3),
             "inertia": float(dist.astype(np.float64).sum()),
             "mean_sq_distance": float(dist.mean()),
             "objective_per_iter": [float(v) for v in (km.obj if km.obj is not None else [])],
             **size_stats(sizes, tiny_cluster_size)}
    return centroids, stats


# ---------------------------------------------------------------- gold/centroids

def centroids_frame(spark: SparkSession, centroids: np.ndarray, centroid_version: str,
                    model_version: str, params: dict) -> DataFrame:
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    pj = json.dumps(params, sort_keys=True, default=str)
    rows = [(centroid_version, model_version, i, [float(v) for v in c], pj, now)
            for i, c in enumerate(np.asarray(centroids, dtype=np.float32))]
    return spark.createDataFrame(rows, CENTROIDS_SCHEMA)


def existing_versions(spark: SparkSession, path: str) -> dict[str, dict]:
    """centroid_version -> {model_version, params(dict), k} of gold/centroids."""
    from courier_spark.core.tables import table_exists
    if not table_exists(spark, path):
        return {}
    rows = (spark.read.format("delta").load(path)
            .groupBy("centroid_version")
            .agg(F.first("model_version").alias("model_version"), F.first("params").alias("params"),
                 F.count("*").alias("k"))
            .collect())
    return {r["centroid_version"]: {"model_version": r["model_version"], "params": json.loads(r["params"]),
                                    "k": int(r["k"])} for r in rows}


def choose_centroid_version(existing: dict[str, dict], requested: str, params: dict) -> tuple[str, bool]:
    """-> (version, reused). See the module docstring for the rule."""
    if requested != "auto":
        return requested, requested in existing
    for v in sorted(existing, key=lambda s: int(s[1:]) if _CVERSION.match(s) else -1):
        if existing[v]["params"] == json.loads(json.dumps(params, sort_keys=True, default=str)):
            return v, True
    nums = [int(v[1:]) for v in existing if _CVERSION.match(v)]
    return f"c{(max(nums) + 1 if nums else 1):04d}", False


def load_centroids(spark: SparkSession, path: str, centroid_version: str = "latest"
                   ) -> tuple[str, str, np.ndarray]:
    """-> (centroid_version, model_version, centroids [k, d] ordered by cluster_id).
    ``latest`` is the highest cNNNN in the table."""
    from courier_spark.core.tables import read_table

    df = read_table(spark, path)
    have = sorted((r[0] for r in df.select("centroid_version").distinct().collect()),
                  key=lambda s: int(s[1:]) if _CVERSION.match(s) else -1)
    if not have:
        raise VersionNotFoundError(f"{path} holds no centroids; run `courier cluster` first")
    if centroid_version == "latest":
        centroid_version = have[-1]
    if centroid_version not in have:
        raise VersionNotFoundError(f"centroid version {centroid_version!r} is not in {path}; available: {', '.join(have)}")
    pdf = (df.filter(F.col("centroid_version") == centroid_version)
           .select("cluster_id", "model_version", "centroid").toPandas().sort_values("cluster_id"))
    if list(pdf["cluster_id"]) != list(range(len(pdf))):
        raise DataError(f"centroid version {centroid_version} in {path} has non-contiguous cluster ids")
    mv = set(pdf["model_version"])
    if len(mv) != 1:
        raise DataError(f"centroid version {centroid_version} mixes model versions {sorted(mv)}")
    return centroid_version, mv.pop(), np.ascontiguousarray(np.stack(pdf["centroid"].to_numpy()), dtype=np.float32)

"""Cluster assignment and k-means training: our Spark/faiss job vs faiss alone vs Spark MLlib.

    .venv/bin/python bench/bench_assign.py [--n 1000000] [--d 256] [--k 256] [--iters 10]

One synthetic set of --n L2-normalised --d-dim vectors (a seeded Gaussian
mixture, generated in numpy and written once as Parquet under --data-dir,
reused by later runs) is used for everything. Printed in one run:

(c) k-means training, same N, C (--k) and iterations, random init, plain
    (Euclidean) Lloyd iterations on both sides: faiss.Kmeans in one process
    vs Spark MLlib ``pyspark.ml.clustering.KMeans`` (tol 0, on a cached
    vector column).
(a) nearest-centre assignment of all N vectors: our Spark job
    (``features.assign_cluster_ids``: broadcast centroids, one faiss index per
    Python worker, mapInArrow, read from Parquet) vs faiss alone in one
    process on the in-memory array: the Spark overhead ratio. To split the
    overhead it also prints a scan-only Spark pass over the same Parquet, a
    pass that moves the vectors to the Python workers as Arrow and back
    (no search), and faiss alone *including* reading the vectors from the
    same Parquet file with pyarrow (all cores): the floor of any job that
    reads its vectors from Parquet.
(b) the same assignment with Spark MLlib ``KMeansModel.transform`` (JVM).
    pyspark.ml 4.0's KMeans cannot be given initial centres, so both (a) and
    (b) use the *MLlib-trained model's* centres: the same centroids on every
    side. Agreement of the assignments is printed as a check.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np


def generate(path: str, n: int, d: int, seed: int, chunk: int = 65536) -> None:
    """Seeded mixture of 1024 Gaussian blobs on the unit sphere -> Parquet (item_id, embedding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1024, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema) as w:
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            x = centres[rng.integers(0, len(centres), m)] + 0.08 * rng.normal(size=(m, d)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            emb = pa.ListArray.from_arrays(pa.array(np.arange(0, m * d + 1, d, dtype=np.int32)),
                                           pa.array(x.ravel()))
            w.write_table(pa.table({"item_id": pa.array(np.arange(lo, lo + m, dtype=np.int64)),
                                    "embedding": emb}, schema=schema), row_group_size=chunk)
    os.replace(tmp, path)


def load_numpy(path: str, d: int) -> np.ndarray:
    import pyarrow.parquet as pq
    col = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return np.ascontiguousarray(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d), dtype=np.float32)


def _pass_ids(batches):
    """mapInArrow body that receives the vectors and returns only the ids:
    the cost of moving them JVM -> Python -> JVM, without the search."""
    import pyarrow as pa
    for rb in batches:
        yield pa.RecordBatch.from_arrays([rb.column(0)], names=["item_id"])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=256, help="number of centroids C")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="/tmp/courier-bench-assign")
    ap.add_argument("--train-n", type=int, default=0,
                    help="train (c) on the first TRAIN_N vectors on both sides (0 = all N; MLlib's fit is "
                         "the slow part: about 10 Lloyd passes of the JVM over N x C)")
    ap.add_argument("--driver-memory", default="8g")
    a = ap.parse_args()

    import faiss
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    from courier_spark.features.cluster import train_kmeans
    from courier_spark.core.schema import SparkConfig
    from courier_spark.features.assignment import assign_cluster_ids
    from courier_spark.core.spark import get_spark

    os.makedirs(a.data_dir, exist_ok=True)
    path = os.path.join(a.data_dir, f"vectors_n{a.n}_d{a.d}_s{a.seed}.parquet")
    if not os.path.exists(path):
        _, t = timed(lambda: generate(path, a.n, a.d, a.seed))
        print(f"generated {a.n:,} x {a.d} vectors -> {path} in {t:.1f}s", flush=True)
    x = load_numpy(path, a.d)
    cores = os.cpu_count()
    print(f"data: {x.shape[0]:,} x {x.shape[1]} float32 ({x.nbytes / 2**30:.2f} GiB), C={a.k}, "
          f"iterations={a.iters}, {cores} cores, faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} OpenMP threads)", flush=True)

    spark = get_spark(SparkConfig(driver_memory=a.driver_memory, shuffle_partitions=cores or 2,
                                  app_name="bench-assign", log_level="ERROR"))
    par = spark.sparkContext.defaultParallelism
    df = spark.read.parquet(path)
    print(f"spark: local[{par}], {df.rdd.getNumPartitions()} input partitions", flush=True)

    load0 = os.getloadavg()[0]
    # ---- (c) training: faiss vs MLlib, same N / C / iterations, random init
    n_train = a.n if a.train_n <= 0 else min(a.train_n, a.n)
    mpc = math.ceil(n_train / a.k)  # so faiss trains on all n_train points, like MLlib
    (fc, fstats), t_faiss_train = timed(lambda: train_kmeans(
        x[:n_train], a.k, a.iters, a.seed, mpc, nredo=1, init="random", spherical=False))
    t_faiss_train = fstats["train_seconds"]  # km.train only (train_kmeans also assigns all points)
    print(f"(c) faiss k-means train: {t_faiss_train:.1f}s (objective {fstats['inertia']:.1f})", flush=True)
    train_df = df if n_train == a.n else df.filter(f"item_id < {n_train}")  # item_id = row index
    vec = train_df.select("item_id", array_to_vector("embedding").alias("features")).persist()
    _, t_cache = timed(vec.count)
    km = KMeans(k=a.k, maxIter=a.iters, initMode="random", seed=a.seed, tol=0.0)
    model, t_ml_train = timed(lambda: km.fit(vec))
    ml_iters = model.summary.numIter
    ml_cost = model.summary.trainingCost
    print(f"(c) MLlib KMeans fit: {t_ml_train:.1f}s for {ml_iters} iterations (cost {ml_cost:.1f}); "
          f"caching the vector column took {t_cache:.1f}s more", flush=True)
    vec.unpersist()
    centres = np.ascontiguousarray(np.stack([np.asarray(c) for c in model.clusterCenters()]), dtype=np.float32)

    # ---- (a) assignment: faiss alone vs our Spark job, MLlib's centres
    index = faiss.IndexFlatL2(a.d)
    index.add(centres)
    (_, ref), t_faiss = timed(lambda: index.search(x, 1))
    ref = ref[:, 0]
    print(f"(a) faiss alone (one process, {faiss.omp_get_max_threads()} threads): {t_faiss:.1f}s", flush=True)
    # warm-up: Python workers, imports and the JIT, so the timed job is the steady state
    assign_cluster_ids(df.limit(20000), centres, spark).write.format("noop").mode("overwrite").save()
    _, t_scan = timed(lambda: df.write.format("noop").mode("overwrite").save())
    _, t_move = timed(lambda: df.mapInArrow(_pass_ids, "item_id long").write.format("noop")
                      .mode("overwrite").save())
    _, t_spark = timed(lambda: assign_cluster_ids(df, centres, spark).write.format("noop")
                       .mode("overwrite").save())
    _, t_read = timed(lambda: load_numpy(path, a.d))
    t_read_faiss = t_read + t_faiss
    print(f"(a) Spark faiss assignment job: {t_spark:.1f}s (scan-only pass {t_scan:.1f}s)", flush=True)
    got = assign_cluster_ids(df, centres, spark).select("item_id", "cluster_id").toPandas()
    got = got.sort_values("item_id")["cluster_id"].to_numpy()
    agree_spark = float((got == ref).mean())

    # ---- (b) MLlib KMeansModel.transform with the same centres
    vec_in = df.select("item_id", array_to_vector("embedding").alias("features"))
    _, t_ml = timed(lambda: model.transform(vec_in).select("item_id", "prediction").write.format("noop")
                    .mode("overwrite").save())
    pred = model.transform(vec_in).select("item_id", "prediction").toPandas().sort_values("item_id")
    agree_ml = float((pred["prediction"].to_numpy() == ref).mean())

    n = a.n
    rate = lambda t: n / t if t > 0 else float("inf")  # noqa: E731
    print("\n=== bench_assign: N={:,} d={} C={} iterations={} ({} cores) ===".format(n, a.d, a.k, a.iters, cores))
    print("(a) assignment, same centroids (MLlib-trained), vectors/s:")
    print(f"    faiss alone, in-memory array         {t_faiss:8.1f}s  {rate(t_faiss):>12,.0f}/s")
    print(f"    Spark + broadcast faiss (mapInArrow) {t_spark:8.1f}s  {rate(t_spark):>12,.0f}/s  "
          f"Spark overhead ratio {t_spark / t_faiss:.1f}x")
    print(f"    (Spark scan-only of the same Parquet {t_scan:8.1f}s; + vectors to Python as Arrow and back "
          f"{t_move:.1f}s; faiss + search/exact distance {t_spark - t_move:.1f}s)")
    print(f"    faiss alone incl. pyarrow Parquet read {t_read_faiss:8.1f}s  (read {t_read:.1f}s): "
          f"Spark job / this = {t_spark / t_read_faiss:.1f}x")
    print(f"(b) Spark MLlib KMeansModel.transform    {t_ml:8.1f}s  {rate(t_ml):>12,.0f}/s  "
          f"MLlib takes {t_ml / t_spark:.1f}x our time")
    print(f"    agreement with faiss alone: Spark job {agree_spark:.5f}, MLlib {agree_ml:.5f} "
          f"(ties/rounding only)")
    print(f"(c) k-means training, random init, same N/C/iterations (N={n_train:,}):")
    print(f"    faiss.Kmeans (one process)           {t_faiss_train:8.1f}s  objective {fstats['inertia']:.1f}")
    print(f"    Spark MLlib KMeans.fit               {t_ml_train:8.1f}s  cost {ml_cost:.1f} "
          f"({ml_iters} iterations; +{t_cache:.1f}s caching)  "
          f"MLlib takes {t_ml_train / t_faiss_train:.1f}x faiss's time")
    print(f"machine load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} "
          f"on {cores} cores: other processes share the CPU when this is above {cores}")
    spark.stop()


if __name__ == "__main__":
    main()

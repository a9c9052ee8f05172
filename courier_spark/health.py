"""Feature health: statistics of every write of ``feature_store/item_visual``,
drift when a new centroid or model version replaces the previous one, and
freshness (bronze landing -> feature row) of the streaming stage's writes.

One row per item_visual table version in ``_health/item_visual`` (MERGE keyed
by ``item_visual_version``, insert-only: a re-run that commits nothing to
item_visual, or a replayed micro-batch, adds no row). Every figure is computed
from item_visual *as of that version* (Delta time travel), so recording a
version twice gives the same numbers.

* statistics: over the current rows of the versions the write made (its
  ``model_version``/``centroid_version``): rows, nulls, cluster sizes, distance
  quantiles (exact, linear interpolation like ``numpy.quantile``);
* drift: when the write closed rows of other versions, against those versions
  over the items present in both. Cluster ids of two k-means runs are
  arbitrary labels, so clusters are first matched one-to-one by their shared
  items (``scipy.optimize.linear_sum_assignment`` on the overlap table,
  maximising the items kept): a relabelled but identical clustering has PSI 0
  and no changed item. PSI over the matched cluster shares
  (``sum((a - e) * ln(a / e))``, an empty side counted as ``PSI_EPS``);
  changed share = items whose new cluster is not the match of their old one;
* freshness (stream writes): ``valid_from`` of each row the write inserted
  minus when its item row landed in bronze: the modification time of the
  bronze data file holding that row (written by, and just before, the bronze
  commit), earliest landing of that ``(item_id, updated_at)``.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .catalog import MERGE_UPSERT, check_write
from .paths import TablePaths
from .schema import HealthConfig
from .tables import table_exists, table_version

PSI_EPS = 1e-4   # share given to a cluster one side does not have (PSI's log is otherwise infinite)
DISTANCE_QUANTILES = (0.5, 0.9, 0.99)
FRESHNESS_QUANTILES = (0.5, 0.95)

HEALTH_SCHEMA = T.StructType([
    T.StructField("item_visual_version", T.LongType(), False),   # the key: one row per table version
    T.StructField("written_at", T.TimestampType(), False),        # that version's commit time
    T.StructField("source", T.StringType(), False),               # features | stream
    T.StructField("batch_id", T.LongType(), True),                # the stream's micro-batch
    T.StructField("model_version", T.StringType(), False),
    T.StructField("centroid_version", T.StringType(), False),
    T.StructField("rows", T.LongType(), False),                   # current rows of those versions
    T.StructField("written_rows", T.LongType(), False),           # rows this version inserted
    T.StructField("null_cluster_id", T.LongType(), False),
    T.StructField("null_distance", T.LongType(), False),
    T.StructField("null_item_updated_at", T.LongType(), False),
    T.StructField("n_clusters", T.LongType(), False),             # non-empty clusters
    T.StructField("cluster_size_min", T.LongType(), True),
    T.StructField("cluster_size_median", T.DoubleType(), True),
    T.StructField("cluster_size_max", T.LongType(), True),
    T.StructField("cluster_sizes", T.StringType(), False),        # JSON {cluster_id: rows}
    T.StructField("distance_mean", T.DoubleType(), True),
    T.StructField("distance_p50", T.DoubleType(), True),
    T.StructField("distance_p90", T.DoubleType(), True),
    T.StructField("distance_p99", T.DoubleType(), True),
    T.StructField("prev_model_version", T.StringType(), True),    # drift: the versions replaced
    T.StructField("prev_centroid_version", T.StringType(), True),
    T.StructField("drift_items", T.LongType(), True),             # items present in both
    T.StructField("drift_psi", T.DoubleType(), True),
    T.StructField("drift_changed_share", T.DoubleType(), True),
    T.StructField("fresh_rows", T.LongType(), True),              # freshness: rows matched to bronze
    T.StructField("freshness_p50_s", T.DoubleType(), True),
    T.StructField("freshness_p95_s", T.DoubleType(), True),
])


# --------------------------------------------------------------------------- statistics
def item_visual_stats(rows: DataFrame) -> dict:
    """rows, nulls, cluster sizes and distance quantiles of ``rows``
    (item_visual rows: courier_cluster_id, distance, item_updated_at)."""
    qs = list(DISTANCE_QUANTILES)
    agg = rows.agg(F.count("*").alias("rows"),
                   *[F.sum(F.col(c).isNull().cast("long")).alias(f"null_{n}")
                     for c, n in (("courier_cluster_id", "cluster_id"), ("distance", "distance"),
                                  ("item_updated_at", "item_updated_at"))],
                   F.mean("distance").alias("distance_mean"),
                   F.percentile("distance", qs).alias("q")).first()
    sizes = {int(r[0]): int(r[1]) for r in
             rows.filter(F.col("courier_cluster_id").isNotNull()).groupBy("courier_cluster_id").count().collect()}
    counts = np.array(sorted(sizes.values()), dtype=np.int64)
    q = agg["q"] or [None] * len(qs)
    return {"rows": int(agg["rows"]),
            **{k: int(agg[k] or 0) for k in ("null_cluster_id", "null_distance", "null_item_updated_at")},
            "n_clusters": len(sizes),
            "cluster_size_min": int(counts.min()) if len(counts) else None,
            "cluster_size_median": float(np.median(counts)) if len(counts) else None,
            "cluster_size_max": int(counts.max()) if len(counts) else None,
            "cluster_sizes": json.dumps({str(k): v for k, v in sorted(sizes.items())}),
            "distance_mean": None if agg["distance_mean"] is None else float(agg["distance_mean"]),
            **{f"distance_p{round(p * 100)}": None if v is None else float(v) for p, v in zip(qs, q)}}


# --------------------------------------------------------------------------- drift
def match_clusters(overlap: np.ndarray) -> dict[int, int]:
    """New cluster index -> old cluster index, one-to-one, maximising the items
    the matched pairs share (``overlap[old, new]`` = items in both)."""
    from scipy.optimize import linear_sum_assignment
    old_idx, new_idx = linear_sum_assignment(-overlap)
    return {int(n): int(o) for o, n in zip(old_idx, new_idx) if overlap[o, n] > 0}


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=float), eps)
    a = np.maximum(np.asarray(actual, dtype=float), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_from_overlap(old_ids: Sequence[int], new_ids: Sequence[int], overlap: np.ndarray) -> dict:
    """Drift between two assignments given their overlap table (rows: ``old_ids``,
    columns: ``new_ids``, cells: items with that old and that new cluster)."""
    overlap = np.asarray(overlap, dtype=float)
    n = overlap.sum()
    if n == 0:
        return {"drift_items": 0, "drift_psi": None, "drift_changed_share": None}
    match = match_clusters(overlap)
    old_share, new_share = overlap.sum(axis=1) / n, overlap.sum(axis=0) / n
    # Bins: each matched pair, then old clusters without a match, then new ones without.
    matched_old = set(match.values())
    expected = [old_share[o] for _, o in sorted(match.items())]
    actual = [new_share[j] for j, _ in sorted(match.items())]
    expected += [old_share[o] for o in range(len(old_ids)) if o not in matched_old]
    actual += [0.0 for o in range(len(old_ids)) if o not in matched_old]
    expected += [0.0 for j in range(len(new_ids)) if j not in match]
    actual += [new_share[j] for j in range(len(new_ids)) if j not in match]
    kept = sum(overlap[o, j] for j, o in match.items())
    return {"drift_items": int(n), "drift_psi": psi(np.array(expected), np.array(actual)),
            "drift_changed_share": float(1.0 - kept / n)}


def cluster_drift(old: DataFrame, new: DataFrame) -> dict:
    """Drift of ``new`` (item_id, cluster_id) against ``old`` (item_id, cluster_id),
    over the items present in both with a cluster in both."""
    pairs = (old.select("item_id", F.col("cluster_id").alias("old"))
             .join(new.select("item_id", F.col("cluster_id").alias("new")), "item_id")
             .filter(F.col("old").isNotNull() & F.col("new").isNotNull())
             .groupBy("old", "new").count().collect())
    old_ids = sorted({int(r["old"]) for r in pairs})
    new_ids = sorted({int(r["new"]) for r in pairs})
    overlap = np.zeros((len(old_ids), len(new_ids)))
    oi, ni = {c: i for i, c in enumerate(old_ids)}, {c: i for i, c in enumerate(new_ids)}
    for r in pairs:
        overlap[oi[int(r["old"])], ni[int(r["new"])]] = r["count"]
    return drift_from_overlap(old_ids, new_ids, overlap)


# --------------------------------------------------------------------------- freshness
def bronze_landing(bronze: DataFrame, items: Optional[DataFrame] = None) -> DataFrame:
    """(item_id, updated_at, landed_at) of the bronze item rows (of ``items``'
    item_id only, when given): when each item version first landed (the
    modification time of its data file). ``bronze`` is the table as read."""
    # _metadata is a column of the scan itself: select it before any join.
    rows = bronze.select("item_id", "updated_at", F.col("_metadata.file_modification_time").alias("landed_at"))
    if items is not None:
        rows = rows.join(items.select("item_id").distinct(), "item_id", "left_semi")
    return rows.groupBy("item_id", "updated_at").agg(F.min("landed_at").alias("landed_at"))


def freshness_seconds(written: DataFrame, landing: DataFrame) -> DataFrame:
    """(item_id, seconds) of feature rows ``written`` (item_id, item_updated_at,
    valid_from): from the item version's bronze landing to the feature row."""
    return (written.join(landing, (written["item_id"] == landing["item_id"])
                         & (written["item_updated_at"] == landing["updated_at"]))
            .select(written["item_id"],
                    (written["valid_from"].cast("double") - landing["landed_at"].cast("double")).alias("seconds")))


def freshness_stats(seconds: DataFrame) -> dict:
    """fresh_rows and the p50/p95 of ``seconds`` (exact, linear interpolation)."""
    r = seconds.agg(F.count("*").alias("n"), F.percentile("seconds", list(FRESHNESS_QUANTILES)).alias("q")).first()
    q = r["q"] or [None, None]
    return {"fresh_rows": int(r["n"]), "freshness_p50_s": q[0], "freshness_p95_s": q[1]}


# --------------------------------------------------------------------------- one record per write
def health_row(spark: SparkSession, paths: TablePaths, version: int, source: str,
               batch_id: Optional[int] = None, freshness: bool = False) -> Optional[dict]:
    """The health record of item_visual at ``version`` (None: that version
    inserted no row, e.g. an upgrade)."""
    from delta.tables import DeltaTable
    iv_path = paths.item_visual_features
    snap = spark.read.format("delta").option("versionAsOf", int(version)).load(iv_path)
    commit = (DeltaTable.forPath(spark, iv_path).history().filter(F.col("version") == int(version))
              .select("timestamp").first())
    last = snap.agg(F.max("valid_from")).first()[0]
    if last is None:
        return None
    written = snap.filter(F.col("valid_from") == F.lit(last))
    # One pass: the versions of the rows this write inserted and of those it closed.
    touched = (snap.filter((F.col("valid_from") == F.lit(last)) | (F.col("valid_to") == F.lit(last)))
               .groupBy((F.col("valid_from") == F.lit(last)).alias("inserted"), "model_version", "centroid_version")
               .count().collect())
    ins = sorted((r for r in touched if r["inserted"]), key=lambda r: -r["count"])
    # The versions this write made (the most common, should a write ever mix them).
    mv, cv = ins[0]["model_version"], ins[0]["centroid_version"]
    current = snap.filter(F.col("valid_to").isNull() & (F.col("model_version") == mv)
                          & (F.col("centroid_version") == cv))
    row = {"item_visual_version": int(version), "written_at": commit["timestamp"], "source": source,
           "batch_id": None if batch_id is None else int(batch_id), "model_version": mv, "centroid_version": cv,
           "written_rows": sum(int(r["count"]) for r in ins), **item_visual_stats(current),
           "prev_model_version": None, "prev_centroid_version": None, "drift_items": None, "drift_psi": None,
           "drift_changed_share": None, "fresh_rows": None, "freshness_p50_s": None, "freshness_p95_s": None}
    # Rows this write closed that were of other versions: a version change -> drift.
    closed = sorted((r for r in touched if not r["inserted"]
                     and (r["model_version"], r["centroid_version"]) != (mv, cv)), key=lambda r: -r["count"])
    if closed:
        prev = closed[0]
        pmv, pcv = prev["model_version"], prev["centroid_version"]
        old_rows = snap.filter((F.col("model_version") == pmv) & (F.col("centroid_version") == pcv))
        latest_old = (old_rows.groupBy("item_id").agg(F.max_by("courier_cluster_id", "valid_from")
                                                      .alias("cluster_id")))
        row.update(prev_model_version=pmv, prev_centroid_version=pcv,
                   **cluster_drift(latest_old, current.select("item_id",
                                                              F.col("courier_cluster_id").alias("cluster_id"))))
    if freshness and table_exists(spark, paths.bronze_items):
        landing = bronze_landing(spark.read.format("delta").load(paths.bronze_items), written)
        row.update(freshness_stats(freshness_seconds(written, landing)))
    return row


def record_write(spark: SparkSession, paths: TablePaths, source: str, batch_id: Optional[int] = None,
                 freshness: bool = False) -> Optional[dict]:
    """Record the health of item_visual's newest version, once: nothing when
    that version already has its row (a re-run that committed nothing, a
    replayed micro-batch). Returns the row written, or None."""
    from delta.tables import DeltaTable
    path = paths.health_item_visual
    check_write(path, MERGE_UPSERT)
    if not table_exists(spark, paths.item_visual_features):
        return None
    version = table_version(spark, paths.item_visual_features)
    if table_exists(spark, path) and (spark.read.format("delta").load(path)
                                      .filter(F.col("item_visual_version") == version).limit(1).count()):
        return None
    row = health_row(spark, paths, version, source, batch_id, freshness)
    if row is None:
        return None
    src = spark.createDataFrame([tuple(row[f.name] for f in HEALTH_SCHEMA.fields)], HEALTH_SCHEMA)
    if not table_exists(spark, path):
        try:
            DeltaTable.createIfNotExists(spark).location(path).addColumns(HEALTH_SCHEMA).execute()
        except Exception:  # noqa: BLE001 - another writer created it first: merge into theirs
            if not table_exists(spark, path):
                raise
    # Insert-only MERGE on the version: two writers recording the same version add one row.
    (DeltaTable.forPath(spark, path).alias("t")
     .merge(src.alias("s"), "t.item_visual_version = s.item_visual_version")
     .whenNotMatchedInsertAll().execute())
    return row


def read_health(spark: SparkSession, paths: TablePaths):
    """The health records as a pandas frame, oldest version first."""
    return (spark.read.format("delta").load(paths.health_item_visual).orderBy("item_visual_version")
            .toPandas())


# --------------------------------------------------------------------------- thresholds
def breaches(health, cfg: HealthConfig) -> list[str]:
    """The thresholds of ``cfg`` the records (pandas, oldest first) break, one
    line each: the newest write's nulls, the newest version change's drift, the
    newest stream write's freshness p95."""
    out: list[str] = []
    if health is None or len(health) == 0:
        return out
    last = health.iloc[-1]
    if last["rows"]:
        share = max(last["null_cluster_id"], last["null_distance"]) / last["rows"]
        if share > cfg.max_null_share:
            out.append(f"health.max_null_share={cfg.max_null_share} breached: {share:.4f} of item_visual "
                       f"version {last['item_visual_version']}'s rows have a null cluster id or distance")
    drift = health[health["drift_psi"].notna()]
    if len(drift):
        d = drift.iloc[-1]
        what = (f"{d['model_version']}/{d['centroid_version']} vs {d['prev_model_version']}/"
                f"{d['prev_centroid_version']} over {int(d['drift_items'])} items")
        if d["drift_psi"] > cfg.max_psi:
            out.append(f"health.max_psi={cfg.max_psi} breached: cluster-share PSI {d['drift_psi']:.4f} of {what}")
        if d["drift_changed_share"] > cfg.max_changed_share:
            out.append(f"health.max_changed_share={cfg.max_changed_share} breached: "
                       f"{d['drift_changed_share']:.4f} of items changed cluster, {what}")
    fresh = health[health["freshness_p95_s"].notna()]
    if len(fresh):
        f = fresh.iloc[-1]
        if f["freshness_p95_s"] > cfg.max_freshness_p95_s:
            out.append(f"health.max_freshness_p95_s={cfg.max_freshness_p95_s} breached: freshness p95 "
                       f"{f['freshness_p95_s']:.1f}s in micro-batch {f['batch_id']:.0f} "
                       f"(item_visual version {f['item_visual_version']})")
    return out

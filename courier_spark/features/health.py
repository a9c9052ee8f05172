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
* incremental statistics (stream micro-batches): a ``stream`` record whose
  ``model_version``/``centroid_version`` are those of the previous record (and
  whose write closed no row of another version) is derived from that record
  plus the rows the item_visual versions since then inserted and closed, read
  from Delta's change data feed of those versions only (the commits' own
  change/added files, not the table): its cost follows the batch, not the
  table. rows, nulls, cluster sizes, n_clusters, cluster size min/median/max
  are exact; ``distance_mean`` is exact up to double rounding (the record
  keeps ``distance_sum``); the distance quantiles come from a sketch kept in
  the record (``distance_sketch``: counts per log-spaced bucket, relative
  accuracy ``SKETCH_ALPHA``), so an incremental p50/p90/p99 is within
  ``SKETCH_ALPHA`` (0.1 %) of the exact quantile: ``|estimate - exact| <=
  SKETCH_ALPHA * exact`` for non-negative distances (squared distances are),
  ``SKETCH_ALPHA * max(|x_k|, |x_k+1|)`` in general, x_k and x_k+1 being the
  two order statistics ``numpy.quantile`` interpolates between. The record
  says which it is: ``stats_mode`` (``full`` | ``incremental``) and
  ``distance_q_rel_error`` (0 for exact quantiles). The first record, a
  ``features`` write, a version change (drift), a previous record without the
  sketch (written by an older release, or with ``COURIER_HEALTH_INCREMENTAL=0``)
  and a table without the change data feed keep the full computation.
  ``COURIER_HEALTH_INCREMENTAL=0`` in the environment makes every record a
  full computation without the sketch (today's cost: the stream bench's
  "before");
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
import math
import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core.catalog import MERGE_UPSERT, check_write
from courier_spark.core.paths import TablePaths
from courier_spark.core.schema import HealthConfig
from courier_spark.core.tables import table_exists, table_version

PSI_EPS = 1e-4   # share given to a cluster one side does not have (PSI's log is otherwise infinite)
DISTANCE_QUANTILES = (0.5, 0.9, 0.99)
FRESHNESS_QUANTILES = (0.5, 0.95)
# The distance sketch (incremental quantiles): bucket i of a positive value v is
# ceil(log_gamma(v)), i.e. v in (gamma^(i-1), gamma^i], represented by
# 2 gamma^i / (gamma + 1): within SKETCH_ALPHA of every value of its bucket,
# relative (negative values mirrored, zero its own bucket: exact).
SKETCH_ALPHA = 1e-3
_GAMMA = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA)
_LN_GAMMA = math.log(_GAMMA)
# Columns added after the first release (nullable, at the end): an older
# _health table gets them in place (ALTER TABLE ADD COLUMNS), its rows null.
STATE_FIELDS = ("stats_mode", "distance_q_rel_error", "distance_sum", "distance_sketch")

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
    T.StructField("stats_mode", T.StringType(), True),            # full | incremental (null: older release)
    T.StructField("distance_q_rel_error", T.DoubleType(), True),  # bound on p50/p90/p99, relative (0: exact)
    T.StructField("distance_sum", T.DoubleType(), True),          # state: sum of the non-null distances
    T.StructField("distance_sketch", T.StringType(), True),       # state: JSON {"alpha", "counts": {bucket: rows}}
])


# --------------------------------------------------------------------------- distance sketch
def sketch_key(distance: Column) -> Column:
    """The sketch bucket of each distance (a string: ``p<i>``, ``n<i>``, ``z``;
    null for a null or NaN distance). Always computed by this Spark expression,
    so a row removed later falls into the bucket it was added to."""
    d = distance.cast("double")

    def idx(v: Column) -> Column:
        return F.ceil(F.log(v) / F.lit(_LN_GAMMA)).cast("string")
    return (F.when(d.isNull() | F.isnan(d), F.lit(None).cast("string"))
            .when(d > 0, F.concat(F.lit("p"), idx(d)))
            .when(d < 0, F.concat(F.lit("n"), idx(-d)))
            .otherwise(F.lit("z")))


def sketch_value(key: str) -> float:
    """The value representing bucket ``key``."""
    if key == "z":
        return 0.0
    v = 2.0 * _GAMMA ** int(key[1:]) / (_GAMMA + 1.0)
    return v if key[0] == "p" else -v


def sketch_quantiles(counts: dict, qs: Sequence[float] = DISTANCE_QUANTILES) -> list[Optional[float]]:
    """Quantiles of the values counted in ``counts`` ({bucket: rows}), linear
    interpolation between the order statistics like ``numpy.quantile``, each
    order statistic replaced by its bucket's value (see SKETCH_ALPHA)."""
    items = sorted((sketch_value(k), int(c)) for k, c in counts.items() if int(c) > 0)
    if not items:
        return [None] * len(qs)
    vals = np.array([v for v, _ in items])
    cum = np.cumsum([c for _, c in items])
    n = int(cum[-1])
    out = []
    for p in qs:
        h = (n - 1) * p
        k = int(math.floor(h))
        lo = vals[np.searchsorted(cum, k, side="right")]
        hi = vals[np.searchsorted(cum, min(k + 1, n - 1), side="right")]
        out.append(float(lo + (h - k) * (hi - lo)))
    return out


def _sketch_json(counts: dict) -> str:
    return json.dumps({"alpha": SKETCH_ALPHA, "counts": {k: int(c) for k, c in sorted(counts.items()) if c}},
                      separators=(",", ":"))


# --------------------------------------------------------------------------- statistics
def item_visual_stats(rows: DataFrame, with_state: bool = False) -> dict:
    """rows, nulls, cluster sizes and distance quantiles of ``rows``
    (item_visual rows: courier_cluster_id, distance, item_updated_at), exact;
    with ``with_state``, also the distance sketch the next incremental record
    starts from (one more pass)."""
    qs = list(DISTANCE_QUANTILES)
    agg = rows.agg(F.count("*").alias("rows"), F.sum(F.col("distance").cast("double")).alias("distance_sum"),
                   *[F.sum(F.col(c).isNull().cast("long")).alias(f"null_{n}")
                     for c, n in (("courier_cluster_id", "cluster_id"), ("distance", "distance"),
                                  ("item_updated_at", "item_updated_at"))],
                   F.mean("distance").alias("distance_mean"),
                   F.percentile("distance", qs).alias("q")).first()
    sizes = {int(r[0]): int(r[1]) for r in
             rows.filter(F.col("courier_cluster_id").isNotNull()).groupBy("courier_cluster_id").count().collect()}
    counts = np.array(sorted(sizes.values()), dtype=np.int64)
    q = agg["q"] or [None] * len(qs)
    sketch = None
    if with_state:
        buckets = {r["k"]: int(r["count"]) for r in
                   rows.select(sketch_key(F.col("distance")).alias("k")).filter(F.col("k").isNotNull())
                   .groupBy("k").count().collect()}
        # NaN distances have no bucket: no sketch, so the next record is a full one too.
        if sum(buckets.values()) == int(agg["rows"]) - int(agg["null_distance"] or 0):
            sketch = _sketch_json(buckets)
    return {"stats_mode": "full", "distance_q_rel_error": 0.0,
            "distance_sum": float(agg["distance_sum"] or 0.0),
            "distance_sketch": sketch, "rows": int(agg["rows"]),
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
def _full_row(spark: SparkSession, paths: TablePaths, version: int, source: str, batch_id: Optional[int],
              with_state: bool) -> Optional[tuple[dict, DataFrame]]:
    """The record of ``version`` computed from item_visual as of that version
    (time travel): statistics over every current row of its versions, drift
    on a version change. With the rows it inserted (freshness), or None."""
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
           "written_rows": sum(int(r["count"]) for r in ins), **item_visual_stats(current, with_state),
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
    return row, written


def item_visual_changes(spark: SparkSession, path: str, start: int, end: int) -> DataFrame:
    """The change data feed of item_visual versions ``start``..``end``: only
    the files those commits wrote (their change files, or their added files
    for an insert-only commit)."""
    return (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", int(start))
            .option("endingVersion", int(end)).load(path))


_ADDS = ("insert", "update_postimage")        # a row image that is there after the change
_REMOVES = ("update_preimage", "delete")      # a row image that is gone after it


def _incremental_row(spark: SparkSession, paths: TablePaths, version: int, source: str,
                     batch_id: Optional[int], prev: dict) -> Optional[tuple[dict, DataFrame, object]]:
    """The record of ``version`` derived from ``prev`` (the newest earlier
    record, with its state) and the changes of the versions after it: with the
    rows ``version`` inserted and their earliest ``item_updated_at``. None when
    it cannot be derived (no state, no change data feed, no row inserted, a
    version change): the caller computes it in full."""
    pv = prev.get("item_visual_version")
    if prev.get("distance_sketch") is None or prev.get("distance_sum") is None or pv is None or pv >= version:
        return None
    state = json.loads(prev["distance_sketch"])
    if state.get("alpha") != SKETCH_ALPHA:
        return None
    mv, cv = prev["model_version"], prev["centroid_version"]
    cur = F.col("valid_to").isNull()
    try:
        changes = item_visual_changes(spark, paths.item_visual_features, int(pv) + 1, int(version))
        # One small aggregate over the changed rows only.
        groups = (changes.groupBy("_commit_version", "_change_type", cur.alias("cur"), "model_version",
                                  "centroid_version", "courier_cluster_id", sketch_key(F.col("distance")).alias("k"),
                                  F.col("distance").isNull().alias("nd"), F.col("item_updated_at").isNull().alias("nu"))
                  .agg(F.count("*").alias("n"), F.sum(F.col("distance").cast("double")).alias("s"),
                       F.max("_commit_timestamp").alias("ts"), F.min("item_updated_at").alias("u0"))
                  .collect())
    except Exception:  # noqa: BLE001 - no change data feed for these versions (e.g. switched off): full record
        return None
    if any(g["_change_type"] not in _ADDS + _REMOVES for g in groups):
        return None
    mine = [g for g in groups if g["_commit_version"] == version]
    inserted = Counter()
    for g in mine:
        if g["_change_type"] == "insert":
            inserted[(g["model_version"], g["centroid_version"])] += int(g["n"])
    if not inserted or inserted.most_common(1)[0][0] != (mv, cv):
        return None
    # A row of another version that this write changed (closed): a version change, drift -> full record.
    if any((g["model_version"], g["centroid_version"]) != (mv, cv) and g["_change_type"] != "insert" for g in mine):
        return None
    rows, nc, nd, nu, dsum = (int(prev["rows"]), int(prev["null_cluster_id"]), int(prev["null_distance"]),
                              int(prev["null_item_updated_at"]), float(prev["distance_sum"]))
    sizes = Counter({int(k): int(v) for k, v in json.loads(prev["cluster_sizes"]).items()})
    buckets = Counter({k: int(v) for k, v in state["counts"].items()})
    for g in groups:
        if (g["model_version"], g["centroid_version"]) != (mv, cv) or not g["cur"]:
            continue   # only current rows of these versions count (a closed row's image has valid_to set)
        sign = 1 if g["_change_type"] in _ADDS else -1
        w = sign * int(g["n"])
        rows += w
        nc += w if g["courier_cluster_id"] is None else 0
        nd += w if g["nd"] else 0
        nu += w if g["nu"] else 0
        if g["courier_cluster_id"] is not None:
            sizes[int(g["courier_cluster_id"])] += w
        if g["k"] is not None:
            buckets[g["k"]] += w
            dsum += sign * float(g["s"])   # s sums the group's n rows already
        elif not g["nd"]:
            return None   # a NaN distance: no bucket
    if min([rows, nc, nd, nu, *sizes.values(), *buckets.values()]) < 0:
        return None   # the state does not match the table (should not happen): recompute
    sizes = {k: v for k, v in sizes.items() if v}
    buckets = {k: v for k, v in buckets.items() if v}
    n_dist = rows - nd
    if sum(buckets.values()) != n_dist:
        return None
    counts = np.array(sorted(sizes.values()), dtype=np.int64)
    q = sketch_quantiles(buckets) if n_dist else [None] * len(DISTANCE_QUANTILES)
    row = {"item_visual_version": int(version), "written_at": max(g["ts"] for g in mine), "source": source,
           "batch_id": None if batch_id is None else int(batch_id), "model_version": mv, "centroid_version": cv,
           "rows": rows, "written_rows": sum(inserted.values()), "null_cluster_id": nc, "null_distance": nd,
           "null_item_updated_at": nu, "n_clusters": len(sizes),
           "cluster_size_min": int(counts.min()) if len(counts) else None,
           "cluster_size_median": float(np.median(counts)) if len(counts) else None,
           "cluster_size_max": int(counts.max()) if len(counts) else None,
           "cluster_sizes": json.dumps({str(k): v for k, v in sorted(sizes.items())}),
           "distance_mean": dsum / n_dist if n_dist else None,
           **{f"distance_p{round(p * 100)}": v for p, v in zip(DISTANCE_QUANTILES, q)},
           "prev_model_version": None, "prev_centroid_version": None, "drift_items": None, "drift_psi": None,
           "drift_changed_share": None, "fresh_rows": None, "freshness_p50_s": None, "freshness_p95_s": None,
           "stats_mode": "incremental", "distance_q_rel_error": SKETCH_ALPHA,
           "distance_sum": dsum if n_dist else 0.0, "distance_sketch": _sketch_json(buckets)}
    written = (changes.filter((F.col("_commit_version") == int(version)) & (F.col("_change_type") == "insert"))
               .select("item_id", "item_updated_at", "valid_from"))
    u0 = [g["u0"] for g in mine if g["_change_type"] == "insert" and g["u0"] is not None]
    return row, written, (min(u0) if u0 else None)


def health_row(spark: SparkSession, paths: TablePaths, version: int, source: str,
               batch_id: Optional[int] = None, freshness: bool = False, *, prev: Optional[dict] = None,
               incremental: bool = False) -> Optional[dict]:
    """The health record of item_visual at ``version`` (None: that version
    inserted no row, e.g. an upgrade). With ``incremental``: a ``stream``
    record derived from ``prev`` where it can be (see the module docstring),
    otherwise computed in full with the state the next one starts from;
    without: computed in full, no state (the cost of the first release)."""
    row = written = since = None
    if incremental and prev is not None and source == "stream":
        got = _incremental_row(spark, paths, version, source, batch_id, prev)
        if got is not None:
            row, written, since = got
    if row is None:
        got = _full_row(spark, paths, version, source, batch_id, with_state=incremental)
        if got is None:
            return None
        row, written = got
    if freshness and table_exists(spark, paths.bronze_items):
        bronze = spark.read.format("delta").load(paths.bronze_items)
        if since is not None:   # only bronze files that can hold these item versions (file statistics skip the rest)
            bronze = bronze.filter(F.col("updated_at") >= F.lit(since))
        row.update(freshness_stats(freshness_seconds(written, bronze_landing(bronze, written))))
    return row


def incremental_default() -> bool:
    """Whether records are incremental where they can be: yes, unless
    ``COURIER_HEALTH_INCREMENTAL=0`` (benchmarks: today's full cost)."""
    return os.environ.get("COURIER_HEALTH_INCREMENTAL", "1").strip() != "0"


def _previous_record(spark: SparkSession, path: str, version: int) -> Optional[dict]:
    """The newest record before ``version`` (normally ``version - 1``, which
    the files' statistics find without reading the others)."""
    h = spark.read.format("delta").load(path)
    if "distance_sketch" not in h.columns:
        return None
    got = (h.filter(F.col("item_visual_version") == int(version) - 1).limit(1).collect()
           or h.filter(F.col("item_visual_version") < int(version)).orderBy(F.desc("item_visual_version"))
           .limit(1).collect())
    return got[0].asDict() if got else None


def _upgrade_health_table(spark: SparkSession, path: str) -> None:
    """Add the columns of HEALTH_SCHEMA an older release's table lacks, in
    place (one metadata commit; its rows read them as null)."""
    have = set(spark.read.format("delta").load(path).columns)
    missing = [f for f in HEALTH_SCHEMA.fields if f.name not in have]
    if not missing:
        return
    cols = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
    try:
        spark.sql(f"ALTER TABLE delta.`{path.replace('`', '``')}` ADD COLUMNS ({cols})")
    except Exception:  # noqa: BLE001 - another writer added them first
        if set(f.name for f in missing) - set(spark.read.format("delta").load(path).columns):
            raise


def record_write(spark: SparkSession, paths: TablePaths, source: str, batch_id: Optional[int] = None,
                 freshness: bool = False, incremental: Optional[bool] = None) -> Optional[dict]:
    """Record the health of item_visual's newest version, once: nothing when
    that version already has its row (a re-run that committed nothing, a
    replayed micro-batch). Returns the row written, or None. ``incremental``
    (default: ``incremental_default()``): see ``health_row``."""
    from delta.tables import DeltaTable
    path = paths.health_item_visual
    check_write(path, MERGE_UPSERT)
    if incremental is None:
        incremental = incremental_default()
    if not table_exists(spark, paths.item_visual_features):
        return None
    version = table_version(spark, paths.item_visual_features)
    have = table_exists(spark, path)
    if have and (spark.read.format("delta").load(path)
                 .filter(F.col("item_visual_version") == version).limit(1).count()):
        return None
    prev = _previous_record(spark, path, version) if have and incremental and source == "stream" else None
    row = health_row(spark, paths, version, source, batch_id, freshness, prev=prev, incremental=incremental)
    if row is None:
        return None
    src = spark.createDataFrame([tuple(row.get(f.name) for f in HEALTH_SCHEMA.fields)], HEALTH_SCHEMA)
    if not have and not table_exists(spark, path):
        try:
            DeltaTable.createIfNotExists(spark).location(path).addColumns(HEALTH_SCHEMA).execute()
        except Exception:  # noqa: BLE001 - another writer created it first: merge into theirs
            if not table_exists(spark, path):
                raise
    _upgrade_health_table(spark, path)
    # Insert-only MERGE on the version: two writers recording the same version add one row. The
    # literal lets Delta's file statistics skip the other records' files (one per micro-batch).
    (DeltaTable.forPath(spark, path).alias("t")
     .merge(src.alias("s"), f"t.item_visual_version = s.item_visual_version AND t.item_visual_version = {int(version)}")
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

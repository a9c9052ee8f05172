"""Incremental item features: one micro-batch of new/changed ``bronze/items``
rows -> ``silver/items``, ``quarantine/items``, ``gold/item_embeddings`` and
``feature_store/item_visual``, with the serving model and centroids.

``run_items_stream`` runs the Structured Streaming query (``courier stream``);
``process_item_batch`` is the body of its ``foreachBatch``. Exactly once across restarts: Spark
replays a micro-batch whose commit did not land (a killed driver), so every
write here is idempotent, whatever point the previous attempt reached:

* silver/items: MERGE that only takes a strictly newer ``updated_at``;
* quarantine/items and the batch ledger: appends tagged with Delta's
  ``txnAppId`` / ``txnVersion`` (a replayed append of a batch is skipped);
* embeddings: only items whose current feature row is not already of this
  model, centroid and item version, so a replay re-embeds only what the
  killed attempt did not finish; MERGE keyed by (item_id, model_version);
* item_visual: ``merge_history``, which writes nothing for unchanged values.

Classification of a batch's clean rows against silver/items: not there ->
``new``; older there -> ``changed`` (re-embedded); same ``updated_at`` there ->
``current`` (a re-delivery or a replay: nothing to quarantine, features
completed if missing); newer there -> stale, quarantined as
``duplicate_item_id`` like the batch ``validate`` does.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core import fs
from courier_spark.core.catalog import APPEND_ONCE, MERGE_NEWER, MERGE_UPSERT, check_write
from courier_spark.core.errors import StreamError
from courier_spark.features.health import record_write
from courier_spark.core.logs import say, step
from courier_spark.serving.online import RedisSettings, connect, materialise_item_visual
from courier_spark.core.paths import TablePaths
from courier_spark.core.schema import CourierConfig
from courier_spark.serving.versions import ServingVersions, load_serving, requested_versions
from courier_spark.core.tables import table_exists

LEDGER_SCHEMA = T.StructType([
    T.StructField("batch_id", T.LongType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("centroid_version", T.StringType(), False),
    T.StructField("counts", T.StringType(), False),   # JSON, see BatchCounts
])


@dataclass
class BatchCounts:
    rows_in: int = 0
    new: int = 0
    changed: int = 0
    current: int = 0
    quarantined: int = 0
    embedded: int = 0
    re_embedded_existing: int = 0   # embedded items that silver already had (changed images)
    assigned: int = 0
    feature_rows: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)   # wall time per phase (where a micro-batch spends it)



class _Laps:
    """Adds the time since the previous call to ``out[phase]``."""

    def __init__(self, out: dict) -> None:
        self.out, self.t = out, time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.out[phase] = round(self.out.get(phase, 0.0) + now - self.t, 3)
        self.t = now


def txn_app_id(paths: TablePaths) -> str:
    """A stable writer id for Delta's idempotent appends (one per dataset root)."""
    return "courier-stream-items-" + hashlib.sha1(paths.root.encode()).hexdigest()[:16]


# Test hook: SIGKILL this process at a named point of a micro-batch (a real
# crash, to prove that a replay loses and duplicates nothing).
def _failpoint(cfg: CourierConfig, name: str, batch_id: int | None = None) -> None:
    """``stream.failpoint``: ``<name>`` or ``<name>@<batch_id>`` kills this process there."""
    want = cfg.stream.failpoint
    if want and want in (name, f"{name}@{batch_id}"):
        say("stream", f"failpoint {want}: killing this process (SIGKILL)")
        os.kill(os.getpid(), signal.SIGKILL)


def _append_once(df: DataFrame, path: str, app_id: str, batch_id: int) -> None:
    check_write(path, APPEND_ONCE)
    (df.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", int(batch_id))
     .save(path))


def _merge_silver(spark: SparkSession, fresh: DataFrame, path: str) -> None:
    from delta.tables import DeltaTable
    check_write(path, MERGE_NEWER)
    if not table_exists(spark, path):
        fresh.write.format("delta").save(path)
        return
    (DeltaTable.forPath(spark, path).alias("t").merge(fresh.alias("s"), "t.item_id = s.item_id")
     .whenMatchedUpdateAll(condition="s.updated_at > t.updated_at")
     .whenNotMatchedInsertAll().execute())


def _merge_embeddings(spark: SparkSession, emb: DataFrame, path: str) -> None:
    from delta.tables import DeltaTable
    check_write(path, MERGE_UPSERT)
    if not table_exists(spark, path):
        emb.write.format("delta").partitionBy("model_version").save(path)
        return
    (DeltaTable.forPath(spark, path).alias("t")
     .merge(emb.alias("s"), "t.model_version = s.model_version AND t.item_id = s.item_id")
     .whenMatchedUpdate(set={"embedding": "s.embedding"}).whenNotMatchedInsertAll().execute())


def _features_for(spark: SparkSession, items: DataFrame, serving: ServingVersions, art, centroids,
                  paths: TablePaths, cfg: CourierConfig, counts: BatchCounts, *,
                  reuse_embeddings: bool = False, batch_id: int | None = None) -> None:
    """Give ``items`` (item_id, image, updated_at, _existing) that lack a current feature
    row of this model, centroid and item version one: embed (or, with
    ``reuse_embeddings``, take the serving model's stored embedding when there
    is one), assign, merge."""
    from pyspark import StorageLevel

    from courier_spark.features.embed import embed_items
    from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, ITEM_VISUAL_KEYS, merge_history
    from courier_spark.features.assignment import assign_cluster_ids, item_visual_rows
    from courier_spark.serving.versions import lacking_features

    todo = lacking_features(spark, items.filter(F.col("image").isNotNull()), paths.item_visual_features,
                            serving, "updated_at")
    # Checkpointed rather than cached (here and below): Delta re-computes cached
    # plans that read a table it then writes (embeddings, item_visual), which
    # would change what these frames hold half-way through.
    lap = _Laps(counts.seconds)
    todo = todo.localCheckpoint()
    try:
        n_todo = todo.count()
        lap("find_todo")
        if n_todo == 0:
            return
        stored = None
        if reuse_embeddings and table_exists(spark, paths.item_embeddings):
            stored = (spark.read.format("delta").load(paths.item_embeddings)
                      .filter(F.col("model_version") == serving.model_version)
                      .join(todo.select("item_id"), "item_id").select("item_id", "embedding")).localCheckpoint()
        to_embed = todo if stored is None else todo.join(stored.select("item_id"), "item_id", "left_anti")
        emb = embed_items(to_embed, art, cfg.embed.batch_size, torch_threads=cfg.embed.torch_threads,
                          device=cfg.embed.device, min_partitions=cfg.embed.min_partitions).localCheckpoint()
        lap("embed")
        try:
            n_emb = emb.count()
            counts.embedded += n_emb
            counts.re_embedded_existing += (emb.join(todo.filter("_existing").select("item_id"), "item_id").count())
            if n_emb:
                _merge_embeddings(spark, emb, paths.item_embeddings)
            lap("merge_embeddings")
            _failpoint(cfg, "after_embeddings", batch_id)
            vectors = emb.select("item_id", "embedding")
            if stored is not None:
                vectors = vectors.unionByName(stored)
            versions = todo.select("item_id", F.col("updated_at").alias("item_updated_at"))
            rows = item_visual_rows(assign_cluster_ids(vectors, centroids, spark,
                                                       faiss_threads=cfg.features.faiss_threads),
                                    serving.model_version, serving.centroid_version, versions
                                    ).persist(StorageLevel.MEMORY_AND_DISK)
            try:
                counts.assigned += rows.count()
                lap("assign")
                m = merge_history(spark, rows, paths.item_visual_features, ITEM_VISUAL_KEYS, ITEM_VISUAL_COMMENTS)
                counts.feature_rows = {k: m[k] for k in ("inserted", "closed", "new_keys")}
                lap("merge_item_visual")
            finally:
                rows.unpersist()
        finally:
            emb.unpersist()
    finally:
        todo.unpersist()


def catch_up(spark: SparkSession, paths: TablePaths, cfg: CourierConfig, serving: ServingVersions, art, centroids
             ) -> BatchCounts:
    """Give every silver item a current feature row of the serving versions:
    after a new centroid version (or model) every item is re-assigned once;
    items already current are left alone (nothing is re-embedded for them)."""
    counts = BatchCounts()
    if not table_exists(spark, paths.silver_items):
        return counts
    silver = (spark.read.format("delta").load(paths.silver_items)
              .select("item_id", "image", "updated_at", F.lit(True).alias("_existing")))
    _features_for(spark, silver, serving, art, centroids, paths, cfg, counts, reuse_embeddings=True)
    record_write(spark, paths, "stream")   # a new serving version's statistics and drift (once per version)
    return counts


def process_item_batch(spark: SparkSession, batch: DataFrame, batch_id: int, paths: TablePaths,
                       cfg: CourierConfig, serving: ServingVersions, art, centroids, app_id: str) -> BatchCounts:
    """One micro-batch of bronze/items rows (see the module docstring)."""
    from pyspark import StorageLevel

    from courier_spark.data.validate import validate_items

    counts = BatchCounts()
    batch = batch.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts.rows_in = batch.count()
        if counts.rows_in == 0:
            return counts
        lap = _Laps(counts.seconds)
        clean, quarantine = validate_items(batch, cfg.validate)
        if table_exists(spark, paths.silver_items):
            base = spark.read.format("delta").load(paths.silver_items).select(
                "item_id", F.col("updated_at").alias("_have"))
            clean = clean.join(base, "item_id", "left")
        else:
            clean = clean.withColumn("_have", F.lit(None).cast("timestamp"))
        kind = (F.when(F.col("_have").isNull(), "new").when(F.col("_have") < F.col("updated_at"), "changed")
                .when(F.col("_have") == F.col("updated_at"), "current").otherwise("stale"))
        # Checkpointed, not cached: Delta re-computes cached plans that read a
        # table it writes, so a cached classification would be redone against
        # the silver rows this batch merges below (new items turning "current").
        clean = clean.withColumn("_kind", kind).drop("_have").localCheckpoint()
        try:
            by_kind = {r["_kind"]: int(r["count"]) for r in clean.groupBy("_kind").count().collect()}
            lap("validate_classify")
            counts.new, counts.changed, counts.current = (by_kind.get(k, 0) for k in ("new", "changed", "current"))
            stale = (clean.filter(F.col("_kind") == "stale").drop("_kind")
                     .withColumn("reason", F.lit("duplicate_item_id")).withColumn("row_dropped", F.lit(True)))
            quarantine = quarantine.unionByName(stale.select(*quarantine.columns))
            fresh = clean.filter(F.col("_kind").isin("new", "changed"))
            _merge_silver(spark, fresh.drop("_kind"), paths.silver_items)
            lap("merge_silver")
            counts.quarantined = quarantine.count()
            if counts.quarantined:
                _append_once(quarantine, paths.quarantine_items, app_id, batch_id)
            lap("quarantine")
            _failpoint(cfg, "after_silver", batch_id)
            pending = (clean.filter(F.col("_kind") != "stale")
                       .select("item_id", "image", "updated_at", (F.col("_kind") == "changed").alias("_existing")))
            _features_for(spark, pending, serving, art, centroids, paths, cfg, counts, batch_id=batch_id)
            # Statistics and freshness of the item_visual version this batch wrote (a replay whose
            # version is already recorded, or a batch that wrote nothing, records nothing).
            record_write(spark, paths, "stream", batch_id, freshness=True)
            lap("health")
        finally:
            clean.unpersist()
        _failpoint(cfg, "after_features", batch_id)
    finally:
        batch.unpersist()
    return counts


def record_batch(spark: SparkSession, paths: TablePaths, batch_id: int, serving: ServingVersions, counts: BatchCounts,
                 app_id: str) -> None:
    """The batch's ledger row (once per batch id, whatever the replays)."""
    import dataclasses
    row = (int(batch_id), dt.datetime.now(dt.timezone.utc), serving.model_version, serving.centroid_version,
           json.dumps(dataclasses.asdict(counts), sort_keys=True))
    _append_once(spark.createDataFrame([row], LEDGER_SCHEMA), paths.stream_ledger, app_id, batch_id)


def read_ledger(spark: SparkSession, paths: TablePaths) -> list[dict]:
    """Finished micro-batches, oldest first, counts decoded."""
    if not table_exists(spark, paths.stream_ledger):
        return []
    rows = spark.read.format("delta").load(paths.stream_ledger).orderBy("batch_id").collect()
    return [{"batch_id": r["batch_id"], "finished_at": r["finished_at"], "model_version": r["model_version"],
             "centroid_version": r["centroid_version"], **json.loads(r["counts"])} for r in rows]


@dataclass
class StreamRun:
    """What one ``run_items_stream`` did: the serving versions at its end, the
    catch-up's counts, the ledger rows of the micro-batches it finished, the
    query's seconds and the online store's counts per batch."""
    serving: ServingVersions
    catch_up: BatchCounts
    batches: list[dict]
    seconds: float
    online: list


def run_items_stream(spark: SparkSession, paths: TablePaths, cfg: CourierConfig) -> StreamRun:
    """The Structured Streaming query over ``bronze/items``: a catch-up first
    (every silver item gets features of the serving versions), then
    ``process_item_batch`` per micro-batch, re-reading the serving versions at
    every batch (a new model or centroid version re-assigns every item once);
    with ``stream.online`` each batch's changed rows go to Redis too. Runs
    until the trigger's end (``available_now``) or ``stream.run_seconds``."""
    scfg = cfg.stream

    def resolve_serving():   # embed.method's versions that serve now (re-read every micro-batch)
        return load_serving(spark, paths, *requested_versions(cfg))

    serving, art, centroids = resolve_serving()
    art.load_encoder()  # a missing or corrupt model is one clear error now, not failed micro-batches
    online = RedisSettings.from_config(cfg.online) if scfg.online else None
    if online:
        connect(online)  # wrong password or host: fail before the query starts
    app_id = txn_app_id(paths)
    state = {"serving": serving}
    with step("stream", f"catching up: every silver item gets features of {serving.model_version}/"
                        f"{serving.centroid_version}"):
        first = catch_up(spark, paths, cfg, serving, art, centroids)
    say("stream", f"catch-up embedded {first.embedded}, assigned {first.assigned} item(s)")
    online_counts: list = []

    def on_batch(batch, batch_id: int) -> None:
        t0 = time.perf_counter()
        s, a, c = resolve_serving()
        serving_s = time.perf_counter() - t0
        if s != state["serving"]:
            # A new model or centroid version takes effect here: every item once.
            say("stream", f"serving versions changed to {s.model_version}/{s.centroid_version}: re-assigning")
            a.load_encoder()
            catch_up(spark, paths, cfg, s, a, c)
            state["serving"] = s
        counts = process_item_batch(spark, batch, batch_id, paths, cfg, s, a, c, app_id)
        counts.seconds["resolve_serving"] = round(serving_s, 3)
        if online and counts.rows_in:
            online_counts.append(materialise_item_visual(spark, paths.item_visual_features, online,
                                                         batch_size=cfg.online.batch_size))
        record_batch(spark, paths, batch_id, s, counts, app_id)
        say("stream", f"batch {batch_id}: {counts.rows_in} row(s) in: new {counts.new}, changed {counts.changed}, "
                      f"quarantined {counts.quarantined}; embedded {counts.embedded}, assigned {counts.assigned} "
                      f"({time.perf_counter() - t0:.1f}s)")

    reader = (spark.readStream.format("delta").option("maxFilesPerTrigger", scfg.max_files_per_trigger)
              # a rewrite of bronze (`generate` again) is not new items: the batch stages own that case
              .option("skipChangeCommits", "true"))
    fresh_checkpoint = not fs.exists(fs.join(paths.stream_checkpoint, "offsets"))
    if fresh_checkpoint:
        # A new query starts after what `validate` already took into silver.
        reader = reader.option("startingVersion", "latest")
    writer = (reader.load(paths.bronze_items).writeStream.foreachBatch(on_batch)
              .option("checkpointLocation", paths.stream_checkpoint).queryName("courier_stream_items"))
    writer = (writer.trigger(availableNow=True) if scfg.trigger == "available_now"
              else writer.trigger(processingTime=f"{scfg.interval_seconds} seconds"))
    before = {b["batch_id"] for b in read_ledger(spark, paths)}
    t0 = time.perf_counter()
    say("stream", f"{scfg.trigger} query on bronze/items "
                  f"({'new checkpoint, from the latest version' if fresh_checkpoint else 'resuming its checkpoint'})")
    query = writer.start()
    try:
        if scfg.trigger == "processing_time" and scfg.run_seconds:
            query.awaitTermination(scfg.run_seconds)
            query.stop()
        else:
            query.awaitTermination()
    except Exception as e:  # noqa: BLE001 - the query's error, as one line
        raise StreamError(f"streaming query failed: {str(e).splitlines()[0][:500]}") from e
    finally:
        if query.isActive:
            query.stop()
    secs = time.perf_counter() - t0
    batches = [b for b in read_ledger(spark, paths) if b["batch_id"] not in before]
    return StreamRun(state["serving"], first, batches, secs, online_counts)

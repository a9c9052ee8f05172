"""Online store, write side: the current ``feature_store/item_visual`` rows
copied into Redis (Spark), for serving systems that need the cluster-ID
features at request time.

Layout: one Redis hash per item, ``<prefix>item_visual:<item_id>``, with the
feature values and their versions (``courier_cluster_id``, ``distance``,
``model_version``, ``centroid_version``, ``item_updated_at``, ``valid_from``);
a missing value is a missing field, never an empty string. The hash
``<prefix>item_visual:_meta`` records which table and which Delta version the
store holds. The layout, the encoding and the read side (``lookup``) live in
``courier_spark.serving.client``, which serving imports without Spark; they
are re-exported here.

Incremental: the next materialisation reads Delta's change data feed of
item_visual from the recorded version to the newest, and rewrites only the
items that changed (a key whose item lost its current row is deleted). A store
without the meta hash (new, flushed, or another table) gets a full load,
which also removes keys of items the table no longer has. Each chunk of keys
is one MULTI/EXEC transaction, so a reader never sees half a hash; the meta
hash moves last, so a crash mid-way means the next run redoes the rest.

The password is read from the environment variable named by
``online.password_env``; it is never part of a log line, a summary, an error
message or ``repr`` of the settings.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from typing import Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from courier_spark.features.feature_tables import current_rows
from courier_spark.core.logs import say
# The key layout and encoding live in the serving client (no Spark there); re-exported here.
from courier_spark.serving.client import VALUE_FIELDS, RedisSettings, connect, decode, encode, lookup  # noqa: F401


def _write_rows(settings: RedisSettings, rows: Iterator, batch_size: int) -> tuple[int, int]:
    """(written, deleted): rows are (item_id, fields-or-None); one MULTI/EXEC per chunk."""
    client = connect(settings)
    written = deleted = 0
    chunk: list = []

    def flush() -> None:
        pipe = client.pipeline(transaction=True)
        for item_id, fields in chunk:
            key = settings.item_key(item_id)
            pipe.delete(key)
            if fields:
                pipe.hset(key, mapping=fields)
        pipe.execute()
        chunk.clear()

    for item_id, fields in rows:
        chunk.append((item_id, fields))
        written += bool(fields)
        deleted += not fields
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    return written, deleted


def _partition_writer(settings: RedisSettings, batch_size: int, written_acc, deleted_acc):
    def write(rows) -> None:
        w, d = _write_rows(settings, ((r["item_id"], encode(r.asDict()) if r["_present"] else None) for r in rows),
                           batch_size)
        written_acc.add(w)
        deleted_acc.add(d)
    return write


def materialise_item_visual(spark: SparkSession, path: str, settings: RedisSettings, *,
                            batch_size: int = 1000, full: bool = False) -> dict:
    """Copy item_visual's current rows that changed since the last run into
    Redis (all of them on a first run or with ``full``). Written by the
    executors, ``batch_size`` keys per transaction. Returns the counts."""
    from courier_spark.core.tables import read_table, table_version

    t0 = time.perf_counter()
    client = connect(settings)
    meta = client.hgetall(settings.meta_key)
    latest = table_version(spark, path)
    last = int(meta["version"]) if meta.get("table") == path and "version" in meta and not full else None
    base = {"store": settings.describe(), "table": path, "to_version": latest}
    if last is not None and last >= latest:
        return {**base, "mode": "up_to_date", "from_version": last, "written": 0, "deleted": 0,
                "seconds": round(time.perf_counter() - t0, 3)}
    snapshot = read_table(spark, path, version=latest)
    cur = current_rows(snapshot).select("item_id", *VALUE_FIELDS).withColumn("_present", F.lit(True))
    mode = "incremental"
    if last is None:
        mode, todo = "full", cur
    else:
        try:
            changed = (spark.read.format("delta").option("readChangeFeed", "true")
                       .option("startingVersion", last + 1).option("endingVersion", latest).load(path)
                       .select("item_id").distinct())
            changed.limit(1).count()  # resolve now: history cleaned up -> full load below
        except Exception as e:  # noqa: BLE001 - change feed gone (vacuum, CDF off): fall back to a full load
            say("online", f"change data feed {last + 1}..{latest} unreadable ({type(e).__name__}); full load")
            mode, todo, changed = "full", cur, None
        if changed is not None:
            todo = (changed.join(cur, "item_id", "left")
                    .withColumn("_present", F.coalesce("_present", F.lit(False))))
    sc = spark.sparkContext
    written_acc, deleted_acc = sc.accumulator(0), sc.accumulator(0)
    todo.foreachPartition(_partition_writer(settings, batch_size, written_acc, deleted_acc))
    stale = _drop_unknown_keys(client, settings, cur) if mode == "full" else 0
    client.hset(settings.meta_key, mapping={"table": path, "version": str(latest),
                                            "materialised_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    secs = time.perf_counter() - t0
    out = {**base, "mode": mode, "from_version": last, "written": int(written_acc.value),
           "deleted": int(deleted_acc.value) + stale, "seconds": round(secs, 3),
           "rows_per_second": round(written_acc.value / secs, 1) if secs > 0 else None}
    return out


def _drop_unknown_keys(client, settings: RedisSettings, cur: DataFrame) -> int:
    """After a full load: delete item keys (under this prefix) of items without a current row."""
    have = {int(r["item_id"]) for r in cur.select("item_id").collect()}
    stale = []
    prefix = f"{settings.key_prefix}item_visual:"
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"  # the prefix literally, then anything
    for key in client.scan_iter(match=pattern, count=1000):
        tail = key[len(prefix):]
        if tail.isdigit() and int(tail) not in have:
            stale.append(key)
    for lo in range(0, len(stale), 1000):
        client.delete(*stale[lo:lo + 1000])
    return len(stale)

"""`courier stream`: new/changed bronze/items rows -> silver/items, quarantine/items,
gold/item_embeddings, feature_store/item_visual (Structured Streaming, foreachBatch)."""
from __future__ import annotations

import dataclasses
import time

from .. import fs
from ..errors import StreamError
from ..logs import say, step
from ..online import RedisSettings, connect, materialise_item_visual
from ..serving import load_serving, requested_versions
from ..stream import catch_up, process_item_batch, read_ledger, record_batch, txn_app_id
from .context import StageContext
from .results import StreamResult


def run(ctx: StageContext) -> StreamResult:
    """New bronze/items rows -> silver, quarantine, embeddings, feature_store/item_visual (streaming)."""

    cfg, spark, p = ctx.cfg.stream, ctx.spark, ctx.paths

    def resolve_serving():   # embed.method's versions that serve now (re-read every micro-batch)
        return load_serving(spark, p, *requested_versions(ctx.cfg))

    serving, art, centroids = resolve_serving()
    art.load_encoder()  # a missing or corrupt model is one clear error now, not failed micro-batches
    online = RedisSettings.from_config(ctx.cfg.online) if cfg.online else None
    if online:
        connect(online)  # wrong password or host: fail before the query starts
    app_id = txn_app_id(p)
    state = {"serving": serving, "art": art, "centroids": centroids}
    with step("stream", f"catching up: every silver item gets features of {serving.model_version}/"
                        f"{serving.centroid_version}"):
        first = catch_up(spark, p, ctx.cfg, serving, art, centroids)
    say("stream", f"catch-up embedded {first.embedded}, assigned {first.assigned} item(s)")
    online_counts = []

    def on_batch(batch, batch_id: int) -> None:
        t0 = time.perf_counter()
        s, a, c = resolve_serving()
        serving_s = time.perf_counter() - t0
        if s != state["serving"]:
            # A new model or centroid version takes effect here: every item once.
            say("stream", f"serving versions changed to {s.model_version}/{s.centroid_version}: re-assigning")
            a.load_encoder()
            catch_up(spark, p, ctx.cfg, s, a, c)
            state.update(serving=s, art=a, centroids=c)
        counts = process_item_batch(spark, batch, batch_id, p, ctx.cfg, s, a, c, app_id)
        counts.seconds["resolve_serving"] = round(serving_s, 3)
        if online and counts.rows_in:
            online_counts.append(materialise_item_visual(spark, p.item_visual_features, online,
                                                         batch_size=ctx.cfg.online.batch_size))
        record_batch(spark, p, batch_id, s, counts, app_id)
        say("stream", f"batch {batch_id}: {counts.rows_in} row(s) in: new {counts.new}, changed {counts.changed}, "
                      f"quarantined {counts.quarantined}; embedded {counts.embedded}, assigned {counts.assigned} "
                      f"({time.perf_counter() - t0:.1f}s)")

    reader = (spark.readStream.format("delta").option("maxFilesPerTrigger", cfg.max_files_per_trigger)
              # a rewrite of bronze (`generate` again) is not new items: the batch stages own that case
              .option("skipChangeCommits", "true"))
    fresh_checkpoint = not fs.exists(fs.join(p.stream_checkpoint, "offsets"))
    if fresh_checkpoint:
        # A new query starts after what `validate` already took into silver.
        reader = reader.option("startingVersion", "latest")
    writer = (reader.load(p.bronze_items).writeStream.foreachBatch(on_batch)
              .option("checkpointLocation", p.stream_checkpoint).queryName("courier_stream_items"))
    writer = (writer.trigger(availableNow=True) if cfg.trigger == "available_now"
              else writer.trigger(processingTime=f"{cfg.interval_seconds} seconds"))
    before = {b["batch_id"] for b in read_ledger(spark, p)}
    t0 = time.perf_counter()
    say("stream", f"{cfg.trigger} query on bronze/items ({'new checkpoint, from the latest version' if fresh_checkpoint else 'resuming its checkpoint'})")
    query = writer.start()
    try:
        if cfg.trigger == "processing_time" and cfg.run_seconds:
            query.awaitTermination(cfg.run_seconds)
            query.stop()
        else:
            query.awaitTermination()
    except Exception as e:  # noqa: BLE001 - the query's error, as one line
        raise StreamError(f"streaming query failed: {str(e).splitlines()[0][:500]}") from e
    finally:
        if query.isActive:
            query.stop()
    secs = time.perf_counter() - t0
    batches = [b for b in read_ledger(spark, p) if b["batch_id"] not in before]
    items = sum(b["new"] + b["changed"] for b in batches)
    result = StreamResult(
        trigger=cfg.trigger, serving=dataclasses.asdict(state["serving"]), catch_up=dataclasses.asdict(first),
        batches=len(batches), rows_in=sum(b["rows_in"] for b in batches), new=sum(b["new"] for b in batches),
        changed=sum(b["changed"] for b in batches), quarantined=sum(b["quarantined"] for b in batches),
        embedded=sum(b["embedded"] for b in batches),
        re_embedded_existing=sum(b["re_embedded_existing"] for b in batches), query_seconds=round(secs, 2),
        items_per_second=round(items / secs, 2) if secs > 0 else None, online=online_counts)
    say("stream", f"{len(batches)} micro-batch(es): {result.new} new and {result.changed} changed item(s), "
                  f"{result.quarantined} quarantined, {result.embedded} embedded "
                  f"({result.items_per_second} items/s over {secs:.1f}s)")
    return result

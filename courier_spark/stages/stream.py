"""`courier stream`: new/changed bronze/items rows -> silver/items, quarantine/items,
gold/item_embeddings, feature_store/item_visual (Structured Streaming,
foreachBatch; the query: ``courier_spark.serving.stream.run_items_stream``)."""
from __future__ import annotations

import dataclasses

from courier_spark.core.logs import say
from courier_spark.serving.stream import run_items_stream
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import StreamResult


def run(ctx: StageContext) -> StreamResult:
    """New bronze/items rows -> silver, quarantine, embeddings, feature_store/item_visual (streaming)."""
    run_ = run_items_stream(ctx.spark, ctx.paths, ctx.cfg)
    batches, secs = run_.batches, run_.seconds
    items = sum(b["new"] + b["changed"] for b in batches)
    result = StreamResult(
        trigger=ctx.cfg.stream.trigger, serving=dataclasses.asdict(run_.serving),
        catch_up=dataclasses.asdict(run_.catch_up), batches=len(batches),
        rows_in=sum(b["rows_in"] for b in batches), new=sum(b["new"] for b in batches),
        changed=sum(b["changed"] for b in batches), quarantined=sum(b["quarantined"] for b in batches),
        embedded=sum(b["embedded"] for b in batches),
        re_embedded_existing=sum(b["re_embedded_existing"] for b in batches), query_seconds=round(secs, 2),
        items_per_second=round(items / secs, 2) if secs > 0 else None, online=run_.online)
    say("stream", f"{len(batches)} micro-batch(es): {result.new} new and {result.changed} changed item(s), "
                  f"{result.quarantined} quarantined, {result.embedded} embedded "
                  f"({result.items_per_second} items/s over {secs:.1f}s)")
    return result

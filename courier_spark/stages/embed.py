"""`courier embed`: silver/items + model artifact -> gold/item_embeddings (that model version's rows replaced)."""
from __future__ import annotations

import time

from training.artifact import load_artifact

from courier_spark.core.tables import replace_rows
from courier_spark.features.embed import embed_items, embedding_accounting, read_embeddings
from courier_spark.core.logs import say, step
from courier_spark.core.tables import read_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import EmbedResult


def run(ctx: StageContext) -> EmbedResult:
    """silver/items + artifact -> gold/item_embeddings (that model version's rows replaced)."""
    cfg = ctx.cfg.embed
    spark, p = ctx.spark, ctx.paths
    art = load_artifact(p.models, cfg.method, cfg.model_version)
    art.load_encoder()  # read on the driver first: a corrupt file is one clear error, not failed tasks
    mv = art.model_version
    items = read_table(spark, p.silver_items)
    n_in = items.count()
    say("embed", f"model {mv} ({art.backbone}@{art.image_size}px, d={art.embed_dim}) over {n_in} items, "
                 f"batch {cfg.batch_size}, {cfg.torch_threads} torch thread(s) per worker")
    emb = embed_items(items, art, cfg.batch_size, torch_threads=cfg.torch_threads, device=cfg.device,
                      min_partitions=cfg.min_partitions)
    t0 = time.perf_counter()
    with step("embed", f"embedding and replacing model_version={mv} rows of gold/item_embeddings"):
        version = replace_rows(emb, p.item_embeddings, "model_version", mv)
    secs = time.perf_counter() - t0
    acc = embedding_accounting(items, read_embeddings(spark, p.item_embeddings, mv))
    result = EmbedResult(model_version=mv, artifact=art.path, backbone=art.backbone,
                         image_size=art.image_size, items_in=n_in, embedded=acc.embedded,
                         not_embedded=acc.not_embedded, embedding_dim=acc.dim,
                         max_norm_error=acc.max_norm_error,
                         items_per_second=round(acc.embedded / secs, 1) if secs > 0 else None,
                         table_version=version)
    say("embed", f"embedded {acc.embedded}/{n_in} items (d={acc.dim}, {result.items_per_second} items/s); "
                 f"not embedded: {acc.not_embedded or 'none'}")
    if not acc.balanced(n_in):
        raise RuntimeError(f"embedding accounting failed: {result.summary()}")
    return result

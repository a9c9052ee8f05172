"""`courier embed`: silver/items + model artifact -> gold/item_embeddings (that model version's rows replaced)."""
from __future__ import annotations

from ..logs import say, step
from ..tables import read_table
from .context import StageContext
from .results import EmbedResult


def run(ctx: StageContext) -> EmbedResult:
    """silver/items + artifact -> gold/item_embeddings (that model version's rows replaced)."""
    import time

    from pyspark.sql import functions as F

    from training.artifact import load_artifact

    from ..cluster import replace_rows
    from ..embed import embed_items, read_embeddings
    from ..features import array_dot

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
    # Accounting from the written rows (no second forward pass): every input
    # item is embedded or listed by reason.
    written = read_embeddings(spark, p.item_embeddings, mv)
    n_emb = written.count()
    status = F.col("image_status") if "image_status" in items.columns else F.lit(None).cast("string")
    reason = (F.when(F.col("image").isNull(), F.coalesce(status, F.lit("missing")))
              .otherwise(F.lit("decode_failed_at_embed")))
    not_embedded = {r["reason"]: int(r["count"]) for r in
                    items.join(written.select("item_id"), "item_id", "left_anti")
                    .groupBy(reason.alias("reason")).count().collect()}
    chk = written.agg(F.max(F.size("embedding")).alias("dim"), F.min(F.size("embedding")).alias("dim_min"),
                      F.max(F.abs(F.sqrt(array_dot(F.col("embedding"), F.col("embedding"))) - 1)).alias("norm_err")
                      ).first()
    result = EmbedResult(model_version=mv, artifact=art.path, backbone=art.backbone,
                         image_size=art.image_size, items_in=n_in, embedded=n_emb,
                         not_embedded=not_embedded, embedding_dim=chk["dim"],
                         max_norm_error=float(chk["norm_err"] or 0.0),
                         items_per_second=round(n_emb / secs, 1) if secs > 0 else None,
                         table_version=version)
    say("embed", f"embedded {n_emb}/{n_in} items (d={chk['dim']}, {result.items_per_second} items/s); "
                 f"not embedded: {not_embedded or 'none'}")
    if n_emb + sum(not_embedded.values()) != n_in or chk["dim"] != chk["dim_min"]:
        raise RuntimeError(f"embedding accounting failed: {result.summary()}")
    return result

"""`courier online`: feature_store/item_visual's current rows -> Redis (only changed rows)."""
from __future__ import annotations

from courier_spark.core.logs import say
from courier_spark.serving.online import RedisSettings, materialise_item_visual
from courier_spark.core.tables import read_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import OnlineResult


def run(ctx: StageContext) -> OnlineResult:
    """feature_store/item_visual current rows -> the online store (Redis), changed rows only."""

    read_table(ctx.spark, ctx.paths.item_visual_features)  # clear error when absent
    settings = RedisSettings.from_config(ctx.cfg.online)
    out = materialise_item_visual(ctx.spark, ctx.paths.item_visual_features, settings,
                                  batch_size=ctx.cfg.online.batch_size)
    say("online", f"{out['mode']}: wrote {out['written']}, deleted {out['deleted']} key(s) in {out['store']} "
                  f"(item_visual version {out['from_version']} -> {out['to_version']}, "
                  f"{out.get('rows_per_second') or 0} rows/s)")
    return OnlineResult(counts=out)

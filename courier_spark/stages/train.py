"""`courier train`: pre-training samples -> versioned encoder artifact
(the procedure: ``training.pretrain.pretrain``)."""
from __future__ import annotations

from training.pretrain import PretrainPlaces, pretrain

from courier_spark.core.tables import read_table, table_version
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import TrainResult


def run(ctx: StageContext) -> TrainResult:
    """pre-training samples -> encoder artifact (petastorm -> horovod/torch on Spark)."""
    p, spark = ctx.paths, ctx.spark
    data_versions = {"silver/pretrain_samples": table_version(spark, p.pretrain_samples),
                     "silver/items": table_version(spark, p.silver_items)}
    out = pretrain(read_table(spark, p.pretrain_samples), read_table(spark, p.silver_items),
                   ctx.cfg.train, ctx.cfg.samples, PretrainPlaces(p.models, p.checkpoints, p.petastorm_cache),
                   data_versions, keep_loader_cache=ctx.keep_loader_cache)
    if not out.complete:
        return TrainResult(complete=False, steps_done=out.steps_done, checkpoint=out.checkpoint)
    art = out.artifact
    return TrainResult(complete=True, model_version=art.model_version, version=art.version, path=art.path,
                       metrics={k: v for k, v in out.metrics.items() if k != "history"})

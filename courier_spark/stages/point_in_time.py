"""`courier point_in_time`: a consumer's events -> the same rows with item_visual
(and history) features as of each event's time."""
from __future__ import annotations

from pyspark.sql import functions as F

from courier_spark.core.logs import say, step
from courier_spark.serving.retrieval import check_settings, point_in_time_features, read_events, write_output
from courier_spark.core.tables import read_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import PointInTimeResult


def run(ctx: StageContext) -> PointInTimeResult:
    """retrieval.input events -> retrieval.output with features as of each event_ts."""

    cfg, spark, p = ctx.cfg.retrieval, ctx.spark, ctx.paths
    check_settings(cfg, p)      # before reading anything; the CLI checked it before Spark too
    events = read_events(spark, cfg.input, cfg.input_format)
    if cfg.event_ts_column != "event_ts" and cfg.event_ts_column in events.columns:
        events = events.withColumnRenamed(cfg.event_ts_column, "event_ts")
    history = cfg.history and "user_id" in events.columns
    out = point_in_time_features(
        events, read_table(spark, p.item_visual_features), ts_col="event_ts",
        impressions=read_table(spark, p.silver_impressions) if history else None,
        embeddings=read_table(spark, p.item_embeddings) if history else None, k=cfg.k)
    if cfg.event_ts_column != "event_ts":
        out = out.withColumnRenamed("event_ts", cfg.event_ts_column)
    with step("point_in_time", f"writing {cfg.output} ({cfg.output_format})"):
        write_output(spark, out, cfg.output, cfg.output_format)
    written = spark.read.format(cfg.output_format).load(cfg.output)
    st = written.agg(F.count("*").alias("rows"),
                     F.sum(F.col("courier_cluster_id").isNotNull().cast("int")).alias("with_features")).first()
    result = PointInTimeResult(input=cfg.input, output=cfg.output, rows=int(st["rows"]),
                               with_item_features=int(st["with_features"] or 0), history=history, k=cfg.k)
    say("point_in_time", f"{result.rows} event(s), {result.with_item_features} with item features "
                         f"as of their time{'; history features too' if history else ''}")
    return result

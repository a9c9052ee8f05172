"""`courier samples`: silver impressions -> silver/pretrain_samples, silver/ctr_samples."""
from __future__ import annotations

import dataclasses
from courier_spark.core.logs import say, step
from courier_spark.data.samples import assemble_samples, window_accounting
from courier_spark.core.tables import read_table, write_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import SamplesResult


def run(ctx: StageContext) -> SamplesResult:
    """silver impressions -> silver/pretrain_samples, silver/ctr_samples."""
    p = ctx.paths
    imps = read_table(ctx.spark, p.silver_impressions)
    items = read_table(ctx.spark, p.silver_items)
    tables = assemble_samples(imps, items, ctx.cfg.windows, ctx.cfg.samples)
    say("samples", "windows: " + tables.windows.describe())
    with step("samples", "writing silver/pretrain_samples"):
        v_pre = write_table(tables.pretrain, p.pretrain_samples)
    with step("samples", "writing silver/ctr_samples"):
        v_ctr = write_table(tables.ctr, p.ctr_samples, partition_by=["split"])
    pre = read_table(ctx.spark, p.pretrain_samples)
    ctr = read_table(ctx.spark, p.ctr_samples)
    splits = {r["split"]: int(r["count"]) for r in ctr.groupBy("split").count().collect()}
    # Where every clean impression went, including those outside all windows.
    accounting = window_accounting(imps, tables.windows)
    say("samples", f"clean impressions by window: {accounting}")
    result = SamplesResult(windows=dataclasses.asdict(tables.windows), impressions_by_window=accounting,
                           pretrain_samples=pre.count(), ctr_samples=splits,
                           table_versions={"pretrain_samples": v_pre, "ctr_samples": v_ctr})
    say("samples", f"pretrain_samples={result.pretrain_samples} ctr_samples={splits}")
    return result

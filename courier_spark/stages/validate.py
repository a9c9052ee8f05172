"""`courier validate`: bronze -> silver/items, silver/impressions + quarantine/*."""
from __future__ import annotations

from courier_spark.core.logs import say, step
from courier_spark.core.tables import read_table, write_table
from courier_spark.data.validate import summarize, validate_bronze
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import ValidateResult


def run(ctx: StageContext) -> ValidateResult:
    """bronze -> silver/items, silver/impressions + quarantine/*."""
    p = ctx.paths
    items = read_table(ctx.spark, p.bronze_items)
    imps = read_table(ctx.spark, p.bronze_impressions)
    res = validate_bronze(items, imps, ctx.cfg.validate)
    with step("validate", "writing silver/items and quarantine/items"):
        write_table(res.clean_items, p.silver_items)
        write_table(res.quarantine_items, p.quarantine_items)
    with step("validate", "writing silver/impressions and quarantine/impressions"):
        write_table(res.clean_impressions, p.silver_impressions)
        write_table(res.quarantine_impressions, p.quarantine_impressions)
    s = summarize(items, imps, *(read_table(ctx.spark, t) for t in (
        p.silver_items, p.silver_impressions, p.quarantine_items, p.quarantine_impressions)))
    for line in s.lines():
        say("validate", line)
    if not s.balanced():
        raise RuntimeError("validation lost rows: clean + quarantined != input (see summary above)")
    return ValidateResult(counts=s)

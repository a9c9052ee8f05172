"""`courier generate`: the synthetic marketplace -> bronze tables (+ hidden truth)."""
from __future__ import annotations

from courier_spark.core.logs import say, step
from courier_spark.data.synthetic import generate_marketplace
from courier_spark.data.synthetic.spark_io import marketplace_to_spark
from courier_spark.core.tables import write_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import GenerateResult


def run(ctx: StageContext) -> GenerateResult:
    """Write the synthetic marketplace as bronze tables (+ hidden truth)."""
    params = ctx.cfg.synthetic
    with step("generate", f"synthesising marketplace (users={params.n_users}, items={params.n_items}, "
                          f"days={params.n_days}, seed={params.seed})"):
        market = generate_marketplace(params)
    frames = marketplace_to_spark(ctx.spark, market)
    p = ctx.paths
    with step("generate", "writing bronze/items, bronze/impressions and _synthetic_truth"):
        versions = {name: write_table(df, path) for name, df, path in (
            ("items", frames["items"], p.bronze_items),
            ("impressions", frames["impressions"], p.bronze_impressions),
            ("item_factors", frames["item_factors"], p.truth_item_factors),
            ("user_tastes", frames["user_tastes"], p.truth_user_tastes))}
    result = GenerateResult(rows={"items": len(market.items), "impressions": len(market.impressions)},
                            click_model=market.stats, injected_bad_rows=market.injected, table_versions=versions)
    say("generate", f"items={len(market.items)} impressions={len(market.impressions)} "
                    f"ctr={market.stats.get('ctr', float('nan')):.4f} "
                    f"visual_click_share={market.stats.get('visual_click_share', float('nan')):.3f}")
    return result

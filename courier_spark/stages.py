"""Pipeline stages: each reads its inputs through ``TablePaths``, calls the
DataFrame -> DataFrame library functions and writes Delta. The CLI and the
``jobs/*.py`` spark-submit entry points both call these."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import SparkSession

from .config import CourierConfig
from .paths import TablePaths
from .progress import say, step, write_summary
from .tables import read_table, write_table


@dataclass
class StageContext:
    spark: SparkSession
    cfg: CourierConfig
    paths: TablePaths


def run_generate(ctx: StageContext) -> dict:
    """Write the synthetic marketplace as bronze tables (+ hidden truth)."""
    from .synthetic import generate_marketplace
    from .synthetic.spark_io import marketplace_to_spark

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
    summary = {"rows": {"items": len(market.items), "impressions": len(market.impressions)},
               "click_model": market.stats, "injected_bad_rows": market.injected,
               "table_versions": versions}
    say("generate", f"items={len(market.items)} impressions={len(market.impressions)} "
                    f"ctr={market.stats.get('ctr', float('nan')):.4f} "
                    f"visual_click_share={market.stats.get('visual_click_share', float('nan')):.3f}")
    return summary


def run_validate(ctx: StageContext) -> dict:
    """bronze -> silver/items, silver/impressions + quarantine/*."""
    from .validate import summarize, validate_bronze

    p = ctx.paths
    items = read_table(ctx.spark, p.bronze_items, made_by="generate (or land bronze/items)")
    imps = read_table(ctx.spark, p.bronze_impressions, made_by="generate (or land bronze/impressions)")
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
    return dataclasses.asdict(s)


def run_samples(ctx: StageContext) -> dict:
    """silver impressions -> silver/pretrain_samples, silver/ctr_samples."""
    from .samples import assemble_samples, window_accounting

    p = ctx.paths
    imps = read_table(ctx.spark, p.silver_impressions, made_by="validate")
    items = read_table(ctx.spark, p.silver_items, made_by="validate")
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
    summary = {"windows": dataclasses.asdict(tables.windows), "impressions_by_window": accounting,
               "pretrain_samples": pre.count(),
               "ctr_samples": splits, "table_versions": {"pretrain_samples": v_pre, "ctr_samples": v_ctr}}
    say("samples", f"pretrain_samples={summary['pretrain_samples']} ctr_samples={splits}")
    return summary


def run_train(ctx: StageContext) -> dict:
    """pre-training samples -> versioned encoder artifact (petastorm -> horovod/torch on Spark)."""
    from .train_stage import run_train as _run
    return _run(ctx)


from .visual_stages import run_cluster, run_embed, run_features  # noqa: E402
from .evaluate.stages import run_comparisons, run_evaluate, run_report  # noqa: E402

# Stage order of the pipeline: raw -> samples -> training -> embeddings ->
# clusters -> features -> comparison methods -> CTR evaluation -> report.
STAGES: dict[str, Callable[[StageContext], dict]] = {
    "generate": run_generate,
    "validate": run_validate,
    "samples": run_samples,
    "train": run_train,
    "embed": run_embed,
    "cluster": run_cluster,
    "features": run_features,
    "comparisons": run_comparisons,
    "evaluate": run_evaluate,
    "report": run_report,
}


def run_stage(name: str, ctx: StageContext) -> dict:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    t0 = time.perf_counter()
    say(name, f"start (root={ctx.paths.root})")
    summary = STAGES[name](ctx)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["config"] = ctx.cfg.to_dict()
    write_summary(ctx.paths.run_summaries, name, summary)
    say(name, f"finished in {summary['seconds']:.1f}s")
    return summary


def pipeline_stages(start: str | None = None, until: str | None = None) -> list[str]:
    names = list(STAGES)
    for arg, val in (("--from", start), ("--until", until)):
        if val is not None and val not in names:
            raise KeyError(f"{arg} {val!r} is not a stage; stages: {', '.join(names)}")
    i = names.index(start) if start else 0
    j = names.index(until) + 1 if until else len(names)
    if i >= j:
        raise KeyError(f"--from {start} comes after --until {until}")
    return names[i:j]

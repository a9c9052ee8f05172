"""`courier health`: _health/item_visual -> the statistics of every item_visual
write, the drift of each centroid/model version change and the stream's
freshness, printed; the thresholds of the ``health`` section it breaks are
returned (the CLI exits 2 naming the first)."""
from __future__ import annotations

import pandas as pd

from courier_spark.features.health import breaches, read_health
from courier_spark.core.logs import say
from courier_spark.core.tables import read_table
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import HealthResult

STAT_COLUMNS = ["item_visual_version", "source", "batch_id", "centroid_version", "rows", "written_rows",
                "null_cluster_id", "null_distance", "n_clusters", "cluster_size_min", "cluster_size_median",
                "cluster_size_max", "distance_p50", "distance_p90", "distance_p99"]
DRIFT_COLUMNS = ["item_visual_version", "prev_model_version", "prev_centroid_version", "model_version",
                 "centroid_version", "drift_items", "drift_psi", "drift_changed_share"]
FRESH_COLUMNS = ["item_visual_version", "batch_id", "written_at", "fresh_rows", "freshness_p50_s",
                 "freshness_p95_s"]


def _print(title: str, df: pd.DataFrame) -> None:
    print(f"\n{title}")
    with pd.option_context("display.max_columns", None, "display.width", 240):
        print(df.to_string(index=False) if len(df) else "(none)")


def _record(df: pd.DataFrame) -> dict | None:
    def plain(v):   # JSON-able: numpy scalars -> Python, timestamps -> ISO text
        return (None if pd.isna(v) else v.isoformat() if hasattr(v, "isoformat")
                else v.item() if hasattr(v, "item") else v)
    return None if df.empty else {k: plain(v) for k, v in df.iloc[-1].items()}


def run(ctx: StageContext) -> HealthResult:
    """_health/item_visual -> statistics, drift and freshness (printed) and the thresholds broken."""
    read_table(ctx.spark, ctx.paths.health_item_visual)   # a missing table: the error names `features`
    health = read_health(ctx.spark, ctx.paths)
    drift = health[health["drift_psi"].notna()]
    fresh = health[health["freshness_p95_s"].notna()]
    _print("Statistics per item_visual write", health[STAT_COLUMNS])
    _print("Drift per centroid/model version change (clusters matched by shared items)", drift[DRIFT_COLUMNS])
    _print("Freshness per stream micro-batch (bronze landing -> feature row, seconds)", fresh[FRESH_COLUMNS])
    broken = breaches(health, ctx.cfg.health)
    for line in broken:
        say("health", line)
    if not broken:
        say("health", f"{len(health)} record(s), every health threshold met")
    return HealthResult(records=len(health), latest=_record(health[STAT_COLUMNS]),
                        drift=_record(drift[DRIFT_COLUMNS]), freshness=_record(fresh[FRESH_COLUMNS]),
                        breaches=broken)

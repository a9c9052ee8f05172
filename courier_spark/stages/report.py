"""`courier report`: results + the analyst SQL (sql/*.sql, run as-is) -> reports/report.md + PNGs."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from courier_spark.core import fs
from courier_spark.evaluate.probes import embedding_map_sample, look_probe_table
from courier_spark.evaluate.report import load_results, write_report
from courier_spark.evaluate.sql_runner import SQL_DIR, delta_table_exists, prepare_sql, run_sql_file
from courier_spark.features.health import read_health
from courier_spark.core.logs import say, step, warn
from courier_spark.core.tables import table_exists
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import ReportResult

SQL_FILES = ("per_category_auc_lift.sql", "ctr_by_cluster.sql", "cluster_category_purity.sql")
# The report needs the first (its per-category table); the cluster queries read the
# feature store, which a root evaluated from computed features (a bench root) lacks.
REQUIRED_SQL = "per_category_auc_lift.sql"


def run(ctx: StageContext) -> ReportResult:
    """results.json + sql/*.sql over the Delta tables -> report.md with PNG plots."""
    p = ctx.paths
    res = load_results(p.report_file("results.json"))
    sql_tables, sql_out = {}, p.report_file("sql")
    for name in SQL_FILES:
        missing = [t for t in prepare_sql(SQL_DIR / name, p.root).tables if not delta_table_exists(t)]
        if missing and name != REQUIRED_SQL:
            warn("report", f"sql/{name} skipped: no table at {', '.join(missing)}")
            continue
        with step("report", f"running sql/{name}"):
            pdf = run_sql_file(ctx.spark, SQL_DIR / name, p.root).toPandas()
        fs.write_text(fs.join(sql_out, name.replace(".sql", ".csv")), pdf.to_csv(index=False))
        sql_tables[name] = pdf
    per_cat_sql = sql_tables["per_category_auc_lift.sql"]
    # Cross-check: the analyst SQL's per-category AUC equals the Python one.
    py = pd.read_csv(io.StringIO(fs.read_text(p.report_file("per_category.csv"))))
    merged = py.merge(per_cat_sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    diff = float(np.nanmax(np.abs(merged["auc_py"] - merged["auc_sql"]))) if len(merged) else float("nan")
    say("report", f"per-category AUC: SQL vs Python max |diff| = {diff:.2e} over {len(merged)} rows")
    versions = res.attrs.get("versions", {})
    serving = ctx.cfg.embed.method
    emb_map = None
    if serving in versions:
        with step("report", f"embedding map of {versions[serving]['model_version']}"):
            emb_map = embedding_map_sample(ctx.spark, p, versions[serving]["model_version"])
    probes = None
    if versions and table_exists(ctx.spark, p.truth_item_factors):
        with step("report", "linear probes of the hidden look factors (synthetic data)"):
            probes = look_probe_table(ctx.spark, p.item_embeddings, p.truth_item_factors,
                                      {m: v["model_version"] for m, v in versions.items()})
    extra = {"Versions used": pd.DataFrame([{"method": m, **v} for m, v in versions.items()])}
    if "ctr_by_cluster.sql" in sql_tables:
        extra["CTR by cluster (top 15 by impressions, sql/ctr_by_cluster.sql)"] = \
            sql_tables["ctr_by_cluster.sql"].head(15)
    if "cluster_category_purity.sql" in sql_tables:
        purity = sql_tables["cluster_category_purity.sql"]
        extra["Cluster category purity (largest 15 clusters, sql/cluster_category_purity.sql)"] = \
            purity.sort_values(purity.columns[1], ascending=False).head(15)
    if probes is not None:
        extra["Hidden look factors (and the click-irrelevant backdrop) recovered by a linear probe "
              "(3-fold accuracy; synthetic data only)"] = probes
    health = read_health(ctx.spark, p) if table_exists(ctx.spark, p.health_item_visual) else None
    path = write_report(p.reports, res, per_cat_sql, extra_tables=extra, embedding_map=emb_map,
                        title=f"COURIER evaluation ({p.root})", health=health)
    say("report", f"wrote {path}")
    return ReportResult(report=path, sql_vs_python_max_abs_diff=diff, sql_outputs=fs.ls(sql_out))

"""Stages `comparisons`, `evaluate`, `report` (registered in courier_spark.stages).

comparisons: for every method in ``evaluate.methods`` other than the serving
             one (``embed.method``): train -> embed -> cluster, with the same
             stage functions and data (versions side by side in models/,
             gold/item_embeddings and gold/centroids; the feature store is untouched).
evaluate:    CTR frames per method -> DNN + LightGBM x seeds -> gold/predictions,
             <root>/reports/metrics.json, results.json, per_category.csv.
report:      results + the analyst SQL (sql/*.sql, run as-is) -> report.md + PNGs.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from ..config import section, with_section_values
from ..features import FeaturesConfig
from ..progress import say, step
from .config import load_evaluate_config

BASELINE = "baseline"
WAYS_ORDER = ("cluster_id", "simscore", "vector")


def _serving_method(ctx) -> str:
    from ..embed import EmbedConfig
    return section(ctx.cfg, "embed", EmbedConfig).method


def run_comparisons(ctx) -> dict:
    """Train, embed and cluster every comparison method of evaluate.methods."""
    from ..stages import StageContext
    from ..visual_stages import run_cluster, run_embed
    from .. import train_stage

    ecfg = load_evaluate_config(ctx.cfg)
    serving = _serving_method(ctx)
    todo = [m for m in ecfg.methods if m != serving]
    say("comparisons", f"serving method {serving} (from the main stages); comparing against: "
                       f"{', '.join(todo) or 'nothing'}")
    out: dict = {"serving_method": serving, "methods": {}}
    for i, method in enumerate(todo, 1):
        t0 = time.perf_counter()
        say("comparisons", f"[{i}/{len(todo)}] {method}: train -> embed -> cluster")
        cfg = with_section_values(ctx.cfg, train={"method": method},
                                  embed={"method": method, "model_version": "latest"},
                                  cluster={"model_version": ""})
        sub = StageContext(ctx.spark, cfg, ctx.paths)
        tr = train_stage.run_train(sub, keep_loader_cache=True)
        if not tr.get("complete"):
            raise RuntimeError(f"training {method} stopped early at step {tr.get('steps_done')}; "
                               f"re-run `courier comparisons` to resume from its checkpoint")
        em = run_embed(sub)
        cl = run_cluster(sub)
        out["methods"][method] = {"model_version": tr["model_version"], "train_metrics": tr["metrics"],
                                  "embedded": em["embedded"], "not_embedded": em["not_embedded"],
                                  "centroid_version": cl["centroid_version"],
                                  "seconds": round(time.perf_counter() - t0, 1)}
        say("comparisons", f"[{i}/{len(todo)}] {method}: {tr['model_version']} / {cl['centroid_version']} "
                           f"in {out['methods'][method]['seconds']:.0f}s")
    return out


def variant_plan(methods: list[str], all_ways_methods: list[str]) -> list[tuple[str, str, str | None]]:
    """(variant name, image feature, method) triples: the baseline, then every
    method at cluster_id and the all-ways methods also at simscore and vector."""
    plan: list[tuple[str, str, str | None]] = [(BASELINE, "none", None)]
    for m in methods:
        for way in (WAYS_ORDER if m in all_ways_methods else ("cluster_id",)):
            plan.append((f"{m}_{way}", way, m))
    return plan


def _reports_file(ctx, name: str) -> str:
    os.makedirs(ctx.paths.reports, exist_ok=True)
    return os.path.join(ctx.paths.reports, name)


def run_evaluate(ctx) -> dict:
    """CTR frames per method -> DNN / LightGBM over seeds -> predictions + metrics.json."""
    from .ctr_frames import build_ctr_frames, resolve_method_versions, variant_frames
    from .runner import evaluate_variants, per_category_results, write_metrics_json
    from .sql_runner import write_predictions

    ecfg = load_evaluate_config(ctx.cfg)
    fcfg = section(ctx.cfg, "features", FeaturesConfig).validate()
    spark, p = ctx.spark, ctx.paths
    versions = [resolve_method_versions(spark, p, m) for m in ecfg.methods]
    plan = variant_plan(ecfg.methods, ecfg.all_ways_methods)
    with step("evaluate", f"building CTR frames for {len(versions)} method(s), k={fcfg.k} history slots"):
        base, per_method, sources = build_ctr_frames(
            spark, p, versions, fcfg.k, vector_methods=set(ecfg.all_ways_methods),
            log=lambda m: say("evaluate", m))
    frames = variant_frames(base, per_method, plan)
    n_train, n_test = len(frames[BASELINE][0]), len(frames[BASELINE][1])
    say("evaluate", f"{len(plan)} variants x {ecfg.model_kinds} x seeds {ecfg.seeds}: "
                    f"{len(plan) * len(ecfg.model_kinds) * len(ecfg.seeds)} model fits on {n_train} train / "
                    f"{n_test} test impressions (CTR train {frames[BASELINE][0]['label'].mean():.4f})")
    results, preds = evaluate_variants(frames, [(n, f) for n, f, _ in plan], cfg=ecfg)

    by_method = {v.method: v for v in versions}
    method_of = {n: m for n, _, m in plan}
    preds["model_version"] = preds["variant"].map(lambda n: by_method[method_of[n]].model_version
                                                  if method_of[n] else None)
    preds["centroid_version"] = preds["variant"].map(lambda n: by_method[method_of[n]].centroid_version
                                                     if method_of[n] else None)
    with step("evaluate", f"writing gold/predictions ({len(preds)} rows)"):
        pv = write_predictions(spark, preds, p.predictions)
    per_cat = per_category_results(preds, results.attrs.get("baseline") or BASELINE)
    per_cat.to_csv(_reports_file(ctx, "per_category.csv"), index=False)
    write_metrics_json(_reports_file(ctx, "metrics.json"), results)
    with open(_reports_file(ctx, "results.json"), "w") as fh:
        json.dump({"attrs": results.attrs, "rows": json.loads(results.to_json(orient="records")),
                   "versions": {v.method: {"model_version": v.model_version,
                                           "centroid_version": v.centroid_version,
                                           "feature_source": sources[v.method]} for v in versions}},
                  fh, indent=1, default=str)
    main = results[results["model_kind"] == results.attrs.get("main_model", "dnn")]
    for _, r in main.iterrows():
        say("evaluate", f"{r['variant']:<28} AUC {r['auc']:.4f}±{r['auc_std']:.4f} "
                        f"GAUC {r['gauc']:.4f}±{r['gauc_std']:.4f} lift {r['lift_auc_pct']:+.2f}% "
                        f"{'(real)' if r['real'] else ''}")
    return {"variants": [n for n, _, _ in plan], "n_train": n_train, "n_test": n_test,
            "predictions_table_version": pv, "feature_sources": sources,
            "metrics_json": _reports_file(ctx, "metrics.json"),
            "headline": {r["variant"]: {"auc": r["auc"], "auc_std": r["auc_std"], "gauc": r["gauc"],
                                        "lift_auc_pct": r["lift_auc_pct"], "real": bool(r["real"])}
                         for _, r in main.iterrows()}}


def load_results(path: str) -> pd.DataFrame:
    """The evaluate stage's results.json back as the runner's results frame."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; run `courier evaluate` first")
    with open(path) as fh:
        data = json.load(fh)
    res = pd.DataFrame(data["rows"])
    res.attrs.update(data["attrs"])
    res.attrs["versions"] = data.get("versions", {})
    return res


SQL_FILES = ("per_category_auc_lift.sql", "ctr_by_cluster.sql", "cluster_category_purity.sql")


def _embedding_map(ctx, model_version: str, n: int = 1500):
    """(vectors, category, hidden colour, its name) of up to n items for the PCA map."""
    from ..embed import read_embeddings
    from ..tables import read_table, table_exists
    emb = read_embeddings(ctx.spark, ctx.paths.item_embeddings, model_version)
    items = read_table(ctx.spark, ctx.paths.silver_items).select("item_id", "category")
    df = emb.join(items, "item_id")
    hidden = None
    if table_exists(ctx.spark, ctx.paths.truth_item_factors):
        truth = ctx.spark.read.format("delta").load(ctx.paths.truth_item_factors)
        col = next((c for c in ("colour", "color", "style") if c in truth.columns), None)
        if col:
            df = df.join(truth.select("item_id", F.col(col).alias("hidden")), "item_id", "left")
            hidden = col
    pdf = df.orderBy(F.xxhash64("item_id")).limit(n).toPandas()
    x = np.stack(pdf["embedding"].to_numpy())
    return (x, pdf["category"].to_numpy(), (pdf["hidden"].to_numpy() if hidden else None),
            f"hidden {hidden}" if hidden else "hidden factor")


def run_report(ctx) -> dict:
    """results.json + sql/*.sql over the Delta tables -> report.md with PNG plots."""
    from .report import write_report
    from .sql_runner import SQL_DIR, run_sql_file

    res = load_results(_reports_file(ctx, "results.json"))
    sql_tables, sql_out = {}, os.path.join(ctx.paths.reports, "sql")
    os.makedirs(sql_out, exist_ok=True)
    for name in SQL_FILES:
        with step("report", f"running sql/{name}"):
            pdf = run_sql_file(ctx.spark, SQL_DIR / name, ctx.paths.root).toPandas()
        pdf.to_csv(os.path.join(sql_out, name.replace(".sql", ".csv")), index=False)
        sql_tables[name] = pdf
    per_cat_sql = sql_tables["per_category_auc_lift.sql"]
    # Cross-check: the analyst SQL's per-category AUC equals the Python one.
    py = pd.read_csv(_reports_file(ctx, "per_category.csv"))
    merged = py.merge(per_cat_sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    diff = float(np.nanmax(np.abs(merged["auc_py"] - merged["auc_sql"]))) if len(merged) else float("nan")
    say("report", f"per-category AUC: SQL vs Python max |diff| = {diff:.2e} over {len(merged)} rows")
    versions = res.attrs.get("versions", {})
    serving = _serving_method(ctx)
    emb_map = None
    if serving in versions:
        with step("report", f"embedding map of {versions[serving]['model_version']}"):
            emb_map = _embedding_map(ctx, versions[serving]["model_version"])
    from ..tables import table_exists
    if versions and table_exists(ctx.spark, ctx.paths.truth_item_factors):
        from .probes import look_probe_table
        with step("report", "linear probes of the hidden look factors (synthetic data)"):
            probes = look_probe_table(ctx.spark, ctx.paths.item_embeddings, ctx.paths.truth_item_factors,
                                      {m: v["model_version"] for m, v in versions.items()})
    else:
        probes = None
    purity = sql_tables["cluster_category_purity.sql"]
    extra = {"Versions used": pd.DataFrame([{"method": m, **v} for m, v in versions.items()]),
             "CTR by cluster (top 15 by impressions, sql/ctr_by_cluster.sql)":
                 sql_tables["ctr_by_cluster.sql"].head(15),
             "Cluster category purity (largest 15 clusters, sql/cluster_category_purity.sql)":
                 purity.sort_values(purity.columns[1], ascending=False).head(15)}
    if probes is not None:
        extra["Hidden look factors (and the click-irrelevant backdrop) recovered by a linear probe "
              "(3-fold accuracy; synthetic data only)"] = probes
    path = write_report(ctx.paths.reports, res, per_cat_sql, extra_tables=extra, embedding_map=emb_map,
                        title=f"COURIER evaluation ({ctx.paths.root})")
    say("report", f"wrote {path}")
    return {"report": path, "sql_vs_python_max_abs_diff": diff, "sql_outputs": sorted(os.listdir(sql_out))}

"""`courier evaluate`: CTR frames per method -> DNN + LightGBM x seeds ->
gold/predictions, <root>/reports/metrics.json, results.json, per_category.csv."""
from __future__ import annotations

import json

from courier_spark.core import fs
from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
from courier_spark.evaluate.cluster_variants import kmeans_seed_frames
from courier_spark.evaluate.ctr_frames import build_ctr_frames, variant_frames
from courier_spark.evaluate.runner import (BASELINE, evaluate_variants, per_category_results, seen_categories,
                               variant_plan, write_metrics_json)
from courier_spark.evaluate.sql_runner import write_predictions
from courier_spark.core.logs import say, step
from courier_spark.serving.versions import serving_versions
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import EvaluateResult


def _pretrained_on(models_dir: str, model_version: str) -> set[str] | None:
    """The categories whose page views trained ``model_version``, from its
    recorded config: train.categories (empty = every category, None here); an
    encoder that trained on no page views (objective none: the generic trunk,
    random init; the trunk's own config names no objective) saw none."""
    from training.artifact import load_artifact
    method, version = model_version.split("/", 1)
    cfg = load_artifact(models_dir, method, version).config
    if cfg.get("objective", "none") == "none":
        return set()
    return set(cfg.get("categories") or []) or None


def run(ctx: StageContext) -> EvaluateResult:
    """CTR frames per method -> DNN / LightGBM over seeds -> predictions + metrics.json."""

    ecfg, fcfg = ctx.cfg.evaluate, ctx.cfg.features
    spark, p = ctx.spark, ctx.paths
    versions = [serving_versions(spark, p, m) for m in ecfg.methods]
    plan = variant_plan(ecfg.methods, ecfg.all_ways_methods)
    with step("evaluate", f"building CTR frames for {len(versions)} method(s), k={fcfg.k} history slots"):
        base, per_method, sources, items = build_ctr_frames(
            spark, p, versions, fcfg.k, vector_methods=set(ecfg.all_ways_methods),
            log=lambda m: say("evaluate", m))
    frames: dict = variant_frames(base, per_method, plan)
    if ecfg.vary_kmeans_seed and len(ecfg.seeds) > 1:
        vectors = {}
        for name, feature, method in plan:
            if feature != "cluster_id":
                continue
            if method not in vectors:
                vectors[method] = embeddings_to_numpy(read_embeddings(
                    spark, p.item_embeddings, next(v for v in versions if v.method == method).model_version))
            frames[name] = kmeans_seed_frames(frames[name], *vectors[method], ctx.cfg.cluster.k, ctx.cfg.cluster.seed,
                                              log=lambda m, n=name: say("evaluate", f"{n}: {m}"))
        say("evaluate", f"cluster-ID variants: run i > 0 re-clusters with k-means seed "
                        f"{ctx.cfg.cluster.seed} + i (evaluate.vary_kmeans_seed)")
    n_train, n_test = len(frames[BASELINE][0]), len(frames[BASELINE][1])
    say("evaluate", f"{len(plan)} variants x {ecfg.model_kinds} x seeds {ecfg.seeds}: "
                    f"{len(plan) * len(ecfg.model_kinds) * len(ecfg.seeds)} model fits on {n_train} train / "
                    f"{n_test} test impressions (CTR train {frames[BASELINE][0]['label'].mean():.4f})")
    results, preds = evaluate_variants(frames, [(n, f) for n, f, _ in plan], cfg=ecfg, items=items)

    by_method = {v.method: v for v in versions}
    method_of = {n: m for n, _, m in plan}
    preds["model_version"] = preds["variant"].map(lambda n: by_method[method_of[n]].model_version
                                                  if method_of[n] else None)
    preds["centroid_version"] = preds["variant"].map(lambda n: by_method[method_of[n]].centroid_version
                                                     if method_of[n] else None)
    preds["seen"] = seen_categories(preds["model_version"], preds["category"],
                                    {v.model_version: _pretrained_on(p.models, v.model_version) for v in versions})
    with step("evaluate", f"writing gold/predictions ({len(preds)} rows)"):
        pv = write_predictions(spark, preds, p.predictions)
    per_cat = per_category_results(preds, results.attrs.get("baseline") or BASELINE)
    fs.write_text(p.report_file("per_category.csv"), per_cat.to_csv(index=False))
    write_metrics_json(p.report_file("metrics.json"), results)
    fs.write_json(p.report_file("results.json"), {
        "attrs": results.attrs, "rows": json.loads(results.to_json(orient="records")),
        "versions": {v.method: {"model_version": v.model_version, "centroid_version": v.centroid_version,
                                "feature_source": sources[v.method]} for v in versions}})
    main = results[results["model_kind"] == results.attrs.get("main_model", "dnn")]
    for _, r in main.iterrows():
        say("evaluate", f"{r['variant']:<28} AUC {r['auc']:.4f}±{r['auc_std']:.4f} "
                        f"GAUC {r['gauc']:.4f}±{r['gauc_std']:.4f} lift {r['lift_auc_pct']:+.2f}% "
                        f"{'(real)' if r['real'] else ''}")
    return EvaluateResult(
        variants=[n for n, _, _ in plan], n_train=n_train, n_test=n_test, predictions_table_version=pv,
        feature_sources=sources, metrics_json=p.report_file("metrics.json"),
        headline={r["variant"]: {"auc": r["auc"], "auc_std": r["auc_std"], "gauc": r["gauc"],
                                 "lift_auc_pct": r["lift_auc_pct"], "real": bool(r["real"])}
                  for _, r in main.iterrows()})

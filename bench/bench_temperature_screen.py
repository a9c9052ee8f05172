"""Temperature screen with equal budgets: COURIER and SimCLR get the same
number of trainings (one per temperature of their grid), the same steps and
recipe, and are judged on a *validation* day carved out of the CTR-train
window (fit on its earlier days, score its last day); the test day is never
read. Prints, per method and temperature, the DNN's AUC and GAUC lift of the
encoder's cluster IDs over the baseline on the validation day (mean over
``--seeds``, CTR seed i paired with k-means seed cluster.seed + i), and the
temperature each method would take.

    .venv/bin/courier pipeline --root /tmp/w2 --until samples
    .venv/bin/python bench/bench_temperature_screen.py --root /tmp/w2
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _runs import train_embed_cluster  # bench/ is the script dir

GRIDS = {  # the same number of points for each method (the paper tuned every baseline's temperature)
    "courier": ("train.tau_pv", "train.tau_ucs"), "simclr": ("train.tau_simclr",),
}
DEFAULT_TAUS = {"courier": [0.05, 0.1, 0.2], "simclr": [0.1, 0.2, 0.5]}


def validation_frames(spark, paths):
    """(fit, validation): the CTR-train rows before / on its last day."""
    from pyspark.sql import functions as F

    from courier_spark.evaluate.ctr_frames import ctr_base_frame
    from courier_spark.core.tables import read_table
    ts = read_table(spark, paths.ctr_samples).select("event_id", F.to_date("event_ts").alias("day"))
    base = ctr_base_frame(spark, paths).filter(F.col("split") == "train").join(ts, "event_id").toPandas()
    base["label"] = base["label"].astype(np.int64)
    base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
    last = base["day"].max()
    fit = base[base["day"] < last].reset_index(drop=True)
    val = base[base["day"] == last].reset_index(drop=True)
    if fit.empty or val.empty:
        raise SystemExit("the CTR-train window needs at least two days for a validation day")
    return fit, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="a dataset root after `courier pipeline --until samples`")
    ap.add_argument("--courier-taus", type=float, nargs="+", default=DEFAULT_TAUS["courier"])
    ap.add_argument("--simclr-taus", type=float, nargs="+", default=DEFAULT_TAUS["simclr"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--known", nargs="*", default=[], metavar="METHOD:TAU=VERSION",
                    help="trainings already made (e.g. courier:0.05=courier/v0003): not retrained")
    args = ap.parse_args()
    taus = {"courier": args.courier_taus, "simclr": args.simclr_taus}
    if len(taus["courier"]) != len(taus["simclr"]):
        ap.error("equal budgets: give both methods the same number of temperatures")

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
    from courier_spark.evaluate.cluster_variants import kmeans_clusters, paired_difference, with_cluster_ids
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    from courier_spark.evaluate.metrics import auc, gauc
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table

    t0 = time.perf_counter()
    extra = [x for kv in args.set for x in ("--set", kv)]
    versions = {}
    for k in args.known:
        key, mv = k.split("=")
        m, tau = key.split(":")
        versions[(m, float(tau))] = mv
    for method, grid in taus.items():
        for tau in grid:
            if (method, tau) in versions:
                continue
            sets = [*extra, *(x for key in GRIDS[method] for x in ("--set", f"{key}={tau}"))]
            versions[(method, tau)] = train_embed_cluster(args.root, [method], sets)[method]
    cfg = load_config(DEMO_CONFIG, args.set)
    spark = get_spark(cfg.spark)
    p = TablePaths.for_root(args.root)
    items = read_table(spark, p.silver_items).select("item_id", "category", "title").toPandas()
    fit, val = validation_frames(spark, p)
    y = val["label"].to_numpy()

    def run(tr, va, feature: str, seed: int) -> tuple[float, float]:
        s = score_dnn(train_dnn(tr, feature, cfg.evaluate.dnn, seed, items=items), va)
        return auc(y, s), gauc(y, s, va["request_id"], cfg.evaluate.gauc_weighting).value

    base = [run(fit, val, "none", s) for s in args.seeds]
    print(f"\n[screen] fit {len(fit)} rows, validation day {len(val)} rows; baseline AUC "
          f"{np.mean([b[0] for b in base]):.4f} GAUC {np.mean([b[1] for b in base]):.4f}", flush=True)
    best = {}
    print("\n| method | tau | model version | AUC lift (validation) | GAUC lift (validation) |")
    print("|---|---:|---|---:|---:|")
    for (method, tau), mv in versions.items():
        ids, x = embeddings_to_numpy(read_embeddings(spark, p.item_embeddings, mv))
        runs = []
        for i, s in enumerate(args.seeds):
            cl = kmeans_clusters(ids, x, cfg.cluster.k, cfg.cluster.seed + i)
            runs.append(run(with_cluster_ids(fit, cl), with_cluster_ids(val, cl), "cluster_id", s))
        la = paired_difference([100 * (r[0] / b[0] - 1) for r, b in zip(runs, base)], [0.0] * len(runs))
        lg = paired_difference([100 * (r[1] / b[1] - 1) for r, b in zip(runs, base)], [0.0] * len(runs))
        print(f"| {method} | {tau:g} | {mv} | {la} % | {lg} % |", flush=True)
        if method not in best or lg.mean > best[method][1]:
            best[method] = (tau, lg.mean)
    print()
    for method, (tau, g) in best.items():
        print(f"[screen] {method}: best validation GAUC lift {g:+.3f} % at tau {tau:g} "
              f"(set {', '.join(GRIDS[method])})")
    print(f"[screen] {len(versions)} trainings, {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()

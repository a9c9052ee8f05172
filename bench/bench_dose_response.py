"""Dose-response: COURIER's cluster-ID lift against SimCLR, generic and
random-init as the share of the click-relevant look that text reveals goes
from none to most, with nuisance off and on.

For every world point (``synthetic.text_share`` x ``synthetic.nuisance``; all
other settings are the pre-registered default world's) it builds a dataset
root, trains every method once per encoder seed (``courier comparisons``),
clusters each encoder with every k-means seed in memory, and trains the DNN
CTR model on each (encoder seed, k-means seed) with CTR seed = the k-means
seed's index, paired with the baseline at the same CTR seed (the DNN, and
LightGBM too with ``--model-kinds dnn lgbm``). Differences are paired over
encoder seeds x k-means seeds; "real" = two-sided paired t-test p < 0.05. Prints a table per point, then the dose-response table
(GAUC lift differences), and how long it all took. Re-running reuses finished
roots and trained versions (``--base`` keeps them).

    .venv/bin/python bench/bench_dose_response.py --base /tmp/dose \\
        --text-shares 0 0.3 0.6 0.9 --nuisance 0 1 --encoder-seeds 0 1 2 --kmeans-seeds 1234 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _runs import courier, train_embed_cluster  # noqa: E402  (bench/ is the script dir)


def point_root(base: str, text_share: float, nuisance: float) -> str:
    return os.path.join(base, f"text{text_share:g}_nuisance{nuisance:g}")


def build_point(root: str, sets: list[str], methods: list[str], encoder_seeds: list[int]) -> dict:
    """Samples, then every method trained once per encoder seed -> {method: [model versions]}."""
    state_path = Path(root) / "_dose_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"samples": False, "versions": {}}
    if not state["samples"]:
        courier("pipeline", "--root", root, "--until", "samples", *sets)
        state["samples"] = True
        state_path.write_text(json.dumps(state))
    for e in encoder_seeds:
        missing = [m for m in methods if str(e) not in state["versions"].get(m, {})]
        if not missing:
            continue
        for m, mv in train_embed_cluster(root, missing, [*sets, "--set", f"train.seed={e}"]).items():
            state["versions"].setdefault(m, {})[str(e)] = mv
        state_path.write_text(json.dumps(state))
    return {m: [state["versions"][m][str(e)] for e in encoder_seeds] for m in methods}


def evaluate_point(spark, root: str, cfg, versions: dict, kmeans_seeds: list[int], k: int,
                   kind: str = "dnn") -> dict:
    """{variant: {"auc": [...], "gauc": [...]}} of CTR model ``kind`` (dnn | lgbm)
    with runs in (encoder seed, k-means seed) order; the baseline's list holds
    one run per CTR seed (= k-means seed index)."""
    from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
    from courier_spark.evaluate.cluster_variants import kmeans_clusters, with_cluster_ids
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    from courier_spark.evaluate.lgbm import score_lgbm, train_lgbm
    from courier_spark.evaluate.ctr_frames import ctr_base_frame
    from courier_spark.evaluate.metrics import auc, gauc
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.tables import read_table

    p = TablePaths.for_root(root)
    base = ctr_base_frame(spark, p).toPandas()
    base["label"] = base["label"].astype(np.int64)
    base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
    items = read_table(spark, p.silver_items).select("item_id", "category", "title").toPandas()
    train = base[base["split"] == "train"].reset_index(drop=True)
    test = base[base["split"] == "test"].reset_index(drop=True)
    y = test["label"].to_numpy()

    def run(tr, te, feature: str, seed: int) -> tuple[float, float]:
        if kind == "dnn":
            s = score_dnn(train_dnn(tr, feature, cfg.evaluate.dnn, seed, items=items), te)
        else:
            s = score_lgbm(train_lgbm(tr, feature, seed, cfg.evaluate.lgbm, items=items), te)
        return auc(y, s), gauc(y, s, te["request_id"], cfg.evaluate.gauc_weighting).value

    out = {"baseline": {"auc": [], "gauc": []}}
    for j in range(len(kmeans_seeds)):
        a, g = run(train, test, "none", j)
        out["baseline"]["auc"].append(a)
        out["baseline"]["gauc"].append(g)
    for m, mvs in versions.items():
        out[m] = {"auc": [], "gauc": [], "baseline_index": []}
        for mv in mvs:
            ids, x = embeddings_to_numpy(read_embeddings(spark, p.item_embeddings, mv))
            for j, ks in enumerate(kmeans_seeds):
                cl = kmeans_clusters(ids, x, k, ks)
                a, g = run(with_cluster_ids(train, cl), with_cluster_ids(test, cl), "cluster_id", j)
                out[m]["auc"].append(a)
                out[m]["gauc"].append(g)
                out[m]["baseline_index"].append(j)
                print(f"[dose] {root}: {kind} {m} {mv} k-means seed {ks}: AUC {a:.4f} GAUC {g:.4f}", flush=True)
    return out


def lift_pct(runs: dict, m: str, metric: str) -> np.ndarray:
    """Per paired run: relative lift in % over the baseline at the same CTR seed."""
    b = np.asarray(runs["baseline"][metric])[runs[m]["baseline_index"]]
    return 100 * (np.asarray(runs[m][metric]) / b - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="folder for one dataset root per world point")
    ap.add_argument("--text-shares", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9])
    ap.add_argument("--nuisance", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--encoder-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kmeans-seeds", type=int, nargs="+", default=[1234, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["courier", "simclr", "generic", "random_init"])
    ap.add_argument("--model-kinds", nargs="+", default=["dnn"], choices=["dnn", "lgbm"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every point (e.g. train.steps=100 for a quick look)")
    args = ap.parse_args()
    if args.methods[0] != "courier":
        ap.error("--methods must start with courier (differences are COURIER minus each other method)")

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.evaluate.cluster_variants import paired_difference
    from courier_spark.core.spark import get_spark

    t0 = time.perf_counter()
    extra = [x for kv in args.set for x in ("--set", kv)]
    table = []
    spark = None
    for nu in args.nuisance:
        for ts in args.text_shares:
            sets = ["--set", f"synthetic.text_share={ts}", "--set", f"synthetic.nuisance={nu}", *extra]
            root = point_root(args.base, ts, nu)
            tp = time.perf_counter()
            versions = build_point(root, sets, args.methods, args.encoder_seeds)
            cfg = load_config(DEMO_CONFIG, [s for s in sets if s != "--set"])
            spark = spark or get_spark(cfg.spark)
            for kind in args.model_kinds:
                runs = evaluate_point(spark, root, cfg, versions, args.kmeans_seeds, cfg.cluster.k, kind)
                Path(root, f"_dose_runs_{kind}.json").write_text(json.dumps(runs))
                row = {"text_share": ts, "nuisance": nu, "model": kind, "seconds": time.perf_counter() - tp}
                print(f"\n[dose] text_share={ts:g} nuisance={nu:g} {kind} ({len(args.encoder_seeds)} encoder x "
                      f"{len(args.kmeans_seeds)} k-means seeds):", flush=True)
                for m in args.methods:
                    for metric in ("auc", "gauc"):
                        d = paired_difference(lift_pct(runs, m, metric), np.zeros(len(runs[m][metric])))
                        row[f"{m}_{metric}_lift"] = d
                    print(f"  {m:16s} AUC lift {row[f'{m}_auc_lift']} %  GAUC lift {row[f'{m}_gauc_lift']} %")
                for m in args.methods[1:]:
                    for metric in ("auc", "gauc"):
                        row[f"minus_{m}_{metric}"] = paired_difference(lift_pct(runs, "courier", metric),
                                                                       lift_pct(runs, m, metric))
                    print(f"  courier - {m}: AUC lift {row[f'minus_{m}_auc']}, GAUC lift {row[f'minus_{m}_gauc']} points")
                table.append(row)
    print("\n## Dose-response (GAUC lift, % points; paired over encoder x k-means seeds; p: paired t-test)\n")
    head = ["model", "nuisance", "text share", "courier lift"] + [f"courier - {m}" for m in args.methods[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        cells = [r["model"], f"{r['nuisance']:g}", f"{r['text_share']:g}", str(r["courier_gauc_lift"])]
        cells += [str(r[f"minus_{m}_gauc"]) for m in args.methods[1:]]
        print("| " + " | ".join(cells) + " |")
    print(f"\n[dose] {len(table)} world points in {(time.perf_counter() - t0) / 60:.1f} min "
          "(" + ", ".join(f"{r['seconds'] / 60:.1f}" for r in table) + " min each)")


if __name__ == "__main__":
    main()

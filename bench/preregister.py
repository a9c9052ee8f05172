"""Pre-registration: is this world able to tell COURIER from generic image features?

Computed from the hidden truth (``_synthetic_truth/``) of a dataset root that
has been through ``courier pipeline --until samples``, before any encoder
trains, and involving no method's result:

1. the world: impressions per item, items new on the test day;
2. oracle cluster IDs pushed through the same CTR models and the same
   evaluation code as the methods (``evaluate_variants``): one perfect cluster
   per value of the hidden taste factor (the print), of each text-revealed
   factor (the colour the title names, the category's silhouette), of the
   nuisance (the brand's backdrop; the brand is in the title), and of the
   whole click-relevant look (colour x print); lifts on AUC and GAUC over the
   baseline, overall and on items new on the test day;
3. how well the true taste similarity separates a clicked page-view item from
   an in-batch candidate (COURIER's own task): AUC of the true similarity of
   the positive vs a random other row's item to the row's click history, and
   of the user's true look preference.

The checks the world must pass (``CHECKS``) are fixed here, before any method
ran. Writes the printed report to ``--out`` (markdown) as well.

    .venv/bin/courier pipeline --root /tmp/w2 --until samples
    .venv/bin/python bench/preregister.py --root /tmp/w2 --out bench/results/preregistration.md
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

# Pre-registered pass criteria (issue 13), relative lift in % over the baseline.
CHECKS = {
    "taste_min_lift_pct": 2.0,        # hidden click-relevant factor: >= +2 % AUC and GAUC
    "neutral_max_abs_lift_pct": 0.2,  # text-revealed and nuisance factors: within +-0.2 %
    "separation_min_auc": 0.60,       # true taste similarity, positive vs in-batch candidate
}
ORACLES = (  # (variant, truth column(s), cell of the 2 x 2)
    ("oracle_taste", ("pattern",), "hidden, drives clicks"),
    ("oracle_colour", ("colour",), "said by the title, drives clicks"),
    ("oracle_silhouette", ("shape",), "said by the category, no clicks"),
    ("oracle_nuisance", ("backdrop",), "brand backdrop (brand in title), no clicks"),
    ("oracle_look", ("colour", "pattern"), "colour x print (the whole click-relevant look)"),
)


def item_similarity(params, a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """True look similarity of item rows a[i] and b[i] (the click model's look
    term with item b standing in for the user's favourites)."""
    from courier_spark.data.synthetic.marketplace import look_match
    cols = ["colour", "pattern", "shape"]
    return look_match(params, b[cols].to_numpy(), a[cols].to_numpy())


def taste_separation(params, pre: pd.DataFrame, truth: pd.DataFrame, users: pd.DataFrame,
                     seed: int = 0) -> dict[str, float]:
    """AUC of positive vs in-batch candidate under (a) mean true similarity to
    the row's history, (b) the user's true preference."""
    from courier_spark.evaluate.metrics import auc
    from courier_spark.data.synthetic.marketplace import look_match
    rng = np.random.default_rng(seed)
    f = truth.set_index("item_id")[["colour", "pattern", "shape"]]
    pos = [(r, int(i)) for r, (ids, lab) in enumerate(zip(pre["pv_item_ids"], pre["pv_labels"]))
           for i, l in zip(ids, lab) if l == 1]
    rows = np.array([r for r, _ in pos])
    pos_items = np.array([i for _, i in pos])
    # candidate: a shown item of another random row (the in-batch negatives)
    other = (rows + rng.integers(1, len(pre), size=len(rows))) % len(pre)
    cand_items = np.array([pre["pv_item_ids"].iloc[o][rng.integers(len(pre["pv_item_ids"].iloc[o]))]
                           for o in other])
    hist = pre["hist_item_ids"].to_numpy()

    def hist_sim(items: np.ndarray) -> np.ndarray:
        lens = np.array([len(hist[r]) for r in rows])
        h = np.concatenate([np.asarray(hist[r], np.int64) for r in rows])
        t = np.repeat(items, lens)
        s = item_similarity(params, f.loc[t].reset_index(), f.loc[h].reset_index())
        return np.add.reduceat(s, np.r_[0, np.cumsum(lens)[:-1]]) / lens

    u = users.set_index("user_id")[["fav_colour", "fav_pattern", "fav_shape"]]
    uid = pre["user_id"].to_numpy()[rows]

    def user_sim(items: np.ndarray) -> np.ndarray:
        return look_match(params, u.loc[uid].to_numpy(), f.loc[items].to_numpy())

    y = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
    return {"history_similarity_auc": auc(y, np.r_[hist_sim(pos_items), hist_sim(cand_items)]),
            "user_preference_auc": auc(y, np.r_[user_sim(pos_items), user_sim(cand_items)]),
            "n_positives": float(len(rows))}


def main() -> None:
    from courier_spark.core.config import DEMO_CONFIG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--config", default=str(DEMO_CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--model-kinds", nargs="*", default=["dnn", "lgbm"])
    ap.add_argument("--out", default=None, help="also write the report here (markdown)")
    args = ap.parse_args()

    from courier_spark.core.config import load_config
    from courier_spark.evaluate.cluster_variants import factor_clusters, with_cluster_ids
    from courier_spark.evaluate.ctr_frames import ctr_base_frame
    from courier_spark.evaluate.metrics import auc
    from courier_spark.evaluate.runner import evaluate_variants
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table

    t0 = time.perf_counter()
    cfg = load_config(args.config, args.set)
    spark = get_spark(cfg.spark)
    p = TablePaths.for_root(args.root)
    truth = read_table(spark, p.truth_item_factors).toPandas()
    users = read_table(spark, p.truth_user_tastes).toPandas()
    items = read_table(spark, p.silver_items).select("item_id", "category", "title").toPandas()
    pre = read_table(spark, p.pretrain_samples).select("user_id", "pv_item_ids", "pv_labels",
                                                       "hist_item_ids").toPandas()
    base = ctr_base_frame(spark, p).toPandas()
    base["label"] = base["label"].astype(np.int64)
    base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
    lines: list[str] = []

    def out(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    syn = cfg.synthetic
    out(f"# Pre-registration of world {syn.world} (seed {syn.seed})")
    out()
    out("Settings: " + ", ".join(f"{k}={getattr(syn, k)}" for k in (
        "n_users", "n_items", "n_days", "text_share", "title_colour_rate", "nuisance", "new_item_share",
        "w_visual", "image_size")))
    test = base[base["split"] == "test"]
    new_items = set(truth.loc[truth.get("release_day", pd.Series(0, index=truth.index)) > 0, "item_id"])
    imps_per_item = base.groupby("item_id").size()
    out(f"CTR rows: train {int((base['split'] == 'train').sum())}, test {len(test)}; "
        f"impressions per item in the CTR windows: median {imps_per_item.median():.0f}; "
        f"test rows on items new that day: {int(test['item_id'].isin(new_items).sum())} "
        f"({100 * test['item_id'].isin(new_items).mean():.1f} %)")

    frames, variants = {}, [("baseline", "none")]
    train_df = base[base["split"] == "train"].reset_index(drop=True)
    test_df = base[base["split"] == "test"].reset_index(drop=True)
    frames["baseline"] = (train_df, test_df)
    for name, cols, _ in ORACLES:
        clusters = factor_clusters(truth, cols)
        frames[name] = (with_cluster_ids(train_df, clusters), with_cluster_ids(test_df, clusters))
        variants.append((name, "cluster_id"))
    results, preds = evaluate_variants(frames, variants, args.model_kinds, args.seeds, cfg.evaluate,
                                       items=items)
    out()
    out(f"## Oracle cluster IDs through the CTR models ({len(args.seeds)} seeds; lift = relative % over the baseline)")
    out()
    out("| variant | cell | model | AUC | AUC lift | GAUC lift | real (AUC / GAUC) | new-item AUC lift |")
    out("|---|---|---|---:|---:|---:|---|---:|")
    preds["new"] = preds["event_id"].map(dict(zip(test_df["event_id"], test_df["item_id"].isin(new_items))))
    new_auc = {(v, k): auc(g.loc[g["new"], "label"], g.loc[g["new"], "score"]) if g["new"].any() else float("nan")
               for (v, k), g in preds.groupby(["variant", "model_kind"])}
    cell = {n: c for n, _, c in ORACLES}
    lifts: dict[tuple[str, str], tuple[float, float]] = {}
    for _, r in results.iterrows():
        nb = new_auc[("baseline", r["model_kind"])]
        nl = 100 * (new_auc[(r["variant"], r["model_kind"])] / nb - 1)
        lifts[(r["variant"], r["model_kind"])] = (r["lift_auc_pct"], r["lift_gauc_pct"])
        out(f"| {r['variant']} | {cell.get(r['variant'], '')} | {r['model_kind']} | {r['auc']:.4f} +- "
            f"{r['auc_std']:.4f} | {r['lift_auc_pct']:+.2f} % | {r['lift_gauc_pct']:+.2f} % | "
            f"{r['real']} / {r['real_gauc']} | {nl:+.2f} % |")
    sep = taste_separation(syn, pre, truth, users)
    out()
    out(f"## COURIER's task with the true taste ({int(sep['n_positives'])} positives vs in-batch candidates)")
    out()
    out(f"AUC, mean true similarity to the row's click history: {sep['history_similarity_auc']:.4f}; "
        f"AUC, the user's true look preference: {sep['user_preference_auc']:.4f}")
    out()
    out("## Checks (fixed before any method ran)")
    out()
    ok_all = True
    for kind in args.model_kinds:
        a, g = lifts[("oracle_taste", kind)]
        ok = a >= CHECKS["taste_min_lift_pct"] and g >= CHECKS["taste_min_lift_pct"]
        ok_all &= ok
        out(f"* {kind}: hidden taste clusters AUC {a:+.2f} %, GAUC {g:+.2f} % "
            f">= +{CHECKS['taste_min_lift_pct']} %: {'PASS' if ok else 'FAIL'}")
        for name in ("oracle_colour", "oracle_silhouette", "oracle_nuisance"):
            a, g = lifts[(name, kind)]
            lim = CHECKS["neutral_max_abs_lift_pct"]
            ok = abs(a) <= lim and abs(g) <= lim
            ok_all &= ok
            out(f"* {kind}: {name} AUC {a:+.2f} %, GAUC {g:+.2f} % within +-{lim} %: {'PASS' if ok else 'FAIL'}")
    ok = sep["history_similarity_auc"] >= CHECKS["separation_min_auc"]
    ok_all &= ok
    out(f"* taste separation {sep['history_similarity_auc']:.4f} >= {CHECKS['separation_min_auc']}: "
        f"{'PASS' if ok else 'FAIL'}")
    out()
    out(f"World {'PASSES' if ok_all else 'FAILS'} the pre-registered checks "
        f"({time.perf_counter() - t0:.0f} s).")
    if args.out:
        from courier_spark.core import fs
        fs.write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

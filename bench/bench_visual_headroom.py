"""How much can image features add on this data, and what do the encoders see?

Prints, for a dataset root made by the pipeline (synthetic data: it reads the
hidden truth in ``_synthetic_truth/``, which the pipeline itself never does):

1. headroom: LightGBM and DNN test AUC (mean over ``--seeds``) without image
   features vs with *perfect* SimScores (the true taste-factor similarity of
   the target item with each of its latest K clicks) and vs *perfect* cluster
   IDs (one cluster per true look: colour x pattern x shape, over the whole
   behaviour sequence) - the ceilings for history features;
2. linear probes: 3-fold accuracy of recovering each hidden factor (colour,
   pattern, shape, and the click-irrelevant brand backdrop where the data has
   one) from a random-init encoder and from the given model versions;
3. with ``--cluster-ks``: the DNN AUC lift of each encoder's k-means cluster
   IDs for every k and ``--kmeans-seeds`` seed, with the clusters' purity in
   each look factor. The k-means seed alone moves a lift by about as much as
   the differences between encoders, so compare encoders over several seeds.

    .venv/bin/python bench/bench_visual_headroom.py --root /tmp/full --models courier/v0001 simclr/v0001
    .venv/bin/python bench/bench_visual_headroom.py --root /tmp/full --models courier/v0001 simclr/v0001 \
        --cluster-ks 16 64 --kmeans-seeds 1234 99
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch


def factor_similarity(truth: pd.DataFrame, k: int, frame: pd.DataFrame, n_colours: int) -> list:
    """Per row: [K] taste-factor similarity of item_id with its latest K history clicks
    (same scoring as the synthetic click model: colour 1 / 0.5 for a neighbour, pattern, shape)."""
    f = {i: (c, p, s) for i, c, p, s in zip(truth["item_id"], truth["colour"], truth["pattern"], truth["shape"])}

    def sim(a: int, b: int) -> float:
        (c1, p1, s1), (c2, p2, s2) = f[a], f[b]
        d = min((c1 - c2) % n_colours, (c2 - c1) % n_colours)
        return ((1.0 if d == 0 else 0.5 if d == 1 else 0.0) + (p1 == p2) + (s1 == s2)) / 3

    out = []
    for t, h in zip(frame["item_id"], frame["hist_item_ids"]):
        row = np.full(k, np.nan, np.float32)
        for j, x in enumerate(list(h)[::-1][:k]):
            if t in f and x in f:
                row[j] = sim(t, x)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=[], help="model versions to probe, e.g. courier/v0001")
    ap.add_argument("--probe-items", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--cluster-ks", type=int, nargs="*", default=[],
                    help="also measure each encoder's k-means cluster IDs in the DNN at these k")
    ap.add_argument("--kmeans-seeds", type=int, nargs="*", default=[1234])
    args = ap.parse_args()

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    from courier_spark.evaluate.ctr_frames import ctr_base_frame, sequence_cluster_ids
    from courier_spark.evaluate.lgbm import score_lgbm, train_lgbm
    from courier_spark.evaluate.metrics import auc
    from courier_spark.features.cluster import l2_normalise, nearest_centroids, train_kmeans
    from courier_spark.evaluate.probes import LOOK_FACTORS, linear_probe_accuracy, probe_factors
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.data.synthetic.images import COLOURS
    from courier_spark.core.tables import read_table
    from training.artifact import load_artifact
    from training.backbones import build_backbone
    from training.images import decode_image

    spark = get_spark(load_config(DEMO_CONFIG).spark)
    p = TablePaths.for_root(args.root)
    truth = read_table(spark, p.truth_item_factors).toPandas()
    base = ctr_base_frame(spark, p).toPandas()
    base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
    base["sim_scores"] = factor_similarity(truth, args.k, base, len(COLOURS))
    look = pd.Series((truth["colour"] * 100 + truth["pattern"] * 10 + truth["shape"]).to_numpy(np.int64),
                     index=truth["item_id"].to_numpy(np.int64))

    def with_clusters(clusters: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, test) with the target's and the whole sequence's cluster IDs from `clusters`."""
        df = base.copy()
        df["target_cluster_id"] = clusters.reindex(df["item_id"].to_numpy(np.int64)).fillna(-1).to_numpy(np.int64)
        df["hist_cluster_ids"] = sequence_cluster_ids(df["hist_item_ids"], clusters)
        return df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "test"].reset_index(drop=True)

    def aucs(kind: str, train: pd.DataFrame, test: pd.DataFrame, feature: str) -> np.ndarray:
        """Test AUC of model `kind` with image feature `feature`, one per seed."""
        y = test["label"].to_numpy()
        if kind == "lgbm":
            return np.array([auc(y, score_lgbm(train_lgbm(train, feature, s), test)) for s in args.seeds])
        return np.array([auc(y, score_dnn(train_dnn(train, feature, None, s), test)) for s in args.seeds])

    train, test = with_clusters(look)
    for kind in ("lgbm", "dnn"):
        a = {f: aucs(kind, train, test, f) for f in ("none", "simscore", "cluster_id")}
        dnn_none = a["none"]  # dnn last: the reference for the encoders' cluster IDs below
        print(f"headroom {kind} ({len(args.seeds)} seeds): AUC without image features "
              f"{a['none'].mean():.4f} +- {a['none'].std(ddof=1) if len(args.seeds) > 1 else 0:.4f}; "
              + "; ".join(f"perfect {n} {a[f].mean():.4f} ({100 * (a[f].mean() / a['none'].mean() - 1):+.2f} %)"
                          for f, n in (("simscore", "SimScores"), ("cluster_id", "cluster IDs"))), flush=True)

    items = (read_table(spark, p.silver_items).filter("image is not null").select("item_id", "image")
             .orderBy("item_id").toPandas())  # all items: clustering needs them; probes use the first ones
    labels = truth.set_index("item_id").loc[items["item_id"]]
    torch.manual_seed(0)  # the random-init reference is the same network on every run
    encoders = [("random-init small_cnn", build_backbone("small_cnn", 256, None), 48)]
    for mv in args.models:
        method, version = mv.split("/")
        art = load_artifact(p.models, method, version)
        encoders.append((mv, art.load_encoder(), art.image_size))
    for name, enc, size in encoders:
        x = torch.from_numpy(np.stack([decode_image(b, size) for b in items["image"]]))
        with torch.no_grad():
            emb = torch.cat([enc.eval()(x[i:i + 512]) for i in range(0, len(x), 512)]).numpy()
        n = args.probe_items
        acc = linear_probe_accuracy(emb[:n], labels.iloc[:n], probe_factors(truth))
        print(f"probe {name}: " + " ".join(f"{f}={v:.3f}" for f, v in acc.items()), flush=True)
        unit = l2_normalise(emb)
        for k in args.cluster_ks:
            for ks in args.kmeans_seeds:
                ids, _ = nearest_centroids(unit, train_kmeans(unit, k, seed=ks, nredo=3)[0])
                a = aucs("dnn", *with_clusters(pd.Series(ids, index=items["item_id"].to_numpy(np.int64))), "cluster_id")
                purity = {f: pd.Series(labels[f].to_numpy()).groupby(ids).agg(lambda v: v.value_counts().iloc[0]).sum()
                          / len(ids) for f in LOOK_FACTORS}
                print(f"clusters {name} k={k} kmeans seed {ks}: DNN AUC {a.mean():.4f} +- "
                      f"{a.std(ddof=1) if len(a) > 1 else 0:.4f} ({100 * (a.mean() / dnn_none.mean() - 1):+.2f} %); "
                      "purity " + " ".join(f"{f}={v:.3f}" for f, v in purity.items()), flush=True)


if __name__ == "__main__":
    main()

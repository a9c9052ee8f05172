"""Learning curves: per method and checkpoint, the method's own loss on
held-out pre-training page views and, on synthetic data only, what its
embeddings know of the hidden look (linear probes of the print and of the
brand backdrop; print and backdrop NMI of k = 64 k-means clusters).

    .venv/bin/python bench/bench_learning_curve.py [--root data/bench-curve] [--steps 800]
        [--every 100] [--methods courier,courier_no_ucs,simclr,supervised,courier_shuffled]
        [--set KEY=VALUE ...] [--out bench/results/learning_curve]

Every method trains once to ``--steps`` with its checkpoints kept
(``train.keep_checkpoints``); step 0 is the shared start (the generic trunk
under ``train.init: generic``). Then the budget rule of
docs/budget-rule.md is applied to the held-out losses alone (no probe, NMI or
CTR number enters it) and the budget it gives is printed. Writes
``<out>.md`` (the table), ``<out>.csv`` and ``<out>.png`` (held-out loss and
print NMI against steps).
"""
from __future__ import annotations

import argparse
import os
import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from _runs import REPO, courier

# --------------------------------------------------------------------------- the pre-registered rule
# docs/budget-rule.md, fixed before any downstream result at the new budget.
FLAT_WINDOW = 200          # steps looked back over
FLAT_SHARE = 0.05          # "flat": the last window's drop is under 5 % of the drop since step 0
BUDGET_CAP = 800           # the most steps the 2-core main command can give a method


def flat_at(curve: list[tuple[int, float]], window: int = FLAT_WINDOW, share: float = FLAT_SHARE) -> int | None:
    """First checkpoint step s >= window where the held-out loss fell by less
    than ``share`` of its whole fall since step 0 over the last ``window``
    steps (a rise counts as flat); None when it never flattens."""
    pts = dict(curve)
    if 0 not in pts:
        return None
    for s in sorted(pts):
        if s < window or (s - window) not in pts:
            continue
        total = pts[0] - pts[s]
        recent = pts[s - window] - pts[s]
        if recent <= 0 or (total > 0 and recent < share * total):
            return s
    return None


def budget(curves: dict[str, list[tuple[int, float]]]) -> tuple[int, dict[str, int | None]]:
    """The common budget: the largest of the methods' flat points, capped;
    a method that never flattens within the curve gets the cap."""
    at = {m: flat_at(c) for m, c in curves.items()}
    return min(BUDGET_CAP, max((s if s is not None else BUDGET_CAP) for s in at.values())), at


# --------------------------------------------------------------------------- what the embeddings know
def item_pixels(spark, root: str, size: int):
    from courier_spark.core.paths import TablePaths
    from training.loader import DecodedItems
    pdf = spark.read.format("delta").load(TablePaths.for_root(root).silver_items).select("item_id", "image").toPandas()
    return DecodedItems.decode(pdf["item_id"].to_numpy(np.int64), list(pdf["image"]), size)


@torch.no_grad()
def embed_all(encoder: torch.nn.Module, items, batch: int = 512) -> np.ndarray:
    from training.images import normalise
    encoder.eval()
    rows = np.flatnonzero(items.valid)
    out = [torch.nn.functional.normalize(encoder(normalise(items.pixels[torch.from_numpy(rows[i:i + batch])])), dim=1)
           for i in range(0, len(rows), batch)]
    return torch.cat(out).numpy()


def look_scores(x: np.ndarray, truth: pd.DataFrame, k: int = 64, n_probe: int = 3000) -> dict[str, float]:
    """Probe accuracy (3-fold, ``n_probe`` items) and NMI of k-means clusters for print and backdrop."""
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    from courier_spark.evaluate.probes import linear_probe_accuracy
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(x), size=min(n_probe, len(x)), replace=False))
    factors = [f for f in ("pattern", "backdrop", "colour") if f in truth and truth[f].nunique() > 1]
    acc = linear_probe_accuracy(x[pick], truth.iloc[pick].reset_index(drop=True), factors)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    _, lab = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    out = {f"{f}_probe": acc[f] for f in factors}
    out.update({f"{f}_nmi": float(normalized_mutual_info_score(truth[f], lab[:, 0])) for f in factors})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/bench-curve")
    ap.add_argument("--steps", type=int, default=BUDGET_CAP)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--methods", default="courier,courier_no_ucs,simclr,supervised,courier_shuffled")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(REPO / "bench/results/learning_curve"))
    a = ap.parse_args()
    if "://" not in a.root:
        a.root = os.path.abspath(a.root)   # Spark and petastorm need absolute local paths
    t_start = time.perf_counter()
    from courier_spark.core import fs
    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.evaluate.report import md_table
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.schema import TrainConfig
    from courier_spark.core.spark import get_spark
    from training.artifact import load_artifact
    from training.checkpoints import load_checkpoint
    from training.objectives import build_model, encoder_of
    sets = [x for s in a.sets for x in ("--set", s)]
    p = TablePaths.for_root(a.root)
    if not fs.exists(fs.join(p.pretrain_samples, "_delta_log")):
        courier("pipeline", "--root", a.root, "--until", "samples", *sets)
    methods = [m for m in a.methods.split(",") if m]
    arts = {}
    for m in methods:
        courier("train", "--root", a.root, *sets, "--set", f"train.method={m}", "--set", f"train.steps={a.steps}",
                "--set", f"train.checkpoint_every={a.every}", "--set", "train.keep_checkpoints=true")
        arts[m] = load_artifact(p.models, m, "latest")
    spark = get_spark(load_config(DEMO_CONFIG, overrides=a.sets).spark)
    truth_path = p.truth_item_factors
    synthetic = fs.exists(fs.join(truth_path, "_delta_log"))
    first = next(iter(arts.values()))
    items = item_pixels(spark, a.root, first.image_size)
    truth = None
    if synthetic:
        t = spark.read.format("delta").load(truth_path).toPandas().set_index("item_id")
        truth = t.loc[items.ids[items.valid]].reset_index()
    rows = []
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    start_scores = None
    for m, art in arts.items():
        cfg = TrainConfig(**{k: v for k, v in art.config.items() if k in fields})
        ckpt_dir = art.metrics.get("checkpoint_dir")
        heldout = dict((int(s), float(v)) for s, v in art.metrics.get("heldout_loss", []))
        for s in sorted(heldout):
            row = {"method": m, "step": s, "heldout_loss": heldout[s],
                   "images_seen": s * cfg.batch_size * cfg.num_proc}
            if truth is not None:
                if s == 0:
                    if start_scores is None:   # the shared start (trunk or seeded init)
                        torch.manual_seed(cfg.seed)
                        start_scores = look_scores(embed_all(encoder_of(build_model(cfg)), items), truth)
                    row.update(start_scores)
                else:
                    model = build_model(cfg)
                    model.load_state_dict(load_checkpoint(fs.join(ckpt_dir, f"step_{s:07d}.pt"))["model"])
                    row.update(look_scores(embed_all(encoder_of(model), items), truth))
            rows.append(row)
            print(f"[bench] {m} step {s}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
        fs.rm(ckpt_dir, recursive=True)
    df = pd.DataFrame(rows)
    steps, flat = budget({m: list(zip(g["step"], g["heldout_loss"])) for m, g in df.groupby("method")})
    elapsed = time.perf_counter() - t_start
    md = [f"# Learning curves ({a.steps} steps, checkpoints every {a.every}; root {a.root})\n",
          f"Bench run time: {elapsed / 60:.1f} min. Settings: {' '.join(a.sets) or 'conf/demo.yaml'}.\n",
          "Held-out loss: the method's own loss on held-out pre-training page views (global-batch-sized "
          "batches, rank 0). Probes: 3-fold logistic regression on 3,000 items; NMI: k = 64 k-means of "
          "all item embeddings against the hidden factor (pattern = the print).\n",
          md_table(df.round(4)), "",
          f"Budget rule (docs/budget-rule.md): flat = the last {FLAT_WINDOW} steps' drop < "
          f"{FLAT_SHARE:.0%} of the drop since step 0; budget = the latest method's flat point, "
          f"capped at {BUDGET_CAP}.\n",
          "\n".join(f"* {m}: flat at {s if s is not None else f'never within {a.steps}'}" for m, s in flat.items()),
          f"\n**Budget: {steps} steps.**\n"]
    fs.write_bytes(a.out + ".md", "\n".join(md).encode())
    df.to_csv(a.out + ".csv", index=False)
    _plot(df, a.out + ".png")
    print("\n".join(md), flush=True)


def _plot(df: pd.DataFrame, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = ["heldout_loss"] + [c for c in ("pattern_nmi", "pattern_probe") if c in df]
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4))
    for ax, c in zip(np.atleast_1d(axes), cols):
        for m, g in df.groupby("method"):
            ax.plot(g["step"], g[c], marker="o", label=m)
        ax.set_xlabel("step")
        ax.set_title(c.replace("pattern", "print"))
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()

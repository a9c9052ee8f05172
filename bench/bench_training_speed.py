"""Training images/s per backend beside the encoder's own forward+backward
images/s on the same cores (issue 21: the stack should reach 0.8 of it).

    .venv/bin/python bench/bench_training_speed.py [--root data/bench-speed] [--steps 60]
        [--backends horovod,torch_distributor,local] [--set KEY=VALUE ...]

Prints, one line each:
* the encoder alone: ``small_cnn`` forward+backward on random images, batch
  640, with as many torch threads as cores (the ceiling), and with one thread;
* the loader alone: indexed batches built from petastorm's id rows and the
  decoded item table, in one process (slots/s and distinct items/s);
* each backend: ``courier train`` on the root (generated up to ``samples``
  when missing) for ``--steps`` steps; the loop's rate from the artifact's
  metrics: image slots/s (what the losses see) and distinct images/s (what
  the encoder computes, each item once a step), and their ratios to the
  encoder's own rate; plus the stage's wall time (start-up included).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from _runs import courier


def encoder_rate(backbone: str, size: int, batch: int, threads: int, reps: int = 6) -> float:
    """Forward+backward images/s of the bare encoder (sum of embeddings as the loss)."""
    from training.backbones import build_backbone
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        enc = build_backbone(backbone, 256)
        opt = torch.optim.Adam(enc.parameters(), 1e-4)
        x = torch.randn(batch, 3, size, size)
        for i in range(reps + 1):
            if i == 1:
                t0 = time.perf_counter()
            opt.zero_grad()
            enc(x).pow(2).sum().backward()
            opt.step()
        return batch * reps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)


def loader_rate(root: str, size: int, batch_size: int, n_batches: int) -> tuple[float, float]:
    """(slots/s, distinct items/s) of ``SampleLoader.batches`` in this process."""
    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table
    from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame
    spark = get_spark(load_config(DEMO_CONFIG).spark)
    p = TablePaths.for_root(root)
    frame = pretrain_training_frame(read_table(spark, p.pretrain_samples), 5, 5)
    loader = SampleLoader.from_frame(frame, read_table(spark, p.silver_items), LoaderSpec(5, 5, size, batch_size),
                                     f"{root}/_cache/petastorm-bench")
    try:
        it = loader.batches(workers=1)
        next(it)   # reader start and the one-off decode of every item
        t0, slots, distinct = time.perf_counter(), 0, 0
        for _, b in zip(range(n_batches), it):
            slots += int(b["pv_mask"].sum() + b["hist_mask"].sum())
            distinct += int(b["items"].shape[0])
        dt = time.perf_counter() - t0
        return slots / dt, distinct / dt
    finally:
        loader.delete()


def step_breakdown(root: str, tcfg, steps: int = 20) -> dict[str, float]:
    """Seconds per step of one worker's work in this process, one torch thread,
    ``train.batch_size`` pages a step: building the indexed batch from id rows,
    the encoder's forward+backward on the batch's distinct items alone, and
    the whole step (COURIER's loss forward+backward and the Adam update,
    no collectives). What a distributed step takes beyond the whole step is
    the collectives and the launch's own overhead."""
    import numpy as np

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table
    from training.loader import load_decoded_items, item_images_frame, pretrain_training_frame
    from training.losses import LocalCollective
    from training.objectives import build_model, compute_loss
    spark = get_spark(load_config(DEMO_CONFIG).spark)
    p = TablePaths.for_root(root)
    from pyspark.sql import functions as F
    # a random sample of page views, as the training shuffle gives (the table's
    # order puts a user's page views together, which shares more items)
    ids = pretrain_training_frame(read_table(spark, p.pretrain_samples), 5, 5).orderBy(F.rand(0)).limit(
        tcfg.batch_size * (steps + 1)).toPandas()
    url = f"{root}/_cache/breakdown-images"
    item_images_frame(read_table(spark, p.silver_items)).coalesce(1).write.mode("overwrite").parquet(url)
    t0 = time.perf_counter()
    items = load_decoded_items(url, tcfg.image_size)
    decode_s = time.perf_counter() - t0
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(tcfg)
        opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
        bs = tcfg.batch_size
        arr = {k: np.stack([np.asarray(v, np.int64) for v in ids[k]]) for k in ("pv_ids", "hist_ids", "pv_labels")}
        t_batch = t_enc = t_step = 0.0
        slots = distinct = 0
        for i in range(steps + 1):
            sl = slice(i * bs, (i + 1) * bs)
            t0 = time.perf_counter()
            b = items.batch(arr["pv_ids"][sl], arr["hist_ids"][sl], arr["pv_labels"][sl])
            t1 = time.perf_counter()
            model.encoder(b["items"]).pow(2).sum().backward()
            opt.zero_grad()
            t2 = time.perf_counter()
            loss, _ = compute_loss(model, b, tcfg, LocalCollective(), i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            if i:   # the first step warms the allocator up
                t_batch, t_enc, t_step = t_batch + t1 - t0, t_enc + t2 - t1, t_step + t3 - t2
                slots += int(b["pv_mask"].sum() + b["hist_mask"].sum())
                distinct += int(b["items"].shape[0])
    finally:
        torch.set_num_threads(prev)
    return {"decode_all_s": decode_s, "items": len(items), "batch_s": t_batch / steps,
            "encoder_s": t_enc / steps, "step_s": t_step / steps, "slots": slots / steps,
            "distinct": distinct / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/bench-speed")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--backends", default="horovod,torch_distributor")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    if "://" not in a.root:
        a.root = os.path.abspath(a.root)   # Spark and petastorm need absolute local paths
    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.core import fs
    from training.artifact import load_artifact
    cfg = load_config(DEMO_CONFIG, overrides=a.sets)
    tcfg = cfg.train.resolved()
    sets = [x for s in a.sets for x in ("--set", s)]
    if not fs.exists(fs.join(TablePaths.for_root(a.root).pretrain_samples, "_delta_log")):
        courier("pipeline", "--root", a.root, "--until", "samples", *sets)
    cores = os.cpu_count() or 1
    own = encoder_rate(tcfg.backbone, tcfg.image_size, 640, cores)
    own1 = encoder_rate(tcfg.backbone, tcfg.image_size, 640, 1)
    print(f"[bench] encoder {tcfg.backbone}@{tcfg.image_size}px forward+backward, batch 640: "
          f"{own:.0f} images/s on {cores} threads, {own1:.0f} on 1", flush=True)
    slots, distinct = loader_rate(a.root, tcfg.image_size, tcfg.batch_size, 40)
    print(f"[bench] loader alone (1 process, batch {tcfg.batch_size} pages): {slots:.0f} slots/s, "
          f"{distinct:.0f} distinct images/s", flush=True)
    bd = step_breakdown(a.root, tcfg)
    print(f"[bench] one worker, 1 thread, {tcfg.batch_size} pages a step ({bd['slots']:.0f} image slots, "
          f"{bd['distinct']:.0f} distinct): indexed batch {1000 * bd['batch_s']:.0f} ms, encoder "
          f"forward+backward of the distinct items {1000 * bd['encoder_s']:.0f} ms, whole step (loss, "
          f"backward, Adam) {1000 * bd['step_s']:.0f} ms; decoding all {bd['items']} item images once: "
          f"{bd['decode_all_s']:.1f} s", flush=True)
    rows = []
    for backend in [b for b in a.backends.split(",") if b]:
        t0 = time.perf_counter()
        courier("train", "--root", a.root, *sets, "--set", f"train.backend={backend}",
                "--set", f"train.steps={a.steps}", "--set", f"train.checkpoint_every={a.steps}",
                "--set", "train.method=courier")
        wall = time.perf_counter() - t0
        m = load_artifact(TablePaths.for_root(a.root).models, "courier", "latest").metrics
        rows.append((backend, m["images_per_s"], m["distinct_images_per_s"], m["loop_seconds"], wall))
    print(f"\n| backend | slots/s | distinct images/s | distinct / encoder ({own:.0f}/s) | slots / encoder "
          f"| loop s ({a.steps} steps) | stage s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for backend, s, d, loop_s, wall in rows:
        print(f"| {backend} | {s:.0f} | {d:.0f} | {d / own:.2f} | {s / own:.2f} | {loop_s:.1f} | {wall:.0f} |")


if __name__ == "__main__":
    main()

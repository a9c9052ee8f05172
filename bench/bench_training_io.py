"""Loader images/s (petastorm read + decode + resize + normalise) versus model
images/s (forward + backward of the COURIER model) on this machine, so one can
see which is the bottleneck. With a GPU, also swin_t at 224 px with and
without mixed precision.

    .venv/bin/courier pipeline --root /tmp/courier-bench/x1 --until samples   # once
    .venv/bin/python bench/bench_training_io.py --root /tmp/courier-bench/x1 [--backbone small_cnn]
"""
from __future__ import annotations

import argparse
import time

import torch

from courier_spark.config import load_config
from courier_spark.paths import TablePaths
from courier_spark.spark import get_spark
from courier_spark.tables import read_table
from training.backbones import default_image_size
from training.gradcheck import make_batch
from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame
from training.losses import courier_loss
from training.model import CourierModel


def images_in(batch: dict) -> int:
    return int(batch["pv_mask"].sum() + batch["hist_mask"].sum())


def loader_rate(root: str, size: int, batch_size: int, n_batches: int, workers: int) -> float:
    spark = get_spark(load_config().spark)
    p = TablePaths.for_root(root)
    frame = pretrain_training_frame(read_table(spark, p.pretrain_samples), 5, 5)
    loader = SampleLoader.from_frame(frame, read_table(spark, p.silver_items), LoaderSpec(5, 5, size, batch_size),
                                     f"{root}/_cache/petastorm")
    try:
        it = loader.batches(workers=workers)
        n = images_in(next(it))  # warm-up: reader pool start
        t0, n = time.perf_counter(), 0
        for _, b in zip(range(n_batches), it):
            n += images_in(b)
        return n / (time.perf_counter() - t0)
    finally:
        loader.delete()


def model_rate(backbone: str, size: int, batch_size: int, steps: int, amp: bool, device: str) -> float:
    model = CourierModel.from_backbone(backbone, 256).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    batch = {k: v.to(device) for k, v in make_batch(batch_size, size=size).items()}
    scaler = torch.amp.GradScaler(enabled=amp and device == "cuda")
    n, t0 = 0, None
    for i in range(steps + 1):
        if i == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=amp):
            out = model(batch["pv_images"], batch["pv_mask"], batch["hist_images"], batch["hist_mask"])
            loss, _ = courier_loss(out, batch)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n += images_in(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--loader-workers", type=int, default=2)
    a = ap.parse_args()
    size = default_image_size(a.backbone)
    lr = loader_rate(a.root, size, a.batch_size, a.batches, a.loader_workers)
    torch.set_num_threads(2)
    mr = model_rate(a.backbone, size, a.batch_size, 5, False, "cpu")
    print(f"\nloader: {lr:8.1f} images/s ({a.loader_workers} reader workers, {size}px decode+resize+normalise)")
    print(f"model:  {mr:8.1f} images/s ({a.backbone}@{size}px forward+backward, CPU, 2 threads)")
    print(f"loader/model ratio {lr / mr:.2f} ({'loader is NOT' if lr > mr else 'loader IS'} the bottleneck)")
    if torch.cuda.is_available():
        for amp in (False, True):
            r = model_rate("swin_t", 224, a.batch_size, 10, amp, "cuda")
            print(f"GPU swin_t@224 {'fp16 autocast' if amp else 'fp32'}: {r:.1f} images/s")
    else:
        print("no GPU here: swin_t@224 figures need a CUDA host")


if __name__ == "__main__":
    main()

"""A tiny real training run for the kill-and-resume test (run as a subprocess).

``python -m tests.reliability.train_proc CKPT_DIR STEPS`` runs
``training.train.train_worker`` (the real loop, checkpoints and resume logic)
on deterministic in-memory batches, so it needs neither Spark nor petastorm
and takes seconds; prints the worker result as JSON on the last line.
"""
from __future__ import annotations

import json
import sys
from typing import Iterator

import torch

from courier_spark.core.schema import TrainConfig
from training.train import train_worker

L_PV, L_CLICK, SIZE, BATCH = 3, 3, 16, 4


class MemoryLoader:
    """Same ``batches`` contract as training.loader.SampleLoader (full batches, endless)."""

    def batches(self, shard: int = 0, num_shards: int = 1, num_epochs: int | None = None,
                workers: int = 0, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(int(seed or 0))
        while True:
            labels = torch.zeros(BATCH, L_PV, dtype=torch.int64)
            labels[:, 0] = 1  # clicked first, as the real loader orders a page
            yield {"pv_images": torch.rand(BATCH, L_PV, 3, SIZE, SIZE, generator=g),
                   "pv_mask": torch.ones(BATCH, L_PV, dtype=torch.bool),
                   "hist_images": torch.rand(BATCH, L_CLICK, 3, SIZE, SIZE, generator=g),
                   "hist_mask": torch.ones(BATCH, L_CLICK, dtype=torch.bool),
                   "pv_labels": labels}


def main(ckpt_dir: str, steps: int) -> None:
    cfg = TrainConfig(backbone="small_cnn", embed_dim=16, image_size=SIZE, batch_size=BATCH, steps=steps,
                      checkpoint_every=5, log_every=1, backend="local", loader_workers=0,
                      method="courier_no_ucs").resolved()
    out = train_worker(cfg, MemoryLoader(), ckpt_dir, "local")
    print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

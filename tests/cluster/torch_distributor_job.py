"""spark-submit job for tests/cluster/test_standalone.py: TorchDistributor on
the cluster's executors (``train.torch_distributor_mode`` auto on a
``spark://`` master), outside the train stage:

1. the distributed-gradient check (training/gradcheck.py): 2 ranks' first-step
   gradients against one process on the union batch;
2. a rank that raises, and a rank that is SIGKILLed: how long until the run
   failed, and the DistributedTrainingError's message.

Writes the results as JSON to the path given as its only argument.
"""
from __future__ import annotations

import json
import sys
import time


def _rank_fn(mode: str):
    """A closure (shipped by value) that fails on rank 1 as ``mode`` says."""
    def fn(backend):
        import os as _os
        import signal as _signal

        import torch as _torch
        import torch.distributed as _dist
        _dist.init_process_group("gloo")
        if _dist.get_rank() == 1:
            if mode == "raise":
                raise ValueError("corrupt shard on rank 1")
            _os.kill(_os.getpid(), _signal.SIGKILL)     # dies without a Python error
        t = _torch.ones(1)
        _dist.all_reduce(t)
        return float(t)
    return fn


def main(out_path: str) -> None:
    from courier_spark.core.spark import get_spark
    from training.gradcheck import make_batch, max_abs_diff, single_process_gradients, worker_gradients
    from training.launch import run_distributed
    from courier_spark.core.errors import DistributedTrainingError

    spark = get_spark()
    out: dict = {"master": spark.sparkContext.master}
    batch = make_batch(8, seed=3)
    ref_loss, ref = single_process_gradients(batch, seed=0)   # the model seed the ranks use too
    started: list[str] = []
    t0 = time.time()
    # what training.gradcheck.distributed_gradients runs, keeping each rank's start-up line
    loss, grads = run_distributed(worker_gradients, (batch, 0), "torch_distributor", 2,
                                  progress_emit=started.append, forward_to=lambda line: None)[0]
    out["gradcheck"] = {"loss": loss, "ref_loss": ref_loss, "max_abs_diff": max_abs_diff(grads, ref),
                        "seconds": time.time() - t0, "started": started}
    # the check is sensitive: one rank's half alone gives other gradients
    _, half = single_process_gradients({k: v[:4] for k, v in batch.items()})
    out["half_batch_diff"] = max_abs_diff(half, ref)
    for mode in ("raise", "kill"):
        t0 = time.time()
        try:
            run_distributed(_rank_fn(mode), (), "torch_distributor", 2, timeout_s=300,
                            forward_to=lambda line: None)
            out[mode] = {"error": None, "seconds": time.time() - t0}
        except DistributedTrainingError as e:
            out[mode] = {"error": str(e), "seconds": time.time() - t0}
    out["session_usable"] = spark.range(10).count() == 10
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1])

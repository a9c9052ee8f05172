"""Distributed-gradient check: the global-negatives loss on W workers must
give the same parameter gradients as one process on the union batch.

Used by the tests and runnable by hand after an environment change:
``python -m training.gradcheck`` prints the max abs difference per backend.
"""
from __future__ import annotations

import numpy as np
import torch


def make_batch(rows: int, l_pv: int = 5, l_click: int = 5, size: int = 16, seed: int = 0) -> dict:
    """Random images with padding and several clicked items per page."""
    g = torch.Generator().manual_seed(seed)
    pv_n = torch.randint(2, l_pv + 1, (rows,), generator=g)
    hist_n = torch.randint(1, l_click + 1, (rows,), generator=g)
    pv_mask = torch.arange(l_pv)[None] < pv_n[:, None]
    hist_mask = torch.arange(l_click)[None] < hist_n[:, None]
    n_click = torch.minimum(torch.randint(1, 3, (rows,), generator=g), pv_n)
    labels = (torch.arange(l_pv)[None] < n_click[:, None]).long()
    return {"pv_images": torch.randn(rows, l_pv, 3, size, size, generator=g),
            "hist_images": torch.randn(rows, l_click, 3, size, size, generator=g),
            "pv_mask": pv_mask, "hist_mask": hist_mask, "pv_labels": labels}


def _model(seed: int):
    from .model import CourierModel
    torch.manual_seed(seed)
    return CourierModel.from_backbone("small_cnn", embed_dim=32)


def _grads(model) -> dict[str, np.ndarray]:
    m = model.module if hasattr(model, "module") else model
    return {n: p.grad.detach().numpy().copy() for n, p in m.named_parameters() if p.grad is not None}


def single_process_gradients(batch: dict, seed: int = 0) -> tuple[float, dict]:
    from .losses import courier_loss
    torch.set_num_threads(1)
    model = _model(seed)
    loss, _ = courier_loss(model(batch["pv_images"], batch["pv_mask"], batch["hist_images"],
                                 batch["hist_mask"]), batch)
    loss.backward()
    return float(loss.detach()), _grads(model)


def worker_gradients(batch: dict, seed: int, backend: str) -> tuple[float, dict]:
    """Inside one worker: this rank's half of ``batch``, global negatives,
    gradients averaged across workers the way each backend's optimizer does."""
    from .losses import courier_loss
    torch.set_num_threads(1)
    model = _model(seed)
    if backend == "horovod":
        import horovod.torch as hvd
        from .collectives import HorovodCollective
        hvd.init()
        coll, rank, world = HorovodCollective(), hvd.rank(), hvd.size()
    else:
        import torch.distributed as dist
        from .losses import TorchDistributedCollective
        dist.init_process_group("gloo")
        coll, rank, world = TorchDistributedCollective(), dist.get_rank(), dist.get_world_size()
        model = torch.nn.parallel.DistributedDataParallel(model)  # averages grads in backward
    n = batch["pv_images"].shape[0] // world
    part = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
    loss, metrics = courier_loss(model(part["pv_images"], part["pv_mask"], part["hist_images"],
                                       part["hist_mask"]), part, collective=coll)
    loss.backward()
    if backend == "horovod":
        m = model
        for name, p in m.named_parameters():  # what hvd.DistributedOptimizer does
            if p.grad is not None:
                p.grad = hvd.allreduce(p.grad, op=hvd.Average, name=f"g.{name}")
        total = float(hvd.allreduce(loss.detach(), op=hvd.Sum))
    else:
        t = loss.detach().clone()
        dist.all_reduce(t)
        total = float(t)
    grads = _grads(model)
    if backend != "horovod":
        dist.destroy_process_group()
    # each worker's loss is its share scaled by world: the global mean is sum/world
    return total / world, grads


def distributed_gradients(batch: dict, backend: str, num_proc: int = 2, seed: int = 0,
                          torch_distributor_mode: str = "auto") -> tuple[float, dict]:
    """Run ``worker_gradients`` on Spark workers; returns rank 0's view.
    ``torch_distributor_mode``: as ``train.torch_distributor_mode`` (auto: the
    driver machine for a local master, one executor task per rank on a cluster)."""
    if backend == "horovod":
        import horovod.spark
        return horovod.spark.run(worker_gradients, args=(batch, seed, backend), num_proc=num_proc)[0]
    from .launch import run_distributed
    return run_distributed(worker_gradients, (batch, seed), backend, num_proc,
                           torch_distributor_mode=torch_distributor_mode)[0]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main(argv: list[str] | None = None) -> dict:
    """``python -m training.gradcheck [--backends ...] [--torch-distributor-mode ...]``
    (also under spark-submit, on the session's master): prints and returns
    backend -> (loss, single-process loss, max |grad diff|)."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="horovod,torch_distributor")
    ap.add_argument("--torch-distributor-mode", default="auto", choices=("auto", "driver", "executors"))
    ap.add_argument("--num-proc", type=int, default=2)
    a = ap.parse_args(argv)
    from courier_spark.core.spark import get_spark
    get_spark()
    batch = make_batch(8)
    ref_loss, ref = single_process_gradients(batch)
    out = {}
    for backend in a.backends.split(","):
        loss, g = distributed_gradients(batch, backend, a.num_proc, torch_distributor_mode=a.torch_distributor_mode)
        out[backend] = (loss, ref_loss, max_abs_diff(g, ref))
        print(f"{backend}: loss {loss:.6f} vs {ref_loss:.6f}, max |grad diff| {out[backend][2]:.2e}")
    return out


if __name__ == "__main__":
    main()

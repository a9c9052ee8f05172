"""COURIER pre-training: the worker loop shared by every backend.

Backends (``train.backend``; launched by ``training.launch.run_distributed``):
* ``torch_distributor`` (default): Spark's ``TorchDistributor`` (torchrun,
  gloo, DDP), on the driver machine or one rank per executor task.
* ``horovod``: ``horovod.spark.run`` over Spark tasks; parameters
  broadcast from rank 0, ``hvd.DistributedOptimizer`` averages gradients,
  negatives are all-gathered with gradients (``HorovodCollective``).
* ``local``: one process, no Spark tasks (debugging).

The loss normalisation in ``training.losses`` makes the averaged gradient of
W workers equal to the single-process gradient of the union batch.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from courier_spark.core import fs
from courier_spark.core.schema import TrainConfig

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .objectives import build_model, compute_loss

# --------------------------------------------------------------------------- the worker loop
@dataclass
class WorkerResult:
    rank: int
    steps_done: int
    resumed_from: int
    history: list = field(default_factory=list)   # (step, loss, acc) per logged step
    heldout: list = field(default_factory=list)   # (step, loss on the held-out page views), rank 0
    images_per_s: float = 0.0          # image slots through the encoder's loss per second, all workers
    distinct_images_per_s: float = 0.0  # distinct images actually encoded per second (each once a step)
    seconds: float = 0.0               # wall time of the loop (after the first batch was ready)
    checkpoints: list = field(default_factory=list)


def train_worker(cfg: TrainConfig, loader, ckpt_dir: str, backend: str) -> dict:
    """Runs inside each worker (Spark task / torchrun process / this process)."""
    from courier_spark.core.noise import silence_third_party_warnings
    silence_third_party_warnings()  # a Horovod rank's warnings would be forwarded to the driver's console
    torch.set_num_threads(cfg.torch_threads)
    collective, rank, world, hvd = _init_backend(backend)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    history: list = []
    heldout: list = []
    saved_steps: list = []
    ck = latest_checkpoint(ckpt_dir)
    if ck:  # every rank reads the same file (shared FS), so no broadcast needed
        state = load_checkpoint(ck)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        saved_steps = list(state["checkpoint_steps"])
        heldout = list(state.get("heldout", []))
    if backend == "horovod":
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    elif backend == "torch_distributor":
        model = nn.parallel.DistributedDataParallel(model)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.amp and not torch.cuda.is_available()
                else torch.autocast("cuda", dtype=torch.float16) if cfg.amp else _null())
    result = WorkerResult(rank, start, start, history, heldout)
    end = cfg.steps if cfg.max_steps_this_run is None else min(cfg.steps, start + cfg.max_steps_this_run)
    # Held-out page views in batches of the global batch size (the same number
    # of in-batch negatives as a training step), scored by rank 0 alone.
    held = loader.heldout_batches(cfg.batch_size * world) if rank == 0 and hasattr(loader, "heldout_batches") \
        else []

    heldout_s = [0.0]   # time rank 0 spent scoring, left out of the training rate

    def score_heldout(at: int) -> None:
        if held:
            t = time.perf_counter()
            heldout.append((at, heldout_loss(model, held, cfg)))
            heldout_s[0] += time.perf_counter() - t
            report_progress(f"{PROGRESS_PREFIX}{cfg.method} step {at}/{cfg.steps} held-out loss "
                            f"{heldout[-1][1]:.4f} ({len(held) * cfg.batch_size * world} page views)",
                            ckpt_dir, backend)

    if start == 0:
        score_heldout(0)
    n_img, n_distinct, step = 0, 0, start
    window: list[tuple[float, float]] = []  # (loss, acc) since the last log line
    batches = loader.batches(shard=rank, num_shards=world, num_epochs=None,
                             workers=cfg.loader_workers, seed=cfg.seed + start)
    model.train()
    t0 = None
    for batch in batches:
        if t0 is None:   # the loop's rate, from the first batch (not the workers' start-up)
            t0 = time.perf_counter()
        if step >= end:
            break
        with autocast:
            loss, metrics = compute_loss(model, batch, cfg, collective, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        n_slots = int(batch["pv_mask"].sum() + batch["hist_mask"].sum())
        n_img += n_slots
        n_distinct += int(batch["items"].shape[0]) if "items" in batch else n_slots
        window.append((float(metrics["loss"]), float(metrics.get("acc_pv", metrics.get("acc", float("nan"))))))
        if step % cfg.log_every == 0 or step == end or step == start + 1:
            # mean over the steps since the last line: a steadier curve than one batch
            lv = sum(w[0] for w in window) / len(window)
            acc = sum(w[1] for w in window) / len(window)
            window.clear()
            history.append((step, lv, acc))
            if rank == 0:
                rate = n_img * world / max(time.perf_counter() - t0, 1e-9)
                report_progress(f"{PROGRESS_PREFIX}{cfg.method} step {step}/{cfg.steps} loss {lv:.4f} "
                                f"in-batch acc {acc:.3f} images/s {rate:.1f}", ckpt_dir, backend)
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} at step {step}")
        if step % cfg.checkpoint_every == 0 or step == end:
            if rank == 0:
                score_heldout(step)
                result.checkpoints.append(save_checkpoint(ckpt_dir, step, model, opt, history, saved_steps,
                                                          heldout))
            saved_steps.append(step)
            if backend == "horovod":
                hvd.allreduce(torch.zeros(1), name=f"ckpt_barrier_{step}")  # wait for rank 0's file
            elif backend == "torch_distributor":
                import torch.distributed as dist
                dist.barrier()
    result.steps_done = step
    result.history = history
    result.heldout = heldout
    result.seconds = time.perf_counter() - t0 - heldout_s[0] if t0 is not None else 0.0
    result.images_per_s = n_img * world / max(result.seconds, 1e-9)
    result.distinct_images_per_s = n_distinct * world / max(result.seconds, 1e-9)
    if backend == "torch_distributor":
        import torch.distributed as dist
        dist.destroy_process_group()
    return dataclasses.asdict(result)



@torch.no_grad()
def heldout_loss(model: nn.Module, batches: list, cfg: TrainConfig) -> float:
    """The method's own loss, averaged over held-out batches, in this process
    (no gathering across workers), with fixed randomness (SimCLR's views are
    drawn from the same seed at every checkpoint, so the curve moves only
    with the weights)."""
    from .losses import LocalCollective
    m = model.module if hasattr(model, "module") else model
    was_training = m.training
    m.eval()
    try:
        losses = [float(compute_loss(m, b, cfg, LocalCollective(), -1)[0]) for b in batches]
    finally:
        m.train(was_training)
    return sum(losses) / len(losses)


def training_metrics(state: dict, rank0: dict) -> dict:
    """A finished run's metrics from its last checkpoint and rank 0's result:
    first/last losses (means of the first 2 and last 3 logged steps), speed,
    the held-out curve and the full history."""
    hist = state["history"]
    head = [h[1] for h in hist[:2]]
    tail = [h[1] for h in hist[-3:]]
    return {"steps": rank0["steps_done"], "initial_loss": sum(head) / len(head),
            "final_loss": sum(tail) / len(tail), "final_in_batch_accuracy": float(hist[-1][2]),
            "images_per_s": rank0["images_per_s"], "distinct_images_per_s": rank0["distinct_images_per_s"],
            "loop_seconds": rank0["seconds"], "resumed_from_step": rank0["resumed_from"], "history": hist,
            "heldout_loss": [list(h) for h in state.get("heldout", [])],
            "checkpoint_steps": state["checkpoint_steps"]}


PROGRESS_FILE = "progress.log"
PROGRESS_PREFIX = "[courier train] "  # rank 0's lines carry it; the driver's logger adds its own


def report_progress(line: str, ckpt_dir: str, backend: str) -> None:
    """Rank 0's progress line. Under Horovod and TorchDistributor (whose ranks
    may run on executors) it is appended to ``<ckpt_dir>/progress.log`` (the
    checkpoint dir is shared by all ranks anyway) and the driver relays it as
    it comes (``launch.ProgressTail``); in this process (``local``) it is a
    log line like every other (console and run log)."""
    if backend in ("horovod", "torch_distributor"):
        fs.append_line(fs.join(ckpt_dir, PROGRESS_FILE), line)
    elif backend == "local":
        from courier_spark.core.logs import say
        say("train", line.removeprefix(PROGRESS_PREFIX))
    else:
        print(line, file=sys.stderr, flush=True)


class _null:
    def __enter__(self): return self
    def __exit__(self, *a): return False


def _init_backend(backend: str):
    from .losses import LocalCollective
    if backend == "horovod":
        import horovod.torch as hvd
        hvd.init()
        from .collectives import HorovodCollective
        return HorovodCollective(), hvd.rank(), hvd.size(), hvd
    if backend == "torch_distributor":
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        from .losses import TorchDistributedCollective
        return TorchDistributedCollective(), dist.get_rank(), dist.get_world_size(), None
    return LocalCollective(), 0, 1, None

"""COURIER pre-training: one worker loop shared by every backend.

Backends (``train.backend``):
* ``horovod`` (default): ``horovod.spark.run`` over Spark tasks; parameters
  broadcast from rank 0, ``hvd.DistributedOptimizer`` averages gradients,
  negatives are all-gathered with gradients (``HorovodCollective``).
* ``torch_distributor``: Spark's ``TorchDistributor`` (torchrun, gloo, DDP).
* ``local``: one process, no Spark tasks (debugging).

The loss normalisation in ``training.losses`` makes the averaged gradient of
W workers equal to the single-process gradient of the union batch.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# Ablation and comparison presets: method name -> TrainConfig overrides.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "courier": {},
    "courier_no_ucs": {"use_ucs": False},
    "courier_no_contrast": {"contrast": False},
    "courier_no_recon": {"attention": "self"},
    "courier_no_neg_pv": {"use_negative_pv": False},
    "courier_proj_head": {"projection_head": True},
    "courier_hinge": {"loss_type": "hinge"},
    "courier_multihead": {"attention": "multihead"},
    "simclr": {"objective": "simclr"},
    "supervised": {"objective": "supervised"},
}


@dataclass
class TrainConfig:
    method: str = "courier"
    objective: str = "courier"          # courier | simclr | supervised (set by the method preset)
    backbone: str = "small_cnn"
    embed_dim: int = 256
    image_size: int = 0                 # 0 = the backbone's default (swin_t 224, resnet18 64, small_cnn 48)
    weights_path: str | None = None     # local ImageNet-style state dict; random init when unset
    attention: str = "plain"            # plain (paper) | multihead | self (w/o reconstruction)
    projection_head: bool = False
    tau_pv: float = 0.05
    tau_ucs: float = 0.05
    tau_simclr: float = 0.2
    use_ucs: bool = True
    contrast: bool = True
    use_negative_pv: bool = True
    loss_type: str = "infonce"
    hinge_margin: float = 0.2
    batch_size: int = 32                # rows (pages) per worker; x10 images
    steps: int = 150
    lr: float = 1e-3                    # paper: 1e-4 from ImageNet init; random-init small nets need more
    weight_decay: float = 1e-6
    amp: bool = False                   # mixed precision (bf16 on CPU, fp16 on GPU)
    grad_checkpointing: bool = False
    backend: str = "horovod"            # horovod | torch_distributor | local
    num_proc: int = 2
    loader_workers: int = 2
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    max_steps_this_run: int | None = None   # stop early (tests simulate a kill with it)
    # Cancel a distributed run that takes longer than this (seconds; None =
    # COURIER_DISTRIBUTED_TIMEOUT_S or no limit): a hung worker must not hang the job.
    timeout_s: float | None = None

    def resolved(self) -> "TrainConfig":
        from .backbones import default_image_size
        if self.method not in METHOD_PRESETS:
            raise ValueError(f"unknown train.method {self.method!r}; one of {', '.join(METHOD_PRESETS)}")
        cfg = dataclasses.replace(self, **METHOD_PRESETS[self.method])
        if cfg.image_size <= 0:
            cfg = dataclasses.replace(cfg, image_size=default_image_size(cfg.backbone))
        if cfg.backend not in ("horovod", "torch_distributor", "local"):
            raise ValueError(f"train.backend must be horovod, torch_distributor or local, got {cfg.backend!r}")
        return cfg


# --------------------------------------------------------------------------- model + loss per objective
def build_model(cfg: TrainConfig) -> nn.Module:
    from .backbones import build_backbone
    enc = build_backbone(cfg.backbone, cfg.embed_dim, cfg.weights_path,
                         grad_checkpointing=cfg.grad_checkpointing, projection_head=cfg.projection_head)
    if cfg.objective == "courier":
        from .model import CourierModel
        return CourierModel(enc, attention=cfg.attention)
    if cfg.objective == "simclr":
        from .baselines import SimCLRModel
        return SimCLRModel(enc)
    if cfg.objective == "supervised":
        from .baselines import SupervisedClickModel
        return SupervisedClickModel(enc)
    raise ValueError(f"unknown objective {cfg.objective!r}")


def encoder_of(model: nn.Module) -> nn.Module:
    m = model.module if hasattr(model, "module") else model
    return m.encoder


def compute_loss(model: nn.Module, batch: dict, cfg: TrainConfig, collective,
                 step: int) -> tuple[torch.Tensor, dict]:
    if cfg.objective == "courier":
        from .losses import LossConfig, courier_loss
        out = model(batch["pv_images"], batch["pv_mask"], batch["hist_images"], batch["hist_mask"])
        lc = LossConfig(tau_pv=cfg.tau_pv, tau_ucs=cfg.tau_ucs, use_ucs=cfg.use_ucs, contrast=cfg.contrast,
                        use_negative_pv=cfg.use_negative_pv, loss_type=cfg.loss_type,
                        hinge_margin=cfg.hinge_margin)
        return courier_loss(out, batch, lc, collective)
    from . import baselines
    return baselines.baseline_loss(cfg.objective, model, batch, cfg, collective, step)


# --------------------------------------------------------------------------- checkpoints
def latest_checkpoint(ckpt_dir: str) -> str | None:
    files = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.pt")))
    return files[-1] if files else None


def save_checkpoint(ckpt_dir: str, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                    history: list, saved_steps: list) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"step_{step:07d}.pt")
    tmp = path + ".tmp"
    m = model.module if hasattr(model, "module") else model
    torch.save({"step": step, "model": m.state_dict(), "optimizer": opt.state_dict(),
                "history": history, "checkpoint_steps": saved_steps + [step]}, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half checkpoint under the real name
    return path


# --------------------------------------------------------------------------- the worker loop
@dataclass
class WorkerResult:
    rank: int
    steps_done: int
    resumed_from: int
    history: list = field(default_factory=list)   # (step, loss, acc) per logged step
    images_per_s: float = 0.0
    checkpoints: list = field(default_factory=list)


def train_worker(cfg: TrainConfig, loader, ckpt_dir: str, backend: str) -> dict:
    """Runs inside each worker (Spark task / torchrun process / this process)."""
    torch.set_num_threads(max(1, int(os.environ.get("COURIER_TORCH_THREADS", "1"))))
    collective, rank, world, hvd = _init_backend(backend)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    history: list = []
    saved_steps: list = []
    ck = latest_checkpoint(ckpt_dir)
    if ck:  # every rank reads the same file (shared FS), so no broadcast needed
        state = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        saved_steps = list(state["checkpoint_steps"])
    if backend == "horovod":
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    elif backend == "torch_distributor":
        model = nn.parallel.DistributedDataParallel(model)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.amp and not torch.cuda.is_available()
                else torch.autocast("cuda", dtype=torch.float16) if cfg.amp else _null())
    result = WorkerResult(rank, start, start, history)
    end = cfg.steps if cfg.max_steps_this_run is None else min(cfg.steps, start + cfg.max_steps_this_run)
    t0, n_img, step = time.perf_counter(), 0, start
    window: list[tuple[float, float]] = []  # (loss, acc) since the last log line
    batches = loader.batches(shard=rank, num_shards=world, num_epochs=None,
                             workers=cfg.loader_workers, seed=cfg.seed + start)
    model.train()
    for batch in batches:
        if step >= end:
            break
        with autocast:
            loss, metrics = compute_loss(model, batch, cfg, collective, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        n_img += int(batch["pv_mask"].sum() + batch["hist_mask"].sum())
        window.append((float(metrics["loss"]), float(metrics.get("acc_pv", metrics.get("acc", float("nan"))))))
        if step % cfg.log_every == 0 or step == end or step == start + 1:
            # mean over the steps since the last line: a steadier curve than one batch
            lv = sum(w[0] for w in window) / len(window)
            acc = sum(w[1] for w in window) / len(window)
            window.clear()
            history.append((step, lv, acc))
            if rank == 0:
                rate = n_img * world / max(time.perf_counter() - t0, 1e-9)
                report_progress(f"[courier train] {cfg.method} step {step}/{cfg.steps} loss {lv:.4f} "
                                f"in-batch acc {acc:.3f} images/s {rate:.1f}", ckpt_dir, backend)
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} at step {step}")
        if step % cfg.checkpoint_every == 0 or step == end:
            if rank == 0:
                result.checkpoints.append(save_checkpoint(ckpt_dir, step, model, opt, history, saved_steps))
            saved_steps.append(step)
            if backend == "horovod":
                hvd.allreduce(torch.zeros(1), name=f"ckpt_barrier_{step}")  # wait for rank 0's file
            elif backend == "torch_distributor":
                import torch.distributed as dist
                dist.barrier()
    result.steps_done = step
    result.history = history
    result.images_per_s = n_img * world / max(time.perf_counter() - t0, 1e-9)
    if backend == "torch_distributor":
        import torch.distributed as dist
        dist.destroy_process_group()
    return dataclasses.asdict(result)


PROGRESS_FILE = "progress.log"


def report_progress(line: str, ckpt_dir: str, backend: str) -> None:
    """Rank 0's progress line, on stderr like every ``[courier ...]`` line.
    Horovod forwards worker output to the driver in 64 KiB chunks
    (``shutil.copyfileobj`` in its task service), so printed lines would
    arrive only when training ends; under Horovod the line goes to
    ``<ckpt_dir>/progress.log`` (the checkpoint dir is shared by all ranks
    anyway) and the driver prints it as it comes (``ProgressTail``)."""
    if backend == "horovod":
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(ckpt_dir, PROGRESS_FILE), "a") as fh:
            fh.write(line + "\n")
    else:
        print(line, file=sys.stderr, flush=True)


class ProgressTail:
    """Driver-side context manager: a thread prints the complete lines
    appended to ``path`` (from its size at entry) every ``interval_s``; the
    rest, a last unterminated line included, is printed on exit."""

    def __init__(self, path: str, dst=None, interval_s: float = 1.0) -> None:
        self.path, self.dst, self.interval_s = path, dst, interval_s
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self._part = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier-progress-tail", daemon=True)

    def _drain(self, final: bool = False) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as fh:
            fh.seek(self.offset)
            text = fh.read()
            self.offset = fh.tell()
        lines = (self._part + text).split("\n")
        self._part = "" if final else lines.pop()
        dst = self.dst or sys.stderr
        for line in lines:
            if line:
                dst.write(line + "\n")
        dst.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._drain()

    def __enter__(self) -> "ProgressTail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain(final=True)


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


class DistributedTrainingError(RuntimeError):
    """A distributed training job failed or stalled; the message names the worker and the cause."""


def run_distributed(fn: Callable, args: tuple, backend: str, num_proc: int, *,
                    timeout_s: float | None = None, progress_file: str | None = None) -> list:
    """Run ``fn(*args, backend)`` on ``num_proc`` workers; results in rank order.

    With ``horovod``, a worker that raises, crashes or is killed fails the
    whole job with a ``DistributedTrainingError`` naming the rank and its
    error (Horovod itself only says "a process exited with non-zero status").
    ``timeout_s`` (default: ``COURIER_DISTRIBUTED_TIMEOUT_S`` when set) bounds
    the whole run, so a worker that hangs - not dead, but never reaching the
    next collective - cancels the job instead of blocking it forever.
    ``progress_file``: with ``horovod``, printed as the workers append to it
    (see ``report_progress``).
    """
    if num_proc < 1:
        raise ValueError(f"train.num_proc must be >= 1, got {num_proc}")
    if timeout_s is None and os.environ.get("COURIER_DISTRIBUTED_TIMEOUT_S"):
        timeout_s = float(os.environ["COURIER_DISTRIBUTED_TIMEOUT_S"])
    if backend == "horovod":
        if progress_file is None:
            return _run_horovod(fn, args, num_proc, timeout_s)
        with ProgressTail(progress_file):
            return _run_horovod(fn, args, num_proc, timeout_s)
    if backend == "torch_distributor":
        from pyspark.ml.torch.distributor import TorchDistributor
        out = TorchDistributor(num_processes=num_proc, local_mode=True, use_gpu=False).run(
            fn, *args, "torch_distributor")
        return [out]  # TorchDistributor returns rank 0's value
    return [fn(*args, "local")]


class _TeeLines:
    """A text stream that forwards to ``dst`` and keeps the last lines, so the
    driver can name the worker error after Horovod has torn the job down."""

    def __init__(self, dst, keep: int = 4000) -> None:
        import collections
        self.dst, self.lines, self._part = dst, collections.deque(maxlen=keep), ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            try:
                self.dst.write(text)
                if "\n" in text:
                    # A driver whose stdout is a file (spark-submit > job.log) is
                    # block-buffered and Horovod never flushes it: forwarded
                    # worker lines (errors included) would wait in the buffer.
                    self.dst.flush()
            except Exception:  # noqa: BLE001 - a closed console must not kill the forwarder
                pass
            parts = (self._part + text).split("\n")
            self._part = parts.pop()
            self.lines.extend(parts)
        return len(text)

    def flush(self) -> None:
        try:
            self.dst.flush()
        except Exception:  # noqa: BLE001
            pass


_RANK_ERROR = re.compile(r"^\[(\d+)\]<std(?:err|out)>:((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$")
_EXIT = re.compile(r"Process name:\s*(\d+)\s*Exit code:\s*(-?\d+)", re.S)
_PEER_FAILED = ("Horovod has been shut down", "HorovodInternalError", "Connection reset by peer",
                "Connection closed by peer", "Read error", "Wait timeout")


def explain_worker_failure(lines: list[str], exc: BaseException | None, *, generic: bool = True,
                           num_proc: int | None = None) -> str:
    """One sentence naming the failed rank(s) and cause from the workers' forwarded output."""
    root: dict[int, str] = {}
    secondary: dict[int, str] = {}
    for line in lines:
        m = _RANK_ERROR.match(line.strip())
        if m:
            rank, err = int(m.group(1)), m.group(2).strip()
            (secondary if any(p in err for p in _PEER_FAILED) else root)[rank] = err  # last error per rank
    parts = [f"rank {r} raised {e}" for r, e in sorted(root.items())]
    m = _EXIT.search(str(exc or ""))
    if m and not root:
        rank, code = int(m.group(1)), int(m.group(2))
        if rank not in secondary:
            how = (f"was killed by signal {-code}" if code < 0 else
                   f"was killed by signal {code - 128}" if code > 128 else f"exited with code {code}")
            parts.append(f"rank {rank} {how} without a Python error (crash, out of memory, os._exit or kill)")
        elif num_proc:
            # Horovod names the first process to *exit*, which can be a survivor
            # that noticed its dead peer first: the culprit is the rank that
            # printed nothing at all.
            silent = [r for r in range(num_proc) if r not in secondary]
            parts += [f"rank {r} died without a Python error (crash, out of memory, os._exit or kill)"
                      for r in silent]
    if parts:
        return "; ".join(parts)
    if secondary:
        return "; ".join(f"rank {r}: {e}" for r, e in sorted(secondary.items()))
    first = str(exc or "").strip().splitlines()[:1]
    return f"{type(exc).__name__}: {first[0]}" if generic and first else "no worker reported an error"


def _run_horovod(fn: Callable, args: tuple, num_proc: int, timeout_s: float | None) -> list:
    import horovod.spark
    from horovod.spark.driver import job_id
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        raise DistributedTrainingError("horovod backend needs an active SparkSession")
    # All Horovod workers must run at once; on a local master with fewer task
    # slots Horovod would wait start_timeout (10 min) and then fail obscurely.
    if (sc.master or "").startswith("local") and num_proc > sc.defaultParallelism:
        raise DistributedTrainingError(
            f"train.num_proc={num_proc} but Spark master {sc.master} runs only {sc.defaultParallelism} "
            f"task(s) at once; every Horovod worker needs its own task slot (lower train.num_proc)")
    out, err = _TeeLines(sys.stdout), _TeeLines(sys.stderr)
    group = f"horovod.spark.run.{job_id.JOB_ID + 1}"  # the job group horovod.spark.run will use
    timed_out = threading.Event()

    def on_timeout() -> None:
        # A stalled worker: cancelling the Spark tasks ends their Horovod
        # processes, so the launcher below returns with an error.
        timed_out.set()
        sc.cancelJobGroup(group)

    # horovod.spark.run installs signal handlers, so it must run on this
    # (main) thread; the watchdog is the timer thread.
    watchdog = threading.Timer(timeout_s, on_timeout) if timeout_s else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    t0 = time.perf_counter()
    try:
        return horovod.spark.run(fn, args=(*args, "horovod"), num_proc=num_proc, verbose=0,
                                 stdout=out, stderr=err)
    except Exception as e:  # noqa: BLE001 - re-raised with the failed rank and cause named
        why = explain_worker_failure(list(err.lines) + list(out.lines), e, generic=not timed_out.is_set(),
                                     num_proc=num_proc)
        if timed_out.is_set():
            raise DistributedTrainingError(
                f"horovod training did not finish within {timeout_s:.0f}s and was cancelled "
                f"(a worker hung or stopped reaching collectives); {why}") from e
        raise DistributedTrainingError(
            f"horovod training failed after {time.perf_counter() - t0:.0f}s with {num_proc} workers: "
            f"{why}") from e
    finally:
        if watchdog:
            watchdog.cancel()


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)

"""Training checkpoints: ``<root>/models/_checkpoints/<method>-<config hash>/step_NNNNNNN.pt``,
written and read through the filesystem layer (any root URI), atomically."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import torch
from torch import nn

from courier_spark.core import fs
from courier_spark.core.errors import CheckpointError
from courier_spark.core.schema import TrainConfig, TrainLaunch

# Settings that do not change what is trained: a resumed run may change them.
# How a run is launched does not change what it learns, except the backend and the
# worker count (the global batch): resuming with other launch settings is fine.
_NOT_HASHED = frozenset(f.name for f in dataclasses.fields(TrainLaunch)) - {"backend", "num_proc"}


def config_hash(cfg: TrainConfig) -> str:
    keep = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_HASHED}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:10]


def checkpoint_dir(checkpoints_root: str, cfg: TrainConfig) -> str:
    return fs.join(checkpoints_root, f"{cfg.method}-{config_hash(cfg)}")


def latest_checkpoint(ckpt_dir: str) -> str | None:
    files = fs.glob(fs.join(ckpt_dir, "step_*.pt"))
    return files[-1] if files else None


def save_checkpoint(ckpt_dir: str, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                    history: list, saved_steps: list, heldout: list | None = None) -> str:
    """``history``: (step, loss, acc) of logged steps; ``heldout``: (step, held-out loss) pairs."""
    path = fs.join(ckpt_dir, f"step_{step:07d}.pt")
    m = model.module if hasattr(model, "module") else model
    buf = io.BytesIO()
    torch.save({"step": step, "model": m.state_dict(), "optimizer": opt.state_dict(),
                "history": history, "checkpoint_steps": saved_steps + [step],
                "heldout": list(heldout or [])}, buf)
    fs.makedirs(ckpt_dir)
    fs.write_bytes(path, buf.getvalue())  # atomic: a kill never leaves a half checkpoint under the real name
    return path


_KEYS = ("step", "model", "optimizer", "history", "checkpoint_steps")


def load_checkpoint(path: str) -> dict:
    """A checkpoint as data only: a checkpoint directory on a shared store is a
    trust boundary, so ``weights_only=True`` (tensors and plain containers; no
    code runs on load); anything else is a ``CheckpointError`` naming the file."""
    try:
        state = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same clear error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot be read as a courier checkpoint "
                              f"(truncated or tampered?): {first}; delete it to resume from the one before") from None
    if not isinstance(state, dict) or any(k not in state for k in _KEYS):
        raise CheckpointError(f"checkpoint {path} is not a courier checkpoint (expected keys {', '.join(_KEYS)})")
    return state

"""Horovod implementation of ``training.losses.Collective`` (the
``torch.distributed`` one lives in losses.py)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _HvdAllGatherSumGrad(torch.autograd.Function):
    """hvd.allgather whose backward SUMS the workers' gradients.

    hvd.allgather's own backward averages them (and needs contiguous grads),
    which would scale the cross-worker negative gradients by 1/world_size."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, rank: int, world_size: int) -> Tensor:  # type: ignore[override]
        import horovod.torch as hvd
        ctx.rank, ctx.world_size, ctx.n = rank, world_size, t.shape[0]
        return hvd.allgather(t.detach().contiguous(), name=None)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        import horovod.torch as hvd
        total = hvd.allreduce(grad.contiguous(), op=hvd.Sum)
        return total[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


class HorovodCollective:
    def __init__(self) -> None:
        import horovod.torch as hvd
        self.rank = hvd.rank()
        self.world_size = hvd.size()

    def all_gather(self, t: Tensor) -> Tensor:
        return _HvdAllGatherSumGrad.apply(t, self.rank, self.world_size)

    def all_sum(self, t: Tensor) -> Tensor:
        import horovod.torch as hvd
        return hvd.allreduce(t.detach().contiguous(), op=hvd.Sum)

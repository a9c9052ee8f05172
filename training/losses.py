"""COURIER losses (method.md, "Losses") and the collective they use across workers.

Contrastive term for one query ``q`` (a reconstruction) with positive ``p``
(the embedding it reconstructs) and candidates ``C`` (valid embeddings of the
*global* batch, ``p`` included, padding never)::

    term = -log( exp(cos(p, q) / tau) / sum_{c in C} exp(cos(c, q) / tau) )

* PV loss: queries = ``r_pv`` of clicked valid PV items, candidates = all valid
  ``e_pv`` (``use_negative_pv=False``: only clicked ones). Unclicked items are
  candidates (negatives) only, never queries.
* UCS loss: queries = ``r_ucs`` of rows with >= 2 valid clicks, candidates =
  ``e_ucs_target`` of every row with >= 1 valid click, positive = own row.

Distributed normalisation
-------------------------
Every worker gathers the padded, flattened candidates ``[N, d]`` (same N on
all workers) plus their mask, so worker ``r``'s local slot ``i`` is global
index ``r * N + i``. Each worker returns::

    loss_r = sum(local terms) / global_number_of_terms * world_size

The collective's ``all_gather`` backward SUMS the gradients that every worker
computed for a slice and hands each worker its own slice, so worker r's
backward yields ``d(sum_w loss_w)/d(its parameters' use)``. Summing over
workers gives ``world_size * dL/dtheta`` with ``L`` = mean over all terms of the
union batch; optimisers that AVERAGE gradients across workers (Horovod, DDP)
therefore apply exactly ``dL/dtheta``, as one process holding the whole batch
would. Averaging ``loss_r`` over workers also gives ``L``. With world_size 1
this is the plain mean. Every worker must call the loss (and its collectives)
every step, even if it has no query: it still holds candidates that other
workers' queries differentiate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from courier_spark.core.schema import TrainLoss

LOSS_TYPES = ("infonce", "hinge")


@runtime_checkable
class Collective(Protocol):
    """What the losses need from the distributed runtime.

    all_gather: concatenate along dim 0 across workers, in rank order (every
        worker passes the same shape). Autograd: the backward must SUM the
        incoming gradients across workers and return this worker's slice.
        (Note: Horovod's ``hvd.allgather`` AVERAGES in backward, so an adapter
        must multiply its gradient by world_size.)
    all_sum: sum across workers, no gradient.
    """

    rank: int
    world_size: int

    def all_gather(self, t: Tensor) -> Tensor: ...

    def all_sum(self, t: Tensor) -> Tensor: ...


class LocalCollective:
    """Single process: world_size 1, identity operations."""

    rank = 0
    world_size = 1

    def all_gather(self, t: Tensor) -> Tensor:
        return t

    def all_sum(self, t: Tensor) -> Tensor:
        return t.detach()


class _AllGatherSumGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of all workers (reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any, world_size: int, rank: int) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group, ctx.world_size, ctx.rank = group, world_size, rank
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        # all_reduce + slice works on every backend (gloo lacks reduce_scatter);
        # the gradient is small ([W*N, d]) next to the backbone's.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        n = grad.shape[0] // ctx.world_size
        return grad[ctx.rank * n : (ctx.rank + 1) * n], None, None, None


class TorchDistributedCollective:
    """``torch.distributed`` implementation (TorchDistributor / torchrun); needs an initialised process group."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_gather(self, t: Tensor) -> Tensor:
        return _AllGatherSumGrad.apply(t, self.group, self.world_size, self.rank)

    def all_sum(self, t: Tensor) -> Tensor:
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out


@dataclass
class LossOutput:
    loss: Tensor  # scalar, differentiable; this worker's share (see module doc)
    n_terms: Tensor  # scalar, global number of terms (queries) in the batch
    accuracy: Tensor  # scalar, global share of queries whose best candidate is the positive


def contrastive_loss(
    queries: Tensor,
    candidates: Tensor,
    query_mask: Tensor,
    candidate_mask: Tensor,
    tau: float = 0.05,
    collective: Collective | None = None,
    *,
    loss_type: str = "infonce",
    hinge_margin: float = 0.2,
    contrast: bool = True,
) -> LossOutput:
    """Generic COURIER contrastive loss; the positive of query ``i`` is candidate ``i``.

    queries ``[N, d]`` (only rows with ``query_mask`` are used), candidates
    ``[N, d]`` (rows with ``candidate_mask`` are candidates; the same N on all
    workers). A query's own slot is always a candidate (``query_mask`` is ANDed
    into ``candidate_mask``).

    loss_type ``"infonce"``: the formula in the module doc.
    loss_type ``"hinge"``: per query, the mean over its negatives of
    ``max(0, margin - cos(pos) + cos(neg))`` (0 if it has none).
    contrast=False: pull only, ``1 - cos(pos)`` (no negatives, SimSiam-like ablation).
    All variants average over the global number of queries (see module doc).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    coll = collective if collective is not None else LocalCollective()
    query_mask = query_mask.reshape(-1).bool()
    candidate_mask = candidate_mask.reshape(-1).bool() | query_mask
    n, d = candidates.shape
    if queries.shape != (n, d):
        raise ValueError(f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must match")

    # Float32 for the similarity math (fp16 logits with tau=0.05 lose precision).
    # Padding is zeroed BEFORE normalising so garbage (even inf/nan) cannot leak
    # into values or gradients.
    cand = candidates.float().masked_fill(~candidate_mask[:, None], 0.0)
    cand = F.normalize(cand, dim=-1)
    q_idx = query_mask.nonzero(as_tuple=True)[0]
    q = F.normalize(queries.float()[q_idx], dim=-1)  # [Q, d]
    pos_local = cand[q_idx]  # positives (already normalised)
    n_q_local = q_idx.numel()

    # One gather carries embeddings and mask together (one collective call instead of two).
    packed = torch.cat([cand, candidate_mask[:, None].float()], dim=1)
    if contrast:
        gathered = coll.all_gather(packed)
    else:
        with torch.no_grad():  # pull-only needs the gather for the accuracy metric only
            gathered = coll.all_gather(packed.detach())
    c_all, m_all = gathered[:, :d], gathered[:, d] > 0.5  # [W*N, d], [W*N]
    pos_global = coll.rank * n + q_idx  # [Q]

    sims = q @ c_all.T  # [Q, W*N] cosines
    sims_masked = sims.masked_fill(~m_all[None, :], float("-inf"))
    sim_pos = (q * pos_local).sum(dim=-1)  # [Q]; equals sims[i, pos_global[i]]

    if not contrast:
        terms = 1.0 - sim_pos
    elif loss_type == "infonce":
        logits = sims_masked / tau
        terms = torch.logsumexp(logits, dim=1) - sim_pos / tau
    else:  # hinge
        neg_mask = m_all[None, :].expand(n_q_local, -1).clone()
        neg_mask[torch.arange(n_q_local, device=neg_mask.device), pos_global] = False
        hinge = (hinge_margin - sim_pos[:, None] + sims).clamp_min(0.0) * neg_mask
        terms = hinge.sum(dim=1) / neg_mask.sum(dim=1).clamp_min(1)

    with torch.no_grad():
        correct = (sims_masked.argmax(dim=1) == pos_global).sum() if n_q_local else q_idx.new_zeros(())
        stats = coll.all_sum(torch.stack([q.new_tensor(float(n_q_local)), correct.float()]))
    n_global = stats[0]
    loss = terms.sum() / n_global.clamp_min(1.0) * coll.world_size
    accuracy = stats[1] / n_global.clamp_min(1.0)
    return LossOutput(loss=loss, n_terms=n_global, accuracy=accuracy)


def pv_contrastive_loss(
    e_pv: Tensor,
    r_pv: Tensor,
    pv_mask: Tensor,
    pv_labels: Tensor,
    tau: float = 0.05,
    collective: Collective | None = None,
    use_negative_pv: bool = True,
    *,
    loss_type: str = "infonce",
    hinge_margin: float = 0.2,
    contrast: bool = True,
) -> LossOutput:
    """PV loss: ``e_pv, r_pv [B, L, d]``, ``pv_mask, pv_labels [B, L]``.

    Queries: ``r_pv`` of clicked valid items; candidates: every valid ``e_pv``
    of the global batch (``use_negative_pv=False``: clicked ones only, the
    "w/o Neg PV" ablation).
    """
    b, l, d = e_pv.shape
    mask = pv_mask.reshape(b * l).bool()
    clicked = mask & (pv_labels.reshape(b * l) > 0)
    return contrastive_loss(
        r_pv.reshape(b * l, d),
        e_pv.reshape(b * l, d),
        clicked,
        mask if use_negative_pv else clicked,
        tau,
        collective,
        loss_type=loss_type,
        hinge_margin=hinge_margin,
        contrast=contrast,
    )


def ucs_loss(
    e_target: Tensor,
    r_ucs: Tensor,
    ucs_mask: Tensor,
    tau: float = 0.05,
    collective: Collective | None = None,
    target_mask: Tensor | None = None,
    *,
    loss_type: str = "infonce",
    hinge_margin: float = 0.2,
    contrast: bool = True,
) -> LossOutput:
    """UCS loss: ``e_target, r_ucs [B, d]``, ``ucs_mask [B]`` (rows with a query).

    Candidates: ``e_target`` of rows with ``target_mask`` (default
    ``ucs_mask``; ``CourierModel`` provides ``ucs_target_mask`` = rows with >= 1
    click, whose single click still serves as a negative).
    """
    tmask = ucs_mask if target_mask is None else target_mask
    return contrastive_loss(
        r_ucs,
        e_target,
        ucs_mask,
        tmask,
        tau,
        collective,
        loss_type=loss_type,
        hinge_margin=hinge_margin,
        contrast=contrast,
    )


# The loss settings are the schema's `train` loss part (one declaration, checked
# like every config section); any TrainConfig is one too.
LossConfig = TrainLoss


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def courier_loss(
    outputs: Any,
    batch: Mapping[str, Tensor] | Any,
    cfg: LossConfig | None = None,
    collective: Collective | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_pv + L_ucs`` for a ``CourierOutput`` (or a mapping with the same keys).

    batch needs ``pv_mask [B, Lpv]`` and ``pv_labels [B, Lpv]`` (mapping or
    attributes); ``hist_mask`` is read from ``outputs``. Clicked PV items of a
    row without any valid history are not queries (nothing to reconstruct
    from; the data contract drops such rows anyway) but stay candidates.

    Returns the differentiable total (this worker's share, see module doc) and
    detached scalar metrics: loss, loss_pv, loss_ucs, acc_pv, acc_ucs,
    n_pv_terms, n_ucs_terms (n_* and acc_* are global).
    """
    cfg = cfg or LossConfig()
    pv_mask = _get(batch, "pv_mask").bool()
    labels = _get(batch, "pv_labels")
    hist_mask = _get(outputs, "hist_mask").bool()
    clicked = (labels > 0) & hist_mask.any(dim=1, keepdim=True)
    common = dict(loss_type=cfg.loss_type, hinge_margin=cfg.hinge_margin, contrast=cfg.contrast)
    pv = pv_contrastive_loss(
        _get(outputs, "e_pv"),
        _get(outputs, "r_pv"),
        pv_mask,
        clicked,
        cfg.tau_pv,
        collective,
        cfg.use_negative_pv,
        **common,
    )
    total = pv.loss
    metrics = {"loss_pv": pv.loss.detach(), "acc_pv": pv.accuracy, "n_pv_terms": pv.n_terms}
    if cfg.use_ucs:
        ucs = ucs_loss(
            _get(outputs, "e_ucs_target"),
            _get(outputs, "r_ucs"),
            _get(outputs, "ucs_mask"),
            cfg.tau_ucs,
            collective,
            _get(outputs, "ucs_target_mask"),
            **common,
        )
        total = total + ucs.loss
        metrics.update(loss_ucs=ucs.loss.detach(), acc_ucs=ucs.accuracy, n_ucs_terms=ucs.n_terms)
    metrics["loss"] = total.detach()
    return total, metrics

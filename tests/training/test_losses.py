"""COURIER losses against naive Python loops (float64), plus invariances."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from training.losses import (
    LocalCollective,
    LossConfig,
    contrastive_loss,
    courier_loss,
    pv_contrastive_loss,
    ucs_loss,
)

TAU = 0.05


# ----------------------------------------------------------------- fixtures / naive references


def make_pv(seed: int = 0, d: int = 8):
    """4 pages, L=5, ragged lengths, several clicked items on some pages, garbage in padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 3, 1, 4]
    clicks = [[0, 1], [0], [0], [0, 1, 2]]
    b, l = len(lengths), 5
    mask = torch.zeros(b, l, dtype=torch.bool)
    labels = torch.zeros(b, l, dtype=torch.long)
    for i, (n, cs) in enumerate(zip(lengths, clicks)):
        mask[i, :n] = True
        labels[i, cs] = 1
    labels[0, 4] = 0
    labels[2, 3] = 1  # a "click" on a padded slot must be ignored
    e = torch.randn(b, l, d, generator=g, dtype=torch.float64)
    r = torch.randn(b, l, d, generator=g, dtype=torch.float64)
    return e, r, mask, labels


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (a.norm() * b.norm())


def naive_pv(e, r, mask, labels, tau=TAU, use_neg=True, kind="infonce", margin=0.2):
    b, l, _ = e.shape
    cands = [(i, j) for i in range(b) for j in range(l) if mask[i, j] and (use_neg or labels[i, j])]
    queries = [(i, j) for i in range(b) for j in range(l) if mask[i, j] and labels[i, j]]
    terms = []
    for i, j in queries:
        q = r[i, j]
        pos = cos(e[i, j], q)
        if kind == "pull":
            terms.append(1 - pos)
        elif kind == "hinge":
            negs = [cos(e[a, c], q) for a, c in cands if (a, c) != (i, j)]
            terms.append(sum(torch.clamp(margin - pos + s, min=0) for s in negs) / len(negs))
        else:
            den = sum(torch.exp(cos(e[a, c], q) / tau) for a, c in cands)
            terms.append(-torch.log(torch.exp(pos / tau) / den))
    return sum(terms) / len(terms)


def naive_accuracy(e, r, mask, labels, use_neg=True):
    b, l, _ = e.shape
    cands = [(i, j) for i in range(b) for j in range(l) if mask[i, j] and (use_neg or labels[i, j])]
    queries = [(i, j) for i in range(b) for j in range(l) if mask[i, j] and labels[i, j]]
    hits = 0
    for i, j in queries:
        sims = [float(cos(e[a, c], r[i, j])) for a, c in cands]
        hits += cands[max(range(len(sims)), key=sims.__getitem__)] == (i, j)
    return hits / len(queries)


def grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [x.grad for x in leaves]


# ----------------------------------------------------------------- PV loss


@pytest.mark.parametrize("use_neg", [True, False])
def test_pv_infonce_matches_naive_loop(use_neg):
    e, r, mask, labels = make_pv()
    ref, (ge_ref, gr_ref) = grads(lambda e, r: naive_pv(e, r, mask, labels, use_neg=use_neg), e, r)
    got, (ge, gr) = grads(
        lambda e, r: pv_contrastive_loss(e, r, mask, labels, TAU, use_negative_pv=use_neg).loss, e, r
    )
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    # float32 internally, tau = 0.05: gradients to ~1e-5 relative
    torch.testing.assert_close(ge, ge_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gr, gr_ref, atol=1e-4, rtol=1e-4)


def test_pv_no_negative_pv_differs_from_full():
    e, r, mask, labels = make_pv()
    full = pv_contrastive_loss(e, r, mask, labels).loss
    pos_only = pv_contrastive_loss(e, r, mask, labels, use_negative_pv=False).loss
    assert abs(full.item() - pos_only.item()) > 1e-3  # the unclicked negatives matter


@pytest.mark.parametrize("kind", ["hinge", "pull"])
def test_pv_hinge_and_pull_only_match_naive_loop(kind):
    e, r, mask, labels = make_pv(seed=1)
    ref, (ge_ref, gr_ref) = grads(lambda e, r: naive_pv(e, r, mask, labels, kind=kind, margin=0.3), e, r)
    kw = dict(loss_type="hinge", hinge_margin=0.3) if kind == "hinge" else dict(contrast=False)
    got, (ge, gr) = grads(lambda e, r: pv_contrastive_loss(e, r, mask, labels, TAU, **kw).loss, e, r)
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(ge, ge_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gr, gr_ref, atol=1e-5, rtol=1e-4)


def test_accuracy_matches_naive_and_counts_terms():
    e, r, mask, labels = make_pv(seed=2)
    r = r.clone()
    r[0, 0] = e[0, 0] * 3.0  # guaranteed hit
    out = pv_contrastive_loss(e, r, mask, labels)
    assert out.accuracy.item() == pytest.approx(naive_accuracy(e, r, mask, labels))
    assert out.n_terms.item() == int((mask & (labels > 0)).sum())  # 7 = clicked valid items only
    assert out.n_terms.item() == 7


def test_padding_garbage_changes_nothing():
    e, r, mask, labels = make_pv(seed=3)
    e2, r2 = e.clone(), r.clone()
    e2[~mask] = 1e30
    r2[~mask] = -1e30
    e2[1, 4, 0] = float("nan")
    r2[2, 3, 1] = float("inf")  # padded slot that is even labelled clicked
    for kw in (dict(), dict(loss_type="hinge"), dict(contrast=False), dict(use_negative_pv=False)):
        f = lambda e, r: pv_contrastive_loss(e, r, mask, labels, **kw).loss  # noqa: E731
        l1, (ge1, gr1) = grads(f, e, r)
        l2, (ge2, gr2) = grads(f, e2, r2)
        assert l1.item() == l2.item(), kw
        assert torch.equal(ge1[mask], ge2[mask]) and torch.equal(gr1[mask], gr2[mask]), kw
        assert torch.all(ge2[~mask] == 0) and torch.all(gr2[~mask] == 0), kw


def test_unclicked_items_are_never_queries():
    e, r, mask, labels = make_pv(seed=4)
    unclicked = mask & (labels == 0)
    r2 = r.clone()
    r2[unclicked] = torch.randn(int(unclicked.sum()), r.shape[-1], dtype=r.dtype)
    f = lambda e, r: pv_contrastive_loss(e, r, mask, labels).loss  # noqa: E731
    l1, (_, gr1) = grads(f, e, r)
    l2, (ge2, gr2) = grads(f, e, r2)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-7)
    assert torch.all(gr2[unclicked] == 0)
    # ...but they are negatives: their embeddings get gradient
    assert torch.all(ge2[unclicked].abs().sum(-1) > 0)


def test_collapsed_encoder_gives_log_of_candidate_count():
    _, _, mask, labels = make_pv()
    v = torch.randn(8, dtype=torch.float64)
    e = v.expand(4, 5, 8).clone()
    n_valid = int(mask.sum())  # 13
    assert pv_contrastive_loss(e, e.clone(), mask, labels).loss.item() == pytest.approx(math.log(n_valid), abs=1e-5)
    n_clicked = int((mask & (labels > 0)).sum())
    got = pv_contrastive_loss(e, e.clone(), mask, labels, use_negative_pv=False).loss.item()
    assert got == pytest.approx(math.log(n_clicked), abs=1e-5)
    # UCS: candidates = valid targets (rows with >= 1 click), not only rows with a query
    t = v.expand(6, 8).clone()
    ucs_m = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    tgt_m = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    assert ucs_loss(t, t.clone(), ucs_m, target_mask=tgt_m).loss.item() == pytest.approx(math.log(5), abs=1e-5)


def test_no_query_gives_zero_loss_with_graph():
    e, r, mask, _ = make_pv()
    e = e.requires_grad_(True)
    out = pv_contrastive_loss(e, r, mask, torch.zeros(4, 5, dtype=torch.long))
    assert out.loss.item() == 0.0 and out.n_terms.item() == 0 and out.accuracy.item() == 0.0
    out.loss.backward()  # participates in backward (collectives) without error
    assert torch.all(e.grad == 0)


# ----------------------------------------------------------------- UCS loss


def naive_ucs(t, r, ucs_m, tgt_m, tau=TAU):
    terms = []
    for i in range(t.shape[0]):
        if not ucs_m[i]:
            continue
        den = sum(torch.exp(cos(t[k], r[i]) / tau) for k in range(t.shape[0]) if tgt_m[k])
        terms.append(-torch.log(torch.exp(cos(t[i], r[i]) / tau) / den))
    return sum(terms) / len(terms)


def test_ucs_matches_naive_loop_and_ignores_garbage():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(6, 8, generator=g, dtype=torch.float64)
    r = torch.randn(6, 8, generator=g, dtype=torch.float64)
    ucs_m = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)  # row 2: one click, row 4: none
    tgt_m = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    ref, (gt_ref, gr_ref) = grads(lambda t, r: naive_ucs(t, r, ucs_m, tgt_m), t, r)
    got, (gt, gr) = grads(lambda t, r: ucs_loss(t, r, ucs_m, TAU, target_mask=tgt_m).loss, t, r)
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(gt, gt_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gr, gr_ref, atol=1e-4, rtol=1e-4)
    t2, r2 = t.clone(), r.clone()
    t2[4], r2[4], r2[2] = 1e30, float("nan"), 1e30  # row 4 padded; row 2 has no query
    got2, (gt2, gr2) = grads(lambda t, r: ucs_loss(t, r, ucs_m, TAU, target_mask=tgt_m).loss, t2, r2)
    assert got2.item() == got.item()
    assert torch.equal(gt2[tgt_m], gt[tgt_m]) and torch.all(gt2[4] == 0) and torch.all(gr2[~ucs_m] == 0)


# ----------------------------------------------------------------- courier_loss


def _outputs(seed=6, d=8):
    e, r, mask, labels = make_pv(seed, d)
    g = torch.Generator().manual_seed(seed + 100)
    hist_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    out = dict(
        e_pv=e, r_pv=r, hist_mask=hist_mask,
        e_ucs_target=torch.randn(4, d, generator=g, dtype=torch.float64),
        r_ucs=torch.randn(4, d, generator=g, dtype=torch.float64),
        ucs_mask=hist_mask.sum(1) >= 2, ucs_target_mask=hist_mask.sum(1) >= 1,
    )
    return out, {"pv_mask": mask, "pv_labels": labels}


def test_courier_loss_sums_pv_and_ucs_and_respects_flags():
    out, batch = _outputs()
    total, m = courier_loss(out, batch)
    # row 2 has no history: its clicked item is a candidate, not a query
    labels_q = batch["pv_labels"].clone()
    labels_q[2] = 0
    pv = naive_pv(out["e_pv"], out["r_pv"], batch["pv_mask"], labels_q)
    ucs = naive_ucs(out["e_ucs_target"], out["r_ucs"], out["ucs_mask"], out["ucs_target_mask"])
    assert total.item() == pytest.approx((pv + ucs).item(), abs=1e-5)
    assert m["loss_pv"].item() == pytest.approx(pv.item(), abs=1e-5)
    assert m["n_pv_terms"].item() == 6 and m["n_ucs_terms"].item() == 2
    total_no_ucs, m2 = courier_loss(out, batch, LossConfig(use_ucs=False))
    assert total_no_ucs.item() == pytest.approx(pv.item(), abs=1e-5) and "loss_ucs" not in m2
    hinge, _ = courier_loss(out, batch, LossConfig(loss_type="hinge", use_ucs=False))
    assert hinge.item() == pytest.approx(naive_pv(out["e_pv"], out["r_pv"], batch["pv_mask"], labels_q, kind="hinge").item(), abs=1e-5)
    with pytest.raises(ValueError):
        LossConfig(loss_type="triplet")


# ----------------------------------------------------------------- distribution (simulated, exact)


class ThreadCollective:
    """W workers as W threads of one process sharing one autograd graph.

    all_gather returns the real (non-detached) tensors of every worker, so
    backward of sum_w loss_w accumulates every worker's gradient into each
    slice: exactly what a sum-reducing all_gather backward does.
    """

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world_size, self.shared = rank, world, shared

    def _exchange(self, t):
        s = self.shared
        s["barrier"].wait()
        s["slots"][self.rank] = t
        s["barrier"].wait()
        parts = list(s["slots"])
        s["barrier"].wait()
        return parts

    def all_gather(self, t):
        return torch.cat(self._exchange(t), dim=0)

    def all_sum(self, t):
        return torch.stack([p.detach() for p in self._exchange(t)]).sum(0)


def run_workers(world: int, fn):
    shared = {"barrier": threading.Barrier(world), "slots": [None] * world}
    results, errors = [None] * world, []

    def target(rank):
        try:
            results[rank] = fn(rank, ThreadCollective(rank, world, shared))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("kind", ["pv", "pv_hinge", "ucs"])
def test_split_batch_with_gathered_negatives_equals_union_batch(kind):
    """Averaging W workers' gradients == one process on the union batch (the documented normalisation)."""
    world, rows = 2, 4
    e, r, mask, labels = make_pv(seed=7)
    e2, r2, mask2, labels2 = make_pv(seed=8)
    mask2[1, :] = True  # make the halves unequal in query and candidate counts
    E, R = torch.cat([e, e2]).requires_grad_(True), torch.cat([r, r2]).requires_grad_(True)
    M, Y = torch.cat([mask, mask2]), torch.cat([labels, labels2])

    def loss_fn(e, r, m, y, coll):
        if kind == "pv":
            return pv_contrastive_loss(e, r, m, y, TAU, coll).loss
        if kind == "pv_hinge":
            return pv_contrastive_loss(e, r, m, y, TAU, coll, loss_type="hinge").loss
        # UCS: reuse the first PV slot of each row as target / reconstruction
        return ucs_loss(e[:, 0], r[:, 0], y[:, 0] > 0, TAU, coll, target_mask=m[:, 0]).loss

    ref = loss_fn(E, R, M, Y, LocalCollective())
    g_ref = torch.autograd.grad(ref, [E, R])

    def worker(rank, coll):
        sl = slice(rank * rows, (rank + 1) * rows)
        return loss_fn(E[sl], R[sl], M[sl], Y[sl], coll)

    losses = run_workers(world, worker)
    # Each worker's backward sums into the shared leaves; the optimiser then averages over W.
    g = torch.autograd.grad(sum(losses) / world, [E, R])
    assert (sum(losses) / world).item() == pytest.approx(ref.item(), abs=1e-6)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # The check has teeth: purely local negatives give a different gradient.
    local = [loss_fn(E[s], R[s], M[s], Y[s], LocalCollective()) for s in (slice(0, rows), slice(rows, 2 * rows))]
    g_local = torch.autograd.grad(sum(local) / world, [E, R])
    assert max((a - b).abs().max().item() for a, b in zip(g_local, g_ref)) > 1e-3


_GLOO_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from training.losses import TorchDistributedCollective, pv_contrastive_loss
    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    data = torch.load(sys.argv[5])
    n = data["e"].shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    e = data["e"][sl].clone().requires_grad_(True)
    r = data["r"][sl].clone().requires_grad_(True)
    res = pv_contrastive_loss(e, r, data["m"][sl], data["y"][sl], 0.05, TorchDistributedCollective())
    res.loss.backward()
    torch.save({"loss": res.loss.detach(), "ge": e.grad, "gr": r.grad, "acc": res.accuracy, "n": res.n_terms}, out)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_torch_distributed_collective_two_gloo_processes(tmp_path):
    e, r, mask, labels = make_pv(seed=9)
    e2, r2, mask2, labels2 = make_pv(seed=10)
    data = {"e": torch.cat([e, e2]).float(), "r": torch.cat([r, r2]).float(),
            "m": torch.cat([mask, mask2]), "y": torch.cat([labels, labels2])}
    torch.save(data, tmp_path / "data.pt")
    (tmp_path / "w.py").write_text(_GLOO_SCRIPT)
    init = f"file://{tmp_path / 'rdv'}"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, str(tmp_path / "w.py"), str(rk), "2", init,
                          str(tmp_path / f"out{rk}.pt"), str(tmp_path / "data.pt")], env=env, cwd=root,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rk in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    res = [torch.load(tmp_path / f"out{rk}.pt") for rk in range(2)]
    E, R = data["e"].clone().requires_grad_(True), data["r"].clone().requires_grad_(True)
    ref = pv_contrastive_loss(E, R, data["m"], data["y"])
    ref.loss.backward()
    assert ((res[0]["loss"] + res[1]["loss"]) / 2).item() == pytest.approx(ref.loss.item(), abs=1e-5)
    # DDP / Horovod average the per-worker gradients; here each worker's slice is its own leaf,
    # so the averaged gradient of the union is the concatenation divided by W.
    torch.testing.assert_close(torch.cat([res[0]["ge"], res[1]["ge"]]) / 2, E.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([res[0]["gr"], res[1]["gr"]]) / 2, R.grad, atol=1e-6, rtol=1e-5)
    assert res[0]["n"].item() == res[1]["n"].item() == ref.n_terms.item()
    assert res[0]["acc"].item() == pytest.approx(ref.accuracy.item())

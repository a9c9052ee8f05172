"""SimCLR and supervised-click baselines."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.backbones import build_backbone
from training.baselines import (
    AugmentConfig,
    SimCLRModel,
    SupervisedClickModel,
    baseline_loss,
    simclr_augment,
    simclr_loss,
    supervised_click_loss,
    two_views,
)


def naive_nt_xent(z1, z2, tau, mask):
    views = [(i, v) for i in range(z1.shape[0]) if mask[i] for v in (0, 1)]
    z = {(i, 0): z1[i] for i in range(z1.shape[0])} | {(i, 1): z2[i] for i in range(z2.shape[0])}

    def cos(a, b):
        return torch.dot(a, b) / (a.norm() * b.norm())

    terms = []
    for i, v in views:
        q = z[(i, v)]
        den = sum(torch.exp(cos(q, z[c]) / tau) for c in views if c != (i, v))
        terms.append(-torch.log(torch.exp(cos(q, z[(i, 1 - v)]) / tau) / den))
    return sum(terms) / len(terms)


def test_simclr_loss_matches_naive_loop_with_padding():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)
    ref = naive_nt_xent(z1, z2, 0.2, mask)
    g_ref = torch.autograd.grad(ref, [z1, z2])
    out = simclr_loss(z1, z2, 0.2, mask=mask)
    g = torch.autograd.grad(out.loss, [z1, z2])
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert out.n_terms.item() == 8
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # unmasked: 2N-2 negatives; collapsed -> log(2N - 1)
    v = torch.randn(5, dtype=torch.float64)
    assert simclr_loss(v.expand(6, 5), v.expand(6, 5)).loss.item() == pytest.approx(math.log(11), abs=1e-5)
    assert simclr_loss(z1, z1.detach() * 2).accuracy.item() == 1.0


def test_augment_shapes_range_determinism():
    x = torch.rand(4, 3, 20, 20)
    a = simclr_augment(x, torch.Generator().manual_seed(1), out_size=16)
    b = simclr_augment(x, torch.Generator().manual_seed(1), out_size=16)
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    v1, v2 = two_views(x, torch.Generator().manual_seed(1))
    assert v1.shape == x.shape and not torch.allclose(v1, v2)


def test_augment_components():
    x = torch.rand(3, 3, 12, 12)
    ident = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter_p=0, grey_p=0)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(simclr_augment(x, g, cfg=ident), x, atol=1e-5, rtol=0)
    flip = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=1, jitter_p=0, grey_p=0)
    torch.testing.assert_close(simclr_augment(x, g, cfg=flip), x.flip(-1), atol=1e-5, rtol=0)
    grey = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter_p=0, grey_p=1)
    y = simclr_augment(x, g, cfg=grey)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])
    # hue rotation keeps luma (Y of YIQ) when nothing clips
    hue = AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter_p=1, brightness=0,
                        contrast=0, saturation=0, hue=0.5, grey_p=0, clamp=False)
    z = simclr_augment(x, g, cfg=hue)
    lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((z * lum).sum(1), (x * lum).sum(1), atol=1e-5, rtol=0)
    assert not torch.allclose(z, x)


def _toy_batch(seed: int, size: int = 16):
    """Clicked items are bright, unclicked dark: trivially separable from pixels."""
    g = torch.Generator().manual_seed(seed)
    b, lpv, lc = 8, 4, 3
    labels = (torch.rand(b, lpv, generator=g) < 0.5).long()
    labels[:, 0] = 1
    pv = 0.1 * torch.rand(b, lpv, 3, size, size, generator=g) + 0.8 * labels[..., None, None, None]
    pv_mask = torch.ones(b, lpv, dtype=torch.bool)
    pv_mask[::2, 3] = False
    hist = torch.rand(b, lc, 3, size, size, generator=g)
    hist_mask = torch.ones(b, lc, dtype=torch.bool)
    hist_mask[1::2, 2] = False
    return {"pv_images": pv, "pv_mask": pv_mask, "hist_images": hist, "hist_mask": hist_mask, "pv_labels": labels}


def test_supervised_loss_matches_bce_on_valid_items():
    batch = _toy_batch(0)
    logits = torch.randn(8, 4)
    out = supervised_click_loss(logits, batch["pv_labels"], batch["pv_mask"])
    m = batch["pv_mask"]
    ref = F.binary_cross_entropy_with_logits(logits[m], batch["pv_labels"][m].float())
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert out.n_terms.item() == int(m.sum())


def test_supervised_model_learns_separable_toy():
    torch.manual_seed(0)
    model = SupervisedClickModel(build_backbone("small_cnn", 16), hidden_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _toy_batch(1)
    losses = []
    for _ in range(15):
        logits = model(batch["pv_images"], batch["pv_mask"], batch["hist_images"], batch["hist_mask"])
        assert logits.shape == (8, 4) and torch.all(logits[~batch["pv_mask"]] == 0)
        out = supervised_click_loss(logits, batch["pv_labels"], batch["pv_mask"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert out.accuracy.item() == 1.0


@pytest.mark.parametrize("objective", ["simclr", "supervised_image"])
def test_baseline_loss_dispatch(objective):
    torch.manual_seed(0)
    enc = build_backbone("small_cnn", 16)
    model = SimCLRModel(enc, proj_dim=8) if objective == "simclr" else SupervisedClickModel(enc, 16)

    class Cfg:
        seed, tau_simclr = 0, 0.2

    batch = _toy_batch(2)
    loss, metrics = baseline_loss(objective, model, batch, Cfg(), None, step=3)
    loss.backward()
    assert set(metrics) == {"loss", "acc", "n_terms"} and torch.isfinite(loss)
    n_valid = int(batch["pv_mask"].sum() + batch["hist_mask"].sum())
    assert metrics["n_terms"].item() == (2 * n_valid if objective == "simclr" else int(batch["pv_mask"].sum()))
    assert all(p.grad is not None for p in enc.parameters())
    # same (seed, step, rank) -> same augmentations -> same loss
    loss2, _ = baseline_loss(objective, model, batch, Cfg(), None, step=3)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
    with pytest.raises(ValueError):
        baseline_loss("clip", model, batch, Cfg(), None, step=0)

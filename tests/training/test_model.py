"""Backbones, reconstruction and the COURIER model forward."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.backbones import build_backbone, default_image_size, load_weights
from training.model import CourierModel, reconstruct, ucs_split

D = 16
SIZE = 16  # small_cnn works on any size >= 16 (four stride-2 convs)


# ----------------------------------------------------------------- reconstruct()


def naive_reconstruct(query, keys, mask):
    b, nq, d = query.shape
    out = torch.zeros(b, nq, d, dtype=query.dtype)
    for i in range(b):
        valid = [k for k in range(keys.shape[1]) if mask[i, k]]
        for q in range(nq):
            if not valid:
                continue
            scores = [torch.dot(query[i, q], keys[i, k]) / math.sqrt(d) for k in valid]
            z = sum(torch.exp(s) for s in scores)
            for s, k in zip(scores, valid):
                out[i, q] += torch.exp(s) / z * keys[i, k]
    return out


def _qkm(seed=0, b=4, nq=3, nk=5, d=6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, nk, d, generator=g, dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    return q, k, m


def test_reconstruct_matches_naive_loop():
    q, k, m = _qkm()
    torch.testing.assert_close(reconstruct(q, k, m), naive_reconstruct(q, k, m), atol=1e-10, rtol=1e-10)
    assert torch.all(reconstruct(q, k, m)[3] == 0)  # no history -> zeros, not nan


def test_reconstruct_masked_keys_get_no_weight_and_no_gradient():
    q, k, m = _qkm(1)
    k2 = k.clone()
    k2[~m] = 1e30
    k2[1, 3, 0] = float("nan")
    k2 = k2.requires_grad_(True)
    out = reconstruct(q, k2, m)
    torch.testing.assert_close(out, reconstruct(q, k, m), atol=0, rtol=0)
    out.sum().backward()
    assert torch.all(k2.grad[~m] == 0) and torch.isfinite(k2.grad).all()


def test_reconstruct_is_convex_combination():
    q, k, m = _qkm(2)
    ones = torch.ones(*k.shape[:2], 1, dtype=k.dtype)
    out = reconstruct(torch.cat([q, torch.zeros_like(ones[:, :3])], -1), torch.cat([k, ones], -1), m)
    # the constant coordinate carries the sum of the attention weights
    torch.testing.assert_close(out[:3, :, -1], torch.ones(3, 3, dtype=k.dtype))
    for i in range(3):  # inside the per-coordinate hull of the valid keys
        lo, hi = k[i][m[i]].min(0).values, k[i][m[i]].max(0).values
        assert torch.all(out[i, :, :-1] >= lo - 1e-12) and torch.all(out[i, :, :-1] <= hi + 1e-12)


@pytest.mark.parametrize("mode", ["multihead", "self"])
def test_learned_attention_respects_the_mask(mode):
    torch.manual_seed(0)
    model = CourierModel(build_backbone("small_cnn", 8), attention=mode).double()
    q, k, m = _qkm(3, d=8)
    out = model._attend(q, k, m)
    k2 = k.clone()
    k2[~m] = 1e6
    torch.testing.assert_close(model._attend(q, k2, m), out)
    # padded vs. truncated history: a forgotten key_padding_mask would attend to the zero slots
    for i, n in [(1, 2), (2, 1)]:
        trunc = model._attend(q[i : i + 1], k[i : i + 1, :n], m[i : i + 1, :n])
        torch.testing.assert_close(out[i : i + 1], trunc)
    assert torch.all(out[3] == 0) and torch.isfinite(out).all()
    if mode == "self":  # query independent
        torch.testing.assert_close(out[:, 0], out[:, 1])


# ----------------------------------------------------------------- model forward


def make_batch(seed=0, b=3, lpv=5, lc=4):
    g = torch.Generator().manual_seed(seed)
    pv_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)[:b, :lpv]
    hist_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)[:b, :lc]
    return (torch.rand(b, lpv, 3, SIZE, SIZE, generator=g), pv_mask,
            torch.rand(b, lc, 3, SIZE, SIZE, generator=g), hist_mask)


class CountingEncoder(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc, self.embed_dim, self.calls = enc, enc.embed_dim, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.enc(x)


@pytest.mark.parametrize("attention", ["plain", "multihead", "self"])
def test_forward_shapes_padding_and_gradients(attention):
    torch.manual_seed(0)
    enc = CountingEncoder(build_backbone("small_cnn", D))
    model = CourierModel(enc, attention=attention)
    pv, pm, hist, hm = make_batch()
    out = model(pv, pm, hist, hm)
    assert enc.calls == [int(pm.sum() + hm.sum())]  # one call, valid images only
    assert out.e_pv.shape == out.r_pv.shape == (3, 5, D) and out.e_hist.shape == (3, 4, D)
    assert out.e_ucs_target.shape == out.r_ucs.shape == (3, D)
    for t, m in [(out.e_pv, pm), (out.r_pv, pm), (out.e_hist, hm)]:
        assert torch.all(t[~m] == 0) and torch.all(t[m].abs().sum(-1) > 0)
    assert out.ucs_mask.tolist() == [True, True, False]
    assert out.ucs_target_mask.tolist() == [True, True, True]
    torch.testing.assert_close(out.e_ucs_target, out.e_hist[[0, 1, 2], [3, 1, 0]])
    assert torch.all(out.r_ucs[2] == 0)
    # gradient reaches every encoder parameter
    (out.r_pv.sum() + out.e_pv.pow(2).sum() + out.r_ucs.sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_forward_plain_matches_manual_reconstruction_and_ignores_padded_images():
    torch.manual_seed(0)
    model = CourierModel.from_backbone("small_cnn", D)
    pv, pm, hist, hm = make_batch(1)
    out = model(pv, pm, hist, hm)
    e_pv = torch.stack([model.encode(pv[i]) for i in range(3)]) * pm[..., None]
    e_hist = torch.stack([model.encode(hist[i]) for i in range(3)]) * hm[..., None]
    torch.testing.assert_close(out.e_pv, e_pv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.r_pv, reconstruct(e_pv, e_hist, hm) * pm[..., None], atol=1e-5, rtol=1e-5)
    # UCS of row 0: target slot 3 reconstructed from slots 0..2
    r0 = reconstruct(e_hist[0:1, 3:4], e_hist[0:1, :3], hm[0:1, :3])[0, 0]
    torch.testing.assert_close(out.r_ucs[0], r0, atol=1e-5, rtol=1e-5)
    pv2, hist2 = pv.clone(), hist.clone()
    pv2[~pm], hist2[~hm] = float("nan"), 1e9
    out2 = model(pv2, pm, hist2, hm)
    torch.testing.assert_close(out2.r_pv, out.r_pv, atol=0, rtol=0)
    torch.testing.assert_close(out2.r_ucs, out.r_ucs, atol=0, rtol=0)


def test_ucs_split_picks_newest_click():
    hm = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    idx, earlier, ucs, tgt = ucs_split(hm)
    assert idx.tolist() == [2, 0, 0, 4]
    assert earlier.sum(1).tolist() == [2, 0, 0, 4] and not earlier[:, -1].any()
    assert ucs.tolist() == [True, False, False, True] and tgt.tolist() == [True, True, False, True]


def test_bad_attention_mode_rejected():
    with pytest.raises(ValueError):
        CourierModel(build_backbone("small_cnn", 8), attention="cross")


# ----------------------------------------------------------------- backbones


@pytest.mark.parametrize("name,size", [("small_cnn", 32), ("resnet18", 32), ("swin_t", 32)])
def test_backbones_output_embed_dim(name, size):
    torch.manual_seed(0)
    enc = build_backbone(name, 24)
    assert enc.embed_dim == 24 and enc.backbone_name == name
    assert enc(torch.rand(2, 3, size, size)).shape == (2, 24)
    head = build_backbone(name, 24, projection_head=True)
    assert head(torch.rand(2, 3, size, size)).shape == (2, 24)
    assert default_image_size(name) == {"swin_t": 224, "resnet18": 64, "small_cnn": 48}[name]


def test_unknown_backbone():
    with pytest.raises(ValueError):
        build_backbone("vit_b_16")
    with pytest.raises(ValueError):
        default_image_size("vit_b_16")


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "swin_t"])
def test_grad_checkpointing_keeps_keys_and_gradients(name):
    torch.manual_seed(0)
    a = build_backbone(name, 8)
    b = build_backbone(name, 8, grad_checkpointing=True)
    assert list(a.state_dict()) == list(b.state_dict())  # checkpoints interchangeable
    assert any(type(m).__name__ == "CheckpointedSequential" for m in b.modules())
    b.load_state_dict(a.state_dict())
    for m in [*a.modules(), *b.modules()]:
        if type(m).__name__ == "StochasticDepth":
            m.p = 0.0  # swin_t's random block dropping would differ between the two models
    x = torch.rand(2, 3, 32, 32)
    a(x).square().sum().backward()
    b(x).square().sum().backward()  # train mode: the checkpointed path
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_weights_path_loads_torchvision_style_and_reports(tmp_path, caplog):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)  # stands in for an ImageNet checkpoint
    torch.save(tv.state_dict(), tmp_path / "imagenet.pt")
    enc = build_backbone("resnet18", 32, str(tmp_path / "imagenet.pt"))
    rep = enc.load_report
    assert any(s.startswith("fc.weight") for s in rep.shape_mismatch)
    assert rep.missing == ["fc.bias", "fc.weight"] and not rep.unexpected
    torch.testing.assert_close(enc.conv1.weight, tv.conv1.weight)
    assert "shape mismatch" in caplog.text

    # a CourierModel checkpoint (encoder. prefix) round-trips exactly
    model = CourierModel.from_backbone("small_cnn", 8, attention="multihead")
    torch.save({"model": model.state_dict()}, tmp_path / "courier.pt")
    enc2 = build_backbone("small_cnn", 8, str(tmp_path / "courier.pt"))
    assert not enc2.load_report.missing and not enc2.load_report.shape_mismatch
    assert all(k.startswith("mha.") for k in enc2.load_report.unexpected)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(enc2(x), model.encode(x))

    torch.save({"something": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="no tensor"):
        load_weights(build_backbone("small_cnn", 8), str(tmp_path / "wrong.pt"))


# ----------------------------------------------------------------- each distinct item encoded once


def _indexed_and_per_slot(seed=0, n_items=6, b=4, l_pv=5, l_c=4):
    """A batch with repeated items, as an indexed batch and as per-slot images."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, 3, SIZE, SIZE, generator=g)
    pv_slot = torch.randint(0, n_items, (b, l_pv), generator=g)
    hist_slot = torch.randint(0, n_items, (b, l_c), generator=g)
    pv_slot[0, 3:] = -1
    hist_slot[1, 1:] = -1
    hist_slot[2] = -1
    labels = torch.zeros(b, l_pv, dtype=torch.long)
    labels[:, 0] = 1
    indexed = {"items": items, "pv_slot": pv_slot, "pv_mask": pv_slot >= 0, "hist_slot": hist_slot,
               "hist_mask": hist_slot >= 0, "pv_labels": labels}
    from training.loader import slot_images
    per_slot = {k: v for k, v in slot_images(indexed).items() if k not in ("items", "pv_slot", "hist_slot")}
    return indexed, per_slot


@pytest.mark.parametrize("objective", ["courier", "supervised_image", "simclr"])
def test_indexed_batch_gives_the_per_slot_loss_and_gradients(objective):
    """Encoding each distinct item once (the loader's indexed batch) is exact:
    same loss, same gradient on every parameter as encoding every slot."""
    from courier_spark.core.schema import TrainConfig
    from training.losses import LocalCollective
    from training.objectives import build_model, compute_loss
    cfg = TrainConfig(method=objective,
                      embed_dim=D, image_size=SIZE).resolved()
    indexed, per_slot = _indexed_and_per_slot()
    assert per_slot["pv_images"].shape == (4, 5, 3, SIZE, SIZE)
    grads, losses = [], []
    for batch in (indexed, per_slot):
        torch.manual_seed(0)
        model = build_model(cfg)
        loss, _ = compute_loss(model, batch, cfg, LocalCollective(), step=3)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        # float32 sums in another order: equal to ~1e-6 of the gradient's scale
        scale = float(grads[1][n].abs().max())
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5 * scale, msg=n)

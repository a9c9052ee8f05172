"""The paper's Supervised baseline: the downstream CTR DNN with a trainable
image tower (training/supervised_ctr.py), its loader fields and its objective."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from courier_spark.evaluate.ctr_dnn import hash_ids
from courier_spark.core.schema import TrainConfig
from training.loader import PAD_ID, DecodedItems
from training.objectives import build_model, compute_loss, needs_ctr_fields
from training.supervised_ctr import SIZES, SupervisedCtrModel, category_codes, hash_ids_torch, title_codes

SIZE = 16


def test_torch_hash_equals_the_downstream_dnns_hash():
    ids = np.concatenate([np.arange(0, 5000), np.random.default_rng(0).integers(0, 2 ** 62, 5000)])
    for buckets in (2, 97, SIZES.item_buckets):
        assert np.array_equal(hash_ids_torch(torch.from_numpy(ids), buckets).numpy(), hash_ids(ids, buckets))


def _items(n: int = 12, seed: int = 0) -> DecodedItems:
    rng = np.random.default_rng(seed)
    ids = np.arange(100, 100 + n)
    pixels = torch.from_numpy(rng.integers(0, 255, (n, 3, SIZE, SIZE), dtype=np.uint8))
    valid = np.ones(n, bool)
    valid[-1] = False   # an item without a usable image
    cats = [("shoes", "bags")[i % 2] for i in range(n)]
    titles = [f"brand{i} red {('dress', 'boots')[i % 2]}" for i in range(n)]
    return DecodedItems(ids[::-1].copy(), pixels.flip(0), valid[::-1].copy(),
                        {"cat": category_codes(cats)[::-1], "tok": title_codes(titles)[::-1]}), cats, titles


def test_batch_carries_each_slots_ids_category_and_title():
    items, cats, titles = _items()
    pv = np.array([[100, 101, PAD_ID], [111, 103, 104]])
    hist = np.array([[102, PAD_ID], [105, 111]])
    b = items.batch(pv, hist, np.array([[1, 0, 0], [1, 1, 0]]), np.array([7, 8]))
    assert b["user_ids"].tolist() == [7, 8]
    assert b["hist_known"].tolist() == [[True, False], [True, True]]
    want_cat, want_tok = category_codes(cats), title_codes(titles)
    for kind, ids in (("pv", pv), ("hist", hist)):
        for (r, c), i in np.ndenumerate(ids):
            usable = i != PAD_ID and i != 111   # 111 has no usable image: masked like padding
            assert b[f"{kind}_mask"][r, c].item() == usable
            assert b[f"{kind}_cat"][r, c].item() == (want_cat[i - 100] if usable else 0)
            assert b[f"{kind}_tok"][r, c].tolist() == (want_tok[i - 100].tolist() if usable else [0] * want_tok.shape[1])
    # without attributes (every other method) the batch is unchanged
    plain = DecodedItems(items.ids, items.pixels, items.valid).batch(pv, hist, np.zeros((2, 3), int), np.array([7, 8]))
    assert set(plain) == {"items", "pv_slot", "pv_mask", "hist_slot", "hist_mask", "pv_labels"}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(method="supervised", backbone="small_cnn", embed_dim=8, image_size=SIZE, **kw).resolved()


def test_supervised_is_the_ctr_model_and_supervised_image_the_image_only_one():
    from training.baselines import SupervisedClickModel
    sup, img = _cfg(), TrainConfig(method="supervised_image", embed_dim=8, image_size=SIZE).resolved()
    assert sup.objective == "supervised_ctr" and needs_ctr_fields(sup) and not needs_ctr_fields(img)
    assert isinstance(build_model(sup), SupervisedCtrModel)
    assert isinstance(build_model(img), SupervisedClickModel)


def test_ctr_model_masks_padding_trains_ids_and_the_image_tower():
    torch.manual_seed(0)
    items, _, _ = _items(40)
    rng = np.random.default_rng(1)
    pv = rng.integers(100, 139, (8, 5))
    pv[0, 3:] = PAD_ID
    hist = rng.integers(100, 139, (8, 5))
    hist[1, :] = PAD_ID
    labels = (rng.random((8, 5)) < 0.4).astype(int)
    b = items.batch(pv, hist, labels, np.arange(8))
    cfg = _cfg()
    model = build_model(cfg)
    logits = model(b)
    assert logits.shape == (8, 5)
    assert torch.all(logits[~b["pv_mask"]] == 0)
    loss, metrics = compute_loss(model, b, cfg, None, 0)
    loss.backward()
    enc_grad = sum(p.grad.abs().sum().item() for p in model.encoder.parameters() if p.grad is not None)
    assert enc_grad > 0 and model.item.weight.grad.abs().sum() > 0 and model.user.weight.grad.abs().sum() > 0
    assert model.tok.weight.grad.abs().sum() > 0 and model.cat.weight.grad.abs().sum() > 0
    # It can fit the labels of one batch (the loss falls well below its start).
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(60):
        opt.zero_grad()
        loss, _ = compute_loss(model, b, cfg, None, 0)
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    assert metrics["n_terms"].item() == b["pv_mask"].sum().item()

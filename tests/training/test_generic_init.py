"""The generic initialisation: generated generic images, the SimCLR trunk
trained on them once per dataset root (cached by its recipe), loading it as
any method's start, and the random_init / generic presets."""
from __future__ import annotations

import ast
import dataclasses
import pathlib
import uuid

import numpy as np
import pytest
import torch

from courier_spark.core import fs
from courier_spark.core.config import load_config
from courier_spark.core.errors import ConfigError
from courier_spark.core.schema import METHODS, TrainConfig
from courier_spark.data.synthetic.generic import generic_images, render_generic_image
from training import trunk as trunk_mod
from training.artifact import list_versions, load_artifact
from training.objectives import build_encoder, build_model, initial_encoder
from training.trunk import ensure_trunk, train_trunk, trunk_config

# ----------------------------------------------------------------- the image generator


def test_images_depend_only_on_seed_and_index():
    a = generic_images(12, 24, seed=3)
    assert a.shape == (12, 24, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, generic_images(12, 24, seed=3))
    np.testing.assert_array_equal(a[:5], generic_images(5, 24, seed=3))          # a prefix of any larger set
    # image i is rendered from child i of the seed's SeedSequence, nothing else
    for i in (0, 7, 11):
        one = render_generic_image(np.random.default_rng(np.random.SeedSequence(3, spawn_key=(i,))), 24)
        np.testing.assert_array_equal(a[i], one)
    assert not np.array_equal(a, generic_images(12, 24, seed=4))


def test_images_are_varied():
    imgs = generic_images(200, 32, seed=0).astype(np.float64)
    flat = imgs.reshape(len(imgs), -1)
    assert len({row.tobytes() for row in imgs.astype(np.uint8)}) == 200
    # colour: mean RGB of the images spreads over the cube, and hues cover the wheel
    means = imgs.mean(axis=(1, 2))
    assert means.std(axis=0).min() > 25
    rgb = imgs.reshape(-1, 3) / 255.0
    mx, mn = rgb.max(1), rgb.min(1)
    sat = (mx - mn) > 0.3
    r, g, b = rgb[sat].T
    hue = np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    assert len(np.unique((hue // 30).astype(int))) == 12                         # all 12 hue sectors
    # content: images differ in contrast (texture, objects) and are not near-duplicates
    assert np.percentile(flat.std(1), 90) > 2 * np.percentile(flat.std(1), 10)
    d = np.abs(flat[:100, None, :] - flat[None, :100, :]).mean(-1)
    assert d[~np.eye(100, dtype=bool)].min() > 5


def test_generator_does_not_use_the_marketplace():
    src = pathlib.Path(__file__).parents[2] / "courier_spark" / "data" / "synthetic" / "generic.py"
    tree = ast.parse(src.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "colorsys", "numpy"}, imported


# ----------------------------------------------------------------- the trunk

TINY = dict(backbone="small_cnn", embed_dim=8, image_size=16, generic_images=24, generic_steps=3,
            generic_batch_size=8, generic_seed=1)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw}).resolved()


def _encoder_state(art) -> dict:
    return art.load_encoder().state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trunk_trained_once_then_reused(tmp_path, monkeypatch):
    models = str(tmp_path / "models")
    art, trained = ensure_trunk(models, tiny())
    assert trained and art.model_version == "generic/v0001"
    assert art.config == trunk_config(tiny()) and art.metrics["steps"] == 3
    assert fs.exists(fs.join(art.path, "encoder.pt")) and fs.exists(fs.join(art.path, "artifact.json"))
    meta = fs.read_json(fs.join(art.path, "artifact.json"))["config"]
    for k, v in {"generator_seed": 1, "n_images": 24, "steps": 3, "backbone": "small_cnn", "embed_dim": 8,
                 "lr": 1e-3, "batch_size": 8, "image_size": 16}.items():
        assert meta[k] == v, k
    # the same recipe: no training at all
    monkeypatch.setattr(trunk_mod, "train_trunk", lambda *a, **k: pytest.fail("trained again"))
    again, trained = ensure_trunk(models, tiny(lr=5e-4, steps=7, method="simclr"))  # fine-tuning keys don't matter
    assert not trained and again.version == "v0001"
    monkeypatch.undo()
    # another recipe: a new version; back to the first: copied forward, not retrained
    other, trained = ensure_trunk(models, tiny(generic_steps=4))
    assert trained and other.version == "v0002"
    monkeypatch.setattr(trunk_mod, "train_trunk", lambda *a, **k: pytest.fail("trained again"))
    back, trained = ensure_trunk(models, tiny())
    assert not trained and back.version == "v0003" and list_versions(models, "generic")[-1] == "v0003"
    assert back.config == art.config and back.metrics["copied_from"] == "generic/v0001"
    assert _same(_encoder_state(back), _encoder_state(art))
    assert not _same(_encoder_state(other), _encoder_state(art))


def test_trunk_is_deterministic_and_learns():
    cfg = trunk_config(tiny(generic_images=32, generic_steps=40, generic_batch_size=16, embed_dim=16))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as ensure_trunk trains it
    try:
        m1, met = train_trunk(cfg)
        m2, _ = train_trunk(cfg)
    finally:
        torch.set_num_threads(threads)
    assert _same(m1.state_dict(), m2.state_dict())
    assert met["final_loss"] < met["initial_loss"] - 0.2, met
    assert [h[0] for h in met["history"]] == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]


def test_generic_init_loads_the_trunk_from_its_uri():
    """``weights_path`` = the trunk's encoder.pt on any fs root (memory:// here): every key loads."""
    models = f"memory://trunk-{uuid.uuid4().hex}/models"
    art, _ = ensure_trunk(models, tiny())
    enc = build_encoder(dataclasses.replace(tiny(), weights_path=art.encoder_uri))
    assert enc.load_report.missing == [] and enc.load_report.unexpected == []
    assert _same(enc.state_dict(), _encoder_state(art))
    torch.manual_seed(0)
    assert not _same(build_encoder(tiny()).state_dict(), _encoder_state(art))


# ----------------------------------------------------------------- presets


def test_presets_validate_and_resolve():
    for m in ("courier_shuffled", "random_init", "generic"):
        assert m in METHODS
    cfg = load_config(None, ["evaluate.methods=[courier, courier_shuffled, random_init, generic]",
                             "train.init=generic", "train.method=random_init"])
    t = cfg.train.resolved()
    assert (t.objective, t.init) == ("none", "random")   # random_init stays random under init=generic
    t = dataclasses.replace(cfg.train, method="generic").resolved()
    assert (t.objective, t.init) == ("none", "generic")
    t = dataclasses.replace(cfg.train, method="courier_shuffled").resolved()
    assert t.shuffle_histories and t.objective == "courier" and t.init == "generic"
    assert TrainConfig().categories == [] and not TrainConfig().shuffle_histories
    with pytest.raises(ConfigError, match="train.init"):
        TrainConfig(init="imagenet")
    with pytest.raises(ValueError, match="trains nothing"):
        build_model(tiny(method="random_init"))


def test_random_init_is_the_start_of_every_training_run():
    cfg = tiny(method="random_init", seed=11)
    torch.manual_seed(cfg.seed)     # what train_worker does before build_model
    start = build_model(dataclasses.replace(cfg, method="courier", objective="courier")).encoder.state_dict()
    assert _same(initial_encoder(cfg).state_dict(), start)
    assert not _same(initial_encoder(dataclasses.replace(cfg, seed=12)).state_dict(), start)

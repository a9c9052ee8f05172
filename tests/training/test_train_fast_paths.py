"""Pre-training's fast paths (random_init, generic: no optimisation, no
distributed launch) and the generic initialisation's wiring, on tiny
in-memory tables."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from courier_spark.core import fs
from courier_spark.core.errors import ConfigError, DataError
from courier_spark.core.schema import TrainConfig
from training import pretrain
from training.artifact import list_versions, load_artifact
from training.objectives import initial_encoder

from .. import worlds

TINY = dict(backbone="small_cnn", embed_dim=8, image_size=16, generic_images=24, generic_steps=3,
            generic_batch_size=8)


def png(rgb) -> bytes:
    return worlds.png(rgb, 16)


@pytest.fixture
def tables(spark):
    rng = np.random.default_rng(0)
    items = spark.createDataFrame(
        pd.DataFrame({"item_id": range(1, 21), "category": ["a", "b"] * 10,
                      "image": [png(rng.integers(0, 256, 3)) for _ in range(20)]}),
        "item_id long, category string, image binary")
    rows = [(f"r{i}", [int(x) for x in rng.integers(1, 21, 3)], [1, 0, 0], [int(x) for x in rng.integers(1, 21, 2)])
            for i in range(30)]
    samples = spark.createDataFrame(rows, "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                          "hist_item_ids array<long>")
    return samples, items


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_init_saves_the_seeded_start(tables, tmp_path):
    samples, items = tables
    models = str(tmp_path / "models")
    cfg = TrainConfig(method="random_init", seed=4, **TINY).resolved()
    out = pretrain.untrained(cfg, models, samples, items, {"silver/items": 0}, None)
    assert out.complete and out.artifact.model_version == "random_init/v0001"
    art = load_artifact(models, "random_init")
    assert _same(art.load_encoder().state_dict(), initial_encoder(cfg).state_dict())
    assert not fs.exists(fs.join(art.path, "model.pt"))          # nothing but the encoder exists
    assert art.config["objective"] == "none" and art.config["seed"] == 4
    assert art.metrics["steps"] == 0 and -1.0 <= art.metrics["co_click_cosine"] <= 1.0
    assert out.metrics == art.metrics
    # a re-run is a new version, like any method
    pretrain.untrained(cfg, models, samples, items, {}, None)
    assert list_versions(models, "random_init") == ["v0001", "v0002"]


def test_generic_method_is_the_trunk(tables, tmp_path):
    samples, items = tables
    models = str(tmp_path / "models")
    cfg = TrainConfig(method="generic", **TINY).resolved()
    data_versions: dict = {}
    cfg2, trunk = pretrain.with_init(cfg, models, data_versions)
    assert trunk.model_version == "generic/v0001" and cfg2.weights_path == trunk.encoder_uri
    assert data_versions == {"models/generic": "generic/v0001"}
    out = pretrain.untrained(cfg2, models, samples, items, data_versions, trunk)
    assert out.artifact.model_version == "generic/v0001" and out.artifact.path == trunk.path
    assert list_versions(models, "generic") == ["v0001"]           # no second artifact
    # any other method under init=generic starts from the trunk's weights
    cfg3, again = pretrain.with_init(dataclasses.replace(cfg, method="courier", objective="courier"),
                                     models, {})
    assert again.version == "v0001"
    assert _same(initial_encoder(cfg3).state_dict(), trunk.load_encoder().state_dict())


def test_generic_init_and_weights_path_conflict(tmp_path):
    cfg = TrainConfig(init="generic", weights_path="/some/imagenet.pt", **TINY).resolved()
    with pytest.raises(ConfigError, match="weights_path"):
        pretrain.with_init(cfg, str(tmp_path / "models"), {})


def test_unknown_category_is_named(tables):
    samples, items = tables
    with pytest.raises(DataError, match="womens_clothing.*have: a, b"):
        pretrain.chosen_rows(samples, items, ["womens_clothing"])
    assert pretrain.chosen_rows(samples, items, []) is samples
    assert pretrain.chosen_rows(samples, items, ["a"]).count() <= samples.count()

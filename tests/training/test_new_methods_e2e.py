"""The new methods through the real stages on the tiny marketplace (local
backend): `courier comparisons` with random_init, generic and
courier_shuffled; a courier run from the generic trunk on one category."""
from __future__ import annotations

import shutil
from collections import Counter

import pytest

from courier_spark.pipeline import StageContext, run_stage
from courier_spark.core.paths import TablePaths
from courier_spark.core.tables import read_table
from training.artifact import list_versions, load_artifact

from ..conftest import tiny_config

pytestmark = pytest.mark.slow

TRAIN = {"train.backbone": "small_cnn", "train.embed_dim": 16, "train.image_size": 32, "train.batch_size": 8,
         "train.loader_workers": 1, "train.backend": "local", "train.steps": 4, "train.log_every": 2,
         "train.generic_images": 64, "train.generic_steps": 10, "train.generic_batch_size": 16,
         "cluster.k": 4}


@pytest.fixture(scope="module")
def root(tiny_dataset, tmp_path_factory):
    """A copy of the shared tiny dataset (its tables only), so these models stay out of the other tests'."""
    src = tiny_dataset[0].paths.root
    dst = str(tmp_path_factory.mktemp("new_methods") / "ds")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "_runs", "_cache", "reports"))
    return dst


def test_comparisons_with_the_new_methods(spark, root, monkeypatch):
    import training.pretrain as pretrain_module   # pre-training's own binding of the launcher
    launched = []
    real = pretrain_module.run_distributed
    monkeypatch.setattr(pretrain_module, "run_distributed",
                        lambda fn, args, *a, **k: launched.append(args[0].method) or real(fn, args, *a, **k))
    cfg = tiny_config(**TRAIN, **{"evaluate.methods": "[courier, random_init, generic, courier_shuffled]"})
    ctx = StageContext(spark, cfg, TablePaths.for_root(root))
    out = run_stage("comparisons", ctx)
    assert list(out.methods) == ["random_init", "generic", "courier_shuffled"]
    assert launched == ["courier_shuffled"]            # random_init and generic: no distributed launch
    models = ctx.paths.models
    versions = {m: r.model_version for m, r in out.methods.items()}
    assert versions == {"random_init": "random_init/v0001", "generic": "generic/v0001",
                        "courier_shuffled": "courier_shuffled/v0001"}
    assert load_artifact(models, "random_init").metrics["steps"] == 0
    trunk = load_artifact(models, "generic")
    assert trunk.config["steps"] == 10 and trunk.config["n_images"] == 64 and trunk.metrics["steps"] == 10
    shuffled = load_artifact(models, "courier_shuffled")
    assert shuffled.config["shuffle_histories"] and shuffled.metrics["steps"] == 4
    n_items = read_table(spark, ctx.paths.silver_items).filter("image is not null").count()
    emb = read_table(spark, ctx.paths.item_embeddings)
    for method, r in out.methods.items():
        assert r.embedded == n_items, method
        assert emb.filter(emb.model_version == versions[method]).count() == n_items
        assert r.centroid_version


def test_courier_from_the_trunk_on_one_category(spark, root):
    """init=generic: the trunk (the one comparisons made) is reused and is the
    start; train.categories keeps exactly the page views of that category."""
    cfg = tiny_config(**{**TRAIN, "train.init": "generic", "train.categories": "[womens_clothing]",
                                  "train.batch_size": 2})
    ctx = StageContext(spark, cfg, TablePaths.for_root(root))
    before = list_versions(ctx.paths.models, "generic")
    out = run_stage("train", ctx)
    assert list_versions(ctx.paths.models, "generic") == before == ["v0001"]
    art = load_artifact(ctx.paths.models, "courier")
    trunk = load_artifact(ctx.paths.models, "generic")
    assert art.config["weights_path"] == trunk.encoder_uri and art.config["init"] == "generic"
    assert art.data_versions["models/generic"] == "generic/v0001"
    # brute force: each page view's majority category of its shown items (ties alphabetical)
    cat = dict(read_table(spark, ctx.paths.silver_items).select("item_id", "category").toPandas().values)
    want = 0
    for r in read_table(spark, ctx.paths.pretrain_samples).select("pv_item_ids").collect():
        votes = Counter(cat[i] for i in r["pv_item_ids"] if i in cat)
        top = max(votes.values())
        want += min(c for c, n in votes.items() if n == top) == "womens_clothing"
    assert 0 < want and out.metrics["pretrain_rows"] == want

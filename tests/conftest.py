"""Shared fixtures: one real local Spark session with Delta for the run."""
from __future__ import annotations

import pytest

from courier_spark.core.config import CourierConfig, load_config
from courier_spark.core.paths import TablePaths
from courier_spark.core.schema import TrainConfig


@pytest.fixture(scope="session")
def spark():
    from courier_spark.core.schema import SparkConfig
    from courier_spark.core.spark import get_spark
    s = get_spark(SparkConfig(shuffle_partitions=4, driver_memory="3g", app_name="courier-tests"))
    yield s
    s.stop()


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "ds")


@pytest.fixture
def paths(root) -> TablePaths:
    return TablePaths.for_root(root)


# The schema's recipe, made small: 1/16 of its step budget with a checkpoint
# every 1/32, from random weights (the schema's generic start trains a trunk,
# ~50 s; tests/training covers it), on every category (the schema's default;
# the demo config narrows it), comparing the serving method against three
# trained rivals instead of the schema's two-method default.
_SCHEMA_TRAIN = TrainConfig()
TEST_RECIPE = {"train.init": "random", "train.categories": _SCHEMA_TRAIN.categories,
               "train.steps": _SCHEMA_TRAIN.steps // 16, "train.checkpoint_every": _SCHEMA_TRAIN.steps // 32,
               "evaluate.methods": f"[{_SCHEMA_TRAIN.method}, courier_no_ucs, simclr, supervised]"}


def tiny_config(**overrides: object) -> CourierConfig:
    """A small, fast config: the tiny marketplace used across tests."""
    sets = {
        "synthetic.n_users": 60, "synthetic.n_items": 120, "synthetic.n_days": 5,
        "synthetic.image_size": 32, "synthetic.sessions_per_user_day": 1.0,
        "spark.shuffle_partitions": 4, **TEST_RECIPE,
    }
    sets.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


# Bad rows injected into the shared tiny dataset (validation tests count them).
TINY_INJECT = {"synthetic.bad_null_keys": 6, "synthetic.bad_unknown_items": 4,
               "synthetic.bad_duplicate_events": 5, "synthetic.bad_images": 3}


@pytest.fixture(scope="session")
def tiny_dataset(spark, tmp_path_factory):
    """generate -> validate -> samples once per test run on the tiny marketplace;
    returns (StageContext, {stage: summary}). Shared by the pipeline tests."""
    from courier_spark.pipeline import StageContext, run_stage
    root = str(tmp_path_factory.mktemp("tiny") / "ds")
    ctx = StageContext(spark, tiny_config(**TINY_INJECT), TablePaths.for_root(root))
    out = {s: run_stage(s, ctx) for s in ("generate", "validate", "samples")}
    return ctx, out


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory):
    """The wheel of the working tree, built once per test run (tests/installs.py)."""
    from .installs import build_wheel
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_venv(project_wheel, tmp_path_factory) -> dict:
    """A fresh venv with only the project wheel installed (tests/installs.py)."""
    from .installs import wheel_venv as make
    return make(tmp_path_factory.mktemp("wheel_venv"), project_wheel)

"""The ``evaluate`` config section (defined with every other section in
``courier_spark.core.schema``; re-exported here for the evaluation modules)."""
from __future__ import annotations

from courier_spark.core.schema import (DEFAULT_METHODS, GAUC_WEIGHTINGS, IMAGE_FEATURES, MODEL_KINDS,  # noqa: F401
                      CourierConfig, DnnConfig, EvaluateConfig, LgbmConfig)


def load_evaluate_config(cfg: CourierConfig) -> EvaluateConfig:
    """The typed ``evaluate`` section of a loaded CourierConfig (checked when it was loaded)."""
    return cfg.evaluate

"""What every stage is given: the session, the checked config, the dataset's
paths, and the runner to start other stages with (``comparisons`` runs
train/embed/cluster per method). The pipeline (``courier_spark.pipeline``)
builds contexts and runs stages; stages never import it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from pyspark.sql import SparkSession

from courier_spark.core.config import CourierConfig
from courier_spark.core.errors import CourierError
from courier_spark.core.paths import TablePaths

if TYPE_CHECKING:
    from courier_spark.stages.results import StageResult


@dataclass(frozen=True)
class StageContext:
    """``summary_prefix`` names where sub-runs' summaries go (``comparisons/<method>/``);
    ``keep_loader_cache`` lets consecutive trainings in one session share the
    petastorm cache; ``runner`` is set by the pipeline's ``run_stage``."""
    spark: SparkSession
    cfg: CourierConfig
    paths: TablePaths
    summary_prefix: str = ""
    keep_loader_cache: bool = False
    runner: Optional[Callable[[str, "StageContext"], "StageResult"]] = None

    def derive(self, **changes) -> "StageContext":
        return dataclasses.replace(self, **changes)

    def run_stage(self, name: str) -> "StageResult":
        """Run another stage through the pipeline's runner (summary under this context's prefix)."""
        if self.runner is None:
            raise CourierError(f"cannot run stage {name}: this context was not made by the pipeline runner")
        return self.runner(name, self)

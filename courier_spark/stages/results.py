"""Typed stage results: what a stage hands back to the runner (which writes
it as the stage's summary, ``_runs/<stage>.json``) and to any stage that runs
it (``comparisons`` reads train / embed / cluster results by attribute, so a
renamed field fails at import and in type checks, not at run time).
Stages not listed here still return plain summary dicts."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(kw_only=True)
class StageResult:
    seconds: float = 0.0   # set by the runner

    def summary(self) -> dict[str, Any]:
        """The JSON summary the runner writes."""
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class TrainResult(StageResult):
    complete: bool
    model_version: Optional[str] = None   # "<method>/vNNNN" once complete
    path: Optional[str] = None            # the artifact's folder
    metrics: dict = field(default_factory=dict)
    steps_done: Optional[int] = None      # when stopped early (resume from ``checkpoint``)
    checkpoint: Optional[str] = None

    @property
    def version(self) -> str:
        """The ``vNNNN`` part of ``model_version``."""
        if not self.model_version:
            raise ValueError("training did not complete: no model version")
        return self.model_version.rsplit("/", 1)[1]


@dataclass(kw_only=True)
class EmbedResult(StageResult):
    model_version: str
    artifact: str
    backbone: str
    image_size: int
    items_in: int
    embedded: int
    not_embedded: dict
    embedding_dim: Optional[int]
    max_norm_error: float
    items_per_second: Optional[float]
    table_version: int


@dataclass(kw_only=True)
class ClusterResult(StageResult):
    centroid_version: str
    reused_version: bool
    max_centroid_change: Optional[float]
    model_version: str
    params: dict
    collected_to_driver: int
    train: dict
    all_items: dict
    table_version: int

"""Typed stage results: what a stage hands back to the runner (which writes
it as the stage's summary, ``_runs/<stage>.json``) and to any stage that runs
it (``comparisons`` reads train / embed / cluster results by attribute, so a
renamed field fails at import and in type checks, not at run time).
Every stage returns one; ``summary()`` is what ``_runs/<stage>.json`` holds."""
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
    version: Optional[str] = None         # its "vNNNN" (the artifact's own version)
    path: Optional[str] = None            # the artifact's folder
    metrics: dict = field(default_factory=dict)
    steps_done: Optional[int] = None      # when stopped early (resume from ``checkpoint``)
    checkpoint: Optional[str] = None


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


@dataclass(kw_only=True)
class GenerateResult(StageResult):
    rows: dict                # {"items": n, "impressions": n}
    click_model: dict         # the generator's click statistics (ctr, visual_click_share, ...)
    injected_bad_rows: dict
    table_versions: dict


@dataclass(kw_only=True)
class ValidateResult(StageResult):
    counts: Any               # courier_spark.data.validate.ValidationSummary (counts of the written tables)

    def summary(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.counts), "seconds": self.seconds}


@dataclass(kw_only=True)
class SamplesResult(StageResult):
    windows: dict
    impressions_by_window: dict
    pretrain_samples: int
    ctr_samples: dict         # rows per split
    table_versions: dict


@dataclass(kw_only=True)
class ItemVisualWrite:
    embedded_items: int
    assigned_this_run: int
    items_with_features: int  # items with a current row of the serving versions
    merge: dict


@dataclass(kw_only=True)
class FeaturesResult(StageResult):
    centroid_version: str
    model_version: str
    k: int
    incremental: bool
    item_visual: ItemVisualWrite
    impression_visual: dict   # courier_spark.features.assignment.ImpressionVisualStats as a dict + merge counts
    health: Optional[dict] = None   # the new item_visual version's health record (headline figures)


@dataclass(kw_only=True)
class ComparisonRun:
    model_version: str
    train_metrics: dict
    embedded: int
    not_embedded: dict
    centroid_version: str
    seconds: float


@dataclass(kw_only=True)
class ComparisonsResult(StageResult):
    serving_method: str
    methods: dict             # method -> ComparisonRun


@dataclass(kw_only=True)
class EvaluateResult(StageResult):
    variants: list
    n_train: int
    n_test: int
    predictions_table_version: int
    feature_sources: dict
    metrics_json: str
    headline: dict


@dataclass(kw_only=True)
class ReportResult(StageResult):
    report: str
    sql_vs_python_max_abs_diff: float
    sql_outputs: list


@dataclass(kw_only=True)
class HealthResult(StageResult):
    records: int               # item_visual versions with a health record
    latest: Optional[dict]     # the newest record
    drift: Optional[dict]      # the newest version change's drift
    freshness: Optional[dict]  # the newest stream micro-batch's freshness
    breaches: list             # one line per threshold broken (`courier health` exits 2 when any)


@dataclass(kw_only=True)
class PointInTimeResult(StageResult):
    input: str
    output: str
    rows: int
    with_item_features: int
    history: bool
    k: int


@dataclass(kw_only=True)
class OnlineResult(StageResult):
    counts: dict              # courier_spark.serving.online.materialise_item_visual's counts

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "seconds": self.seconds}


@dataclass(kw_only=True)
class StreamResult(StageResult):
    trigger: str
    serving: dict
    catch_up: dict
    batches: int
    rows_in: int
    new: int
    changed: int
    quarantined: int
    embedded: int
    re_embedded_existing: int
    query_seconds: float
    items_per_second: Optional[float]
    online: list


@dataclass(kw_only=True)
class FeastResult(StageResult):
    repo: str                 # the repository directory written
    project: str
    feature_views: list       # names; item_visual is the online one
    env_vars: list            # variables the Feast process must have (secrets, the Redis password)

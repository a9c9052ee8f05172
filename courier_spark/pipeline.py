"""The pipeline: the ordered stage registry and the one runner every stage
goes through (the CLI, ``jobs/*.py`` and the ``comparisons`` stage's
sub-runs alike). Each run prints a start and a finish line and writes its
JSON summary to ``<root>/_runs/<name>.json``. ``StageContext`` (defined
beside the stages, which receive it) is re-exported here.

Stage order is the flow of data: raw -> samples -> training -> embeddings ->
clusters -> features -> comparison methods -> CTR evaluation -> report.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from courier_spark.core import fs
from courier_spark.core.errors import CourierError
from courier_spark.core.logs import say
from courier_spark.core.redact import redact_config, redact_tree
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import StageResult

if TYPE_CHECKING:
    from courier_spark.core.config import CourierConfig
    from courier_spark.core.paths import TablePaths

__all__ = ["PIPELINE", "STAGES", "StageContext", "StageSpec", "pipeline_stages", "preflight", "run_stage",
           "stage_help", "write_summary"]

StageFn = Callable[[StageContext], StageResult]


@dataclass(frozen=True)
class StageSpec:
    """One stage: its CLI help line and whether ``courier pipeline`` runs it.
    Its code, ``courier_spark.stages.<name>.run``, is imported only when the
    stage runs, so building the CLI loads no stage (nor torch, pandas, PIL)
    and a stage module imports its library at the top like any module."""

    name: str
    help: str
    in_pipeline: bool = True

    @property
    def module(self) -> str:
        return f"{__package__}.stages.{self.name}"

    def load(self) -> StageFn:
        return importlib.import_module(self.module).run


_SPECS = (
    StageSpec("generate", "Write the synthetic marketplace as bronze tables (+ hidden truth)."),
    StageSpec("validate", "bronze -> silver/items, silver/impressions + quarantine/*."),
    StageSpec("samples", "silver impressions -> silver/pretrain_samples, silver/ctr_samples."),
    StageSpec("train", "pre-training samples -> encoder artifact (petastorm -> horovod/torch on Spark)."),
    StageSpec("embed", "silver/items + artifact -> gold/item_embeddings (that model version's rows replaced)."),
    StageSpec("cluster", "gold/item_embeddings -> gold/centroids (faiss k-means)."),
    StageSpec("features", "centroids + embeddings + ctr_samples -> feature_store/item_visual, "
                          "impression_visual (MERGE)."),
    StageSpec("comparisons", "Train, embed and cluster every comparison method of evaluate.methods."),
    StageSpec("evaluate", "CTR frames per method -> DNN / LightGBM over seeds -> predictions + metrics.json."),
    StageSpec("report", "results.json + sql/*.sql over the Delta tables -> report.md with PNG plots."),
    # Not part of `courier pipeline`: fresh features and serving, run on their own schedule.
    StageSpec("stream", "New bronze/items rows -> silver, quarantine, embeddings, feature_store/item_visual "
                        "(streaming).", in_pipeline=False),
    StageSpec("online", "feature_store/item_visual current rows -> the online store (Redis), changed rows only.",
              in_pipeline=False),
    StageSpec("point_in_time", "retrieval.input events -> retrieval.output with features as of each event_ts.",
              in_pipeline=False),
    StageSpec("health", "_health/item_visual -> statistics, drift and freshness of feature_store/item_visual; "
                        "exit 2 past the health thresholds.", in_pipeline=False),
    StageSpec("feast", "feature_store/* -> a Feast feature repository (feast.repo): entities, feature views, "
                       "Spark offline store, the online section's Redis.", in_pipeline=False),
)
# Every stage by name, in the order of the flow of data.
STAGES: dict[str, StageSpec] = {s.name: s for s in _SPECS}
# The batch pipeline, in order (`courier pipeline`, --from/--until).
PIPELINE = [s.name for s in _SPECS if s.in_pipeline]


def write_summary(directory: str, name: str, summary: dict) -> str:
    """``<directory>/<name>.json`` through the filesystem layer (any root URI),
    secrets redacted (``courier_spark.core.redact``: a secret key's value, a
    remembered secret or a URI password in any string)."""
    path = fs.join(directory, f"{name}.json")
    fs.write_json(path, redact_tree(summary))
    return path


def run_stage(name: str, ctx: StageContext) -> StageResult:
    if name not in STAGES:
        raise CourierError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if ctx.runner is None:
        ctx = ctx.derive(runner=run_stage)
    label = f"{ctx.summary_prefix}{name}"
    t0 = time.perf_counter()
    say(name, f"start{' (' + ctx.summary_prefix.rstrip('/') + ')' if ctx.summary_prefix else ''} "
              f"(root={ctx.paths.root})")
    result = STAGES[name].load()(ctx)
    seconds = round(time.perf_counter() - t0, 2)
    if not isinstance(result, StageResult):
        raise TypeError(f"stage {name} returned {type(result).__name__}, not a StageResult (stages/results.py)")
    result.seconds = seconds
    summary = result.summary()
    write_summary(ctx.paths.run_summaries, label, {**summary, "config": redact_config(ctx.cfg.to_dict())})
    say(name, f"finished in {seconds:.1f}s")
    return result


def pipeline_stages(start: str | None = None, until: str | None = None) -> list[str]:
    names = PIPELINE
    for arg, val in (("--from", start), ("--until", until)):
        if val is not None and val not in names:
            raise CourierError(f"{arg} {val!r} is not a stage; stages: {', '.join(names)}")
    i = names.index(start) if start else 0
    j = names.index(until) + 1 if until else len(names)
    if i >= j:
        raise CourierError(f"--from {start} comes after --until {until}")
    return names[i:j]


def stage_help(name: str) -> str:
    return STAGES[name].help


def preflight(names: Sequence[str], cfg: CourierConfig, paths: TablePaths) -> None:
    """``courier_spark.stages.preflight.preflight``, imported when a command
    runs (building the CLI's parser loads no module under stages/)."""
    from courier_spark.stages.preflight import preflight as check
    check(names, cfg, paths)

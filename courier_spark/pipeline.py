"""The pipeline: the ordered stage registry and the one runner every stage
goes through (the CLI, ``jobs/*.py`` and the ``comparisons`` stage's
sub-runs alike). Each run prints a start and a finish line and writes its
JSON summary to ``<root>/_runs/<name>.json``. ``StageContext`` (defined
beside the stages, which receive it) is re-exported here.

Stage order is the flow of data: raw -> samples -> training -> embeddings ->
clusters -> features -> comparison methods -> CTR evaluation -> report.
"""
from __future__ import annotations

import time
from typing import Callable

from . import fs
from .errors import CourierError
from .logs import say
from .redact import redact_config, redact_tree
from .stages import (cluster, comparisons, embed, evaluate, features, generate, online, point_in_time, report,
                     samples, stream, train, validate)
from .stages.context import StageContext
from .stages.results import StageResult

__all__ = ["PIPELINE", "STAGES", "StageContext", "pipeline_stages", "run_stage", "stage_help", "write_summary"]

StageFn = Callable[[StageContext], dict]

STAGES: dict[str, StageFn] = {
    "generate": generate.run,
    "validate": validate.run,
    "samples": samples.run,
    "train": train.run,
    "embed": embed.run,
    "cluster": cluster.run,
    "features": features.run,
    "comparisons": comparisons.run,
    "evaluate": evaluate.run,
    "report": report.run,
    # Not part of `courier pipeline`: fresh features and serving, run on their own schedule.
    "stream": stream.run,
    "online": online.run,
    "point_in_time": point_in_time.run,
}
# The batch pipeline, in order (`courier pipeline`, --from/--until).
PIPELINE = [n for n in STAGES if n not in ("stream", "online", "point_in_time")]


def write_summary(directory: str, name: str, summary: dict) -> str:
    """``<directory>/<name>.json`` through the filesystem layer (any root URI),
    secrets redacted (``courier_spark.redact``: a secret key's value, a
    remembered secret or a URI password in any string)."""
    path = fs.join(directory, f"{name}.json")
    fs.write_json(path, redact_tree(summary))
    return path


def run_stage(name: str, ctx: StageContext) -> "StageResult | dict":
    if name not in STAGES:
        raise CourierError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if ctx.runner is None:
        ctx = ctx.derive(runner=run_stage)
    label = f"{ctx.summary_prefix}{name}"
    t0 = time.perf_counter()
    say(name, f"start{' (' + ctx.summary_prefix.rstrip('/') + ')' if ctx.summary_prefix else ''} "
              f"(root={ctx.paths.root})")
    result = STAGES[name](ctx)
    seconds = round(time.perf_counter() - t0, 2)
    if isinstance(result, StageResult):   # typed (stages/results.py)
        result.seconds = seconds
        summary = result.summary()
    else:                                 # a stage not typed yet: its summary dict
        summary = result
        summary["seconds"] = seconds
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
    return (STAGES[name].__doc__ or "").strip().splitlines()[0]

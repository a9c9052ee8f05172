"""`courier comparisons`: for every method in ``evaluate.methods`` other than
the serving one (``embed.method``): train -> embed -> cluster, each through
the pipeline's runner (summaries in ``_runs/comparisons/<method>/``), on the
same data. Their versions sit beside the serving model's in models/,
gold/item_embeddings and gold/centroids; the feature store is untouched.
``random_init`` and ``generic`` train nothing (the train stage's fast path,
no distributed launch), then embed and cluster like any method."""
from __future__ import annotations

import time

from courier_spark.core.config import with_section_values
from courier_spark.core.errors import CourierError
from courier_spark.core.logs import say
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import ClusterResult, ComparisonRun, ComparisonsResult, EmbedResult, TrainResult


def run(ctx: StageContext) -> ComparisonsResult:
    """Train, embed and cluster every comparison method of evaluate.methods."""
    serving = ctx.cfg.embed.method
    todo = [m for m in ctx.cfg.evaluate.methods if m != serving]
    say("comparisons", f"serving method {serving} (from the main stages); comparing against: "
                       f"{', '.join(todo) or 'nothing'}")
    out = ComparisonsResult(serving_method=serving, methods={})
    for i, method in enumerate(todo, 1):
        t0 = time.perf_counter()
        say("comparisons", f"[{i}/{len(todo)}] {method}: train -> embed -> cluster")
        cfg = with_section_values(ctx.cfg, train={"method": method},
                                  embed={"method": method, "model_version": "latest"},
                                  cluster={"model_version": ""})
        sub = ctx.derive(cfg=cfg, summary_prefix=f"comparisons/{method}/", keep_loader_cache=True)
        tr: TrainResult = sub.run_stage("train")
        if not tr.complete:
            raise CourierError(f"training {method} stopped early at step {tr.steps_done}; "
                               f"re-run `courier comparisons` to resume from its checkpoint")
        # Embed exactly the version train made or reused (``generic`` may reuse an older trunk).
        sub = sub.derive(cfg=with_section_values(cfg, embed={"model_version": tr.version}))
        em: EmbedResult = sub.run_stage("embed")
        cl: ClusterResult = sub.run_stage("cluster")
        run_ = ComparisonRun(model_version=tr.model_version, train_metrics=tr.metrics, embedded=em.embedded,
                             not_embedded=em.not_embedded, centroid_version=cl.centroid_version,
                             seconds=round(time.perf_counter() - t0, 1))
        out.methods[method] = run_
        say("comparisons", f"[{i}/{len(todo)}] {method}: {tr.model_version} / {cl.centroid_version} "
                           f"in {run_.seconds:.0f}s")
    return out

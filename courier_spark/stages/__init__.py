"""One module per CLI stage, orchestration only: paths -> library call ->
write -> summary. Each exposes ``run(ctx) -> dict`` (the stage summary) and
is registered, in pipeline order, in ``courier_spark.pipeline.STAGES``.

Library imports sit inside ``run`` on purpose: building the CLI and checking
a config import these modules, and must not load torch, pandas or PIL.
"""

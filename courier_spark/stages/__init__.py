"""One module per CLI stage, orchestration only: config -> library call ->
write -> typed result (``results.py``). Each exposes ``run(ctx)`` and is
registered by name in ``courier_spark.pipeline.STAGES``, which imports a stage
module only when it runs: building the CLI or checking a config loads none of
them (nor torch, pandas or PIL), so stage modules import their library at the top.
"""

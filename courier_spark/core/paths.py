"""The one place that knows where every artefact lives under a dataset root:
Delta tables and the non-table artefacts (models, checkpoints, the petastorm
cache, reports, run summaries and logs), which are read and written through
``courier_spark.core.fs``.

A root is a local path or any Hadoop-compatible URI; one root holds one
complete, re-runnable pipeline (bronze -> silver -> gold -> feature store).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from courier_spark.core.catalog import spec


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])


@dataclass(frozen=True)
class TablePaths:
    root: str

    @classmethod
    def for_root(cls, root: str) -> "TablePaths":
        # Local paths become absolute so Spark workers and Delta agree on them.
        if "://" not in root:
            root = os.path.abspath(os.path.expanduser(root))
        return cls(root)

    def table(self, layer: str, name: str) -> str:
        """Path of catalogued table ``layer/name`` (``courier_spark.core.catalog``)."""
        return _join(self.root, spec(f"{layer}/{name}").name)

    def of(self, name: str) -> str:
        """Path of catalogued table ``layer/table``."""
        return _join(self.root, spec(name).name)

    # bronze: the raw contract tables
    @property
    def bronze_items(self) -> str: return self.table("bronze", "items")
    @property
    def bronze_impressions(self) -> str: return self.table("bronze", "impressions")

    # quarantine: bad input rows with a reason
    @property
    def quarantine_items(self) -> str: return self.table("quarantine", "items")
    @property
    def quarantine_impressions(self) -> str: return self.table("quarantine", "impressions")

    # silver: validated (clean) inputs and assembled samples
    @property
    def silver_items(self) -> str: return self.table("silver", "items")
    @property
    def silver_impressions(self) -> str: return self.table("silver", "impressions")
    @property
    def pretrain_samples(self) -> str: return self.table("silver", "pretrain_samples")
    @property
    def ctr_samples(self) -> str: return self.table("silver", "ctr_samples")

    # gold: model outputs
    @property
    def item_embeddings(self) -> str: return self.table("gold", "item_embeddings")
    @property
    def centroids(self) -> str: return self.table("gold", "centroids")
    @property
    def predictions(self) -> str: return self.table("gold", "predictions")

    # feature store
    @property
    def item_visual_features(self) -> str: return self.table("feature_store", "item_visual")
    @property
    def impression_visual_features(self) -> str: return self.table("feature_store", "impression_visual")

    # streaming: the query's checkpoint and its ledger of finished micro-batches
    @property
    def stream_checkpoint(self) -> str: return _join(self.root, "_checkpoints", "stream_items")
    @property
    def stream_ledger(self) -> str: return self.table("_stream", "item_batches")

    @property
    def health_item_visual(self) -> str: return self.table("_health", "item_visual")

    # hidden truth of the synthetic generator: evaluation only, never read by the pipeline
    @property
    def truth_item_factors(self) -> str: return self.table("_synthetic_truth", "item_factors")
    @property
    def truth_user_tastes(self) -> str: return self.table("_synthetic_truth", "user_tastes")

    # non-table artefacts (through courier_spark.core.fs)
    @property
    def models(self) -> str: return _join(self.root, "models")   # <method>/vNNNN/, _checkpoints/
    @property
    def checkpoints(self) -> str: return _join(self.root, "models", "_checkpoints")
    @property
    def petastorm_cache(self) -> str: return _join(self.root, "_cache", "petastorm")
    @property
    def reports(self) -> str: return _join(self.root, "reports")

    def report_file(self, name: str) -> str: return _join(self.root, "reports", name)

    @property
    def run_summaries(self) -> str: return _join(self.root, "_runs")   # <stage>.json
    @property
    def run_logs(self) -> str: return _join(self.root, "_runs", "logs")  # full DEBUG log per command

    def artefact_dirs(self) -> dict[str, str]:
        """The folders of non-table artefacts, by what they hold (a path a
        user names for writing must not be in or above one of them)."""
        return {"models": self.models, "the stream checkpoint": self.stream_checkpoint,
                "caches": _join(self.root, "_cache"), "reports": self.reports, "run summaries": self.run_summaries}

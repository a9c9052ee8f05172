"""The table catalog: every Delta table under a dataset root, once: its name
(``layer/table``, also its path under the root), the stage that makes it, how
that stage writes it, and where its schema is declared.

``TablePaths`` builds every table path from here, ``tables.read_table`` names
the making stage in its "missing table" error from here, and the SQL runner
checks the tables a query reads against it. Schemas are named as
``module:ATTRIBUTE`` (this module sits below the library layer and imports
none of it; ``schema_of`` resolves them); a table whose columns are whatever
its stage's transformation yields has ``schema=None`` and its Delta log is the
record. Non-table artefacts (models, checkpoints, reports) live in ``paths``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TableSpec:
    name: str                # "layer/table": its path under the root
    made_by: str             # the stage (CLI command) that writes it
    write_mode: str          # overwrite | replace rows of a version | merge upsert | merge history | append once
    description: str
    schema: Optional[str] = None   # "module:ATTRIBUTE" of its StructType, when declared

    @property
    def layer(self) -> str:
        return self.name.split("/", 1)[0]


_SPECS = (
    TableSpec("bronze/items", "generate (or land bronze/items)", "overwrite",
              "raw items: the data contract's input", "courier_spark.contract:ITEMS_SCHEMA"),
    TableSpec("bronze/impressions", "generate (or land bronze/impressions)", "overwrite",
              "raw page-view impressions and clicks: the data contract's input",
              "courier_spark.contract:IMPRESSIONS_SCHEMA"),
    TableSpec("quarantine/items", "validate", "overwrite (append once per batch from `stream`)",
              "bad bronze item rows with their reason"),
    TableSpec("quarantine/impressions", "validate", "overwrite", "bad bronze impression rows with their reason"),
    TableSpec("silver/items", "validate", "overwrite (merge from `stream`)", "validated items"),
    TableSpec("silver/impressions", "validate", "overwrite", "validated impressions"),
    TableSpec("silver/pretrain_samples", "samples", "overwrite",
              "COURIER pre-training page views (shown items clicked first, history clicks before)"),
    TableSpec("silver/ctr_samples", "samples", "overwrite", "CTR rows with the user's history, split train/test"),
    TableSpec("gold/item_embeddings", "embed", "replace rows of a model version (merge from `stream`)",
              "one embedding per item and model version", "courier_spark.embed:EMBEDDINGS_SCHEMA"),
    TableSpec("gold/centroids", "cluster", "replace rows of a centroid version",
              "k-means centres per centroid version", "courier_spark.cluster:CENTROIDS_SCHEMA"),
    TableSpec("gold/predictions", "evaluate", "overwrite",
              "CTR scores of every variant on the test split", "courier_spark.evaluate.sql_runner:PREDICTIONS_SCHEMA"),
    TableSpec("feature_store/item_visual", "features", "merge history (validity intervals)",
              "cluster ID and distance per item, model and centroid version"),
    TableSpec("feature_store/impression_visual", "features", "merge upsert",
              "SimScores and history cluster IDs per CTR event"),
    TableSpec("_stream/item_batches", "stream", "append once per micro-batch",
              "the streaming stage's ledger of finished micro-batches", "courier_spark.stream:LEDGER_SCHEMA"),
    TableSpec("_synthetic_truth/item_factors", "generate", "overwrite",
              "hidden look factors of the synthetic items (evaluation only)"),
    TableSpec("_synthetic_truth/user_tastes", "generate", "overwrite",
              "hidden tastes of the synthetic users (evaluation only)"),
)
CATALOG: dict[str, TableSpec] = {s.name: s for s in _SPECS}


def spec(name: str) -> TableSpec:
    """The catalog entry of ``layer/table`` (KeyError naming the known tables)."""
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a catalogued table; tables: {', '.join(CATALOG)}") from None


def spec_for_path(path: str) -> Optional[TableSpec]:
    """The entry whose ``layer/table`` the path ends with, or None."""
    tail = "/".join(path.rstrip("/").split("/")[-2:])
    return CATALOG.get(tail)


def schema_of(table: TableSpec):
    """The declared ``StructType`` of ``table`` (imports its module), or None."""
    if table.schema is None:
        return None
    module, attr = table.schema.split(":")
    return getattr(importlib.import_module(module), attr)

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


# How a table may be written. Each writer names its mode and asks the catalog
# (check_write) before it writes, so a table is never written in a way its
# entry does not declare (e.g. appended to where every reader assumes overwrite).
OVERWRITE = "overwrite"                          # atomic replace of the whole table
REPLACE_VERSION = "replace rows of a version"    # replaceWhere one model/centroid version
MERGE_UPSERT = "merge upsert"                    # MERGE on the keys
MERGE_HISTORY = "merge history"                  # MERGE closing validity intervals
MERGE_NEWER = "merge newer rows"                 # MERGE keeping the newer row per key (stream)
APPEND_ONCE = "append once per batch"            # idempotent append (txnAppId/txnVersion)
WRITE_MODES = (OVERWRITE, REPLACE_VERSION, MERGE_UPSERT, MERGE_HISTORY, MERGE_NEWER, APPEND_ONCE)


@dataclass(frozen=True)
class TableSpec:
    name: str                # "layer/table": its path under the root
    made_by: str             # the stage (CLI command) that writes it
    write_modes: tuple       # how it may be written: its making stage's mode first, then `stream`'s
    description: str
    schema: Optional[str] = None   # "module:ATTRIBUTE" of its StructType, when declared

    @property
    def layer(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def write_mode(self) -> str:
        """The write modes as one phrase (docs, SQL checks)."""
        first, *more = self.write_modes
        return first + (f" ({', '.join(more)} from `stream`)" if more else "")


_SPECS = (
    TableSpec("bronze/items", "generate (or land bronze/items)", (OVERWRITE,),
              "raw items: the data contract's input", "courier_spark.data.contract:ITEMS_SCHEMA"),
    TableSpec("bronze/impressions", "generate (or land bronze/impressions)", (OVERWRITE,),
              "raw page-view impressions and clicks: the data contract's input",
              "courier_spark.data.contract:IMPRESSIONS_SCHEMA"),
    TableSpec("quarantine/items", "validate", (OVERWRITE, APPEND_ONCE),
              "bad bronze item rows with their reason"),
    TableSpec("quarantine/impressions", "validate", (OVERWRITE,), "bad bronze impression rows with their reason"),
    TableSpec("silver/items", "validate", (OVERWRITE, MERGE_NEWER), "validated items"),
    TableSpec("silver/impressions", "validate", (OVERWRITE,), "validated impressions"),
    TableSpec("silver/pretrain_samples", "samples", (OVERWRITE,),
              "COURIER pre-training page views (shown items clicked first, history clicks before)"),
    TableSpec("silver/ctr_samples", "samples", (OVERWRITE,), "CTR rows with the user's history, split train/test"),
    TableSpec("gold/item_embeddings", "embed", (REPLACE_VERSION, MERGE_UPSERT),
              "one embedding per item and model version", "courier_spark.features.embed:EMBEDDINGS_SCHEMA"),
    TableSpec("gold/centroids", "cluster", (REPLACE_VERSION,),
              "k-means centres per centroid version", "courier_spark.features.cluster:CENTROIDS_SCHEMA"),
    TableSpec("gold/predictions", "evaluate", (OVERWRITE,),
              "CTR scores of every variant on the test split", "courier_spark.evaluate.sql_runner:PREDICTIONS_SCHEMA"),
    TableSpec("feature_store/item_visual", "features", (MERGE_HISTORY,),
              "cluster ID and distance per item, model and centroid version (validity intervals)"),
    TableSpec("feature_store/impression_visual", "features", (MERGE_UPSERT,),
              "SimScores and history cluster IDs per CTR event"),
    TableSpec("_stream/item_batches", "stream", (APPEND_ONCE,),
              "the streaming stage's ledger of finished micro-batches", "courier_spark.serving.stream:LEDGER_SCHEMA"),
    TableSpec("_health/item_visual", "features", (MERGE_UPSERT,),
              "health of each feature_store/item_visual version (by `features` and `stream`): "
              "statistics, drift, freshness",
              "courier_spark.features.health:HEALTH_SCHEMA"),
    TableSpec("_synthetic_truth/item_factors", "generate", (OVERWRITE,),
              "hidden look factors of the synthetic items (evaluation only)"),
    TableSpec("_synthetic_truth/user_tastes", "generate", (OVERWRITE,),
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


def check_write(path: str, mode: str) -> None:
    """Refuse to write a catalogued table in a mode its entry does not declare
    (a bug in the writer, caught before anything is written). Paths outside the
    catalog (a consumer's own output) may be written any way."""
    if mode not in WRITE_MODES:
        raise ValueError(f"unknown write mode {mode!r}; modes: {', '.join(WRITE_MODES)}")
    table = spec_for_path(path)
    if table is not None and mode not in table.write_modes:
        raise ValueError(f"{table.name} is written by {table.write_mode}, not {mode} ({path})")


def schema_of(table: TableSpec):
    """The declared ``StructType`` of ``table`` (imports its module), or None."""
    if table.schema is None:
        return None
    module, attr = table.schema.split(":")
    return getattr(importlib.import_module(module), attr)

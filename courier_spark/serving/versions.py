"""Which versions serve, and giving items their features: the one place that decides.

A method's features come from one encoder version (``models/<method>/vNNNN``)
and one centroid version (``gold/centroids`` ``cNNNN``, made from that
encoder). ``serving_versions`` resolves them (the newest unless named), and
``load_serving`` also loads the encoder and the centroids; the features stage,
the streaming stage and the evaluation's CTR frames all call it.
``lacking_features`` is the one filter for "which items have no current
feature row of these versions and of their current item version", used by
``assign_new_items`` (the features stage) and by the streaming stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from courier_spark.core.errors import VersionNotFoundError
from courier_spark.core.paths import TablePaths

if TYPE_CHECKING:
    from courier_spark.core.schema import CourierConfig


@dataclass(frozen=True)
class ServingVersions:
    """Which encoder and centroids a method's features come from."""
    method: str
    model_version: str      # "<method>/vNNNN"
    centroid_version: str   # "cNNNN"


def requested_versions(cfg: "CourierConfig") -> tuple[str, str, str]:
    """What a config asks to serve: (``embed.method``, ``embed.model_version``,
    ``features.centroid_version``), "latest" meaning the newest. The one reader
    of these settings for ``serving_versions`` / ``load_serving``."""
    return cfg.embed.method, cfg.embed.model_version, cfg.features.centroid_version


def model_version_of(paths: TablePaths, method: str, model_version: str = "latest") -> str:
    """``<method>/vNNNN`` of ``method``'s named (or newest) encoder artifact."""
    from training.artifact import load_artifact
    return load_artifact(paths.models, method, model_version).model_version


def serving_versions(spark: SparkSession, paths: TablePaths, method: str, model_version: str = "latest",
                     centroid_version: str = "latest") -> ServingVersions:
    """The versions whose features serve for ``method``. ``centroid_version``
    "latest": the newest centroids made from the method's ``model_version``
    ("latest": its newest artifact), not the newest of whichever method was
    clustered last (comparison runs add versions). A named centroid version
    decides the encoder itself (the one it was made from), which must be one
    of ``method``'s."""
    from courier_spark.features.cluster import centroid_model_version, latest_centroid_version
    if centroid_version != "latest":
        mv = centroid_model_version(spark, paths.centroids, centroid_version)
        if mv.split("/", 1)[0] != method:
            raise VersionNotFoundError(f"centroids {centroid_version} were made from {mv}, not from a {method} "
                                       f"model; set embed.method={mv.split('/', 1)[0]} or another "
                                       f"features.centroid_version")
        return ServingVersions(method, mv, centroid_version)
    mv = model_version_of(paths, method, model_version)
    return ServingVersions(method, mv, latest_centroid_version(spark, paths.centroids, mv))


def load_serving(spark: SparkSession, paths: TablePaths, method: str, model_version: str = "latest",
                 centroid_version: str = "latest") -> tuple[ServingVersions, object, np.ndarray]:
    """``serving_versions`` -> (versions, the encoder's artifact, centroids [k, d])."""
    from training.artifact import load_artifact

    from courier_spark.features.cluster import load_centroids
    v = serving_versions(spark, paths, method, model_version, centroid_version)
    _, _, centroids = load_centroids(spark, paths.centroids, v.centroid_version)
    return v, load_artifact(paths.models, method, v.model_version.split("/", 1)[1]), centroids


def lacking_features(spark: SparkSession, items: DataFrame, feature_path: str, versions: ServingVersions,
                     item_version_col: str | None = None) -> DataFrame:
    """The rows of ``items`` (``item_id`` [+ ``item_version_col``]) whose item
    has no current row in the item feature table at ``feature_path`` of these
    model and centroid versions, or (given ``item_version_col``) whose current
    row was made from another item version (the image changed since)."""
    from courier_spark.features.feature_tables import current_rows
    from courier_spark.core.tables import table_exists
    if not table_exists(spark, feature_path):
        return items
    done = (current_rows(spark.read.format("delta").load(feature_path))
            .filter((F.col("model_version") == versions.model_version)
                    & (F.col("centroid_version") == versions.centroid_version)))
    if item_version_col is None:
        return items.join(done.select("item_id"), "item_id", "left_anti")
    have = done.select("item_id", F.col("item_updated_at").alias("_have_version"))
    return (items.join(have, "item_id", "left")
            .filter(F.col("_have_version").isNull() | ~F.col("_have_version").eqNullSafe(F.col(item_version_col)))
            .drop("_have_version"))


def assign_new_items(spark: SparkSession, embeddings_df: DataFrame, centroids: np.ndarray,
                     versions: ServingVersions, feature_path: str, *, faiss_threads: int = 1,
                     item_versions: DataFrame | None = None) -> DataFrame:
    """Nearest centre (``features.assign_cluster_ids``) for the embedded items
    that ``lacking_features`` finds (given ``item_versions`` = ``item_id,
    item_updated_at``, also those whose image changed): new items get the
    nearest existing centre without re-clustering."""
    from courier_spark.features.assignment import assign_cluster_ids
    todo = embeddings_df
    if item_versions is None:
        todo = lacking_features(spark, todo, feature_path, versions)
    else:
        cur = item_versions.select("item_id", F.col("item_updated_at").alias("_item_version"))
        todo = lacking_features(spark, todo.join(cur, "item_id", "left"), feature_path, versions,
                                "_item_version").drop("_item_version")
    return assign_cluster_ids(todo, centroids, spark, faiss_threads=faiss_threads)

"""What the CLI checks before Spark starts (the JVM costs 15-25 s; each of
these costs milliseconds): for every stage of the run, the tables it reads and
cannot do without exist, unless an earlier stage of the same run makes them
(read from the Delta logs, ``courier_spark.core.delta_log``, through the filesystem
layer, so remote roots work); and per stage what else can be known without
Spark: the services it talks to answer (``online``: Redis, with a short
timeout), the settings it needs are there and sound (``point_in_time``), the
versions it is told to use exist (``features.centroid_version``: the
partition values of ``gold/centroids``; ``embed.model_version`` and
``cluster.model_version``: a listing of models/), ``train.categories`` names
categories of the items (their files' ``category`` column). Every failure is a ``CourierError``
with the same message the stage would give after Spark started. Nothing is
written. Imports no stage module and neither torch nor a JVM.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from courier_spark.core import delta_log
from courier_spark.core.catalog import CATALOG
from courier_spark.core.config import CourierConfig
from courier_spark.core.errors import VersionNotFoundError
from courier_spark.core.paths import TablePaths
from courier_spark.core.tables import missing_table

# The catalog tables each stage reads and cannot do without. (The stages not
# listed either make their inputs, read optional ones, or check their own.)
NEEDS: dict[str, tuple[str, ...]] = {
    "validate": ("bronze/items", "bronze/impressions"),
    "samples": ("silver/items", "silver/impressions"),
    "train": ("silver/pretrain_samples", "silver/items"),
    "embed": ("silver/items",),
    "cluster": ("gold/item_embeddings",),
    "features": ("gold/centroids", "gold/item_embeddings", "silver/items", "silver/ctr_samples"),
    "online": ("feature_store/item_visual",),
    "point_in_time": ("feature_store/item_visual",),
    "feast": ("feature_store/item_visual",),
    # The stream's source, the silver items its catch-up embeds, and the centroids that assign them.
    "stream": ("bronze/items", "silver/items", "gold/centroids"),
}
# A Redis that does not answer within this many seconds fails the check (a
# refused port answers at once); the stage itself uses online.timeout_seconds.
REDIS_CHECK_TIMEOUT_S = 2.0
_CVERSION = re.compile(r"^c(\d+)$")

Check = Callable[[CourierConfig, TablePaths, set], None]


def _online(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    from courier_spark.serving.client import RedisSettings, connect
    settings = RedisSettings.from_config(cfg.online)
    settings = dataclasses.replace(settings, timeout_seconds=min(settings.timeout_seconds, REDIS_CHECK_TIMEOUT_S))
    connect(settings).close()


def _point_in_time(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    from courier_spark.serving.retrieval import check_settings
    check_settings(cfg.retrieval, paths)


def _features(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    cv = cfg.features.centroid_version
    if cv == "latest" or "gold/centroids" in made:
        return
    snap = delta_log.snapshot(paths.centroids)
    if snap is None or (snap.partitions and not any("centroid_version" in p for p in snap.partitions)):
        return      # a log this reader cannot replay, or an unpartitioned table: the stage checks with Spark
    have = sorted(snap.partition_values("centroid_version"),
                  key=lambda v: int(m.group(1)) if (m := _CVERSION.match(v)) else -1)
    if not have:
        raise VersionNotFoundError(f"{paths.centroids} holds no centroids; run `courier cluster` first")
    if cv not in have:
        raise VersionNotFoundError(f"centroid version {cv!r} is not in {paths.centroids}; "
                                   f"available: {', '.join(have)}")


def _model(method: str, version: str, paths: TablePaths, made: set) -> None:
    """The model version a stage is told to use is a complete one under
    models/ (a listing, no torch), unless ``train`` runs earlier in the same run."""
    if "stage:train" in made:
        return
    from training.model_versions import resolve_version
    resolve_version(paths.models, method, version)


def _embed(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    _model(cfg.embed.method, cfg.embed.model_version, paths, made)


def _cluster(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    if cfg.cluster.model_version:   # "" = the embeddings of embed.method / embed.model_version
        method, version = cfg.cluster.model_version.split("/", 1)
        _model(method, version, paths, made)


def _train(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    """train.restrict_histories needs train.categories; the categories named
    are categories of silver/items, or of bronze/items when this run remakes
    silver/items (read from the tables' files, no Spark; a table this reader
    cannot tell about is left to the stage)."""
    from training.pretrain_rows import check_categories, check_restrict_histories
    tcfg = cfg.train
    check_restrict_histories(tcfg.categories, tcfg.restrict_histories)
    if not tcfg.categories:
        return
    for table in ("silver/items", "bronze/items"):
        if table in made:
            continue
        known = delta_log.column_values(paths.of(table), "category")
        if known is not None:
            check_categories(tcfg.categories, known, table)
        return


def _feast(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    """feast.repo may take the repository's files (none there that `courier feast` did not write)."""
    import os

    from courier_spark.serving.feast_repo import check_repo_target
    check_repo_target(os.path.abspath(os.path.expanduser(cfg.feast.repo)), cfg.feast.overwrite)


def _stream(cfg: CourierConfig, paths: TablePaths, made: set) -> None:
    """The model and centroid versions it is told to serve exist; with stream.online, Redis answers."""
    _features(cfg, paths, made)
    if cfg.stream.online:
        _online(cfg, paths, made)
    _embed(cfg, paths, made)


CHECKS: dict[str, Check] = {"online": _online, "point_in_time": _point_in_time, "features": _features,
                            "train": _train, "comparisons": _train, "embed": _embed, "cluster": _cluster, "stream": _stream, "feast": _feast}


def preflight(names: Sequence[str], cfg: CourierConfig, paths: TablePaths) -> None:
    """Check the stages ``names`` (in run order) without Spark; raises the
    first problem as a ``CourierError``."""
    made: set[str] = set()
    for name in names:
        for table in NEEDS.get(name, ()):
            if table not in made and not delta_log.table_exists(paths.of(table)):
                raise missing_table(paths.of(table))
        if name in CHECKS:
            CHECKS[name](cfg, paths, made)
        made |= {t for t, spec in CATALOG.items() if spec.made_by.split()[0] == name} | {f"stage:{name}"}

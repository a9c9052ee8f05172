"""``FeatureStore``: the public API for feature consumers, one object per dataset root.

::

    from courier_spark import FeatureStore
    store = FeatureStore("data/demo")             # a local path or hdfs://, s3a://, abfss://, gs:// ...
    store.feature_tables()                        # {"item_visual": <path>, "impression_visual": <path>}
    store.serving_versions()                      # which encoder and centroids serve
    store.training_set(events)                    # features as served at each event's time
    store.current_rows()                          # what serves now
    store.online().lookup([7, 8])                 # the same values from Redis

A thin facade over the library: table paths come from ``paths``/``catalog``,
serving versions from ``serving.serving_versions`` (the one place that
decides them), training sets from ``retrieval.point_in_time_features``,
current rows from ``feature_store.current_rows``/``read_features`` and the
online client from ``online_client``. Importing it imports neither pyspark
nor torch: Spark starts on the first Spark-backed call (or use the session
you pass), torch only for ``serving_versions`` (it reads the model
artifact), so a process that only wants the online client stays small.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from courier_spark.core.catalog import CATALOG
from courier_spark.core.errors import ConfigError, FilesystemError
from courier_spark.serving.client import OnlineClient, RedisSettings
from courier_spark.core.paths import TablePaths

if TYPE_CHECKING:  # typing only: importing this module must not start Spark or load torch
    from pyspark.sql import DataFrame, SparkSession

    from courier_spark.core.schema import CourierConfig
    from courier_spark.serving.versions import ServingVersions

FEATURE_LAYER = "feature_store"
# The run summary `courier online` leaves under the root: it names the store it wrote.
_ONLINE_SUMMARY = "online.json"


class FeatureStore:
    """The feature tables of one dataset root, for consumers.

    ``root``: the dataset root the pipeline wrote (local path or any
    Hadoop-compatible URI). ``spark``: a session to use (default: the active
    one, else one built from ``config.spark`` on first need). ``config``: the
    checked config (``courier_spark.core.config.load_config``); it supplies the
    serving method and versions, the retrieval defaults and the online store.
    Without it the defaults apply, except that ``online()`` uses the store
    that ``courier online`` last wrote for this root.
    """

    def __init__(self, root: str, *, spark: "SparkSession | None" = None,
                 config: "CourierConfig | None" = None) -> None:
        from courier_spark.core import fs
        self.paths = TablePaths.for_root(root)
        if not fs.isdir(self.paths.root):
            raise FilesystemError(f"no dataset root at {root}; run the pipeline (`courier pipeline --root "
                                  f"{root}`) or open the root it wrote")
        self._spark = spark
        self._config_given = config is not None
        self._config = config

    def __repr__(self) -> str:
        return f"FeatureStore({self.root!r})"

    @property
    def root(self) -> str:
        """The root, absolute when local."""
        return self.paths.root

    @property
    def config(self) -> "CourierConfig":
        """The config this store reads with (the defaults when none was given)."""
        if self._config is None:
            from courier_spark.core.config import load_config
            self._config = load_config(None)
        return self._config

    @property
    def spark(self) -> "SparkSession":
        """The Spark session (started with Delta on first use when none was given)."""
        if self._spark is None:
            from courier_spark.core.spark import get_spark
            self._spark = get_spark(self.config.spark)
        return self._spark

    # ------------------------------------------------------------------ names and versions
    def feature_tables(self) -> dict[str, str]:
        """Feature table name -> its path (URI) under the root, from the table catalog."""
        return {spec.name.split("/", 1)[1]: self.paths.of(spec.name)
                for spec in CATALOG.values() if spec.layer == FEATURE_LAYER}

    def table_path(self, name: str) -> str:
        """Path of a catalogued table: a feature table's short name (``item_visual``)
        or any ``layer/table`` (``silver/impressions``)."""
        tables = self.feature_tables()
        if name in tables:
            return tables[name]
        try:
            return self.paths.of(name)
        except KeyError:
            raise ConfigError(f"{name!r} is not a table of this store; feature tables: {', '.join(tables)}; "
                              f"or any catalogued layer/table (courier_spark.core.catalog)") from None

    def table_versions(self, name: str = "item_visual") -> list[dict[str, Any]]:
        """The feature table's Delta commits, oldest first: ``version``, ``timestamp``, ``operation``."""
        from courier_spark.features.feature_tables import feature_versions
        return feature_versions(self.spark, self.table_path(name))

    def serving_versions(self, method: str | None = None, model_version: str | None = None,
                         centroid_version: str | None = None) -> "ServingVersions":
        """The encoder and centroid versions whose features serve for ``method``
        (default ``embed.method``; versions default to ``embed.model_version`` and
        ``features.centroid_version``): ``courier_spark.serving.versions.serving_versions``."""
        from courier_spark.serving.versions import requested_versions, serving_versions
        m, mv, cv = requested_versions(self.config)
        return serving_versions(self.spark, self.paths, method or m, model_version or mv, centroid_version or cv)

    # ------------------------------------------------------------------ offline reads
    def read(self, name: str = "item_visual", version: int | None = None) -> "DataFrame":
        """A table as a DataFrame: a feature table (all rows, with their validity
        intervals), at Delta ``version`` when given; or any catalogued ``layer/table``."""
        if name in self.feature_tables():
            from courier_spark.features.feature_tables import read_features
            return read_features(self.spark, self.table_path(name), version)
        from courier_spark.core.tables import read_table
        return read_table(self.spark, self.table_path(name), version=version)

    def current_rows(self, version: int | None = None) -> "DataFrame":
        """``item_visual``'s rows serving now (``valid_to`` null): one per item,
        the values ``courier online`` copies to Redis. At Delta ``version``: those of then."""
        from courier_spark.features.feature_tables import current_rows
        return current_rows(self.read("item_visual", version))

    def training_set(self, events: "DataFrame | str", *, ts_col: str | None = None,
                     history: bool | None = None, k: int | None = None) -> "DataFrame":
        """Point-in-time training set: ``events`` (a DataFrame, or the path of a
        Delta table, with ``item_id``, ``ts_col`` and optionally ``user_id``) ->
        the same rows with the item features as they were served at each event
        (null before any feature existed), plus the user's history features when
        ``history`` and a ``user_id`` column (``retrieval.point_in_time_features``).
        Defaults: ``retrieval.event_ts_column``, ``retrieval.history``, ``retrieval.k``."""
        from courier_spark.serving.retrieval import point_in_time_features
        from courier_spark.core.tables import read_table
        cfg = self.config.retrieval
        ts_col = ts_col or cfg.event_ts_column
        k = cfg.k if k is None else k
        history = cfg.history if history is None else history
        if isinstance(events, str):
            events = read_table(self.spark, events)
        with_history = history and "user_id" in events.columns
        return point_in_time_features(
            events, self.read("item_visual"), ts_col=ts_col,
            impressions=read_table(self.spark, self.paths.silver_impressions) if with_history else None,
            embeddings=read_table(self.spark, self.paths.item_embeddings) if with_history else None, k=k)

    # ------------------------------------------------------------------ online
    def online_settings(self) -> RedisSettings:
        """Where the online store is: the config's ``online`` section when a config
        was given; else the one ``courier online`` last used for this root (its run
        summary); else the defaults. The password comes from ``$<online.password_env>``
        (the config's, when the summary redacted the variable's name)."""
        if not self._config_given:
            recorded = self._recorded_online_section()
            if recorded is not None:
                return RedisSettings.from_config(recorded)
        return RedisSettings.from_config(self.config.online)

    def online(self, settings: RedisSettings | None = None) -> OnlineClient:
        """A client of the online store (Redis) holding ``item_visual``'s current
        rows; ``.lookup(item_ids)`` returns exactly what ``current_rows()`` holds
        once ``courier online`` has run. Connects on first use."""
        return OnlineClient(settings or self.online_settings())

    def _recorded_online_section(self) -> dict[str, Any] | None:
        from courier_spark.core import fs
        path = fs.join(self.paths.run_summaries, _ONLINE_SUMMARY)
        if not fs.exists(path):
            return None
        try:
            section = fs.read_json(path).get("config", {}).get("online")
        except (ValueError, AttributeError):   # not our summary: fall back to the config
            return None
        if not isinstance(section, dict):
            return None
        # Summaries redact every key that says "password", the variable's name
        # included: then the config names the variable.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(section.get("password_env", ""))):
            section = {**section, "password_env": self.config.online.password_env}
        return section

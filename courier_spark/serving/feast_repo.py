"""A Feast feature repository for a dataset root: what ``courier feast`` writes.

Feast (0.67, its Spark offline store and Redis online store) then serves the
root's feature tables without anyone re-describing them:

* entities ``item`` (``item_id``) and ``impression`` (``event_id``), the keys
  of the two feature tables, and ``user`` (``user_id``) for a team's own
  views (no feature table here is user-keyed: a user's history features are
  per event, ``impression_visual``, or computed by ``courier point_in_time``);
* feature view ``item_visual`` over ``feature_store/item_visual``. Feast's
  point-in-time rule is "the latest row whose timestamp is at or before the
  event"; the table's rule is "the row whose ``[valid_from, valid_to)``
  contains the event" (``courier_spark.serving.retrieval``). The view's source query
  makes the two the same: its timestamp is ``valid_from``, and a row closed
  without a successor (``valid_to`` set, no row starting then) adds a row at
  ``valid_to`` with null features, so an event after it gets nulls, as
  ``courier point_in_time`` gives. Validity intervals of one item never
  overlap (``feature_store.merge_history``), so "latest ``valid_from``" is the
  containing interval. ``ttl`` is 0 (no limit): a feature row stays valid
  until it is replaced, however old;
* feature view ``impression_visual`` over ``feature_store/impression_visual``
  (offline only: per-event training features have no online use), timestamp
  ``updated_at``, the time its values were computed;
* ``feature_store.yaml``: the Spark offline store with the same Delta jars
  and session settings as ``courier_spark.core.spark`` (so Feast's Spark reads the
  tables as the platform does), the ``online`` section's Redis, a local registry.

Secrets never land in the files: the Redis password and every ``spark.extra``
value Spark's redaction rule calls secret are written as ``${VARIABLE}``,
which Feast expands from its process environment when it reads the YAML
(``repo_config.load_repo_config`` applies ``os.path.expandvars``).

``repo_files`` is pure (text in, text out); ``write_repo`` writes them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from pyspark.sql import types as T

from courier_spark.core.errors import ConfigError
from courier_spark.features.feature_tables import UPDATED_AT, VALID_FROM, VALID_TO, delta_table_identifier, quote_identifier
from courier_spark.core.redact import is_secret_key
from courier_spark.core.schema import OnlineConfig, SparkConfig
from courier_spark.core.spark import flat_settings, launch_settings, session_settings

FEAST_VERSION = "0.67.0"            # requirements/base.txt pins the same
WRITTEN_BY = "by `courier feast`"   # in the opening lines of every file it writes
REPO_YAML = "feature_store.yaml"
DEFINITIONS = "courier_features.py"

# Spark type -> the feast.types name of a field of that type.
_FEAST_TYPES = {T.IntegerType: "Int32", T.LongType: "Int64", T.FloatType: "Float32", T.DoubleType: "Float64",
                T.StringType: "String", T.BooleanType: "Bool", T.TimestampType: "UnixTimestamp",
                T.TimestampNTZType: "UnixTimestamp", T.ShortType: "Int32", T.ByteType: "Int32"}
_VALUE_TYPES = {"Int32": "INT32", "Int64": "INT64", "String": "STRING"}
# Entities no view of ours is keyed by, declared so a team's own views in the
# same Feast project join on the data contract's keys (user_id: bronze/impressions).
EXTRA_ENTITIES = {"user": ("user_id", "Int64")}


@dataclass(frozen=True)
class FeastView:
    """One feature view: its entity, its source query and its feature fields."""
    name: str
    entity: str
    join_key: str
    key_type: str                       # feast.types name of the join key
    timestamp_field: str
    query: str                          # Spark SQL over the Delta table
    features: tuple[tuple[str, str], ...]   # (column, feast.types name)
    online: bool
    description: str


@dataclass(frozen=True)
class FeastRepo:
    """What ``repo_files`` produced: the files and what a Feast process needs."""
    files: dict[str, str]               # file name -> text
    views: tuple[FeastView, ...]
    env_vars: tuple[str, ...]           # variables Feast must find in its environment


def feast_type(dtype: T.DataType) -> str:
    """The ``feast.types`` expression of a Spark column type (ConfigError if Feast has none)."""
    if isinstance(dtype, T.ArrayType):
        inner = feast_type(dtype.elementType)
        if inner.startswith("Array("):
            raise ConfigError(f"Feast has no nested arrays ({dtype.simpleString()})")
        return f"Array({inner})"
    for spark_type, name in _FEAST_TYPES.items():
        if isinstance(dtype, spark_type):
            return name
    raise ConfigError(f"Feast has no type for Spark {dtype.simpleString()}")


def history_event_sql(path: str, key: str, columns: Sequence[str], types: Mapping[str, str]) -> str:
    """A validity-interval table (``[valid_from, valid_to)`` rows) as the event
    log Feast's "latest at or before" rule reads: every row at its
    ``valid_from``, plus a row of nulls at ``valid_to`` for each row closed
    without a successor (no row of the same key starting at that instant).
    ``types``: column -> Spark SQL type, for the null rows."""
    q = quote_identifier
    cols = ", ".join(q(c) for c in (key, *columns, VALID_FROM))
    nulls = ", ".join([f"c.{q(key)}", *[f"CAST(NULL AS {types[c]}) AS {q(c)}" for c in columns],
                       f"c.{q(VALID_TO)} AS {q(VALID_FROM)}"])
    table = delta_table_identifier(path)
    return (f"SELECT {cols} FROM {table}\n"
            f"UNION ALL\n"
            f"SELECT {nulls}\n"
            f"FROM {table} c LEFT ANTI JOIN {table} n\n"
            f"  ON n.{q(key)} = c.{q(key)} AND n.{q(VALID_FROM)} = c.{q(VALID_TO)}\n"
            f"WHERE c.{q(VALID_TO)} IS NOT NULL")


def feature_views(item_visual_path: str, item_visual: T.StructType, impression_visual_path: str | None,
                  impression_visual: T.StructType | None) -> tuple[FeastView, ...]:
    """The feature views of a root's feature tables, from their Delta schemas."""
    def fields(schema: T.StructType, skip: set[str]) -> tuple[tuple[str, str], ...]:
        return tuple((f.name, feast_type(f.dataType)) for f in schema.fields if f.name not in skip)

    item_cols = fields(item_visual, {"item_id", VALID_FROM, VALID_TO})
    types = {f.name: f.dataType.simpleString() for f in item_visual.fields}
    views = [FeastView(
        "item_visual", "item", "item_id", feast_type(item_visual["item_id"].dataType), VALID_FROM,
        history_event_sql(item_visual_path, "item_id", [c for c, _ in item_cols], types), item_cols, True,
        "COURIER cluster id and distance of each item as served at the event's time "
        "(feature_store/item_visual; its validity intervals)")]
    if impression_visual is not None and impression_visual_path is not None:
        imp_cols = fields(impression_visual, {"event_id", UPDATED_AT})
        select = ", ".join(quote_identifier(c) for c in ("event_id", *[c for c, _ in imp_cols], UPDATED_AT))
        views.append(FeastView(
            "impression_visual", "impression", "event_id", feast_type(impression_visual["event_id"].dataType),
            UPDATED_AT, f"SELECT {select} FROM {delta_table_identifier(impression_visual_path)}", imp_cols, False,
            "SimScores and history cluster ids per CTR event (feature_store/impression_visual), "
            "as of when they were computed (updated_at)"))
    return tuple(views)


def env_var_for(key: str) -> str:
    """The variable a secret Spark setting is read from: ``COURIER_`` + the key
    in capitals, non-alphanumerics as ``_`` (spark.hadoop.fs.s3a.secret.key ->
    COURIER_SPARK_HADOOP_FS_S3A_SECRET_KEY)."""
    return "COURIER_" + re.sub(r"[^A-Z0-9]", "_", key.upper())


def offline_spark_conf(spark_cfg: SparkConfig, master: str) -> tuple[dict[str, str], list[str]]:
    """The Feast Spark session's settings: the platform's own session and launch
    settings (Delta jars, UTC, s3a connector, JVM options) and ``spark.extra``,
    its secrets as ``${VARIABLE}``. Returns (settings, variables needed)."""
    conf = {"spark.master": master, "spark.app.name": "courier-feast",
            **session_settings(spark_cfg), **launch_settings(spark_cfg)}
    needed = []
    for key, value in flat_settings(spark_cfg.extra or {}).items():
        if is_secret_key(f"spark.extra.{key}"):
            var = env_var_for(key)
            needed.append(var)
            value = "${" + var + "}"
        conf[key] = value
    return conf, needed


def online_store_yaml(online: OnlineConfig, with_password: bool) -> list[str]:
    """The ``online_store`` block: Feast's Redis store at the ``online`` section's
    address (Feast keeps its own keys there, beside ``courier online``'s)."""
    parts = [f"{online.host}:{online.port}"]
    if online.db:
        parts.append(f"db={online.db}")
    if online.username:
        parts.append(f"username={online.username}")
    if with_password:
        parts.append("password=${" + online.password_env + "}")
    if online.timeout_seconds:
        parts.append(f"socket_timeout={online.timeout_seconds:g}")
    return ["online_store:", "  type: redis", f"  connection_string: {_yaml_str(','.join(parts))}"]


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def repo_files(views: Sequence[FeastView], *, project: str, root: str, spark_conf: Mapping[str, str],
               online: OnlineConfig, with_password: bool, env_vars: Sequence[str] = ()) -> FeastRepo:
    """The repository's two files: ``feature_store.yaml`` and the definitions."""
    yaml_lines = [
        f"# Written {WRITTEN_BY} for the root {root}. Feast {FEAST_VERSION}:",
        "#   feast -c THIS_DIR apply && feast -c THIS_DIR materialize-incremental $(date -u +%FT%T)",
        *([f"# Needs in the environment: {', '.join(env_vars)}"] if env_vars else []),
        f"project: {project}",
        "provider: local",
        "registry: data/registry.db",
        "entity_key_serialization_version: 3",
        "offline_store:",
        "  type: spark",
        "  spark_conf:",
        *[f"    {_yaml_str(k)}: {_yaml_str(v)}" for k, v in spark_conf.items()],
        *online_store_yaml(online, with_password),
    ]
    # Every feast.types name the fields use ("Array(Float32)" uses Array and Float32).
    base_types = sorted({name for v in views for t in (v.key_type, *(t for _, t in v.features))
                         for name in re.findall(r"\w+", t)})
    py = [
        f'"""Feast definitions of the courier-spark root {root} (written {WRITTEN_BY};',
        '    re-run it rather than editing: it follows the tables\' schemas)."""',
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, ValueType",
        "from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource",
        f"from feast.types import {', '.join(base_types)}",
        "",
    ]
    entities = {v.entity: (v.join_key, v.key_type) for v in views}
    entities.update(EXTRA_ENTITIES)
    for name, (join_key, key_type) in entities.items():
        py += [f"{name} = Entity(name={name!r}, join_keys=[{join_key!r}], "
               f"value_type=ValueType.{_VALUE_TYPES.get(key_type, 'STRING')})", ""]
    for v in views:
        py += [
            f"{v.name}_source = SparkSource(",
            f"    name={v.name + '_source'!r},",
            f"    query={v.query!r},",
            f"    timestamp_field={v.timestamp_field!r},",
            ")",
            f"{v.name} = FeatureView(",
            f"    name={v.name!r},",
            f"    entities=[{v.entity}],",
            "    ttl=timedelta(0),   # 0 = no limit: a row serves until it is replaced",
            f"    schema=[Field(name={v.join_key!r}, dtype={v.key_type}),",
            *[f"            Field(name={c!r}, dtype={t})," for c, t in v.features],
            "    ],",
            f"    source={v.name}_source,",
            f"    online={v.online},",
            f"    description={v.description!r},",
            ")",
            "",
        ]
    return FeastRepo({REPO_YAML: "\n".join(yaml_lines) + "\n", DEFINITIONS: "\n".join(py)},
                     tuple(views), tuple(env_vars))


def check_repo_target(directory: str, overwrite: bool = False) -> None:
    """``directory`` may take the repository's files: local, not a file, and
    each file it would replace was written by ``courier feast`` (its opening
    lines say so) unless ``overwrite``."""
    if "://" in directory and not directory.startswith("file://"):
        raise ConfigError(f"feast.repo must be a local directory (Feast reads its files locally), got {directory}")
    if os.path.isfile(directory):
        raise ConfigError(f"feast.repo {directory} is a file; choose a directory")
    if overwrite:
        return
    for name in (REPO_YAML, DEFINITIONS):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(600)
            if WRITTEN_BY not in head:
                raise ConfigError(f"feast.repo {directory} holds a {name} that `courier feast` did not write; "
                                  f"choose another feast.repo or --set feast.overwrite=true to replace it")


def write_repo(repo: FeastRepo, directory: str, overwrite: bool = False) -> list[str]:
    """Write the repository's files into a local ``directory`` (created; other
    files there, Feast's registry included, are left alone; a file of the
    same name that ``courier feast`` did not write is refused unless
    ``overwrite``). Returns the paths."""
    check_repo_target(directory, overwrite)
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, text in repo.files.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written

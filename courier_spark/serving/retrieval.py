"""Point-in-time retrieval: a consumer's events joined with the visual
features *as they were served at each event's time*.

A training set built by joining ``feature_store/item_visual`` on ``item_id``
alone leaks the future: an event from last month would get today's cluster
id, made by a model and centroids that did not exist then. Here each event
``(item_id, event_ts)`` gets the item_visual row whose validity interval
``[valid_from, valid_to)`` contains ``event_ts`` (``feature_store.merge_history``
keeps these intervals in the table itself, so this works after ``VACUUM``
has removed the Delta versions time travel would need), and nulls where the
item had no feature row yet: never a guess, never a row written later.

With a ``user_id`` column (and ``history=True``) the same holds for the
history features: the user's latest ``k`` clicks strictly before
``event_ts`` (``samples.page_histories``, the definition the CTR samples
use), each click's cluster id as of ``event_ts``, and SimScores = cos(target,
click) from the embeddings of the model version that served the target at
``event_ts`` (null when the click had no feature row of that model version
then). Embeddings are kept per model version, not per day: an item whose
image changed within one model version contributes its current embedding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core import delta_log, fs
from courier_spark.core.catalog import CATALOG
from courier_spark.core.errors import ConfigError, DataError, MissingArtifactError
from courier_spark.features.feature_tables import VALID_FROM, VALID_TO
from courier_spark.core.paths import TablePaths

if TYPE_CHECKING:
    from courier_spark.core.schema import RetrievalConfig

# item_visual columns an event receives (as of its timestamp).
ITEM_FEATURES = ("courier_cluster_id", "distance", "model_version", "centroid_version")
HISTORY_FEATURES = ("hist_item_ids", "hist_cluster_ids", "sim_scores")
_ROW = "_pit_row"


def as_of_join(events: DataFrame, history: DataFrame, key: str, ts_col: str, columns: Sequence[str],
               *, history_key: str = "item_id", prefix: str = "") -> DataFrame:
    """``events`` LEFT JOIN the ``history`` row of ``events[key]`` valid at
    ``events[ts_col]`` (``valid_from <= ts < valid_to``, ``valid_to`` null =
    open). The intervals of one key do not overlap, so every event keeps
    exactly one row; ``columns`` come back as ``prefix + name``, null when no
    row was valid then."""
    h = history.select(F.col(history_key).alias("_h_key"), F.col(VALID_FROM).alias("_h_from"),
                       F.col(VALID_TO).alias("_h_to"), *[F.col(c).alias(prefix + c) for c in columns])
    valid = ((F.col(key) == F.col("_h_key")) & (F.col("_h_from") <= F.col(ts_col))
             & (F.col("_h_to").isNull() | (F.col(ts_col) < F.col("_h_to"))))
    return events.join(h, valid, "left").drop("_h_key", "_h_from", "_h_to")


def _check_events(events: DataFrame, ts_col: str, produced: Sequence[str]) -> None:
    missing = [c for c in ("item_id", ts_col) if c not in events.columns]
    if missing:
        raise DataError(f"point-in-time retrieval needs column(s) {missing}; the events have "
                        f"{', '.join(events.columns)}")
    if not isinstance(events.schema[ts_col].dataType, (T.TimestampType, T.TimestampNTZType)):
        raise DataError(f"{ts_col} must be a timestamp column, got {events.schema[ts_col].dataType.simpleString()}")
    clash = [c for c in produced if c in events.columns]
    if clash:
        raise DataError(f"the events already have column(s) {clash}, which retrieval adds; rename or drop them")


def point_in_time_features(events: DataFrame, item_visual: DataFrame, *, ts_col: str = "event_ts",
                           impressions: DataFrame | None = None, embeddings: DataFrame | None = None,
                           k: int = 5) -> DataFrame:
    """``events`` (``item_id``, ``ts_col``, optional ``user_id``, any other
    columns) -> the same rows, in any order, plus ``ITEM_FEATURES`` as of
    ``ts_col``; plus ``HISTORY_FEATURES`` when ``impressions`` (silver) and
    ``embeddings`` (gold) are given and the events have ``user_id``.
    ``hist_item_ids`` is oldest -> newest like ``silver/ctr_samples``;
    ``sim_scores`` and ``hist_cluster_ids`` have slot 0 = the latest click,
    like ``feature_store/impression_visual``."""
    with_history = impressions is not None and embeddings is not None and "user_id" in events.columns
    _check_events(events, ts_col, list(ITEM_FEATURES) + (list(HISTORY_FEATURES) if with_history else []))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = as_of_join(events.withColumn(_ROW, F.monotonically_increasing_id()), item_visual,
                     "item_id", ts_col, ITEM_FEATURES)
    if not with_history:
        return out.drop(_ROW)
    return _with_history(out, item_visual, impressions, embeddings, ts_col, k).drop(_ROW)


def _with_history(out: DataFrame, item_visual: DataFrame, impressions: DataFrame, embeddings: DataFrame,
                  ts_col: str, k: int) -> DataFrame:
    from courier_spark.features.assignment import array_dot
    from courier_spark.data.samples import page_histories

    out = out.localCheckpoint()  # the row ids must stay fixed across the joins below
    pages = out.select(F.col(_ROW).cast("string").alias("request_id"), "user_id", F.col(ts_col).alias("page_ts"))
    hist = page_histories(pages, impressions, k).select(F.col("request_id").cast("long").alias(_ROW),
                                                         "hist_item_ids")
    slots = (hist.select(_ROW, F.posexplode(F.slice(F.reverse("hist_item_ids"), 1, k)).alias("slot", "hist_item_id"))
             .join(out.select(_ROW, ts_col, F.col("item_id").alias("t_item"), F.col("model_version").alias("t_mv")),
                   _ROW))
    slots = as_of_join(slots, item_visual, "hist_item_id", ts_col, ["courier_cluster_id", "model_version"],
                       prefix="h_")
    emb = embeddings.select("item_id", "model_version", "embedding",
                            F.sqrt(array_dot(F.col("embedding"), F.col("embedding"))).alias("norm"))
    t = emb.select(F.col("item_id").alias("t_item"), F.col("model_version").alias("t_mv"),
                   F.col("embedding").alias("t_emb"), F.col("norm").alias("t_norm"))
    h = emb.select(F.col("item_id").alias("hist_item_id"), F.col("model_version").alias("h_model_version"),
                   F.col("embedding").alias("h_emb"), F.col("norm").alias("h_norm"))
    # A SimScore needs both items served by the same model at event time.
    same_model = F.col("t_mv").isNotNull() & (F.col("t_mv") == F.col("h_model_version"))
    per_slot = (slots.join(t, ["t_item", "t_mv"], "left").join(h, ["hist_item_id", "h_model_version"], "left")
                .select(_ROW, "slot",
                        F.when(same_model, array_dot(F.col("t_emb"), F.col("h_emb")) / (F.col("t_norm") * F.col("h_norm")))
                        .cast("float").alias("sim"),
                        F.col("h_courier_cluster_id").cast("int").alias("cid")))
    by_row = (per_slot.groupBy(_ROW)
              .agg(F.map_from_entries(F.collect_list(F.struct("slot", F.struct("sim", "cid")))).alias("_m")))
    idx = F.sequence(F.lit(0), F.lit(k - 1))
    return (out.join(hist, _ROW, "left").join(by_row, _ROW, "left")
            .withColumn("hist_item_ids", F.coalesce("hist_item_ids", F.array().cast("array<bigint>")))
            .withColumn("hist_cluster_ids",
                        F.transform(idx, lambda i: F.try_element_at("_m", i)["cid"]).cast("array<int>"))
            .withColumn("sim_scores",
                        F.transform(idx, lambda i: F.try_element_at("_m", i)["sim"]).cast("array<float>"))
            .drop("_m"))


# ----------------------------------------------------------------- input and output
# Who wrote an output: a Delta table property, or a file in a Parquet directory
# (Parquet has no table properties). point_in_time replaces only its own output.
WRITER_PROPERTY = "courier.writer"
WRITER = "point_in_time"
PARQUET_MARKER = "_courier_writer"


def _norm(path: str) -> str:
    """Comparable form: local paths absolute without a trailing slash, URIs as given."""
    return TablePaths.for_root(path).root.rstrip("/") or "/"


def _within(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_settings(cfg: "RetrievalConfig", paths: TablePaths) -> None:
    """Everything about ``courier point_in_time``'s settings that can be
    checked without Spark: both paths set, the input there, the output
    allowed (``check_output``). The CLI runs it before Spark starts; the
    stage again before it reads."""
    if not cfg.input or not cfg.output:
        raise ConfigError("point_in_time needs --set retrieval.input=PATH and --set retrieval.output=PATH")
    if cfg.input_format == "delta" and not delta_log.table_exists(cfg.input):
        raise MissingArtifactError(f"retrieval.input {cfg.input} is not a Delta table"
                                   f"{'' if fs.exists(cfg.input) else ' (nothing there)'}; for Parquet events "
                                   "set retrieval.input_format=parquet")
    if cfg.input_format == "parquet" and not fs.exists(cfg.input):
        raise MissingArtifactError(f"retrieval.input {cfg.input} does not exist")
    check_output(cfg, paths)


def check_output(cfg: "RetrievalConfig", paths: TablePaths) -> None:
    """``ConfigError`` (one line) unless writing ``cfg.output`` can only
    replace what point_in_time wrote: not the input, not the root or a folder
    above it, not in or above one of the root's catalog tables; what is there
    now is nothing, an empty directory, point_in_time's own output (a table
    property / marker file) or anything with ``retrieval.overwrite=true``.
    Reads the filesystem and Delta logs only (no Spark), so the CLI runs it
    before Spark starts and the stage again right before it writes."""
    out, root = _norm(cfg.output), _norm(paths.root)
    if _within(out, root):
        raise ConfigError(f"retrieval.output {cfg.output} would replace the dataset root {paths.root}; "
                          "write the result outside the root's tables")
    if cfg.input and (_within(out, _norm(cfg.input)) or _within(_norm(cfg.input), out)):
        raise ConfigError(f"retrieval.output {cfg.output} is, holds or lies in retrieval.input {cfg.input}; "
                          "write the result elsewhere")
    owned = {f"the root's table {name} (written by `courier {spec.made_by.split()[0]}`)": paths.of(name)
             for name, spec in CATALOG.items()}
    owned.update({f"the root's {what}": d for what, d in paths.artefact_dirs().items()})
    for what, path in owned.items():
        mine = _norm(path)
        if _within(mine, out) or _within(out, mine):
            where = "is" if out == mine else "is inside" if _within(mine, out) else "holds"
            raise ConfigError(f"retrieval.output {cfg.output} {where} {what}; write the result outside the "
                              "root's tables and artefacts")
    if cfg.overwrite:
        return
    if delta_log.table_exists(out):
        snap = delta_log.snapshot(out)
        writer = snap.properties.get(WRITER_PROPERTY) if snap else None
        if writer != WRITER:
            raise ConfigError(f"retrieval.output {cfg.output} holds a Delta table that point_in_time did not write "
                              f"(its property {WRITER_PROPERTY} is {writer or 'unset'}); choose another "
                              "retrieval.output or --set retrieval.overwrite=true to replace it")
        return
    if not fs.exists(out):
        return
    if not fs.isdir(out):
        raise ConfigError(f"retrieval.output {cfg.output} is a file; choose another retrieval.output or "
                          "--set retrieval.overwrite=true to replace it")
    names = fs.ls(out)
    if names and PARQUET_MARKER not in names:
        raise ConfigError(f"retrieval.output {cfg.output} is a directory point_in_time did not write "
                          f"({len(names)} entr{'y' if len(names) == 1 else 'ies'}, no {PARQUET_MARKER} file); "
                          "choose another retrieval.output or --set retrieval.overwrite=true to replace it")


def write_output(spark: SparkSession, df: DataFrame, path: str, fmt: str) -> None:
    """Replace ``path`` with ``df`` (checked by ``check_output`` first) and
    record that point_in_time wrote it. Delta: a new table is created with the
    property before any row is written (a run that dies later leaves an empty
    table that is still ours); an existing one gets the property (when
    replaced with retrieval.overwrite=true) and the table features the new
    schema needs (timestamp_ntz events on a table made before) first, then the
    atomic overwrite. Parquet: Spark's overwrite, then the marker file."""
    if fmt == "delta":
        from delta.tables import DeltaTable

        if not delta_log.table_exists(path):
            if fs.exists(path):
                fs.rm(path, recursive=True)   # an empty directory, or anything with retrieval.overwrite=true
            (DeltaTable.create(spark).location(path).addColumns(df.schema)
             .property(WRITER_PROPERTY, WRITER).execute())
        else:
            snap = delta_log.snapshot(path)
            props = {}
            if snap is None or snap.properties.get(WRITER_PROPERTY) != WRITER:
                props[WRITER_PROPERTY] = WRITER
            if "timestamp_ntz" in df.schema.simpleString() and (snap is None or "timestampNtz" not in snap.features):
                props["delta.feature.timestampNtz"] = "supported"
            if props:
                pairs = ", ".join(f"'{k}' = '{v}'" for k, v in props.items())
                spark.sql(f"ALTER TABLE delta.`{path.replace('`', '``')}` SET TBLPROPERTIES ({pairs})")
        df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    else:
        df.write.format("parquet").mode("overwrite").save(path)
        fs.write_text(fs.join(path, PARQUET_MARKER), WRITER + "\n")


def _nanosecond_columns(path: str) -> dict[str, bool]:
    """Top-level columns of the Parquet input stored as INT64 nanosecond
    timestamps (pandas' default ``to_parquet``), each -> whether it is
    UTC-adjusted (a tz-aware pandas column); read from one file's footer.
    (INT96 timestamps, Spark's own default, are not these: Spark reads them.)"""
    import json

    import pyarrow.parquet as pq

    if fs.isdir(path):
        files = [f for f in fs.glob(fs.join(path, "**", "*.parquet"))
                 if not f.rsplit("/", 1)[-1].startswith(("_", "."))]
        if not files:
            return {}
        path = files[0]
    with fs.open_read(path) as f:
        schema = pq.ParquetFile(f).schema
    out = {}
    for i in range(len(schema)):
        col = schema.column(i)
        logical = json.loads(col.logical_type.to_json())
        if logical.get("Type") != "Timestamp" or logical.get("timeUnit") != "nanoseconds":
            continue
        if "." in col.path:
            raise DataError(f"retrieval.input {path}: column {col.path!r} holds nanosecond timestamps inside a nested "
                            "column, which Spark cannot read; write it with to_parquet(..., coerce_timestamps='us')")
        out[col.path] = bool(logical.get("isAdjustedToUTC"))
    return out


def read_events(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """The consumer's events (``check_settings`` found them). A Parquet file written with pandas' defaults has
    nanosecond timestamps, which Spark cannot read as timestamps: they are
    read as the long they are stored as (``spark.sql.legacy.parquet.
    nanosAsLong``, set on the session, since the scan reads it when it runs;
    it changes nothing else, as Spark cannot read such columns without it)
    and turned back into timestamps truncated to microseconds,
    Spark's precision: naive columns -> TIMESTAMP_NTZ (what Spark makes of a
    naive microsecond column), tz-aware -> TIMESTAMP."""
    from pyspark.errors import AnalysisException

    if fmt == "delta":
        return spark.read.format("delta").load(path)      # checked by check_settings
    nanos = _nanosecond_columns(path)
    if nanos:
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        events = spark.read.parquet(path)
    except AnalysisException as exc:
        raise DataError(f"retrieval.input {path} cannot be read as Parquet: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    for col, utc in nanos.items():
        micros = f"`{col.replace('`', '``')}` div 1000"
        events = events.withColumn(col, F.expr(f"timestamp_micros({micros})" if utc else
                                               f"timestampadd(MICROSECOND, {micros}, TIMESTAMP_NTZ'1970-01-01')"))
    return events

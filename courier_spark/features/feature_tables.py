"""Delta feature tables: keyed MERGE upserts, validity intervals, column comments.

Two write disciplines:

* ``merge_upsert`` (``feature_store/impression_visual``) keeps one row per
  key; a key already present is updated only when one of its values
  (including ``model_version`` / ``centroid_version``) differs, so
  ``updated_at`` moves only when something really changed and a re-run is a
  no-op.
* ``merge_history`` (``feature_store/item_visual``) keeps every value an
  entity ever had, each row valid over ``[valid_from, valid_to)`` (``valid_to``
  null = the current row; type-2 slowly changing dimension). A changed value
  closes the current row and inserts the new one in the same Delta commit,
  with ``valid_to`` of the old row equal to ``valid_from`` of the new one, so
  the intervals of one key never overlap and never leave a gap. Point-in-time
  retrieval (``courier_spark.serving.retrieval``) reads these intervals, not Delta
  time travel, whose old versions ``VACUUM`` deletes. The table has Delta's
  change data feed on: the online store copies only changed rows.

Every write is one Delta commit; the table is created on first write with a
comment on every column.
"""
from __future__ import annotations

import datetime as dt
import random
import re
import time
from typing import Callable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core.errors import ConcurrentWriteError, DataError, FeatureTableSchemaError, FeatureVersionError
from courier_spark.core.catalog import MERGE_HISTORY, MERGE_UPSERT, check_write
from courier_spark.core.logs import say
from courier_spark.core import fs
from courier_spark.core.tables import invalidate_table_cache, table_exists

UPDATED_AT = "updated_at"
VALID_FROM, VALID_TO = "valid_from", "valid_to"
# Lineage: which encoder and which k-means run made a feature row (never null).
LINEAGE_COLUMNS = ("model_version", "centroid_version")

ITEM_VISUAL_KEYS = ["item_id"]
ITEM_VISUAL_COMMENTS = {
    "item_id": "Item key (silver/items.item_id).",
    "courier_cluster_id": "Nearest COURIER centroid of the item's embedding (ID feature); "
                          "cluster ids are only comparable within one centroid_version.",
    "distance": "Squared Euclidean distance of the L2-normalised embedding to that centroid (= 2 - 2 cos).",
    "model_version": "Encoder that made the embedding (<method>/<vNNNN>, gold/item_embeddings).",
    "centroid_version": "k-means run that made the centroids (gold/centroids).",
    "item_updated_at": "silver/items.updated_at of the item version whose image was embedded (null if unknown).",
    VALID_FROM: "When the write that made this row started (UTC); its commit, seconds later, made it readable.",
    VALID_TO: "When a newer row replaced it (UTC, exclusive); null = the current row.",
}

IMPRESSION_VISUAL_KEYS = ["event_id"]
IMPRESSION_VISUAL_COMMENTS = {
    "event_id": "Impression key (silver/ctr_samples.event_id).",
    "sim_scores": "SimScore: cos(target item, k-th latest history click), slot 0 = most recent click; "
                  "null when the slot has no click or an item has no embedding.",
    "hist_cluster_ids": "COURIER cluster ids of the same history clicks, same slot order; null when missing.",
    "target_cluster_id": "COURIER cluster id of the impressed item (null without an embedding).",
    "model_version": "Encoder that made the embeddings (<method>/<vNNNN>).",
    "centroid_version": "k-means run the cluster ids refer to.",
    UPDATED_AT: "When these values last changed (UTC); unchanged on a re-run with the same values.",
}


def quote_identifier(name: str) -> str:
    """A Spark SQL identifier in backticks (backticks inside doubled)."""
    return "`" + name.replace("`", "``") + "`"


def delta_table_identifier(path: str) -> str:
    """The Delta table at ``path`` as a Spark SQL table name (``delta.`path```)."""
    return "delta." + quote_identifier(path)


def _create_table(spark: SparkSession, path: str, schema: T.StructType, keys: Sequence[str],
                  comments: Mapping[str, str], properties: Mapping[str, str] | None = None) -> None:
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(path)
    for k, v in (properties or {}).items():
        builder = builder.property(k, v)
    for f in schema.fields:
        # Keys NOT NULL; values nullable whatever the first batch looked like
        # (a later batch may carry nulls, e.g. an item without an embedding).
        builder = builder.addColumn(f.name, f.dataType, nullable=f.name not in keys,
                                    comment=comments.get(f.name))
    try:
        builder.execute()
    except Exception as e:  # noqa: BLE001 - re-raised unless another writer made the table
        # Two first writes at once: the loser's CREATE can see the winner's
        # half-made log (DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION) or a
        # cached "no table" (DELTA_TABLE_NOT_FOUND) instead of a commit
        # conflict. Either way the table is someone else's now: retry the write.
        race = _CREATE_RACE.search(str(e)[:2000])
        if not race or not fs.exists(path.rstrip("/") + "/_delta_log"):
            raise
        invalidate_table_cache(spark, path)
        raise TableCreationRace(f"table created concurrently: {race.group(1)}") from e


class TableCreationRace(Exception):
    """Another writer created the table while this one was creating it (retried)."""


_CREATE_RACE = re.compile(r"(DELTA_TABLE_NOT_FOUND|DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION)")


def column_comments(spark: SparkSession, path: str) -> dict[str, str]:
    """Column -> comment of a Delta table (from its schema metadata)."""
    schema = spark.read.format("delta").load(path).schema
    return {f.name: f.metadata["comment"] for f in schema.fields if "comment" in (f.metadata or {})}


def _checked_input(df: DataFrame, path: str, keys: list[str], lineage: Sequence[str], check_unique: bool
                   ) -> DataFrame:
    """The checks every feature write makes before touching the table: key
    columns present, lineage never null, keys unique (MERGE would otherwise
    insert both rows of a duplicated new key). Returns ``df`` without any
    write-time column the caller passed through."""
    if not keys:
        raise ValueError("a feature-table write needs at least one key column")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise DataError(f"write into {path}: key column(s) {missing} not in the input ({', '.join(df.columns)})")
    df = df.drop(*[c for c in (UPDATED_AT, VALID_FROM, VALID_TO) if c in df.columns])
    lineage = [c for c in lineage if c in df.columns]
    if lineage:
        # Every feature row must name the model and centroid versions that made
        # it; a row that cannot say where it came from is refused, not stored.
        nulls = df.agg(*[F.sum(F.col(c).isNull().cast("int")).alias(c) for c in lineage]).first()
        bad = {c: int(nulls[c]) for c in lineage if nulls[c]}
        if bad:
            raise DataError(f"write into {path}: {', '.join(f'{n} row(s) with null {c}' for c, n in bad.items())}; "
                             f"every feature row must name the versions that made it")
    if check_unique:
        dup = df.groupBy(*keys).count().filter("count > 1").limit(3).collect()
        if dup:
            raise DataError(f"write into {path}: the input repeats key(s) "
                             f"{[tuple(r[k] for k in keys) for r in dup]}; keys {keys} must be unique")
    return df


def merge_upsert(spark: SparkSession, df: DataFrame, path: str, keys: Sequence[str],
                 comments: Mapping[str, str] | None = None, *, check_unique: bool = True,
                 max_attempts: int = 5, lineage: Sequence[str] = LINEAGE_COLUMNS) -> dict:
    """Upsert ``df`` into the Delta table at ``path`` keyed by ``keys``.

    ``df`` holds the keys and value columns (``model_version`` and
    ``centroid_version`` included); ``updated_at`` is added here. Returns
    ``{"version", "inserted", "updated", "unchanged_or_untouched", "source_rows"}``
    from Delta's own operation metrics, plus ``retries``.

    Safe with concurrent writers: a MERGE (or the first write's table
    creation) that loses Delta's optimistic-concurrency race is re-run against
    the new snapshot, up to ``max_attempts`` times, with a log line each time;
    keys stay unique because every attempt re-matches against committed rows.
    """
    from delta.tables import DeltaTable
    check_write(path, MERGE_UPSERT)

    keys = list(keys)
    df = _checked_input(df, path, keys, lineage, check_unique)
    values = [c for c in df.columns if c not in keys]
    src = df.withColumn(UPDATED_AT, F.current_timestamp())
    on = " AND ".join(f"t.{quote_identifier(k)} = s.{quote_identifier(k)}" for k in keys)
    changed = " OR ".join(f"NOT (t.{quote_identifier(c)} <=> s.{quote_identifier(c)})" for c in values) or "false"

    def attempt() -> dict:
        if not table_exists(spark, path):
            _create_table(spark, path, src.schema, keys, comments or {})
        target = DeltaTable.forPath(spark, path)
        have = target.toDF().columns
        if sorted(have) != sorted(src.columns):
            raise DataError(f"merge_upsert into {path}: input columns {sorted(src.columns)} differ from "
                             f"the table's {sorted(have)}")
        before = int(target.history(1).select("version").collect()[0][0])
        res = (target.alias("t").merge(src.alias("s"), on)
               .whenMatchedUpdate(condition=changed, set={c: f"s.{quote_identifier(c)}" for c in values + [UPDATED_AT]})
               .whenNotMatchedInsert(values={c: f"s.{quote_identifier(c)}" for c in src.columns})
               .execute())
        last = target.history(1).collect()[0]
        if int(last["version"]) == before:  # nothing to merge (empty source): Delta made no commit
            return {"version": before, "source_rows": 0, "inserted": 0, "updated": 0,
                    "unchanged_or_untouched": 0}
        if int(last["version"]) == before + 1:
            # Exactly one commit since we read the table, and ours succeeded: it is ours.
            m = last["operationMetrics"] or {}
            return {"version": int(last["version"]),
                    "source_rows": int(m.get("numSourceRows", 0)),
                    "inserted": int(m.get("numTargetRowsInserted", 0)),
                    "updated": int(m.get("numTargetRowsUpdated", 0)),
                    "unchanged_or_untouched": int(m.get("numTargetRowsCopied", 0))}
        # Another writer committed around ours: the newest commit may be theirs,
        # so the counts come from MERGE's own result row instead.
        own = res.first() if res is not None and res.columns else None
        return {"version": int(last["version"]), "source_rows": None,
                "inserted": int(own["num_inserted_rows"]) if own else None,
                "updated": int(own["num_updated_rows"]) if own else None,
                "unchanged_or_untouched": None}

    out, retries = _with_commit_retries(attempt, path, max_attempts)
    out["retries"] = retries
    return out


def merge_history(spark: SparkSession, df: DataFrame, path: str, keys: Sequence[str],
                  comments: Mapping[str, str] | None = None, *, as_of: dt.datetime | None = None,
                  check_unique: bool = True, max_attempts: int = 5,
                  lineage: Sequence[str] = LINEAGE_COLUMNS) -> dict:
    """Validity-interval upsert of ``df`` (keys + values) into ``path``.

    For each key: no current row -> insert one valid from ``as_of`` (default:
    now, UTC); a current row with the same values -> nothing; a current row
    with other values -> close it at ``as_of`` and insert the new values valid
    from ``as_of``. One Delta commit (a MERGE whose source holds each changed
    key twice: once to match and close, once with null merge keys to insert),
    so a reader never sees a key with two current rows or none in between.
    Returns ``{"version", "source_rows", "inserted", "closed", "new_keys",
    "unchanged", "retries"}``; a re-run with the same values commits nothing.
    """
    from delta.tables import DeltaTable
    check_write(path, MERGE_HISTORY)

    keys = list(keys)
    df = _checked_input(df, path, keys, lineage, check_unique)
    values = [c for c in df.columns if c not in keys]
    as_of = as_of or dt.datetime.now(dt.timezone.utc)
    src = (df.withColumn(VALID_FROM, F.lit(as_of).cast("timestamp"))
           .withColumn(VALID_TO, F.lit(None).cast("timestamp")))
    mk = {k: f"_mk_{i}" for i, k in enumerate(keys)}
    differs = " OR ".join(f"NOT (t.{quote_identifier(c)} <=> s.{quote_identifier(c)})" for c in values) or "false"

    def attempt() -> dict:
        if not table_exists(spark, path):
            _create_table(spark, path, src.schema, keys, comments or {},
                          {"delta.enableChangeDataFeed": "true"})
        target = DeltaTable.forPath(spark, path)
        have = target.toDF().columns
        if VALID_FROM not in have and _upgradable(have, src.columns):
            _add_validity_intervals(spark, path, comments or {})
            target = DeltaTable.forPath(spark, path)
            have = target.toDF().columns
        if sorted(have) != sorted(src.columns):
            hint = (" (it has no validity intervals: written by an older release; delete it and re-run "
                    "`courier features --set features.incremental=false`)" if VALID_FROM not in have else "")
            raise FeatureTableSchemaError(f"feature table {path}: columns {sorted(have)} differ from this "
                                          f"write's {sorted(src.columns)}{hint}")
        current = target.toDF().filter(F.col(VALID_TO).isNull())
        match = [F.col(f"s.{quote_identifier(k)}") == F.col(f"t.{quote_identifier(k)}") for k in keys]
        # One pass over source x current rows: the counts, and the newest
        # valid_from of the keys written (as_of must come after it, or their
        # intervals would overlap).
        st = (src.alias("s").join(current.alias("t"), match, "left")
              .agg(F.count("*").alias("n"),
                   F.sum(F.col(f"t.{quote_identifier(keys[0])}").isNull().cast("int")).alias("new"),
                   F.sum((F.col(f"t.{quote_identifier(keys[0])}").isNotNull() & F.expr(differs)).cast("int")).alias("changed"),
                   F.max(f"t.{VALID_FROM}").alias("last"))
              .first())
        n_src, n_new, n_changed, last = int(st["n"]), int(st["new"] or 0), int(st["changed"] or 0), st["last"]
        if last is not None and last.replace(tzinfo=None) >= as_of.astimezone(dt.timezone.utc).replace(tzinfo=None):
            raise DataError(f"merge_history into {path}: as_of {as_of.isoformat()} is not after the newest "
                             f"valid_from {last.isoformat()} (clock moved back?); intervals must not overlap")
        changed = src.alias("s").join(current.alias("t"), match).where(F.expr(differs)).select("s.*")
        key_types = {f.name: f.dataType for f in src.schema.fields}
        staged = (src.select(*[F.col(k).alias(mk[k]) for k in keys], "*")
                  .unionByName(changed.select(*[F.lit(None).cast(key_types[k]).alias(mk[k]) for k in keys], "*")))
        on = " AND ".join(f"t.{quote_identifier(k)} = s.{mk[k]}" for k in keys) + f" AND t.{VALID_TO} IS NULL"
        before = int(target.history(1).select("version").collect()[0][0])
        if n_new == 0 and n_changed == 0:  # nothing to write: no commit at all (the online copy sees no change)
            return {"version": before, "source_rows": n_src, "inserted": 0, "closed": 0, "new_keys": 0,
                    "unchanged": n_src}
        (target.alias("t").merge(staged.alias("s"), on)
         .whenMatchedUpdate(condition=differs, set={VALID_TO: f"s.{VALID_FROM}"})
         .whenNotMatchedInsert(values={c: f"s.{quote_identifier(c)}" for c in src.columns})
         .execute())
        return {"version": int(target.history(1).collect()[0]["version"]), "source_rows": n_src,
                "inserted": n_new + n_changed, "closed": n_changed, "new_keys": n_new,
                "unchanged": n_src - n_new - n_changed}

    out, retries = _with_commit_retries(attempt, path, max_attempts)
    out["retries"] = retries
    return out


def _upgradable(have: Sequence[str], want: Sequence[str]) -> bool:
    """An older release's one-row-per-key table (``updated_at``, no intervals)
    that holds every value column this write has, except possibly the newer
    ``item_updated_at``."""
    missing = set(want) - set(have) - {VALID_FROM, VALID_TO, "item_updated_at"}
    return UPDATED_AT in have and not missing and set(have) - {UPDATED_AT} <= set(want)


def _add_validity_intervals(spark: SparkSession, path: str, comments: Mapping[str, str]) -> None:
    """Upgrade a table in place, in one commit: each row becomes the current
    row, valid from its ``updated_at`` (when its values last changed), and the
    change data feed is switched on. Rows, keys and values are unchanged."""
    old = spark.read.format("delta").load(path)
    new = old.withColumn(VALID_FROM, F.col(UPDATED_AT)).withColumn(VALID_TO, F.lit(None).cast("timestamp"))
    if "item_updated_at" not in old.columns:
        new = new.withColumn("item_updated_at", F.lit(None).cast("timestamp"))
    new = new.drop(UPDATED_AT).localCheckpoint()  # read fully before the same table is overwritten
    n = new.count()
    (new.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path))
    table = delta_table_identifier(path)
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    for c, text in comments.items():
        if c in new.columns:
            spark.sql(f"ALTER TABLE {table} ALTER COLUMN {quote_identifier(c)} COMMENT '{text.replace(chr(39), chr(92) + chr(39))}'")
    say("merge", f"{path}: upgraded {n} row(s) to validity intervals (valid_from = their updated_at)")


def current_rows(df: DataFrame) -> DataFrame:
    """The rows serving now (``valid_to`` null) of a validity-interval table."""
    return df.filter(F.col(VALID_TO).isNull())


# Delta's optimistic concurrency: a commit that lost the race against another
# writer fails with one of these (nothing of it was committed, so running the
# whole operation again against the new snapshot is safe).
_CONFLICT = re.compile(r"(Concurrent\w*Exception|MetadataChangedException|ProtocolChangedException|"
                       r"DELTA_CONCURRENT_\w+|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED|"
                       r"DELTA_TABLE_ALREADY_EXISTS)")


def _conflict_kind(exc: BaseException) -> str | None:
    """What kind of lost optimistic-concurrency race ``exc`` reports (None: not one)."""
    if isinstance(exc, TableCreationRace):
        return str(exc)
    m = _CONFLICT.search(f"{type(exc).__name__}: {exc}"[:4000])
    return m.group(1) if m else None


def _with_commit_retries(fn: Callable[[], dict], path: str, max_attempts: int) -> tuple[dict, int]:
    for attempt in range(1, max_attempts + 1):
        try:
            return fn(), attempt - 1
        except Exception as e:  # noqa: BLE001 - only Delta commit conflicts are retried
            kind = _conflict_kind(e)
            if kind is None:
                raise
            if attempt == max_attempts:
                raise ConcurrentWriteError(
                    f"MERGE into {path} lost {max_attempts} times in a row to concurrent writers "
                    f"({kind}); nothing of this write was committed") from e
            # Jittered backoff so two writers that collided do not collide again in lockstep.
            wait = min(5.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())
            say("merge", f"concurrent commit on {path} ({kind}); retrying MERGE "
                         f"(attempt {attempt + 1}/{max_attempts}) in {wait:.2f}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def feature_versions(spark: SparkSession, path: str) -> list[dict]:
    """The table's commits, oldest first: version, timestamp, operation."""
    from delta.tables import DeltaTable

    if not table_exists(spark, path):
        raise FeatureVersionError(f"no feature table at {path}; run `courier features` first")
    rows = DeltaTable.forPath(spark, path).history().select("version", "timestamp", "operation").collect()
    return sorted(({"version": int(r["version"]), "timestamp": r["timestamp"], "operation": r["operation"]}
                   for r in rows), key=lambda d: d["version"])


def read_features(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The feature table now, or as of Delta ``version`` (time travel)."""
    if not table_exists(spark, path):
        raise FeatureVersionError(f"no feature table at {path}; run `courier features` first")
    reader = spark.read.format("delta")
    if version is None:
        return reader.load(path)
    have = [v["version"] for v in feature_versions(spark, path)]
    if int(version) not in have:
        raise FeatureVersionError(
            f"feature table {path} has no version {version}; available versions: "
            f"{have[0]}..{have[-1]}" if have else f"feature table {path} has no versions")
    try:
        df = reader.option("versionAsOf", int(version)).load(path)
        df.schema  # noqa: B018 - resolve now so a vacuumed/cleaned-up version fails here
        return df
    except Exception as e:  # noqa: BLE001 - re-raised with the table and version named
        raise FeatureVersionError(f"feature table {path}: version {version} cannot be read "
                                  f"(log or files cleaned up?): {e}") from e


def join_visual_features(samples: DataFrame, item_visual: DataFrame, impression_visual: DataFrame) -> DataFrame:
    """Attach both feature tables to CTR samples by key (left joins: a sample
    without features keeps nulls; the caller zero-fills per its policy)."""
    iv = item_visual.select("item_id", "courier_cluster_id", "distance")
    ev = impression_visual.select("event_id", "sim_scores", "hist_cluster_ids")
    return samples.join(iv, "item_id", "left").join(ev, "event_id", "left")

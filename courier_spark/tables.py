"""Reading and writing Delta tables with clear errors."""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame, SparkSession

from .errors import CourierError


class MissingTableError(CourierError, RuntimeError):
    """A table the stage needs does not exist; the message says which stage makes it."""


class TableVersionError(CourierError, LookupError):
    """A requested Delta version of a table does not exist (message lists the range that does)."""


def table_exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable
    try:
        if DeltaTable.isDeltaTable(spark, path):
            return True
        # Delta caches a table's log per session: asked while another process
        # was creating the table (its _delta_log there, no commit yet), it keeps
        # answering "no table". Drop that cached log and ask again.
        from . import fs
        if not fs.exists(path.rstrip("/") + "/_delta_log"):
            return False
        invalidate_table_cache(spark, path)
        return DeltaTable.isDeltaTable(spark, path)
    except Exception:  # noqa: BLE001 - a missing parent dir is simply "no table"
        return False


def invalidate_table_cache(spark: SparkSession, path: str) -> None:
    """Forget this session's cached Delta log of ``path`` (written by another process)."""
    jvm = spark.sparkContext._jvm
    jvm.org.apache.spark.sql.delta.DeltaLog.invalidateCache(spark._jsparkSession, jvm.org.apache.hadoop.fs.Path(path))


def read_table(spark: SparkSession, path: str, made_by: str | None = None,
               version: int | None = None) -> DataFrame:
    if not table_exists(spark, path):
        hint = f"; run `courier {made_by}` first" if made_by else ""
        raise MissingTableError(f"no Delta table at {path}{hint}")
    reader = spark.read.format("delta")
    if version is not None:
        # Checked here so the caller gets the table and the valid range, not a
        # Delta stack trace from the first action.
        lo, hi = version_range(spark, path)
        if not lo <= int(version) <= hi:
            raise TableVersionError(f"{path} has no version {version}; available versions: {lo}..{hi}")
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def version_range(spark: SparkSession, path: str) -> tuple[int, int]:
    """(oldest, newest) version still in the table's history."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F
    r = DeltaTable.forPath(spark, path).history().agg(F.min("version"), F.max("version")).first()
    return int(r[0]), int(r[1])


def write_table(df: DataFrame, path: str, partition_by: Sequence[str] = (),
                mode: str = "overwrite") -> int:
    """Write ``df`` as a Delta table (atomic overwrite by default: re-running a
    job replaces the table in one commit, never appends duplicates).
    Returns the new table version."""
    w = df.write.format("delta").mode(mode)
    if mode == "overwrite":
        w = w.option("overwriteSchema", "true")
    if partition_by:
        w = w.partitionBy(*partition_by)
    w.save(path)
    return table_version(df.sparkSession, path)


def table_version(spark: SparkSession, path: str) -> int:
    from delta.tables import DeltaTable
    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


def plain_parquet_files(spark: SparkSession, path: str, where: str | None = None) -> list[str] | None:
    """The data files of the Delta table at ``path`` (current snapshot, only
    the partitions matching ``where``, a predicate on partition columns), for
    readers that bypass Spark's scan. None when its files are not plain
    Parquet holding exactly the table's rows: the table uses deletion vectors
    (a file keeps deleted rows) or column mapping (physical column names)."""
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    features = set(detail["tableFeatures"] or []) if "tableFeatures" in detail.asDict() else set()
    props = detail["properties"] or {}
    if ({"deletionVectors", "columnMapping"} & features
            or str(props.get("delta.enableDeletionVectors", "false")).lower() == "true"
            or props.get("delta.columnMapping.mode", "none") != "none"):
        return None
    df = spark.read.format("delta").load(path)
    if where:
        df = df.where(where)
    # Delta prunes the snapshot's files by partition before the scan is
    # planned, so these are the matching partitions' files only.
    return sorted(df.inputFiles())

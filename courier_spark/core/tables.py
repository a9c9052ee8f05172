"""Reading and writing Delta tables with clear errors."""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame, SparkSession

from courier_spark.core.catalog import OVERWRITE, REPLACE_VERSION, check_write, spec_for_path
from courier_spark.core.errors import MissingTableError, TableVersionError


def table_exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable
    try:
        if DeltaTable.isDeltaTable(spark, path):
            return True
        # Delta caches a table's log per session: asked while another process
        # was creating the table (its _delta_log there, no commit yet), it keeps
        # answering "no table". Drop that cached log and ask again.
        from courier_spark.core import fs
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


def missing_table(path: str, made_by: str | None = None) -> MissingTableError:
    """The error for a missing table, naming the stage that makes it (from
    the catalog, or ``made_by`` for a table outside it); also raised by the
    checks before Spark starts (``stages.preflight``)."""
    entry = spec_for_path(path)
    made_by = made_by or (entry.made_by if entry else None)
    hint = f"; run `courier {made_by}` first" if made_by else ""
    return MissingTableError(f"no Delta table at {path}{hint}")


def read_table(spark: SparkSession, path: str, made_by: str | None = None,
               version: int | None = None) -> DataFrame:
    """The Delta table at ``path`` (at ``version``); a missing table is a
    ``MissingTableError`` naming the stage that makes it (from the catalog,
    or ``made_by`` for a table outside it)."""
    if not table_exists(spark, path):
        raise missing_table(path, made_by)
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
    check_write(path, OVERWRITE if mode == "overwrite" else mode)
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


def _sql_str(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_rows(df: DataFrame, path: str, column: str, value: str) -> int:
    """Atomically replace the rows with ``column = value`` (creating the
    table partitioned by ``column`` on first write). Returns the table version."""
    check_write(path, REPLACE_VERSION)
    spark = df.sparkSession
    w = df.write.format("delta")
    if table_exists(spark, path):
        # Delta checks that every written row satisfies the predicate.
        w.mode("overwrite").option("replaceWhere", f"{column} = {_sql_str(value)}").save(path)
    else:
        w.mode("overwrite").partitionBy(column).save(path)
    return table_version(spark, path)

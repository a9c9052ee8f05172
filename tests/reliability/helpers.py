"""Small builders shared by the reliability tests (tiny, hand-made bronze data)."""
from __future__ import annotations

import datetime as dt
import io
import json
import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from courier_spark.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA
from courier_spark.paths import TablePaths

T0 = dt.datetime(2026, 3, 2, 12, 0)


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def nullable(schema: T.StructType) -> T.StructType:
    """The contract schema with every column nullable (bad input may break NOT NULL)."""
    return T.StructType([T.StructField(f.name, f.dataType, True) for f in schema.fields])


def items_df(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, nullable(ITEMS_SCHEMA))


def impressions_df(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, nullable(IMPRESSIONS_SCHEMA))


def write_bronze(paths: TablePaths, items: DataFrame, impressions: DataFrame) -> None:
    items.write.format("delta").mode("overwrite").save(paths.bronze_items)
    impressions.write.format("delta").mode("overwrite").save(paths.bronze_impressions)


def run_summary(paths: TablePaths, stage: str) -> dict:
    with open(os.path.join(paths.run_summaries, f"{stage}.json")) as fh:
        return json.load(fh)


def delta_version(path: str) -> int:
    """Latest committed version, read from the log files themselves (no Spark)."""
    log = os.path.join(path, "_delta_log")
    if not os.path.isdir(log):
        return -1
    return max((int(f[:20]) for f in os.listdir(log) if f.endswith(".json") and f[:20].isdigit()), default=-1)

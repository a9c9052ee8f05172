"""The raw (bronze) input contract: schemas and the schema check.

See shared docs ``data-contract.md``. Extra columns are allowed (sources may
add optional columns); a missing or retyped contract column stops the job.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from courier_spark.core.errors import ContractError

ITEMS_SCHEMA = T.StructType([
    T.StructField("item_id", T.LongType(), False),
    T.StructField("category", T.StringType(), False),
    T.StructField("title", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("image", T.BinaryType(), True),
    T.StructField("updated_at", T.TimestampType(), False),
])

IMPRESSIONS_SCHEMA = T.StructType([
    T.StructField("event_id", T.StringType(), False),
    T.StructField("request_id", T.StringType(), False),
    T.StructField("user_id", T.LongType(), False),
    T.StructField("query", T.StringType(), True),
    T.StructField("item_id", T.LongType(), False),
    T.StructField("position", T.IntegerType(), True),
    T.StructField("event_ts", T.TimestampType(), False),
    T.StructField("clicked", T.BooleanType(), False),
])

ITEM_KEYS = [f.name for f in ITEMS_SCHEMA.fields if not f.nullable]
IMPRESSION_KEYS = [f.name for f in IMPRESSIONS_SCHEMA.fields if not f.nullable]


def check_schema(df: DataFrame, expected: T.StructType, table: str) -> None:
    """Raise ContractError naming the first missing or retyped column."""
    actual = {f.name: f.dataType for f in df.schema.fields}
    for f in expected.fields:
        if f.name not in actual:
            raise ContractError(
                f"{table}: missing column '{f.name}' (expected {f.dataType.simpleString()}); "
                f"found columns: {', '.join(actual) or 'none'}")
        if actual[f.name] != f.dataType:
            raise ContractError(
                f"{table}: column '{f.name}' has type {actual[f.name].simpleString()}, "
                f"contract says {f.dataType.simpleString()}")


def conform(df: DataFrame, expected: T.StructType) -> DataFrame:
    """Contract columns first, in contract order, then any extra columns."""
    names = [f.name for f in expected.fields]
    return df.select(*names, *[c for c in df.columns if c not in names])

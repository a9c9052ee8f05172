"""Turn a generated marketplace (pandas) into contract-typed Spark frames."""
from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from courier_spark.data.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA


def _to_spark(spark: SparkSession, pdf: pd.DataFrame, schema=None) -> DataFrame:
    if schema is None:
        return spark.createDataFrame(pdf)
    # Contract schemas declare keys non-nullable, but bad-row injection puts
    # nulls there on purpose: load as nullable, validation judges them.
    nullable = schema.__class__([f.__class__(f.name, f.dataType, True) for f in schema.fields])
    return spark.createDataFrame(pdf[[f.name for f in schema.fields]], nullable)


def marketplace_to_spark(spark: SparkSession, market) -> dict[str, DataFrame]:
    n_parts = max(2, spark.sparkContext.defaultParallelism)
    return {
        "items": _to_spark(spark, market.items, ITEMS_SCHEMA).repartition(n_parts),
        "impressions": _to_spark(spark, market.impressions, IMPRESSIONS_SCHEMA),
        "item_factors": _to_spark(spark, market.item_factors),
        "user_tastes": _to_spark(spark, market.user_tastes),
    }

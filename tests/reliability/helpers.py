"""Small builders shared by the reliability tests (tiny, hand-made bronze data)."""
from __future__ import annotations

import datetime as dt
import json
import os

from pyspark.sql import DataFrame, SparkSession

from courier_spark.data.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA
from courier_spark.core.paths import TablePaths

from ..worlds import nullable, png


T0 = dt.datetime(2026, 3, 2, 12, 0)
DAY = dt.timedelta(days=1)


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


GOOD = png()


def rows_of(df: DataFrame) -> list[tuple]:
    """All rows, in a stable order (None-safe)."""
    return sorted(map(tuple, df.collect()), key=repr)


def bad_bronze(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """Four days of clean traffic for 3 users plus one row per bad-input case."""
    items = [(i, "shoes" if i % 2 else "bags", f"t{i}", 10.0 + i, png((i * 40 % 255, 90, 150)), T0)
             for i in range(1, 9)]
    items += [
        (20, "bags", "corrupt", 1.0, b"\x89PNG\r\n\x1a\n garbage", T0),   # corrupt image
        (21, "bags", "truncated", 1.0, GOOD[:30], T0),                     # truncated PNG
        (22, "bags", "empty", 1.0, b"", T0),                               # zero-byte image
        (23, "bags", "no image", 1.0, None, T0),                           # missing image (allowed)
        (None, "bags", "null key", 1.0, GOOD, T0),                         # null item_id
        (24, None, "null category", 1.0, GOOD, T0),                        # null category
        (25, "bags", "null ts", 1.0, GOOD, None),                          # null updated_at
        (26, "bags", "negative price", -3.0, GOOD, T0),                    # negative price
        (1, "shoes", "older copy", 9.0, GOOD, T0 - DAY),                   # duplicate item_id
    ]
    imps, n = [], 0
    for day in range(4):
        for user in (1, 2, 3):
            req = f"r{day}-{user}"
            for pos, item in enumerate((1 + (user + day) % 8, 1 + (user + day + 3) % 8, 20, 23)):
                n += 1
                imps.append((f"e{n}", req, user, None, item, pos,
                             T0 + day * DAY + dt.timedelta(minutes=user), pos == 0))
    late_ts = T0 + dt.timedelta(minutes=1)
    future = dt.datetime.now() + dt.timedelta(days=400)
    imps += [
        ("e1", "r0-1", 1, None, imps[0][4], 0, T0 + dt.timedelta(minutes=1), True),   # identical re-delivery
        ("e2", "r0-1", 1, None, imps[1][4], 1, T0 + dt.timedelta(hours=5), False),   # re-delivered later
        ("late1", "r-late", 2, "q", 3, 0, late_ts - 2 * DAY, True),                  # late, out of order
        ("fut", "r-fut", 2, None, 2, 0, future, True),                               # far-future ts
        (None, "r9", 3, None, 1, 0, T0, False),                                      # null event_id
        ("nr", None, 3, None, 1, 0, T0, False),                                      # null request_id
        ("nu", "r9", None, None, 1, 0, T0, False),                                   # null user_id
        ("ni", "r9", 3, None, None, 0, T0, False),                                   # null item_id
        ("nt", "r9", 3, None, 1, 0, None, False),                                    # null event_ts
        ("nc", "r9", 3, None, 1, 0, T0, None),                                       # null clicked
        ("unk", "r9", 3, None, 999, 1, T0, True),                                    # unknown item
        ("qitem", "r9", 3, None, 26, 2, T0, True),                                   # item was quarantined
        ("neg", "r9", 3, None, 1, -1, T0, True),                                     # negative position
    ]
    return items_df(spark, items), impressions_df(spark, imps)


EXPECTED_ITEM_REASONS = {"null_item_id": 1, "null_category": 1, "null_updated_at": 1, "negative_price": 1,
                         "duplicate_item_id": 1, "undecodable_image": 2, "empty_image": 1}
EXPECTED_IMP_REASONS = {"duplicate_event_id": 2, "future_timestamp": 1, "null_event_id": 1,
                        "null_request_id": 1, "null_user_id": 1, "null_item_id": 1, "null_event_ts": 1,
                        "null_clicked": 1, "unknown_item": 2, "negative_position": 1}

"""Validation and quarantine on a real local Spark + Delta."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from courier_spark.core.schema import ValidateConfig
from courier_spark.data.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA
from courier_spark.core.errors import ContractError
from courier_spark.data.validate import validate_bronze, validate_impressions, validate_items

from .worlds import nullable, png

T0 = dt.datetime(2026, 9, 1)


@pytest.fixture(scope="module")
def bronze(spark):
    good = png((255, 0, 0))
    items = [
        (1, "shoes", "t", 10.0, good, T0),
        (2, "shoes", None, None, None, T0),            # missing image: clean, image_status missing
        (3, "bags", "t", 5.0, b"\x89PNG\r\n\x1a\nbroken", T0),  # undecodable: clean + quarantine copy
        (4, "bags", "t", 5.0, good[:40], T0),         # truncated PNG
        (None, "bags", "t", 5.0, good, T0),           # null key
        (5, None, "t", 5.0, good, T0),                # null category
        (6, "bags", "t", -1.0, good, T0),             # negative price
        (7, "bags", "old", 1.0, good, T0),            # duplicate item_id: older copy quarantined
        (7, "bags", "new", 1.0, good, T0 + dt.timedelta(days=1)),
    ]
    imps = [
        ("e1", "r1", 10, None, 1, 0, T0, True),
        ("e2", "r1", 10, None, 2, 1, T0, False),
        ("e3", "r1", 10, None, 3, 2, T0, False),
        ("e3", "r1", 10, None, 3, 2, T0, False),        # re-delivered duplicate
        ("e4", "r2", 11, "q", 99, 0, T0, False),         # unknown item
        ("e5", "r2", 11, "q", 5, 1, T0, False),          # item quarantined -> unknown
        (None, "r2", 11, "q", 1, 2, T0, False),          # null event_id
        ("e7", None, 11, "q", 1, 3, T0, False),          # null request_id
        ("e8", "r3", None, "q", 1, 0, T0, True),         # null user_id
        ("e9", "r3", 12, "q", None, 1, T0, True),        # null item_id
        ("e10", "r3", 12, "q", 1, 2, None, True),        # unparseable/null ts
        ("e11", "r3", 12, "q", 1, 3, T0, None),          # null clicked
        ("e12", "r4", 12, "q", 1, 0, dt.datetime(2099, 1, 1), True),  # far future
        ("e13", "r4", 12, "q", 7, 1, T0, True),
    ]
    return (spark.createDataFrame(items, nullable(ITEMS_SCHEMA)),
            spark.createDataFrame(imps, nullable(IMPRESSIONS_SCHEMA)))


def test_items_quarantine_reasons_and_images(bronze):
    items, _ = bronze
    clean, q = validate_items(items, ValidateConfig())
    c = {r.item_id: r for r in clean.collect()}
    assert sorted(c) == [1, 2, 3, 4, 7]
    assert c[7].title == "new"
    assert (c[1].image_status, c[2].image_status, c[3].image_status, c[4].image_status) == (
        "ok", "missing", "undecodable", "undecodable")
    assert c[3].image is None and c[1].image is not None
    reasons = sorted((r.reason, r.row_dropped) for r in q.collect())
    assert reasons == sorted([("null_item_id", True), ("null_category", True), ("negative_price", True),
                              ("duplicate_item_id", True), ("undecodable_image", False),
                              ("undecodable_image", False)])
    # accounting: clean + dropped == input
    assert clean.count() + q.filter("row_dropped").count() == items.count()


def test_impressions_every_row_in_exactly_one_place(bronze):
    items, imps = bronze
    res = validate_bronze(items, imps, ValidateConfig())
    clean = res.clean_impressions.collect()
    q = res.quarantine_impressions.collect()
    assert len(clean) + len(q) == imps.count()
    assert sorted(r.event_id for r in clean) == ["e1", "e13", "e2", "e3"]
    by_reason = {}
    for r in q:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    assert by_reason == {"duplicate_event_id": 1, "unknown_item": 2, "null_event_id": 1,
                         "null_request_id": 1, "null_user_id": 1, "null_item_id": 1,
                         "null_event_ts": 1, "null_clicked": 1, "future_timestamp": 1}
    assert set(res.quarantine_impressions.columns) == set(IMPRESSIONS_SCHEMA.fieldNames()) | {"reason"}


def test_schema_break_names_the_column(spark, bronze):
    items, imps = bronze
    with pytest.raises(ContractError, match="missing column 'clicked'"):
        validate_impressions(imps.drop("clicked"), items, ValidateConfig())
    with pytest.raises(ContractError, match="column 'user_id' has type string"):
        validate_impressions(imps.withColumn("user_id", F.col("user_id").cast("string")),
                             items, ValidateConfig())
    with pytest.raises(ContractError, match="bronze/items: missing column 'category'"):
        validate_items(items.drop("category"), ValidateConfig())

"""Validation: split bronze into clean (silver) rows and quarantined rows.

Every input row ends in exactly one place: the clean table or quarantine
(with a ``reason``). The one exception is an item whose image is missing, empty or
undecodable: the item itself is still good (impressions reference it), so it
stays clean with ``image = null`` and ``image_status`` saying why; an empty
or undecodable image is *also* recorded in quarantine (reason
``empty_image`` / ``undecodable_image``) with ``row_dropped = false`` so the
bad bytes are kept for inspection.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core.schema import ValidateConfig
from courier_spark.data.contract import (IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, check_schema, conform)

IMAGE_OK, IMAGE_MISSING, IMAGE_UNDECODABLE = "ok", "missing", "undecodable"
# Zero bytes: the producer wrote a placeholder instead of the image. Kept
# apart from "undecodable" because the fix is upstream (an export bug), not
# in the file itself.
IMAGE_EMPTY = "empty"
# image_status -> quarantine reason for a clean item whose image is kept out.
BAD_IMAGE_REASONS = {IMAGE_UNDECODABLE: "undecodable_image", IMAGE_EMPTY: "empty_image"}


@F.pandas_udf(T.StringType())
def image_status_udf(images: pd.Series) -> pd.Series:
    """'ok' / 'missing' / 'empty' / 'undecodable' for encoded image bytes (full decode)."""
    from PIL import Image

    def status(b: bytes | None) -> str:
        if b is None:
            return IMAGE_MISSING
        if len(b) == 0:
            return IMAGE_EMPTY
        try:
            with Image.open(io.BytesIO(b)) as im:
                im.load()  # verify() alone misses truncated pixel data
            return IMAGE_OK
        except Exception:  # noqa: BLE001 - any decoder failure means bad bytes
            return IMAGE_UNDECODABLE
    return images.map(status)


@dataclass
class ValidationResult:
    clean_items: DataFrame
    clean_impressions: DataFrame
    quarantine_items: DataFrame
    quarantine_impressions: DataFrame


@dataclass
class ValidationSummary:
    items_in: int = 0
    items_clean: int = 0
    items_quarantined: int = 0
    impressions_in: int = 0
    impressions_clean: int = 0
    impressions_quarantined: int = 0
    item_reasons: dict = field(default_factory=dict)
    impression_reasons: dict = field(default_factory=dict)
    image_status: dict = field(default_factory=dict)

    def balanced(self) -> bool:
        return (self.items_in == self.items_clean + self.items_quarantined
                and self.impressions_in == self.impressions_clean + self.impressions_quarantined)

    def lines(self) -> list[str]:
        out = [f"items:       in={self.items_in} clean={self.items_clean} quarantined={self.items_quarantined}",
               f"impressions: in={self.impressions_in} clean={self.impressions_clean} "
               f"quarantined={self.impressions_quarantined}"]
        for name, reasons in (("items", self.item_reasons), ("impressions", self.impression_reasons)):
            for r, n in sorted(reasons.items()):
                out.append(f"  quarantine/{name:<11} {r:<24} {n}")
        for s, n in sorted(self.image_status.items()):
            out.append(f"  item images {s:<24} {n}")
        out.append("accounted: every input row is clean or quarantined" if self.balanced()
                   else "ERROR: row accounting does not balance")
        return out


def _first_reason(checks: list[tuple]) -> F.Column:
    """The first failing rule's name, or null when the row is clean."""
    expr = F.lit(None).cast("string")
    for cond, name in reversed(checks):
        expr = F.when(cond, F.lit(name)).otherwise(expr)
    return expr


def validate_items(items: DataFrame, cfg: ValidateConfig) -> tuple[DataFrame, DataFrame]:
    """-> (clean items with image_status, quarantined items with reason, row_dropped)."""
    check_schema(items, ITEMS_SCHEMA, "bronze/items")
    items = conform(items, ITEMS_SCHEMA)
    reason = _first_reason([
        (F.col("item_id").isNull(), "null_item_id"),
        (F.col("category").isNull(), "null_category"),
        (F.col("updated_at").isNull(), "null_updated_at"),
        (F.col("price") < 0, "negative_price"),
    ])
    df = items.withColumn("reason", reason)
    # Duplicate item_id: keep the latest version (an upsert-style export),
    # ties broken by content hash so the choice is deterministic.
    w = Window.partitionBy("item_id").orderBy(
        F.col("updated_at").desc(), F.xxhash64(*ITEMS_SCHEMA.fieldNames()))
    df = df.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (F.row_number().over(w) > 1), F.lit("duplicate_item_id"))
         .otherwise(F.col("reason")))
    if cfg.check_images:
        df = df.withColumn("image_status", image_status_udf(F.col("image")))
    else:
        df = df.withColumn("image_status",
                           F.when(F.col("image").isNull(), IMAGE_MISSING)
                            .when(F.length("image") == 0, IMAGE_EMPTY).otherwise(IMAGE_OK))
    df = df.cache()  # the image decode is the expensive part: run it once
    rejected = df.filter(F.col("reason").isNotNull()).withColumn("row_dropped", F.lit(True))
    bad_reason = F.lit(None).cast("string")
    for status, name in BAD_IMAGE_REASONS.items():
        bad_reason = F.when(F.col("image_status") == status, F.lit(name)).otherwise(bad_reason)
    # The bad bytes are kept for inspection; the item itself stays clean.
    bad_image = (df.filter(F.col("reason").isNull() & F.col("image_status").isin(*BAD_IMAGE_REASONS))
                 .withColumn("reason", bad_reason)
                 .withColumn("row_dropped", F.lit(False)))
    quarantine = rejected.unionByName(bad_image)
    clean = (df.filter(F.col("reason").isNull())
             .withColumn("image", F.when(F.col("image_status") == IMAGE_OK, F.col("image")))
             .drop("reason"))
    return clean, quarantine


def validate_impressions(impressions: DataFrame, clean_items: DataFrame,
                         cfg: ValidateConfig, now: F.Column | None = None
                         ) -> tuple[DataFrame, DataFrame]:
    """-> (clean impressions, quarantined impressions with reason)."""
    check_schema(impressions, IMPRESSIONS_SCHEMA, "bronze/impressions")
    impressions = conform(impressions, IMPRESSIONS_SCHEMA)
    now = now if now is not None else F.current_timestamp()
    horizon = now + F.expr(f"INTERVAL {int(cfg.max_future_skew_hours * 3600)} SECONDS")
    known = clean_items.select("item_id", F.lit(True).alias("_known")).distinct()
    df = impressions.join(known, "item_id", "left")
    checks = [(F.col(c).isNull(), f"null_{c}")
              for c in ("event_id", "request_id", "user_id", "item_id", "event_ts", "clicked")]
    checks += [
        (F.col("event_ts") > horizon, "future_timestamp"),
        (F.col("position") < 0, "negative_position"),
        (F.col("_known").isNull(), "unknown_item"),
    ]
    df = df.withColumn("reason", _first_reason(checks)).drop("_known")
    # Re-delivered events share event_id: keep the earliest delivery of each
    # (deterministic tie-break on the full row), quarantine the copies.
    w = Window.partitionBy("event_id").orderBy(
        F.col("event_ts"), F.xxhash64(*IMPRESSIONS_SCHEMA.fieldNames()))
    is_dup = F.col("reason").isNull() & (F.row_number().over(w) > 1)
    df = df.withColumn("reason", F.when(is_dup, F.lit("duplicate_event_id")).otherwise(F.col("reason")))
    df = conform(df, IMPRESSIONS_SCHEMA)
    clean = df.filter(F.col("reason").isNull()).drop("reason")
    quarantine = df.filter(F.col("reason").isNotNull())
    return clean, quarantine


def validate_bronze(items: DataFrame, impressions: DataFrame, cfg: ValidateConfig) -> ValidationResult:
    clean_items, q_items = validate_items(items, cfg)
    clean_imps, q_imps = validate_impressions(impressions, clean_items, cfg)
    return ValidationResult(clean_items, clean_imps, q_items, q_imps)


def _reason_counts(df: DataFrame) -> dict:
    return {r["reason"]: int(r["count"]) for r in df.groupBy("reason").count().collect()}


def summarize(bronze_items: DataFrame, bronze_impressions: DataFrame,
              clean_items: DataFrame, clean_impressions: DataFrame,
              q_items: DataFrame, q_impressions: DataFrame) -> ValidationSummary:
    """Counts from the *written* tables, so the summary is what landed."""
    item_reasons = _reason_counts(q_items)
    dropped_items = q_items.filter(F.col("row_dropped")).count()
    return ValidationSummary(
        items_in=bronze_items.count(),
        items_clean=clean_items.count(),
        items_quarantined=int(dropped_items),
        impressions_in=bronze_impressions.count(),
        impressions_clean=clean_impressions.count(),
        impressions_quarantined=q_impressions.count(),
        item_reasons=item_reasons,
        impression_reasons=_reason_counts(q_impressions),
        image_status={r["image_status"]: int(r["count"])
                      for r in clean_items.groupBy("image_status").count().collect()},
    )

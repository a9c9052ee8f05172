"""Which pre-training rows the encoder sees, and with which histories (Spark
side, before ``training.loader`` materialises them):

* ``page_categories`` / ``restrict_to_categories``: pre-training on chosen
  categories only (``train.categories``; the paper pre-trains on women's
  clothing). The pre-training samples carry item ids only, so a page view's
  category comes from silver/items: the category most of its shown items
  have (ties: the alphabetically first); shown items unknown to silver/items
  do not vote. On the synthetic marketplace every page shows one category.
* ``restrict_history_clicks``: with ``train.restrict_histories`` the history
  clicks on items outside the chosen categories go too (the paper's transfer
  setting: no image of another category is trained on); a page view left
  with no history click is dropped, as pages without history are.
* ``shuffle_histories``: the ``courier_shuffled`` control. Each page view
  keeps its shown items and labels but gets another page view's click
  history, so the click signal that links a history to what was clicked next
  is gone while every marginal (history lengths, item frequencies) is kept.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core.errors import ConfigError, DataError


def check_restrict_histories(categories: Sequence[str], restrict_histories: bool) -> None:
    """train.restrict_histories keeps the history clicks of train.categories: it needs some."""
    if restrict_histories and not categories:
        raise ConfigError("train.restrict_histories needs train.categories (the categories to keep)")


def check_categories(requested: Sequence[str], known: set, table: str) -> None:
    """``train.categories`` must name categories of the data: raises the
    DataError the train stage and the check before Spark both give."""
    unknown = sorted(set(requested) - known)
    if unknown:
        raise DataError(f"train.categories names {', '.join(unknown)}, not a category of {table} "
                        f"(have: {', '.join(sorted(c for c in known if c is not None))})")


def page_categories(samples: DataFrame, items: DataFrame) -> DataFrame:
    """``request_id, category``: each page view's majority category of its
    shown items (ties: alphabetical); page views with no known item are absent."""
    shown = (samples.select("request_id", F.explode("pv_item_ids").alias("item_id"))
             .join(items.select("item_id", "category"), "item_id"))
    votes = shown.groupBy("request_id", "category").agg(F.count(F.lit(1)).alias("n"))
    # min of (-votes, name): the most votes, then the first name
    best = votes.groupBy("request_id").agg(F.min(F.struct((-F.col("n")).alias("neg"), "category")).alias("b"))
    return best.select("request_id", F.col("b.category").alias("category"))


def restrict_to_categories(samples: DataFrame, items: DataFrame, categories: Sequence[str]) -> DataFrame:
    """The samples whose page category (``page_categories``) is in ``categories``; all of them when empty."""
    if not categories:
        return samples
    keep = page_categories(samples, items).filter(F.col("category").isin(list(categories)))
    return samples.join(keep.select("request_id"), "request_id", "left_semi")


def restrict_history_clicks(samples: DataFrame, items: DataFrame, categories: Sequence[str]) -> DataFrame:
    """``samples`` with ``hist_item_ids`` keeping only items of ``categories``
    (order kept); rows left with an empty history are dropped. All rows
    unchanged when ``categories`` is empty."""
    if not categories:
        return samples
    allowed = items.filter(F.col("category").isin(list(categories))).select("item_id")
    kept = (samples.select("request_id", F.posexplode("hist_item_ids").alias("_pos", "item_id"))
            .join(allowed, "item_id", "left_semi")
            .groupBy("request_id")
            .agg(F.sort_array(F.collect_list(F.struct("_pos", "item_id"))).alias("_h"))
            .select("request_id", F.col("_h.item_id").alias("_kept")))
    return (samples.join(kept, "request_id")
            .withColumn("hist_item_ids", F.col("_kept").cast(samples.schema["hist_item_ids"].dataType))
            .select(*samples.columns))


def shuffle_histories(frame: DataFrame, seed: int, col: str = "hist_ids", key: str = "request_id") -> DataFrame:
    """``frame`` with column ``col`` moved across rows by a fixed permutation:
    rows are ordered by ``xxhash64(key, seed)`` (ties by ``key``, which must be
    unique) and each row takes the ``col`` of the row before it, cyclically.
    One cycle through all rows, so with two or more rows no row keeps its own
    value; the same seed gives the same permutation on every run."""
    order = frame.select(key, F.xxhash64(key, F.lit(seed)).alias("_h")).orderBy("_h", key)
    # zipWithIndex numbers the globally sorted rows without moving them to one partition
    schema = T.StructType([T.StructField(key, frame.schema[key].dataType), T.StructField("_pos", T.LongType())])
    pos = frame.sparkSession.createDataFrame(
        order.select(key).rdd.zipWithIndex().map(lambda r: (r[0][0], r[1])), schema)
    n = pos.count()
    if n < 2:
        return frame
    donors = (frame.select(key, col).join(pos, key)
              .select(((F.col("_pos") + 1) % n).alias("_pos"), F.col(col).alias("_donated")))
    return (frame.join(pos, key).join(donors, "_pos")
            .withColumn(col, F.col("_donated")).drop("_pos", "_donated")
            .select(*frame.columns))

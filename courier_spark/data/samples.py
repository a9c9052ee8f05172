"""Sessionized sample assembly: the Spark heart of the platform.

From validated impressions:

* ``assign_sessions``: per user, a new session starts when the gap since the
  user's previous page is >= ``session_gap_minutes``; every page (and so every
  impression) gets a ``session_id``.
* ``page_histories``: for every page, the user's latest K clicks *strictly
  before* the page's timestamp, oldest to newest. Computed with bounded and
  running window frames over one per-user event stream (pages sort before
  clicks at the same timestamp), so there is no per-user cross join, no
  collect to the driver and no Python row loop.
* ``build_pretrain_samples`` / ``build_ctr_samples``: the two silver tables.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from courier_spark.core.errors import ConfigError

from courier_spark.core.schema import SamplesConfig, WindowsConfig

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class SampleWindows:
    """Half-open UTC intervals [start, end)."""
    pretrain: tuple[dt.datetime, dt.datetime]
    ctr_train: tuple[dt.datetime, dt.datetime]
    test: tuple[dt.datetime, dt.datetime]

    def describe(self) -> str:
        f = lambda w: f"[{w[0]:%Y-%m-%d %H:%M}, {w[1]:%Y-%m-%d %H:%M})"  # noqa: E731
        return (f"pretrain {f(self.pretrain)}  ctr_train {f(self.ctr_train)}  "
                f"test {f(self.test)}")


def _parse_day(value: str | None, key: str) -> dt.datetime:
    if not value:
        raise ConfigError(f"windows.{key} is required when windows.mode is absolute")
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        raise ConfigError(f"windows.{key}: cannot parse date {value!r} (use YYYY-MM-DD)") from None


def resolve_windows(cfg: WindowsConfig, data_start: dt.datetime | None,
                    data_end: dt.datetime | None) -> SampleWindows:
    """Turn the window config into concrete, checked intervals.

    ``data_start``/``data_end`` are the min/max event timestamps (UTC)."""
    if cfg.mode == "absolute":
        w = SampleWindows(
            (_parse_day(cfg.pretrain_start, "pretrain_start"), _parse_day(cfg.pretrain_end, "pretrain_end")),
            (_parse_day(cfg.ctr_train_start, "ctr_train_start"), _parse_day(cfg.ctr_train_end, "ctr_train_end")),
            (_parse_day(cfg.test_start, "test_start"), _parse_day(cfg.test_end, "test_end")))
    elif cfg.mode == "relative":
        if data_start is None or data_end is None:
            raise ConfigError("no clean impressions: cannot derive relative windows from an empty dataset")
        if cfg.test_days < 1 or cfg.ctr_train_days < 1:
            raise ConfigError("windows.test_days and windows.ctr_train_days must be >= 1")
        first = dt.datetime.combine(data_start.date(), dt.time())
        last_end = dt.datetime.combine(data_end.date(), dt.time()) + DAY
        test_start = last_end - cfg.test_days * DAY
        ctr_start = test_start - cfg.ctr_train_days * DAY
        pre_start = first if cfg.pretrain_days is None else max(first, ctr_start - cfg.pretrain_days * DAY)
        span = (last_end - first).days
        if ctr_start <= first:
            raise ConfigError(
                f"impossible windows: the data spans {span} day(s) but test_days={cfg.test_days} + "
                f"ctr_train_days={cfg.ctr_train_days} leave no day for pre-training")
        w = SampleWindows((pre_start, ctr_start), (ctr_start, test_start), (test_start, last_end))
    else:
        raise ConfigError(f"windows.mode must be 'relative' or 'absolute', got {cfg.mode!r}")
    for name in ("pretrain", "ctr_train", "test"):
        s, e = getattr(w, name)
        if not s < e:
            raise ConfigError(f"impossible windows: {name} start {s} is not before its end {e}")
    if w.pretrain[1] > w.ctr_train[0] or w.ctr_train[1] > w.test[0]:
        raise ConfigError("impossible windows: they must not overlap and must run "
                          "pre-training, then CTR train, then test (" + w.describe() + ")")
    return w


def data_time_span(impressions: DataFrame) -> tuple[dt.datetime | None, dt.datetime | None]:
    row = impressions.agg(F.min("event_ts").alias("lo"), F.max("event_ts").alias("hi")).first()
    return row["lo"], row["hi"]


def _in_window(col: Column, window: tuple[dt.datetime, dt.datetime]) -> Column:
    return (col >= F.lit(window[0])) & (col < F.lit(window[1]))


def pages_of(impressions: DataFrame) -> DataFrame:
    """One row per page view: request_id, user_id, page_ts (first shown time)."""
    return impressions.groupBy("request_id", "user_id").agg(F.min("event_ts").alias("page_ts"))


def assign_sessions(pages: DataFrame, gap_minutes: float) -> DataFrame:
    """Add ``session_id`` to pages: a new session when the gap to the user's
    previous page is >= ``gap_minutes`` (a gap of exactly the limit splits)."""
    w = Window.partitionBy("user_id").orderBy("page_ts", "request_id")
    gap_s = F.col("page_ts").cast("double") - F.lag(F.col("page_ts").cast("double")).over(w)
    new = F.when(gap_s.isNull() | (gap_s >= float(gap_minutes) * 60.0), 1).otherwise(0)
    return (pages.withColumn("_new", new)
            .withColumn("_idx", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
            .withColumn("session_id", F.concat_ws("-", F.lit("s"), F.col("user_id").cast("string"),
                                                  F.col("_idx").cast("string")))
            .drop("_new", "_idx"))


def page_histories(pages: DataFrame, impressions: DataFrame, k: int) -> DataFrame:
    """Add ``hist_item_ids``: the user's latest ``k`` clicked items strictly
    before ``page_ts``, oldest to newest (empty array when none)."""
    clicks = (impressions.filter(F.col("clicked"))
              .select("user_id", F.col("event_ts").alias("ts"), F.lit(1).alias("kind"),
                      F.col("position").alias("pos"), F.col("event_id").alias("tie"), "item_id"))
    # Each click carries the window of the last k clicks up to and including it.
    cw = Window.partitionBy("user_id").orderBy("ts", "pos", "tie").rowsBetween(-(k - 1), 0)
    clicks = (clicks.withColumn("last_k", F.collect_list("item_id").over(cw))
              .drop("item_id").withColumn("request_id", F.lit(None).cast("string")))
    page_rows = pages.select("user_id", F.col("page_ts").alias("ts"), F.lit(0).alias("kind"),
                             F.lit(None).cast("int").alias("pos"), F.lit(None).cast("string").alias("tie"),
                             F.lit(None).cast("array<bigint>").alias("last_k"), "request_id")
    # Pages sort before clicks at the same ts, so a click at the page's own
    # time (including the page's own clicks) is never in its history.
    sw = (Window.partitionBy("user_id").orderBy("ts", "kind", "pos", "tie")
          .rowsBetween(Window.unboundedPreceding, 0))
    hist = (clicks.unionByName(page_rows)
            .withColumn("hist", F.last("last_k", ignorenulls=True).over(sw))
            .filter(F.col("kind") == 0)
            .select("request_id", F.coalesce("hist", F.array().cast("array<bigint>")).alias("hist_item_ids")))
    return pages.join(hist, "request_id")


def _last_n(col: str, n: int) -> Column:
    c = F.col(col)
    return F.slice(c, F.greatest(F.size(c) - n + 1, F.lit(1)), n)


def _keep_negative(event_id: Column, rate: float, seed: int) -> Column:
    """Deterministic Bernoulli(rate) per event_id, stable across re-runs."""
    bucket = F.pmod(F.xxhash64(event_id, F.lit(seed)), F.lit(1_000_000))
    return bucket < F.lit(int(round(rate * 1_000_000)))


def build_pretrain_samples(impressions: DataFrame, pages: DataFrame,
                           window: tuple[dt.datetime, dt.datetime], cfg: SamplesConfig) -> DataFrame:
    """One row per page view in the window with >= 1 click and a non-empty
    history: pv_item_ids (<= l_pv, clicked first), pv_labels, hist_item_ids
    (<= l_click latest clicks strictly before the page, oldest to newest)."""
    imps = impressions.filter(_in_window(F.col("event_ts"), window))
    imps = imps.filter(F.col("clicked") | _keep_negative(F.col("event_id"), cfg.negative_keep_rate, cfg.seed))
    # Sort key: clicked first, then on-page position, then item_id (ties).
    pv = (imps.groupBy("request_id")
          .agg(F.max(F.col("clicked").cast("int")).alias("_any_click"),
               F.array_sort(F.collect_list(F.struct(
                   (~F.col("clicked")).alias("unclicked"), F.col("position").alias("position"),
                   F.col("item_id").alias("item_id"), F.col("clicked").alias("clicked")))).alias("_pv"))
          .filter(F.col("_any_click") == 1)
          .withColumn("_pv", F.slice("_pv", 1, cfg.l_pv)))
    return (pv.join(pages, "request_id")
            .withColumn("hist_item_ids", _last_n("hist_item_ids", cfg.l_click))
            .filter(F.size("hist_item_ids") > 0)
            .select("request_id", "user_id", F.col("page_ts").alias("event_ts"), "session_id",
                    F.transform("_pv", lambda x: x["item_id"]).alias("pv_item_ids"),
                    F.transform("_pv", lambda x: x["clicked"].cast("int")).alias("pv_labels"),
                    "hist_item_ids"))


def build_ctr_samples(impressions: DataFrame, items: DataFrame, pages: DataFrame,
                      windows: SampleWindows, cfg: SamplesConfig) -> DataFrame:
    """One row per impression in the CTR train/test windows with its session,
    category, label and the <= ctr_history_len clicks strictly before it."""
    split = (F.when(_in_window(F.col("event_ts"), windows.ctr_train), F.lit("train"))
             .when(_in_window(F.col("event_ts"), windows.test), F.lit("test")))
    imps = impressions.withColumn("split", split).filter(F.col("split").isNotNull())
    return (imps.join(pages.select("request_id", "session_id", "hist_item_ids"), "request_id")
            .join(items.select("item_id", "category"), "item_id", "left")
            .select("event_id", "request_id", "session_id", "user_id", "item_id", "category",
                    "position", "event_ts", F.col("clicked").cast("int").alias("label"),
                    _last_n("hist_item_ids", cfg.ctr_history_len).alias("hist_item_ids"),
                    "query", "split"))


def window_accounting(impressions: DataFrame, windows: SampleWindows) -> dict[str, int]:
    """Clean impressions per window: ``pretrain``, ``ctr_train``, ``test`` and
    ``outside`` (before the first window, e.g. cut off by ``pretrain_days``, or
    after the last), plus ``total``. The windows do not overlap, so the four
    parts always sum to ``total``: a job summary can show where every input
    row went, including the rows no sample uses."""
    ts = F.col("event_ts")
    where = (F.when(_in_window(ts, windows.pretrain), F.lit("pretrain"))
             .when(_in_window(ts, windows.ctr_train), F.lit("ctr_train"))
             .when(_in_window(ts, windows.test), F.lit("test"))
             .otherwise(F.lit("outside")))
    out = {"pretrain": 0, "ctr_train": 0, "test": 0, "outside": 0}
    for r in impressions.groupBy(where.alias("w")).count().collect():
        out[r["w"]] = int(r["count"])
    out["total"] = sum(out.values())
    return out


@dataclass
class SampleTables:
    windows: SampleWindows
    pretrain: DataFrame
    ctr: DataFrame


def assemble_samples(impressions: DataFrame, items: DataFrame,
                     windows_cfg: WindowsConfig, cfg: SamplesConfig) -> SampleTables:
    """Clean impressions + items -> (windows, pretrain samples, CTR samples)."""
    if cfg.l_pv < 1 or cfg.l_click < 1 or cfg.ctr_history_len < 1:
        raise ConfigError("samples.l_pv, samples.l_click and samples.ctr_history_len must be >= 1")
    if not 0.0 <= cfg.negative_keep_rate <= 1.0:
        raise ConfigError("samples.negative_keep_rate must be within [0, 1]")
    windows = resolve_windows(windows_cfg, *data_time_span(impressions))
    pages = assign_sessions(pages_of(impressions), cfg.session_gap_minutes)
    pages = page_histories(pages, impressions, max(cfg.l_click, cfg.ctr_history_len))
    return SampleTables(windows,
                        build_pretrain_samples(impressions, pages, windows.pretrain, cfg),
                        build_ctr_samples(impressions, items, pages, windows, cfg))

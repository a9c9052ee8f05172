"""Bad input at every entry point: each case ends as a quarantine row with its
reason or as a clear error, and the job summary accounts for every input row."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter

import pytest
from pyspark.sql import functions as F

from courier_spark.core.errors import ConfigError

from courier_spark.core.config import load_config

from courier_spark.core.schema import WindowsConfig
from courier_spark.core.errors import ContractError
from courier_spark.core.paths import TablePaths
from courier_spark.data.samples import resolve_windows
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.core.tables import read_table
from courier_spark.core.errors import MissingTableError

from ..conftest import tiny_config
from .helpers import (DAY, EXPECTED_IMP_REASONS, EXPECTED_ITEM_REASONS, GOOD, T0, bad_bronze as _bronze,
                      impressions_df, items_df, rows_of, run_summary, write_bronze)

@pytest.fixture(scope="module")
def validated(spark, tmp_path_factory):
    paths = TablePaths.for_root(str(tmp_path_factory.mktemp("bad") / "ds"))
    items, imps = _bronze(spark)
    write_bronze(paths, items, imps)
    ctx = StageContext(spark, tiny_config(), paths)
    return ctx, run_stage("validate", ctx)


def test_every_bad_row_quarantined_with_reason_and_accounted(spark, validated, reliability):
    ctx, result = validated
    summary = result.summary()
    p = ctx.paths
    bronze_imps = read_table(spark, p.bronze_impressions)
    clean = read_table(spark, p.silver_impressions)
    q = read_table(spark, p.quarantine_impressions)
    assert Counter(r.reason for r in q.collect()) == EXPECTED_IMP_REASONS
    # Every input row is in exactly one place: the multiset of full rows matches.
    cols = bronze_imps.columns
    got = Counter(tuple(r) for r in clean.select(*cols).unionByName(q.select(*cols)).collect())
    assert got == Counter(tuple(r) for r in bronze_imps.collect())
    # The re-delivered copies: the earliest delivery stays clean, the copies are quarantined.
    e2 = {r.event_ts for r in clean.filter("event_id = 'e2'").collect()}
    assert e2 == {T0 + dt.timedelta(minutes=1)} and clean.filter("event_id = 'e1'").count() == 1
    assert clean.filter("event_id = 'late1'").count() == 1  # late but valid: kept

    items_q = read_table(spark, p.quarantine_items)
    assert Counter(r.reason for r in items_q.collect()) == EXPECTED_ITEM_REASONS
    silver_items = {r.item_id: r for r in read_table(spark, p.silver_items).collect()}
    assert {i: silver_items[i].image_status for i in (20, 21, 22, 23)} == {
        20: "undecodable", 21: "undecodable", 22: "empty", 23: "missing"}
    assert all(silver_items[i].image is None for i in (20, 21, 22, 23))
    assert silver_items[1].title == "t1"  # the newer copy of the duplicated item won
    # The kept-for-inspection image rows are not dropped rows.
    assert {r.item_id for r in items_q.filter(~F.col("row_dropped")).collect()} == {20, 21, 22}

    # The stage's own summary (the JSON it wrote) accounts for every row.
    s = run_summary(p, "validate")
    assert s["impressions_in"] == bronze_imps.count() == s["impressions_clean"] + s["impressions_quarantined"]
    assert s["items_in"] == 17 == s["items_clean"] + s["items_quarantined"]
    assert s["impression_reasons"] == EXPECTED_IMP_REASONS and s["item_reasons"] == EXPECTED_ITEM_REASONS
    assert s["image_status"] == {"ok": 8, "undecodable": 2, "empty": 1, "missing": 1} == summary["image_status"]
    reliability.bad("corrupt image", "truncated image", "empty image", "missing image",
                    *(f"impressions:{r}" for r in EXPECTED_IMP_REASONS),
                    *(f"items:{r}" for r in EXPECTED_ITEM_REASONS if not r.endswith("_image")),
                    "late out-of-order event")
    reliability.rows("validate bad-input impressions", s["impressions_in"],
                     s["impressions_clean"] + s["impressions_quarantined"])
    reliability.rows("validate bad-input items", s["items_in"], s["items_clean"] + s["items_quarantined"])


def test_rerun_validate_gives_identical_tables(spark, validated, reliability):
    ctx, first = validated
    p = ctx.paths
    before = {t: rows_of(read_table(spark, t).drop("image"))
              for t in (p.silver_items, p.silver_impressions, p.quarantine_impressions)}
    again = run_stage("validate", ctx)
    for k in ("items_in", "items_clean", "impressions_clean", "impressions_quarantined", "impression_reasons"):
        assert getattr(again.counts, k) == getattr(first.counts, k), k
    after = {t: rows_of(read_table(spark, t).drop("image")) for t in before}
    assert after == before  # atomic overwrite: same rows, nothing appended twice
    assert read_table(spark, p.silver_impressions).groupBy("event_id").count().filter("count > 1").count() == 0
    reliability.rerun("validate re-run")


def test_out_of_order_delivery_gives_same_samples(spark, tmp_path, reliability):
    """The same events landed in time order in one commit, or late and shuffled in
    three commits, give identical silver and sample tables."""
    from courier_spark.data.samples import assemble_samples
    from courier_spark.data.validate import validate_bronze

    cfg = tiny_config()
    rows = []
    for user in range(1, 7):
        for day in range(5):
            for page in range(2):
                ts = T0 + day * DAY + dt.timedelta(hours=2 * page, minutes=user)
                for pos in range(3):
                    item = 1 + (user * 3 + day + page + pos) % 8
                    rows.append((f"u{user}d{day}p{page}i{pos}", f"u{user}d{day}p{page}", user, None, item, pos,
                                 ts, pos == (user + day) % 3))
    items = items_df(spark, [(i, "c", None, 1.0, GOOD, T0) for i in range(1, 9)])
    in_order = tmp_path / "ordered"
    impressions_df(spark, sorted(rows, key=lambda r: r[6])).coalesce(1).write.format("delta").save(str(in_order))
    late = tmp_path / "late"
    shuffled = sorted(rows, key=lambda r: hash(r[0]) % 97)
    newest_first = sorted(shuffled, key=lambda r: r[6], reverse=True)
    for chunk in (newest_first[:60], newest_first[60:120], newest_first[120:]):  # oldest events arrive last
        impressions_df(spark, chunk).write.format("delta").mode("append").save(str(late))

    def build(path):
        res = validate_bronze(items, spark.read.format("delta").load(path), cfg.validate)
        t = assemble_samples(res.clean_impressions, res.clean_items, cfg.windows, cfg.samples)
        return t.windows, rows_of(res.clean_impressions), rows_of(t.pretrain), rows_of(t.ctr)

    a, b = build(str(in_order)), build(str(late))
    assert a[0] == b[0]
    assert len(a[1]) == len(rows) and a[1] == b[1]
    assert len(a[2]) > 0 and a[2] == b[2]          # pre-training pages, histories strictly before
    assert len(a[3]) > 0 and a[3] == b[3]          # CTR samples and splits
    # The job can say where every clean impression went, including those no
    # sample uses (here: the first day, cut off by pretrain_days=1).
    from courier_spark.data.samples import data_time_span, window_accounting
    clean = validate_bronze(items, spark.read.format("delta").load(str(late)), cfg.validate).clean_impressions
    w = resolve_windows(WindowsConfig(pretrain_days=1), *data_time_span(clean))
    acc = window_accounting(clean, w)
    assert acc == {"pretrain": 36, "ctr_train": 72, "test": 36, "outside": 36, "total": len(rows)}
    reliability.bad("late delivery in 3 out-of-order commits")
    reliability.rows("out-of-order delivery", len(rows), len(b[1]))
    reliability.rows("impressions per window", len(rows), acc["pretrain"] + acc["ctr_train"] + acc["test"]
                     + acc["outside"])


def test_broken_bronze_schema_stops_before_writing(spark, tmp_path, reliability):
    items, imps = _bronze(spark)
    cases = {
        "missing column": (items, imps.drop("clicked"),
                           ContractError, r"bronze/impressions: missing column 'clicked'"),
        "retyped column": (items, imps.withColumn("user_id", F.col("user_id").cast("string")),
                           ContractError, r"bronze/impressions: column 'user_id' has type string, contract says bigint"),
        "retyped timestamp": (items.withColumn("updated_at", F.col("updated_at").cast("string")), imps,
                              ContractError, r"bronze/items: column 'updated_at' has type string"),
    }
    for i, (name, (it, im, exc, msg)) in enumerate(cases.items()):
        paths = TablePaths.for_root(str(tmp_path / f"case{i}"))
        write_bronze(paths, it, im)
        with pytest.raises(exc, match=msg):
            run_stage("validate", StageContext(spark, tiny_config(), paths))
        # Stopped before any write: no silver, no quarantine, no summary claiming success.
        for t in ("silver", "quarantine", "_runs"):
            assert not os.path.exists(os.path.join(paths.root, t)), (name, t)
        reliability.bad(f"bronze {name}")
    paths = TablePaths.for_root(str(tmp_path / "nobronze"))
    with pytest.raises(MissingTableError, match=r"no Delta table at .*bronze/items; run `courier generate"):
        run_stage("validate", StageContext(spark, tiny_config(), paths))
    reliability.bad("bronze table missing")


def test_empty_and_all_bad_datasets(spark, tmp_path, reliability):
    items, imps = _bronze(spark)
    cases = {"empty dataset": (items.limit(0), imps.limit(0)),
             "all rows bad": (items.filter("item_id is null"), imps.filter("event_id is null"))}
    for name, (it, im) in cases.items():
        paths = TablePaths.for_root(str(tmp_path / name.replace(" ", "_")))
        write_bronze(paths, it, im)
        ctx = StageContext(spark, tiny_config(), paths)
        s = run_stage("validate", ctx).summary()
        assert s["impressions_clean"] == 0 and s["items_clean"] == 0
        assert s["impressions_in"] == s["impressions_quarantined"] == im.count()
        assert read_table(spark, paths.silver_impressions).count() == 0  # an empty, readable table
        with pytest.raises(ConfigError, match="no clean impressions: cannot derive relative windows "
                                              "from an empty dataset"):
            run_stage("samples", ctx)
        assert not os.path.exists(paths.pretrain_samples)
        reliability.bad(name)
        reliability.rows(name, s["impressions_in"] + s["items_in"],
                         s["impressions_clean"] + s["impressions_quarantined"] + s["items_clean"]
                         + s["items_quarantined"])


def test_config_unknown_key_and_impossible_windows(spark, validated, reliability, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key validate\.max_future_skew_hour; did you mean validate\.max_future_skew_hours\? \(valid keys"):
        load_config(None, ["validate.max_future_skew_hour=3"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("samples:\n  l_pvv: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key samples\.l_pvv"):
        load_config(bad_yaml)
    # Through the real CLI: exit status 2 and the key named, before Spark starts.
    cli = subprocess.run([sys.executable, "-m", "courier_spark.cli", "validate", "--root", str(tmp_path / "x"),
                          "--set", "windows.test_dayz=1"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "unknown config key windows.test_dayz" in cli.stderr, cli.stderr[-2000:]
    reliability.bad("config unknown key (--set)", "config unknown key (yaml)", "config unknown key (CLI)")

    lo, hi = T0, T0 + 3 * DAY
    impossible = {
        "more test+train days than data": (lambda: WindowsConfig(test_days=2, ctr_train_days=2),
                                           r"impossible windows: the data spans 4 day\(s\)"),
        # checked by the schema when the section is built, before any data is read
        "zero test days": (lambda: WindowsConfig(test_days=0), r"windows.test_days must be within \[1, "),
        "overlapping absolute windows": (
            lambda: WindowsConfig(mode="absolute", pretrain_start="2026-03-01", pretrain_end="2026-03-04",
                          ctr_train_start="2026-03-03", ctr_train_end="2026-03-05",
                          test_start="2026-03-05", test_end="2026-03-06"), r"must not overlap"),
        "end before start": (
            lambda: WindowsConfig(mode="absolute", pretrain_start="2026-03-03", pretrain_end="2026-03-01",
                          ctr_train_start="2026-03-03", ctr_train_end="2026-03-05",
                          test_start="2026-03-05", test_end="2026-03-06"), r"pretrain start .* is not before"),
        "unparseable date": (
            lambda: WindowsConfig(mode="absolute", pretrain_start="March 1st", pretrain_end="2026-03-01",
                          ctr_train_start="2026-03-03", ctr_train_end="2026-03-05",
                          test_start="2026-03-05", test_end="2026-03-06"),
            r"windows.pretrain_start: expected an ISO date YYYY-MM-DD, got 'March 1st'"),
    }
    for name, (make_wcfg, msg) in impossible.items():
        with pytest.raises(ConfigError, match=msg):
            resolve_windows(make_wcfg(), lo, hi)
        reliability.bad(f"window: {name}")
    # And through the stage on real data: a clear error, nothing written.
    ctx, _ = validated
    bad = StageContext(spark, tiny_config(**{"windows.test_days": 5, "windows.ctr_train_days": 2}), ctx.paths)
    with pytest.raises(ConfigError, match=r"impossible windows: the data spans \d+ day\(s\) but test_days=5"):
        run_stage("samples", bad)
    assert not os.path.exists(ctx.paths.ctr_samples)
    reliability.bad("window: impossible on real data (stage)")

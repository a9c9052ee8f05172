"""generate -> validate -> samples on a real local Spark + Delta."""
from __future__ import annotations

import json
import os

import pytest
from pyspark.sql import functions as F

from courier_spark.pipeline import run_stage
from courier_spark.core.tables import read_table, table_version


@pytest.fixture
def built(tiny_dataset):
    return tiny_dataset


def test_quarantine_counts_equal_injected_bad_rows(built, spark):
    ctx, out = built
    injected = out["generate"].injected_bad_rows
    assert injected == {"null_key": 6, "unknown_item": 4, "duplicate_event_id": 5, "undecodable_image": 3}
    v = out["validate"].counts
    reasons = v.impression_reasons
    assert sum(n for r, n in reasons.items() if r.startswith("null_")) == 6
    assert reasons.get("unknown_item") == 4
    assert reasons.get("duplicate_event_id") == 5
    assert v.item_reasons == {"undecodable_image": 3}
    assert v.image_status["undecodable"] == 3
    # clean + quarantined = input, from the written tables
    p = ctx.paths
    n_in = read_table(spark, p.bronze_impressions).count()
    assert n_in == read_table(spark, p.silver_impressions).count() + read_table(spark, p.quarantine_impressions).count()
    assert read_table(spark, p.bronze_items).count() == read_table(spark, p.silver_items).count()
    # summaries are on disk for operators
    with open(os.path.join(p.run_summaries, "validate.json")) as fh:
        assert json.load(fh)["impressions_in"] == n_in


def test_sample_tables_shape(built, spark):
    ctx, out = built
    pre = read_table(spark, ctx.paths.pretrain_samples)
    ctr = read_table(spark, ctx.paths.ctr_samples)
    assert pre.count() > 100
    assert set(pre.columns) >= {"request_id", "user_id", "event_ts", "pv_item_ids", "pv_labels", "hist_item_ids"}
    assert pre.filter(F.size("pv_item_ids") > 5).count() == 0
    assert pre.filter((F.size("hist_item_ids") < 1) | (F.size("hist_item_ids") > 5)).count() == 0
    assert pre.filter(F.col("pv_labels")[0] != 1).count() == 0
    assert {r.split for r in ctr.select("split").distinct().collect()} == {"train", "test"}
    # CTR rows are exactly the clean impressions of the CTR windows
    lo = out["samples"].windows["ctr_train"][0]
    imps = read_table(spark, ctx.paths.silver_impressions).filter(F.col("event_ts") >= F.lit(lo))
    assert ctr.count() == imps.count() == ctr.select("event_id").distinct().count()


def test_rerun_is_idempotent(built, spark):
    ctx, _ = built
    p = ctx.paths
    tables = [p.silver_items, p.silver_impressions, p.quarantine_items, p.quarantine_impressions,
              p.pretrain_samples, p.ctr_samples]

    def snapshot():
        out = {}
        for t in tables:
            df = read_table(spark, t)
            cols = [c for c in df.columns if c != "image"]
            out[t] = (df.count(), df.select(F.sum(F.pmod(F.xxhash64(*cols), F.lit(2**31)))).first()[0])
        return out

    before = snapshot()
    v_before = table_version(spark, p.ctr_samples)
    run_stage("validate", ctx)
    run_stage("samples", ctx)
    assert table_version(spark, p.ctr_samples) == v_before + 1  # really re-written
    assert snapshot() == before  # same rows, no duplicates

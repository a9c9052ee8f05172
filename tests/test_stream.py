"""`courier stream` for real: a Structured Streaming query over the bronze
Delta table in its own process, items appended while it runs, a SIGKILL in
the middle of a micro-batch and a restart that loses and duplicates nothing."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import types as T

from courier_spark.data.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA
from courier_spark.features.feature_tables import current_rows
from courier_spark.core.paths import TablePaths
from courier_spark.serving.stream import read_ledger

from .worlds import noise_png as png, save_untrained_encoder

pytestmark = pytest.mark.slow
UPDATED = dt.datetime(2026, 5, 1)
FLAGS = ["--set", "spark.shuffle_partitions=4", "--set", "spark.driver_memory=2g", "--set", "cluster.k=4",
         "--set", "embed.batch_size=8"]


def item_rows(ids, rng, *, bad_images=(), null_category=(), updated=UPDATED):
    rows = []
    for i in ids:
        img = b"\x89PNG truncated" if i in bad_images else png(rng)
        rows.append((int(i), None if i in null_category else f"cat{i % 3}", f"item {i}", 10.0, img, updated))
    return rows


# Bronze is raw: every column nullable (validation quarantines what breaks the contract).
RAW_ITEMS = T.StructType([T.StructField(f.name, f.dataType, True) for f in ITEMS_SCHEMA.fields])


def append_items(spark, path, rows) -> None:
    spark.createDataFrame(rows, RAW_ITEMS).write.format("delta").mode("append").save(path)


def start_stream(root, log: Path, *extra, env_extra=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "courier_spark.cli", "stream", "--root", root, *FLAGS, *extra],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stream_here(spark, paths: TablePaths):
    """`courier stream` with the default trigger (available_now) in this
    process: a restart needs the query's checkpoint, not a new process (the
    killed run above is one)."""
    from courier_spark.core.config import load_config
    from courier_spark.pipeline import StageContext, run_stage
    return run_stage("stream", StageContext(spark, load_config(None, FLAGS[1::2]), paths))


def wait_for(cond, what: str, proc: subprocess.Popen | None, log: Path, timeout: float = 300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"stream exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def stream_root(spark, tmp_path_factory):
    """bronze (40 items) -> validate -> embed -> cluster, with a small real encoder."""
    from courier_spark.core.config import load_config
    from courier_spark.pipeline import StageContext, run_stage
    root = str(tmp_path_factory.mktemp("stream") / "ds")
    p = TablePaths.for_root(root)
    save_untrained_encoder(p.models, embed_dim=16, image_size=24)
    rng = np.random.default_rng(0)
    append_items(spark, p.bronze_items, item_rows(range(1, 41), rng))
    spark.createDataFrame([], IMPRESSIONS_SCHEMA).write.format("delta").save(p.bronze_impressions)
    ctx = StageContext(spark, load_config(None, FLAGS[1::2]), p)
    for s in ("validate", "embed", "cluster"):
        run_stage(s, ctx)
    return root


def test_stream_appends_kill_restart_exactly_once(spark, stream_root, tmp_path):
    p = TablePaths.for_root(stream_root)
    rng = np.random.default_rng(1)
    iv = lambda: spark.read.format("delta").load(p.item_visual_features)  # noqa: E731
    log1 = tmp_path / "stream1.log"
    # Continuous run; the second data micro-batch (batch 1) is killed after its embeddings are written.
    proc = start_stream(stream_root, log1, "--set", "stream.trigger=processing_time",
                        "--set", "stream.interval_seconds=1", "--set", "stream.failpoint=after_embeddings@1")
    try:
        wait_for(lambda: "query on bronze/items" in log1.read_text(), "the query to start", proc, log1)
        # The catch-up gave the 40 existing items features from their stored embeddings (none re-embedded).
        assert "catch-up embedded 0, assigned 40" in log1.read_text()
        assert current_rows(iv()).count() == 40
        before = iv().filter("item_id <= 40").toPandas().sort_values("item_id").reset_index(drop=True)

        # Batch 0: 10 good items, 3 with undecodable images, 1 without a category.
        append_items(spark, p.bronze_items, item_rows(range(41, 55), rng, bad_images={51, 52, 53},
                                                     null_category={54}))
        b0 = wait_for(lambda: [b for b in read_ledger(spark, p) if b["batch_id"] == 0], "batch 0", proc, log1)[0]
        assert (b0["rows_in"], b0["new"], b0["quarantined"], b0["embedded"], b0["re_embedded_existing"]) == \
               (14, 13, 4, 10, 0)
        # Within that one micro-batch every good new item got exactly one (current) feature row.
        got = iv().filter("item_id > 40").toPandas()
        assert sorted(got["item_id"]) == list(range(41, 51)) and got["valid_to"].isna().all()

        # Batch 1: killed (SIGKILL) in the middle, after silver, quarantine and embeddings were written.
        append_items(spark, p.bronze_items, item_rows(range(55, 63), rng, bad_images={62}))
        proc.wait(timeout=300)
        assert proc.returncode == -signal.SIGKILL, log1.read_text()[-3000:]
        assert "failpoint after_embeddings@1" in log1.read_text()
        assert [b["batch_id"] for b in read_ledger(spark, p)] == [0]
        assert iv().filter("item_id >= 55").count() == 0          # the kill came before the features
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    # A newer version of item 5 (new image) lands before the restart.
    append_items(spark, p.bronze_items, item_rows([5], rng, updated=UPDATED + dt.timedelta(days=1)))
    stream_here(spark, p)                                        # available_now: replay, then the rest, then stop
    ledger = read_ledger(spark, p)
    assert [b["batch_id"] for b in ledger][:2] == [0, 1] and len({b["batch_id"] for b in ledger}) == len(ledger)

    silver = spark.read.format("delta").load(p.silver_items)
    assert silver.count() == silver.select("item_id").distinct().count() == 61   # 40 + 13 + 8, item 54 dropped
    q = spark.read.format("delta").load(p.quarantine_items).toPandas()
    assert sorted(zip(q["item_id"], q["reason"])) == sorted(
        [(51, "undecodable_image"), (52, "undecodable_image"), (53, "undecodable_image"),
         (54, "null_category"), (62, "undecodable_image")])        # each bad row once, replay or not
    emb = spark.read.format("delta").load(p.item_embeddings)
    assert emb.count() == emb.select("item_id").distinct().count() == 40 + 10 + 7
    hist = iv().toPandas()
    cur = hist[hist["valid_to"].isna()]
    # Every good item has exactly one current row, of the serving versions.
    assert sorted(cur["item_id"]) == sorted(set(range(1, 51)) | set(range(55, 62)))
    assert cur["item_id"].is_unique and cur["centroid_version"].nunique() == 1
    # Nothing new for the killed batch's items but one row each; the old items are untouched
    # except item 5, whose new image gave it a second row (and one re-embedding).
    assert (hist.groupby("item_id").size().drop(5) == 1).all() and (hist["item_id"] == 5).sum() == 2
    after = hist[(hist["item_id"] <= 40) & (hist["item_id"] != 5)].sort_values("item_id").reset_index(drop=True)
    assert after.equals(before[before["item_id"] != 5].reset_index(drop=True))
    assert sum(b["re_embedded_existing"] for b in ledger) == 1
    # The restart's catch-up assigned the killed batch's items from the embeddings that batch
    # had written, so the replay had nothing left to embed: each item was embedded once.
    summary = json.loads((Path(p.run_summaries) / "stream.json").read_text())
    assert (summary["catch_up"]["embedded"], summary["catch_up"]["assigned"]) == (0, 7)
    assert sum(b["embedded"] for b in ledger) == 10 + 1

    # A new centroid version (cluster again with another seed): the next run re-assigns every
    # item once, from the stored embeddings; the run after that has nothing to do.
    from courier_spark.core.config import load_config
    from courier_spark.pipeline import StageContext, run_stage
    c = run_stage("cluster", StageContext(spark, load_config(None, ["cluster.k=4", "cluster.seed=99",
                                                                    "spark.shuffle_partitions=4"]), p))
    assert c.centroid_version == "c0002"
    for run, want in (("stream3", 57), ("stream4", 0)):
        stream_here(spark, p)
        s = json.loads((Path(p.run_summaries) / "stream.json").read_text())
        assert (s["catch_up"]["embedded"], s["catch_up"]["assigned"]) == (0, want), run
    hist2 = iv().toPandas()
    cur2 = hist2[hist2["valid_to"].isna()]
    assert cur2["item_id"].is_unique and set(cur2["centroid_version"]) == {"c0002"} and len(cur2) == 57
    assert len(hist2) == len(hist) + 57                             # exactly one new row per item

    # Health: one record per item_visual version. The first (catch-up) is computed in full; every
    # later c0001 record (micro-batches, the restart's catch-up) is incremental, from the one before;
    # the version change to c0002 is a full record with drift.
    from courier_spark.features.health import read_health
    h = read_health(spark, p)
    assert h["item_visual_version"].is_unique and set(h["source"]) == {"stream"}
    c1 = h[h["centroid_version"] == "c0001"]
    assert list(c1["stats_mode"]) == ["full"] + ["incremental"] * (len(c1) - 1) and len(c1) >= 3
    assert list(c1["rows"])[-1] == 57 and list(c1["written_rows"])[-1] == 1   # item 5's new row
    last = h.iloc[-1]
    assert (last["stats_mode"], last["centroid_version"], last["prev_centroid_version"], last["rows"]) == \
           ("full", "c0002", "c0001", 57)

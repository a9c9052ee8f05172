"""Fresh features: `courier stream` throughput and landing-to-feature latency,
and the online store's materialisation rate.

    .venv/bin/python bench/bench_stream.py SOURCE_ROOT [--work DIR] [--new 200] [--batches 3]

SOURCE_ROOT is a root on which `validate`, `embed` and `cluster` have run (a
trained model under models/, e.g. the root of `bash scripts/demo.sh`). Its
bronze, silver, gold, quarantine and models folders are copied to --work
(the source is not touched). Then, in order:

1. `courier stream` starts as its own process (processing-time trigger,
   1 s): its catch-up gives all N catalogue items item_visual rows from their
   stored embeddings (timed from its log).
2. --batches times: --new new items (random 64 px PNGs) are appended to
   bronze/items in one commit. Printed per batch: the micro-batch's own time,
   items/s, and landing -> feature-row latency from the bronze commit's
   timestamp: to the rows' ``valid_from`` (the MERGE's start) and to the
   item_visual commit that made them readable (includes waiting for the
   next trigger).
3. A Redis server (Debian's redis-server) on loopback: a full materialisation
   of item_visual (rows/s), then a re-run (writes 0).

Each micro-batch's health record is among the phases printed (``health``).
``COURIER_HEALTH_INCREMENTAL=0`` in the environment makes every record a full
computation over all current item_visual rows (the cost before incremental
records).

Health alone, against the table size (no model or source root needed):

    .venv/bin/python bench/bench_stream.py --health-rows 20000,200000 [--new 200] [--batches 3]

For each size N: an item_visual table of N current rows (written with
``merge_history``, like the stream's writes) and bronze/items rows of those
items; then --batches micro-batches of --new new items plus --new/4 changed
items (their current rows closed), each merged as the stream merges it and
its health record made as the stream makes it (``record_write(..., "stream",
freshness=True)``), timed. Twice on identical data: ``incremental=False``
(every record over all current rows: before) and ``incremental=True``
(after). Printed: seconds per micro-batch's health record for each size and
mode, the records' mode, and the largest differences between the two
modes' records (counts must be equal, quantiles within SKETCH_ALPHA).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def png(rng, size=64) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _health_run(spark, work: Path, n: int, new: int, batches: int, incremental: bool) -> list[tuple[float, dict]]:
    """One table of ``n`` rows, ``batches`` micro-batches: (health seconds, record) per batch."""
    import datetime as dt

    import pandas as pd

    from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, ITEM_VISUAL_KEYS, merge_history
    from courier_spark.features.health import record_write
    from courier_spark.core.paths import TablePaths

    root = work / f"health-{n}-{'incremental' if incremental else 'full'}"
    if root.exists():
        shutil.rmtree(root)
    p = TablePaths.for_root(str(root))
    rng = np.random.default_rng(n)   # the same data for both modes

    def rows(ids: np.ndarray, t: dt.datetime):
        return pd.DataFrame({"item_id": ids.astype(np.int64),
                             "courier_cluster_id": rng.integers(0, 64, len(ids)).astype(np.int32),
                             "distance": rng.gamma(2.0, 0.3, len(ids)).astype(np.float32),
                             "model_version": "courier/v0001", "centroid_version": "c0001",
                             "item_updated_at": pd.Timestamp(t)})

    def land_and_merge(df) -> None:
        spark.createDataFrame(df[["item_id", "item_updated_at"]].rename(columns={"item_updated_at": "updated_at"})
                              ).write.format("delta").mode("append").save(p.bronze_items)
        merge_history(spark, spark.createDataFrame(df), p.item_visual_features, ITEM_VISUAL_KEYS,
                      ITEM_VISUAL_COMMENTS)

    now = lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # noqa: E731
    land_and_merge(rows(np.arange(1, n + 1), now()))
    record_write(spark, p, "features", incremental=incremental)
    out, next_id = [], n + 1
    for b in range(batches):
        ids = np.r_[np.arange(next_id, next_id + new), rng.choice(np.arange(1, next_id), new // 4, replace=False)]
        next_id += new
        land_and_merge(rows(ids, now()))
        t0 = time.perf_counter()
        r = record_write(spark, p, "stream", batch_id=b, freshness=True, incremental=incremental)
        out.append((time.perf_counter() - t0, r))
    shutil.rmtree(root)
    return out


def health_bench(args) -> None:
    """--health-rows: micro-batch health seconds against the table size, before and after."""
    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.core.spark import get_spark

    cfg = load_config(DEMO_CONFIG, args.overrides)
    spark = get_spark(cfg.spark)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-health-"))
    for mode in (False, True):   # warm-up (JIT, first Delta reads): not printed
        _health_run(spark, work, 1000, 50, 1, mode)
    summary = []
    for n in (int(x) for x in args.health_rows.split(",")):
        runs = {mode: _health_run(spark, work, n, args.new, args.batches, mode) for mode in (False, True)}
        for mode, res in runs.items():
            secs = [t for t, _ in res]
            print(f"[bench health] {n} rows, {'incremental' if mode else 'full (before)'}: health per micro-batch "
                  f"{', '.join(f'{t:.2f}' for t, _ in res)} s (median {np.median(secs):.2f} s); records: "
                  f"{', '.join(r['stats_mode'] for _, r in res)}", flush=True)
            summary.append((n, mode, float(np.median(secs))))
        counts = ("rows", "written_rows", "null_cluster_id", "null_distance", "n_clusters", "cluster_size_min",
                  "cluster_size_max", "cluster_sizes", "fresh_rows")
        same = all(a[k] == b[k] for (_, a), (_, b) in zip(runs[False], runs[True]) for k in counts)
        qerr = max(abs(b[k] - a[k]) / abs(a[k]) for (_, a), (_, b) in zip(runs[False], runs[True])
                   for k in ("distance_p50", "distance_p90", "distance_p99"))
        merr = max(abs(b["distance_mean"] - a["distance_mean"]) / abs(a["distance_mean"])
                   for (_, a), (_, b) in zip(runs[False], runs[True]))
        print(f"[bench health] {n} rows: counts and cluster sizes equal in both modes: {same}; largest relative "
              f"difference: quantiles {qerr:.2e} (bound {runs[True][-1][1]['distance_q_rel_error']}), "
              f"mean {merr:.1e}", flush=True)
    print("[bench health] summary (median s per micro-batch): "
          + "; ".join(f"{n} rows {'incremental' if m else 'full'} {s:.2f}" for n, m, s in summary), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?")
    ap.add_argument("--health-rows", default=None,
                    help="comma-separated item_visual sizes: time each micro-batch's health record only")
    ap.add_argument("--work", default=None)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.health_rows:
        return health_bench(args)
    if not args.source:
        ap.error("SOURCE_ROOT is needed (or --health-rows)")

    import datetime as dt

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.data.contract import ITEMS_SCHEMA
    from courier_spark.features.feature_tables import current_rows
    from courier_spark.serving.online import RedisSettings, materialise_item_visual
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.serving.stream import read_ledger

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-stream-"))
    root = work / "ds"
    if root.exists():
        shutil.rmtree(root)
    for d in ("bronze", "silver", "gold", "quarantine", "models"):
        shutil.copytree(Path(args.source) / d, root / d)
    p = TablePaths.for_root(str(root))
    cfg = load_config(DEMO_CONFIG, args.overrides)
    spark = get_spark(cfg.spark)
    n_catalogue = spark.read.format("delta").load(p.silver_items).count()
    print(f"[bench stream] root {root}: {n_catalogue} catalogue items", flush=True)

    log = work / "stream.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    proc = subprocess.Popen([sys.executable, "-m", "courier_spark.cli", "stream", "--root", str(root),
                             "--set", "stream.trigger=processing_time", "--set", "stream.interval_seconds=1",
                             *sum((["--set", o] for o in args.overrides), [])],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    rows_out = []
    try:
        t0 = time.time()
        while "query on bronze/items" not in log.read_text():
            if proc.poll() is not None:
                sys.exit(f"stream exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        catch = [ln for ln in log.read_text().splitlines() if "catching up" in ln and "done in" in ln]
        print(f"[bench stream] catch-up of {n_catalogue} items (stored embeddings, assign + merge): "
              f"{catch[0].rsplit('done in', 1)[1].strip() if catch else '?'}; stream ready after "
              f"{time.time() - t0:.1f}s", flush=True)
        raw = T.StructType([T.StructField(f.name, f.dataType, True) for f in ITEMS_SCHEMA.fields])
        rng = np.random.default_rng(0)
        next_id = int(spark.read.format("delta").load(p.bronze_items).agg(F.max("item_id")).first()[0]) + 1
        for b in range(args.batches):
            ids = list(range(next_id, next_id + args.new))
            next_id += args.new
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            rows = [(i, f"bench{i % 5}", f"bench item {i}", 9.9, png(rng), now) for i in ids]
            spark.createDataFrame(rows, raw).write.format("delta").mode("append").save(p.bronze_items)
            landed = (spark.sql(f"DESCRIBE HISTORY delta.`{p.bronze_items}` LIMIT 1").first()["timestamp"])
            while True:
                done = [x for x in read_ledger(spark, p) if x["rows_in"] and x["new"] >= args.new
                        and x["finished_at"] >= landed]
                if done:
                    break
                if proc.poll() is not None:
                    sys.exit(f"stream exited:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            vf = (current_rows(spark.read.format("delta").load(p.item_visual_features))
                  .filter(F.col("item_id").isin(ids)).select("valid_from").toPandas()["valid_from"])
            lat = (vf - landed).dt.total_seconds()
            # When the rows became readable: the commit that inserted them (change data feed).
            vis = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 0)
                   .load(p.item_visual_features).filter(F.col("item_id").isin(ids) & (F.col("_change_type") == "insert"))
                   .agg(F.max("_commit_timestamp")).first()[0])
            visible = (vis - landed).total_seconds() if vis is not None else float("nan")
            line = [ln for ln in log.read_text().splitlines() if f"batch {done[0]['batch_id']}:" in ln]
            secs = float(line[0].rsplit("(", 1)[1].rstrip("s)")) if line else float("nan")
            rows_out.append((len(vf), secs, lat.median(), visible))
            print(f"[bench stream] batch {done[0]['batch_id']}: {len(vf)}/{args.new} items got features; "
                  f"micro-batch {secs:.1f}s = {len(vf) / secs:.1f} items/s; landing -> feature row "
                  f"valid_from median {lat.median():.1f}s, max {lat.max():.1f}s; readable (commit) after {visible:.1f}s",
                  flush=True)
            print(f"[bench stream]   phases (s): {done[0].get('seconds')}", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    exe = shutil.which("redis-server")
    if not exe:
        print("[bench stream] redis-server not installed: online materialisation skipped")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    redis = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        st = RedisSettings("127.0.0.1", port, key_prefix="bench:")
        full = materialise_item_visual(spark, p.item_visual_features, st, batch_size=cfg.online.batch_size)
        again = materialise_item_visual(spark, p.item_visual_features, st, batch_size=cfg.online.batch_size)
        print(f"[bench stream] online full load: {full['written']} rows in {full['seconds']:.1f}s = "
              f"{full['rows_per_second']} rows/s; re-run wrote {again['written']} ({again['mode']})")
    finally:
        redis.terminate()
    if rows_out:
        n = sum(r[0] for r in rows_out)
        s = sum(r[1] for r in rows_out)
        print(f"[bench stream] summary: {n} new items over {len(rows_out)} micro-batches, "
              f"{n / s:.1f} items/s inside micro-batches; landing -> readable feature row: median "
              f"{np.median([r[3] for r in rows_out]):.1f}s, worst {max(r[3] for r in rows_out):.1f}s")


if __name__ == "__main__":
    main()

"""Time sample assembly (sessions + point-in-time histories + both sample
tables, written to Delta) at several sizes and print rows/s and the scaling ratios.

    .venv/bin/python bench/bench_samples.py [--users 1500] [--scales 1 4 16] [--root /tmp/courier-bench]

Each size multiplies users (and so impressions) by a scale; a time ratio
near the rows ratio means linear scaling. The catalogue stays the same.
"""
from __future__ import annotations

import argparse
import time

from courier_spark.core.config import DEMO_CONFIG, load_config
from courier_spark.core.paths import TablePaths
from courier_spark.core.spark import get_spark
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.core.tables import read_table


def time_samples(spark, root: str, n_users: int, n_items: int, days: int) -> tuple[int, float]:
    cfg = load_config(DEMO_CONFIG, [f"synthetic.n_users={n_users}", f"synthetic.n_items={n_items}",
                             f"synthetic.n_days={days}", "synthetic.image_size=16",
                             "validate.check_images=false"])
    ctx = StageContext(spark, cfg, TablePaths.for_root(root))
    run_stage("generate", ctx)
    run_stage("validate", ctx)
    n = read_table(spark, ctx.paths.silver_impressions).count()
    t0 = time.perf_counter()
    run_stage("samples", ctx)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--root", default="/tmp/courier-bench")
    a = ap.parse_args()
    spark = get_spark(load_config(DEMO_CONFIG).spark)
    # warm-up run so JVM start and JIT do not count against the first size
    time_samples(spark, f"{a.root}/warm", 200, 400, a.days)
    runs = []
    for k in a.scales:
        n, t = time_samples(spark, f"{a.root}/x{k}", a.users * k, a.items, a.days)
        runs.append((k, n, t))
        print(f"[bench_samples] {k}x: {n:,} impressions in {t:.1f}s", flush=True)
    print(f"\nsample assembly (sessions, histories, pretrain + ctr samples, Delta writes), "
          f"{spark.sparkContext.defaultParallelism} cores, {a.items:,} items, {a.days} days")
    print("| scale | impressions | time | rows/s | rows ratio | time ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    _, n1, t1 = runs[0]
    for k, n, t in runs:
        print(f"| {k}x | {n:,} | {t:.1f} s | {n / t:,.0f} | {n / n1:.2f} | {t / t1:.2f} |")


if __name__ == "__main__":
    main()

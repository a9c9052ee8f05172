"""Time sample assembly (sessions + point-in-time histories + both sample
tables, written to Delta) at two sizes and print rows/s and the scaling ratio.

    .venv/bin/python bench/bench_samples.py [--users 1500] [--scale 4] [--root /tmp/courier-bench]

The second size multiplies users (and so impressions) by --scale; a ratio of
time near --scale means linear scaling.
"""
from __future__ import annotations

import argparse
import time

from courier_spark.config import load_config
from courier_spark.paths import TablePaths
from courier_spark.spark import get_spark
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.tables import read_table


def time_samples(spark, root: str, n_users: int, n_items: int, days: int) -> tuple[int, float]:
    cfg = load_config(None, [f"synthetic.n_users={n_users}", f"synthetic.n_items={n_items}",
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
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--root", default="/tmp/courier-bench")
    a = ap.parse_args()
    spark = get_spark(load_config().spark)
    # warm-up run so JVM start and JIT do not count against the first size
    time_samples(spark, f"{a.root}/warm", 200, 400, a.days)
    n1, t1 = time_samples(spark, f"{a.root}/x1", a.users, a.items, a.days)
    n2, t2 = time_samples(spark, f"{a.root}/x{a.scale}", a.users * a.scale, a.items, a.days)
    print(f"\nsample assembly (sessions, histories, pretrain + ctr samples, Delta writes), "
          f"{spark.sparkContext.defaultParallelism} cores")
    print(f"  1x: {n1:>10,} impressions in {t1:7.1f}s = {n1 / t1:>10,.0f} rows/s")
    print(f"  {a.scale}x: {n2:>10,} impressions in {t2:7.1f}s = {n2 / t2:>10,.0f} rows/s")
    print(f"  rows ratio {n2 / n1:.2f}, time ratio {t2 / t1:.2f} "
          f"(throughput ratio {(n2 / t2) / (n1 / t1):.2f}; 1.0 = linear)")


if __name__ == "__main__":
    main()

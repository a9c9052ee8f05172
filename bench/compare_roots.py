"""Compare the Delta tables of two dataset roots row for row.

    .venv/bin/python bench/compare_roots.py ROOT_A ROOT_B [--tables silver/ctr_samples ...]

Prints, per table, the row counts and the rows in one root but not the other
(``exceptAll`` both ways, so duplicates count), ignoring write-time columns
(``updated_at``, ``created_at``). Exit status 1 if any table differs. Used to
check that a refactor leaves the pipeline's outputs unchanged on the same seed.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_TABLES = ("bronze/items", "bronze/impressions", "silver/items", "silver/impressions",
                  "quarantine/items", "quarantine/impressions", "silver/pretrain_samples", "silver/ctr_samples",
                  "gold/item_embeddings", "gold/centroids", "feature_store/item_visual",
                  "feature_store/impression_visual")
WRITE_TIME = ("updated_at", "created_at")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tables", nargs="*", default=list(DEFAULT_TABLES))
    args = ap.parse_args()
    from courier_spark.config import SparkConfig
    from courier_spark.paths import TablePaths
    from courier_spark.spark import get_spark
    spark = get_spark(SparkConfig(app_name="compare-roots"))
    pa, pb = TablePaths.for_root(args.a), TablePaths.for_root(args.b)
    differ = 0
    for t in args.tables:
        layer, name = t.split("/")
        da = spark.read.format("delta").load(pa.table(layer, name))
        db = spark.read.format("delta").load(pb.table(layer, name))
        cols = sorted(c for c in da.columns if c not in WRITE_TIME)
        if sorted(c for c in db.columns if c not in WRITE_TIME) != cols:
            print(f"{t}: columns differ: {sorted(da.columns)} vs {sorted(db.columns)}")
            differ += 1
            continue
        da, db = da.select(*cols), db.select(*cols)
        only_a, only_b = da.exceptAll(db).count(), db.exceptAll(da).count()
        same = only_a == 0 and only_b == 0
        differ += not same
        print(f"{t:<34} rows {da.count():>8} vs {db.count():>8}  only in A {only_a:>6}  only in B {only_b:>6}  "
              f"{'EQUAL' if same else 'DIFFERENT'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

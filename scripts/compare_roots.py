"""Compare the Delta tables of two dataset roots row for row (a restructuring
must not change what the pipeline writes). Columns that record when a row
was written (updated_at, valid_from, valid_to, created_at) are left out; everything
else, including model and centroid versions, must be equal.

    .venv/bin/python scripts/compare_roots.py ROOT_A ROOT_B [layer/table ...]

Prints one line per table and exits 1 when any differs."""
from __future__ import annotations

import sys

from courier_spark.core.catalog import CATALOG
from courier_spark.core.schema import SparkConfig
from courier_spark.core.fs import join
from courier_spark.core.spark import get_spark
from courier_spark.core.tables import table_exists

WRITE_TIME_COLUMNS = {"updated_at", "valid_from", "valid_to", "created_at"}


def main(argv: list[str]) -> int:
    a, b, *names = argv
    spark = get_spark(SparkConfig(shuffle_partitions=4, app_name="compare-roots"))
    differ = 0
    for name in names or list(CATALOG):
        pa, pb = join(a, name), join(b, name)
        ea, eb = table_exists(spark, pa), table_exists(spark, pb)
        if not (ea or eb):
            continue
        if ea != eb:
            print(f"{name}: only in {'A' if ea else 'B'}")
            differ += 1
            continue
        da, db = spark.read.format("delta").load(pa), spark.read.format("delta").load(pb)
        cols = sorted(set(da.columns) - WRITE_TIME_COLUMNS)
        if cols != sorted(set(db.columns) - WRITE_TIME_COLUMNS):
            print(f"{name}: columns differ: {sorted(da.columns)} vs {sorted(db.columns)}")
            differ += 1
            continue
        da, db = da.select(*cols), db.select(*cols)
        only_a, only_b = da.exceptAll(db).count(), db.exceptAll(da).count()
        status = "equal" if only_a == only_b == 0 else f"DIFFER ({only_a} rows only in A, {only_b} only in B)"
        differ += status != "equal"
        print(f"{name}: {da.count()} vs {db.count()} rows, {len(cols)} columns: {status}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

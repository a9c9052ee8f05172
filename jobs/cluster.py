"""spark-submit entry point for `courier cluster` (see README)."""
from courier_spark.cli import job_main

if __name__ == "__main__":
    job_main("cluster")

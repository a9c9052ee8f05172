"""spark-submit entry point for `courier train` (same flags as the CLI; see README)."""
from courier_spark.cli import job_main

if __name__ == "__main__":
    job_main("train")

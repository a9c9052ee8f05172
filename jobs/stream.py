"""spark-submit entry point for `courier stream` (same flags as the CLI; see README)."""
from courier_spark.cli import job_main

if __name__ == "__main__":
    job_main("stream")

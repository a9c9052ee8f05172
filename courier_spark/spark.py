"""The one SparkSession builder.

Local mode with Delta by default: Delta's JVM package is resolved by Spark
from Maven Central (``spark.jars.packages``) and cached in the Ivy cache, so
only the first start on a machine downloads it. When the driver was launched
by ``spark-submit`` (the JVM already exists and owns master/packages), only
the session-level settings are applied.
"""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from .config import SparkConfig

log = logging.getLogger(__name__)

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def launched_by_spark_submit() -> bool:
    # spark-submit's PythonRunner starts the JVM first and hands its gateway
    # to the Python driver through these variables.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Return the (possibly existing) SparkSession configured for Delta."""
    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(cfg.app_name)
    settings = {
        **DELTA_SQL_CONF,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        # One clock for every job: windows and days are UTC.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        # Delta's own retention check stays on; small tables should not spawn
        # hundreds of tiny files on 2 cores.
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
    }
    if not launched_by_spark_submit():
        # Local mode talks only to itself; binding to loopback avoids the
        # "hostname resolves to a loopback address" warning on every start.
        if (cfg.master or "").startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            # Delta rebuilds a table's state with 50 partitions by default:
            # measured as most of the CPU of a small MERGE (and ~60 s per
            # small CLI job) on 2 cores. Clusters keep Delta's default.
            settings["spark.databricks.delta.snapshotPartitions"] = "2"
        if cfg.master:
            builder = builder.master(cfg.master)
        settings["spark.driver.memory"] = cfg.driver_memory
        # Workers must run the same interpreter (the project .venv); PySpark
        # reads the worker interpreter from this variable, not from conf.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if cfg.jars:
            settings["spark.jars"] = cfg.jars
        else:
            settings["spark.jars.packages"] = cfg.delta_package
        settings["spark.driver.extraJavaOptions"] = "-Dio.netty.tryReflectionSetAccessible=true"
    for k, v in {**settings, **{k: str(v) for k, v in (cfg.extra or {}).items()}}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark

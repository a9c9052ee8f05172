"""The one SparkSession builder.

Local mode with Delta by default. Delta's JVM jars come from, in order:
``cfg.jars`` when set; else the list ``scripts/bootstrap.sh`` resolved once at
set-up (``<venv>/courier-delta-jars.txt``, one absolute jar path a line, for
exactly ``cfg.delta_package``) when every listed file is present; else
``spark.jars.packages`` (Ivy resolves the package at every start and prints
its resolution report). When the driver was launched by ``spark-submit`` (the
JVM already exists and owns master/jars/logging), only the session-level
settings are applied.

A local driver also gets hadoop-aws (Spark's ``s3a://`` connector) and its AWS
SDK bundle on its classpath when ``scripts/s3_jars.sh`` listed them for the
running PySpark's Hadoop version (``<venv>/courier-s3a-jars.txt``) and
``spark.extra`` names an ``fs.s3a.*`` setting: on the
classpath, not in ``spark.jars``, so the ~560 MB bundle is not copied to the
executor's scratch at every start, and *after* Spark's own jars
(``SPARK_DIST_CLASSPATH``, which Spark's launcher appends), because the bundle
also carries an unshaded slf4j 1.x API: first on the classpath (as
``spark.driver.extraClassPath`` puts it), it turns every JVM log line into
slf4j's no-operation logger. Clusters bring their own connector.

Local starts also get ``conf/log4j2.properties`` (console at WARN, known-noisy
loggers at ERROR) through the driver's JVM options, and
``courier_spark.core.noise.silence_third_party_warnings()`` runs before the JVM and
the Python workers start, so they inherit its ``PYTHONWARNINGS`` (also passed
as ``spark.executorEnv.PYTHONWARNINGS`` for executors on a cluster).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pyspark.sql import SparkSession

from courier_spark.core.schema import SparkConfig
from courier_spark.core.noise import silence_third_party_warnings
from courier_spark.core.resources import data_dir

log = logging.getLogger(__name__)

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Written by scripts/bootstrap.sh; spark.delta_jars_file points elsewhere.
DELTA_JARS_FILE_NAME = "courier-delta-jars.txt"
# The list's header line naming the package its jars were resolved for.
DELTA_JARS_HEADER = "# package: "
LOG4J2_PROPERTIES = data_dir("conf") / "log4j2.properties"   # checkout or wheel (courier_spark.core.resources)
NETTY_OPTS = "-Dio.netty.tryReflectionSetAccessible=true"


def launched_by_spark_submit() -> bool:
    # spark-submit's PythonRunner starts the JVM first and hands its gateway
    # to the Python driver through these variables.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def delta_jars_file(configured: str = "") -> Path:
    """Where bootstrap.sh lists the resolved Delta jars: ``spark.delta_jars_file``,
    else the running environment's own list."""
    return Path(configured) if configured else Path(sys.prefix) / DELTA_JARS_FILE_NAME


def read_delta_jars(list_file: str | os.PathLike, package: str) -> list[str] | None:
    """The jar paths of ``list_file`` when it was resolved for ``package`` and
    every listed file exists; None otherwise (missing or unreadable list,
    another package, a jar deleted since, an empty list)."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    headers = [ln[len(DELTA_JARS_HEADER):].strip() for ln in lines if ln.startswith(DELTA_JARS_HEADER)]
    jars = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if headers != [package] or not jars:
        return None
    if not all(os.path.isabs(j) and os.path.isfile(j) for j in jars):
        return None
    return jars


def jar_settings(cfg: SparkConfig, list_file: str | os.PathLike | None = None) -> dict[str, str]:
    """``spark.jars`` or ``spark.jars.packages`` for Delta (see the module doc).
    Pure: reads only ``list_file`` (default ``delta_jars_file(cfg.delta_jars_file)``)."""
    if cfg.jars:
        return {"spark.jars": cfg.jars}
    jars = read_delta_jars(delta_jars_file(cfg.delta_jars_file) if list_file is None else list_file,
                           cfg.delta_package)
    if jars:
        return {"spark.jars": ",".join(jars)}
    return {"spark.jars.packages": cfg.delta_package}


# Written by scripts/s3_jars.sh: hadoop-aws + AWS SDK bundle for s3a:// roots.
S3A_JARS_FILE_NAME = "courier-s3a-jars.txt"


def pyspark_hadoop_version() -> str | None:
    """The Hadoop version PySpark bundles (its ``hadoop-client-api-<v>.jar``)."""
    import pyspark
    found = sorted(Path(pyspark.__file__).parent.joinpath("jars").glob("hadoop-client-api-*.jar"))
    return found[0].name[len("hadoop-client-api-"):-len(".jar")] if found else None


def s3a_classpath(list_file: str | os.PathLike | None = None) -> list[str]:
    """hadoop-aws and its SDK bundle when ``scripts/s3_jars.sh`` resolved them
    for this PySpark's Hadoop; else nothing (``s3a://`` then fails in Spark with
    ClassNotFoundException S3AFileSystem)."""
    version = pyspark_hadoop_version()
    if version is None:
        return []
    return read_delta_jars(Path(sys.prefix) / S3A_JARS_FILE_NAME if list_file is None else list_file,
                           f"org.apache.hadoop:hadoop-aws:{version}") or []


def appended_classpath(jars: list[str], current: str | None) -> str | None:
    """``SPARK_DIST_CLASSPATH`` with ``jars`` after what it already holds (Spark's
    launcher puts it after Spark's own jars); None when there is nothing to add."""
    missing = [j for j in jars if j not in (current or "").split(os.pathsep)]
    if not missing:
        return None
    return os.pathsep.join([*filter(None, [current]), *missing])


def driver_java_options(log4j2_file: str | os.PathLike | None = LOG4J2_PROPERTIES) -> str:
    """The local driver's JVM options: netty reflection, and our log4j2 file when it exists."""
    opts = [NETTY_OPTS]
    if log4j2_file is not None and Path(log4j2_file).is_file():
        # A file: URI, so a path with spaces survives Spark's option splitting.
        opts.append(f"-Dlog4j2.configurationFile={Path(log4j2_file).resolve().as_uri()}")
    return " ".join(opts)


def worker_env_settings() -> dict[str, str]:
    """Executor environment for Python workers: the warning filters of
    ``silence_third_party_warnings`` (on a cluster the executors do not
    inherit the driver's environment; locally this matches it)."""
    value = os.environ.get("PYTHONWARNINGS", "")
    return {"spark.executorEnv.PYTHONWARNINGS": value} if value else {}


def flat_settings(extra: dict, prefix: str = "") -> dict[str, str]:
    """``spark.extra`` as Spark settings: nested mappings (what ``--set
    spark.extra.spark.hadoop.fs.s3a.endpoint=...`` or nested YAML makes) are
    joined with dots, values become strings."""
    out: dict[str, str] = {}
    for k, v in extra.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_settings(v, key + "."))
        else:
            out[key] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _scratch_warehouse() -> str:
    d = tempfile.mkdtemp(prefix="courier-warehouse-")
    atexit.register(shutil.rmtree, d, True)
    return d


def session_settings(cfg: SparkConfig) -> dict[str, str]:
    """The session-level settings every courier session gets, under spark-submit
    too (Delta's SQL extension and catalog, UTC, Arrow, AQE); ``spark.extra`` not included."""
    return {
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


def launch_settings(cfg: SparkConfig) -> dict[str, str]:
    """What a driver JVM that Python launches itself (not spark-submit) needs on
    top: Delta's jars, the s3a connector when configured, memory, JVM options.
    Pure apart from reading the resolved jar lists. ``spark.master`` not included."""
    settings = {"spark.driver.memory": cfg.driver_memory}
    if (cfg.master or "").startswith("local"):
        # Delta rebuilds a table's state with 50 partitions by default:
        # measured as most of the CPU of a small MERGE (and ~60 s per
        # small CLI job) on 2 cores. Clusters keep Delta's default.
        settings["spark.databricks.delta.snapshotPartitions"] = "2"
    jars = jar_settings(cfg)
    if "spark.jars.packages" in jars:
        log.debug("no resolved Delta jar list at %s: Spark resolves %s at start",
                  delta_jars_file(cfg.delta_jars_file), cfg.delta_package)
    settings.update(jars)
    # JVM options only take effect here because pyspark launches the
    # driver JVM (spark-submit) with these settings after this point.
    settings["spark.driver.extraJavaOptions"] = driver_java_options()
    return settings


def wants_s3a_jars(cfg: SparkConfig) -> bool:
    """A local driver whose config names S3A settings gets the s3a connector's jars."""
    return (cfg.master or "local").startswith("local") and any(
        k.startswith("spark.hadoop.fs.s3a.") for k in flat_settings(cfg.extra or {}))


def _mute_query_context_echo() -> None:
    """PySpark 4 logs every SQL/DataFrame analysis error once more, when the
    exception is made, to its own stderr handler (``pyspark.errors.exceptions.
    base._log_exception``): an error the CLI prints as one line would come with
    a second, JSON one. The run log keeps the exception's traceback anyway."""
    from pyspark.logger import PySparkLogger
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).disabled = True


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Return the (possibly existing) SparkSession configured for Delta."""
    cfg = cfg or SparkConfig()
    _mute_query_context_echo()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Before the JVM and any Python worker start: they inherit PYTHONWARNINGS.
    silence_third_party_warnings()
    builder = SparkSession.builder.appName(cfg.app_name)
    settings = {
        **session_settings(cfg),
        # Every table is addressed by path; the catalog's default warehouse
        # (./spark-warehouse, created on first catalog use) would only litter
        # the working directory, so it goes to scratch that is removed at exit.
        "spark.sql.warehouse.dir": _scratch_warehouse(),
        **worker_env_settings(),
    }
    if not launched_by_spark_submit():
        # Local mode talks only to itself; binding to loopback avoids the
        # "hostname resolves to a loopback address" warning on every start.
        if (cfg.master or "").startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        if cfg.master:
            builder = builder.master(cfg.master)
        # Workers must run the same interpreter (the project .venv); PySpark
        # reads the worker interpreter from this variable, not from conf.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        settings.update(launch_settings(cfg))
        if wants_s3a_jars(cfg):
            # Set before the JVM starts: the launcher reads it from the environment.
            dist = appended_classpath(s3a_classpath(), os.environ.get("SPARK_DIST_CLASSPATH"))
            if dist is not None:
                os.environ["SPARK_DIST_CLASSPATH"] = dist
    for k, v in {**settings, **flat_settings(cfg.extra or {})}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark

"""Run the analyst SQL files in ``sql/`` against a dataset root.

The files reference tables as ``delta.`${root}/<layer>/<table>``` so they run
as-is in spark-sql (``SET root=...;`` enables Spark's own substitution) or
through ``run_sql_file``, which substitutes ``${root}``, checks that every
referenced Delta table exists (naming the stage that makes a missing one),
and runs the single statement.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from ..catalog import CATALOG
from ..paths import TablePaths
from ..tables import MissingTableError, table_exists, write_table

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

_DELTA_REF = re.compile(r"delta\.`([^`]+)`", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Which stage writes each table a query may read (for the error message).

PREDICTIONS_SCHEMA = T.StructType([
    T.StructField("variant", T.StringType(), False),
    T.StructField("model_kind", T.StringType(), False),
    # Encoder / centroids behind the variant's image features (null for the baseline).
    T.StructField("model_version", T.StringType(), True),
    T.StructField("centroid_version", T.StringType(), True),
    T.StructField("event_id", T.StringType(), True),
    T.StructField("request_id", T.StringType(), True),
    T.StructField("session_id", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("label", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
])


def strip_sql_comments(sql: str) -> str:
    """Remove ``--`` and ``/* */`` comments outside quoted strings/identifiers."""
    out, i, n, quote = [], 0, len(sql), None
    while i < n:
        c = sql[i]
        if quote:
            out.append(c)
            if c == quote:
                quote = None
            i += 1
        elif c in "'\"`":
            quote = c
            out.append(c)
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _single_statement(sql: str, where: str) -> str:
    body = strip_sql_comments(sql).strip()
    quote = None
    for i, c in enumerate(body):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"`":
            quote = c
        elif c == ";" and body[i + 1:].strip():
            raise ValueError(f"{where}: holds more than one SQL statement; run_sql_file runs exactly one")
    body = body.rstrip().rstrip(";").strip()
    if not body:
        raise ValueError(f"{where}: no SQL statement")
    return body


def render_sql(sql: str, root: str, where: str = "sql") -> str:
    """Substitute ``${root}`` (made absolute for local roots); any other
    ``${...}`` placeholder is an error."""
    root_abs = TablePaths.for_root(root).root
    unknown = sorted({m for m in _PLACEHOLDER.findall(strip_sql_comments(sql)) if m != "root"})
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {unknown}; only ${{root}} is substituted")
    return sql.replace("${root}", root_abs)


def referenced_tables(sql: str) -> list[str]:
    """Paths of the ``delta.`path``` tables a (rendered) statement reads."""
    return list(dict.fromkeys(_DELTA_REF.findall(strip_sql_comments(sql))))


def run_sql_file(spark: SparkSession, path: str | Path, root: str) -> DataFrame:
    """Run the single statement in ``path`` with ``${root}`` substituted; a
    relative ``path`` that does not exist is looked up in the repo's ``sql/``."""
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (SQL_DIR / p).exists():
        p = SQL_DIR / p
    if not p.exists():
        raise FileNotFoundError(f"SQL file not found: {path}")
    where = str(p)
    stmt = _single_statement(render_sql(p.read_text(), root, where), where)
    root_abs = TablePaths.for_root(root).root.rstrip("/")
    for table in referenced_tables(stmt):
        if not table_exists(spark, table):
            rel = table[len(root_abs) + 1:] if table.startswith(root_abs + "/") else table
            entry = CATALOG.get(rel)
            stage = entry.made_by if entry else None
            hint = f"; run `courier {stage}` first" if stage else ""
            raise MissingTableError(f"{p.name}: no Delta table at {table} (table '{rel}'){hint}")
    return spark.sql(stmt)


def write_predictions(spark: SparkSession, predictions: pd.DataFrame, path: str,
                      partition_by: tuple[str, ...] = ()) -> int:
    """Write a runner predictions frame as the Delta table the SQL reads
    (``gold/predictions``, atomic overwrite); returns the table version.
    Unpartitioned by default: a few hundred thousand rows fit one file."""
    cols = [f.name for f in PREDICTIONS_SCHEMA.fields]
    predictions = predictions.copy()
    for c in ("model_version", "centroid_version"):   # optional: toy/ad-hoc runs have none
        if c not in predictions.columns:
            predictions[c] = None
    missing = [c for c in cols if c not in predictions.columns]
    if missing:
        raise KeyError(f"predictions frame lacks columns {missing}")
    pdf = predictions[cols].copy()
    for c in ("variant", "model_kind", "model_version", "centroid_version", "event_id", "request_id", "session_id", "category"):
        pdf[c] = pdf[c].astype(object).where(pdf[c].notna(), None).map(lambda v: None if v is None else str(v))
    pdf["label"] = pdf["label"].astype("int32")
    pdf["score"] = pdf["score"].astype("float64")
    df = spark.createDataFrame(pdf, PREDICTIONS_SCHEMA)
    return write_table(df, path, partition_by=partition_by)

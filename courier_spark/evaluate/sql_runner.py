"""Run the analyst SQL files in ``sql/`` against a dataset root.

The files reference tables as ``delta.`${root}/<layer>/<table>``` so they run
as-is in spark-sql (``SET root=...;`` enables Spark's own substitution) or
through ``run_sql_file``, which substitutes ``${root}``, checks that every
referenced Delta table exists (naming the stage that makes a missing one),
and runs the single statement.

``prepare_sql`` and ``check_tables_exist`` do the same checks without Spark
(``courier sql`` runs them before the JVM starts, so each mistake costs a
second, not a Spark start); every mistake is a ``CourierError``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from .. import fs
from ..catalog import CATALOG
from ..errors import SqlFileError
from ..paths import TablePaths
from ..resources import data_dir
from ..tables import MissingTableError, table_exists, write_table

# The shipped queries: the checkout's sql/ or the installed wheel's copy.
SQL_DIR = data_dir("sql")

_DELTA_REF = re.compile(r"delta\.`([^`]+)`", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A Delta table exists once its log holds a commit or a checkpoint.
# (Classic, multi-part and v2 checkpoints all start "<version>.checkpoint".)
_DELTA_LOG_ENTRY = re.compile(r"^(\d{20}\.json|\d{20}\.checkpoint(\.[^/]+)?\.(parquet|json)|_last_checkpoint)$")
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
            raise SqlFileError(f"{where}: holds more than one SQL statement; run_sql_file runs exactly one")
    body = body.rstrip().rstrip(";").strip()
    if not body:
        raise SqlFileError(f"{where}: no SQL statement")
    return body


def render_sql(sql: str, root: str, where: str = "sql") -> str:
    """Substitute ``${root}`` (made absolute for local roots); any other
    ``${...}`` placeholder is an error."""
    root_abs = TablePaths.for_root(root).root
    unknown = sorted({m for m in _PLACEHOLDER.findall(strip_sql_comments(sql)) if m != "root"})
    if unknown:
        raise SqlFileError(f"{where}: unknown placeholder(s) {unknown}; only ${{root}} is substituted")
    return sql.replace("${root}", root_abs)


def referenced_tables(sql: str) -> list[str]:
    """Paths of the ``delta.`path``` tables a (rendered) statement reads."""
    return list(dict.fromkeys(_DELTA_REF.findall(strip_sql_comments(sql))))


@dataclass(frozen=True)
class SqlQuery:
    """One analyst query, ready to run: its file, the rendered single
    statement and the Delta tables (paths) it reads."""
    path: Path
    statement: str
    tables: tuple[str, ...]


def shipped_queries() -> list[str]:
    """Names of the queries that ship with the code (``sql/*.sql``)."""
    return sorted(p.name for p in SQL_DIR.glob("*.sql"))


def find_sql_file(path: str | Path) -> Path:
    """``path`` itself when it is a file; else a shipped query of that name
    (``per_category_auc_lift.sql``, or without ``.sql``)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute():
        for candidate in (SQL_DIR / p, SQL_DIR / f"{p}.sql"):
            if candidate.is_file():
                return candidate
    if p.exists():
        raise SqlFileError(f"SQL file {path} is not a file")
    raise SqlFileError(f"SQL file not found: {path} (neither a file nor a shipped query; shipped: "
                       f"{', '.join(shipped_queries()) or 'none'})")


def prepare_sql(path: str | Path, root: str) -> SqlQuery:
    """Find and read the file, substitute ``${root}``, check it holds one
    statement and list the tables it reads; no Spark needed."""
    p = find_sql_file(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SqlFileError(f"cannot read SQL file {p}: {exc}") from None
    where = str(p)
    stmt = _single_statement(render_sql(text, root, where), where)
    return SqlQuery(p, stmt, tuple(referenced_tables(stmt)))


def _missing_table(query: SqlQuery, table: str, root: str) -> MissingTableError:
    root_abs = TablePaths.for_root(root).root.rstrip("/")
    rel = table[len(root_abs) + 1:] if table.startswith(root_abs + "/") else table
    entry = CATALOG.get(rel)
    stage = entry.made_by if entry else None
    hint = f"; run `courier {stage}` first" if stage else ""
    return MissingTableError(f"{query.path.name}: no Delta table at {table} (table '{rel}'){hint}")


def delta_table_exists(path: str) -> bool:
    """Whether ``path`` holds a Delta table (its log has a commit or a
    checkpoint), read through the filesystem layer: no Spark, no writes."""
    try:
        entries = fs.ls(fs.join(path, "_delta_log"))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return any(_DELTA_LOG_ENTRY.match(name) for name in entries)


def check_tables_exist(query: SqlQuery, root: str) -> None:
    """``MissingTableError`` (naming the stage that makes it) for the first
    table the query reads that does not exist; checked without Spark."""
    for table in query.tables:
        if not delta_table_exists(table):
            raise _missing_table(query, table, root)


def run_sql_file(spark: SparkSession, path: str | Path, root: str) -> DataFrame:
    """Run the single statement in ``path`` with ``${root}`` substituted; a
    relative ``path`` that does not exist is looked up in the shipped ``sql/``."""
    query = prepare_sql(path, root)
    for table in query.tables:
        if not table_exists(spark, table):
            raise _missing_table(query, table, root)
    return spark.sql(query.statement)


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

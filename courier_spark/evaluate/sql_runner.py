"""Run the analyst SQL files in ``sql/`` against a dataset root, read-only.

The files reference tables as ``delta.`${root}/<layer>/<table>``` so they run
as-is in spark-sql (``SET root=...;`` enables Spark's own substitution) or
through ``run_sql_file``, which substitutes ``${root}``, checks that every
referenced Delta table exists (naming the stage that makes a missing one),
checks that the statement only reads, and runs it.

``prepare_sql`` and ``check_tables_exist`` do the file checks without Spark
(``courier sql`` runs them before the JVM starts, so each mistake costs a
second, not a Spark start); every mistake is a ``CourierError``.

Read-only by construction (``check_read_only``): the statement is parsed by
the session's own parser (Spark's, with Delta's extension: the same parser
``spark.sql`` uses next, so what is checked is what would run) into an
unresolved plan, before anything is resolved against a table, and every node
of that plan -- children, CTE definitions, subqueries in expressions, the
query under EXPLAIN -- must be a class on ``READ_NODES``; the root may also
be one of ``READ_COMMANDS`` (DESCRIBE, SHOW COLUMNS / TBLPROPERTIES, EXPLAIN).
An allowlist: a statement kind this release has never heard of (a new Delta
command, a procedure call) is refused, not let through. Keywords in
comments or string literals do not matter, since the parser has already
dropped or quoted them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from courier_spark.core import delta_log
from courier_spark.core.catalog import CATALOG
from courier_spark.core.errors import MissingTableError, ReadOnlySqlError, SqlFileError
from courier_spark.core.paths import TablePaths
from courier_spark.core.resources import data_dir
from courier_spark.core.tables import table_exists, write_table

# The shipped queries: the checkout's sql/ or the installed wheel's copy.
SQL_DIR = data_dir("sql")

_DELTA_REF = re.compile(r"delta\.`([^`]+)`", re.IGNORECASE)
# Any ${...}: Spark substitutes ${var}, ${env:X}, ${system:X}, ${spark:X} itself
# (spark.sql.variable.substitute), so only ${root}, ours, may remain.
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
_ANALYSIS = "org.apache.spark.sql.catalyst.analysis."
# Unresolved plan nodes of a query (what Spark's parser yields for SELECT,
# WITH, VALUES, TABLE, set operations, joins, windows, pivots, hints, pipe
# syntax): none of them writes, runs a program or changes the session.
# Deliberately absent: ScriptTransformation (SELECT TRANSFORM ... USING runs a
# program), PlanWithUnresolvedIdentifier (IDENTIFIER(...) defers which plan is
# built, DROP TABLE IDENTIFIER('t') included), every command.
READ_NODES = frozenset({
    *(_LOGICAL + n for n in (
        "Project", "Filter", "Aggregate", "Join", "LateralJoin", "Union", "Intersect", "Except",
        "Distinct", "Deduplicate", "Sort", "GlobalLimit", "LocalLimit", "Limit", "Offset", "Tail",
        "SubqueryAlias", "UnresolvedWith", "WithWindowDefinition", "Window", "Generate", "Sample",
        "Pivot", "Unpivot", "Expand", "OneRowRelation", "LocalRelation", "Range",
        "RepartitionByExpression", "Repartition", "RebalancePartitions", "UnresolvedHint",
        "ResolvedHint", "CTERelationRef", "CTERelationDef", "WithCTE")),
    *(_ANALYSIS + n for n in (
        "UnresolvedRelation", "RelationTimeTravel", "UnresolvedHaving", "UnresolvedInlineTable",
        "UnresolvedTableValuedFunction", "UnresolvedSubqueryColumnAliases", "UnresolvedTVFAliases")),
    "org.apache.spark.sql.catalyst.expressions.PipeOperator",     # the |> pipe syntax
})
# Read-only commands, allowed as the whole statement only: their table is an
# unresolved name (the leaf below), and EXPLAIN's query is checked like any.
READ_COMMANDS = frozenset({
    _LOGICAL + "DescribeRelation", _LOGICAL + "DescribeColumn", _LOGICAL + "ShowColumns",
    _LOGICAL + "ShowTableProperties",
    "org.apache.spark.sql.delta.commands.DescribeDeltaHistory",
    "org.apache.spark.sql.delta.commands.DescribeDeltaDetailCommand",
    "org.apache.spark.sql.execution.command.ExplainCommand",
})
_COMMAND_LEAVES = frozenset({_ANALYSIS + "UnresolvedTableOrView", _ANALYSIS + "UnresolvedTable"})
_EXPLAIN = "org.apache.spark.sql.execution.command.ExplainCommand"
# Built-in functions that call any static JVM method by name (System.exit,
# System.setProperty, ...): outside the data, so refused in any expression.
JVM_CALLING_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect"})
_UNRESOLVED_FUNCTION = _ANALYSIS + "UnresolvedFunction"
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
    # Whether the encoder was pre-trained on page views of this category (from
    # the model's recorded train.categories; null for the baseline).
    T.StructField("seen", T.BooleanType(), True),
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
    return delta_log.table_exists(path)


def check_tables_exist(query: SqlQuery, root: str) -> None:
    """``MissingTableError`` (naming the stage that makes it) for the first
    table the query reads that does not exist; checked without Spark."""
    for table in query.tables:
        if not delta_table_exists(table):
            raise _missing_table(query, table, root)


def spark_error_line(exc: BaseException) -> str:
    """Spark's error message without its "== SQL ==" excerpt and caret lines."""
    text = str(exc).split("== SQL ==", 1)[0]
    return " ".join(text.split())[:400]


def _class_name(node) -> str:
    return node.getClass().getName()


def _seq(scala_seq) -> list:
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def _refuse(where: str, what: str) -> ReadOnlySqlError:
    return ReadOnlySqlError(
        f"{where}: refused unrun, the SQL path only reads: {what}; allowed: a query (SELECT, WITH, VALUES, "
        "TABLE), DESCRIBE [HISTORY|DETAIL], SHOW COLUMNS / TBLPROPERTIES, EXPLAIN of a query")


def _check_expressions(node, where: str) -> None:
    todo = _seq(node.expressions())
    while todo:
        e = todo.pop()
        if _class_name(e) == _UNRESOLVED_FUNCTION:
            name = str(e.nameParts().last()).lower()
            if name in JVM_CALLING_FUNCTIONS:
                raise _refuse(where, f"the statement calls {name}(), which runs any JVM method")
        todo.extend(_seq(e.children()))


def check_read_only(spark: SparkSession, statement: str, where: str = "sql") -> None:
    """``ReadOnlySqlError`` unless ``statement`` (one statement, ``${root}``
    already substituted) is a read, decided from the session parser's
    unresolved plan; a statement that does not parse is a ``SqlFileError``.
    Nothing is analysed, no table is read, nothing runs."""
    parser = spark._jsparkSession.sessionState().sqlParser()
    try:
        plan = parser.parsePlan(statement)
    except Exception as exc:  # noqa: BLE001 - Spark's ParseException (and anything py4j raises) -> one line
        raise SqlFileError(f"{where}: cannot parse the statement: {spark_error_line(exc)}") from None
    root = _class_name(plan)
    # (node, how a refusal names it): the statement itself, or a part of it.
    todo, allowed_leaves = [(plan, "the statement is")], frozenset()
    if root in READ_COMMANDS:
        # The command itself reads; its table is a name, and EXPLAIN's query
        # (not a child of the command) is checked like a statement of its own.
        allowed_leaves = _COMMAND_LEAVES
        todo = ([(plan.logicalPlan(), "EXPLAIN's statement is")] if root == _EXPLAIN
                else [(c, f"its {_simple(root)} holds") for c in _seq(plan.children())])
    while todo:
        node, how = todo.pop()
        name = _class_name(node)
        if name not in READ_NODES and name not in allowed_leaves:
            raise _refuse(where, f"{how} {_simple(name)}")
        _check_expressions(node, where)
        # children, CTE definitions (inner children) and subqueries in expressions
        todo.extend((n, "it holds") for n in
                    _seq(node.children()) + _seq(node.innerChildren()) + _seq(node.subqueries()))


def _simple(class_name: str) -> str:
    return class_name.rsplit(".", 1)[-1].rstrip("$")


def run_sql_file(spark: SparkSession, path: str | Path, root: str) -> DataFrame:
    """Run the single statement in ``path`` with ``${root}`` substituted; a
    relative ``path`` that does not exist is looked up in the shipped ``sql/``.
    A statement that would do more than read is refused unrun (``check_read_only``)."""
    query = prepare_sql(path, root)
    check_read_only(spark, query.statement, query.path.name)
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
    for c in ("model_version", "centroid_version", "seen"):   # optional: toy/ad-hoc runs have none
        if c not in predictions.columns:
            predictions[c] = None
    missing = [c for c in cols if c not in predictions.columns]
    if missing:
        raise KeyError(f"predictions frame lacks columns {missing}")
    pdf = predictions[cols].copy()
    for c in ("variant", "model_kind", "model_version", "centroid_version", "event_id", "request_id", "session_id", "category"):
        pdf[c] = pdf[c].astype(object).where(pdf[c].notna(), None).map(lambda v: None if v is None else str(v))
    pdf["seen"] = pdf["seen"].astype(object).where(pdf["seen"].notna(), None).map(lambda v: None if v is None else bool(v))
    pdf["label"] = pdf["label"].astype("int32")
    pdf["score"] = pdf["score"].astype("float64")
    df = spark.createDataFrame(pdf, PREDICTIONS_SCHEMA)
    return write_table(df, path, partition_by=partition_by)

"""`courier sql` is the analysts' read-only path: it works on a root the user
may read but not write and changes nothing under it (its log goes to a local
directory), and every mistake (file, statement, table, root, --out, log dir)
is one `courier: error:` line and exit 2 found before Spark starts."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from courier_spark import cli
from courier_spark.evaluate.metrics import per_category_auc, per_category_lift
from courier_spark.evaluate.sql_runner import delta_table_exists, write_predictions
from courier_spark.core.paths import TablePaths


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under ``root`` with (mtime ns, size, mode):
    what "nothing under the root changed" compares (tests may run as root,
    where a read-only mode does not stop writes)."""
    out = {".": (root.stat().st_mtime_ns, 0, root.stat().st_mode)} if root.exists() else {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size if p.is_file() else 0, st.st_mode)
    return out


def set_read_only(root: Path, read_only: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode & ~w if read_only else mode | stat.S_IWUSR)


def toy_predictions(seed: int = 3) -> pd.DataFrame:
    """Two variants of one model kind over three categories, tied scores."""
    rng = np.random.default_rng(seed)
    n = 240
    base = pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "request_id": "r", "session_id": "s",
                         "category": rng.choice(["bags", "shoes", "tops"], n),
                         "label": (rng.random(n) < 0.3).astype(int)})
    parts = []
    for variant, lift in (("baseline", 0.0), ("courier_cluster_id", 0.4)):
        p = base.copy()
        p["variant"], p["model_kind"] = variant, "dnn"
        p["score"] = np.round(rng.random(n) + lift * p["label"], 1)
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def predictions_root(spark, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A root holding only gold/predictions (what per_category_auc_lift reads)."""
    root = tmp_path_factory.mktemp("readonly") / "ds"
    preds = toy_predictions()
    write_predictions(spark, preds, TablePaths.for_root(str(root)).predictions)
    return root, preds


def test_sql_on_read_only_root_changes_nothing_there(predictions_root, tmp_path, monkeypatch, capsys):
    root, preds = predictions_root
    assert delta_table_exists(TablePaths.for_root(str(root)).predictions)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out_csv = tmp_path / "out" / "auc.csv"
    out_csv.parent.mkdir()
    before = snapshot(root)
    set_read_only(root, True)
    try:
        if os.geteuid() != 0:   # as root a read-only mode stops nothing; the snapshot still checks
            with pytest.raises(PermissionError):
                (root / "probe").write_text("x")
        rc = cli.main(["sql", "per_category_auc_lift", "--root", str(root), "--out", str(out_csv)])
    finally:
        set_read_only(root, False)
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    after = snapshot(root)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:10]
    assert not (root / "_runs").exists()
    # the run's log went to the user's cache instead
    logs = list((tmp_path / "cache" / "courier" / "logs").glob("*-sql.log"))
    assert len(logs) == 1 and "per_category_auc_lift.sql: reads " in logs[0].read_text()
    # and the result is the brute-force per-category AUC and lift
    got = pd.read_csv(out_csv)
    exp = per_category_lift(per_category_auc(preds))
    m = exp.merge(got, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    assert len(m) == len(exp) == len(got) == 2 * 3
    np.testing.assert_allclose(m["auc_sql"], m["auc_py"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(m["lift_auc_pct_sql"], m["lift_auc_pct_py"], atol=1e-9, rtol=0)


def test_sql_log_dir_flag(predictions_root, tmp_path, capsys):
    root, _ = predictions_root
    before = snapshot(root)
    rc = cli.main(["sql", "per_category_auc_lift.sql", "--root", str(root), "--limit", "2",
                   "--log-dir", str(tmp_path / "mylogs")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    assert "(6 rows, first 2 shown)" in captured.out
    assert len(list((tmp_path / "mylogs").glob("*-sql.log"))) == 1
    assert snapshot(root) == before


@pytest.fixture
def no_spark(monkeypatch):
    """A tripwire: these mistakes must be found before Spark starts."""
    def started(*a, **k):
        raise AssertionError("Spark was started before the mistake was found")
    monkeypatch.setattr("courier_spark.core.spark.get_spark", started)


def test_each_sql_mistake_is_one_line_before_spark(tmp_path, monkeypatch, capsys, no_spark):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    (root / "silver").mkdir(parents=True)
    # a table another process is still creating: its log has no commit yet
    (root / "gold" / "predictions" / "_delta_log").mkdir(parents=True)
    two = tmp_path / "two.sql"
    two.write_text("SELECT 1; -- one\nSELECT 2;")
    placeholder = tmp_path / "ph.sql"
    placeholder.write_text("SELECT * FROM delta.`${root}/${table}`")
    empty = tmp_path / "empty.sql"
    empty.write_text("-- nothing\n")
    plain = tmp_path / "plain.sql"
    plain.write_text("SELECT 1 AS x")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = ["--root", str(root)]
    cases = [
        (["nope.sql", *r], "SQL file not found: nope.sql (neither a file nor a shipped query; shipped: "
                           "cluster_category_purity.sql"),
        ([str(tmp_path), *r], f"SQL file {tmp_path} is not a file"),
        ([str(two), *r], "holds more than one SQL statement"),
        ([str(placeholder), *r], "unknown placeholder(s) ['table']"),
        ([str(empty), *r], "no SQL statement"),
        (["per_category_auc_lift", *r], f"per_category_auc_lift.sql: no Delta table at {root}/gold/predictions "
                                        "(table 'gold/predictions'); run `courier evaluate` first"),
        (["ctr_by_cluster", *r], f"no Delta table at {root}/silver/ctr_samples"),
        (["per_category_auc_lift", "--root", str(tmp_path / "missing")], "does not exist"),
        (["per_category_auc_lift", "--root", str(a_file)], "is a file, not a directory"),
        ([str(plain), *r, "--out", str(tmp_path / "no" / "such" / "x.csv")], "directory"),
        ([str(plain), *r, "--log-dir", str(a_file / "logs")], "cannot write the run log to"),
        ([str(plain), *r, "--limit", "-1"], "--limit must be 0 or more"),
    ]
    before = snapshot(root)
    for args, expected in cases:
        rc = cli.main(["sql", *args])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("courier: error: ") and expected in lines[0], (args, err)
        assert "Traceback" not in err
    assert snapshot(root) == before                       # nothing created, not even the missing root
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------- read-only by construction
# The parser decides: no table is needed to refuse a write, so most forms are
# checked on the bare session. ``P`` is any table path; the statements never run.
P = "delta.`/data/ds/gold/predictions`"
READS = [
    "SELECT 1",
    "select * from " + P + " where variant = 'DELETE FROM x' -- DROP TABLE y",
    "/* DELETE FROM t; */ SELECT count(*) AS n FROM " + P,
    "SELECT * FROM delta.`/data/DELETE FROM t/INSERT` AS t",              # keywords in a backtick path
    "WITH a AS (SELECT * FROM " + P + "), b AS (SELECT variant FROM a) SELECT * FROM b "
    "WHERE variant IN (SELECT variant FROM a) AND EXISTS (SELECT 1 FROM a)",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT variant, count(*) FROM " + P + " GROUP BY ROLLUP(variant) HAVING count(*) > 1 ORDER BY 2 LIMIT 5 OFFSET 1",
    "SELECT *, row_number() OVER w FROM " + P + " WINDOW w AS (PARTITION BY variant ORDER BY score)",
    "SELECT * FROM " + P + " a JOIN " + P + " b USING (event_id) UNION ALL SELECT * FROM " + P + " c, "
    + P + " d INTERSECT SELECT * FROM " + P + " EXCEPT SELECT * FROM " + P,
    "SELECT * FROM " + P + " TABLESAMPLE (10 PERCENT) LATERAL VIEW explode(array(1, 2)) x AS y",
    "SELECT * FROM range(10)",
    "SELECT /*+ BROADCAST(t) */ DISTINCT t.* FROM " + P + " t, LATERAL (SELECT t.score + 1 AS s)",
    "SELECT * FROM " + P + " PIVOT (sum(score) FOR variant IN ('a', 'b'))",
    "SELECT * FROM " + P + " VERSION AS OF 0 DISTRIBUTE BY variant SORT BY score",
    "SELECT (SELECT max(score) FROM " + P + ") AS top, upper('drop table x') AS s",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE " + P,
    "FROM " + P + " SELECT variant",
    "SELECT * FROM " + P + " |> WHERE score > 0.5 |> AGGREGATE count(*) AS n",
    "SELECT 1;   -- a trailing semicolon is one statement",
    "DESCRIBE TABLE " + P,
    "DESCRIBE HISTORY " + P,
    "DESCRIBE DETAIL " + P,
    "SHOW COLUMNS IN " + P,
    "SHOW TBLPROPERTIES " + P,
    "EXPLAIN SELECT * FROM " + P,
    "EXPLAIN EXTENDED WITH a AS (SELECT 1) SELECT * FROM a",
]
# (statement, what the one-line refusal names)
WRITES = [
    ("DELETE FROM " + P + " WHERE true", "is DeleteFromTable"),
    ("dElEtE fRoM " + P, "is DeleteFromTable"),
    ("/* SELECT */ DELETE FROM " + P + " -- SELECT", "is DeleteFromTable"),
    ("-- SELECT 1\nDELETE FROM " + P, "is DeleteFromTable"),
    ("UPDATE " + P + " SET score = 0", "is UpdateTable"),
    ("INSERT INTO " + P + " SELECT * FROM " + P, "is InsertIntoStatement"),
    ("INSERT OVERWRITE " + P + " SELECT * FROM " + P + " WHERE false", "is InsertIntoStatement"),
    ("WITH x AS (SELECT * FROM " + P + ") INSERT INTO " + P + " SELECT * FROM x", "holds InsertIntoStatement"),
    ("MERGE INTO " + P + " t USING " + P + " s ON t.event_id = s.event_id WHEN MATCHED THEN DELETE",
     "is MergeIntoTable"),
    ("INSERT OVERWRITE DIRECTORY '/tmp/x' USING csv SELECT 1", "is InsertIntoDir"),
    ("INSERT OVERWRITE LOCAL DIRECTORY '/tmp/x' SELECT 1", "InsertIntoDir"),
    ("CREATE TABLE delta.`/tmp/x` AS SELECT * FROM " + P, "is CreateTableAsSelect"),
    ("CREATE OR REPLACE TABLE delta.`/tmp/x` (a INT) USING delta", "is ReplaceTable"),
    ("REPLACE TABLE delta.`/data/ds/gold/predictions` USING delta AS SELECT 1 AS a", "is ReplaceTableAsSelect"),
    ("CREATE TABLE t (a INT) USING parquet", "is CreateTable"),
    ("CREATE VIEW v AS SELECT 1", "is CreateView"),
    ("CREATE TEMPORARY VIEW v AS SELECT 1", "is CreateViewCommand"),
    ("create or replace temp view v as select * from " + P, "is CreateViewCommand"),
    ("CREATE GLOBAL TEMPORARY VIEW v AS SELECT 1", "is CreateViewCommand"),
    ("DROP TABLE " + P, "is DropTable"),
    ("DROP TABLE IF EXISTS delta.`/no/such/table`", "is DropTable"),
    ("DROP TABLE IDENTIFIER('t')", "is DropTable"),
    ("SELECT * FROM IDENTIFIER('t')", "holds PlanWithUnresolvedIdentifier"),
    ("DROP VIEW v", "is DropView"),
    ("ALTER TABLE " + P + " SET TBLPROPERTIES ('delta.appendOnly' = 'true')", "is SetTableProperties"),
    ("ALTER TABLE " + P + " ADD COLUMNS (x INT)", "is AddColumns"),
    ("ALTER TABLE t RENAME TO u", "is RenameTable"),
    ("TRUNCATE TABLE " + P, "is TruncateTable"),
    ("COMMENT ON TABLE t IS 'x'", "is CommentOnTable"),
    ("ANALYZE TABLE " + P + " COMPUTE STATISTICS", "is AnalyzeTable"),
    ("OPTIMIZE " + P, "is OptimizeTableCommand"),
    ("OPTIMIZE " + P + " ZORDER BY (score)", "is OptimizeTableCommand"),
    ("VACUUM " + P + " RETAIN 0 HOURS", "is VacuumTableCommand"),
    ("RESTORE TABLE " + P + " TO VERSION AS OF 0", "is RestoreTableStatement"),
    ("CONVERT TO DELTA parquet.`/tmp/x`", "is ConvertToDeltaCommand"),
    ("GENERATE symlink_format_manifest FOR TABLE " + P, "is DeltaGenerateCommand"),
    ("CREATE TABLE delta.`/tmp/clone` SHALLOW CLONE " + P, "Clone"),
    ("REORG TABLE " + P + " APPLY (PURGE)", "Reorg"),
    ("SET spark.sql.ansi.enabled = false", "is SetCommand"),
    ("SET", "is SetCommand"),
    ("RESET", "is ResetCommand"),
    ("SET VAR x = 1", "SetVariable"),
    ("DECLARE VARIABLE x INT DEFAULT 1", "CreateVariable"),
    ("EXECUTE IMMEDIATE 'DELETE FROM " + P.replace("`", "`") + "'", "ExecuteImmediate"),
    ("CACHE TABLE c AS SELECT 1", "is CacheTableAsSelect"),
    ("UNCACHE TABLE c", "is UncacheTable"),
    ("CLEAR CACHE", "is ClearCacheCommand"),
    ("REFRESH TABLE t", "is RefreshTable"),
    ("ADD JAR /tmp/evil.jar", "is AddJarsCommand"),
    ("ADD FILE /tmp/x", "is AddFilesCommand"),
    ("CALL catalog.system.rollback('t', 1)", "is Call"),
    ("CREATE FUNCTION f AS 'com.example.F'", "CreateFunction"),
    ("CREATE DATABASE d", "CreateNamespace"),
    ("USE d", "SetCatalogAndNamespace"),
    ("MSCK REPAIR TABLE t", "RepairTable"),
    ("LOAD DATA LOCAL INPATH '/tmp/x' INTO TABLE t", "LoadData"),
    ("SELECT TRANSFORM(variant) USING 'rm -rf /' FROM " + P, "is ScriptTransformation"),
    ("SELECT reflect('java.lang.System', 'exit', 1)", "calls reflect()"),
    ("SELECT * FROM " + P + " WHERE score > (SELECT max(JAVA_METHOD('java.lang.Thread', 'sleep', 9L)) FROM "
     + P + ")", "calls java_method()"),
    ("EXPLAIN DELETE FROM " + P, "EXPLAIN's statement is DeleteFromTable"),
    ("EXPLAIN CREATE TABLE delta.`/tmp/x` AS SELECT 1", "EXPLAIN's statement is CreateTableAsSelect"),
    ("DESCRIBE QUERY SELECT 1", "is DescribeQueryCommand"),
    ("SHOW TABLES", "is ShowTables"),
]


@pytest.mark.parametrize("statement", READS)
def test_reads_pass_the_read_only_check(spark, statement):
    from courier_spark.evaluate.sql_runner import check_read_only
    check_read_only(spark, statement, "q.sql")


def test_every_write_form_is_refused_by_its_plan(spark):
    from courier_spark.core.errors import ReadOnlySqlError
    from courier_spark.evaluate.sql_runner import check_read_only
    wrong = []
    for statement, named in WRITES:
        try:
            check_read_only(spark, statement, "q.sql")
            wrong.append((statement, "ran through"))
        except ReadOnlySqlError as exc:
            msg = str(exc)
            if named not in msg or "\n" in msg or not msg.startswith("q.sql: refused unrun"):
                wrong.append((statement, msg))
    assert not wrong, wrong


def test_shipped_queries_are_reads(spark):
    from courier_spark.evaluate.sql_runner import SQL_DIR, check_read_only, prepare_sql
    for f in sorted(SQL_DIR.glob("*.sql")):
        check_read_only(spark, prepare_sql(f, "/data/ds").statement, f.name)


def test_a_statement_that_does_not_parse_is_one_line(spark):
    from courier_spark.core.errors import ReadOnlySqlError, SqlFileError
    from courier_spark.evaluate.sql_runner import check_read_only
    for bad in ("SELEC 1", "SELECT 1; DELETE FROM t", "SELECT * FROM t WHERE a >"):
        with pytest.raises(SqlFileError, match=r"^q\.sql: cannot parse the statement: \[PARSE_SYNTAX_ERROR\]") as ei:
            check_read_only(spark, bad, "q.sql")
        assert "\n" not in str(ei.value) and not isinstance(ei.value, ReadOnlySqlError)


def commits(table: str) -> list[int]:
    from courier_spark.core.delta_log import commit_versions
    return commit_versions(table)


def test_writes_through_courier_sql_leave_the_delta_log_unchanged(predictions_root, tmp_path, monkeypatch,
                                                                  capsys):
    """Through the CLI against a real table: refused with one line, exit 2,
    and the table's log has exactly the commits it had (and every file under
    the root is as it was)."""
    root, preds = predictions_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = TablePaths.for_root(str(root)).predictions
    t = "delta.`${root}/gold/predictions`"
    statements = {
        "delete": f"DELETE FROM {t} WHERE true",
        "hidden": f"/* SELECT */ dElEtE\n-- x\nFROM {t}",
        "update": f"UPDATE {t} SET score = 0",
        "insert": f"INSERT INTO {t} SELECT * FROM {t}",
        "overwrite": f"INSERT OVERWRITE {t} SELECT * FROM {t} WHERE false",
        "cte": f"WITH x AS (SELECT * FROM {t}) INSERT INTO {t} SELECT * FROM x",
        "merge": f"MERGE INTO {t} a USING {t} b ON a.event_id = b.event_id WHEN MATCHED THEN DELETE",
        "drop": f"DROP TABLE {t}",
        "alter": f"ALTER TABLE {t} SET TBLPROPERTIES ('x' = 'y')",
        "optimize": f"OPTIMIZE {t}",
        "vacuum": f"VACUUM {t} RETAIN 0 HOURS",
        "restore": f"RESTORE TABLE {t} TO VERSION AS OF 0",
        "truncate": f"TRUNCATE TABLE {t}",
        "replace": f"CREATE OR REPLACE TABLE {t} USING delta AS SELECT 1 AS a",
        "second statement": f"SELECT 1; DELETE FROM {t}",
        "semicolon in a string": f"SELECT ';' AS x; DELETE FROM {t}",
    }
    before_commits, before = commits(table), snapshot(root)
    assert before_commits
    for name, sql in statements.items():
        f = tmp_path / f"{name.replace(' ', '_')}.sql"
        f.write_text(sql)
        rc = cli.main(["sql", str(f), "--root", str(root)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("courier: error: "), (name, err[-1500:])
        assert "refused unrun" in lines[0] or "more than one SQL statement" in lines[0], (name, lines[0])
        assert commits(table) == before_commits, name
    assert snapshot(root) == before
    # and the table still answers with every row
    rc = cli.main(["sql", "per_category_auc_lift", "--root", str(root), "--limit", "0"])
    assert rc == 0 and "(6 rows" in capsys.readouterr().out


def test_spark_errors_of_a_query_are_one_line(predictions_root, tmp_path, monkeypatch, capsys):
    root, _ = predictions_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cases = {"parse": ("SELEC 1", "cannot parse the statement: [PARSE_SYNTAX_ERROR]"),
             "column": ("SELECT no_such_column FROM delta.`${root}/gold/predictions`", "no_such_column"),
             "env": ("SELECT '${env:HOME}' AS h", "unknown placeholder(s) ['env:HOME']")}
    for name, (sql, expected) in cases.items():
        f = tmp_path / f"{name}.sql"
        f.write_text(sql)
        rc = cli.main(["sql", str(f), "--root", str(root)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and expected in lines[0], (name, err[-1500:])
        assert "Traceback" not in err


def test_out_never_clobbers(predictions_root, tmp_path, monkeypatch, capsys, no_spark):
    """--out: never under the root, never over an existing file unless asked;
    all found before Spark starts."""
    root, _ = predictions_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    existing = tmp_path / "mine.csv"
    existing.write_text("precious\n")
    r = ["per_category_auc_lift", "--root", str(root)]
    cases = [([*r, "--out", str(existing)], "already exists; pass --overwrite to replace it"),
             ([*r, "--out", str(root / "gold" / "x.csv")], "is inside the root"),
             ([*r, "--out", str(tmp_path)], "is a directory"),
             ([*r, "--log-dir", str(root / "_runs" / "logs")], "--log-dir")]
    for args, expected in cases:
        assert cli.main(["sql", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert existing.read_text() == "precious\n" and not (root / "gold" / "x.csv").exists()
    assert not (root / "_runs").exists()


def test_out_overwrite_replaces_the_file_whole(predictions_root, tmp_path, monkeypatch, capsys):
    root, _ = predictions_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    existing = tmp_path / "mine.csv"
    existing.write_text("old\n")
    rc = cli.main(["sql", "per_category_auc_lift", "--root", str(root), "--out", str(existing), "--overwrite"])
    assert rc == 0, capsys.readouterr().err[-1500:]
    assert len(pd.read_csv(existing)) == 6 and not list(tmp_path.glob("mine.csv.tmp-*"))

"""``courier STAGE --root DIR [--config FILE] [--set key=value ...]``,
``courier pipeline --root DIR [--from STAGE] [--until STAGE]`` and
``courier sql FILE --root DIR [--limit N] [--out CSV] [--log-dir DIR]`` (analyst
SQL over the Delta tables; it only reads the root, so an analyst with read-only
access may run it: its log goes to a local directory, never to the root).

Order of work: parse flags, build and check the *whole* config (every
section, whatever the command), check the root, and only then start Spark and
run stages. Every error a user can cause is one ``courier: error:`` line and
exit status 2; anything else is a bug and keeps its traceback (in the log too).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Sequence

from courier_spark.core import fs
from courier_spark.core.config import load_config
from courier_spark.core.errors import CourierError, FilesystemError, MissingRootError, MissingTableError, SqlFileError
from courier_spark.core.logs import RunLog, configure_logging, debug
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import STAGES, StageContext, pipeline_stages, preflight, run_stage, stage_help
from courier_spark.core.redact import mask_text
from courier_spark.stages.results import HealthResult

if TYPE_CHECKING:   # the SQL runner imports pandas and pyspark: only `courier sql` loads it
    from pyspark.sql import SparkSession

    from courier_spark.evaluate.sql_runner import SqlQuery

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="courier", description="COURIER feature platform on Spark + Delta")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", required=True, help="dataset root (local path or Hadoop URI)")
        p.add_argument("--config", default=None, help="YAML config (default: none, the schema's defaults; the demo's is conf/demo.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set samples.l_pv=5 (repeatable)")
        loud = p.add_mutually_exclusive_group()
        loud.add_argument("-q", "--quiet", action="store_true", help="console: warnings and errors only")
        loud.add_argument("-v", "--verbose", action="store_true", help="console: debug lines too")

    for name in STAGES:
        common(sub.add_parser(name, help=stage_help(name)))
    pp = sub.add_parser("pipeline", help="run stages in order")
    common(pp)
    pp.add_argument("--from", dest="start", default=None, help="first stage")
    pp.add_argument("--until", dest="until", default=None, help="last stage (inclusive)")
    sp = sub.add_parser("sql", help="run one SQL file (${root} substituted) read-only and print the result")
    common(sp)
    sp.add_argument("file", help="SQL file, or the name of a shipped query (e.g. per_category_auc_lift)")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    sp.add_argument("--out", default=None,
                    help="also write the full result as CSV here (a local file outside the root; an existing "
                         "file only with --overwrite)")
    sp.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    sp.add_argument("--log-dir", default=None,
                    help=f"local directory for this run's log (default {default_sql_log_dir()}); "
                         "never the root, which `sql` only reads")
    return ap


def default_sql_log_dir() -> str:
    """Where ``courier sql`` logs by default: the user's cache (XDG), not the
    root, which an analyst may only be allowed to read."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "courier", "logs")


def stage_names(command: str, start: str | None, until: str | None) -> list[str]:
    return [] if command == "sql" else [command] if command != "pipeline" else pipeline_stages(start, until)


def check_sql_command(args: argparse.Namespace, paths: TablePaths) -> "SqlQuery":
    """Everything ``courier sql`` can get wrong, checked before Spark starts
    and without writing anywhere: the root exists and is readable, the SQL
    file is one statement, every table it reads exists, ``--limit`` and
    ``--out`` make sense, and the local log directory can be written.
    Returns the prepared query."""
    from courier_spark.evaluate.sql_runner import check_tables_exist, prepare_sql
    if args.limit < 0:
        raise CourierError(f"sql: --limit must be 0 or more, got {args.limit}")
    fs.check_root(paths.root, write=False)     # read-only: a missing root is an error, not created
    query = prepare_sql(args.file, paths.root)
    check_tables_exist(query, paths.root)
    if args.out:
        check_out_file(args.out, paths.root, args.overwrite)
    if fs.is_local(paths.root):
        root_abs = os.path.realpath(fs.to_local_path(paths.root))
        if os.path.commonpath([os.path.realpath(args.log_dir), root_abs]) == root_abs:
            raise CourierError(f"sql: --log-dir {args.log_dir} is inside the root {paths.root}, which `courier sql` "
                               "only reads; log elsewhere")
    try:
        os.makedirs(args.log_dir, exist_ok=True)
    except OSError as exc:
        raise FilesystemError(f"sql: cannot write the run log to {args.log_dir} ({exc.strerror}); "
                              "pass --log-dir DIR") from None
    return query


def check_out_file(out: str, root: str, overwrite: bool) -> None:
    """``courier sql --out``: a local CSV file in an existing directory, never
    under the root (``sql`` only reads it), and an existing file is replaced
    only when asked (``--overwrite``): a typo must not clobber someone's file."""
    out_abs = os.path.abspath(os.path.expanduser(out))
    out_dir = os.path.dirname(out_abs)
    if fs.is_local(root):
        root_abs = os.path.realpath(fs.to_local_path(root))
        if os.path.commonpath([os.path.realpath(out_abs), root_abs]) == root_abs:
            raise CourierError(f"sql: --out {out} is inside the root {root}, which `courier sql` only reads; "
                               "write the CSV elsewhere")
    if not os.path.isdir(out_dir):
        raise CourierError(f"sql: --out {out}: directory {out_dir} does not exist")
    if os.path.isdir(out_abs):
        raise CourierError(f"sql: --out {out} is a directory; name a CSV file")
    if os.path.lexists(out_abs) and not overwrite:
        raise CourierError(f"sql: --out {out} already exists; pass --overwrite to replace it")


def check_health_command(paths: TablePaths) -> None:
    """``courier health`` before Spark starts: the health records exist."""
    if not fs.exists(fs.join(paths.health_item_visual, "_delta_log")):
        raise MissingTableError(f"health: no health records at {paths.health_item_visual}; they are written "
                                "by `courier features` and `courier stream`")


def run_sql_command(spark: "SparkSession", query: "SqlQuery", limit: int, out: str | None) -> int:
    """Run a query checked by ``check_sql_command``: first refuse it unrun
    unless its parsed plan only reads (``check_read_only``); then print and
    save its result. Spark's own complaints about the query (an unknown
    column, a type mismatch) are one line like every other mistake."""
    import pandas as pd
    from pyspark.errors import AnalysisException

    from courier_spark.evaluate.sql_runner import check_read_only, spark_error_line

    check_read_only(spark, query.statement, query.path.name)
    try:
        pdf = spark.sql(query.statement).toPandas()
    except AnalysisException as exc:
        raise SqlFileError(f"{query.path.name}: {spark_error_line(exc)}") from None
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(pdf.head(limit).to_string(index=False))
    print(f"({len(pdf)} rows{'' if len(pdf) <= limit else f', first {limit} shown'})")
    if out:
        # Whole or not at all: a sibling temporary file moved over the target.
        tmp = f"{out}.tmp-{os.getpid()}"
        try:
            pdf.to_csv(tmp, index=False)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"wrote {out}")
    return 0


def _error(msg: str) -> int:
    # One line, whatever the message holds, with secrets masked (a key or a
    # URI password the message echoes, or a value the config brought).
    one_line = " ".join(mask_text(msg).split())
    print(f"courier: error: {one_line}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        cfg = load_config(args.config, args.overrides)
        fs.configure(connect_timeout_s=cfg.storage.connect_timeout_s, spark_extra=cfg.spark.extra)
        names = stage_names(args.command, getattr(args, "start", None), getattr(args, "until", None))
        paths = TablePaths.for_root(args.root)
        query = None
        if args.command == "sql":
            # `sql` only reads: an analyst with read-only access may run it.
            args.log_dir = os.path.abspath(os.path.expanduser(args.log_dir or default_sql_log_dir()))
            query = check_sql_command(args, paths)
        else:
            if names and names[0] != "generate":
                try:
                    fs.check_root(paths.root, write=False)
                except MissingRootError:
                    # Name the missing input (and the stage that makes it) before
                    # check_root below creates the root for a stage that needs none.
                    preflight(names, cfg, paths)
            fs.check_root(paths.root, write=True)
            preflight(names, cfg, paths)
        if args.command == "health":
            check_health_command(paths)
    except CourierError as exc:
        return _error(str(exc))
    with RunLog(args.log_dir if query is not None else paths.run_logs, args.command) as run_log:
        debug("run", f"{args.command}: full log in {run_log.final_path}")
        from courier_spark.core.spark import get_spark
        name = "spark"
        try:
            ctx = StageContext(get_spark(cfg.spark), cfg, paths)
            if query is not None:
                name = "sql"
                debug("sql", f"{query.path}: reads {', '.join(query.tables) or 'no Delta table'}")
                return run_sql_command(ctx.spark, query, args.limit, args.out)
            for name in names:
                result = run_stage(name, ctx)
                run_log.sync()
                if isinstance(result, HealthResult) and result.breaches:
                    # Past a threshold: one line naming it, exit 2 (what an operator alerts on).
                    more = f" (+{len(result.breaches) - 1} more)" if len(result.breaches) > 1 else ""
                    return _error(f"health: {result.breaches[0]}{more}")
        except CourierError as exc:
            # Expected failures (bad input, missing table or version, a dead
            # worker) get one clear line, not a traceback; anything else is a bug.
            run_log.exception(f"stage {name} failed")
            return _error(f"sql: {exc}" if query is not None else f"stage {name} failed: {exc}")
        except Exception:
            run_log.exception(f"stage {name} failed with an unexpected error")
            raise
    return 0


def job_main(command: str) -> None:
    """Entry for ``jobs/<command>.py`` under spark-submit: same flags as the CLI."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

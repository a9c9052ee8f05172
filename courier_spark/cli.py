"""``courier STAGE --root DIR [--config FILE] [--set key=value ...]``,
``courier pipeline --root DIR [--from STAGE] [--until STAGE]`` and
``courier sql FILE --root DIR [--limit N] [--out CSV]`` (analyst SQL over the Delta tables).

Order of work: parse flags, build and check the *whole* config (every
section, whatever the command), check the root, and only then start Spark and
run stages. Every error a user can cause is one ``courier: error:`` line and
exit status 2; anything else is a bug and keeps its traceback (in the log too).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import fs
from .config import load_config
from .errors import CourierError
from .logs import RunLog, configure_logging, debug
from .paths import TablePaths
from .pipeline import STAGES, StageContext, pipeline_stages, run_stage, stage_help

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="courier", description="COURIER feature platform on Spark + Delta")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", required=True, help="dataset root (local path or Hadoop URI)")
        p.add_argument("--config", default=None, help="YAML config (default conf/local.yaml)")
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
    sp = sub.add_parser("sql", help="run one sql/*.sql file (${root} substituted) and print the result")
    common(sp)
    sp.add_argument("file", help="SQL file (a name in sql/ also works, e.g. per_category_auc_lift.sql)")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    sp.add_argument("--out", default=None, help="also write the full result as CSV here")
    return ap


def stage_names(command: str, start: str | None, until: str | None) -> list[str]:
    return [] if command == "sql" else [command] if command != "pipeline" else pipeline_stages(start, until)


def run_sql_command(spark, root: str, file: str, limit: int, out: str | None) -> int:
    import pandas as pd

    from .evaluate.sql_runner import run_sql_file
    try:
        df = run_sql_file(spark, file, root)
    except (FileNotFoundError, ValueError) as exc:
        raise CourierError(f"sql: {exc}") from None
    pdf = df.toPandas()
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(pdf.head(limit).to_string(index=False))
    print(f"({len(pdf)} rows{'' if len(pdf) <= limit else f', first {limit} shown'})")
    if out:
        pdf.to_csv(out, index=False)
        print(f"wrote {out}")
    return 0


def _error(msg: str) -> int:
    one_line = " ".join(msg.split())   # one line, whatever the message holds
    print(f"courier: error: {one_line}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        cfg = load_config(args.config, args.overrides)
        names = stage_names(args.command, getattr(args, "start", None), getattr(args, "until", None))
        paths = TablePaths.for_root(args.root)
        # `sql` only reads: an analyst with read-only access may run it.
        fs.check_root(paths.root, write=args.command != "sql")
    except CourierError as exc:
        return _error(str(exc))
    with RunLog(paths.run_logs, args.command) as run_log:
        debug("run", f"{args.command}: full log in {run_log.final_path}")
        from .spark import get_spark
        name = "spark"
        try:
            ctx = StageContext(get_spark(cfg.spark), cfg, paths)
            if args.command == "sql":
                return run_sql_command(ctx.spark, paths.root, args.file, args.limit, args.out)
            for name in names:
                run_stage(name, ctx)
                run_log.sync()
        except CourierError as exc:
            # Expected failures (bad input, missing table or version, a dead
            # worker) get one clear line, not a traceback; anything else is a bug.
            run_log.exception(f"stage {name} failed")
            return _error(f"stage {name} failed: {exc}")
        except Exception:
            run_log.exception(f"stage {name} failed with an unexpected error")
            raise
    return 0


def job_main(command: str) -> None:
    """Entry for ``jobs/<command>.py`` under spark-submit: same flags as the CLI."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

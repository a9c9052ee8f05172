"""``courier STAGE --root DIR [--config FILE] [--set key=value ...]``,
``courier pipeline --root DIR [--from STAGE] [--until STAGE]`` and
``courier sql FILE --root DIR [--limit N] [--out CSV]`` (analyst SQL over the Delta tables)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES
    ap = argparse.ArgumentParser(prog="courier", description="COURIER feature platform on Spark + Delta")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", required=True, help="dataset root (local path or Hadoop URI)")
        p.add_argument("--config", default=None, help="YAML config (default conf/local.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set samples.l_pv=5 (repeatable)")

    for name, fn in STAGES.items():
        common(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0]))
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


def run_sql_command(spark, root: str, file: str, limit: int, out: str | None) -> int:
    import pandas as pd

    from .evaluate.sql_runner import run_sql_file
    from .tables import MissingTableError
    try:
        df = run_sql_file(spark, file, root)
    except (FileNotFoundError, MissingTableError, ValueError) as exc:
        print(f"courier sql: error: {exc}", file=sys.stderr)
        return 2
    pdf = df.toPandas()
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(pdf.head(limit).to_string(index=False))
    print(f"({len(pdf)} rows{'' if len(pdf) <= limit else f', first {limit} shown'})")
    if out:
        pdf.to_csv(out, index=False)
        print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .paths import TablePaths
    from .spark import get_spark
    from .stages import StageContext, pipeline_stages, run_stage

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        names = (pipeline_stages(args.start, args.until) if args.command == "pipeline"
                 else [] if args.command == "sql" else [args.command])
    except (ConfigError, KeyError) as exc:
        print(f"courier: error: {exc}", file=sys.stderr)
        return 2
    ctx = StageContext(get_spark(cfg.spark), cfg, TablePaths.for_root(args.root))
    if args.command == "sql":
        return run_sql_command(ctx.spark, ctx.paths.root, args.file, args.limit, args.out)
    for name in names:
        try:
            run_stage(name, ctx)
        except user_facing_errors() as exc:
            # Expected failures (bad input, missing table or version, a dead
            # worker) get one clear line, not a traceback; anything else is a bug.
            print(f"courier: error: stage {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    return 0


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """Errors the platform raises on purpose, with a message meant for the user."""
    from training.artifact import ArtifactNotFoundError
    from training.train import DistributedTrainingError

    from .contract import ContractError
    from .feature_store import ConcurrentWriteError
    from .tables import MissingTableError
    return (ConfigError, ContractError, MissingTableError, LookupError, ArtifactNotFoundError,
            DistributedTrainingError, ConcurrentWriteError)


def job_main(command: str) -> None:
    """Entry for ``jobs/<command>.py`` under spark-submit: same flags as the CLI."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

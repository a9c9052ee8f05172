"""``courier STAGE --root DIR [--config FILE] [--set key=value ...]`` and
``courier pipeline --root DIR [--from STAGE] [--until STAGE]``."""
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
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from .paths import TablePaths
    from .spark import get_spark
    from .stages import StageContext, pipeline_stages, run_stage

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        names = (pipeline_stages(args.start, args.until) if args.command == "pipeline"
                 else [args.command])
    except (ConfigError, KeyError) as exc:
        print(f"courier: error: {exc}", file=sys.stderr)
        return 2
    ctx = StageContext(get_spark(cfg.spark), cfg, TablePaths.for_root(args.root))
    for name in names:
        run_stage(name, ctx)
    return 0


def job_main(command: str) -> None:
    """Entry for ``jobs/<command>.py`` under spark-submit: same flags as the CLI."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

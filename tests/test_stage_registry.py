"""The stage registry: every stage named in the pipeline exists as a module
with ``run``, is loaded only when it runs, and returns a typed result."""
from __future__ import annotations

import inspect
import subprocess
import sys
import typing

from courier_spark.pipeline import PIPELINE, STAGES, stage_help
from courier_spark.stages.results import StageResult


def test_building_the_cli_loads_no_stage_and_no_heavy_library():
    code = ("import sys, courier_spark.cli as c; c.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('courier_spark.stages.') "
            "and m not in ('courier_spark.stages.context', 'courier_spark.stages.results'))); "
            "print([m for m in ('torch', 'pandas', 'PIL', 'faiss', 'training') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "[]", out


def test_every_stage_loads_and_declares_a_typed_result():
    for name, spec in STAGES.items():
        run = spec.load()
        hint = typing.get_type_hints(run, globalns=inspect.getmodule(run).__dict__)["return"]
        assert issubclass(hint, StageResult), name
        assert stage_help(name) and spec.module.endswith(f".stages.{name}")
    assert PIPELINE[0] == "generate" and PIPELINE[-1] == "report" and "stream" not in PIPELINE


def test_no_stage_parses_another_stages_summary():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "courier_spark" / "stages"
    for f in root.glob("*.py"):
        assert 'rsplit("/", 1)[1]' not in f.read_text(), f

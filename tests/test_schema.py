"""The config schema: every field's type, range and choices are checked when
the config loads, before any stage runs (and without torch)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import typing

import pytest

from courier_spark.core import schema
from courier_spark.core.config import load_config
from courier_spark.core.errors import ConfigError

ABSURD = 10 ** 13


def _leaf_fields(cls=schema.CourierConfig, prefix=""):
    """(dotted key, dataclass field, declared type) of every configurable value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            yield from _leaf_fields(typ, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, typ


def _base(typ):
    args = [a for a in getattr(typ, "__args__", ()) if a is not type(None)]
    return args[0] if args else typ


NUMERIC = [(k, f, _base(t)) for k, f, t in _leaf_fields() if _base(t) in (int, float)]
CHOICES = [(k, f) for k, f, _ in _leaf_fields() if "choices" in f.metadata]


def _loads(key: str, value: str) -> bool:
    try:
        load_config(None, [f"{key}={value}"])
        return True
    except ConfigError as exc:
        assert key in str(exc), f"error for {key}={value} does not name the key: {exc}"
        return False


def test_every_numeric_field_has_a_finite_range():
    missing = [k for k, f, _ in NUMERIC if "range" not in f.metadata or f.metadata["range"][1] is None]
    assert not missing, f"numeric fields without a range: {missing}"
    assert len(NUMERIC) > 80  # the walk below really covers the schema


@pytest.mark.parametrize("key,field,typ", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_numeric_field_rejects_wrong_type_and_out_of_range(key, field, typ):
    lo, hi, lo_open = field.metadata["range"]
    assert not _loads(key, "not-a-number")
    assert not _loads(key, "[1, 2]")
    assert not _loads(key, str(ABSURD)), f"{key} accepted {ABSURD}"
    for v in (0, -1):
        inside = (lo is None or (v > lo if lo_open else v >= lo)) and v <= hi
        assert _loads(key, str(v)) == inside, f"{key}={v}: range {field.metadata['range']}"
    if typ is int:
        assert not _loads(key, "2.5"), f"{key} (int) accepted 2.5"
    default = field.default
    if default is not None and default is not dataclasses.MISSING:
        assert _loads(key, str(default)), f"{key} rejects its own default {default}"


@pytest.mark.parametrize("key,field", CHOICES, ids=[k for k, _ in CHOICES])
def test_choice_field_rejects_a_wrong_word(key, field):
    assert not _loads(key, "no_such_choice")
    needs = {"windows.mode": ["windows.pretrain_start=2026-09-01", "windows.pretrain_end=2026-09-07",
                              "windows.ctr_train_start=2026-09-07", "windows.ctr_train_end=2026-09-09",
                              "windows.test_start=2026-09-09", "windows.test_end=2026-09-10"]}
    for option in field.metadata["choices"]:
        load_config(None, [*needs.get(key, []), f"{key}={option}"])   # every option is accepted


def test_list_fields_check_their_elements():
    assert not _loads("evaluate.methods", "[courier, nope]")
    assert not _loads("evaluate.seeds", "[0, 0]")
    assert not _loads("evaluate.seeds", "[-1]")
    assert not _loads("evaluate.model_kinds", "[]")
    assert not _loads("evaluate.dnn.mlp_hidden", "[64, 0]")
    assert load_config(None, ["evaluate.seeds=3"]).evaluate.seeds == [3]


def test_bools_and_patterns():
    assert not _loads("train.amp", "maybe")
    assert load_config(None, ["train.amp=yes"]).train.amp is True
    assert not _loads("synthetic.start_date", "September")
    assert not _loads("cluster.centroid_version", "latest")      # cluster writes versions: auto or cNNNN
    assert _loads("features.centroid_version", "latest")
    assert not _loads("windows.mode", "absolute")                 # dates are then required
    assert _loads("windows.pretrain_days", "null")                # optional


def test_unknown_keys_suggest_the_nearest_valid_one():
    for bad, near in (("cluster.kk", "cluster.k"), ("train.stepz", "train.steps"),
                      ("evaluate.dnn.epoch", "evaluate.dnn.epochs"), ("sampels.l_pv", "samples")):
        with pytest.raises(ConfigError, match=f"did you mean {near}"):
            load_config(None, [f"{bad}=1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["train.steps.x=1"])


def test_sections_built_anywhere_are_checked():
    with pytest.raises(ConfigError, match="train.steps"):
        schema.TrainConfig(steps=-5)
    cfg = load_config(None, [])
    with pytest.raises(ConfigError, match="cluster.k"):
        dataclasses.replace(cfg.cluster, k=0)


def test_cli_config_errors_are_one_line_exit_2_in_seconds(tmp_path):
    """As a user meets them: no Spark, no traceback, the key named."""
    cases = [(["pipeline", "--set", "cluster.kk=8"], "cluster.kk; did you mean cluster.k?"),
             (["train", "--set", "train.steps=-5"], "train.steps must be within"),
             (["cluster", "--set", "cluster.k=100000000000"], "cluster.k must be within")]
    for argv, needle in cases:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "courier_spark.cli", *argv, "--root", str(tmp_path / "r")],
                           capture_output=True, text=True, timeout=60)
        secs = time.perf_counter() - t0
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("courier: error:") and needle in lines[0], r.stderr
        assert secs < 15
        assert not (tmp_path / "r" / "bronze").exists()   # nothing ran


def test_cli_root_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    for root in (f, f / "sub"):
        r = subprocess.run([sys.executable, "-m", "courier_spark.cli", "generate", "--root", str(root)],
                           capture_output=True, text=True, timeout=60)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and str(tmp_path / "a_file") in lines[0], r.stderr


def test_validating_a_config_does_not_import_torch():
    code = ("import sys; import courier_spark.cli as c; from courier_spark.core.config import load_config; "
            "load_config(None, ['train.steps=5']); c.build_parser(); "
            "print(sorted(m for m in ('torch', 'pandas', 'PIL', 'faiss', 'lightgbm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr

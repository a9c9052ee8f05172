"""One config system: defaults < YAML (with extends) < --set overrides."""
from __future__ import annotations

import pytest

from courier_spark.cli import main
from courier_spark.core.errors import ConfigError
from courier_spark.core.config import load_config
from courier_spark.core.errors import CourierError
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import pipeline_stages


def test_precedence_and_extends(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("samples:\n  l_pv: 4\n  l_click: 3\nspark:\n  shuffle_partitions: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nsamples:\n  l_pv: 6\n")
    cfg = load_config(child, ["samples.l_click=9", "windows.pretrain_days=4"])
    assert (cfg.samples.l_pv, cfg.samples.l_click, cfg.spark.shuffle_partitions) == (6, 9, 3)
    assert cfg.windows.pretrain_days == 4
    assert cfg.samples.session_gap_minutes == 30.0  # default kept
    large = load_config("conf/large.yaml")
    assert large.synthetic.n_users == 20000 and large.samples.l_pv == 5


def test_bad_keys_and_values_are_named():
    with pytest.raises(ConfigError, match="unknown config key samples.l_pvv"):
        load_config(None, ["samples.l_pvv=3"])
    with pytest.raises(ConfigError, match="samples.l_pv: expected int"):
        load_config(None, ["samples.l_pv=abc"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["samples.l_pv"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match="unknown config key train.stepz; did you mean train.steps"):
        load_config(None, ["train.stepz=3"])


def test_cli_rejects_bad_config_and_stage_ranges(tmp_path, capsys):
    assert main(["samples", "--root", str(tmp_path), "--set", "nope.x=1"]) == 2
    assert "unknown config key nope" in capsys.readouterr().err
    assert pipeline_stages("validate", "samples") == ["validate", "samples"]
    with pytest.raises(CourierError, match="is not a stage"):
        pipeline_stages("sample")
    with pytest.raises(CourierError, match="comes after"):
        pipeline_stages("samples", "validate")


def test_paths_are_under_one_root(tmp_path):
    p = TablePaths.for_root(str(tmp_path / "r"))
    assert p.bronze_items == f"{tmp_path}/r/bronze/items"
    assert p.ctr_samples == f"{tmp_path}/r/silver/ctr_samples"
    assert TablePaths.for_root("s3a://bucket/x/").pretrain_samples == "s3a://bucket/x/silver/pretrain_samples"


def test_override_text_ending_in_a_colon_stays_text():
    from courier_spark.core.config import load_config
    assert load_config(None, ["online.key_prefix=stage:"]).online.key_prefix == "stage:"
    assert load_config(None, ["online.key_prefix=a:b:"]).online.key_prefix == "a:b:"


def test_spark_extra_from_set_becomes_flat_spark_settings():
    from courier_spark.core.spark import flat_settings
    c = load_config(None, ["spark.extra.spark.hadoop.fs.s3a.endpoint=http://s3.local:9000",
                           "spark.extra.spark.sql.ansi.enabled=true"])
    assert flat_settings(c.spark.extra) == {"spark.hadoop.fs.s3a.endpoint": "http://s3.local:9000",
                                            "spark.sql.ansi.enabled": "true"}
    assert flat_settings({"spark.executor.cores": 2}) == {"spark.executor.cores": "2"}

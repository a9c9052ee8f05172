"""Secrets never at rest (issue 23): fake S3 keys and a Redis password given
through every route a user has (`--set`, the YAML file, the environment) must
not appear in any file under the root (run summaries, logs, tables), in the
console, or in the CLI's error lines, while the job still gets them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from courier_spark.core.config import DEMO_CONFIG
from courier_spark.core.redact import REDACTED

pytestmark = pytest.mark.slow   # three CLI runs, two of them start Spark

TINY = ["--set", "synthetic.n_users=40", "--set", "synthetic.n_items=60", "--set", "synthetic.n_days=4",
        "--set", "synthetic.image_size=16"]

# Fake, distinct, long enough to be found by a byte search anywhere.
S3_ACCESS_YAML = "AKIAYAMLFAKE7Q2XW"              # YAML, flat key
S3_TOKEN_YAML = "FwoGZXIvFAKEsessionTOKEN31"      # YAML, nested keys
S3_SECRET_SET = "fakeSetSecret/9xQz+Lm2Kp"        # --set (with the '/' and '+' real keys have)
AWS_ACCESS_ENV = "AKIAENVFAKE3J8KQ"               # environment (s3a and s3fs read these)
AWS_SECRET_ENV = "envSecretFAKE/k9+zT4"
REDIS_PW_YAML_ENV = "redisPwFAKE-5d1c9e"          # env var named by online.password_env in the YAML
REDIS_PW_SET_ENV = "redisPwFAKE-set-8a2b"         # env var named by --set online.password_env=...
REDIS_PW_DEFAULT = "redisPwFAKE-default-4f"       # the default variable, COURIER_REDIS_PASSWORD
SECRETS = [S3_ACCESS_YAML, S3_TOKEN_YAML, S3_SECRET_SET, AWS_ACCESS_ENV, AWS_SECRET_ENV,
           REDIS_PW_YAML_ENV, REDIS_PW_SET_ENV, REDIS_PW_DEFAULT]


def _courier(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "courier_spark.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=400)


def _leaks(blob: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in blob]


def test_no_secret_given_by_any_route_is_written_printed_or_logged(spark, tmp_path):
    root, cwd = tmp_path / "root", tmp_path / "cwd"
    cwd.mkdir()
    config = tmp_path / "cluster.yaml"
    config.write_text(
        f"extends: {DEMO_CONFIG}\n"
        "spark:\n  extra:\n"
        f"    spark.hadoop.fs.s3a.access.key: {S3_ACCESS_YAML}\n"
        f"    spark:\n      hadoop:\n        fs:\n          s3a:\n            session:\n"
        f"              token: {S3_TOKEN_YAML}\n"
        "online:\n  password_env: COURIER_T_REDIS_PW\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": AWS_ACCESS_ENV, "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ENV,
           "COURIER_T_REDIS_PW": REDIS_PW_YAML_ENV, "COURIER_T_REDIS_PW2": REDIS_PW_SET_ENV,
           "COURIER_REDIS_PASSWORD": REDIS_PW_DEFAULT}
    common = ["--config", str(config), "--set", f"spark.extra.spark.hadoop.fs.s3a.secret.key={S3_SECRET_SET}"]
    runs = []

    # 1. A stage that works: summary + log file + console, secrets from all three routes.
    ok = _courier(cwd, env, "generate", "--root", str(root), *common, *TINY)
    runs.append(ok)
    assert ok.returncode == 0, ok.stderr[-3000:]

    # 2. A stage that fails after Spark started (the checks before Spark pass: the feature table is
    #    there, the events too), with the --set secret inside the error it raises: the events' odd
    #    column is named with it, and the error line, the traceback in the log file and --verbose's
    #    DEBUG lines on the console all echo the columns. (A secret inside an input URI fails before
    #    Spark now, in the pre-Spark checks: run 3 covers that route.)
    spark.createDataFrame([(1, "c0001")], "item_id long, centroid_version string").write.format("delta") \
        .save(str(root / "feature_store" / "item_visual"))
    events = tmp_path / "events"
    events.mkdir()
    pd.DataFrame({"item_id": [1], f"note_{S3_SECRET_SET}": ["x"]}).to_parquet(events / "part-0.parquet")
    failed = _courier(cwd, env, "point_in_time", "--root", str(root), *common, "-v",
                      "--set", "online.password_env=COURIER_T_REDIS_PW2", "--set", "retrieval.input_format=parquet",
                      "--set", f"retrieval.input={events}", "--set", f"retrieval.output={tmp_path / 'out'}")
    runs.append(failed)
    assert failed.returncode == 2, failed.stderr[-3000:]
    error = [ln for ln in failed.stderr.splitlines() if ln.startswith("courier: error:")]
    assert len(error) == 1 and "stage point_in_time failed" in error[0] and f"note_{REDACTED}" in error[0], error

    # 3. A command that fails before Spark: the root URI holds the YAML's access key and
    #    the Redis password; the access key is masked only because the config brought it.
    root_uri = f"webhdfs://{S3_ACCESS_YAML}:{REDIS_PW_YAML_ENV}@127.0.0.1:9/root"
    early = _courier(cwd, env, "generate", "--root", root_uri, *common)
    runs.append(early)
    assert early.returncode == 2 and early.stderr.startswith("courier: error:"), early.stderr[-2000:]
    assert f"webhdfs://{REDACTED}:{REDACTED}@127.0.0.1:9/root" in early.stderr, early.stderr

    # Nothing anywhere: every file under the root and the working directory (summaries,
    # run logs, Delta logs and data files), and everything printed.
    files = [p for d in (root, cwd, tmp_path / "out") if d.exists() for p in d.rglob("*") if p.is_file()]
    logs = list((root / "_runs" / "logs").glob("*.log"))
    assert len(logs) == 2 and any(p.suffix == ".parquet" for p in files), files   # the greps saw real output
    for path in files:
        assert _leaks(path.read_bytes()) == [], path
    for r in runs:
        assert _leaks(r.stdout.encode()) == [] and _leaks(r.stderr.encode()) == [], (r.args, r.stderr[-3000:])

    # The summary still says what was set: redacted keys, the variable's name, the rest as given.
    summary = json.loads((root / "_runs" / "generate.json").read_text())
    extra = summary["config"]["spark"]["extra"]
    assert extra["spark.hadoop.fs.s3a.access.key"] == REDACTED
    assert extra["spark"]["hadoop"]["fs"]["s3a"]["secret"]["key"] == REDACTED
    assert extra["spark"]["hadoop"]["fs"]["s3a"]["session"]["token"] == REDACTED
    assert summary["config"]["online"]["password_env"] == "COURIER_T_REDIS_PW"
    assert summary["config"]["synthetic"]["n_items"] == 60
    # The failed run's log holds its traceback (masked), so masking did not drop it.
    failed_log = next(p for p in logs if p.name.endswith("-point_in_time.log")).read_text()
    assert "Traceback" in failed_log and f"note_{REDACTED}" in failed_log

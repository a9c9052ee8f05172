"""The whole pipeline with its dataset root on a real HDFS (MiniDFSCluster on
loopback, reached as ``webhdfs://``): every artefact lands there and nothing
stays on local disk; a bad remote root fails in seconds, naming the root,
and loses no data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from courier_spark.core import fs
from courier_spark.core.catalog import CATALOG
from courier_spark.pipeline import PIPELINE

from ..worlds import TINY_WORLD

pytestmark = pytest.mark.slow

COURIER = str(Path(sys.prefix) / "bin" / "courier")
TINY = {
    **TINY_WORLD,
    "train.backbone": "small_cnn", "train.embed_dim": 64, "train.image_size": 32, "train.batch_size": 16,
    "train.loader_workers": 1, "train.steps": 10, "train.checkpoint_every": 5, "train.backend": "horovod",
    "train.num_proc": 2, "cluster.k": 8,
    # a second method makes the comparisons stage write its artefacts too; an
    # untrained one (no second distributed launch: courier's covers training)
    "evaluate.methods": "[courier,random_init]",
    # one seed: these tests are about where artefacts land, not about the metrics' spread
    "evaluate.seeds": "[0]",
    "evaluate.dnn.epochs": 1, "evaluate.lgbm.num_boost_round": 20,
    "train.init": "random", "train.categories": "[]",
}
# Every table `courier pipeline` writes, by the catalog.
TABLES = tuple(name for name, s in CATALOG.items() if s.made_by.split()[0] in PIPELINE)
STAGES = tuple(PIPELINE)


def courier(args: list[str], scratch: Path, cwd: Path, timeout: float, *, exe: str = COURIER,
            base_env: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run the CLI (``exe``: the project venv's, or an installed wheel's with
    its ``base_env``) with all local scratch (TMPDIR, Spark's local dirs) under
    ``scratch`` and an empty working directory, so what it leaves is visible."""
    e = {k: v for k, v in (os.environ if base_env is None else base_env).items()
         if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")}
    e.update({"TMPDIR": str(scratch), "SPARK_LOCAL_DIRS": str(scratch / "spark"), **env})
    (scratch / "spark").mkdir(parents=True, exist_ok=True)
    return subprocess.run([exe, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def leftovers(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_pipeline_on_hdfs_root(hdfs, tmp_path):
    root = hdfs.uri("courier/ds")
    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    cwd.mkdir()
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    t0 = time.monotonic()
    out = courier(["pipeline", "--root", root, *sets], scratch, cwd, timeout=1800)
    assert out.returncode == 0, f"pipeline on {root} failed:\n{out.stderr[-4000:]}\n{hdfs.tail()}"
    print(f"pipeline on webhdfs root: {time.monotonic() - t0:.0f}s")

    files = set(hdfs.walk("/courier/ds"))
    rel = {f[len("/courier/ds/"):] for f in files}
    # every Delta table: a committed log and data files, on HDFS
    for t in TABLES:
        assert f"{t}/_delta_log/00000000000000000000.json" in rel, t
        assert any(r.startswith(f"{t}/") and r.endswith(".parquet") for r in rel), t
    assert_models(rel)
    # training checkpoints were written to HDFS and read back from it: the
    # artefact's metrics come from the last checkpoint (then the dir is cleared)
    train = json.loads(fs.read_text(fs.join(root, "_runs", "train.json")))
    assert train["metrics"]["checkpoint_steps"] == [5, 10], train["metrics"]
    assert train["path"] == fs.join(root, "models", "courier", "v0001")
    assert fs.isdir(fs.join(root, "models", "_checkpoints"))
    # petastorm materialised its cache under the root and removed it after training
    assert fs.isdir(fs.join(root, "_cache", "petastorm"))
    assert fs.ls(fs.join(root, "_cache", "petastorm")) == []
    assert_reports_and_run_records(root, rel)
    # nothing on local disk: the working directory stays empty, scratch is cleaned up
    assert leftovers(cwd) == [] and [p.name for p in cwd.iterdir()] == []
    assert leftovers(scratch) == [], leftovers(scratch)[:20]


def assert_models(rel: set[str]) -> None:
    """Both methods' models, complete (artifact.json is written last); the
    untrained one has no training model (model.pt) to keep."""
    for m, files in (("courier", ("encoder.pt", "model.pt", "artifact.json")),
                     ("random_init", ("encoder.pt", "artifact.json"))):
        for f in files:
            assert f"models/{m}/v0001/{f}" in rel, (m, f)


def assert_reports_and_run_records(root: str, rel: list[str]) -> None:
    """A remote root after `courier pipeline`: reports, SQL outputs, every
    stage's run summary and the one full log, all under the root."""
    for r in ("report.md", "metrics.json", "results.json", "per_category.csv", "embedding_map.png",
              "sql/per_category_auc_lift.csv"):
        assert f"reports/{r}" in rel, r
    for s in STAGES:
        assert f"_runs/{s}.json" in rel, s
    logs = [r for r in rel if r.startswith("_runs/logs/") and r.endswith("-pipeline.log")]
    assert len(logs) == 1 and "report" in fs.read_text(fs.join(root, logs[0]))
    metrics = json.loads(fs.read_text(fs.join(root, "reports", "metrics.json")))
    assert {"baseline", "courier_cluster_id", "random_init_cluster_id"} <= set(metrics["variants"])


def _fails_fast(args: list[str], root: str, tmp_path: Path, limit_s: float, **env: str) -> str:
    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    t0 = time.monotonic()
    out = courier([*args, "--root", root], scratch, cwd, timeout=120, **env)
    took = time.monotonic() - t0
    assert out.returncode != 0, out.stdout[-2000:]
    err = out.stderr.strip().splitlines()
    assert err and err[-1].startswith("courier: error: dataset root ") and root in err[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert took < limit_s, f"took {took:.1f}s to fail"
    return err[-1]


def test_silent_namenode_fails_in_seconds(tmp_path):
    """A host that accepts the connection and never answers (a hung NameNode,
    a black-holing proxy): the calls' timeouts end it, not the user."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)                          # the kernel accepts; nobody ever reads or replies
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        msg = _fails_fast(["validate"], f"webhdfs://127.0.0.1:{port}/courier/ds", tmp_path, 40.0)
        assert "not usable" in msg and "timed out" in msg.lower(), msg
        assert time.monotonic() - t0 >= 10    # it was the read timeout that ended it
    finally:
        srv.close()


def test_closed_port_fails_in_seconds(hdfs, tmp_path):
    import socket
    with socket.socket() as s:            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = _fails_fast(["samples"], f"webhdfs://127.0.0.1:{port}/courier/ds", tmp_path, 30.0)
    assert "not usable" in msg and "Connection" in msg


def test_permission_denied_fails_in_seconds_and_loses_nothing(hdfs, tmp_path):
    # A dataset owned by the test's user that another user may read but not write.
    hdfs.rest("/owned/ds", "MKDIRS", method="PUT")
    data = fs.join(hdfs.uri("owned/ds"), "bronze", "keep.txt")
    fs.write_text(data, "precious")
    hdfs.rest("/owned/ds", "SETPERMISSION", method="PUT", permission="755")
    before = sorted(hdfs.walk("/owned"))
    msg = _fails_fast(["generate"], hdfs.uri("owned/ds"), tmp_path, 30.0, HADOOP_USER_NAME="intruder")
    assert "not writable" in msg and "Permission denied" in msg and "intruder" in msg
    # the same user cannot even traverse a private root
    hdfs.rest("/private", "MKDIRS", method="PUT", permission="700")
    msg = _fails_fast(["validate"], hdfs.uri("private/ds"), tmp_path, 30.0, HADOOP_USER_NAME="intruder")
    assert "Permission denied" in msg
    assert sorted(hdfs.walk("/owned")) == before and fs.read_text(data) == "precious"
    # reading is still allowed for a reader: `courier sql` checks without writing
    fs.check_root(hdfs.uri("owned/ds"), write=False)

"""Route 2 of ``conf/cluster.yaml``: the executors' Python shipped with the job
as a packed venv (``venv-pack``, ``spark-submit --archives env.tar.gz#env``).

* A fresh venv (``python -m venv``, no pip) gets the project wheel, installed
  non-editable with ``--no-deps``, plus only what the ``features`` job's
  executors import, pinned as in ``requirements/base.txt``: numpy, pandas,
  pyarrow and faiss-cpu (no pyspark: every worker puts its Spark's own
  ``pyspark.zip`` on the Python workers' path; no torch: no executor code of
  ``features`` uses it). ``venv-pack``, installed into that venv, packs it.
* ``jobs/features.py`` is submitted to the standalone cluster with exactly the
  flags the config comment gives: ``--archives <tar>#env --conf
  spark.pyspark.python=./env/bin/python --conf
  spark.pyspark.driver.python=<project venv>``. Its executors run project code:
  the item -> nearest-centroid assignment is ``mapInArrow`` over
  ``courier_spark.features.assignment._assign_batches`` (pickled by reference, so the
  Python workers import ``courier_spark``, numpy, pyarrow and faiss). The
  submit environment still says ``PYSPARK_PYTHON=<project venv>`` (the cluster
  fixture's), so the conf has to win over it.
* Evidence that survives the application: each worker's executor dir holds the
  unpacked ``env/``; a one-line ``.pth`` probe packed into the env makes every
  interpreter started from it write its ``sys.executable``, ``sys.prefix``,
  working directory and ``sys.path`` to stderr, which Spark copies into the
  executor's ``stderr`` log: the Python workers ran ``<executor dir>/env/bin/python``
  and could import only from that env, the base interpreter's standard library
  and Spark's own ``pyspark.zip``/py4j, never from the project venv or the
  checkout. (``PYTHONVERBOSE`` would list each imported file, but it deadlocks
  Spark's Python daemon: the JVM reads the daemon's stdout for its port before
  draining its stderr, and the import lines fill the pipe first.)
* The features tables equal the same stage run in local mode on a copy of the
  same root.
* Negative control: the same submission with an archive packed from the same
  venv minus ``courier_spark`` fails, with the executors' ``No module named
  'courier_spark'``: the project venv's editable install is not reachable.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from courier_spark.core.config import load_config
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import StageContext, run_stage

from ..worlds import save_untrained_encoder
from .conftest import PYTHON, REPO, Running, StandaloneCluster, Submission
from .conftest import spark_home as spark_home_dir
from .test_standalone import SUBMIT_CONF, TINY, assert_both_workers_ran_tasks, assert_tables_equal, executor_dirs, \
    job_args, overrides

pytestmark = pytest.mark.slow

# What the executors of `features` import (module level of courier_spark.features.assignment
# and .cluster, and pyspark's Arrow worker); their pins come from requirements/base.txt.
EXECUTOR_PACKAGES = ("numpy", "pandas", "pyarrow", "faiss-cpu")
VENV_PACK = "venv-pack==0.2.0"
# gzip level 0 (still a .tar.gz Spark unpacks): the archives never leave this
# machine, and compressing them cost about 20 s each.
STORED = ("--compress-level", "0")
# The smallest encoder (untrained) and k-means that make features' inputs: this
# test is about shipping the environment, not the stages' results.
PREP = {**TINY, "train.backbone": "small_cnn", "train.embed_dim": 32, "train.image_size": 32, "cluster.k": 4}
FEATURE_WRITE_TIME = ("valid_from", "valid_to", "updated_at")
# site runs a .pth line that starts with "import": a short line to stderr per interpreter start
# (twice: site reads the venv's site-packages through lib/ and the lib64 link).
PROBE = "packed-env probe: "
PROBE_PTH = ("import os, sys; sys.stderr.write(%r + repr((os.getpid(), sys.executable, sys.prefix, os.getcwd(), "
             "sys.path)) "
             "+ '\\n')\n" % PROBE)


def base_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "base.txt").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def run(cmd: list[str], timeout: float = 300) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def packed_envs(tmp_path_factory, project_wheel) -> dict:
    """The wheel, a fresh venv with it and the executors' packages, and two
    archives of that venv: complete, and without courier_spark (the control)."""
    base = tmp_path_factory.mktemp("packed")
    t0 = time.monotonic()
    wheel = project_wheel   # built once per test run (conftest.py)
    t_wheel = time.monotonic() - t0
    venv, py = base / "venv", base / "venv" / "bin" / "python"
    # --without-pip: the project venv's pip installs into it (--python), so the
    # archive carries no pip/setuptools.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pins = base_pins()
    missing = [p for p in EXECUTOR_PACKAGES if p not in pins]
    assert not missing, f"requirements/base.txt pins no version of {missing}"
    # Their own dependencies (python-dateutil, pytz, ...) at the project venv's versions.
    constraints = base / "constraints.txt"
    deps = {"python-dateutil", "pytz", "tzdata", "six", "packaging"}
    constraints.write_text("".join(f"{d}=={metadata.version(d)}\n" for d in sorted(deps)))
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--disable-pip-version-check"]
    run(pip + ["--no-deps", str(wheel)])
    run(pip + ["-c", str(constraints), VENV_PACK, *(f"{p}=={pins[p]}" for p in EXECUTOR_PACKAGES)], timeout=600)
    t_venv = time.monotonic() - t0 - t_wheel
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    assert (site / "courier_spark" / "features" / "assignment.py").is_file()
    assert not list(site.glob("torch*")) and not list(site.glob("pyspark*")), "the env must stay small"
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.pth")), "not an editable install"
    (site / "zz_packed_env_probe.pth").write_text(PROBE_PTH)
    env_tar, control_tar = base / "env.tar.gz", base / "env-no-courier.tar.gz"
    venv_pack = str(venv / "bin" / "venv-pack")
    run([venv_pack, "-p", str(venv), "-o", str(env_tar), "-q", *STORED])
    t_pack = time.monotonic() - t0 - t_wheel - t_venv
    rel = site.relative_to(venv)
    run([venv_pack, "-p", str(venv), "-o", str(control_tar), "-q", *STORED, "--exclude", f"{rel}/courier_spark/*"])
    print(f"\nwheel {t_wheel:.1f}s ({wheel.name}), venv {t_venv:.1f}s, venv-pack {t_pack:.1f}s: "
          f"{env_tar.stat().st_size / 2**20:.0f} MiB (control {control_tar.stat().st_size / 2**20:.0f} MiB)")
    return {"env": env_tar, "control": control_tar, "site_rel": str(rel)}


@pytest.fixture(scope="module")
def features_inputs(spark, tiny_dataset, tmp_path_factory) -> tuple[str, str, str]:
    """The session's tiny dataset (generate, validate, samples: shared with the
    pipeline tests), its tables copied, then an untrained encoder -> embed ->
    cluster in local mode; three copies of that root: for the cluster run, the local reference
    run and the control."""
    base = tmp_path_factory.mktemp("features_inputs")
    root = str(base / "cluster")
    shared = Path(tiny_dataset[0].paths.root)
    for layer in ("bronze", "silver", "quarantine"):  # not what other tests add there (models, ...)
        shutil.copytree(shared / layer, Path(root) / layer)
    paths = TablePaths.for_root(root)
    # An untrained encoder serves as well as a trained one: this test ships the
    # environment; what training learns is tested elsewhere.
    save_untrained_encoder(paths.models, embed_dim=PREP["train.embed_dim"], image_size=PREP["train.image_size"])
    ctx = StageContext(spark, load_config(None, overrides(PREP)), paths)
    for stage in ("embed", "cluster"):
        run_stage(stage, ctx)
    local, control = str(base / "local"), str(base / "control")
    shutil.copytree(root, local)
    shutil.copytree(root, control)
    return root, local, control


def start_packed(cluster: StandaloneCluster, archive: Path, root: str, name: str,
                 conf: dict[str, str] | None = None) -> Running:
    """jobs/features.py the way conf/cluster.yaml's route 2 says (``.wait()`` for the Submission)."""
    return cluster.start(
        "features.py", job_args(root, PREP), name=name,
        submit_args=["--archives", f"{archive}#env", "--conf", "spark.pyspark.python=./env/bin/python",
                     "--conf", f"spark.pyspark.driver.python={PYTHON}"],
        conf={**SUBMIT_CONF, **(conf or {})})


def test_features_on_a_packed_env(spark, standalone_cluster, packed_envs, features_inputs):
    root, local, control = features_inputs
    t0 = time.monotonic()
    sub = start_packed(standalone_cluster, packed_envs["env"], root, "features_packed").wait(900)
    owner = assert_both_workers_ran_tasks(standalone_cluster, sub)
    probes = assert_packed_interpreter(standalone_cluster, sub, packed_envs["site_rel"])
    print(f"features on the packed env: {sub.seconds:.0f}s; executors {sorted(owner)}; "
          f"packed interpreters started per worker {probes}")

    # The control runs on the cluster while the reference runs in local mode here
    # (spark-submit's start-up is mostly waiting: they overlap well).
    running = start_packed(standalone_cluster, packed_envs["control"], control, "features_no_courier",
                           conf={"spark.task.maxFailures": "1"})
    cfg = load_config(None, overrides(PREP))
    run_stage("features", StageContext(spark, cfg, TablePaths.for_root(local)))
    a, b = TablePaths.for_root(root), TablePaths.for_root(local)
    assert_same_current_rows(spark, a.item_visual_features, b.item_visual_features)
    assert_tables_equal(spark, a, b, ("feature_store/impression_visual",))

    bad = running.wait(900, check=False)
    log = bad.log.read_text(errors="replace")
    assert bad.rc not in (0, None), f"the env without courier_spark did not fail the job; see {bad.log}"
    assert "ModuleNotFoundError: No module named 'courier_spark'" in log, f"see {bad.log}"
    # ... and the executors (the Python workers), not the driver, failed to import it.
    assert re.search(r"Lost task .* \(TID \d+\) \(\S+ executor \d+\)", log), f"see {bad.log}"
    assert not (Path(TablePaths.for_root(control).item_visual_features) / "_delta_log").exists()
    print(f"control without courier_spark failed in {bad.seconds:.0f}s as expected; "
          f"test total {time.monotonic() - t0:.0f}s after the fixtures")


def assert_packed_interpreter(cluster: StandaloneCluster, sub: Submission, site_rel: str) -> dict[str, int]:
    """Every executor dir of ``sub`` holds the unpacked env/; every Python
    interpreter an executor started (the probe's stderr lines) was that dir's
    env/bin/python, with a sys.path inside env/, the base interpreter's standard
    library and Spark's zips only. Returns worker -> interpreters started."""
    spark_home = Path(spark_home_dir())
    stdlib = Path(sys.base_prefix) / "lib"
    counts = {}
    for w, dirs in executor_dirs(cluster, sub.app_id).items():
        pids = set()
        for d in dirs:
            env = d / "env"
            assert (env / "bin" / "python").exists() and (env / site_rel / "courier_spark" / "features" / "assignment.py").is_file(), (
                f"worker{w}: no unpacked env/ with courier_spark in {d}")
            text = (d / "stderr").read_text(errors="replace")
            for line in re.findall(rf"^{PROBE}(.*)$", text, re.M):
                pid, executable, prefix, cwd, path = ast.literal_eval(line)
                at = lambda p: Path(os.path.normpath(os.path.join(cwd, p)))  # noqa: E731 (as the process saw it)
                assert (at(executable), at(prefix), Path(cwd)) == (env / "bin" / "python", env, d), (
                    f"worker{w}/{d.name}: a Python worker ran {executable} (prefix {prefix}) in {cwd}")
                assert env / site_rel in [at(p) for p in path], path
                # Spark's own pyspark.zip, py4j and spark-core jar (from the workers' SPARK_HOME) are expected.
                foreign = [p for p in path if p and not any(at(p).is_relative_to(ok) for ok in (env, stdlib))
                           and not (at(p).is_relative_to(spark_home) and at(p).suffix in (".zip", ".jar"))]
                assert not foreign, f"worker{w}/{d.name}: the Python workers' sys.path reaches outside env/: {foreign}"
                pids.add(pid)
        counts[f"worker{w}"] = len(pids)
    assert sum(counts.values()), f"{sub.name}: no executor started a Python interpreter from env/ ({counts})"
    return counts


def assert_same_current_rows(spark, path_a: str, path_b: str) -> None:
    """item_visual's rows under both roots, without the validity interval (write times)."""
    def rows(path):
        df = spark.read.format("delta").load(path)
        cols = sorted(c for c in df.columns if c not in FEATURE_WRITE_TIME)
        return cols, sorted(tuple(r) for r in df.select(*cols).collect())
    (ca, ra), (cb, rb) = rows(path_a), rows(path_b)
    assert ca == cb, (ca, cb)
    print(f"item_visual: {len(ra)} rows on the cluster, {len(rb)} local")
    assert ra and ra == rb, f"item_visual differs: only cluster {set(ra) - set(rb)}, only local {set(rb) - set(ra)}"

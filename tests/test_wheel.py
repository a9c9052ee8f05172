"""The wheel is the product: `pip wheel` of the checkout, installed into a
fresh venv, runs every stage of the tiny pipeline, `courier sql NAME` and
`report` from an empty working directory, with the shipped demo config
(conf/demo.yaml) and Spark logging config (conf/log4j2.properties) found
inside the installed package, never in the checkout.

The new venv gets only the wheel; the dependencies (pyspark, torch, ...) come
from the project venv through a `.pth` line naming its site-packages. A `.pth`
line only appends that directory to sys.path, so the project venv's own
`.pth` hooks (the editable install of this checkout) do not run there, and
the new venv's site-packages, holding the wheel's courier_spark, comes first.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from courier_spark.pipeline import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
# The smallest world that runs every stage (the CLI test's), one method, one
# seed, on the local backend (no Horovod / TorchDistributor start): this test
# is about packaging; the stages' results are tested elsewhere.
TINY = {
    "synthetic.n_users": 40, "synthetic.n_items": 60, "synthetic.n_days": 4, "synthetic.image_size": 16,
    "synthetic.sessions_per_user_day": 1.0, "spark.shuffle_partitions": 2,
    "train.backbone": "small_cnn", "train.embed_dim": 32, "train.image_size": 16, "train.batch_size": 16,
    "train.loader_workers": 1, "train.steps": 4, "train.checkpoint_every": 2, "train.backend": "local",
    "train.num_proc": 1, "cluster.k": 4, "evaluate.methods": "[courier]", "evaluate.seeds": "[0]",
    "evaluate.dnn.epochs": 1, "evaluate.lgbm.num_boost_round": 10,
    "train.init": "random", "train.categories": "[]",
}
STAGES = tuple(PIPELINE)
# Printed by Spark when it finds no log4j2 configuration of ours.
SPARK_DEFAULT_LOG4J = "Using Spark's default log4j profile"


def test_every_package_is_listed():
    """pyproject.toml lists the packages by hand (package-dir maps sql/ and
    conf/ into the wheel): a package missing there would be missing from the wheel."""
    from setuptools import find_packages
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(ROOT), include=["courier_spark", "courier_spark.*", "training", "training.*"])
    data = {"courier_spark._data.sql": "sql", "courier_spark._data.conf": "conf"}
    assert sorted(tool["packages"]) == sorted([*found, *data])
    assert tool["package-dir"] == data


def checkout_files() -> list[str]:
    """What a fresh clone plus this session's new files holds (git's view,
    ignoring .venv, build outputs and data): the wheel is built from a copy of
    it, so the build neither sees nor writes anything else."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the checkout and install it (no deps)
    into a new venv whose only other entry is the project venv's site-packages."""
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("wheel")
    src, wheels, venv = base / "src", base / "wheels", base / "venv"
    for f in checkout_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    # --no-build-isolation: setuptools comes from the project venv (no index needed)
    b = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
             str(src)], timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    (wheel,) = wheels.glob("courier_spark-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    i = run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
            timeout=300)
    assert i.returncode == 0, i.stderr[-3000:]
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    timeout=60).stdout.strip())
    (site / "courier-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    scratch, cwd, cache = base / "scratch", base / "cwd", base / "cache"
    for d in (scratch / "spark", cwd, cache):
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           # nothing may point the new venv back at the project venv or this checkout
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "PYTHONHOME",
                        "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "VIRTUAL_ENV")}
    env.update({"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "TMPDIR": str(scratch), "SPARK_LOCAL_DIRS": str(scratch / "spark"), "XDG_CACHE_HOME": str(cache)})
    print(f"\nwheel built and installed in {time.monotonic() - t0:.1f}s: {wheel.name}")
    # The Delta jars scripts/bootstrap.sh resolved for the project venv (the
    # documented setting); without it Spark resolves them with Ivy at start.
    jars = Path(sys.prefix) / "courier-delta-jars.txt"
    sets = ["--set", f"spark.delta_jars_file={jars}"] if jars.is_file() else []
    return {"venv": venv, "python": py, "courier": venv / "bin" / "courier", "site": site, "cwd": cwd,
            "cache": cache, "env": env, "wheel": wheel, "sets": sets}


@pytest.mark.slow
def test_wheel_carries_sql_and_conf(wheel_venv):
    import zipfile
    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    for f in sorted((ROOT / "sql").glob("*.sql")):
        assert f"courier_spark/_data/sql/{f.name}" in names
    for f in ("demo.yaml", "cluster.yaml", "world_v1.yaml", "large.yaml", "log4j2.properties"):
        assert f"courier_spark/_data/conf/{f}" in names
    # nothing lands at the top of site-packages but the two packages
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"courier_spark", "training"}


@pytest.mark.slow
def test_wheel_runs_pipeline_sql_and_report_from_an_empty_directory(wheel_venv):
    w, env, cwd = wheel_venv, wheel_venv["env"], wheel_venv["cwd"]
    venv = str(w["venv"].resolve())
    # 1. what the installed code finds: all inside the new venv, none in the checkout
    probe = run([str(w["python"]), "-c", """if True:
        import json, courier_spark, training
        from courier_spark.core.config import DEMO_CONFIG, load_config
        from courier_spark.evaluate.sql_runner import SQL_DIR, shipped_queries
        from courier_spark.core.spark import LOG4J2_PROPERTIES, driver_java_options
        print(json.dumps({"courier_spark": courier_spark.__file__, "training": training.__file__,
                          "config": str(DEMO_CONFIG), "sql": str(SQL_DIR), "queries": shipped_queries(),
                          "log4j2": str(LOG4J2_PROPERTIES), "log4j2_file": LOG4J2_PROPERTIES.is_file(),
                          "java_opts": driver_java_options(), "demo": load_config(DEMO_CONFIG).to_dict()}, default=str))
        """], timeout=120, cwd=cwd, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout)
    for key in ("courier_spark", "training", "config", "sql", "log4j2"):
        assert found[key].startswith(venv + "/"), (key, found[key])
    assert found["queries"] == sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert found["log4j2_file"]
    assert f"-Dlog4j2.configurationFile={Path(found['log4j2']).as_uri()}" in found["java_opts"]
    # the wheel's conf/demo.yaml reads as the checkout's, which differs from
    # the bare schema defaults
    from courier_spark.core.config import DEMO_CONFIG, CourierConfig, load_config
    as_json = lambda cfg: json.loads(json.dumps(cfg.to_dict(), default=str))  # noqa: E731
    assert found["demo"] == as_json(load_config(DEMO_CONFIG)) != as_json(CourierConfig())

    # 2. every stage of the tiny pipeline, with the installed `courier`
    root = str(w["venv"].parent / "ds")
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")] + w["sets"]
    t0 = time.monotonic()
    out = run([str(w["courier"]), "pipeline", "--root", root, *sets], timeout=1500, cwd=cwd, env=env)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-5000:]
    seconds = {s: json.loads((Path(root) / "_runs" / f"{s}.json").read_text())["seconds"] for s in STAGES}
    print(f"tiny pipeline from the wheel: {took:.0f}s; stages: {seconds}")
    for s in STAGES:
        assert f"[courier {s}] finished in" in out.stderr, s
    # Spark took our log4j2 file (the shipped copy), not its default profile
    assert SPARK_DEFAULT_LOG4J not in out.stderr, out.stderr[:3000]
    report = Path(root) / "reports"
    assert (report / "report.md").is_file() and (report / "sql" / "per_category_auc_lift.csv").is_file()

    # 3. `courier sql NAME` (a shipped query, by name) against that root, read-only
    before = sorted((str(p), p.stat().st_mtime_ns) for p in Path(root).rglob("*"))
    q = run([str(w["courier"]), "sql", "per_category_auc_lift", "--root", root, "--out", "auc.csv",
             "--limit", "3", *w["sets"]], timeout=600, cwd=cwd, env=env)
    assert q.returncode == 0, q.stderr[-3000:]
    assert SPARK_DEFAULT_LOG4J not in q.stderr
    assert sorted((str(p), p.stat().st_mtime_ns) for p in Path(root).rglob("*")) == before
    assert list((w["cache"] / "courier" / "logs").glob("*-sql.log"))
    sql = pd.read_csv(cwd / "auc.csv")
    # against the Python per-category AUC the evaluate stage wrote (metrics.per_category_auc)
    py = pd.read_csv(io.StringIO((report / "per_category.csv").read_text()))
    m = py.merge(sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    assert len(m) == len(sql) > 0 and m["auc_py"].notna().any()
    np.testing.assert_allclose(m["auc_sql"], m["auc_py"], atol=1e-6, rtol=0)
    # the working directory holds only what was asked for
    assert sorted(p.name for p in cwd.iterdir()) == ["auc.csv"]

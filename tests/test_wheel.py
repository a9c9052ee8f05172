"""The wheel is the product: `pip wheel` of the checkout (conftest.py's
``project_wheel``), installed into a fresh venv (``wheel_venv``,
tests/installs.py), carries the shipped SQL and configs, and the installed
code finds the demo config (conf/demo.yaml), the SQL and the Spark logging
config (conf/log4j2.properties) inside the installed package, never in the
checkout. Every stage of the pipeline, `courier sql NAME` and `report` run
from that venv in an empty working directory on the S3 root
(tests/remote/test_s3_root.py), where the pipeline runs anyway.
"""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    """pyproject.toml lists the packages by hand (package-dir maps sql/ and
    conf/ into the wheel): a package missing there would be missing from the wheel."""
    from setuptools import find_packages
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(ROOT), include=["courier_spark", "courier_spark.*", "training", "training.*"])
    data = {"courier_spark._data.sql": "sql", "courier_spark._data.conf": "conf"}
    assert sorted(tool["packages"]) == sorted([*found, *data])
    assert tool["package-dir"] == data


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


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
def test_installed_code_finds_its_files_inside_the_venv(wheel_venv):
    w, env, cwd = wheel_venv, wheel_venv["env"], wheel_venv["cwd"]
    venv = str(w["venv"].resolve())
    # what the installed code finds: all inside the new venv, none in the checkout
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


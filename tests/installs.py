"""The project as users install it: the wheel of the working tree (built once
per test run, ``project_wheel`` in conftest.py) and a fresh venv holding only
that wheel (``wheel_venv``). The wheel test, the S3 root's pipeline, the
serving client's clean venv and the cluster's packed env all use these.

The new venv gets only the wheel; the dependencies (pyspark, torch, ...) come
from the project venv through a `.pth` line naming its site-packages. A `.pth`
line only appends that directory to sys.path, so the project venv's own
`.pth` hooks (the editable install of this checkout) do not run there, and
the new venv's site-packages, holding the wheel's courier_spark, comes first.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the build reads: the packages, the folders pyproject.toml maps into
# them, and the metadata's files.
WHEEL_INPUTS = ("courier_spark", "training", "sql", "conf", "pyproject.toml", "README.md")


def build_wheel(tmp: Path) -> Path:
    """A wheel of the working tree (tracked and new files), built from a copy so
    the build neither sees nor writes anything else in the checkout."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *WHEEL_INPUTS],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp / "src"
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp / "dist"
    # --no-build-isolation: setuptools comes from the project venv (no index needed)
    b = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    (whl,) = out.glob("courier_spark-*.whl")
    return whl


def wheel_venv(base: Path, wheel: Path) -> dict:
    """Install ``wheel`` (no deps) into a new venv whose only other entry is the
    project venv's site-packages; an environment that points nothing back at
    the project venv or the checkout, with its own scratch, cache and an empty
    working directory."""
    t0 = time.monotonic()
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    i = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
    assert i.returncode == 0, i.stderr[-3000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
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
    print(f"\nwheel installed in a fresh venv in {time.monotonic() - t0:.1f}s: {wheel.name}")
    # The Delta jars scripts/bootstrap.sh resolved for the project venv (the
    # documented setting); without it Spark resolves them with Ivy at start.
    from courier_spark.core.spark import delta_jars_file
    jars = delta_jars_file()
    sets = ["--set", f"spark.delta_jars_file={jars}"] if jars.is_file() else []
    return {"venv": venv, "python": py, "courier": venv / "bin" / "courier", "site": site, "cwd": cwd,
            "scratch": scratch, "cache": cache, "env": env, "wheel": wheel, "sets": sets}

"""What a person sees running the CLI: `[courier STAGE]` lines only, the full
log in <root>/_runs/logs/, --quiet for warnings only."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

TINY = ["--set", "synthetic.n_users=40", "--set", "synthetic.n_items=60", "--set", "synthetic.n_days=4",
        "--set", "synthetic.image_size=16"]
pytestmark = pytest.mark.slow  # two CLI runs, each starting Spark

# The JVM prints this itself whenever Spark starts (its launcher adds the module).
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"


def _run(root, *flags):
    return subprocess.run([sys.executable, "-m", "courier_spark.cli", "generate", "--root", str(root), *TINY, *flags],
                          capture_output=True, text=True, timeout=300)


def test_console_has_only_courier_lines_and_the_log_file_has_everything(tmp_path):
    r = _run(tmp_path / "r")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    other = [ln for ln in lines if not ln.startswith("[courier ") and ln != JVM_NOTICE]
    assert other == [], other
    assert any(ln.startswith("[courier generate] finished in") for ln in lines)
    logs = os.listdir(tmp_path / "r" / "_runs" / "logs")
    assert len(logs) == 1 and logs[0].endswith("-generate.log")
    text = (tmp_path / "r" / "_runs" / "logs" / logs[0]).read_text()
    assert "INFO courier.generate: finished in" in text and " DEBUG " in text   # the file is fuller than the console

    q = _run(tmp_path / "r", "--quiet")
    assert q.returncode == 0 and "[courier" not in q.stderr, q.stderr[-2000:]
    assert len(os.listdir(tmp_path / "r" / "_runs" / "logs")) == 2

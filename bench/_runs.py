"""Helpers the benches share: run a courier command, train -> embed -> cluster one method."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COURIER = [str(Path(sys.executable).with_name("courier"))]  # the venv's console script


DEMO_CONFIG = REPO / "conf" / "demo.yaml"   # the benches' worlds are the demo's (or extend it)


def courier(*args: str) -> None:
    """One courier command, with the demo's config unless ``args`` name one;
    its console output goes to ours."""
    t0 = time.perf_counter()
    config = [] if "--config" in args else ["--config", str(DEMO_CONFIG)]
    subprocess.run([*COURIER, *args, *config], check=True, cwd=REPO)
    print(f"[bench] courier {args[0]} done in {time.perf_counter() - t0:.0f}s", flush=True)


def train_embed_cluster(root: str, methods: list[str], sets: list[str]) -> dict[str, str]:
    """``courier comparisons`` for ``methods`` (serving a method not among them,
    so all are trained) -> {method: its new model version}."""
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.schema import METHODS
    from training.artifact import load_artifact
    serving = next(m for m in METHODS if m not in methods)
    courier("comparisons", "--root", root, *sets, "--set", f"embed.method={serving}",
            "--set", f"evaluate.methods=[{','.join(methods)}]", "--set", "evaluate.all_ways_methods=[]")
    return {m: load_artifact(TablePaths.for_root(root).models, m, "latest").model_version for m in methods}

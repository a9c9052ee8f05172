"""Progress output and run summaries shared by every stage."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator


def say(stage: str, msg: str) -> None:
    print(f"[courier {stage}] {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(stage: str, what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    say(stage, f"{what} ...")
    yield
    say(stage, f"{what} done in {time.perf_counter() - t0:.1f}s")


def write_summary(directory: str, stage: str, summary: dict) -> str | None:
    """Write ``<root>/_runs/<stage>.json`` (local roots only; remote roots
    keep the summary in the job's output)."""
    if "://" in directory and not directory.startswith("file:"):
        return None
    directory = directory.removeprefix("file:")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{stage}.json")
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True, default=str)
    return path

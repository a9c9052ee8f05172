"""The large preset end to end through ``features`` on this machine: wall time
and peak memory per stage, each stage its own ``courier`` command.

    .venv/bin/python bench/bench_large.py [--root /tmp/large] [--config conf/large.yaml] [--from STAGE] [--until STAGE]
                                          [--set KEY=VALUE ...]

Memory is sampled every 0.25 s over the command's whole process tree (psutil)
and split by role: the driver JVM, the Python driver (the ``courier`` process),
and the Python workers (PySpark's daemon and workers, Horovod ranks, loader
processes) as the peak of their *sum*. "tree" is the peak of the total. RSS
counts shared pages once per process, so the sums are upper bounds. Printed
as a Markdown table (the README's) plus one JSON line per stage.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil

STAGES = ("generate", "validate", "samples", "train", "embed", "cluster", "features")
GIB = 2 ** 30


def role(p: psutil.Process, root_pid: int) -> str:
    if p.pid == root_pid:
        return "python_driver"
    try:
        name = p.name()
    except psutil.Error:
        return "other"
    return "jvm" if name == "java" else "python_workers" if name.startswith("python") else "other"


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak: dict[str, int] = {"jvm": 0, "python_driver": 0, "python_workers": 0, "tree": 0}
        self.max_procs = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            top = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop_flag.is_set():
            try:
                procs = [top] + top.children(recursive=True)
            except psutil.Error:
                break
            now = {k: 0 for k in self.peak}
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                r = role(p, self.pid)
                if r in now:
                    now[r] += rss
                now["tree"] += rss
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.max_procs = max(self.max_procs, len(procs))
            self.stop_flag.wait(self.every_s)


def run_stage(stage: str, root: str, config: str, sets: list[str], log_dir: str) -> dict:
    cmd = [os.path.join(sys.prefix, "bin", "courier"), stage, "--root", root, "--config", config, "-q"]
    for s in sets:
        cmd += ["--set", s]
    log = os.path.join(log_dir, f"{stage}.log")
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop_flag.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if rc != 0:
        with open(log, errors="replace") as fh:
            tail = fh.read()[-3000:]
        sys.exit(f"{stage} failed (exit {rc}); last lines of {log}:\n{tail}")
    return {"stage": stage, "wall_s": round(wall, 1), "max_processes": sampler.max_procs,
            **{f"peak_{k}_gib": round(v / GIB, 2) for k, v in sampler.peak.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/large")
    ap.add_argument("--config", default="conf/large.yaml")
    ap.add_argument("--from", dest="start", default="generate", choices=STAGES)
    ap.add_argument("--until", dest="until", default="features", choices=STAGES)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    log_dir = os.path.join("/tmp", "courier-bench-large-logs")
    os.makedirs(log_dir, exist_ok=True)
    rows = []
    print(f"large preset: root {a.root}, config {a.config}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / GIB:.0f} GiB; stage logs in {log_dir}", flush=True)
    for stage in STAGES[STAGES.index(a.start):STAGES.index(a.until) + 1]:
        r = run_stage(stage, a.root, a.config, a.sets, log_dir)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| stage | wall | driver JVM peak | Python driver peak | Python workers peak (sum) | whole tree peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['wall_s']:.0f} s | {r['peak_jvm_gib']:.2f} GiB | "
              f"{r['peak_python_driver_gib']:.2f} GiB | {r['peak_python_workers_gib']:.2f} GiB | "
              f"{r['peak_tree_gib']:.2f} GiB |")
    total = sum(r["wall_s"] for r in rows)
    print(f"| total | {total:.0f} s ({total / 60:.1f} min) | | | | |")


if __name__ == "__main__":
    main()

"""Faults: a job SIGKILLed in the middle of a Delta write and re-run, training
killed and resumed, Horovod workers that die or hang, and two writers merging
into one feature table at the same time."""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from pyspark.sql import functions as F

from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.core.tables import read_table

from ..conftest import tiny_config
from .helpers import (DAY, GOOD, T0, bad_bronze, delta_version, impressions_df, items_df, rows_of,
                      run_summary, write_bronze)

# Horovod's own Spark thread re-raises the job cancellation after a worker
# died; the failure is asserted through run_distributed, not this echo.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parquet_files(path: str) -> set[str]:
    return set(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its JVM: a hard kill, no cleanup
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


@pytest.mark.slow  # a second JVM: about a minute on 2 idle cores
def test_validate_killed_mid_delta_write_then_rerun(spark, tmp_path, reliability):
    """SIGKILL `courier validate` while it writes a Delta table: every table stays
    readable at its last committed version, and the re-run gives exactly the
    result of a clean run (no duplicated, no lost rows)."""
    from courier_spark.data.validate import validate_bronze

    paths = TablePaths.for_root(str(tmp_path / "ds"))
    items, imps = bad_bronze(spark)
    write_bronze(paths, items, imps)
    cfg = tiny_config()
    run_stage("validate", StageContext(spark, cfg, paths))       # version 0 of every output table
    tables = [paths.silver_items, paths.quarantine_items, paths.silver_impressions, paths.quarantine_impressions]
    before_rows = {t: rows_of(read_table(spark, t).drop("image")) for t in tables}
    before_version = {t: delta_version(t) for t in tables}
    before_files = {t: _parquet_files(t) for t in tables}

    # New bronze data, so the killed run would have changed every table.
    extra_items = items_df(spark, [(100 + i, "hats", None, 2.0, GOOD, T0) for i in range(4)])
    extra_imps = impressions_df(spark, [(f"x{i}", f"rx{i // 3}", 7, None, 100 + i % 4, i % 3,
                                         T0 + DAY + dt.timedelta(minutes=i), i % 3 == 0) for i in range(30)]
                                + [("x1", "rx0", 7, None, 101, 1, T0 + 2 * DAY, False)])  # a re-delivery
    extra_items.write.format("delta").mode("append").save(paths.bronze_items)
    extra_imps.write.format("delta").mode("append").save(paths.bronze_impressions)

    conf = tmp_path / "job.yaml"
    # Small JVM, few partitions: Delta's state rebuild defaults to 50 tasks, most of a
    # tiny job's time on 2 busy cores (performance knobs only).
    conf.write_text("spark:\n  driver_memory: 1g\n  shuffle_partitions: 2\n  extra:\n"
                    "    spark.databricks.delta.snapshotPartitions: 2\n    spark.ui.enabled: false\n")
    args = [sys.executable, "-m", "courier_spark.cli", "validate", "--root", paths.root, "--config", str(conf)]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed_in = None
    t_start = time.time()
    deadline = time.time() + 240
    try:
        while time.time() < deadline and killed_in is None:
            assert proc.poll() is None, "validate finished before it could be killed: " + \
                (tmp_path / "killed.log").read_text()[-2000:]
            for t in tables:
                # A new data file but no new commit: the write is in flight.
                if _parquet_files(t) - before_files[t] and delta_version(t) == before_version[t]:
                    killed_in = t
                    break
            else:
                time.sleep(0.01)
    finally:
        _kill_group(proc)
    assert killed_in is not None, "never saw a Delta write in flight"
    print(f"\nkilled {os.path.basename(killed_in)} write {time.time() - t_start:.1f}s after start")
    orphans = _parquet_files(killed_in) - before_files[killed_in]
    assert orphans and delta_version(killed_in) == before_version[killed_in]  # killed mid-write

    # Readable at the last committed version, with exactly the old rows (orphan files ignored).
    for t in tables:
        if delta_version(t) == before_version[t]:
            assert rows_of(read_table(spark, t).drop("image")) == before_rows[t], t

    # Re-run the same stage (in this process's warm JVM: the kill already cost one JVM start).
    run_stage("validate", StageContext(spark, cfg, paths))
    # Same result as a clean run over the same bronze.
    ref = validate_bronze(read_table(spark, paths.bronze_items), read_table(spark, paths.bronze_impressions),
                          cfg.validate)
    assert rows_of(read_table(spark, paths.silver_impressions)) == rows_of(ref.clean_impressions)
    assert rows_of(read_table(spark, paths.quarantine_impressions)) == rows_of(ref.quarantine_impressions)
    assert rows_of(read_table(spark, paths.silver_items).drop("image")) == rows_of(ref.clean_items.drop("image"))
    s = run_summary(paths, "validate")
    n_in = imps.count() + extra_imps.count()
    assert s["impressions_in"] == n_in == s["impressions_clean"] + s["impressions_quarantined"]
    assert s["impression_reasons"]["duplicate_event_id"] == 3
    assert read_table(spark, paths.silver_impressions).groupBy("event_id").count().filter("count > 1").count() == 0
    reliability.fault(f"SIGKILL `courier validate` mid-write of {os.path.relpath(killed_in, paths.root)}")
    reliability.rerun("validate re-run after kill")
    reliability.rows("validate after kill", n_in, s["impressions_clean"] + s["impressions_quarantined"])


def test_killed_training_resumes_from_checkpoint(tmp_path, reliability):
    """SIGKILL the real training loop between checkpoints; the re-run resumes from
    the last checkpoint and finishes with no checkpoint step repeated or skipped."""
    ckpt = str(tmp_path / "ckpt")
    steps = 300
    args = [sys.executable, "-m", "tests.reliability.train_proc", ckpt, str(steps)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not glob.glob(os.path.join(ckpt, "step_0000010.pt")):
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
    finally:
        _kill_group(proc)
    saved = sorted(glob.glob(os.path.join(ckpt, "step_*.pt")))
    assert saved and os.path.basename(saved[-1]) != f"step_{steps:07d}.pt", "killed too late"
    last = int(os.path.basename(saved[-1])[5:12])
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["resumed_from"] == last and out["steps_done"] == steps
    import torch
    final = torch.load(os.path.join(ckpt, f"step_{steps:07d}.pt"), map_location="cpu", weights_only=False)
    assert final["checkpoint_steps"] == list(range(5, steps + 1, 5))    # none repeated, none skipped
    hist = [h[0] for h in final["history"]]
    assert hist == sorted(set(hist)) and hist[-1] == steps              # one loss per step, in order
    reliability.fault(f"SIGKILL training at step ~{last}, resumed")
    reliability.rerun("training re-run resumes from checkpoint")


def _horovod_fn(mode: str):
    def fn(backend):
        import os as _os
        import time as _time

        import horovod.torch as hvd
        import torch as _torch
        hvd.init()
        if hvd.rank() == 1:
            if mode == "exit":
                _os._exit(3)                       # dies without a Python error
            if mode == "raise":
                raise ValueError("corrupt shard on rank 1")
            if mode == "hang":
                _time.sleep(600)                   # alive but never reaches the collective
        return float(hvd.allreduce(_torch.ones(1), name="probe"))
    return fn


@pytest.mark.parametrize("mode,message", [
    # Horovod reports the first process to exit: rank 1 itself (code 3), or
    # rank 0 that saw its peer vanish first; either way rank 1 is named.
    ("exit", r"rank 1 (exited with code 3|died) without a Python error"),
    ("raise", r"rank 1 raised ValueError: corrupt shard on rank 1"),
])
def test_horovod_worker_death_fails_with_clear_message(spark, mode, message, reliability):
    from training.launch import run_distributed
    from courier_spark.core.errors import DistributedTrainingError
    t0 = time.time()
    with pytest.raises(DistributedTrainingError, match=r"horovod training failed after \d+s with 2 workers: "
                                                       + message):
        run_distributed(_horovod_fn(mode), (), "horovod", 2, timeout_s=240)
    assert time.time() - t0 < 200  # failed promptly, well before the watchdog
    # The Spark session is still usable afterwards (no leaked, cancelled job state).
    assert spark.range(10).count() == 10
    reliability.fault(f"horovod rank 1 {'os._exit(3)' if mode == 'exit' else 'raises'}")


@pytest.mark.slow
def test_horovod_hung_worker_is_cancelled_by_watchdog(spark, reliability):
    from training.launch import run_distributed
    from courier_spark.core.errors import DistributedTrainingError
    t0 = time.time()
    with pytest.raises(DistributedTrainingError, match=r"did not finish within 20s and was cancelled"):
        run_distributed(_horovod_fn("hang"), (), "horovod", 2, timeout_s=20)
    assert time.time() - t0 < 150
    assert spark.range(10).count() == 10
    reliability.fault("horovod rank 1 hangs (watchdog)")


def test_horovod_more_workers_than_slots_is_a_clear_error(spark, reliability):
    from training.launch import run_distributed
    from courier_spark.core.errors import DistributedTrainingError
    slots = spark.sparkContext.defaultParallelism
    with pytest.raises(DistributedTrainingError, match=rf"train.num_proc={slots + 1} but Spark master .* runs "
                                                       rf"only {slots} task\(s\) at once"):
        run_distributed(_horovod_fn("ok"), (), "horovod", slots + 1)
    reliability.bad("train.num_proc above the task slots")


def test_two_writers_merge_into_one_feature_table(spark, tmp_path, reliability):
    """Two writers MERGE overlapping keys into a not-yet-existing table at once:
    both succeed (losing commits are retried), keys stay unique and every row
    is entirely one writer's."""
    from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, feature_versions, merge_upsert, read_features
    path = str(tmp_path / "item_visual")
    schema = ("item_id long, courier_cluster_id int, distance float, model_version string, "
              "centroid_version string")
    writers = {"A": spark.createDataFrame([(i, 1, 0.1, "m/vA", "c0001") for i in range(1, 61)], schema),
               "B": spark.createDataFrame([(i, 2, 0.2, "m/vB", "c0002") for i in range(31, 91)], schema)}
    barrier = threading.Barrier(len(writers))
    results, errors = {}, {}

    def write(name):
        barrier.wait()  # start together: both read the same (empty) snapshot
        try:
            results[name] = merge_upsert(spark, writers[name], path, ["item_id"], ITEM_VISUAL_COMMENTS)
        except Exception as e:  # noqa: BLE001 - reported below
            errors[name] = e

    threads = [threading.Thread(target=write, args=(n,)) for n in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, {n: f"{type(e).__name__}: {str(e)[:600]}" for n, e in errors.items()}
    df = read_features(spark, path)
    rows = df.collect()
    assert len(rows) == 90 and df.select("item_id").distinct().count() == 90
    owner = {1: ("m/vA", "c0001", 0.1), 2: ("m/vB", "c0002", 0.2)}
    for r in rows:  # a row is wholly one writer's: never A's cluster with B's versions
        mv, cv, d = owner[r.courier_cluster_id]
        assert (r.model_version, r.centroid_version) == (mv, cv) and abs(r.distance - d) < 1e-6, r
    by_id = {r.item_id: r.model_version for r in rows}
    assert all(by_id[i] == "m/vA" for i in range(1, 31)) and all(by_id[i] == "m/vB" for i in range(61, 91))
    # Every committed version is readable and never holds a duplicated key.
    for v in feature_versions(spark, path):
        snap = read_features(spark, path, version=v["version"])
        assert snap.count() == snap.select("item_id").distinct().count()
    retries = sum(r["retries"] for r in results.values())
    print(f"\nconcurrent MERGE: {retries} retried commit(s); owners {Counter(by_id.values())}")
    reliability.fault(f"two concurrent MERGE writers ({retries} commit conflict(s) retried)")
    reliability.rows("concurrent merges (distinct keys)", 90, len(rows))

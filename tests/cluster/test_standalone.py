"""The project's stages on a real Spark standalone cluster (1 master, 2
workers of 1 core each, loopback): ``jobs/validate.py``, ``jobs/samples.py``
and ``jobs/train.py`` (Horovod on Spark, one rank per worker) submitted with
``spark-submit --master spark://...`` and ``conf/cluster.yaml``.

* The cluster's tables equal, row for row, the same stages run in local mode
  on the same bronze tables: the session's tiny world (``tiny_dataset``,
  bad rows included), whose bronze each cluster run gets a copy of.
* Both workers ran tasks, for every submitted job. Evidence, from two
  independent sources that survive the application:
  - each worker's work dir ``<work-dir>/<app-id>/<executor-id>/`` exists only
    if that worker launched an executor for the app, and the executor's
    ``stderr`` (Spark's default INFO log) has its ``Finished task ... (TID n)``
    lines;
  - the application's event log (``spark.eventLog.enabled``, one directory per
    submission) lists every successful task with its executor ID, and the
    stage of the ``horovod.spark.run.*`` job group (the training ranks).
  For training, the two Horovod tasks ran one on each worker, and each
  worker's executor stderr shows its Horovod task (same TID) finishing.
* TorchDistributor (``train.backend=torch_distributor``, mode auto: on the
  executors for a ``spark://`` master) the same way: its barrier stage's two
  tasks ran one on each worker, and each rank reported its working directory,
  ``<work-dir>/<app-id>/<executor-id>``, one per worker; the first-step
  gradients equal one process's; a rank that raises or is killed fails the run
  in seconds with its rank named (tests/cluster/torch_distributor_job.py).
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from courier_spark.core.paths import TablePaths

from ..worlds import TINY_WORLD
from .conftest import REPO, StandaloneCluster, Submission

pytestmark = pytest.mark.slow

CLUSTER_YAML = str(REPO / "conf" / "cluster.yaml")
TINY = {**TINY_WORLD, "train.init": "random", "train.categories": "[]"}
TRAIN = {"train.steps": 20, "train.batch_size": 8, "train.num_proc": 2, "train.backend": "horovod",
         "train.image_size": 32, "train.embed_dim": 32,
         # a stuck rank fails the job in bounded time instead of hanging the test
         "train.timeout_s": 600}
# Delta rebuilds table state with 50 partitions by default: on 2 slots and
# tiny tables that is most of each job's time (courier_spark/core/spark.py sets the
# same for local mode only).
SUBMIT_CONF = {"spark.databricks.delta.snapshotPartitions": "2"}
VALIDATED = ("silver/items", "silver/impressions", "quarantine/items", "quarantine/impressions")
COMPARED = (*VALIDATED, "silver/pretrain_samples", "silver/ctr_samples")
WRITE_TIME = ("updated_at", "created_at")
FINISHED = re.compile(r"Finished task \S+ in stage \S+ \(TID (\d+)\)")
RUNNING = re.compile(r"Running task \S+ in stage \S+ \(TID (\d+)\)")


def overrides(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


def set_args(d: dict) -> list[str]:
    return [a for o in overrides(d) for a in ("--set", o)]


def job_args(root: str, extra: dict | None = None) -> list[str]:
    return ["--root", root, "--config", CLUSTER_YAML, *set_args({**TINY, **(extra or {})})]


# --------------------------------------------------------------------------- evidence
def executor_dirs(cluster: StandaloneCluster, app_id: str) -> dict[int, list[Path]]:
    """Worker index -> the executor dirs that worker created for ``app_id``."""
    out = {}
    for w in cluster.workers:
        app_dir = w.work_dir / app_id
        out[w.index] = sorted(p for p in app_dir.iterdir() if p.is_dir()) if app_dir.is_dir() else []
    return out


def finished_tids(executor_dir: Path) -> set[int]:
    stderr = executor_dir / "stderr"
    text = stderr.read_text(errors="replace") if stderr.is_file() else ""
    return {int(m.group(1)) for m in FINISHED.finditer(text)}


def successful_tasks(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("Event") == "SparkListenerTaskEnd"
            and e.get("Task End Reason", {}).get("Reason") == "Success"]


def job_group_stages(events: list[dict], prefix: str) -> set[int]:
    stages = set()
    for e in events:
        if e.get("Event") == "SparkListenerJobStart" and \
                str((e.get("Properties") or {}).get("spark.jobGroup.id", "")).startswith(prefix):
            stages.update(e.get("Stage IDs", []))
    return stages


def assert_both_workers_ran_tasks(cluster: StandaloneCluster, sub: Submission) -> dict[str, int]:
    """Both sources agree that each worker's executor finished tasks of ``sub``'s
    application; returns executor ID -> worker index."""
    app_id = sub.app_id
    dirs = executor_dirs(cluster, app_id)
    owner: dict[str, int] = {}
    for w, ds in dirs.items():
        assert ds, (f"{sub.name}: worker{w} launched no executor for {app_id} "
                    f"(nothing under {cluster.workers[w].work_dir / app_id})")
        for d in ds:
            owner[d.name] = w
    events = sub.events()
    by_exec = collections.defaultdict(set)
    for e in successful_tasks(events):
        by_exec[e["Task Info"]["Executor ID"]].add(e["Task Info"]["Task ID"])
    assert set(by_exec) <= set(owner), f"{sub.name}: tasks on unknown executors {set(by_exec) - set(owner)}"
    counts = {}
    for w in dirs:
        execs = [x for x, ow in owner.items() if ow == w]
        logged = set().union(*(finished_tids(cluster.workers[w].work_dir / app_id / x) for x in execs))
        recorded = set().union(*(by_exec.get(x, set()) for x in execs))
        assert recorded, f"{sub.name}: the event log has no successful task on worker{w} (executors {execs})"
        assert logged, f"{sub.name}: worker{w}'s executor stderr has no 'Finished task' line ({execs})"
        # Every task the driver saw succeed there, the executor logged finishing.
        assert recorded <= logged, f"{sub.name}: worker{w}: TIDs {sorted(recorded - logged)} not in its stderr"
        counts[f"worker{w}"] = len(recorded)
    print(f"\n{sub.name} ({app_id}, {sub.seconds:.0f}s): successful tasks per worker {counts}")
    return owner


# --------------------------------------------------------------------------- the runs
def copy_bronze(tiny_dataset, root: str) -> TablePaths:
    """The tiny world's bronze tables (generated once per test run) under a new root."""
    src, dst = tiny_dataset[0].paths, TablePaths.for_root(root)
    for t in ("items", "impressions"):
        shutil.copytree(src.table("bronze", t), dst.table("bronze", t))
    return dst


@pytest.fixture(scope="module")
def cluster_root(standalone_cluster, tiny_dataset, tmp_path_factory):
    """the tiny world's bronze -> validate, samples (spark-submit on the cluster)."""
    root = str(tmp_path_factory.mktemp("on_cluster") / "ds")
    copy_bronze(tiny_dataset, root)
    subs = {job: standalone_cluster.submit(f"{job}.py", job_args(root), name=job, conf=SUBMIT_CONF)
            for job in ("validate", "samples")}
    return root, subs


def test_validate_and_samples_run_on_both_workers(standalone_cluster, cluster_root):
    root, subs = cluster_root
    p = TablePaths.for_root(root)
    for job in ("validate", "samples"):
        summary = json.loads((Path(p.run_summaries) / f"{job}.json").read_text())
        assert summary, job
        assert_both_workers_ran_tasks(standalone_cluster, subs[job])
    for t in COMPARED:
        assert (Path(p.table(*t.split("/"))) / "_delta_log").is_dir(), t


def test_cluster_tables_equal_local_mode(spark, cluster_root, tiny_dataset):
    """validate + samples in local mode on the same bronze (the tiny world's own
    run, with the default config: conf/cluster.yaml must change only how Spark
    runs): the same rows, quarantine included."""
    root, _ = cluster_root
    assert_tables_equal(spark, TablePaths.for_root(root), tiny_dataset[0].paths, COMPARED)


def assert_tables_equal(spark, a: TablePaths, b: TablePaths, tables) -> None:
    """Each table (``layer/name``) holds the same rows under roots a (the cluster's) and b."""
    for t in tables:
        layer, name = t.split("/")
        da = spark.read.format("delta").load(a.table(layer, name))
        db = spark.read.format("delta").load(b.table(layer, name))
        cols = sorted(c for c in da.columns if c not in WRITE_TIME)
        assert sorted(c for c in db.columns if c not in WRITE_TIME) == cols, f"{t}: columns differ"
        da, db = da.select(*cols), db.select(*cols)
        na, nb = da.count(), db.count()
        only_cluster, only_local = da.exceptAll(db), db.exceptAll(da)
        n_oc, n_ol = only_cluster.count(), only_local.count()
        print(f"{t}: {na} rows on the cluster, {nb} local; only cluster {n_oc}, only local {n_ol}")
        assert na > 0, f"{t} is empty"
        assert (na, n_oc, n_ol) == (nb, 0, 0), (
            f"{t}: cluster {na} rows vs local {nb}; only on the cluster {n_oc} "
            f"(e.g. {only_cluster.limit(3).collect()}), only local {n_ol} (e.g. {only_local.limit(3).collect()})")


def test_horovod_training_one_rank_per_worker(standalone_cluster, cluster_root):
    root, _ = cluster_root
    sub = standalone_cluster.submit("train.py", job_args(root, TRAIN), name="train", conf=SUBMIT_CONF,
                                    timeout_s=1200)
    artifact = Path(root) / "models" / "courier" / "v0001" / "artifact.json"
    assert artifact.is_file(), f"no model version at {artifact}; see {sub.log}"
    meta = json.loads(artifact.read_text())
    assert meta["config"]["backend"] == "horovod" and meta["config"]["num_proc"] == 2
    assert meta["metrics"]["steps"] == 20

    owner = assert_both_workers_ran_tasks(standalone_cluster, sub)
    events = sub.events()
    hvd_stages = job_group_stages(events, "horovod.spark.run")
    assert hvd_stages, "the event log has no horovod.spark.run job"
    ranks = [e for e in successful_tasks(events) if e["Stage ID"] in hvd_stages]
    per_worker = collections.Counter(owner[e["Task Info"]["Executor ID"]] for e in ranks)
    assert per_worker == {0: 1, 1: 1}, f"Horovod tasks per worker: {dict(per_worker)} (want one each)"
    for e in ranks:
        x, tid = e["Task Info"]["Executor ID"], e["Task Info"]["Task ID"]
        w = owner[x]
        assert tid in finished_tids(standalone_cluster.workers[w].work_dir / sub.app_id / x), (
            f"worker{w}'s executor {x} stderr does not show its Horovod task (TID {tid}) finishing")


STARTED = re.compile(r"rank (\d+) of (\d+) on \S+ \(pid \d+\) in (\S+)")


def barrier_stages(events: list[dict]) -> set[int]:
    """Stages that ran as Spark barrier stages (TorchDistributor's ranks)."""
    return {e["Stage Info"]["Stage ID"] for e in events if e.get("Event") == "SparkListenerStageSubmitted"
            and any(r.get("Barrier") for r in e["Stage Info"].get("RDD Info", []))}


def assert_one_rank_per_worker(cluster: StandaloneCluster, sub: Submission, started: list[str]) -> None:
    """Each rank's start-up line names its working directory: the executor
    directory one worker made for this application; the two ranks, the two workers.
    The event log agrees: the barrier stage's tasks ran one on each worker."""
    owner = assert_both_workers_ran_tasks(cluster, sub)
    where = {}
    for line in started:
        m = STARTED.search(line)
        assert m, line
        cwd = Path(m.group(3))
        assert cwd.parent.name == sub.app_id, f"rank {m.group(1)} ran in {cwd}, not an executor dir of {sub.app_id}"
        where[int(m.group(1))] = (owner[cwd.name], cwd.name)
    assert sorted(where) == [0, 1] and {w for w, _ in where.values()} == {0, 1}, (
        f"ranks -> (worker, executor): {where}")
    events = sub.events()
    stages = barrier_stages(events)
    assert stages, f"{sub.name}: the event log has no barrier stage"
    ranks = [e for e in successful_tasks(events) if e["Stage ID"] in stages]
    per_worker = collections.Counter(owner[e["Task Info"]["Executor ID"]] for e in ranks)
    # one rank per worker in every run that succeeded (a failed run's stage has no successful task)
    assert set(per_worker) == {0, 1} and per_worker[0] == per_worker[1], f"barrier tasks per worker: {dict(per_worker)}"
    for e in ranks:
        x, tid = e["Task Info"]["Executor ID"], e["Task Info"]["Task ID"]
        assert tid in finished_tids(cluster.workers[owner[x]].work_dir / sub.app_id / x), (
            f"worker{owner[x]}'s executor {x} stderr does not show its rank's task (TID {tid}) finishing")
    print(f"{sub.name}: ranks -> (worker, executor) {where}")


def test_torch_distributor_gradients_and_dead_ranks_on_the_cluster(standalone_cluster, tmp_path):
    """On the executors: 2 ranks' first-step gradients equal one process's on the
    union batch; a rank that raises / is SIGKILLed fails the run in seconds,
    naming rank 1 (the survivor's lost connection is not blamed)."""
    out = tmp_path / "td.json"
    sub = standalone_cluster.submit(str(Path(__file__).parent / "torch_distributor_job.py"), [str(out)],
                                    name="td_job", conf=SUBMIT_CONF, timeout_s=900)
    r = json.loads(out.read_text())
    print(f"\ntorch_distributor on the cluster: {json.dumps({k: v for k, v in r.items() if k != 'gradcheck'})}\n"
          f"gradcheck: {r['gradcheck']}")
    assert r["master"] == standalone_cluster.master_url
    g = r["gradcheck"]
    assert abs(g["loss"] - g["ref_loss"]) < 1e-5 and g["max_abs_diff"] < 1e-5, g
    assert r["half_batch_diff"] > 1e-4     # the comparison can fail
    assert_one_rank_per_worker(standalone_cluster, sub, g["started"])
    assert re.search(r"torch_distributor training \(executors\) failed after \d+s with 2 ranks: "
                     r"rank 1 raised ValueError: corrupt shard on rank 1", r["raise"]["error"] or ""), r["raise"]
    killed = r["kill"]["error"] or ""
    assert re.search(r"rank 1 (was killed by signal 9|died) without a Python error", killed), r["kill"]
    assert "rank 0" not in killed, r["kill"]
    # in seconds after the ranks start (start-up itself: ~10-20 s of torch imports per rank)
    assert r["raise"]["seconds"] < 120 and r["kill"]["seconds"] < 120, r
    assert r["session_usable"]


def test_torch_distributor_training_one_rank_per_worker(standalone_cluster, cluster_root):
    """`courier train` with TorchDistributor on the cluster (mode auto -> executors):
    one rank per worker, the model saved, rank 0's step lines relayed to the driver."""
    root, _ = cluster_root
    models = Path(root) / "models" / "courier"
    before = set(models.glob("v*")) if models.is_dir() else set()
    train = {**TRAIN, "train.backend": "torch_distributor"}
    sub = standalone_cluster.submit("train.py", job_args(root, train), name="train_td", conf=SUBMIT_CONF,
                                    timeout_s=1200)
    new = sorted(set(models.glob("v*")) - before)
    assert len(new) == 1 and (new[0] / "artifact.json").is_file(), f"no new model version; see {sub.log}"
    meta = json.loads((new[0] / "artifact.json").read_text())
    assert meta["config"]["backend"] == "torch_distributor" and meta["config"]["num_proc"] == 2
    assert meta["config"]["torch_distributor_mode"] == "auto"
    assert meta["metrics"]["steps"] == 20
    log = sub.log.read_text(errors="replace")
    # rank 0's step lines, relayed from the progress file as our own log lines
    steps = re.findall(r"\[courier train\] courier step (\d+)/20 loss", log)
    assert "20" in steps and len(steps) >= 3, f"step lines on the driver: {steps}; see {sub.log}"
    started = [line for line in log.splitlines() if "[courier train]" in line and STARTED.search(line)]
    assert_one_rank_per_worker(standalone_cluster, sub, started)


def test_killing_a_worker_mid_stage_leaves_the_output_of_an_undisturbed_run(spark, standalone_cluster, tiny_dataset,
                                                                            tmp_path):
    """validate on the cluster; while worker1's executor is running a task, the
    whole worker (its JVM, the executor and its Python workers) is SIGKILLed.
    Spark re-runs the lost work on worker0, and the tables equal the undisturbed
    local run's (the tiny world's; its bad rows give the quarantine rows too).
    Last in this module: it leaves the cluster with one worker."""
    root = str(tmp_path / "killed")
    a = copy_bronze(tiny_dataset, root)
    victim = standalone_cluster.workers[1]
    seen = set(victim.work_dir.glob("app-*"))
    run = standalone_cluster.start("validate.py", job_args(root), name="validate_killed", conf=SUBMIT_CONF)
    in_flight, deadline = None, time.monotonic() + 300
    while in_flight is None:
        assert run.job.proc.poll() is None, f"validate ended before worker1 ran a task; see {run.job.log}"
        assert time.monotonic() < deadline, f"worker1 ran no task within 300 s\n{standalone_cluster.logs()}"
        for stderr in (x for app in set(victim.work_dir.glob("app-*")) - seen for x in app.glob("*/stderr")):
            text = stderr.read_text(errors="replace")
            running = set(RUNNING.findall(text)) - set(FINISHED.findall(text))
            if running:
                in_flight = sorted(running)
                break
        time.sleep(0.05)
    os.killpg(victim.daemon.proc.pid, signal.SIGKILL)
    sub = run.wait(900)

    events = sub.events()
    assert [e for e in events if e.get("Event") == "SparkListenerExecutorRemoved"], "no executor was lost"
    failed = collections.Counter(e["Task End Reason"]["Reason"] for e in events
                                 if e.get("Event") == "SparkListenerTaskEnd"
                                 and e["Task End Reason"]["Reason"] != "Success")
    print(f"\nkilled worker1 with TID(s) {in_flight} running; failed task ends by reason: {dict(failed)}")
    assert set(failed) & {"ExecutorLostFailure", "FetchFailed", "Resubmitted"}, dict(failed)

    assert_tables_equal(spark, a, tiny_dataset[0].paths, VALIDATED)

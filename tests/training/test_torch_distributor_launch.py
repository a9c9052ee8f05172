"""TorchDistributor launching (training/launch.py): where the ranks run
(``train.torch_distributor_mode``), and a rank that raises or dies failing the
run promptly with an error naming it, on the driver (torchrun processes) and on
the executors (one Spark barrier task per rank; here the local master's
executor - tests/cluster runs it on a real two-worker cluster)."""
from __future__ import annotations

import time

import pytest

from training.launch import explain_torch_failure, run_distributed, torch_distributor_on_executors
from courier_spark.core.errors import DistributedTrainingError


def test_mode_follows_the_master_unless_forced():
    assert not torch_distributor_on_executors("local[2]")
    assert not torch_distributor_on_executors("local")
    assert not torch_distributor_on_executors(None)
    assert torch_distributor_on_executors("spark://10.0.0.1:7077")
    assert torch_distributor_on_executors("yarn")
    assert torch_distributor_on_executors("local-cluster[2,1,1024]")   # separate executor JVMs
    assert torch_distributor_on_executors("local[2]", "executors")
    assert not torch_distributor_on_executors("spark://10.0.0.1:7077", "driver")
    with pytest.raises(ValueError, match="torch_distributor_mode"):
        torch_distributor_on_executors("local[2]", "everywhere")


TORCHRUN_SUMMARY = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
/tmp/tmpx/train.py FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_16:40:01
  host      : node-b
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================"""


def test_failure_explanations_name_the_rank():
    # a rank's own Python error wins over its peers' lost connections
    lines = ["[courier rank 0] failed: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
             "Read error [127.0.0.1]:5: Connection reset by peer",
             "[courier rank 1] failed: ValueError: corrupt shard"]
    assert explain_torch_failure(lines, RuntimeError("x"), 2) == "rank 1 raised ValueError: corrupt shard"
    # killed: torchrun's summary says which rank and the signal
    why = explain_torch_failure(lines[:1], RuntimeError(TORCHRUN_SUMMARY), 2)
    assert why == "rank 1 was killed by signal 9 without a Python error (crash, out of memory, os._exit or kill)"
    # only a survivor spoke: the silent rank is the one that died
    assert explain_torch_failure(lines[:1], RuntimeError("boom"), 2).startswith("rank 1 died without a Python error")
    # nothing from the ranks: Spark's barrier task names the partition (= rank)
    exc = RuntimeError("Could not recover from a failed barrier ResultStage. Most recent failure reason: "
                       "Stage failed because barrier task ResultTask(7, 1) finished unsuccessfully.")
    assert explain_torch_failure([], exc, 2).startswith("rank 1 failed (Could not recover")


def _rank_fn(mode: str):
    """A closure (cloudpickle ships it by value) that fails on rank 1 as ``mode`` says."""
    def fn(backend):
        import os as _os
        import signal as _signal

        import torch as _torch
        import torch.distributed as _dist
        _dist.init_process_group("gloo")
        if _dist.get_rank() == 1:
            if mode == "raise":
                raise ValueError("corrupt shard on rank 1")
            if mode == "kill":
                _os.kill(_os.getpid(), _signal.SIGKILL)     # dies without a Python error
        t = _torch.ones(1)
        _dist.all_reduce(t)
        _dist.destroy_process_group()
        return float(t)
    return fn


@pytest.mark.slow   # ~20 s on 2 idle cores (a TorchDistributor run starts 2 torchrun + 2 ranks)
def test_ranks_run_on_executor_tasks_and_report_where(spark):
    started: list[str] = []
    assert run_distributed(_rank_fn("ok"), (), "torch_distributor", 2, torch_distributor_mode="executors",
                           progress_emit=started.append, forward_to=lambda line: None) == [2.0]
    assert sorted(s.split(" on ")[0] for s in started) == ["rank 0 of 2", "rank 1 of 2"], started


@pytest.mark.slow   # ~20 s each on 2 idle cores, ~60 s on a busy machine
@pytest.mark.parametrize("where,mode,message", [
    ("executors", "raise", r"rank 1 raised ValueError: corrupt shard on rank 1"),
    # torchrun reports the signal; if only the survivor's lost connection arrived, the silent rank is named
    ("executors", "kill", r"rank 1 (was killed by signal 9|died) without a Python error"),
    ("driver", "kill", r"rank 1 (was killed by signal 9|died) without a Python error"),
])
def test_a_dead_rank_fails_the_run_promptly_naming_it(spark, where, mode, message):
    t0 = time.time()
    with pytest.raises(DistributedTrainingError,
                       match=rf"torch_distributor training \({where}\) failed after \d+s with 2 ranks: " + message):
        run_distributed(_rank_fn(mode), (), "torch_distributor", 2, torch_distributor_mode=where,
                        timeout_s=300, forward_to=lambda line: None)
    assert time.time() - t0 < 150, f"took {time.time() - t0:.0f}s"   # far from the 300 s watchdog
    assert spark.range(10).count() == 10   # the session is still usable


@pytest.mark.slow
@pytest.mark.parametrize("where", ["executors", "driver"])
def test_a_hung_rank_is_cancelled_by_the_watchdog(spark, where):
    def fn(backend):
        import time as _time

        import torch.distributed as _dist
        _dist.init_process_group("gloo")
        if _dist.get_rank() == 1:
            _time.sleep(600)
        _dist.barrier()
    t0 = time.time()
    with pytest.raises(DistributedTrainingError, match=rf"\({where}\) did not finish within 15s and was cancelled"):
        run_distributed(fn, (), "torch_distributor", 2, torch_distributor_mode=where, timeout_s=15,
                        forward_to=lambda line: None)
    assert time.time() - t0 < 90
    assert spark.range(10).count() == 10


def test_worker_lines_are_split_and_what_relaying_prints_reaches_the_console(monkeypatch):
    # TorchDistributor's log server prints the ranks' lines to sys.stderr from its own
    # threads; relaying one through the console logger prints to sys.stderr again.
    import io
    import sys

    from training.launch import _WorkerLines
    real, relayed = io.StringIO(), []

    def relay(line: str) -> None:
        relayed.append(line)
        sys.stderr.write(f"[courier train] {line}\n")   # what say() does, on the same thread

    tee = _WorkerLines(real, lambda: True, relay)
    monkeypatch.setattr(sys, "stderr", tee)
    tee.write("[courier rank 0] started: rank 0 of 2")
    assert relayed == [] and real.getvalue() == ""        # half a line waits
    tee.write(" on host-a\nnext")
    assert relayed == ["[courier rank 0] started: rank 0 of 2 on host-a"]
    assert real.getvalue() == "[courier train] [courier rank 0] started: rank 0 of 2 on host-a\n"

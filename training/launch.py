"""Launching the training workers: Horovod on Spark (default), Spark's
TorchDistributor, or one local process; and naming the failed worker when a
distributed run dies (Horovod itself only says "a process exited with
non-zero status").

Progress: rank 0 appends its step lines to a progress file that the driver
tails (``ProgressTail``), because Horovod forwards worker output in 64 KiB
chunks (``shutil.copyfileobj`` in its task service) and the lines would
otherwise arrive only when training ends.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Callable, Sequence

from courier_spark import fs
from courier_spark.errors import CourierError, DistributedTrainingError  # noqa: F401 (re-exported)


class ProgressTail:
    """Driver-side context manager: a thread hands every complete line
    appended to ``path`` (any filesystem URI; from its size at entry) to
    ``emit`` every ``interval_s``; the rest, a last unterminated line
    included, on exit. ``emit`` defaults to writing the line to ``dst``
    (default stderr)."""

    def __init__(self, path: str, dst=None, interval_s: float = 1.0,
                 emit: Callable[[str], None] | None = None) -> None:
        self.path, self.dst, self.interval_s = path, dst, interval_s
        self.emit = emit or self._write
        self.offset = len(self._read())
        self._part = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier-progress-tail", daemon=True)

    def _read(self) -> bytes:
        try:
            return fs.read_bytes(self.path) if fs.exists(self.path) else b""
        except OSError:
            return b""  # mid-rewrite on a store without append: next poll

    def _write(self, line: str) -> None:
        dst = self.dst or sys.stderr
        dst.write(line + "\n")
        dst.flush()

    def _drain(self, final: bool = False) -> None:
        data = self._read()
        text = data[self.offset:].decode("utf-8", "replace")
        self.offset = len(data)
        lines = (self._part + text).split("\n")
        self._part = "" if final else lines.pop()
        for line in lines:
            if line:
                self.emit(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._drain()

    def __enter__(self) -> "ProgressTail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain(final=True)


def run_distributed(fn: Callable, args: tuple, backend: str, num_proc: int, *,
                    timeout_s: float | None = None, progress_file: str | None = None,
                    progress_emit: Callable[[str], None] | None = None,
                    forward_to: Callable[[str], None] | None = None,
                    horovod_cycle_time_ms: float | None = None, horovod_nics: Sequence[str] = ()) -> list:
    """Run ``fn(*args, backend)`` on ``num_proc`` workers; results in rank order.

    With ``horovod``, a worker that raises, crashes or is killed fails the
    whole job with a ``DistributedTrainingError`` naming the rank and its
    error (Horovod itself only says "a process exited with non-zero status").
    ``timeout_s`` (``train.timeout_s``; None: no limit) bounds
    the whole run, so a worker that hangs - not dead, but never reaching the
    next collective - cancels the job instead of blocking it forever.
    ``progress_file``: with ``horovod``, handed line by line to
    ``progress_emit`` as the workers append to it (see ``report_progress``).
    ``forward_to``: where Horovod's forwarded worker output goes, one line at
    a time (default: the driver's stdout/stderr). ``horovod_cycle_time_ms``:
    Horovod's background cycle (``HOROVOD_CYCLE_TIME``; None: Horovod's own).
    ``horovod_nics``: the interfaces its ranks may use (see ``horovod_nics``).
    """
    if num_proc < 1:
        raise ValueError(f"train.num_proc must be >= 1, got {num_proc}")
    if backend == "horovod":
        env = dict(os.environ)
        if horovod_cycle_time_ms is not None:
            env["HOROVOD_CYCLE_TIME"] = f"{horovod_cycle_time_ms:g}"
        if progress_file is None:
            return _run_horovod(fn, args, num_proc, timeout_s, forward_to, env, horovod_nics)
        with ProgressTail(progress_file, emit=progress_emit):
            return _run_horovod(fn, args, num_proc, timeout_s, forward_to, env, horovod_nics)
    if backend == "torch_distributor":
        from pyspark.ml.torch.distributor import TorchDistributor
        out = TorchDistributor(num_processes=num_proc, local_mode=True, use_gpu=False).run(
            fn, *args, "torch_distributor")
        return [out]  # TorchDistributor returns rank 0's value
    return [fn(*args, "local")]


class _TeeLines:
    """A text stream that forwards to ``dst`` (or hands each complete line to
    ``on_line``) and keeps the last lines, so the driver can name the worker
    error after Horovod has torn the job down."""

    def __init__(self, dst, keep: int = 4000, on_line: Callable[[str], None] | None = None) -> None:
        import collections
        self.dst, self.lines, self._part = dst, collections.deque(maxlen=keep), ""
        self.on_line = on_line
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            try:
                if self.dst is not None:
                    self.dst.write(text)
                    if "\n" in text:
                        # A driver whose stdout is a file (spark-submit > job.log) is
                        # block-buffered and Horovod never flushes it: forwarded
                        # worker lines (errors included) would wait in the buffer.
                        self.dst.flush()
            except Exception:  # noqa: BLE001 - a closed console must not kill the forwarder
                pass
            parts = (self._part + text).split("\n")
            self._part = parts.pop()
            self.lines.extend(parts)
            if self.on_line is not None:
                for line in parts:
                    self.on_line(line)
        return len(text)

    def flush(self) -> None:
        try:
            if self.dst is not None:
                self.dst.flush()
        except Exception:  # noqa: BLE001
            pass


_RANK_ERROR = re.compile(r"^\[(\d+)\]<std(?:err|out)>:((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$")
_EXIT = re.compile(r"Process name:\s*(\d+)\s*Exit code:\s*(-?\d+)", re.S)
_PEER_FAILED = ("Horovod has been shut down", "HorovodInternalError", "Connection reset by peer",
                "Connection closed by peer", "Read error", "Wait timeout")


def explain_worker_failure(lines: list[str], exc: BaseException | None, *, generic: bool = True,
                           num_proc: int | None = None) -> str:
    """One sentence naming the failed rank(s) and cause from the workers' forwarded output."""
    root: dict[int, str] = {}
    secondary: dict[int, str] = {}
    for line in lines:
        m = _RANK_ERROR.match(line.strip())
        if m:
            rank, err = int(m.group(1)), m.group(2).strip()
            (secondary if any(p in err for p in _PEER_FAILED) else root)[rank] = err  # last error per rank
    parts = [f"rank {r} raised {e}" for r, e in sorted(root.items())]
    m = _EXIT.search(str(exc or ""))
    if m and not root:
        rank, code = int(m.group(1)), int(m.group(2))
        if rank not in secondary:
            how = (f"was killed by signal {-code}" if code < 0 else
                   f"was killed by signal {code - 128}" if code > 128 else f"exited with code {code}")
            parts.append(f"rank {rank} {how} without a Python error (crash, out of memory, os._exit or kill)")
        elif num_proc:
            # Horovod names the first process to *exit*, which can be a survivor
            # that noticed its dead peer first: the culprit is the rank that
            # printed nothing at all.
            silent = [r for r in range(num_proc) if r not in secondary]
            parts += [f"rank {r} died without a Python error (crash, out of memory, os._exit or kill)"
                      for r in silent]
    if parts:
        return "; ".join(parts)
    if secondary:
        return "; ".join(f"rank {r}: {e}" for r, e in sorted(secondary.items()))
    first = str(exc or "").strip().splitlines()[:1]
    return f"{type(exc).__name__}: {first[0]}" if generic and first else "no worker reported an error"


def horovod_nics(master: str | None, configured: Sequence[str] = ()) -> set[str] | None:
    """Network interfaces Horovod's ranks may use: ``configured``
    (``train.horovod_nics``) if any; the loopback interface for a local master or a
    loopback-bound Spark (all ranks are on this machine, and Horovod would
    otherwise offer every interface it finds); else Horovod's own choice."""
    if any(n.strip() for n in configured):
        return {n.strip() for n in configured if n.strip()}
    if (master or "").startswith("local") or os.environ.get("SPARK_LOCAL_IP", "").startswith("127."):
        return {"lo"}
    return None


def _run_horovod(fn: Callable, args: tuple, num_proc: int, timeout_s: float | None,
                 forward_to: Callable[[str], None] | None = None, env: dict | None = None,
                 nics: Sequence[str] = ()) -> list:
    import horovod.spark
    from horovod.spark.driver import job_id
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        raise DistributedTrainingError("horovod backend needs an active SparkSession")
    # All Horovod workers must run at once; on a local master with fewer task
    # slots Horovod would wait start_timeout (10 min) and then fail obscurely.
    if (sc.master or "").startswith("local") and num_proc > sc.defaultParallelism:
        raise DistributedTrainingError(
            f"train.num_proc={num_proc} but Spark master {sc.master} runs only {sc.defaultParallelism} "
            f"task(s) at once; every Horovod worker needs its own task slot (lower train.num_proc)")
    if forward_to is None:
        out, err = _TeeLines(sys.stdout), _TeeLines(sys.stderr)
    else:
        out, err = _TeeLines(None, on_line=forward_to), _TeeLines(None, on_line=forward_to)
    group = f"horovod.spark.run.{job_id.JOB_ID + 1}"  # the job group horovod.spark.run will use
    timed_out = threading.Event()

    def on_timeout() -> None:
        # A stalled worker: cancelling the Spark tasks ends their Horovod
        # processes, so the launcher below returns with an error.
        timed_out.set()
        sc.cancelJobGroup(group)

    # horovod.spark.run installs signal handlers, so it must run on this
    # (main) thread; the watchdog is the timer thread.
    watchdog = threading.Timer(timeout_s, on_timeout) if timeout_s else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    t0 = time.perf_counter()
    try:
        return horovod.spark.run(fn, args=(*args, "horovod"), num_proc=num_proc, verbose=0,
                                 stdout=out, stderr=err, nics=horovod_nics(sc.master, nics), env=env)
    except Exception as e:  # noqa: BLE001 - re-raised with the failed rank and cause named
        why = explain_worker_failure(list(err.lines) + list(out.lines), e, generic=not timed_out.is_set(),
                                     num_proc=num_proc)
        if timed_out.is_set():
            raise DistributedTrainingError(
                f"horovod training did not finish within {timeout_s:.0f}s and was cancelled "
                f"(a worker hung or stopped reaching collectives); {why}") from e
        raise DistributedTrainingError(
            f"horovod training failed after {time.perf_counter() - t0:.0f}s with {num_proc} workers: "
            f"{why}") from e
    finally:
        if watchdog:
            watchdog.cancel()

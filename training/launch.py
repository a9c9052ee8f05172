"""Launching the training workers: Spark's TorchDistributor (default),
Horovod on Spark, or one local process; and naming the failed worker when a
distributed run dies (Horovod itself only says "a process exited with
non-zero status", TorchDistributor "Command [...] failed with return code 1").

TorchDistributor runs its ranks either as torchrun processes on the driver
machine (its ``local_mode``) or as one Spark barrier task per rank on the
executors; ``train.torch_distributor_mode`` chooses, by default from the
Spark master (``torch_distributor_on_executors``).

Progress: rank 0 appends its step lines to a progress file that the driver
tails (``ProgressTail``), because Horovod forwards worker output in 64 KiB
chunks (``shutil.copyfileobj`` in its task service) and the lines would
otherwise arrive only when training ends; TorchDistributor's ranks on
executors write it the same way (the file is on the shared dataset root).
"""
from __future__ import annotations

import collections
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Sequence

from courier_spark.core import fs
from courier_spark.core.errors import DistributedTrainingError


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
                    horovod_cycle_time_ms: float | None = None, horovod_nics: Sequence[str] = (),
                    torch_distributor_mode: str = "auto") -> list:
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

    With ``torch_distributor``, ``torch_distributor_mode`` (``auto``,
    ``driver``, ``executors``; see ``torch_distributor_on_executors``) says
    where the ranks run; a rank that raises or dies fails the run the same
    way, naming the rank, and ``timeout_s`` bounds it too. Each rank's
    start-up line (rank, host, working directory: on an executor, Spark's
    ``<work-dir>/<app-id>/<executor-id>``) and ``progress_file``'s lines go to
    ``progress_emit``; the ranks' other output to ``forward_to``.
    """
    if num_proc < 1:
        raise ValueError(f"train.num_proc must be >= 1, got {num_proc}")
    if backend == "horovod":
        env = dict(os.environ)
        if horovod_cycle_time_ms is not None:
            env["HOROVOD_CYCLE_TIME"] = f"{horovod_cycle_time_ms:g}"
        _horovod_ready()   # before the progress relay's thread starts: see _horovod_extension_checks
        if progress_file is None:
            return _run_horovod(fn, args, num_proc, timeout_s, forward_to, env, horovod_nics)
        with ProgressTail(progress_file, emit=progress_emit):
            return _run_horovod(fn, args, num_proc, timeout_s, forward_to, env, horovod_nics)
    if backend == "torch_distributor":
        if progress_file is None:
            return [_run_torch_distributor(fn, args, num_proc, torch_distributor_mode, timeout_s,
                                           forward_to, progress_emit)]
        with ProgressTail(progress_file, emit=progress_emit):
            # TorchDistributor returns rank 0's value only
            return [_run_torch_distributor(fn, args, num_proc, torch_distributor_mode, timeout_s,
                                           forward_to, progress_emit)]
    return [fn(*args, "local")]


# --------------------------------------------------------------------------- TorchDistributor
TORCH_DISTRIBUTOR_MODES = ("auto", "driver", "executors")
_RANK_MARK = "[courier rank {rank}]"
_RANK_LINE = re.compile(r"\[courier rank (\d+)\] (started|failed): (.*)$")
# torchrun's failure summary for a rank (torch.distributed.elastic ChildFailedError)
_TORCHRUN_EXIT = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)")
_BARRIER_TASK = re.compile(r"barrier task ResultTask\(\d+, (\d+)\)")
# a survivor's error when its peer vanished (with Horovod's, _PEER_FAILED, below)
_GLOO_PEER_FAILED = ("Broken pipe", "Socket closed", "Connection refused", "ProcessGroupGloo", "gloo")


def torch_distributor_on_executors(master: str | None, mode: str = "auto") -> bool:
    """Whether TorchDistributor runs its ranks on the executors (one Spark
    barrier task each) rather than as processes on the driver machine: as
    ``train.torch_distributor_mode`` says, and for ``auto`` from the master -
    a ``local``/``local[...]`` master (Spark's own rule, the executor is the
    driver) runs them on the driver, any cluster master on the executors."""
    if mode not in TORCH_DISTRIBUTOR_MODES:
        raise ValueError(f"train.torch_distributor_mode must be one of {TORCH_DISTRIBUTOR_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "executors"
    master = master or "local"
    return not (master == "local" or master.startswith("local["))


def torch_rank_main(fn: Callable, args: tuple, backend: str = "torch_distributor"):
    """What each torchrun process runs: ``fn(*args, backend)`` between a line
    saying where this rank runs and, if it raises, a line naming the rank and
    its error (TorchDistributor itself reports only a failed command)."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    mark = _RANK_MARK.format(rank=rank)
    print(f"{mark} started: rank {rank} of {world} on {socket.gethostname()} (pid {os.getpid()}) "
          f"in {os.getcwd()}", file=sys.stderr, flush=True)
    try:
        return fn(*args, backend)
    except BaseException as e:  # noqa: BLE001 - named, then re-raised
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"{mark} failed: {type(e).__name__}: {first}".rstrip(": "), file=sys.stderr, flush=True)
        raise


def explain_torch_failure(lines: Sequence[str], exc: BaseException | None, num_proc: int | None = None) -> str:
    """One sentence naming the failed rank(s) of a TorchDistributor run and
    why, from the ranks' output (``torch_rank_main``'s lines, torchrun's
    failure summary) and the Spark error (which carries the failed barrier
    task's partition, i.e. its rank, and its output's last lines)."""
    text = "\n".join([*lines, str(exc or "")])
    root: dict[int, str] = {}
    peer: dict[int, str] = {}
    for line in text.splitlines():
        m = _RANK_LINE.search(line)
        if m and m.group(2) == "failed":
            rank, err = int(m.group(1)), m.group(3).strip()
            (peer if any(p in err for p in (*_PEER_FAILED, *_GLOO_PEER_FAILED)) else root)[rank] = err
    parts = [f"rank {r} raised {e}" for r, e in sorted(root.items())]
    for r, code in sorted({int(r): int(c) for r, c in _TORCHRUN_EXIT.findall(text)}.items()):
        if r in root or r in peer or code == 0:
            continue
        how = (f"was killed by signal {-code}" if code < 0 else
               f"was killed by signal {code - 128}" if code > 128 else f"exited with code {code}")
        parts.append(f"rank {r} {how} without a Python error (crash, out of memory, os._exit or kill)")
    if parts:
        return "; ".join(parts)
    if peer:
        if num_proc:
            silent = [r for r in range(num_proc) if r not in peer]
            if silent:
                return "; ".join(f"rank {r} died without a Python error (its peers lost the connection: "
                                 f"{next(iter(peer.values()))})" for r in silent)
        return "; ".join(f"rank {r}: {e}" for r, e in sorted(peer.items()))
    m = _BARRIER_TASK.search(text)
    first = str(exc or "").strip().splitlines()[:1]
    if m:
        return f"rank {m.group(1)} failed ({first[0][:300] if first else type(exc).__name__})"
    return f"{type(exc).__name__}: {first[0][:500]}" if first else "no rank reported an error"


class _WorkerLines:
    """Stands in for ``sys.stdout``/``sys.stderr`` during a TorchDistributor
    run: what the ranks' output threads write (``is_worker()``) is split into
    lines for ``on_line``; everything else goes to the real stream unchanged."""

    def __init__(self, real, is_worker: Callable[[], bool], on_line: Callable[[str], None]) -> None:
        self.real, self.is_worker, self.on_line = real, is_worker, on_line
        self._part: dict[int, str] = {}
        self._lock = threading.Lock()
        self._relaying = threading.local()

    def write(self, text: str) -> int:
        # What on_line itself prints (a relayed line: the console logger writes
        # to the current sys.stderr, i.e. here, from the worker thread) is ours.
        if getattr(self._relaying, "on", False) or not self.is_worker():
            return self.real.write(text)
        with self._lock:
            key = threading.get_ident()
            parts = (self._part.get(key, "") + text).split("\n")
            self._part[key] = parts.pop()
        self._relaying.on = True
        try:
            for line in parts:
                self.on_line(line)
        finally:
            self._relaying.on = False
        return len(text)

    def flush(self) -> None:
        try:
            self.real.flush()
        except Exception:  # noqa: BLE001
            pass

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def _local_torchrun_pids() -> list[int]:
    """This process's TorchDistributor children (driver mode), for the watchdog."""
    me, out = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid == me:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    if b"torch_run_process_wrapper" in fh.read():
                        out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _run_torch_distributor(fn: Callable, args: tuple, num_proc: int, mode: str, timeout_s: float | None,
                           forward_to: Callable[[str], None] | None,
                           progress_emit: Callable[[str], None] | None):
    from pyspark import SparkContext
    from pyspark.ml.torch.distributor import TorchDistributor

    sc = SparkContext._active_spark_context
    if sc is None:
        raise DistributedTrainingError("torch_distributor backend needs an active SparkSession")
    on_executors = torch_distributor_on_executors(sc.master, mode)
    where = "executors" if on_executors else "driver"
    if on_executors and (sc.master or "").startswith("local") and num_proc > sc.defaultParallelism:
        # A barrier stage needs every rank's slot at once; Spark would retry for 10 min first.
        raise DistributedTrainingError(
            f"train.num_proc={num_proc} but Spark master {sc.master} runs only {sc.defaultParallelism} "
            f"task(s) at once; every TorchDistributor rank on the executors needs its own task slot "
            f"(lower train.num_proc)")
    caller = threading.current_thread()
    lines: collections.deque = collections.deque(maxlen=4000)

    def is_worker() -> bool:
        # driver mode: torchrun's output, relayed by TorchDistributor on this thread;
        # executors mode: its log-streaming server's per-connection threads
        t = threading.current_thread()
        return "process_request_thread" in t.name if on_executors else t is caller

    def on_line(line: str) -> None:
        lines.append(line)
        m = _RANK_LINE.search(line)
        if m and m.group(2) == "started" and progress_emit is not None:
            progress_emit(m.group(3))
        elif forward_to is not None:
            if line.strip():
                forward_to(line)
        else:
            real.write(line + "\n")

    distributor = TorchDistributor(num_processes=num_proc, local_mode=not on_executors, use_gpu=False)
    tag = f"courier-torch-distributor-{uuid.uuid4().hex[:12]}"
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        if on_executors:
            sc.cancelJobsWithTag(tag)   # kills the barrier tasks, and with them their torchrun
        else:
            for pid in _local_torchrun_pids():
                try:
                    os.kill(pid, signal.SIGTERM)   # its wrapper terminates torchrun and the ranks
                except ProcessLookupError:
                    pass

    watchdog = threading.Timer(timeout_s, on_timeout) if timeout_s else None
    stream = "stderr" if on_executors else "stdout"
    real = getattr(sys, stream)
    setattr(sys, stream, _WorkerLines(real, is_worker, on_line))
    if on_executors:
        sc.addJobTag(tag)
    t0 = time.perf_counter()
    try:
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        return distributor.run(torch_rank_main, fn, args)
    except Exception as e:  # noqa: BLE001 - re-raised with the failed rank and cause named
        why = explain_torch_failure(list(lines), e, num_proc)
        if timed_out.is_set():
            raise DistributedTrainingError(
                f"torch_distributor training ({where}) did not finish within {timeout_s:.0f}s and was "
                f"cancelled (a rank hung or stopped reaching collectives); {why}") from e
        raise DistributedTrainingError(
            f"torch_distributor training ({where}) failed after {time.perf_counter() - t0:.0f}s with "
            f"{num_proc} ranks: {why}") from e
    finally:
        if watchdog:
            watchdog.cancel()
        if on_executors:
            sc.removeJobTag(tag)
        setattr(sys, stream, real)


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


def _horovod_extension_checks() -> None:
    """Ask Horovod whether MPI / Gloo were built, once per process, with the
    garbage collector off. Its launcher asks by forking a child
    (multiprocessing 'fork', ``horovod.common.util._check_extension_lambda``)
    from this process, which by then runs the JVM gateway's and the progress
    relay's threads; a child whose collector finalises a py4j connection logs
    from it and can wait forever on a lock another thread held at the fork
    (seen on a loaded machine: a pipeline stuck in ``Handler.acquire`` under
    ``gloo_built``). The answers are cached (``horovod.common.util._cache``,
    keyed by ``verbose``, which ``horovod.spark.run`` passes as ours, 0), so
    the launcher then forks nothing for them."""
    import gc

    from horovod.common import util
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        util.mpi_built(verbose=0)
        util.gloo_built(verbose=0)
    finally:
        if was_enabled:
            gc.enable()


def _horovod_ready() -> None:
    """Horovod importable (else one clear error) and its extension checks cached."""
    try:
        import horovod.spark  # noqa: F401
    except ImportError as e:   # built on first need, not by scripts/bootstrap.sh
        raise DistributedTrainingError(
            f"train.backend=horovod needs Horovod, which is not installed ({e}): run `bash scripts/horovod.sh` "
            f"(builds it once per machine, about 7 minutes on 2 cores), or use train.backend=torch_distributor "
            f"(the default)") from e
    _horovod_extension_checks()


def _run_horovod(fn: Callable, args: tuple, num_proc: int, timeout_s: float | None,
                 forward_to: Callable[[str], None] | None = None, env: dict | None = None,
                 nics: Sequence[str] = ()) -> list:
    _horovod_ready()
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

"""Helpers for tests that start real servers as child processes (a Spark
standalone cluster, HDFS, Redis): loopback ports, log tails, and stopping a
server's whole process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"<{path}: {exc}>"


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM the whole process group (the JVM and, for a worker, its
        executors and their Python workers), then SIGKILL what is left."""
        pgid = self.proc.pid  # started with start_new_session: it leads its own group
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.proc.poll()  # reap our own child (a zombie still counts as a group member)
                try:
                    os.killpg(pgid, 0)  # anyone left in the group?
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                continue
            break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

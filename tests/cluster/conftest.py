"""A real Spark standalone cluster on loopback: one master and two workers
(1 core, 2g each), started from the project's own pyspark install and
stopped (whole process groups) at teardown, even when a test fails.

Executors run the project's interpreter (``PYSPARK_PYTHON``: the "shared
install" way of shipping the environment, see ``conf/cluster.yaml``), unless a
submission ships its own (``test_packed_env.py``: ``--archives``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..daemons import LOOPBACK, Daemon, free_port, tail

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.prefix) / "bin"
PYTHON = str(VENV_BIN / "python")
SPARK_SUBMIT = str(VENV_BIN / "spark-submit")
WORKERS = 2
START_TIMEOUT_S = 180.0


def spark_home() -> str:
    import pyspark
    return os.path.dirname(pyspark.__file__)


def cluster_env() -> dict[str, str]:
    """Environment for the daemons and for spark-submit: loopback only, the
    project's interpreter on the driver and in every executor."""
    env = dict(os.environ)
    # Never hand a child the gateway of a Spark driver in this process.
    for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_DRIVER_PYTHON"):
        env.pop(k, None)
    env.update({
        "SPARK_HOME": spark_home(),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_LOCAL_HOSTNAME": LOOPBACK,
        "SPARK_NO_DAEMONIZE": "1",
        "PYSPARK_PYTHON": PYTHON,
    })
    return env


@dataclass
class Worker:
    index: int
    webui_port: int
    work_dir: Path
    daemon: Daemon


@dataclass
class StandaloneCluster:
    master_url: str
    master_webui_port: int
    workers: list[Worker]
    base: Path
    env: dict[str, str]
    daemons: list[Daemon] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.master_webui_port}/json/", timeout=10) as r:
            return json.load(r)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name} ({d.log}), last lines:\n{tail(d.log)}" for d in self.daemons)

    def submit(self, script: str, args: list[str], *, name: str, conf: dict[str, str] | None = None,
               timeout_s: float = 900.0) -> "Submission":
        """``spark-submit --master <this cluster> jobs/<script> ARGS`` with the
        Delta jars and an event log of its own; output to ``<base>/<name>.log``."""
        return self.start(script, args, name=name, conf=conf).wait(timeout_s)

    def start(self, script: str, args: list[str], *, name: str, conf: dict[str, str] | None = None,
              submit_args: list[str] | None = None) -> "Running":
        """Like ``submit`` but returns at once; ``.wait()`` gives the Submission.
        ``submit_args`` (e.g. ``--archives``) go before the script."""
        from courier_spark.core.schema import SparkConfig
        from courier_spark.core.spark import read_delta_jars, delta_jars_file
        jars = read_delta_jars(delta_jars_file(), SparkConfig().delta_package)
        if not jars:
            pytest.fail(f"no resolved Delta jar list at {delta_jars_file()} (run scripts/bootstrap.sh)")
        events = self.base / "events" / name
        events.mkdir(parents=True)
        settings = {
            "spark.jars": ",".join(jars),
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            # No driver UI (4040 may be taken by other Spark apps on this host);
            # the event log records every task with its executor.
            "spark.ui.enabled": "false",
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": events.as_uri(),
            # One plain JSON-lines file named after the app (Spark 4's default
            # is a rolling, zstd-compressed directory).
            "spark.eventLog.rolling.enabled": "false",
            "spark.eventLog.compress": "false",
            # Start jobs only once both executors are registered, so the
            # evidence below does not depend on how fast a worker starts one.
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
            **(conf or {}),
        }
        cmd = [SPARK_SUBMIT, "--master", self.master_url, "--driver-memory", "2g"]
        for k, v in settings.items():
            cmd += ["--conf", f"{k}={v}"]
        cmd += [*(submit_args or []), str(REPO / "jobs" / script), *args]
        log = self.base / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return Running(self, script, name, cmd, Daemon(f"spark-submit {name}", proc, log), events, time.monotonic())


@dataclass
class Running:
    cluster: "StandaloneCluster"
    script: str
    name: str
    cmd: list[str]
    job: Daemon
    events_dir: Path
    t0: float

    def wait(self, timeout_s: float = 900.0, *, check: bool = True) -> "Submission":
        """``check=False``: a run that exits non-zero is returned (its ``rc``), not failed."""
        try:
            rc = self.job.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            seconds = time.monotonic() - self.t0
            self.job.stop()  # what is left of the driver's group, also when this test is interrupted
        log = self.job.log
        sub = Submission(name=self.name, cmd=self.cmd, rc=rc, log=log, events_dir=self.events_dir, seconds=seconds)
        if rc != 0 and (check or rc is None):
            why = f"timed out after {timeout_s:.0f}s" if rc is None else f"exit status {rc}"
            pytest.fail(f"spark-submit {self.script} ({self.name}) {why}; last lines of {log}:\n{tail(log, 60)}\n"
                        f"{self.cluster.logs()}", pytrace=False)
        return sub


@dataclass
class Submission:
    name: str
    cmd: list[str]
    rc: int | None
    log: Path
    events_dir: Path
    seconds: float

    def event_log(self) -> Path:
        files = [p for p in self.events_dir.iterdir() if p.name.startswith("app-")]
        assert len(files) == 1, f"expected one event log in {self.events_dir}, found {files}"
        return files[0]

    @property
    def app_id(self) -> str:
        return self.event_log().name.split(".")[0]

    def events(self) -> list[dict]:
        with open(self.event_log(), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def _start(name: str, args: list[str], env: dict[str, str], log: Path) -> Daemon:
    fh = open(log, "wb")
    try:
        proc = subprocess.Popen([os.path.join(env["SPARK_HOME"], "bin", "spark-class"), *args],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group, killed as one
    finally:
        fh.close()
    return Daemon(name, proc, log)


def _wait_for_workers(cluster: StandaloneCluster, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        for d in cluster.daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(f"{d.name} exited with status {d.proc.returncode} during start-up\n"
                                   f"{cluster.logs()}")
        try:
            st = cluster.state()
            alive = [w for w in st.get("workers", []) if w.get("state") == "ALIVE"]
            last = f"{len(alive)} ALIVE worker(s): {[w.get('webuiaddress') for w in alive]}"
            if len(alive) >= n:
                return
        except OSError as exc:
            last = f"master JSON endpoint not answering ({exc})"
        time.sleep(1.0)
    raise RuntimeError(f"standalone cluster not ready after {timeout_s:.0f}s: {last}\n{cluster.logs()}")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory) -> StandaloneCluster:
    base = tmp_path_factory.mktemp("standalone")
    env = cluster_env()
    port, webui = free_port(), free_port()
    cluster = StandaloneCluster(master_url=f"spark://{LOOPBACK}:{port}", master_webui_port=webui,
                                workers=[], base=base, env=env)
    try:
        cluster.daemons.append(_start(
            "master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port),
                       "--webui-port", str(webui)], env, base / "master.log"))
        for i in range(WORKERS):
            wport, work_dir = free_port(), base / f"worker{i}"
            work_dir.mkdir()
            d = _start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", cluster.master_url,
                                      "--cores", "1", "--memory", "2g", "--host", LOOPBACK,
                                      "--webui-port", str(wport), "--work-dir", str(work_dir)],
                       env, base / f"worker{i}.log")
            cluster.daemons.append(d)
            cluster.workers.append(Worker(i, wport, work_dir, d))
        try:
            _wait_for_workers(cluster, WORKERS, START_TIMEOUT_S)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield cluster
    finally:
        for d in reversed(cluster.daemons):  # workers (and their executors) first, then the master
            d.stop()

"""A real HDFS on loopback for tests: Hadoop 3.4.1's own NameNode and DataNode
(``MiniDFSCluster`` via ``org.apache.hadoop.test.MiniDFSClusterManager``) in a
JVM of its own, with the NameNode's WebHDFS (HTTP) and RPC ports on 127.0.0.1.
Stopped, whole process group, at teardown.

The jars come from ``scripts/hdfs_jars.sh`` (run here when its classpath file
is missing). Start one by hand for a manual try::

    .venv/bin/python -m tests.remote.minihdfs      # prints the root URI, Ctrl-C stops it
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..daemons import LOOPBACK, Daemon, free_port, tail

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
# Java 17 closes java.base to reflection; Hadoop's Jersey 1 needs these open
# (without them every WebHDFS call is a 500: InaccessibleObjectException).
ADD_OPENS = [f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in ("java.lang", "java.util", "java.nio",
                                                                  "java.lang.reflect", "java.net")]
LOG4J = """log4j.rootLogger=WARN,file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d %p %c{{1}}: %m%n
"""


def classpath() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts" / "hdfs_jars.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/hdfs_jars.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1]).read_text().strip()


@dataclass
class MiniHdfs:
    base: Path
    daemon: Daemon        # the JVM running NameNode + DataNode
    rpc_port: int
    http_port: int
    log: Path             # Hadoop's own log (log4j)

    def uri(self, path: str = "") -> str:
        """``webhdfs://127.0.0.1:<http>/<path>``: the root string Spark, Delta and
        ``courier_spark.core.fs`` all take."""
        return f"webhdfs://{LOOPBACK}:{self.http_port}/{path.lstrip('/')}"

    def rest(self, path: str, op: str, method: str = "GET", user: str | None = None, **params: str) -> dict:
        """One WebHDFS REST call (for test set-up and checks outside the code under test)."""
        q = "&".join([f"op={op}", f"user.name={user or os.environ.get('HADOOP_USER_NAME') or _user()}"]
                     + [f"{k}={v}" for k, v in params.items()])
        quoted = urllib.parse.quote(path.lstrip("/"))   # Delta partition dirs hold '%2F'
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.http_port}/webhdfs/v1/{quoted}?{q}",
                                     method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else {}

    def walk(self, path: str) -> list[str]:
        """Every file under ``path`` (absolute HDFS paths), by LISTSTATUS recursion."""
        out: list[str] = []
        for st in self.rest(path, "LISTSTATUS")["FileStatuses"]["FileStatus"]:
            p = f"{path.rstrip('/')}/{st['pathSuffix']}"
            out.extend(self.walk(p) if st["type"] == "DIRECTORY" else [p])
        return out

    def live_datanodes(self) -> int:
        url = f"http://{LOOPBACK}:{self.http_port}/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState"
        with urllib.request.urlopen(url, timeout=10) as r:
            beans = json.load(r)["beans"]
        return int(beans[0]["NumLiveDataNodes"]) if beans else 0

    def tail(self, n: int = 40) -> str:
        return tail(self.log, n)

    def stop(self) -> None:
        self.daemon.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _user() -> str:
    import getpass
    return getpass.getuser()


def start(base: Path | None = None, datanodes: int = 1) -> MiniHdfs:
    """Format and start the cluster; returns once WebHDFS answers and every
    DataNode is live (so the first write has somewhere to go)."""
    base = Path(base or tempfile.mkdtemp(prefix="courier-minihdfs-"))
    base.mkdir(parents=True, exist_ok=True)
    log = base / "hdfs.log"
    (base / "log4j.properties").write_text(LOG4J.format(log=log))
    rpc, http = free_port(), free_port()
    cmd = ["java", "-Xmx768m", *ADD_OPENS, f"-Dlog4j.configuration=file:{base / 'log4j.properties'}",
           f"-Dtest.build.data={base / 'data'}", "-cp", classpath(),
           "org.apache.hadoop.test.MiniDFSClusterManager", "-format", "-datanodes", str(datanodes),
           "-nnport", str(rpc), "-httpport", str(http), "-writeDetails", str(base / "details.json"),
           "-D", f"dfs.namenode.rpc-bind-host={LOOPBACK}", "-D", f"dfs.namenode.http-bind-host={LOOPBACK}",
           "-D", "dfs.replication=1"]
    with open(base / "stdout.log", "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=base, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    h = MiniHdfs(base, Daemon("minihdfs", proc, base / "stdout.log"), rpc, http, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if (base / "details.json").exists() and h.live_datanodes() >= datanodes:
                h.rest("/", "GETFILESTATUS")
                return h
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    out = (base / "stdout.log").read_text(errors="replace")[-3000:]
    h.stop()
    raise RuntimeError(f"MiniDFSCluster did not come up in {START_TIMEOUT_S:.0f}s "
                       f"(exit {proc.poll()}):\n{out}\n{h.tail()}")


if __name__ == "__main__":
    h = start()
    print(h.uri("courier"), flush=True)
    try:
        while h.daemon.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        h.stop()
    sys.exit(0)

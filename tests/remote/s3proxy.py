"""A real S3 server on loopback for tests: s3proxy (Apache-2.0; a Jetty S3
HTTP endpoint with AWS v2/v4 signatures, buckets, multipart uploads) over
jclouds' in-memory ``transient`` store, in a JVM of its own. Stopped, whole
process group, at teardown; its objects go with it.

The jar comes from ``scripts/s3_jars.sh server`` (run here; cached after the
first time), which also lists hadoop-aws for Spark. Start one by hand::

    .venv/bin/python -m tests.remote.s3proxy      # prints the endpoint, Ctrl-C stops it
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..daemons import LOOPBACK, Daemon, free_port, tail

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
ACCESS_KEY = "courier-test-key"
SECRET_KEY = "courier-test-secret"


def server_jar() -> str:
    out = subprocess.run(["bash", str(REPO / "scripts" / "s3_jars.sh"), "server"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/s3_jars.sh failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


@dataclass
class S3Proxy:
    base: Path
    daemon: Daemon
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def s3a_settings(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The ``spark.extra`` a user gives for this store: Spark's S3A reads
        them, and ``courier_spark.core.fs`` derives its s3fs options from them."""
        return {"spark.hadoop.fs.s3a.endpoint": self.endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
                "spark.hadoop.fs.s3a.access.key": access_key,
                "spark.hadoop.fs.s3a.secret.key": secret_key}

    def client(self):
        """An s3fs client of its own (test set-up and checks outside the code under test)."""
        import s3fs
        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def tail(self, n: int = 40) -> str:
        return tail(self.daemon.log, n)

    def stop(self) -> None:
        self.daemon.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start(base: Path | None = None) -> S3Proxy:
    """Start the server; returns once it answers HTTP on its port."""
    base = Path(base or tempfile.mkdtemp(prefix="courier-s3proxy-"))
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (base / "s3proxy.conf").write_text("\n".join([
        f"s3proxy.endpoint=http://{LOOPBACK}:{port}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={ACCESS_KEY}",
        f"s3proxy.credential={SECRET_KEY}",
        "jclouds.provider=transient",
        "jclouds.identity=unused",
        "jclouds.credential=unused",
    ]) + "\n")
    cmd = ["java", "-Xmx512m", "-jar", server_jar(), "--properties", str(base / "s3proxy.conf")]
    with open(base / "s3proxy.log", "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=base, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    s3 = S3Proxy(base, Daemon("s3proxy", proc, base / "s3proxy.log"), port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(s3.endpoint + "/", timeout=5)
            return s3
        except urllib.error.HTTPError:
            return s3            # any S3 answer (403 to an unsigned request) means it is serving
        except OSError:
            time.sleep(0.3)
    out = s3.tail()
    s3.stop()
    raise RuntimeError(f"s3proxy did not come up in {START_TIMEOUT_S:.0f}s (exit {proc.poll()}):\n{out}")


if __name__ == "__main__":
    s = start()
    print(s.endpoint, ACCESS_KEY, SECRET_KEY, flush=True)
    try:
        while s.daemon.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
    sys.exit(0)

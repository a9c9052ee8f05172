"""The online store against a real Redis server (Debian's redis-server, started
here on loopback with a password): every item's values equal the offline
table's current row, re-runs write nothing, changes are copied incrementally,
bad credentials fail clearly and the password is never printed."""
from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, current_rows, merge_history
from courier_spark.serving.online import RedisSettings, connect, lookup, materialise_item_visual
from courier_spark.core.errors import OnlineStoreError

from .daemons import free_port

PASSWORD = "s3cret-Pa55-do-not-print"
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
IV_SCHEMA = ("item_id long, courier_cluster_id int, distance float, model_version string, "
             "centroid_version string, item_updated_at timestamp")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; scripts/bootstrap.sh installs Debian's redis-server "
                    "(apt-get install redis-server)")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                             "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=(d / "redis.log").open("w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def settings(port: int, password: str = PASSWORD, prefix: str = "t:") -> RedisSettings:
    return RedisSettings("127.0.0.1", port, 0, "", password, "COURIER_REDIS_PASSWORD", prefix, 5.0)


def hset_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0))


def offline(spark, path) -> dict[int, dict]:
    rows = current_rows(spark.read.format("delta").load(path)).collect()
    out = {}
    for r in rows:
        d = r.asDict()
        out[d.pop("item_id")] = {k: d[k] for k in ("courier_cluster_id", "distance", "model_version",
                                                   "centroid_version", "item_updated_at", "valid_from")}
    return out


def test_online_store_equals_offline_and_is_incremental(spark, tmp_path, redis_server):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "item_visual")
    rows = [(i, int(rng.integers(0, 16)), float(np.float32(rng.random())), "courier/v0001", "c0001",
             None if i % 7 == 0 else dt.datetime(2026, 3, 1)) for i in range(1, 301)]
    merge_history(spark, spark.createDataFrame(rows, IV_SCHEMA), path, ["item_id"], ITEM_VISUAL_COMMENTS, as_of=T0)
    s = settings(redis_server)
    client = connect(s)
    client.flushdb()
    client.set("unrelated:key", "kept")

    first = materialise_item_visual(spark, path, s, batch_size=64)
    assert (first["mode"], first["written"], first["deleted"]) == ("full", 300, 0)
    want = offline(spark, path)
    assert lookup(client, s, want) == want                        # every item, every value, typed
    assert lookup(client, s, [999])[999] is None
    assert "item_updated_at" not in client.hgetall(s.item_key(7))  # a null is a missing field

    calls = hset_calls(client)
    again = materialise_item_visual(spark, path, s, batch_size=64)
    assert (again["mode"], again["written"]) == ("up_to_date", 0) and hset_calls(client) == calls + 0

    # 5 items change, 10 are new: only those 15 keys are written.
    changed = [(i, 99, 0.5, "courier/v0001", "c0001", dt.datetime(2026, 3, 2)) for i in (3, 50, 120, 200, 299)]
    new = [(i, 1, 0.25, "courier/v0001", "c0001", None) for i in range(301, 311)]
    merge_history(spark, spark.createDataFrame(changed + new, IV_SCHEMA), path, ["item_id"],
                  as_of=T0 + dt.timedelta(hours=1))
    inc = materialise_item_visual(spark, path, s, batch_size=4)
    assert (inc["mode"], inc["written"], inc["deleted"]) == ("incremental", 15, 0)
    want = offline(spark, path)
    assert len(want) == 310 and lookup(client, s, want) == want
    assert lookup(client, s, [50])[50]["courier_cluster_id"] == 99

    # A flushed store (or a new one) gets a full load; stale item keys under the prefix go.
    client.flushdb()
    client.hset(s.item_key(5000), mapping={"courier_cluster_id": "1"})
    full = materialise_item_visual(spark, path, s)
    assert (full["mode"], full["written"], full["deleted"]) == ("full", 310, 1)
    assert lookup(client, s, want) == want and not client.exists(s.item_key(5000))


def test_wrong_password_fails_clearly_and_the_password_is_never_printed(spark, tmp_path, redis_server,
                                                                       monkeypatch, caplog):
    with pytest.raises(OnlineStoreError, match=r"redis://127\.0\.0\.1:\d+/0: authentication failed "
                                               r"with the password in \$COURIER_REDIS_PASSWORD") as e:
        connect(settings(redis_server, password="wrong-one"))
    assert "wrong-one" not in str(e.value)
    with pytest.raises(OnlineStoreError, match=r"no password \(\$COURIER_REDIS_PASSWORD is not set\)"):
        connect(settings(redis_server, password=""))
    with pytest.raises(OnlineStoreError, match="cannot be reached"):
        connect(settings(free_port()))
    assert PASSWORD not in repr(settings(redis_server))

    # The stage, through the pipeline runner: summary and log lines carry no password.
    from courier_spark.core.config import load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.pipeline import StageContext, run_stage
    p = TablePaths.for_root(str(tmp_path / "ds"))
    merge_history(spark, spark.createDataFrame([(1, 2, 0.5, "courier/v0001", "c0001", None)], IV_SCHEMA),
                  p.item_visual_features, ["item_id"], as_of=T0)
    monkeypatch.setenv("COURIER_TEST_REDIS_PW", PASSWORD)
    cfg = load_config(None, [f"online.port={redis_server}", "online.password_env=COURIER_TEST_REDIS_PW",
                             "online.key_prefix=stage:"])
    caplog.set_level(logging.DEBUG)
    out = run_stage("online", StageContext(spark, cfg, p))
    assert out.counts["written"] == 1
    text = (tmp_path / "ds" / "_runs" / "online.json").read_text()
    assert json.loads(text)["store"] == f"redis://127.0.0.1:{redis_server}/0"
    assert PASSWORD not in text and PASSWORD not in caplog.text
    monkeypatch.setenv("COURIER_TEST_REDIS_PW", "nope")
    with pytest.raises(OnlineStoreError, match="authentication failed"):
        run_stage("online", StageContext(spark, cfg, p))

"""Serving without the platform: a fresh venv holding only the package (installed
from a wheel with --no-deps) and the `serving` extra's pin reads what
`courier online` wrote into a real Redis server, through
``courier_spark.serving.client``, and gets exactly item_visual's current rows;
torch, pyspark and numpy cannot even be imported there."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from courier_spark.features import feature_tables as feature_store
from courier_spark.serving import client as online_client, online
from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, current_rows, merge_history
from courier_spark.core.paths import TablePaths

from .test_online import IV_SCHEMA, PASSWORD, redis_server  # noqa: F401 (a fixture: a real redis-server)

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyspark", "numpy", "pandas", "delta", "pyarrow")
T0 = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)

# Run by the fresh venv's interpreter (isolated mode, cwd outside the checkout).
READER = r'''
import datetime as dt, importlib.util, json, os, sys
heavy = {m: importlib.util.find_spec(m) is not None for m in sys.argv[2].split(",")}
from courier_spark.serving.client import OnlineClient, RedisSettings
ids = json.loads(sys.argv[1])
client = OnlineClient(RedisSettings("127.0.0.1", int(os.environ["PORT"]), password=os.environ["COURIER_REDIS_PASSWORD"],
                                    password_env="COURIER_REDIS_PASSWORD", key_prefix="serve:"))
got = client.lookup(ids)
enc = lambda v: v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v
print(json.dumps({"importable": heavy, "package": __import__("courier_spark").__file__,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("courier_spark", "training")
                                   or m.split(".")[0] in sys.argv[2].split(",")),
                  "meta": client.loaded_version(),
                  "rows": {str(i): None if f is None else {k: enc(v) for k, v in f.items()} for i, f in got.items()}}))
'''


def test_one_key_layout_and_encoding():
    """The Spark writer uses the client's layout and encoding (the same objects), and
    the client names item_visual's validity column as the feature table does."""
    for name in ("RedisSettings", "connect", "encode", "decode", "lookup", "VALUE_FIELDS"):
        assert getattr(online, name) is getattr(online_client, name), name
    assert online_client.VALID_FROM == feature_store.VALID_FROM
    row = {"courier_cluster_id": 3, "distance": float(np.float32(0.1)), "model_version": "courier/v0001",
           "centroid_version": "c0002", "item_updated_at": None, "valid_from": dt.datetime(2026, 4, 1, 9, 30, 0, 123456)}
    assert online_client.decode(online_client.encode(row)) == row
    assert "item_updated_at" not in online_client.encode(row)


def _serving_venv(tmp: Path, wheel: Path) -> Path:
    """python -m venv + the wheel with --no-deps + the `serving` extra's requirements."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serving"]
    assert extra == ["redis==5.3.1"]  # the pin of requirements/base.txt
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["--no-deps", str(wheel)], check=True, timeout=300)
    subprocess.run(pip + extra, check=True, timeout=300)
    return venv / "bin" / "python"


def _offline(spark, path: str) -> dict[str, dict]:
    out = {}
    for r in current_rows(spark.read.format("delta").load(path)).collect():
        d = r.asDict()
        out[str(d["item_id"])] = {k: (d[k].isoformat(sep=" ") if isinstance(d[k], dt.datetime) else d[k])
                                  for k in online_client.VALUE_FIELDS}
    return out


@pytest.mark.slow
def test_clean_venv_reads_what_courier_online_wrote(spark, tmp_path, redis_server, project_wheel):  # noqa: F811
    p = TablePaths.for_root(str(tmp_path / "ds"))
    rng = np.random.default_rng(3)
    first = [(i, int(rng.integers(0, 32)), float(np.float32(rng.random() * 4)), "courier/v0001", "c0001",
              None if i % 9 == 0 else dt.datetime(2026, 3, 1, 12, 0, 0, i * 1000)) for i in range(1, 201)]
    merge_history(spark, spark.createDataFrame(first, IV_SCHEMA), p.item_visual_features, ["item_id"],
                  ITEM_VISUAL_COMMENTS, as_of=T0)
    # A second centroid version for 20 items, and 10 new items: closed rows the online store must not show.
    second = [(i, int(rng.integers(0, 32)), float(np.float32(rng.random())), "courier/v0001", "c0002",
               dt.datetime(2026, 3, 2)) for i in list(range(5, 205, 10)) + list(range(201, 211))]
    merge_history(spark, spark.createDataFrame(second, IV_SCHEMA), p.item_visual_features, ["item_id"],
                  as_of=T0 + dt.timedelta(hours=2))

    # `courier online`, the command, in its own process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["COURIER_REDIS_PASSWORD"] = PASSWORD
    cli = subprocess.run([sys.executable, "-m", "courier_spark.cli", "online", "--root", p.root,
                          "--set", f"online.port={redis_server}", "--set", "online.key_prefix=serve:",
                          "--set", "spark.driver_memory=1g", "--set", "spark.shuffle_partitions=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]

    python = _serving_venv(tmp_path, project_wheel)
    want = _offline(spark, p.item_visual_features)
    assert len(want) == 210
    ids = sorted(int(i) for i in want) + [999, 1000]
    env = {"PATH": os.environ["PATH"], "PORT": str(redis_server), "COURIER_REDIS_PASSWORD": PASSWORD}
    run = subprocess.run([str(python), "-I", "-c", READER, json.dumps(ids), ",".join(HEAVY)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)

    # Nothing of the platform is there: only the client's modules were loaded, from the venv.
    assert got["importable"] == {m: False for m in HEAVY}, got["importable"]
    assert got["package"].startswith(str(tmp_path / "venv")), got["package"]
    # (the two package faces, courier_spark.core and .serving, are docstrings that import nothing)
    assert got["loaded"] == ["courier_spark", "courier_spark.core", "courier_spark.core.errors", "courier_spark.serving",
                             "courier_spark.serving.client"], got["loaded"]
    # Every item exactly as the offline current row says; items without a row -> None.
    assert got["rows"] == {**want, "999": None, "1000": None}
    assert got["rows"]["15"]["centroid_version"] == "c0002" and got["rows"]["9"]["item_updated_at"] is None
    from courier_spark.core.tables import table_version
    assert got["meta"]["table"] == p.item_visual_features
    assert int(got["meta"]["version"]) == table_version(spark, p.item_visual_features)

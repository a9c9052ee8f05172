"""The public API for feature consumers, ``from courier_spark import FeatureStore``:
importing it loads neither torch nor pyspark; on a root it names the feature
tables, returns the current rows and point-in-time training sets that equal a
brute-force search of the validity intervals, and finds the online store; the
README's consumer script runs, as written, on a tiny root the pipeline built,
against a real Redis server."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import courier_spark
from courier_spark.core.errors import ConfigError, FilesystemError, MissingTableError
from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, merge_history
from courier_spark.core.paths import TablePaths

from .test_docs import fenced_blocks
from .test_online import IV_SCHEMA, PASSWORD, redis_server  # noqa: F401 (a fixture: a real redis-server)

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 4, 1, 9, 0)
T1 = dt.datetime(2026, 4, 1, 12, 0)


def test_import_loads_neither_torch_nor_pyspark():
    code = ("import json, sys\nimport courier_spark\nfrom courier_spark import FeatureStore, OnlineClient\n"
            "print(json.dumps(sorted(m for m in ('torch', 'pyspark', 'numpy', 'pandas', 'redis', 'delta') "
            "if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_public_names_are_loaded_on_first_access():
    from courier_spark.serving.client import OnlineClient
    from courier_spark.serving.store import FeatureStore
    assert courier_spark.FeatureStore is FeatureStore and courier_spark.OnlineClient is OnlineClient
    assert set(courier_spark.__all__) <= set(dir(courier_spark))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        courier_spark.Nope  # noqa: B018


def _write_item_visual(spark, p: TablePaths) -> None:
    """Items 1-4 at T0; at T1 items 2 and 3 change (a new centroid version) and item 5 is new."""
    rows0 = [(i, i * 10, 0.5 * i, "courier/v0001", "c0001", None) for i in (1, 2, 3, 4)]
    rows1 = [(2, 99, 0.25, "courier/v0001", "c0002", None), (3, 77, 0.75, "courier/v0001", "c0002", None),
             (5, 55, 1.5, "courier/v0001", "c0002", None)]
    for rows, at in ((rows0, T0), (rows1, T1)):
        merge_history(spark, spark.createDataFrame(rows, IV_SCHEMA), p.item_visual_features, ["item_id"],
                      ITEM_VISUAL_COMMENTS, as_of=at.replace(tzinfo=dt.timezone.utc))


def _brute_force(history: list[dict], item_id: int, ts: dt.datetime) -> dict | None:
    """The row of ``item_id`` whose [valid_from, valid_to) holds ``ts``: a linear search."""
    hits = [r for r in history if r["item_id"] == item_id and r["valid_from"] <= ts
            and (r["valid_to"] is None or ts < r["valid_to"])]
    assert len(hits) <= 1
    return hits[0] if hits else None


def test_feature_store_on_a_root(spark, tmp_path):
    from courier_spark import FeatureStore
    p = TablePaths.for_root(str(tmp_path / "ds"))
    _write_item_visual(spark, p)
    store = FeatureStore(str(tmp_path / "ds"), spark=spark)
    assert store.root == p.root and store.spark is spark
    assert store.feature_tables() == {"item_visual": p.item_visual_features,
                                      "impression_visual": p.impression_visual_features}

    from delta.tables import DeltaTable
    commits = store.table_versions()
    assert [c["version"] for c in commits] == sorted(
        r["version"] for r in DeltaTable.forPath(spark, p.item_visual_features).history().collect())

    history = [r.asDict() for r in spark.read.format("delta").load(p.item_visual_features).collect()]
    assert len(history) == 7  # 4 + 3 rows, 2 of the first 4 closed at T1
    current = {r["item_id"]: r for r in history if r["valid_to"] is None}
    got = {r["item_id"]: r.asDict() for r in store.current_rows().collect()}
    assert got == current and got[2]["courier_cluster_id"] == 99
    # The current rows of the first write's Delta version: the first values.
    then = {r["item_id"]: r["courier_cluster_id"] for r in store.current_rows(version=commits[1]["version"]).collect()}
    assert then == {1: 10, 2: 20, 3: 30, 4: 40}

    # Point in time: before any feature, at valid_from (inclusive), just before and at a change, no such item.
    minute = dt.timedelta(minutes=1)
    events = [(i, ts, n) for n, (i, ts) in enumerate(
        [(1, T0 - minute), (1, T0), (2, T1 - minute), (2, T1), (3, T1 + minute), (5, T1 - minute), (5, T1),
         (4, T1 + dt.timedelta(days=30)), (99, T1)])]
    ev = spark.createDataFrame(events, "item_id long, event_ts timestamp, n int")
    for source in (ev, _as_delta(ev, str(tmp_path / "events"))):
        train = {r["n"]: r.asDict() for r in store.training_set(source).collect()}
        assert sorted(train) == list(range(len(events)))
        for i, ts, n in events:
            want = _brute_force(history, i, ts)
            for col in ("courier_cluster_id", "distance", "model_version", "centroid_version"):
                assert train[n][col] == (want[col] if want else None), (i, ts, col)
    assert train[0]["courier_cluster_id"] is None and train[1]["courier_cluster_id"] == 10
    assert (train[2]["centroid_version"], train[3]["centroid_version"]) == ("c0001", "c0002")

    with pytest.raises(ConfigError, match="not a table of this store"):
        store.read("nope")
    with pytest.raises(MissingTableError, match="run `courier validate` first"):
        store.read("silver/items")
    with pytest.raises(FilesystemError, match="no dataset root at"):
        FeatureStore(str(tmp_path / "missing"))


def _as_delta(df, path: str) -> str:
    df.write.format("delta").save(path)
    return path


def test_online_settings_come_from_the_config_or_the_roots_last_online_run(tmp_path, monkeypatch):
    from courier_spark import FeatureStore, OnlineClient
    from courier_spark.core.config import load_config
    (tmp_path / "ds").mkdir()
    store = FeatureStore(str(tmp_path / "ds"))
    defaults = load_config(None).online
    s = store.online_settings()
    assert (s.host, s.port, s.key_prefix, s.password_env) == (defaults.host, defaults.port, defaults.key_prefix,
                                                              defaults.password_env)
    # `courier online` ran on this root: its summary records the online section it used. Summaries
    # redact every key that says "password", the variable's name too: then the config's name is used.
    runs = tmp_path / "ds" / "_runs"
    runs.mkdir()
    section = {"host": "127.0.0.2", "port": 7001, "db": 2, "username": "", "password_env": "*********(redacted)",
               "key_prefix": "feat:", "batch_size": 10, "timeout_seconds": 1.5}
    (runs / "online.json").write_text(json.dumps({"store": "redis://127.0.0.2:7001/2", "config": {"online": section}}))
    monkeypatch.setenv(defaults.password_env, "pw-from-env")
    client = store.online()
    assert isinstance(client, OnlineClient)
    s = client.settings
    assert (s.host, s.port, s.db, s.key_prefix, s.password, s.password_env, s.timeout_seconds) == \
        ("127.0.0.2", 7001, 2, "feat:", "pw-from-env", defaults.password_env, 1.5)
    assert "pw-from-env" not in repr(s) and "pw-from-env" not in repr(client)
    assert s.item_key(42) == "feat:item_visual:42"
    # A summary that names the variable: that one.
    (runs / "online.json").write_text(json.dumps({"config": {"online": {**section, "password_env": "MY_STORE_PW"}}}))
    monkeypatch.setenv("MY_STORE_PW", "another-pw")
    assert store.online_settings().password == "another-pw"
    # A config given to the store wins over the recorded run.
    cfg = load_config(None, ["online.port=7002", "online.key_prefix=cfg:"])
    s = FeatureStore(str(tmp_path / "ds"), config=cfg).online_settings()
    assert (s.port, s.key_prefix) == (7002, "cfg:")


# --------------------------------------------------------------------------- the README's consumer script
def readme_consumer_script() -> str:
    blocks = [b for b in fenced_blocks(ROOT / "README.md")
              if b.lang == "python" and b.not_run and "tests/test_public_api.py" in b.not_run]
    assert len(blocks) == 1, "README.md must hold one consumer script marked as run by tests/test_public_api.py"
    code = blocks[0].code
    assert len(code.strip().splitlines()) < 15, "the consumer script must stay under 15 lines"
    return code


@pytest.mark.slow
def test_readme_consumer_script_runs_on_a_tiny_root(spark, tiny_dataset, tmp_path, redis_server):  # noqa: F811
    """generate -> validate -> samples (the shared tiny root, copied), an encoder
    artifact, embed -> cluster -> features -> online; then the README's script,
    exactly as written, from a directory where ``data/demo`` is that root."""
    from courier_spark.features.feature_tables import current_rows
    from courier_spark.pipeline import StageContext, run_stage
    from courier_spark.serving.versions import serving_versions

    from .conftest import tiny_config
    from .worlds import save_untrained_encoder

    ctx0, _ = tiny_dataset
    root = tmp_path / "data" / "demo"
    shutil.copytree(ctx0.paths.root, root)
    p = TablePaths.for_root(str(root))
    # An untrained encoder is enough here: what is checked is the plumbing, not the features' quality.
    save_untrained_encoder(p.models, embed_dim=16, image_size=24)
    os.environ["COURIER_REDIS_PASSWORD"] = PASSWORD  # read by the online stage and by the script's client
    try:
        ctx = StageContext(spark, tiny_config(**{"cluster.k": 4, "embed.batch_size": 16,
                                                 "online.port": redis_server, "online.key_prefix": "readme:",
                                                 "feast.repo": str(tmp_path / "feast_repo")}), p)
        for stage in ("embed", "cluster", "features", "online"):
            run_stage(stage, ctx)
        # The Feast repository of a root the pipeline wrote: both views, types from the real
        # tables (tests/test_feast.py runs Feast itself on such a repository).
        feast = run_stage("feast", ctx)
        assert feast.feature_views == ["item_visual", "impression_visual"]
        definitions = (tmp_path / "feast_repo" / "courier_features.py").read_text()
        compile(definitions, "courier_features.py", "exec")
        assert "Field(name='sim_scores', dtype=Array(Float32))" in definitions
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
        env["PYTHONPATH"] = str(ROOT)
        script = tmp_path / "consumer.py"
        script.write_text(readme_consumer_script())
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    finally:
        del os.environ["COURIER_REDIS_PASSWORD"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    lines = run.stdout.strip().splitlines()
    sv = serving_versions(spark, p, "courier")
    assert sv.model_version == "courier/v0001" and sv.centroid_version == "c0001"
    assert p.item_visual_features in lines[0] and repr(sv) in lines[0], lines[0]
    rows = [ln.split() for ln in lines[1:] if re.fullmatch(r"\d+ \S+ \S+ \S+", ln)]
    # Five items; the training set's cluster id (as of now) = Redis's = the current row's.
    current = {r["item_id"]: r for r in current_rows(spark.read.format("delta").load(p.item_visual_features))
               .collect()}
    assert [int(r[0]) for r in rows] == sorted(current)[:5], run.stdout
    for item, offline_cid, online_cid, model_version in rows:
        assert int(offline_cid) == int(online_cid) == current[int(item)]["courier_cluster_id"]
        assert model_version == sv.model_version

"""Feature health: every statistic of a write of feature_store/item_visual,
the drift of a centroid version change (PSI, changed share) and the stream's
freshness against a brute force on the same rows; one record per item_visual
version whatever the re-runs; `courier health` prints the drift table after a
second `cluster` run and exits 2 past a threshold."""
from __future__ import annotations

import datetime as dt
import glob
import itertools
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from courier_spark.core.config import load_config
from courier_spark.features.feature_tables import ITEM_VISUAL_COMMENTS, ITEM_VISUAL_KEYS, merge_history
from courier_spark.features.health import breaches, drift_from_overlap, psi, read_health, record_write
from courier_spark.core.paths import TablePaths
from courier_spark.core.schema import HealthConfig

IV_SCHEMA = ("item_id long, courier_cluster_id int, distance float, model_version string, "
             "centroid_version string, item_updated_at timestamp")
T0 = dt.datetime(2026, 1, 1)


def _snapshot(spark, paths, rows, mode: str) -> int:
    """Write item_visual rows with their validity intervals as one Delta commit
    (what merge_history leaves; cheaper than merging); returns the table version."""
    from courier_spark.core.tables import table_version
    (spark.createDataFrame(rows, IV_SCHEMA + ", valid_from timestamp, valid_to timestamp")
     .write.format("delta").mode(mode).save(paths.item_visual_features))
    return table_version(spark, paths.item_visual_features)


def _write(spark, paths, rows) -> dict:
    return merge_history(spark, spark.createDataFrame(rows, IV_SCHEMA), paths.item_visual_features,
                         ITEM_VISUAL_KEYS, ITEM_VISUAL_COMMENTS)


def _brute_stats(pdf: pd.DataFrame) -> dict:
    sizes = pdf["courier_cluster_id"].dropna().astype(int).value_counts()
    d = pdf["distance"].dropna().to_numpy(dtype=float)
    return {"rows": len(pdf), "null_cluster_id": int(pdf["courier_cluster_id"].isna().sum()),
            "null_distance": int(pdf["distance"].isna().sum()),
            "null_item_updated_at": int(pdf["item_updated_at"].isna().sum()),
            "n_clusters": len(sizes), "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
            "cluster_size_median": float(np.median(sizes.to_numpy())),
            "cluster_sizes": {str(k): int(v) for k, v in sizes.items()},
            "distance_mean": float(d.mean()), "distance_p50": float(np.quantile(d, 0.5)),
            "distance_p90": float(np.quantile(d, 0.9)), "distance_p99": float(np.quantile(d, 0.99))}


def _brute_drift(old: dict, new: dict) -> tuple[int, float, float]:
    """Over every one-to-one matching of new to old cluster labels (exhaustive),
    the one keeping most items; PSI and changed share from explicit loops."""
    both = sorted(set(old) & set(new))
    olds, news = sorted({old[i] for i in both}), sorted({new[i] for i in both})
    best, best_kept = None, -1
    # Pad the smaller side with "no match" slots so every injective matching is tried.
    slots = news + [None] * max(0, len(olds) - len(news))
    for perm in itertools.permutations(slots, len(olds)):
        m = {n: o for o, n in zip(olds, perm) if n is not None}
        kept = sum(1 for i in both if m.get(new[i]) == old[i])
        if kept > best_kept:
            best, best_kept = m, kept
    n = len(both)
    e_share = {o: sum(old[i] == o for i in both) / n for o in olds}
    a_share = {c: sum(new[i] == c for i in both) / n for c in news}
    total = 0.0
    bins = [(e_share[o], a_share[c]) for c, o in best.items() if e_share[o] or a_share[c]]
    bins += [(e_share[o], 0.0) for o in olds if o not in best.values()]
    bins += [(0.0, a_share[c]) for c in news if c not in best]
    for e, a in bins:
        e, a = max(e, 1e-4), max(a, 1e-4)
        total += (a - e) * np.log(a / e)
    return n, total, 1 - best_kept / n


def _check_row(row: dict, brute: dict) -> None:
    for k, v in brute.items():
        got = json.loads(row[k]) if k == "cluster_sizes" else row[k]
        if isinstance(v, float):
            assert got == pytest.approx(v, rel=1e-6, abs=1e-7), k
        else:
            assert got == v, k


def test_statistics_and_drift_equal_brute_force_once_per_version(spark, tmp_path):
    paths = TablePaths.for_root(str(tmp_path / "ds"))
    rng = np.random.default_rng(3)
    v1 = [(i, int(rng.integers(0, 4)) if i % 13 else None, float(rng.random()) if i % 11 else None,
           "courier/v0001", "c0001", None if i % 7 == 0 else T0 + dt.timedelta(minutes=i)) for i in range(1, 41)]
    t1, t2 = T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2)
    m1 = _snapshot(spark, paths, [(*r, t1, None) for r in v1], "overwrite")
    r1 = record_write(spark, paths, "features")
    assert r1["written_rows"] == 40 and r1["drift_psi"] is None and r1["source"] == "features"
    _check_row(r1, _brute_stats(pd.DataFrame(v1, columns=["item_id", "courier_cluster_id", "distance",
                                                           "model_version", "centroid_version",
                                                           "item_updated_at"])))
    # Re-run without a new item_visual version: the version already has its record.
    assert record_write(spark, paths, "features") is None

    # A new centroid version: labels permuted (3 -> 0, 0 -> 1, ...), 6 items moved,
    # 10 items dropped and 5 new items, 5 clusters instead of 4.
    relabel = {0: 1, 1: 2, 2: 3, 3: 0}
    v2 = []
    for i, cid, dist, *_ in v1[10:]:
        new = None if cid is None else (4 if i % 5 == 0 else relabel[cid])
        v2.append((i, new, dist, "courier/v0001", "c0002", T0 + dt.timedelta(minutes=i)))
    v2 += [(i, int(rng.integers(0, 5)), float(rng.random()), "courier/v0001", "c0002", T0) for i in range(41, 46)]
    moved = {r[0] for r in v2}
    m2 = _snapshot(spark, paths, [(*r, t1, t2 if r[0] in moved else None) for r in v1]
                   + [(*r, t2, None) for r in v2], "overwrite")
    r2 = record_write(spark, paths, "features")
    assert (r2["prev_centroid_version"], r2["centroid_version"]) == ("c0001", "c0002")
    _check_row(r2, _brute_stats(pd.DataFrame(v2, columns=["item_id", "courier_cluster_id", "distance",
                                                           "model_version", "centroid_version",
                                                           "item_updated_at"])))
    old = {r[0]: r[1] for r in v1 if r[1] is not None}
    new = {r[0]: r[1] for r in v2 if r[1] is not None}
    n, want_psi, want_changed = _brute_drift(old, new)
    assert r2["drift_items"] == n == 27
    assert r2["drift_psi"] == pytest.approx(want_psi, rel=1e-9) and r2["drift_psi"] > 0.01
    assert r2["drift_changed_share"] == pytest.approx(want_changed) and 0 < want_changed < 0.5

    h = read_health(spark, paths)
    assert list(h["item_visual_version"]) == [m1, m2]          # once per version, no duplicate on re-run
    assert record_write(spark, paths, "features") is None and len(read_health(spark, paths)) == 2

    # Thresholds: the newest drift breaks a PSI threshold below it, not one above it.
    assert breaches(h, HealthConfig(max_null_share=1.0, max_psi=want_psi + 0.01)) == []
    lines = breaches(h, HealthConfig(max_null_share=1.0, max_psi=want_psi / 2))
    assert len(lines) == 1 and lines[0].startswith(f"health.max_psi={want_psi / 2} breached")
    # Nulls: the newest write has 3 null cluster ids of 35 rows.
    assert any(line.startswith("health.max_null_share=0.0 breached: 0.0857") for line in breaches(h, HealthConfig()))


def test_relabelled_identical_clustering_has_no_drift():
    overlap = np.array([[0, 7, 0], [0, 0, 5], [9, 0, 0]])   # every old cluster maps whole onto one new one
    d = drift_from_overlap([0, 1, 2], [0, 1, 2], overlap)
    assert d == {"drift_items": 21, "drift_psi": 0.0, "drift_changed_share": 0.0}
    assert psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5))


def test_stream_freshness_equals_brute_force(spark, tmp_path):
    paths = TablePaths.for_root(str(tmp_path / "ds"))
    # Items land in bronze in two commits; item 3's second version lands later too.
    for batch in ([(1, T0), (2, T0), (3, T0)], [(4, T0), (3, T0 + dt.timedelta(hours=1)), (5, T0)]):
        (spark.createDataFrame(batch, "item_id long, updated_at timestamp").write.format("delta")
         .mode("append").save(paths.bronze_items))
    rows = [(i, 0, 0.1, "courier/v0001", "c0001", T0 + dt.timedelta(hours=1) if i == 3 else T0)
            for i in (1, 2, 3, 4, 5, 6)]                    # item 6 never landed in bronze: not counted
    _write(spark, paths, rows)
    r = record_write(spark, paths, "stream", batch_id=7, freshness=True)
    assert r["batch_id"] == 7 and r["fresh_rows"] == 5

    # Brute force: each bronze data file's modification time and the rows it holds.
    landed = {}
    for f in glob.glob(os.path.join(paths.bronze_items, "*.parquet")):
        for item, ts in pq.read_table(f).to_pandas()[["item_id", "updated_at"]].itertuples(index=False):
            key = (int(item), pd.Timestamp(ts).to_pydatetime().replace(tzinfo=None))
            landed[key] = min(landed.get(key, np.inf), os.path.getmtime(f))
    iv = spark.read.format("delta").load(paths.item_visual_features).toPandas()
    secs = [row.valid_from.timestamp() - landed[(row.item_id, row.item_updated_at.to_pydatetime())]
            for row in iv.itertuples() if (row.item_id, row.item_updated_at.to_pydatetime()) in landed]
    assert len(secs) == 5
    # Hadoop's local file system reports modification times in whole milliseconds.
    assert r["freshness_p50_s"] == pytest.approx(np.quantile(secs, 0.5), abs=2e-3)
    assert r["freshness_p95_s"] == pytest.approx(np.quantile(secs, 0.95), abs=2e-3)
    assert 0 < r["freshness_p50_s"] < 600
    h = read_health(spark, paths)
    assert breaches(h, HealthConfig(max_freshness_p95_s=1e6)) == []
    assert breaches(h, HealthConfig(max_freshness_p95_s=0.0))[0].startswith(
        "health.max_freshness_p95_s=0.0 breached")


def _blobs(rng, n: int, d: int = 8, k: int = 4) -> np.ndarray:
    centres = rng.normal(size=(k, d))
    x = centres[np.arange(n) % k] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow   # two cluster + features runs and three CLI runs
def test_courier_health_after_a_second_cluster_run(spark, tmp_path, capsys):
    """Embeddings written directly (no training): cluster + features, cluster again
    with another seed and k (a new centroid version) + features, `courier health`."""
    from courier_spark import cli
    from courier_spark.pipeline import StageContext, run_stage

    root = str(tmp_path / "ds")
    paths = TablePaths.for_root(root)
    assert cli.main(["health", "--root", root]) == 2          # no records yet: one error line, before Spark
    assert "no health records" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    x = _blobs(rng, 48)
    spark.createDataFrame([(i + 1, "courier/v0001", [float(v) for v in x[i]]) for i in range(48)],
                          "item_id long, model_version string, embedding array<float>"
                          ).write.format("delta").save(paths.item_embeddings)
    spark.createDataFrame([(i, "c") for i in range(1, 49)], "item_id long, category string"
                          ).write.format("delta").save(paths.silver_items)
    ctr = [(f"e{i}", 1 + i % 48, [1 + (i + j) % 48 for j in range(i % 3)], "train") for i in range(30)]
    spark.createDataFrame(ctr, "event_id string, item_id long, hist_item_ids array<long>, split string"
                          ).write.format("delta").save(paths.ctr_samples)
    base = ["cluster.model_version=courier/v0001", "cluster.niter=5", "cluster.nredo=1", "features.k=2"]
    for cv, sets in (("c0001", ["cluster.k=4", "cluster.seed=1"]), ("c0002", ["cluster.k=5", "cluster.seed=2"])):
        ctx = StageContext(spark, load_config(None, [*base, *sets, f"features.centroid_version={cv}"]), paths)
        assert run_stage("cluster", ctx).centroid_version == cv
        f = run_stage("features", ctx)
        assert f.health["item_visual_version"] is not None
    assert f.health["prev_centroid_version"] == "c0001" and f.health["drift_psi"] > 0
    h = read_health(spark, paths)
    assert list(h["centroid_version"]) == ["c0001", "c0002"] and list(h["rows"]) == [48, 48]
    psi_value = float(h["drift_psi"].iloc[-1])

    capsys.readouterr()
    assert cli.main(["health", "--root", root, "--set", f"health.max_psi={psi_value + 1}",
                     "--set", "health.max_changed_share=1.0"]) == 0
    out = capsys.readouterr().out
    assert "Drift per centroid/model version change" in out and "c0001" in out and "c0002" in out
    assert cli.main(["health", "--root", root, "--set", f"health.max_psi={psi_value / 2}",
                     "--set", "health.max_changed_share=1.0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("courier: error:")]
    assert len(err) == 1 and err[0].startswith(f"courier: error: health: health.max_psi={psi_value / 2} breached")
    summary = json.loads(open(os.path.join(root, "_runs", "health.json")).read())
    assert summary["drift"]["prev_centroid_version"] == "c0001" and summary["breaches"]


def test_report_plots_health(tmp_path):
    from PIL import Image

    from courier_spark.evaluate.report import HEALTH_TABLE_COLUMNS, _plot_health
    h = pd.DataFrame({
        "item_visual_version": [1, 3, 5], "source": ["features", "features", "stream"],
        "centroid_version": ["c0001", "c0002", "c0002"], "rows": [40, 40, 41], "n_clusters": [4, 5, 5],
        "null_cluster_id": [0, 2, 2], "null_distance": [0, 0, 0],
        "distance_p50": [0.2, 0.3, 0.3], "distance_p90": [0.5, 0.6, 0.6], "distance_p99": [0.9, 0.9, 0.95],
        "prev_centroid_version": [None, "c0001", None], "drift_psi": [None, 0.4, None],
        "drift_changed_share": [None, 0.2, None], "freshness_p50_s": [None, None, 3.5],
        "freshness_p95_s": [None, None, 7.0]})
    path = str(tmp_path / "feature_health.png")
    _plot_health(h, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 1000
    assert set(HEALTH_TABLE_COLUMNS) <= set(h.columns)


def test_sketch_quantiles_within_the_stated_error(spark):
    """The distance sketch's quantiles against numpy.quantile (exact) on random
    data: within SKETCH_ALPHA of the exact value, relative (distances >= 0)."""
    from courier_spark.features.health import SKETCH_ALPHA, sketch_key, sketch_quantiles
    rng = np.random.default_rng(11)
    samples = [rng.gamma(2.0, 0.3, 4000), rng.uniform(0, 4, 3000),
               np.r_[np.zeros(40), rng.lognormal(-3, 2, 2000)], rng.uniform(0.5, 0.5005, 999), np.array([0.7])]
    pdf = pd.concat([pd.DataFrame({"s": j, "distance": x.astype(np.float32)}) for j, x in enumerate(samples)])
    got = (spark.createDataFrame(pdf).select("s", sketch_key(F.col("distance")).alias("k"))
           .groupBy("s", "k").count().collect())
    qs = (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0)
    worst = 0.0
    for j, x in enumerate(samples):
        x = x.astype(np.float32).astype(float)
        est = sketch_quantiles({r["k"]: r["count"] for r in got if r["s"] == j}, qs)
        for p, e in zip(qs, est):
            exact = float(np.quantile(x, p))
            assert abs(e - exact) <= SKETCH_ALPHA * exact * (1 + 1e-9) + 1e-12, (j, p, e, exact)
            worst = max(worst, abs(e - exact) / exact if exact else 0.0)
    assert 0 < worst <= SKETCH_ALPHA   # an estimate indeed, within its bound


def _hide_files_but_commit(table: str, version: int, where) -> list[tuple[str, str]]:
    """Move every data file of ``table`` that commit ``version`` did not write
    (its add and cdc actions) to ``where``: (original, moved) pairs."""
    log = [json.loads(line) for line in open(os.path.join(table, "_delta_log", f"{version:020d}.json"))]
    named = {os.path.basename(a[k]["path"]) for a in log for k in ("add", "cdc") if k in a}
    os.makedirs(where, exist_ok=True)
    moved = []
    for f in glob.glob(os.path.join(table, "**", "*.parquet"), recursive=True):
        if os.path.basename(f) not in named:
            moved.append((f, os.path.join(str(where), os.path.basename(f))))
            os.replace(*moved[-1])
    return moved


def test_incremental_record_equals_full_recomputation(spark, tmp_path):
    """Stream micro-batches (new items, changed items whose rows are closed,
    re-deliveries): each incremental record equals the full recomputation of
    its version (counts exactly, the mean to rounding, quantiles within the
    sketch's bound) and reads only the files its commit wrote (the table's
    other files moved away while it is made). An older
    release's _health table is upgraded in place; a previous record without
    the sketch and a version change (drift) give full records."""
    from delta.tables import DeltaTable
    from pyspark.sql import types as T

    from courier_spark.features.health import HEALTH_SCHEMA, SKETCH_ALPHA, STATE_FIELDS, health_row
    from courier_spark.core.tables import table_version
    paths = TablePaths.for_root(str(tmp_path / "ds"))
    old = T.StructType([f for f in HEALTH_SCHEMA.fields if f.name not in STATE_FIELDS])
    DeltaTable.createIfNotExists(spark).location(paths.health_item_visual).addColumns(old).execute()
    rng = np.random.default_rng(5)
    cols = ["item_id", "courier_cluster_id", "distance", "model_version", "centroid_version", "item_updated_at"]

    def item(i, cv="c0001"):
        # Every third item shares cluster 2 and distance 0.5: a change-feed group of several rows
        # (each batch's new ids hold two or three of them), whose distance sum counts once.
        shared = i % 3 == 0 and i % 17 and i % 19
        return (i, None if i % 17 == 0 else 2 if shared else int(rng.integers(0, 5)),
                None if i % 19 == 0 else 0.5 if shared else float(np.float32(rng.gamma(2.0, 0.3))),
                "courier/v0001", cv, None if i % 23 == 0 else T0 + dt.timedelta(minutes=i))

    state = {i: item(i) for i in range(1, 81)}
    _write(spark, paths, list(state.values()))
    r0 = record_write(spark, paths, "features", incremental=False)   # no sketch: like an older release's record
    assert r0["stats_mode"] == "full" and r0["distance_sketch"] is None
    assert set(STATE_FIELDS) <= set(spark.read.format("delta").load(paths.health_item_visual).columns)
    next_id, modes = 81, []
    for b in range(3):
        batch = []
        for i in rng.choice(sorted(state), 10, replace=False):
            state[int(i)] = item(int(i))                               # changed: its current row is closed
            batch.append(state[int(i)])
        batch += [state[int(i)] for i in rng.choice(sorted(state), 4, replace=False)
                  if state[int(i)] not in batch]                       # re-delivered, unchanged
        for i in range(next_id, next_id + 8):
            state[i] = item(i)
            batch.append(state[i])
        next_id += 8
        if b == 2:   # freshness: the batch's item versions land in bronze first
            (spark.createDataFrame([(r[0], r[5]) for r in batch if r[5] is not None],
                                   "item_id long, updated_at timestamp").write.format("delta").mode("append")
             .save(paths.bronze_items))
        _write(spark, paths, batch)
        v = table_version(spark, paths.item_visual_features)
        hidden = _hide_files_but_commit(paths.item_visual_features, v, tmp_path / "hidden") if b == 2 else []
        try:   # b == 2: every data file the commit did not write is gone while the record is made
            r = record_write(spark, paths, "stream", batch_id=b, freshness=b == 2)
        finally:
            for src, dst in hidden:
                os.replace(dst, src)
        modes.append(r["stats_mode"])
        if b == 0:
            continue
        full = health_row(spark, paths, v, "stream", b, freshness=b == 2)   # exact, from every current row
        assert full["stats_mode"] == "full" and full["distance_q_rel_error"] == 0.0
        for k, want in full.items():
            if k in ("stats_mode", "distance_q_rel_error", "distance_sketch"):
                continue
            if k.startswith("distance_p"):
                assert abs(r[k] - want) <= SKETCH_ALPHA * want * (1 + 1e-9) + 1e-12, k
            elif isinstance(want, float):
                assert r[k] == pytest.approx(want, rel=1e-9, abs=1e-12), k
            else:
                assert r[k] == want, k
        brute = _brute_stats(pd.DataFrame(list(state.values()), columns=cols))
        exact_q = {k: brute.pop(k) for k in ("distance_p50", "distance_p90", "distance_p99")}
        _check_row(r, brute)
        for k, want in exact_q.items():
            assert abs(r[k] - want) <= SKETCH_ALPHA * want * (1 + 1e-9) + 1e-12, k
        if b == 2:
            assert r["fresh_rows"] == full["fresh_rows"] > 0
    assert modes == ["full", "incremental", "incremental"]   # the first starts from a record without the sketch
    assert len(hidden) >= 3   # the table's other files (earlier commits), not read
    assert read_health(spark, paths)["distance_q_rel_error"].tolist() == [0.0, 0.0, SKETCH_ALPHA, SKETCH_ALPHA]

    # A version change: full record with drift.
    for i in list(state):
        state[i] = (*state[i][:4], "c0002", state[i][5])
    _write(spark, paths, list(state.values()))
    r = record_write(spark, paths, "stream", batch_id=3)
    assert r["stats_mode"] == "full" and r["prev_centroid_version"] == "c0001" and r["distance_sketch"]

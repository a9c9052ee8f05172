"""The analyst SQL in sql/ against real Delta tables (local Spark + Delta):
per-category AUC from ranks must equal metrics.per_category_auc (ties
included), and the cluster queries must match a pandas computation."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from courier_spark.evaluate.frames import make_toy_ctr_frames
from courier_spark.evaluate.metrics import per_category_auc, per_category_lift
from courier_spark.evaluate.sql_runner import (SQL_DIR, referenced_tables, render_sql, run_sql_file,
                                               write_predictions, _single_statement)
from courier_spark.core.paths import TablePaths
from courier_spark.core.tables import write_table
from courier_spark.core.errors import MissingTableError


@pytest.fixture(scope="module")
def toy():
    frames = make_toy_ctr_frames(n_users=40, n_items=300, seed=5)
    return frames["courier_cluster_id"]


def toy_predictions(test: pd.DataFrame) -> pd.DataFrame:
    """Two variants x two model kinds with heavily tied scores (rounded), plus
    a category with only non-clicks (AUC undefined)."""
    rng = np.random.default_rng(0)
    tc = test["target_cluster_id"].to_numpy()
    match = np.array([(h == t).mean() if t >= 0 else 0.0 for h, t in zip(test["hist_cluster_ids"], tc)])
    parts = []
    for kind in ("dnn", "lgbm"):
        for variant, score in (("baseline", np.round(rng.random(len(test)), 1)),
                               ("courier_cluster_id", np.round(0.6 * match + 0.4 * rng.random(len(test)), 2))):
            p = test[["event_id", "request_id", "session_id", "category", "label"]].copy()
            p.insert(0, "model_kind", kind)
            p.insert(0, "variant", variant)
            p["score"] = score
            # the courier encoder "pre-trained" on the first category only
            first = sorted(test["category"].unique())[0]
            p["seen"] = None if variant == "baseline" else (p["category"] == first).astype(object)
            parts.append(p)
    preds = pd.concat(parts, ignore_index=True)
    extra = preds.groupby(["variant", "model_kind"]).head(3).copy()
    extra["category"], extra["label"] = "no_clicks", 0
    extra["event_id"] = [f"x{i}" for i in range(len(extra))]
    return pd.concat([preds, extra], ignore_index=True)


def test_per_category_auc_sql_matches_python_with_ties(spark, root, toy):
    _, test = toy
    preds = toy_predictions(test)
    assert preds.duplicated(["variant", "model_kind", "category", "score"]).any()   # ties exist
    write_predictions(spark, preds, TablePaths.for_root(root).predictions)
    sql = run_sql_file(spark, SQL_DIR / "per_category_auc_lift.sql", root).toPandas()
    py = per_category_lift(per_category_auc(preds))
    m = py.merge(sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"), how="outer")
    assert len(m) == len(py) == len(sql) == 2 * 2 * (test["category"].nunique() + 1)
    assert (m["n"] == m["impressions"]).all() and (m["n_pos"] == m["clicks"]).all()
    both = m["auc_py"].notna()
    assert (both == m["auc_sql"].notna()).all()
    assert (~both).sum() == 4                           # the no-clicks category, per variant x kind
    np.testing.assert_allclose(m.loc[both, "auc_sql"], m.loc[both, "auc_py"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(m.loc[both, "lift_auc_pct_sql"], m.loc[both, "lift_auc_pct_py"],
                               atol=1e-6, rtol=0)
    assert (m.loc[both & (m["variant"] == "baseline"), "lift_auc_pct_sql"].abs() < 1e-12).all()
    # seen: null for the baseline, the encoder's pre-training categories otherwise (the Python path agrees)
    from courier_spark.evaluate.runner import per_category_results
    pr = per_category_results(preds).merge(sql, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    base = pr["variant"] == "baseline"
    assert pr.loc[base, "seen_sql"].isna().all() and pr.loc[base, "seen_py"].isna().all()
    first = sorted(test["category"].unique())[0]
    assert (pr.loc[~base, "seen_sql"].astype(bool) == (pr.loc[~base, "category"] == first)).all()
    assert (pr.loc[~base, "seen_py"].astype(bool) == pr.loc[~base, "seen_sql"].astype(bool)).all()


def test_cluster_queries_match_pandas(spark, root, toy):
    train, test = toy
    p = TablePaths.for_root(root)
    ctr = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    write_table(spark.createDataFrame(ctr[["event_id", "item_id", "category", "label", "split"]]),
                p.ctr_samples)
    items = ctr.drop_duplicates("item_id")[["item_id", "category", "target_cluster_id"]]
    visual = items[items["target_cluster_id"] >= 0].rename(columns={"target_cluster_id": "courier_cluster_id"})
    # item_visual keeps history: closed rows (valid_to set, another cluster) must not count.
    old_rows = visual.iloc[::3].assign(courier_cluster_id=lambda d: d["courier_cluster_id"] + 1000,
                                       valid_to=pd.Timestamp("2026-01-01"))
    stored = pd.concat([visual.assign(valid_to=pd.Series(pd.NaT, index=visual.index, dtype="datetime64[ns]")),
                        old_rows], ignore_index=True)
    # Only the columns the query reads, written directly: item_visual's own writer is merge_history.
    (spark.createDataFrame(stored[["item_id", "courier_cluster_id", "valid_to"]]).write.format("delta")
     .save(p.item_visual_features))
    write_table(spark.createDataFrame(items[["item_id", "category"]]), p.silver_items)

    got = run_sql_file(spark, "ctr_by_cluster.sql", root).toPandas()
    j = ctr.merge(visual, on="item_id", how="left")
    j["courier_cluster_id"] = j["courier_cluster_id"].astype("Int64")
    exp = j.groupby("courier_cluster_id", dropna=False).agg(impressions=("label", "size"),
                                                            clicks=("label", "sum"))
    assert got["impressions"].sum() == len(ctr) and len(got) == len(exp)
    g = got.assign(cluster_id=got["cluster_id"].astype("Int64")).set_index("cluster_id")
    for cid, row in exp.iterrows():
        key = pd.NA if pd.isna(cid) else cid
        r = g[g.index.isna()].iloc[0] if key is pd.NA else g.loc[key]
        assert r["impressions"] == row["impressions"] and r["clicks"] == row["clicks"]
        assert r["ctr"] == pytest.approx(row["clicks"] / row["impressions"])
        assert r["ctr_vs_overall"] == pytest.approx(row["clicks"] / row["impressions"] / ctr["label"].mean())

    pur = run_sql_file(spark, "cluster_category_purity.sql", root).toPandas().set_index("cluster_id")
    vi = visual.merge(items[["item_id"]], on="item_id")
    counts = vi.groupby(["courier_cluster_id", "category"]).size()
    for cid, part in counts.groupby(level=0):
        assert pur.loc[cid, "purity"] == pytest.approx(part.max() / part.sum())
        assert pur.loc[cid, "items"] == part.sum()
    assert pur["overall_purity"].iloc[0] == pytest.approx(
        counts.groupby(level=0).max().sum() / counts.sum())
    assert ((pur["purity"] > 0) & (pur["purity"] <= 1)).all()


def test_missing_table_is_a_clear_error(spark, tmp_path):
    with pytest.raises(MissingTableError, match=r"gold/predictions.*courier evaluate"):
        run_sql_file(spark, "per_category_auc_lift.sql", str(tmp_path / "empty"))


def test_sql_files_render_and_hold_one_statement(tmp_path):
    for f in sorted(SQL_DIR.glob("*.sql")):
        text = render_sql(f.read_text(), "/data/x", str(f))
        stmt = _single_statement(text, str(f))
        assert "${" not in stmt and all(t.startswith("/data/x/") for t in referenced_tables(stmt))
    bad = tmp_path / "two.sql"
    bad.write_text("SELECT 1; -- one\nSELECT 2;")
    with pytest.raises(ValueError, match="more than one"):
        _single_statement(bad.read_text(), str(bad))
    assert _single_statement("SELECT ';' AS x; -- trailing;\n", "q") == "SELECT ';' AS x"
    with pytest.raises(ValueError, match="unknown placeholder"):
        render_sql("SELECT * FROM delta.`${root}/${table}`", "/r")

"""Sample assembly on a real local Spark, checked against brute force."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from courier_spark.core.errors import ConfigError

from courier_spark.core.schema import SamplesConfig, WindowsConfig
from courier_spark.data.contract import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA
from courier_spark.data.samples import (assemble_samples, assign_sessions, pages_of,
                                   resolve_windows)

T0 = dt.datetime(2026, 9, 1)


def random_log(seed: int = 0, n_users: int = 12, n_pages: int = 400, n_items: int = 40) -> pd.DataFrame:
    """Pages with many timestamp ties (minute grid) so strictness matters."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pages):
        user = int(rng.integers(n_users))
        ts = T0 + dt.timedelta(minutes=int(rng.integers(0, 6 * 24 * 60 // 30)) * 30)  # 6 days, 30-min grid
        n = int(rng.integers(1, 9))
        items = rng.choice(n_items, size=n, replace=False)
        clicks = rng.random(n) < 0.3
        for pos in range(n):
            rows.append((f"e{p}_{pos}", f"r{p}", user, None, int(items[pos]) + 1000, pos, ts, bool(clicks[pos])))
    return pd.DataFrame(rows, columns=IMPRESSIONS_SCHEMA.fieldNames())


def to_spark(spark, pdf):
    imps = spark.createDataFrame(pdf, IMPRESSIONS_SCHEMA)
    items = spark.createDataFrame(
        [(i + 1000, f"cat{i % 3}", None, None, None, T0) for i in range(40)], ITEMS_SCHEMA)
    return imps, items


def brute_history(log: pd.DataFrame, user: int, ts, k: int) -> list[int]:
    c = log[(log.user_id == user) & log.clicked & (log.event_ts < ts)]
    c = c.sort_values(["event_ts", "position", "event_id"])
    return [int(x) for x in c.item_id.tolist()[-k:]]


@pytest.fixture(scope="module")
def assembled(spark):
    log = random_log()
    imps, items = to_spark(spark, log)
    cfg = SamplesConfig(negative_keep_rate=1.0, l_pv=5, l_click=5, ctr_history_len=7)
    tables = assemble_samples(imps, items, WindowsConfig(test_days=1, ctr_train_days=2), cfg)
    return log, tables, tables.pretrain.toPandas(), tables.ctr.toPandas()


def test_pretrain_history_is_point_in_time_row_by_row(assembled):
    log, tables, pre, _ = assembled
    assert len(pre) > 50
    for r in pre.itertuples():
        expect = brute_history(log, r.user_id, r.event_ts, 5)
        assert list(r.hist_item_ids) == expect, r.request_id
        # nothing at or after the page's timestamp
        click_ts = log[(log.user_id == r.user_id) & log.clicked].set_index("item_id").event_ts
        assert all((click_ts.loc[[i]] < r.event_ts).any() for i in r.hist_item_ids)


def test_pretrain_rows_are_exactly_pages_with_click_and_history(assembled):
    log, tables, pre, _ = assembled
    lo, hi = tables.windows.pretrain
    expect = set()
    for rid, g in log[(log.event_ts >= lo) & (log.event_ts < hi)].groupby("request_id"):
        if g.clicked.any() and brute_history(log, g.user_id.iloc[0], g.event_ts.min(), 5):
            expect.add(rid)
    assert set(pre.request_id) == expect
    assert pre.request_id.is_unique


def test_pv_lists_clicked_first_and_limited(assembled):
    log, _, pre, _ = assembled
    by_req = {rid: g for rid, g in log.groupby("request_id")}
    saw_truncation = False
    for r in pre.itertuples():
        g = by_req[r.request_id].sort_values(["clicked", "position"], ascending=[False, True])
        expect = g.item_id.tolist()[:5]
        assert list(r.pv_item_ids) == expect
        assert list(r.pv_labels) == [int(x) for x in g.clicked.tolist()[:5]]
        assert len(r.pv_item_ids) <= 5 and 1 <= len(r.hist_item_ids) <= 5
        labels = list(r.pv_labels)
        assert labels == sorted(labels, reverse=True)  # clicked first
        saw_truncation |= len(g) > 5
    assert saw_truncation  # the data exercised the 5-item cut


def test_ctr_samples_history_and_splits(assembled):
    log, tables, _, ctr = assembled
    lo, _ = tables.windows.ctr_train
    in_ctr = log[log.event_ts >= lo]
    assert sorted(ctr.event_id) == sorted(in_ctr.event_id)  # one row per impression, none lost
    for r in ctr.sample(300, random_state=0).itertuples():
        assert list(r.hist_item_ids) == brute_history(log, r.user_id, r.event_ts, 7)
        expect_split = "test" if r.event_ts >= tables.windows.test[0] else "train"
        assert r.split == expect_split
    assert set(ctr.split) == {"train", "test"}
    assert ctr.category.notna().all()


def test_negative_downsampling_is_deterministic_and_keeps_clicks(spark):
    log = random_log(seed=3)
    imps, items = to_spark(spark, log)
    cfg = SamplesConfig(negative_keep_rate=0.2)
    w = WindowsConfig(test_days=1, ctr_train_days=1)
    a = assemble_samples(imps, items, w, cfg).pretrain.toPandas().sort_values("request_id")
    b = assemble_samples(imps, items, w, cfg).pretrain.toPandas().sort_values("request_id")
    assert a.pv_item_ids.map(list).tolist() == b.pv_item_ids.map(list).tolist()
    n_clicked = log.groupby("request_id").clicked.sum()
    n_neg_kept = sum(len(l) - sum(l) for l in a.pv_labels)
    for r in a.itertuples():  # every click kept (up to the 5 limit)
        assert sum(r.pv_labels) == min(5, n_clicked[r.request_id])
    total_neg = sum(((~g.clicked).sum()) for rid, g in log.groupby("request_id") if rid in set(a.request_id))
    assert 0 < n_neg_kept < 0.45 * total_neg


def test_sessions_split_exactly_at_the_gap(spark):
    base = T0
    gaps_min = [0, 29, 29.99, 30, 5, 45, 30.01]  # minutes since previous page
    ts, t = [], base
    for g in gaps_min:
        t = t + dt.timedelta(minutes=g)
        ts.append(t)
    pages = spark.createDataFrame(
        [(f"r{i}", 7, x) for i, x in enumerate(ts)], "request_id string, user_id long, page_ts timestamp")
    out = assign_sessions(pages, 30).orderBy("page_ts").toPandas()
    # new session exactly when the gap >= 30 minutes: pages 3, 5, 6
    idx = out.session_id.factorize()[0].tolist()
    assert idx == [0, 0, 0, 1, 1, 2, 3]
    # another user's pages never share a session id
    two = pages.unionByName(pages.selectExpr("concat(request_id,'b') request_id", "8L user_id", "page_ts"))
    s = assign_sessions(two, 30).toPandas()
    assert s.groupby("session_id").user_id.nunique().max() == 1


def test_relative_windows_and_impossible_windows():
    w = resolve_windows(WindowsConfig(test_days=1, ctr_train_days=2),
                        dt.datetime(2026, 9, 1, 3), dt.datetime(2026, 9, 10, 22))
    assert w.test == (dt.datetime(2026, 9, 10), dt.datetime(2026, 9, 11))
    assert w.ctr_train == (dt.datetime(2026, 9, 8), dt.datetime(2026, 9, 10))
    assert w.pretrain == (dt.datetime(2026, 9, 1), dt.datetime(2026, 9, 8))
    with pytest.raises(ConfigError, match="leave no day for pre-training"):
        resolve_windows(WindowsConfig(test_days=2, ctr_train_days=8),
                        dt.datetime(2026, 9, 1, 3), dt.datetime(2026, 9, 10, 22))
    with pytest.raises(ConfigError, match="must not overlap"):
        resolve_windows(WindowsConfig(mode="absolute", pretrain_start="2026-09-01", pretrain_end="2026-09-05",
                                      ctr_train_start="2026-09-04", ctr_train_end="2026-09-06",
                                      test_start="2026-09-06", test_end="2026-09-07"), None, None)
    with pytest.raises(ConfigError, match="empty dataset"):
        resolve_windows(WindowsConfig(), None, None)

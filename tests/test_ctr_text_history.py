"""CTR models: text attributes of the history items (DNN per-slot category +
title tokens, LightGBM text-history shares) against brute force, and the
DNN's train-fitted standardisation of its numeric inputs against hand-computed
statistics."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from courier_spark.core.schema import DnnConfig, EvaluateConfig, LgbmConfig
from courier_spark.evaluate.frames import make_toy_ctr_frames

# Catalogue: item 5 is never shown in the frames (a test-day item), item 6 has a
# category the train frame lacks, item 4 has no title.
ITEMS = pd.DataFrame({"item_id": [1, 2, 3, 4, 5, 6],
                      "category": ["shoes", "bags", "shoes", "bags", "hats", "scarves"],
                      "title": ["Red leather shoes", "red tote bag", "blue canvas shoes", None,
                                "wool hat red", "silk scarf"]})


def _frame(hist: list[list[int]], item_id: list[int], category: list, title: list, **extra) -> pd.DataFrame:
    n = len(hist)
    return pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "request_id": [f"r{i}" for i in range(n)],
                         "session_id": [f"s{i}" for i in range(n)], "user_id": np.arange(n) + 100,
                         "item_id": item_id, "category": category, "position": np.arange(n) % 3,
                         "label": np.arange(n) % 2, "title": title, "price": np.full(n, 9.5),
                         "query": [None] * n, "hist_item_ids": hist, **extra})


TRAIN = _frame([[1, 2], [3], [2, 1, 3, 1], []], [1, 2, 3, 4], ["shoes", "bags", "shoes", "bags"],
               ["Red leather shoes", "red tote bag", "blue canvas shoes", None])
# Unknown id 999, catalogue-only items 5 and 6, padding (short and empty lists).
TEST = _frame([[999, 5, 6, 1], [2], [], [1, 1, 5]], [5, 6, 1, 2], ["hats", None, "shoes", "caps"],
              ["wool hat red", "RED shoes shoes", None, "striped tie"])


def _brute_tokens(title: object, cfg: DnnConfig) -> list[int]:
    toks = [] if title is None else title.lower().split()[:cfg.max_title_tokens]
    ids = [1 + zlib.crc32(t.encode("utf-8")) % (cfg.token_buckets - 1) for t in toks]
    return ids + [0] * (cfg.max_title_tokens - len(ids))


# ---------------------------------------------------------------- DNN history lookup


def test_dnn_text_interest_covers_the_whole_sequence():
    """text_interest looks up every history item (not only the last history_len),
    and the forward reads it: moving one old click's title changes the score."""
    import torch
    from courier_spark.evaluate.ctr_dnn import CtrDnn, DnnPreprocessor
    cfg = DnnConfig(history_len=1, max_title_tokens=4)
    prep = DnnPreprocessor.fit(TRAIN, "none", cfg, items=ITEMS)
    assert prep.n_text_slots == 4                      # the longest train history
    t = prep.transform(TEST)
    for i, h in enumerate(TEST["hist_item_ids"]):
        want = [0] * (4 - len(h[-4:])) + [prep.item_index.get_loc(x) + 1 if x in prep.item_index else 0
                                         for x in h[-4:]]
        assert t["text_rows"][i].tolist() == want
    assert t["hist_row"].shape[1] == 1
    off = DnnPreprocessor.fit(TRAIN, "none", DnnConfig(history_len=1, max_title_tokens=4, text_interest=False),
                              items=ITEMS)
    assert "text_rows" not in off.transform(TEST)
    torch.manual_seed(0)
    net = CtrDnn(prep).eval()
    with torch.no_grad():
        before = net(t).clone()
        # item 5 (row of 5) is only the 2nd-newest click of test row 0, outside history_len = 1
        net.item_tok[prep.item_index.get_loc(5) + 1] = torch.tensor([7, 8, 9, 0])[:net.item_tok.shape[1]]
        after = net(t)
    changed = (before - after).abs() > 1e-7
    assert changed[0] and changed[3] and not changed[1] and not changed[2]


def test_dnn_history_slots_carry_the_items_category_and_title_tokens():
    from courier_spark.evaluate.ctr_dnn import DnnPreprocessor
    cfg = DnnConfig(history_len=3, max_title_tokens=4)
    prep = DnnPreprocessor.fit(TRAIN, "none", cfg, items=ITEMS)
    assert prep.categories == {"bags": 1, "shoes": 2}      # the target's index (train frame)
    t = prep.transform(TEST)
    cats = prep.item_cat[t["hist_row"]].numpy()             # [n, L]
    toks = prep.item_tok[t["hist_row"]].numpy()             # [n, L, T]
    by_id = ITEMS.set_index("item_id")
    for i, h in enumerate(TEST["hist_item_ids"]):
        last = h[-cfg.history_len:]
        slots = [None] * (cfg.history_len - len(last)) + last    # right-aligned, newest last
        for j, item in enumerate(slots):
            known = item in by_id.index
            exp_cat = prep.categories.get(by_id.loc[item, "category"], 0) if known else 0
            exp_tok = _brute_tokens(by_id.loc[item, "title"], cfg) if known else [0] * cfg.max_title_tokens
            assert cats[i, j] == exp_cat, (i, j, item)
            # the lookup drops token columns that no title uses: they must be padding
            width = toks.shape[-1]
            assert toks[i, j].tolist() == exp_tok[:width] and not any(exp_tok[width:]), (i, j, item)
            assert (t["hist_row"][i, j] == 0) == (not known)
    # Spot checks of the brute force itself: row 0 = [5, 6, 1] (hats/scarves unknown to the train frame).
    assert cats[0].tolist() == [0, 0, 2] and cats[2].tolist() == [0, 0, 0]
    assert (toks[0, 0] > 0).sum() == 3 and (toks[3, 0] == toks[3, 1]).all()   # item 1 twice


def test_dnn_history_items_fall_back_to_the_frame_and_can_be_switched_off():
    from courier_spark.evaluate.ctr_dnn import DnnPreprocessor
    cfg = DnnConfig(history_len=3)
    prep = DnnPreprocessor.fit(TRAIN, "none", cfg)           # items=None: the train frame's items
    assert sorted(prep.item_index) == [1, 2, 3, 4]
    rows = prep.transform(TEST)["hist_row"]
    assert rows[0].tolist()[:2] == [0, 0] and rows[0, 2] > 0  # 5, 6 unknown without the catalogue
    off = DnnPreprocessor.fit(TRAIN, "none", DnnConfig(history_text=False))
    assert off.item_tok is None and "hist_row" not in off.transform(TEST)


def test_dnn_forward_reads_the_history_lookup():
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    cfg = DnnConfig(epochs=1, history_len=4, statistics=False)
    m = train_dnn(TRAIN, "none", cfg, seed=0, items=ITEMS)
    before = score_dnn(m, TEST)
    # Change item 5's title tokens: only rows with item 5 in their history move.
    m.net.item_tok[m.prep.history_rows(np.array([[5]]))[0, 0]] = 7
    after = score_dnn(m, TEST)
    has5 = TEST["hist_item_ids"].map(lambda h: 5 in h).to_numpy()
    assert (before[has5] != after[has5]).all() and (before[~has5] == after[~has5]).all()


@pytest.mark.parametrize("history_text", [True, False])
@pytest.mark.parametrize("feature", ["none", "vector", "simscore", "cluster_id"])
def test_dnn_trains_and_scores_every_variant(feature, history_text):
    from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
    from courier_spark.evaluate.frames import item_table
    tr, te = make_toy_ctr_frames(n_users=15, n_items=150, seed=5)["baseline"]
    items = item_table(None, pd.concat([tr, te]))
    m = train_dnn(tr, feature, DnnConfig(epochs=1, history_text=history_text), seed=0, items=items)
    s = score_dnn(m, te)
    assert s.shape == (len(te),) and np.isfinite(s).all() and ((s > 0) & (s < 1)).all()
    assert m.net.history_text is history_text and np.isfinite(m.epoch_losses).all()

# ---------------------------------------------------------------- DNN standardisation


def test_dnn_standardises_test_rows_with_train_statistics():
    from courier_spark.evaluate.ctr_dnn import DnnPreprocessor
    nan = np.nan
    # SimScores in a narrow cosine band; train slot 0: 0.86, 0.87, -, 0.865 -> mean 0.865,
    # std sqrt((0.005^2 + 0.005^2 + 0) / 3); slot 1: 0.9, -, -, 0.8 -> mean 0.85, std 0.05.
    sims = [np.array(v, np.float32) for v in ([0.86, 0.9], [0.87, nan], [nan, nan], [0.865, 0.8])]
    # Vectors: rows 3-4 have none (all zeros): mean over the other two [2, 4, 5], std [1, 2, 0 -> 1]
    # (with the missing rows it would be [1, 2, 2.5]).
    vecs = [np.array(v, np.float32) for v in ([1, 2, 5], [3, 6, 5], [0, 0, 0], [0, 0, 0])]
    train = TRAIN.assign(sim_scores=sims, target_embedding=vecs)
    test = TEST.iloc[:2].assign(sim_scores=[np.array([0.87, nan], np.float32), np.array([0.86, 0.95], np.float32)],
                                target_embedding=[np.array([4, 4, 7], np.float32), np.zeros(3, np.float32)])
    cfg = DnnConfig(statistics=False)
    sd0 = math.sqrt(0.005 ** 2 * 2 / 3)
    sim = DnnPreprocessor.fit(train, "simscore", cfg).transform(test)["sim"].numpy()
    np.testing.assert_allclose(sim, [[0.005 / sd0, 0.0, 0, 1],                 # missing: 0 + indicator
                                     [-0.005 / sd0, (0.95 - 0.85) / 0.05, 0, 0]], atol=1e-4)
    t = DnnPreprocessor.fit(train, "vector", cfg).transform(test)
    np.testing.assert_allclose(t["vec"].numpy(), [[2, 0, 2], [0, 0, 0]], atol=1e-6)
    assert t["vec_missing"].numpy().ravel().tolist() == [0, 1]
    # History length: log1p of the train lengths 2, 1, 4, 0; the test rows have 4 and 1.
    lt = np.log1p([2, 1, 4, 0])
    np.testing.assert_allclose(t["hist_len"].numpy().ravel(), (np.log1p([4, 1]) - lt.mean()) / lt.std(), rtol=1e-5)
    # Standardising with the test rows' own statistics would give +-1 on both rows.
    assert not np.allclose(np.abs(t["hist_len"].numpy()), 1.0)

# ---------------------------------------------------------------- LightGBM text history


def _brute_lgbm(frame: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per row, by loops: shares over the whole history list of the target's category
    and of each distinct target title token (max, mean, count > 0)."""
    cat = dict(zip(items["item_id"], items["category"]))
    words = {i: set(t.lower().split()) if isinstance(t, str) else set() for i, t in zip(items["item_id"], items["title"])}
    out = []
    for h, c, title in zip(frame["hist_item_ids"], frame["category"], frame["title"]):
        n = len(h)
        toks = set(title.lower().split()) if isinstance(title, str) else set()
        shares = [sum(t in words.get(j, set()) for j in h) / n for t in toks] if n else []
        ordered = list(dict.fromkeys(title.lower().split())) if isinstance(title, str) else []
        per_pos = {}
        for p in range(5):
            hit = [ordered[p] in words.get(j, set()) for j in h] if n and p < len(ordered) else None
            per_pos[f"hist_title_share_{p}"] = sum(hit) / n if hit is not None else nan_
            per_pos[f"hist_title_count_{p}"] = float(sum(hit)) if hit is not None else nan_
            per_pos[f"hist_title_recent_{p}"] = float(hit[-1]) if hit is not None else nan_
        with_cat = n and c is not None
        out.append({"hist_cat_share": sum(cat.get(j) == c for j in h) / n if with_cat else nan_,
                    "hist_cat_count": float(sum(cat.get(j) == c for j in h)) if with_cat else nan_,
                    "hist_cat_recent": float(cat.get(h[-1]) == c) if with_cat else nan_,
                    **per_pos,
                    "hist_title_share_max": max(shares) if shares else nan_,
                    "hist_title_share_mean": float(np.mean(shares)) if shares else nan_,
                    "hist_title_n_shared": float(sum(s > 0 for s in shares)) if n else nan_})
    return pd.DataFrame(out)


nan_ = float("nan")


@pytest.mark.parametrize("items", [ITEMS, None])
def test_lgbm_text_history_features_equal_brute_force(items):
    from courier_spark.evaluate.lgbm import _features, train_lgbm
    cfg = LgbmConfig(num_boost_round=2, min_data_in_leaf=1)
    m = train_lgbm(TRAIN, "none", seed=0, cfg=cfg, items=items)
    catalogue = ITEMS if items is not None else TRAIN
    for frame in (TRAIN, TEST):
        exp = _brute_lgbm(frame, catalogue)
        feats = _features(frame, m, None)
        got = feats[list(exp.columns)]
        pd.testing.assert_frame_equal(got.reset_index(drop=True), exp, check_dtype=False, atol=1e-12)
        # title_tok_j: the j-th distinct token of the target title, as a vocabulary code
        for i, title in enumerate(frame["title"]):
            toks = list(dict.fromkeys(title.lower().split())) if isinstance(title, str) else []
            for j in range(5):
                v = feats[f"title_tok_{j}"].iloc[i]
                if j < len(toks) and toks[j] in m.text.vocab:
                    assert v == m.text.vocab[toks[j]]
                else:
                    assert np.isnan(v)
    # Hand check of TEST row 0: history [999, 5, 6, 1], target "hats" / "wool hat red":
    # with the catalogue, hats 1/4; "red" in items 5 and 1 (2/4), "wool" and "hat" in item 5 (1/4).
    if items is not None:
        row = _features(TEST, m, None).iloc[0]
        assert row["hist_cat_share"] == 0.25 and row["hist_title_n_shared"] == 3
        assert row["hist_title_share_max"] == 0.5 and row["hist_title_share_mean"] == pytest.approx(1 / 3)
    off = train_lgbm(TRAIN, "none", seed=0, cfg=LgbmConfig(num_boost_round=2, min_data_in_leaf=1,
                                                          history_text=False))
    assert not any(c.startswith("hist_title") or c == "hist_cat_share" for c in off.feature_names)


def test_runner_passes_the_item_table_to_both_models(monkeypatch):
    from courier_spark.evaluate import ctr_dnn, lgbm
    from courier_spark.evaluate.runner import evaluate_variants
    seen = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.append(kwargs.get("items"))
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(ctr_dnn, "train_dnn", spy(ctr_dnn.train_dnn))
    monkeypatch.setattr(lgbm, "train_lgbm", spy(lgbm.train_lgbm))
    frames = make_toy_ctr_frames(n_users=15, n_items=150, seed=6)
    cfg = EvaluateConfig(dnn=DnnConfig(epochs=1), parallel_fits=1)   # in this process, where the spies are
    evaluate_variants(frames, [("baseline", "none")], model_kinds=["dnn", "lgbm"], seeds=[0], cfg=cfg, items=ITEMS)
    assert len(seen) == 2 and all(s is ITEMS for s in seen)

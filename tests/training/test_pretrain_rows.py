"""Which pre-training rows the encoder sees: histories shuffled across page
views (courier_shuffled) and page views of chosen categories only, each
checked against a brute-force answer on a tiny frame."""
from __future__ import annotations

from collections import Counter

import pytest

from training.loader import pretrain_training_frame
from training.pretrain_rows import page_categories, restrict_to_categories, shuffle_histories

N_ROWS = 23


@pytest.fixture
def frame(spark):
    """Padded id frame of 23 page views, each with its own distinct history."""
    rows = [(f"r{i:02d}", [100 + i, 200 + i][: 1 + i % 2], [1, 0][: 1 + i % 2],
             [300 + i, 400 + i, 500 + i][: 1 + i % 3]) for i in range(N_ROWS)]
    samples = spark.createDataFrame(rows, "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                          "hist_item_ids array<long>")
    return pretrain_training_frame(samples, 2, 3)


def _rows(df) -> dict[str, dict]:
    return {r["request_id"]: {"pv_ids": tuple(r["pv_ids"]), "pv_labels": tuple(r["pv_labels"]),
                              "hist_ids": tuple(r["hist_ids"])} for r in df.collect()}


def test_shuffled_histories_move_as_one_cycle(frame):
    before = _rows(frame)
    after = _rows(shuffle_histories(frame, seed=5))
    assert set(after) == set(before) and len(after) == N_ROWS
    # shown items and labels stay with their page view
    for rid in before:
        assert after[rid]["pv_ids"] == before[rid]["pv_ids"]
        assert after[rid]["pv_labels"] == before[rid]["pv_labels"]
    # the same multiset of histories, padding included
    assert Counter(r["hist_ids"] for r in after.values()) == Counter(r["hist_ids"] for r in before.values())
    # every history moved (all 23 are distinct) ...
    owner = {r["hist_ids"]: rid for rid, r in before.items()}
    donor = {rid: owner[after[rid]["hist_ids"]] for rid in after}
    assert all(donor[rid] != rid for rid in donor)
    # ... by one cyclic permutation through every row
    seen, rid = [], "r00"
    while rid not in seen:
        seen.append(rid)
        rid = donor[rid]
    assert len(seen) == N_ROWS and rid == "r00"


def test_shuffle_is_fixed_by_the_seed(frame):
    def perm(seed: int) -> dict:
        return {rid: r["hist_ids"] for rid, r in _rows(shuffle_histories(frame, seed)).items()}
    assert perm(5) == perm(5)
    assert perm(5) != perm(6)


def test_shuffle_of_one_row_is_the_row(spark, frame):
    one = frame.filter("request_id = 'r03'")
    assert _rows(shuffle_histories(one, 1)) == _rows(one)


CATS = {1: "womens_clothing", 2: "womens_clothing", 3: "shoes", 4: "shoes", 5: "bags", 6: "books"}


@pytest.fixture
def catalogue(spark):
    items = spark.createDataFrame(list(CATS.items()), "item_id long, category string")
    pv = {
        "p0": [1, 2, 3],        # womens_clothing 2 : shoes 1
        "p1": [3, 4, 1],        # shoes 2 : womens 1
        "p2": [1, 3],           # tie -> shoes (alphabetically first)
        "p3": [5, 6],           # tie -> bags
        "p4": [99, 98, 6],      # unknown items do not vote -> books
        "p5": [99],             # no known item: no category
        "p6": [2],
        "p7": [4, 4, 1, 2, 2],  # repeated ids vote each time: womens 3 : shoes 2
    }
    samples = spark.createDataFrame([(k, v, [1] + [0] * (len(v) - 1), [7]) for k, v in pv.items()],
                                    "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                    "hist_item_ids array<long>")
    return samples, items, pv


def brute_category(ids: list[int]) -> str | None:
    votes = Counter(CATS[i] for i in ids if i in CATS)
    if not votes:
        return None
    top = max(votes.values())
    return min(c for c, n in votes.items() if n == top)


def test_page_category_is_the_majority_of_shown_items(catalogue):
    samples, items, pv = catalogue
    got = {r["request_id"]: r["category"] for r in page_categories(samples, items).collect()}
    want = {k: brute_category(v) for k, v in pv.items() if brute_category(v) is not None}
    assert got == want
    assert want["p2"] == "shoes" and "p5" not in want   # the brute force covers the tie and the unknown


@pytest.mark.parametrize("chosen", [["womens_clothing"], ["shoes", "books"], ["electronics"], []])
def test_restrict_to_categories(catalogue, chosen):
    samples, items, pv = catalogue
    kept = restrict_to_categories(samples, items, chosen)
    want = {k for k, v in pv.items() if brute_category(v) in chosen} if chosen else set(pv)
    assert {r["request_id"] for r in kept.collect()} == want
    assert kept.columns == samples.columns
    full = {r["request_id"]: r for r in samples.collect()}
    assert all(r == full[r["request_id"]] for r in kept.collect())   # rows kept whole


@pytest.mark.parametrize("chosen", [["womens_clothing"], ["shoes", "books"], []])
def test_restrict_history_clicks_keeps_only_chosen_items_in_order(spark, chosen):
    from training.pretrain_rows import restrict_history_clicks
    items = spark.createDataFrame(list(CATS.items()), "item_id long, category string")
    hist = {"h0": [1, 3, 2, 5], "h1": [3, 4], "h2": [6, 99, 1], "h3": [99], "h4": [2, 2, 4, 1]}
    samples = spark.createDataFrame([(k, [1], [1], v) for k, v in hist.items()],
                                    "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                    "hist_item_ids array<long>")
    got = {r["request_id"]: list(r["hist_item_ids"]) for r in restrict_history_clicks(samples, items, chosen).collect()}
    if not chosen:
        assert got == hist
        return
    want = {k: [i for i in v if CATS.get(i) in chosen] for k, v in hist.items()}
    assert got == {k: v for k, v in want.items() if v}   # rows left without history are dropped
    assert restrict_history_clicks(samples, items, chosen).columns == samples.columns

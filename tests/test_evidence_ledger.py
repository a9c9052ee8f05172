"""The evidence bench's ledger (bench/evidence_ledger.py): resumable lines,
scopes, and the paired lifts of the docs tables against a brute force."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from evidence_ledger import (append_lines, done_fits, fits_frame, lift_cell, lift_runs, minus_cell,  # noqa: E402
                             read_ledger, scope_masks)


def test_ledger_appends_and_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "l.jsonl"
    append_lines(path, [{"setting": "s", "method": "m", "way": "cluster_id", "model_kind": "dnn",
                         "encoder_seed": 0, "run": 0, "scope": "all", "auc": 0.7}])
    with open(path, "a") as fh:
        fh.write('{"setting": "s", "meth')   # a writer killed mid-line
    recs = read_ledger(path)
    assert len(recs) == 1
    assert done_fits(recs) == {("s", "m", "cluster_id", "dnn", 0, 0)}
    assert read_ledger(tmp_path / "none.jsonl") == []


def test_scopes_split_seen_unseen_visual_and_low_visual():
    cats = pd.Series(["a", "b", "c", "d", "a"])
    m = scope_masks(cats, ["a"], ["a", "b"])
    assert m["seen"].tolist() == [True, False, False, False, True]
    assert m["unseen_visual"].tolist() == [False, True, False, False, False]
    assert m["low_visual"].tolist() == [False, False, True, True, False]
    everything = scope_masks(cats, [], ["a", "b"])   # pre-trained on all: all seen
    assert everything["seen"].all() and not everything["unseen_visual"].any() and not everything["low_visual"].any()


def _fits(rng) -> tuple[list[dict], dict]:
    """Baseline runs 0..2, courier and simclr at seeds 0..1, generic seedless (-1), in one shared setting."""
    recs, truth = [], {}
    base = {j: 0.70 + 0.01 * rng.random() for j in range(3)}
    for j, v in base.items():
        recs.append({"setting": "A", "method": "baseline", "way": "none", "model_kind": "dnn", "encoder_seed": None,
                     "run": j, "scope": "all", "auc": v, "gauc": v})
    for m, e_list in (("courier", [0, 1]), ("simclr", [0, 1]), ("generic", [-1])):
        for e in e_list:
            for j in range(3):
                v = 0.72 + 0.01 * rng.random()
                truth[(m, e, j)] = v
                recs.append({"setting": "B" if m != "generic" else "A", "method": m, "way": "cluster_id",
                             "model_kind": "dnn", "encoder_seed": e, "run": j, "scope": "all", "auc": v, "gauc": v})
    return recs, base, truth


def test_lifts_pair_with_the_baseline_run_and_seedless_methods_serve_every_seed():
    rng = np.random.default_rng(0)
    recs, base, truth = _fits(rng)
    df = fits_frame(recs)
    got = lift_runs(df, "B", "courier", "cluster_id", "dnn", "all", "auc", "A", [0, 1])
    want = {(e, j): 100 * (truth[("courier", e, j)] / base[j] - 1) for e in (0, 1) for j in range(3)}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k]) for k in want)
    gen = lift_runs(df, "B", "generic", "cluster_id", "dnn", "all", "auc", "A", [0, 1])
    assert set(gen) == set(want)   # the trunk's three runs, paired with each encoder seed
    cell = minus_cell(df, "B", "courier", "simclr", "cluster_id", "dnn", "all", "auc", "A")
    a = [want[k] for k in sorted(want)]
    b = [100 * (truth[("simclr", e, j)] / base[j] - 1) for e, j in sorted(want)]
    assert cell.n == 6 and cell.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert cell.p == pytest.approx(ttest_rel(a, b).pvalue)


def test_a_seedless_method_counts_its_runs_once_and_pairs_with_every_seed():
    rng = np.random.default_rng(1)
    recs, base, truth = _fits(rng)
    df = fits_frame(recs)
    gen = [100 * (truth[("generic", -1, j)] / base[j] - 1) for j in range(3)]
    cell = lift_cell(df, "B", "generic", "cluster_id", "dnn", "all", "auc", "A")
    # three independent runs, not the same three repeated per encoder seed
    assert cell.n == 3 and cell.mean == pytest.approx(np.mean(gen))
    from scipy.stats import ttest_1samp
    assert cell.p == pytest.approx(ttest_1samp(gen, 0.0).pvalue)
    # against courier, run j of the trunk pairs with courier's run j at each of its seeds
    cm = minus_cell(df, "B", "courier", "generic", "cluster_id", "dnn", "all", "auc", "A")
    d = [100 * (truth[("courier", e, j)] / base[j] - 1) - gen[j] for e in (0, 1) for j in range(3)]
    assert cm.n == 6 and cm.mean == pytest.approx(np.mean(d))


def test_a_trained_method_never_borrows_another_settings_rows():
    """A rival pre-trained in the shared setting is not that rival in another
    setting (its encoder saw other rows): no row, no cell."""
    rng = np.random.default_rng(2)
    recs, base, truth = _fits(rng)
    moved = [{**r, "setting": "A"} if r["method"] == "simclr" else r for r in recs]
    df = fits_frame(moved)
    assert lift_runs(df, "B", "simclr", "cluster_id", "dnn", "all", "auc", "A") == {}
    assert lift_cell(df, "B", "simclr", "cluster_id", "dnn", "all", "auc", "A").n == 0
    assert minus_cell(df, "B", "courier", "simclr", "cluster_id", "dnn", "all", "auc", "A").n == 0
    # the baseline and the untrained methods are shared from the first setting
    assert len(lift_runs(df, "B", "generic", "cluster_id", "dnn", "all", "auc", "A")) == 3
    assert len(lift_runs(df, "A", "simclr", "cluster_id", "dnn", "all", "auc", "A")) == 6

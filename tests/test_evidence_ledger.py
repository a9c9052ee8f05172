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
    """Baseline runs 0..2, courier and simclr at seeds 0..1, generic seedless (-1), all in setting B."""
    recs, truth = [], {}
    base = {j: 0.70 + 0.01 * rng.random() for j in range(3)}
    for j, v in base.items():
        recs.append({"setting": "B", "method": "baseline", "way": "none", "model_kind": "dnn", "encoder_seed": None,
                     "run": j, "scope": "all", "auc": v, "gauc": v})
    for m, e_list in (("courier", [0, 1]), ("simclr", [0, 1]), ("generic", [-1])):
        for e in e_list:
            for j in range(3):
                v = 0.72 + 0.01 * rng.random()
                truth[(m, e, j)] = v
                recs.append({"setting": "B", "method": m, "way": "cluster_id",
                             "model_kind": "dnn", "encoder_seed": e, "run": j, "scope": "all", "auc": v, "gauc": v})
    return recs, base, truth


def test_lifts_pair_with_the_baseline_run_and_seedless_methods_serve_every_seed():
    rng = np.random.default_rng(0)
    recs, base, truth = _fits(rng)
    df = fits_frame(recs)
    got = lift_runs(df, "B", "courier", "cluster_id", "dnn", "all", "auc", [0, 1])
    want = {(e, j): 100 * (truth[("courier", e, j)] / base[j] - 1) for e in (0, 1) for j in range(3)}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k]) for k in want)
    gen = lift_runs(df, "B", "generic", "cluster_id", "dnn", "all", "auc", [0, 1])
    assert set(gen) == set(want)   # the trunk's three runs, paired with each encoder seed
    cell = minus_cell(df, "B", "courier", "simclr", "cluster_id", "dnn", "all", "auc")
    a = [want[k] for k in sorted(want)]
    b = [100 * (truth[("simclr", e, j)] / base[j] - 1) for e, j in sorted(want)]
    assert cell.n == 6 and cell.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert cell.p == pytest.approx(ttest_rel(a, b).pvalue)


def test_a_seedless_method_counts_its_runs_once_and_pairs_with_every_seed():
    rng = np.random.default_rng(1)
    recs, base, truth = _fits(rng)
    df = fits_frame(recs)
    gen = [100 * (truth[("generic", -1, j)] / base[j] - 1) for j in range(3)]
    cell = lift_cell(df, "B", "generic", "cluster_id", "dnn", "all", "auc")
    # three independent runs, not the same three repeated per encoder seed
    assert cell.n == 3 and cell.mean == pytest.approx(np.mean(gen))
    from scipy.stats import ttest_1samp
    assert cell.p == pytest.approx(ttest_1samp(gen, 0.0).pvalue)
    # against courier, run j of the trunk pairs with courier's run j at each of its seeds
    cm = minus_cell(df, "B", "courier", "generic", "cluster_id", "dnn", "all", "auc")
    d = [100 * (truth[("courier", e, j)] / base[j] - 1) - gen[j] for e in (0, 1) for j in range(3)]
    assert cm.n == 6 and cm.mean == pytest.approx(np.mean(d))


def test_a_table_reads_only_its_own_settings_rows():
    """A rival pre-trained in another setting is not that rival here (its encoder
    saw other rows), and even a setting-free method's scopes follow the setting's
    categories: rows scored for setting A never fill a cell of setting B."""
    rng = np.random.default_rng(2)
    recs, base, truth = _fits(rng)
    moved = [{**r, "setting": "A"} if r["method"] in ("simclr", "generic") else r for r in recs]
    df = fits_frame(moved)
    for m in ("simclr", "generic"):
        assert lift_runs(df, "B", m, "cluster_id", "dnn", "all", "auc") == {}
        assert lift_cell(df, "B", m, "cluster_id", "dnn", "all", "auc").n == 0
        assert minus_cell(df, "B", "courier", m, "cluster_id", "dnn", "all", "auc").n == 0
    # and the baseline of B is B's own: without it no lift at all
    no_base = fits_frame([{**r, "setting": "A"} if r["method"] == "baseline" else r for r in recs])
    assert lift_runs(no_base, "B", "courier", "cluster_id", "dnn", "all", "auc") == {}


def test_setting_free_fits_are_owed_to_every_setting():
    """A setting-free method (and the baseline) fitted for the first setting only
    still owes the other settings' rows: one fit scores them all."""
    import bench_evidence as b
    settings = list(b.PLAN["settings"])
    first, other = settings[0], settings[1]
    runs = range(len(b.PLAN["kmeans_seeds"]))
    done = {(first, "generic", w, k, -1, j) for w in b.PLAN["ways"] for k in b.PLAN["model_kinds"] for j in runs}
    done |= {(first, "baseline", "none", k, None, j) for k in b.PLAN["model_kinds"] for j in runs}
    need = b.needed_fits(first, 0, "generic", done)
    assert len(need) == len(b.PLAN["ways"]) * len(b.PLAN["model_kinds"]) * len(runs)
    assert all(lack == [other] for *_, lack in need)
    assert all(lack == [other] for *_, lack in b.baseline_needed(done))
    # a trained method owes only its own setting
    assert all(lack == [other] for *_, lack in b.needed_fits(other, 0, "courier", done))
    assert b.fit_setting(other, "generic") == first and b.fit_setting(other, "courier") == other

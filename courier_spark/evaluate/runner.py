"""Train every (variant, model kind, seed), score the test split, summarise.

Lifts are measured against the baseline variant on the *same* test rows
(checked by event_id): ``lift_*_pct = 100 * (metric / baseline_metric - 1)``
(relative %), ``auc_delta`` = absolute AUC difference. ``real`` comes from
*paired* differences: run i of a variant minus run i of the baseline (same
CTR seed), real when their paired t-test gives p < alpha. A variant's frames may differ
per run (``SeedFrames``): the evaluate stage re-clusters each method's
embeddings with another k-means seed for every run after the first, so the
spread that decides "real" includes k-means noise, not only CTR-model seeds.
Test rows flagged ``new_item`` (items first shown on the test day) also get
their own AUC (``auc_new_items``) and lift.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from courier_spark.core import fs
from courier_spark.core.logs import say
from courier_spark.core.schema import IMAGE_FEATURES, EvaluateConfig
from courier_spark.evaluate.frames import check_ctr_frame
from courier_spark.evaluate.metrics import auc, gauc, is_real_difference, per_category_auc, per_category_lift, summarize_seeds

PREDICTION_COLUMNS = ["variant", "model_kind", "event_id", "request_id", "session_id", "category",
                      "label", "score"]
_METRICS = ("auc", "gauc", "gauc_session", "auc_new_items")
REAL_RULE = ("real = two-sided paired t-test (scipy.stats.ttest_rel) p < {alpha}, d = variant run i - baseline "
             "run i (same CTR seed; cluster IDs of run i > 0 from another k-means seed when "
             "evaluate.vary_kmeans_seed); p_<metric> columns hold the p-values")
LIFT_DEFINITION = "lift_<metric>_pct = 100 * (variant / baseline - 1) (relative %); auc_delta = variant - baseline"


def _train_and_score(kind: str, train_df: pd.DataFrame, test_df: pd.DataFrame, image_feature: str,
                     seed: int, cfg: EvaluateConfig, tag: str,
                     items: pd.DataFrame | None = None) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    if kind == "dnn":
        from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn   # torch is imported only when needed
        scores = score_dnn(train_dnn(train_df, image_feature, cfg.dnn, seed, log_prefix=tag, items=items), test_df)
    elif kind == "lgbm":
        from courier_spark.evaluate.lgbm import score_lgbm, train_lgbm
        scores = score_lgbm(train_lgbm(train_df, image_feature, seed, cfg.lgbm, items=items), test_df)
    else:
        raise ValueError(f"unknown model kind {kind!r} (expected dnn or lgbm)")
    return scores, time.perf_counter() - t0


def _quiet_fit_process() -> None:
    """A fit process prints nothing of its own: the driver says one line per fit."""
    import logging
    logging.getLogger("courier").setLevel(logging.WARNING)


def _fit_from_files(kind: str, train_path: str, test_path: str, image_feature: str, seed: int,
                    cfg: EvaluateConfig, tag: str, items: pd.DataFrame | None) -> tuple[np.ndarray, float]:
    """``_train_and_score`` in a fit process, on frames the driver wrote as Arrow files."""
    import pyarrow.feather as feather
    return _train_and_score(kind, feather.read_feather(train_path), feather.read_feather(test_path),
                            image_feature, seed, cfg, tag, items)


class _FrameFiles:
    """Each distinct frame handed to the fit processes is written once as an
    uncompressed Arrow file (53k CTR rows: 0.4 s) and read by every fit that
    uses it (0.05 s). Pickling the same frame for each fit cost the driver
    about 4 s a fit (its list columns) on the cores the fits run on. A file
    goes when the last fit that reads it is done."""

    def __init__(self) -> None:
        import tempfile
        self.dir = tempfile.TemporaryDirectory(prefix="courier-fit-frames-")
        self.paths: dict[int, tuple[pd.DataFrame, str]] = {}   # id(frame) -> (frame kept alive, file)
        self.users: dict[str, int] = {}

    def path(self, frame: pd.DataFrame) -> str:
        import pyarrow.feather as feather
        key = id(frame)
        if key not in self.paths:
            path = os.path.join(self.dir.name, f"frame-{len(self.users)}.arrow")
            feather.write_feather(frame.reset_index(drop=True), path, compression="uncompressed")
            self.paths[key] = (frame, path)
            self.users[path] = 0
        path = self.paths[key][1]
        self.users[path] += 1
        return path

    def done(self, path: str) -> None:
        self.users[path] -= 1
        if not self.users[path]:
            os.remove(path)
            self.paths = {k: v for k, v in self.paths.items() if v[1] != path}

    def close(self) -> None:
        self.dir.cleanup()


def _parallel_fits(fits, workers: int, cfg: EvaluateConfig, items: pd.DataFrame | None, record) -> None:
    """Run the ``fits`` in ``workers`` spawned processes, at most two per worker
    in flight (frames are built as they are reached, and written once for all
    fits that use them: ``_FrameFiles``), and ``record`` each in the order
    given, so results do not depend on which process finished first.
    Spawned, not forked: the driver holds a JVM gateway and OpenMP state."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    pending: deque = deque()
    files = _FrameFiles()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_fit_process) as pool:
            def drain(keep: int) -> None:
                while len(pending) > keep:
                    (name, feat, kind, seed, n_train, test, used), fut = pending.popleft()
                    scores, secs = fut.result()
                    for path in used:
                        files.done(path)
                    record(name, feat, kind, seed, n_train, test, scores, secs)

            for name, feat, kind, seed, train_df, test_df in fits:
                used = (files.path(train_df), files.path(test_df))
                fut = pool.submit(_fit_from_files, kind, *used, feat, seed, cfg, name, items)
                pending.append(((name, feat, kind, seed, len(train_df), test_df, used), fut))
                drain(2 * workers)
            drain(0)
    finally:
        files.close()


def _pick_baseline(variants: Sequence[tuple[str, str]], wanted: str) -> str | None:
    names = [n for n, _ in variants]
    if wanted in names:
        return wanted
    return next((n for n, f in variants if f == "none"), None)


FramePair = tuple[pd.DataFrame, pd.DataFrame]
# A variant's (train, test) for run i (the i-th seed): the same pair for every
# run, or a function of the run index (built when needed, then dropped).
SeedFrames = Callable[[int], FramePair]


def _frames_for(frames: Mapping[str, Union[FramePair, SeedFrames]], name: str, i: int) -> FramePair:
    f = frames[name]
    return f(i) if callable(f) else f


def evaluate_variants(frames: Mapping[str, Union[FramePair, SeedFrames]],
                      variants: Sequence[tuple[str, str]],
                      model_kinds: Sequence[str] | None = None,
                      seeds: Sequence[int] | None = None,
                      cfg: EvaluateConfig | None = None,
                      items: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate ``variants`` [(name, image_feature)] on ``frames[name] = (train, test)``
    (or a ``SeedFrames`` function: run i's pair).

    ``model_kinds``/``seeds`` default to ``cfg.model_kinds``/``cfg.seeds``
    (("dnn", "lgbm"), (0, 1, 2)). Returns ``(results, predictions)``: one
    results row per (variant, model_kind) with seed mean/std of AUC, GAUC by
    request_id and by session_id, lifts over the baseline and whether they are
    real; predictions of the first seed (``PREDICTION_COLUMNS``). ``items``:
    the item table (item_id, category, title) of the whole catalogue for the
    history items' attributes; None = each train frame's own items.
    """
    cfg = cfg or EvaluateConfig()
    model_kinds = list(model_kinds if model_kinds is not None else cfg.model_kinds)
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.seeds)]
    if not variants or not seeds or not model_kinds:
        raise ValueError("evaluate_variants needs at least one variant, one seed and one model kind")
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names in {names}")
    for name, feat in variants:
        if feat not in IMAGE_FEATURES:
            raise ValueError(f"variant {name!r}: image_feature must be one of {IMAGE_FEATURES}, got {feat!r}")
        if name not in frames:
            raise KeyError(f"variant {name!r} has no frames (frames has {sorted(frames)})")
        if callable(frames[name]):
            continue  # checked per run, when built
        check_ctr_frame(frames[name][0], feat, f"{name} train frame")
        check_ctr_frame(frames[name][1], feat, f"{name} test frame")
        for col in ("request_id", "session_id"):
            if col not in frames[name][1].columns:
                raise KeyError(f"{name} test frame: missing column {col!r} (needed for GAUC)")
    base = _pick_baseline(variants, cfg.baseline)
    ref = None
    if base is not None and "event_id" in _frames_for(frames, base, 0)[1].columns:
        ref = set(_frames_for(frames, base, 0)[1]["event_id"])
        for name, _ in variants:
            if callable(frames[name]):
                continue
            other = frames[name][1]
            if "event_id" not in other.columns or set(other["event_id"]) != ref:
                raise ValueError(f"variant {name!r}: its test rows differ from the baseline's ({base!r}); "
                                 "lifts are only meaningful on the same test impressions")

    t_all = time.perf_counter()
    runs, preds = [], []

    def record(name: str, feat: str, kind: str, seed: int, n_train: int, test: pd.DataFrame,
               scores: np.ndarray, secs: float) -> None:
        y = pd.to_numeric(test["label"]).to_numpy(np.int64)
        new = test["new_item"].to_numpy(bool) if "new_item" in test.columns else None
        row = {"variant": name, "image_feature": feat, "model_kind": kind, "seed": seed,
               "train_seconds": secs, "n_train": n_train, "n_test": len(test),
               "auc": auc(y, scores),
               "auc_new_items": auc(y[new], scores[new]) if new is not None
               and len(np.unique(y[new])) == 2 else float("nan")}
        for metric, col in (("gauc", "request_id"), ("gauc_session", "session_id")):
            g = gauc(y, scores, test[col], cfg.gauc_weighting)
            row[metric], row[f"{metric}_groups"] = g.value, g.n_groups_used
        runs.append(row)
        say("evaluate", f"{name} / {kind} / seed {seed}: auc {row['auc']:.4f} gauc {row['gauc']:.4f} "
                        f"gauc_session {row['gauc_session']:.4f} ({secs:.1f}s, total "
                        f"{time.perf_counter() - t_all:.0f}s)")
        if seed == seeds[0]:
            p = pd.DataFrame({c: test[c].to_numpy() if c in test.columns else None
                              for c in PREDICTION_COLUMNS[2:-2]})
            p.insert(0, "model_kind", kind)
            p.insert(0, "variant", name)
            p["label"] = y
            p["score"] = scores
            preds.append(p)

    def fits():   # (name, feat, kind, seed, train, test) in a fixed order; frames built when reached
        for name, feat in variants:
            for i, seed in enumerate(seeds):
                if callable(frames[name]) or i == 0:
                    train_df, test_df = _frames_for(frames, name, i)
                    if callable(frames[name]):
                        check_ctr_frame(train_df, feat, f"{name} train frame (run {i})")
                        check_ctr_frame(test_df, feat, f"{name} test frame (run {i})")
                        if ref is not None and set(test_df["event_id"]) != ref:
                            raise ValueError(f"variant {name!r} run {i}: its test rows differ from the baseline's")
                for kind in model_kinds:
                    yield name, feat, kind, seed, train_df, test_df

    workers = cfg.parallel_fits or (os.cpu_count() or 1)
    n_fits = len(variants) * len(seeds) * len(model_kinds)
    if workers <= 1 or n_fits <= 1:
        for name, feat, kind, seed, train_df, test_df in fits():
            scores, secs = _train_and_score(kind, train_df, test_df, feat, seed, cfg, name, items)
            record(name, feat, kind, seed, len(train_df), test_df, scores, secs)
    else:
        _parallel_fits(fits(), workers, cfg, items, record)
    runs_df = pd.DataFrame(runs)
    results = summarize_runs(runs_df, base, cfg.alpha, cfg.gauc_weighting)
    results.attrs.update({"baseline": base, "alpha": cfg.alpha, "gauc_weighting": cfg.gauc_weighting,
                          "seeds": seeds, "prediction_seed": seeds[0], "main_model": cfg.main_model})
    predictions = pd.concat(preds, ignore_index=True)[PREDICTION_COLUMNS]
    return results, predictions


def summarize_runs(runs: pd.DataFrame, baseline: str | None, alpha: float = 0.05,
                   gauc_weighting: str = "impressions") -> pd.DataFrame:
    """Per-seed run rows -> one row per (variant, model_kind) with mean/std, lifts and ``real``."""
    out = []
    for (name, kind), part in runs.groupby(["variant", "model_kind"], sort=False):
        part = part.sort_values("seed")
        row: dict = {"variant": name, "image_feature": part["image_feature"].iloc[0], "model_kind": kind,
                     "is_baseline": name == baseline, "n_seeds": len(part),
                     "n_train": int(part["n_train"].iloc[0]), "n_test": int(part["n_test"].iloc[0])}
        for m in _METRICS:
            s = summarize_seeds(part[m].tolist())
            row[m], row[f"{m}_std"], row[f"{m}_seeds"] = s.mean, s.std, part[m].tolist()
        row["gauc_groups"] = int(part["gauc_groups"].iloc[0])
        row["gauc_session_groups"] = int(part["gauc_session_groups"].iloc[0])
        row["train_seconds"] = float(part["train_seconds"].mean())
        out.append(row)
    res = pd.DataFrame(out)
    for m in _METRICS:
        res[f"lift_{m}_pct"] = np.nan
        res[f"real_{m}"] = False
        res[f"p_{m}"] = np.nan
    res["auc_delta"] = np.nan
    if baseline is not None:
        for i, r in res.iterrows():
            b = res[(res["variant"] == baseline) & (res["model_kind"] == r["model_kind"])]
            if b.empty:
                continue
            b = b.iloc[0]
            res.at[i, "auc_delta"] = r["auc"] - b["auc"]
            for m in _METRICS:
                res.at[i, f"lift_{m}_pct"] = 100.0 * (r[m] / b[m] - 1.0)
                if r["is_baseline"]:
                    continue
                p_value, real = _paired_test(r[f"{m}_seeds"], b[f"{m}_seeds"], alpha)
                res.at[i, f"real_{m}"], res.at[i, f"p_{m}"] = real, p_value
    res = res.rename(columns={"real_auc": "real"})
    res["gauc_weighting"] = gauc_weighting
    return res


def _paired_test(variant: list, baseline: list, alpha: float) -> tuple[float, bool]:
    """(p, real) of the paired t-test of variant[i] - baseline[i] (runs paired by
    seed); unpaired run lists: Welch's test, p not reported (NaN)."""
    from courier_spark.evaluate.cluster_variants import paired_difference
    if len(variant) != len(baseline):
        return float("nan"), is_real_difference(variant, baseline, alpha)
    d = paired_difference(variant, baseline, alpha)
    return d.p_value, d.real


def seen_categories(model_versions: pd.Series, categories: pd.Series,
                    pretrained_on: Mapping[str, "set[str] | None"]) -> pd.Series:
    """Per row: was the row's encoder pre-trained on page views of the row's
    category? ``pretrained_on``: model version -> its pre-training categories
    (None = every category; empty = none, e.g. the generic trunk). None where
    the row has no model (the baseline)."""
    out = []
    for mv, cat in zip(model_versions, categories):
        if not isinstance(mv, str):
            out.append(None)
        else:
            cats = pretrained_on[mv]
            out.append(True if cats is None else cat in cats)
    return pd.Series(out, index=model_versions.index, dtype=object)


def per_category_results(predictions: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """Per (model_kind, variant, category) AUC from the predictions, with lift
    over ``baseline`` and (when the predictions have it) ``seen``: whether the
    variant's encoder was pre-trained on the category."""
    out = per_category_lift(per_category_auc(predictions), baseline)
    if "seen" in predictions.columns:
        seen = (predictions[["variant", "category", "seen"]].dropna(subset=["seen"])
                .drop_duplicates(["variant", "category"]))
        out = out.merge(seen, on=["variant", "category"], how="left")
        out.insert(out.columns.get_loc("category") + 1, "seen", out.pop("seen"))
    return out


def _clean(v: object) -> object:
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_clean(x) for x in v]
    return v


_JSON_KEYS = ["image_feature", "n_seeds", "n_train", "n_test",
              "auc", "auc_std", "gauc", "gauc_std", "gauc_session", "gauc_session_std",
              "gauc_weighting", "gauc_groups", "gauc_session_groups",
              "lift_auc_pct", "lift_gauc_pct", "lift_gauc_session_pct", "auc_delta",
              "auc_new_items", "auc_new_items_std", "lift_auc_new_items_pct", "real_auc_new_items",
              "real", "real_gauc", "real_gauc_session", "auc_seeds", "gauc_seeds", "gauc_session_seeds",
              "train_seconds"]


def metrics_dict(results: pd.DataFrame, main_model: str | None = None) -> dict:
    """``{"variants": {NAME: {...}}}`` for the main model (DNN unless absent),
    plus one sibling dict per other model kind, e.g. ``{"lgbm": {"variants": ...}}``."""
    kinds = list(dict.fromkeys(results["model_kind"]))
    main = main_model or results.attrs.get("main_model", "dnn")
    if main not in kinds:
        main = kinds[0]

    def block(kind: str) -> dict:
        part = results[results["model_kind"] == kind]
        return {r["variant"]: {k: _clean(r[k]) for k in _JSON_KEYS if k in r.index}
                for _, r in part.iterrows()}

    out: dict = {"main_model": main, "baseline": results.attrs.get("baseline"),
                 "gauc_weighting": results.attrs.get("gauc_weighting",
                                                     _clean(results["gauc_weighting"].iloc[0])),
                 "seeds": results.attrs.get("seeds"),
                 "real_rule": REAL_RULE.format(alpha=results.attrs.get("alpha", 0.05)),
                 "lift_definition": LIFT_DEFINITION,
                 "variants": block(main)}
    for kind in kinds:
        if kind != main:
            out[kind] = {"variants": block(kind)}
    return out


def write_metrics_json(path: str, results: pd.DataFrame, main_model: str | None = None) -> str:
    """Write ``metrics_dict(results)`` as JSON to ``path`` (any filesystem URI, atomically)."""
    fs.write_json(path, metrics_dict(results, main_model))
    return path


BASELINE = "baseline"
WAYS_ORDER = ("cluster_id", "simscore", "vector")


def variant_plan(methods: list[str], all_ways_methods: list[str]) -> list[tuple[str, str, str | None]]:
    """(variant name, image feature, method) triples: the baseline, then every
    method at cluster_id and the all-ways methods also at simscore and vector."""
    plan: list[tuple[str, str, str | None]] = [(BASELINE, "none", None)]
    for m in methods:
        for way in (WAYS_ORDER if m in all_ways_methods else ("cluster_id",)):
            plan.append((f"{m}_{way}", way, m))
    return plan

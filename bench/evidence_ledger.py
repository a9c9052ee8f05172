"""The evidence bench's ledger: one JSON line per fit (and per trained model)
in ``bench/results/evidence_ledger.jsonl``, and the tables of
``docs/evidence.md`` computed from it alone (``bench_evidence.py tables``).

A fit line: setting, world, pretrain_categories, method, model_version, way
(cluster_id | simscore | none for the baseline), model_kind (dnn | lgbm),
encoder_seed, run (index of the k-means seed and the CTR seed), kmeans_seed,
ctr_seed, scope (all | seen | unseen_visual | low_visual), auc, gauc, rows,
commit, bench_version, seconds. A model line has ``"record": "model"``.

Pairing: a method's run (encoder seed e, run j) is compared with the
baseline's run j (same CTR seed) as a relative lift in %, and with another
method's run (e, j); methods that have no encoder seed (``generic``: the
trunk is one model per world) pair their run j with every e. Setting-free
methods (the baseline and the untrained ones: the same model and frames in
every setting) fit once, and each fit is scored for every setting's scopes
and written under each setting: a table reads its own setting's rows only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

SCOPES = ("all", "seen", "unseen_visual", "low_visual")
# Methods whose model and frames are the same in every setting (no pre-training
# rows): one fit serves every setting, scored for each setting's scopes.
SETTING_FREE_METHODS = ("baseline", "generic", "random_init")
FIT_KEY = ("setting", "method", "way", "model_kind", "encoder_seed", "run")


def read_ledger(path: str | Path) -> list[dict]:
    """Every line of the ledger (a torn last line, from a killed writer, is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_lines(path: str | Path, records: Iterable[dict]) -> None:
    """Append records, one JSON line each, flushed at once (a crash loses at most the fit under way)."""
    with open(path, "a") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        fh.flush()


def fit_key(r: dict) -> tuple:
    return tuple(r.get(k) for k in FIT_KEY)


def done_fits(records: list[dict]) -> set[tuple]:
    return {fit_key(r) for r in records if r.get("record", "fit") == "fit"}


def scope_masks(categories: pd.Series, seen: list[str] | None, visual: list[str]) -> dict[str, np.ndarray]:
    """Rows of each scope: ``seen`` = a pre-training category (every category
    when ``seen`` is empty or None: pre-training on all), ``unseen_visual`` =
    a visual category not pre-trained on, ``low_visual`` = the rest."""
    cat = categories.astype(str).to_numpy()
    is_visual = np.isin(cat, list(visual))
    is_seen = np.ones(len(cat), bool) if not seen else np.isin(cat, list(seen))
    return {"all": np.ones(len(cat), bool), "seen": is_seen,
            "unseen_visual": is_visual & ~is_seen, "low_visual": ~is_visual & ~is_seen}


@dataclass
class Cell:
    """Paired runs of one comparison: mean and sd of the differences, n and the t-test's p."""
    mean: float
    sd: float
    n: int
    p: float

    def fmt(self, bold_if_real: bool = True) -> str:
        if self.n == 0 or not np.isfinite(self.mean):
            return "–"
        p = "p < 0.001" if self.p < 0.001 else f"p {self.p:.3f}" if np.isfinite(self.p) else "p –"
        s = f"{self.mean:+.2f} ± {self.sd:.2f} ({p}, n {self.n})" if np.isfinite(self.sd) else f"{self.mean:+.2f} (n 1)"
        return f"**{s}**" if bold_if_real and np.isfinite(self.p) and self.p < 0.05 else s


def _cell(d: np.ndarray) -> Cell:
    from scipy.stats import ttest_1samp
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Cell(float("nan"), float("nan"), 0, float("nan"))
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    if d.size < 2:
        p = float("nan")
    elif np.ptp(d) == 0:
        p = 0.0 if d[0] != 0 else 1.0
    else:
        p = float(ttest_1samp(d, 0.0).pvalue)
    return Cell(float(d.mean()), sd, int(d.size), p)


def fits_frame(records: list[dict]) -> pd.DataFrame:
    rows = [r for r in records if r.get("record", "fit") == "fit"]
    cols = [*FIT_KEY, "scope", "auc", "gauc", "rows"]
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)


def _runs(df: pd.DataFrame, setting: str, method: str, way: str, kind: str, scope: str,
          metric: str) -> dict[tuple, float]:
    """{(encoder_seed, run): value} of one method's fits scored for ``setting``
    (never another setting's rows: a trained encoder saw that setting's
    pre-training rows, and every method's scopes follow its categories)."""
    sel = df[(df["method"] == method) & (df["way"] == way) & (df["model_kind"] == kind) & (df["scope"] == scope)
             & (df["setting"] == setting)]
    return {(r.encoder_seed, int(r.run)): float(getattr(r, metric)) for r in sel.itertuples()}


def _seedless(runs: dict[tuple, float]) -> bool:
    return bool(runs) and all(e is None or pd.isna(e) or e == -1 for e, _ in runs)


def lift_runs(df: pd.DataFrame, setting: str, method: str, way: str, kind: str, scope: str, metric: str,
              seeds: list[int] | None = None) -> dict[tuple, float]:
    """{(encoder seed, run): % lift over the baseline's run at the same CTR seed}.
    ``seeds``: a seedless method's runs repeated under each of these encoder
    seeds, to pair with a seeded method's runs (never to count as more runs)."""
    base = {j: v for (_, j), v in _runs(df, setting, "baseline", "none", kind, scope, metric).items()}
    own = _runs(df, setting, method, way, kind, scope, metric)
    if seeds is not None and _seedless(own):
        own = {(e, j): v for (_, j), v in own.items() for e in seeds}
    return {(e, j): 100.0 * (v / base[j] - 1.0) for (e, j), v in own.items() if j in base and base[j] > 0}


def lift_cell(df, setting, method, way, kind, scope, metric) -> Cell:
    """A method's lift over the baseline: one value per run it has (a seedless method's runs once)."""
    return _cell(np.array(list(lift_runs(df, setting, method, way, kind, scope, metric).values()), float))


def minus_cell(df, setting, a, b, way, kind, scope, metric) -> Cell:
    """COURIER minus a rival: paired over the (encoder seed, run) both have; a
    seedless side's run j pairs with the other side's run j at each of its seeds."""
    la = lift_runs(df, setting, a, way, kind, scope, metric)
    lb = lift_runs(df, setting, b, way, kind, scope, metric)
    if _seedless(lb) and not _seedless(la):
        lb = lift_runs(df, setting, b, way, kind, scope, metric, sorted({e for e, _ in la}))
    elif _seedless(la) and not _seedless(lb):
        la = lift_runs(df, setting, a, way, kind, scope, metric, sorted({e for e, _ in lb}))
    keys = sorted(set(la) & set(lb), key=str)
    return _cell(np.array([la[k] - lb[k] for k in keys], float))


def md(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _col(kind: str, metric: str, scope: str, scopes: list[str]) -> str:
    return f"{kind} {metric.upper()}" + (f" · {scope}" if len(scopes) > 1 else "")


def _table(first: str, names: list[str], scopes: list[str], cell) -> str:
    """Rows: ``names``; columns: (model kind, metric) per scope; ``cell(name, kind, scope, metric) -> Cell``."""
    head = [first] + [_col(k, m, s, scopes) for s in scopes for k in ("DNN", "LightGBM") for m in ("auc", "gauc")]
    rows = [[n] + [cell(n, kind, s, metric).fmt() for s in scopes for kind in ("dnn", "lgbm")
                   for metric in ("auc", "gauc")] for n in names]
    return md(rows, head)


def lift_table(df: pd.DataFrame, setting: str, methods: list[str], way: str, scopes: list[str]) -> str:
    """Each method's lift over the baseline in %."""
    return _table("method", methods, scopes, lambda m, kind, s, metric: lift_cell(
        df, setting, m, way, kind, s, metric))


def minus_table(df: pd.DataFrame, setting: str, rivals: list[str], way: str, scopes: list[str],
                reference: str = "courier") -> str:
    """``reference`` minus each rival, in lift points, paired."""
    return _table("rival", rivals, scopes, lambda r, kind, s, metric: minus_cell(
        df, setting, reference, r, way, kind, s, metric))


def coverage(df: pd.DataFrame, setting: str, methods: list[str], way: str) -> str:
    """Which encoder seeds and runs each method has in the ledger (DNN, scope all)."""
    parts = []
    for m in methods:
        got = _runs(df, setting, m, way, "dnn", "all", "auc")
        seeds = sorted({"–" if e is None or pd.isna(e) or e == -1 else str(int(e)) for e, _ in got})
        parts.append(f"{m} {len(got)} runs (seeds {', '.join(seeds) or 'none'})")
    return "; ".join(parts)

"""Markdown report with tables and PNG plots (matplotlib, Agg backend).

Variant names are read as ``<method>_<way>`` where ``<way>`` is one of the
image-feature ways (``vector``, ``simscore``, ``cluster_id``), e.g.
``courier_cluster_id`` -> method ``courier``, way ``cluster_id``; the
baseline has no way. Tables:

* lift per method (paper table-5 style): each method at its Cluster-ID
  variant (the paper's main way; else its best way), main model;
* ablations: methods named ``courier_<something>`` (e.g. ``courier_wo_negpv``);
* Vector / SimScore / Cluster-ID comparison: method x way lift, per model kind;
* all runs (every variant and model kind with seed std);
* per-category lift, and any ``extra_tables`` passed in.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from courier_spark.core import fs
from courier_spark.core.errors import MissingArtifactError

WAYS = ("cluster_id", "simscore", "vector")
_WAY_TITLE = {"vector": "Vector", "simscore": "SimScore", "cluster_id": "Cluster ID"}


def split_variant(name: str, image_feature: str | None = None) -> tuple[str, str | None]:
    """``courier_cluster_id`` -> (``courier``, ``cluster_id``); baseline -> (name, None)."""
    for way in WAYS:
        if name.endswith("_" + way):
            return name[: -len(way) - 1], way
    return name, (image_feature if image_feature in WAYS else None)


def _fmt(v: object, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def md_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    if df is None or df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(v, digits).replace("|", "\\|") for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float, digits: int = 4) -> str:
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}" if not (isinstance(std, float) and math.isnan(std)) \
        else _fmt(mean, digits)


def _signed(v: float, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f} %"


def _main_kind(results: pd.DataFrame) -> str:
    kinds = list(dict.fromkeys(results["model_kind"]))
    main = results.attrs.get("main_model", "dnn")
    return main if main in kinds else kinds[0]


def _with_method(results: pd.DataFrame) -> pd.DataFrame:
    r = results.copy()
    parts = [split_variant(v, f) for v, f in zip(r["variant"], r.get("image_feature", [None] * len(r)))]
    r["method"], r["way"] = [p[0] for p in parts], [p[1] for p in parts]
    return r


def lift_per_method_table(results: pd.DataFrame, model_kind: str) -> pd.DataFrame:
    r = _with_method(results[results["model_kind"] == model_kind])
    rows = []
    for method, part in r[~r["is_baseline"]].groupby("method", sort=False):
        pick = part[part["way"] == "cluster_id"]
        if pick.empty:
            pick = part.sort_values("lift_auc_pct", ascending=False)
        x = pick.iloc[0]
        rows.append({"method": method, "way": x["way"] or "-", "AUC": _pm(x["auc"], x["auc_std"]),
                     "AUC lift": _signed(x["lift_auc_pct"]), "p": _p(x.get("p_auc")), "real": bool(x["real"]),
                     "GAUC": _pm(x["gauc"], x["gauc_std"]), "GAUC lift": _signed(x["lift_gauc_pct"]),
                     "GAUC p": _p(x.get("p_gauc")), "GAUC real": bool(x["real_gauc"]),
                     "new-item AUC lift": _signed(x["lift_auc_new_items_pct"])
                     if "lift_auc_new_items_pct" in x.index else "-"})
    return pd.DataFrame(rows)


def ways_table(results: pd.DataFrame) -> pd.DataFrame:
    r = _with_method(results[~results["is_baseline"]])
    rows = []
    for (kind, method), part in r.groupby(["model_kind", "method"], sort=False):
        row = {"model": kind, "method": method}
        for way in WAYS[::-1]:
            x = part[part["way"] == way]
            row[_WAY_TITLE[way]] = ("-" if x.empty else
                                    _signed(x.iloc[0]["lift_auc_pct"]) + (" (real)" if x.iloc[0]["real"] else ""))
        rows.append(row)
    return pd.DataFrame(rows)


def all_runs_table(results: pd.DataFrame) -> pd.DataFrame:
    cols = {"variant": "variant", "model_kind": "model", "n_seeds": "seeds"}
    out = results[list(cols)].rename(columns=cols).copy()
    out["AUC"] = [_pm(m, s) for m, s in zip(results["auc"], results["auc_std"])]
    out["GAUC (request)"] = [_pm(m, s) for m, s in zip(results["gauc"], results["gauc_std"])]
    out["GAUC (session)"] = [_pm(m, s) for m, s in zip(results["gauc_session"], results["gauc_session_std"])]
    out["AUC lift"] = [_signed(v) for v in results["lift_auc_pct"]]
    out["p"] = [_p(v) for v in results["p_auc"]] if "p_auc" in results else "-"
    out["real"] = results["real"].astype(bool).to_numpy()
    return out


def _p(v: object) -> str:
    """A p-value for a table: 3 significant digits, '-' when there is none."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(f) else f"{f:.3g}"


def _plot_category_lift(per_cat: pd.DataFrame, kind: str, baseline: str | None, path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = per_cat
    if "model_kind" in d.columns:
        d = d[d["model_kind"] == kind]
    d = d[(d["variant"] != baseline) & d["lift_auc_pct"].notna()]
    if d.empty:
        return False
    piv = d.pivot_table(index="category", columns="variant", values="lift_auc_pct", aggfunc="mean")
    piv = piv.loc[piv.mean(axis=1).sort_values(ascending=False).index]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(piv) * max(1, piv.shape[1]) / 2 + 3), 4))
    width = 0.8 / max(1, piv.shape[1])
    x = np.arange(len(piv))
    for j, v in enumerate(piv.columns):
        ax.bar(x + (j - (piv.shape[1] - 1) / 2) * width, piv[v].to_numpy(), width, label=v)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [str(c) for c in piv.index], rotation=45, ha="right")
    ax.set_ylabel("AUC lift over baseline (%)")
    ax.set_title(f"Per-category AUC lift ({kind})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)
    return True


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of ``x`` onto their first two principal components (numpy SVD)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embedding map needs a 2-D array, got shape {x.shape}")
    if x.shape[1] == 2:
        return x
    xc = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    out = xc @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _scatter(ax, xy: np.ndarray, values: np.ndarray, title: str) -> None:
    vals = pd.Series(values)
    numeric = pd.api.types.is_numeric_dtype(vals) and vals.nunique() > 20
    if numeric:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals.to_numpy(float), s=6, cmap="viridis", alpha=0.8)
        ax.figure.colorbar(sc, ax=ax, shrink=0.8)
    else:
        import matplotlib.pyplot as plt
        uniq = vals.dropna().unique()
        # Numeric codes sort as numbers (2 before 10), labels as strings.
        cats = sorted(uniq) if pd.api.types.is_numeric_dtype(vals) else sorted(map(str, uniq))
        cmap = plt.get_cmap("tab20", max(len(cats), 1))
        for i, c in enumerate(cats):
            m = (vals == c).to_numpy() if pd.api.types.is_numeric_dtype(vals) else (vals.astype(str) == c).to_numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i), label=c, alpha=0.8)
        if len(cats) <= 20:
            ax.legend(fontsize=6, markerscale=2, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_embedding_map(xy: np.ndarray, category: Sequence, hidden: Sequence | None, path: str,
                        hidden_name: str = "hidden factor") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xy2 = pca_2d(xy)
    n = 2 if hidden is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 5), squeeze=False)
    _scatter(axes[0, 0], xy2, np.asarray(category, dtype=object), "item embeddings by category")
    if hidden is not None:
        _scatter(axes[0, 1], xy2, np.asarray(hidden), f"item embeddings by {hidden_name}")
    fig.tight_layout()
    _save_png(fig, path)


def _plot_health(health: pd.DataFrame, path: str) -> None:
    """Feature health per item_visual version (courier_spark.features.health records):
    distance quantiles and null share, drift of each version change, stream
    freshness p50/p95."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h = health.sort_values("item_visual_version")
    x = h["item_visual_version"].to_numpy()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for q in ("distance_p50", "distance_p90", "distance_p99"):
        ax.plot(x, h[q].to_numpy(dtype=float), marker="o", label=q)
    nulls = (h[["null_cluster_id", "null_distance"]].max(axis=1) / h["rows"].where(h["rows"] > 0)).to_numpy(float)
    ax.plot(x, nulls, marker="x", linestyle="--", label="null share")
    ax.set(title="statistics per write", xlabel="item_visual version")
    ax.legend(fontsize=8)
    d = h[h["drift_psi"].notna()]
    ax = axes[1]
    if len(d):
        labels = [f"{p}->{c}" for p, c in zip(d["prev_centroid_version"], d["centroid_version"])]
        pos = np.arange(len(d))
        ax.bar(pos - 0.2, d["drift_psi"].to_numpy(float), 0.4, label="PSI of cluster shares")
        ax.bar(pos + 0.2, d["drift_changed_share"].to_numpy(float), 0.4, label="share of items changed")
        ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no version change yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="drift per centroid/model version change")
    f = h[h["freshness_p95_s"].notna()]
    ax = axes[2]
    if len(f):
        ax.plot(f["item_visual_version"], f["freshness_p50_s"].to_numpy(float), marker="o", label="p50")
        ax.plot(f["item_visual_version"], f["freshness_p95_s"].to_numpy(float), marker="o", label="p95")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no stream micro-batch yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="stream freshness (s, bronze -> feature row)", xlabel="item_visual version")
    fig.tight_layout()
    _save_png(fig, path)


HEALTH_TABLE_COLUMNS = ["item_visual_version", "source", "centroid_version", "rows", "n_clusters", "distance_p50",
                        "prev_centroid_version", "drift_psi", "drift_changed_share", "freshness_p50_s",
                        "freshness_p95_s"]


def _save_png(fig, path: str) -> None:
    """A matplotlib figure -> PNG at ``path`` (any filesystem URI), atomically."""
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    fs.write_bytes(path, buf.getvalue())


def write_report(reports_dir: str, results: pd.DataFrame, per_category_df: pd.DataFrame | None = None,
                 extra_tables: Mapping[str, pd.DataFrame] | None = None,
                 embedding_map: tuple | None = None,
                 title: str = "COURIER evaluation", health: pd.DataFrame | None = None) -> str:
    """Write ``<reports_dir>/report.md`` (+ PNGs next to it); returns the path.

    ``results``: ``runner.evaluate_variants`` results. ``per_category_df``:
    ``runner.per_category_results`` (or the per_category_auc_lift.sql output).
    ``embedding_map``: (vectors [n, d] or xy [n, 2], category [n], hidden
    factor [n] or None[, its name]); vectors are reduced to 2-D with PCA.
    ``health``: ``courier_spark.features.health.read_health`` records (plotted when given).
    """
    fs.makedirs(reports_dir)
    main = _main_kind(results)
    base = results.attrs.get("baseline") or next(iter(results.loc[results["is_baseline"], "variant"]), None)
    weighting = results["gauc_weighting"].iloc[0] if "gauc_weighting" in results else "impressions"
    alpha = results.attrs.get("alpha", 0.05)
    md = [f"# {title}\n",
          f"Main model: **{main}**. Baseline: **{base}**. Seeds: {results.attrs.get('seeds', '?')}. "
          f"Numbers are mean ± std over seeds on one fixed test split. GAUC = AUC inside each "
          f"request (page) or session, averaged over groups with both a click and a non-click, "
          f"weighted by **{weighting}**. Lift = 100 × (variant / baseline − 1). A difference is "
          f"called *real* when the paired differences (run i of a variant minus run i of the "
          f"baseline, same CTR seed; cluster IDs of run i > 0 from another k-means seed) have "
          f"a two-sided paired t-test (`scipy.stats.ttest_rel`) p < {alpha}; p is the test's p-value "
          f"(training and clustering noise; the test impressions are fixed). New-item AUC: test impressions of items first shown on the test day.\n"]
    md += ["## Lift per method (table-5 style)\n", md_table(lift_per_method_table(results, main))]
    r = _with_method(results[results["model_kind"] == main])
    # courier_shuffled is a control (shuffled histories), not an ablation of the method
    abl = r[r["method"].str.startswith("courier_") & (r["method"] != "courier_shuffled") & ~r["is_baseline"]]
    md.append("## Ablations\n")
    if abl.empty:
        md.append("_No ablation variants (names `courier_<ablation>_<way>`) in this run._\n")
    else:
        md.append(md_table(pd.DataFrame({
            "ablation": abl["method"], "way": abl["way"], "AUC": [_pm(a, s) for a, s in zip(abl["auc"], abl["auc_std"])],
            "AUC lift": [_signed(v) for v in abl["lift_auc_pct"]], "real": abl["real"].astype(bool),
            "GAUC lift": [_signed(v) for v in abl["lift_gauc_pct"]]})))
    md += ["## Vector / SimScore / Cluster ID (AUC lift over baseline)\n", md_table(ways_table(results))]
    md += ["## All runs\n", md_table(all_runs_table(results))]
    if per_category_df is not None and not per_category_df.empty:
        md.append("## Per-category AUC lift\n")
        if _plot_category_lift(per_category_df, main, base, fs.join(reports_dir, "per_category_lift.png")):
            md.append("![per-category lift](per_category_lift.png)\n")
        pc = per_category_df
        if "model_kind" in pc.columns:
            pc = pc[pc["model_kind"] == main]
        pc = pc[pc["variant"] != base]
        keep = [c for c in ("variant", "category", "seen", "impressions", "n", "clicks", "n_pos", "auc", "baseline_auc",
                            "lift_auc_pct") if c in pc.columns]
        md.append(md_table(pc[keep]))
    if embedding_map is not None:
        xy, cats, hidden = embedding_map[:3]
        hidden_name = embedding_map[3] if len(embedding_map) > 3 else "hidden factor"
        _plot_embedding_map(np.asarray(xy), cats, hidden, fs.join(reports_dir, "embedding_map.png"),
                            hidden_name)
        md += ["## Embedding map (PCA)\n", "![embedding map](embedding_map.png)\n"]
    if health is not None and len(health):
        _plot_health(health, fs.join(reports_dir, "feature_health.png"))
        md += ["## Feature health (feature_store/item_visual, `courier health`)\n",
               "![feature health](feature_health.png)\n",
               md_table(health[[c for c in HEALTH_TABLE_COLUMNS if c in health.columns]])]
    for name, table in (extra_tables or {}).items():
        md += [f"## {name}\n", md_table(table)]
    path = fs.join(reports_dir, "report.md")
    fs.write_text(path, "\n".join(md))
    return path


def load_results(path: str) -> pd.DataFrame:
    """The evaluate stage's results.json back as the runner's results frame."""
    if not fs.exists(path):
        raise MissingArtifactError(f"{path} not found; run `courier evaluate` first")
    data = fs.read_json(path)
    res = pd.DataFrame(data["rows"])
    res.attrs.update(data["attrs"])
    res.attrs["versions"] = data.get("versions", {})
    return res

"""The CTR-frame contract the evaluation layer consumes, and a toy generator.

A CTR frame (pandas, one row per impression) has the columns in
``BASE_COLUMNS`` plus the image-feature columns of its variant
(``IMAGE_COLUMNS[image_feature]``):

* ``vector``:     ``target_embedding`` float32[d], zeros when the item has no embedding
* ``simscore``:   ``sim_scores`` float32[K], NaN for a missing slot; slot 0 = most recent click
* ``cluster_id``: ``target_cluster_id`` int (-1 missing), ``hist_cluster_ids`` int64[K] (-1 missing)
* ``none``:       nothing (baseline)

The models also take an optional item table (``ITEM_COLUMNS``: item_id,
category, title; one row per item of the whole catalogue) to look up the
attributes of the history items; ``item_table`` normalises it and, without
one, falls back to the items the frame itself shows.

``make_toy_ctr_frames`` builds such frames with a *known* visual click
signal: every item has a hidden style, every user likes two styles, and the
click logit contains ``signal_strength * liked(style)``. Embeddings cluster by
style, so cluster ids and similarity scores carry the signal while item ids,
categories, titles and prices do not reveal the style directly.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import pandas as pd

from courier_spark.core.schema import IMAGE_FEATURES

BASE_COLUMNS = ("event_id", "request_id", "session_id", "user_id", "item_id", "category",
                "position", "label", "title", "price", "query", "hist_item_ids")
IMAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "none": (),
    "vector": ("target_embedding",),
    "simscore": ("sim_scores",),
    "cluster_id": ("target_cluster_id", "hist_cluster_ids"),
}

ITEM_COLUMNS = ("item_id", "category", "title")
_TOKEN = re.compile(r"\w+", re.UNICODE)

TOY_VARIANTS: list[tuple[str, str]] = [
    ("baseline", "none"),
    ("courier_vector", "vector"),
    ("courier_simscore", "simscore"),
    ("courier_cluster_id", "cluster_id"),
    # Cluster ids assigned at random per item: same format, no signal (a null control).
    ("random_cluster_id", "cluster_id"),
]

_ADJ = ["soft", "classic", "slim", "bold", "light", "cozy", "bright", "smart", "basic", "urban",
        "vintage", "sport", "daily", "premium", "mini", "max"]
_NOUN = ["piece", "set", "edition", "item", "model", "line", "pack", "style"]


def check_ctr_frame(df: pd.DataFrame, image_feature: str, where: str = "CTR frame") -> None:
    """Raise a clear error when ``df`` lacks a column the variant needs."""
    if image_feature not in IMAGE_FEATURES:
        raise ValueError(f"image_feature must be one of {IMAGE_FEATURES}, got {image_feature!r}")
    need = ("label", "item_id", "user_id", "hist_item_ids") + IMAGE_COLUMNS[image_feature]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"{where}: missing column(s) {missing} needed for image_feature="
                       f"{image_feature!r}; columns present: {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{where}: no rows")


def title_tokens(text: object) -> list[str]:
    """Lower-cased word tokens of a title (None/NaN -> none); the one
    tokeniser of targets, queries and history titles."""
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


def item_table(items: pd.DataFrame | None, frame: pd.DataFrame) -> pd.DataFrame:
    """(item_id int64, category, title), one row per item: ``items`` (the
    catalogue) or, when None, the items ``frame`` shows; the first row of a
    duplicated id wins. A missing category/title column reads as nulls."""
    src = frame if items is None else items
    if "item_id" not in src.columns:
        raise KeyError(f"item table: missing column 'item_id'; columns present: {list(src.columns)}")
    out = pd.DataFrame({c: (src[c].to_numpy() if c in src.columns else None) for c in ITEM_COLUMNS})
    ids = pd.to_numeric(out["item_id"], errors="coerce")
    out = out[ids.notna().to_numpy()].assign(item_id=ids.dropna().astype(np.int64).to_numpy())
    return out.drop_duplicates("item_id").reset_index(drop=True)


def stack_fixed(values: Iterable, width: int | None, dtype: type, fill: float) -> np.ndarray:
    """Stack per-row arrays (or None) into a [n, width] matrix, padding with
    ``fill``; null elements (None, or NaN - Arrow hands nullable int arrays
    over as floats) become ``fill`` too."""
    vals = list(values)
    if width is None:
        width = max((len(v) for v in vals if v is not None), default=0)
    out = np.full((len(vals), width), fill, dtype=dtype)
    for i, v in enumerate(vals):
        if v is not None:
            a = np.array([np.nan if x is None else x for x in v], dtype=np.float64)[:width]
            out[i, :a.size] = np.where(np.isnan(a), fill, a)
    return out


def make_toy_ctr_frames(n_users: int = 300, n_items: int = 1500, seed: int = 0,
                        signal_strength: float = 2.5, *, pages_per_user: int = 8,
                        items_per_page: int = 10, pages_per_session: int = 2,
                        n_styles: int = 12, n_categories: int = 6, emb_dim: int = 16,
                        k_slots: int = 10, test_fraction: float = 0.25,
                        missing_embedding_rate: float = 0.05, return_truth: bool = False
                        ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]] | tuple[dict, pd.DataFrame]:
    """Toy CTR frames: ``{variant_name: (train_df, test_df)}`` for ``TOY_VARIANTS``.

    Every frame carries all image-feature columns, so each variant reads the
    ones it needs; all variants share the same rows (same event ids). The
    baseline/courier_* variants share one DataFrame; ``random_cluster_id`` has
    cluster ids drawn at random per item. The last ``test_fraction`` of each
    user's pages are the test split (later in time than the train pages).

    With ``return_truth=True`` also returns the item truth table
    (item_id, category, style, embedding) for embedding-map plots.
    """
    rng = np.random.default_rng(seed)
    cats = np.array([f"cat_{c}" for c in range(n_categories)], dtype=object)
    style = rng.integers(0, n_styles, n_items)
    # Categories are only partly visual: half the items follow their style.
    cat_idx = np.where(rng.random(n_items) < 0.5, style % n_categories,
                       rng.integers(0, n_categories, n_items))
    popularity = rng.normal(0.0, 0.5, n_items)
    centers = rng.normal(size=(n_styles, emb_dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    emb = centers[style] + 0.35 * rng.normal(size=(n_items, emb_dim)) / np.sqrt(emb_dim)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    has_emb = rng.random(n_items) >= missing_embedding_rate
    cluster = np.argmax(emb @ centers.T, axis=1).astype(np.int64)
    cluster = np.where(has_emb, cluster, -1)
    rand_cluster = np.where(has_emb, rng.integers(0, n_styles, n_items), -1).astype(np.int64)
    emb_or_zero = np.where(has_emb[:, None], emb, 0.0).astype(np.float32)
    titles = np.array([f"{cats[cat_idx[i]]} {_ADJ[rng.integers(len(_ADJ))]} "
                       f"{_NOUN[rng.integers(len(_NOUN))]}" for i in range(n_items)], dtype=object)
    price = np.round(np.exp(rng.normal(3.0, 0.8, n_items)), 2)
    price[rng.random(n_items) < 0.05] = np.nan
    item_ids = (np.arange(n_items, dtype=np.int64) * 7 + 1000)   # non-contiguous ids

    rows: dict[str, list] = {k: [] for k in ("event_id", "request_id", "session_id", "user_id",
                                             "item_id_idx", "position", "label", "query",
                                             "hist", "split")}
    n_test_pages = max(1, int(round(pages_per_user * test_fraction)))
    ev = 0
    for u in range(n_users):
        liked = rng.choice(n_styles, size=2, replace=False)
        likes = np.zeros(n_styles)
        likes[liked] = 1.0
        # Clicks from before the CTR window, mostly in the liked styles.
        prior = [int(i) for i in rng.choice(np.flatnonzero(np.isin(style, liked)),
                                            size=rng.integers(0, 8))]
        hist: list[int] = prior
        for p in range(pages_per_user):
            req = f"u{u}_p{p}"
            sess = f"u{u}_s{p // pages_per_session}"
            page_items = rng.choice(n_items, size=items_per_page, replace=False)
            pos = np.arange(items_per_page)
            logit = (-2.3 + popularity[page_items] - 0.12 * pos
                     + signal_strength * (likes[style[page_items]] - 2.0 / n_styles))
            clicks = (rng.random(items_per_page) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
            q = cats[cat_idx[page_items[0]]] if rng.random() < 0.6 else None
            split = "test" if p >= pages_per_user - n_test_pages else "train"
            snapshot = list(hist[-50:])
            for j in range(items_per_page):
                rows["event_id"].append(f"e{ev}")
                ev += 1
                rows["request_id"].append(req)
                rows["session_id"].append(sess)
                rows["user_id"].append(u + 10_000)
                rows["item_id_idx"].append(int(page_items[j]))
                rows["position"].append(int(pos[j]))
                rows["label"].append(int(clicks[j]))
                rows["query"].append(q)
                rows["hist"].append(snapshot)
                rows["split"].append(split)
            hist = hist + [int(i) for i in page_items[clicks == 1]]

    idx = np.asarray(rows["item_id_idx"], dtype=np.int64)
    n = idx.size
    # History slots for image features: slot 0 = most recent click.
    hist_rev = np.full((n, k_slots), -1, dtype=np.int64)
    for r, h in enumerate(rows["hist"]):
        last = h[::-1][:k_slots]
        hist_rev[r, :len(last)] = last
    slot_ok = hist_rev >= 0
    safe = np.where(slot_ok, hist_rev, 0)
    sims = np.einsum("nd,nkd->nk", emb[idx], emb[safe]).astype(np.float32)
    sims[~slot_ok | ~has_emb[safe] | ~has_emb[idx][:, None]] = np.nan

    df = pd.DataFrame({
        "event_id": rows["event_id"], "request_id": rows["request_id"],
        "session_id": rows["session_id"], "user_id": np.asarray(rows["user_id"], dtype=np.int64),
        "item_id": item_ids[idx], "category": cats[cat_idx[idx]],
        "position": np.asarray(rows["position"], dtype=np.int64),
        "label": np.asarray(rows["label"], dtype=np.int64),
        "title": titles[idx], "price": price[idx], "query": rows["query"],
        "hist_item_ids": [item_ids[np.asarray(h, dtype=np.int64)].tolist() for h in rows["hist"]],
        "target_embedding": list(emb_or_zero[idx]),
        "sim_scores": list(sims),
        "target_cluster_id": cluster[idx],
        "hist_cluster_ids": list(np.where(slot_ok, cluster[safe], -1)),
    })
    split = np.asarray(rows["split"])
    rnd = df.copy()
    rnd["target_cluster_id"] = rand_cluster[idx]
    rnd["hist_cluster_ids"] = list(np.where(slot_ok, rand_cluster[safe], -1))

    def cut(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return (frame[split == "train"].reset_index(drop=True),
                frame[split == "test"].reset_index(drop=True))

    shared = cut(df)
    frames = {name: (cut(rnd) if name == "random_cluster_id" else shared) for name, _ in TOY_VARIANTS}
    if not return_truth:
        return frames
    truth = pd.DataFrame({"item_id": item_ids, "category": cats[cat_idx], "style": style,
                          "has_embedding": has_emb, "embedding": list(emb)})
    return frames, truth


def train_labels(train_df: pd.DataFrame, variant: str) -> np.ndarray:
    """Check a training frame for image feature ``variant``; its 0/1 labels."""
    if variant not in IMAGE_FEATURES:
        raise ValueError(f"variant (image_feature) must be one of {IMAGE_FEATURES}, got {variant!r}")
    check_ctr_frame(train_df, variant, "train frame")
    y = pd.to_numeric(train_df["label"], errors="coerce").to_numpy(float)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("train frame: label must be 0/1 without nulls")
    return y

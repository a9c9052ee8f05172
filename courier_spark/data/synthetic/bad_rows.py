"""Bad rows the synthetic marketplace injects on request (``synthetic.bad_*``):
null keys, unknown items, duplicate events and undecodable images, each on its
own rows, so a validator counting by first reason reproduces the counts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from courier_spark.core.schema import SyntheticConfig

NULL_KEY_COLUMNS = ("event_id", "request_id", "user_id", "item_id", "event_ts", "clicked")


def inject_bad_rows(p: SyntheticConfig, rng: np.random.Generator, imps: pd.DataFrame,
                     items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Exactly the requested bad rows, on disjoint rows so that a validator
    counting by first reason reproduces `injected` exactly."""
    n_null, n_unk, n_dup = p.bad_null_keys, p.bad_unknown_items, p.bad_duplicate_events
    total = n_null + n_unk + n_dup
    if total > len(imps):
        raise ValueError(f"requested {total} bad impressions but only {len(imps)} were generated")
    if total:
        picked = rng.choice(len(imps), size=total, replace=False)
        null_rows, unk_rows, dup_rows = picked[:n_null], picked[n_null:n_null + n_unk], picked[n_null + n_unk:]
        # unknown items: ids above the largest real id, so they can never exist
        if n_unk:
            max_id = int(items["item_id"].max())
            col = imps["item_id"].to_numpy().copy()
            col[unk_rows] = max_id + 1 + np.arange(n_unk, dtype=np.int64)
            imps["item_id"] = col
        # duplicates: identical copies of rows that are otherwise valid, appended
        # (a late re-delivery); only the copy counts as bad
        dups = imps.iloc[np.sort(dup_rows)].copy() if n_dup else None
        # null keys, spread round-robin over the key columns. An int/bool column
        # that receives a null becomes object dtype (Python int/bool + None):
        # unlike pandas Int64/boolean, that converts to Spark LongType /
        # BooleanType with and without Arrow.
        for j, col_name in enumerate(NULL_KEY_COLUMNS):
            rows = null_rows[j::len(NULL_KEY_COLUMNS)]
            if len(rows) == 0:
                continue
            if col_name in ("user_id", "item_id", "clicked"):
                vals = imps[col_name].to_numpy().astype(object)  # numpy scalars -> Python int/bool
                vals[rows] = None
                imps[col_name] = pd.Series(vals, index=imps.index, dtype=object)
            elif col_name == "event_ts":
                imps.loc[rows, col_name] = pd.NaT
            else:
                imps.loc[rows, col_name] = None
        if dups is not None:
            for c in dups.columns:  # match the main frame (object where nulls were injected)
                dups[c] = dups[c].astype(imps[c].dtype)
            imps = pd.concat([imps, dups], ignore_index=True)
    if p.bad_images:
        bad = np.sort(rng.choice(len(items), size=p.bad_images, replace=False))
        imgs = items["image"].to_numpy().copy()
        for j, i in enumerate(bad):
            # alternate plain garbage and a header-only file (opens as PNG/JPEG
            # signature but has no pixel data)
            imgs[i] = b"not an image \x00\xff" + bytes(rng.integers(0, 256, 16, dtype=np.uint8)) \
                if j % 2 == 0 else bytes(imgs[i][:16])
        items = items.assign(image=imgs)
    injected = {"null_key": n_null, "unknown_item": n_unk, "duplicate_event_id": n_dup,
                "undecodable_image": p.bad_images}
    return imps, items, injected

"""How much behaviour signal an encoder learned: co-click vs random-pair cosine."""
from __future__ import annotations

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def co_click_similarity(encoder: torch.nn.Module, samples: DataFrame, items: DataFrame,
                        image_size: int, n_pairs: int = 2000, seed: int = 0) -> dict:
    """Mean cosine of (clicked PV item, history click) pairs of the same user
    vs random item pairs: the behaviour signal the encoder should have learned."""
    from training.images import decode_image
    pairs = (samples.select(F.col("pv_item_ids")[0].alias("a"), F.explode("hist_item_ids").alias("b"))
             .filter("a != b").orderBy(F.xxhash64("a", "b", F.lit(seed))).limit(n_pairs))
    pdf = pairs.toPandas()
    ids = sorted(set(pdf.a) | set(pdf.b))
    rng = np.random.default_rng(seed)
    all_ids = [r.item_id for r in items.filter("image is not null").select("item_id").collect()]
    rand = rng.choice(all_ids, size=(len(pdf), 2))
    ids = sorted(set(ids) | set(rand.ravel().tolist()))
    imgs = {r.item_id: r.image for r in items.filter(F.col("item_id").isin(ids)).select("item_id", "image").collect()}
    arrs = {i: decode_image(imgs.get(i), image_size) for i in ids}
    valid = [i for i in ids if arrs[i] is not None]
    encoder.eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(encoder(torch.from_numpy(np.stack([arrs[i] for i in valid]))), dim=1)
    e = {i: emb[k].numpy() for k, i in enumerate(valid)}
    # Embeddings of a briefly trained encoder share a large common direction
    # (random pairs have cosine ~0.9), which hides the structure; the centred
    # cosine (mean embedding of the sampled items removed) shows it.
    mu = emb.numpy().mean(0)
    ec = {i: (v - mu) / max(float(np.linalg.norm(v - mu)), 1e-12) for i, v in e.items()}
    out = {}
    for suffix, vecs in (("", e), ("_centred", ec)):
        co = [float(np.dot(vecs[a], vecs[b])) for a, b in zip(pdf.a, pdf.b) if a in vecs and b in vecs]
        rn = [float(np.dot(vecs[int(a)], vecs[int(b)])) for a, b in rand if a in vecs and b in vecs and a != b]
        out[f"co_click_cosine{suffix}"] = float(np.mean(co))
        out[f"random_pair_cosine{suffix}"] = float(np.mean(rn))
    out.update(n_co_click_pairs=len(co), n_random_pairs=len(rn))
    return out

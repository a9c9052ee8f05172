"""What many tests build: small images, an untrained encoder artifact, the
contract schemas made nullable for bad input, and the tiny world's settings.
One copy each (the tiny world itself is the session fixture ``tiny_dataset``
in conftest.py)."""
from __future__ import annotations

import io
from typing import Any

import numpy as np

# The tiny marketplace the subprocess tests (remote roots, the cluster, the
# wheel, secrets) generate: small enough to run every stage in seconds each.
TINY_WORLD = {"synthetic.n_users": 60, "synthetic.n_items": 120, "synthetic.n_days": 5,
              "synthetic.image_size": 32, "synthetic.sessions_per_user_day": 1.0,
              "spark.shuffle_partitions": 4}


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    """A one-colour PNG."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(c) for c in color)).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(rng: np.random.Generator, size: int = 28) -> bytes:
    """A PNG of random pixels (distinct images, distinct embeddings)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def nullable(schema: Any) -> Any:
    """The contract schema with every column nullable (bad input may break NOT NULL)."""
    return schema.__class__([f.__class__(f.name, f.dataType, True) for f in schema.fields])


def save_untrained_encoder(models: str, *, embed_dim: int, image_size: int, seed: int = 0,
                           method: str = "courier") -> Any:
    """A seeded, untrained small_cnn saved as the next version of ``method``
    under ``models``: enough where a test checks plumbing, not features' quality."""
    import torch

    from training.artifact import save_artifact
    from training.backbones import build_backbone
    torch.manual_seed(seed)
    return save_artifact(models, method, build_backbone("small_cnn", embed_dim), None, backbone="small_cnn",
                         embed_dim=embed_dim, image_size=image_size, config={}, data_versions={}, metrics={})

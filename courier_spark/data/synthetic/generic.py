"""Generic images the project makes itself: the stand-in for ImageNet when
nothing can be downloaded. ``training.trunk`` pre-trains a shared trunk on
them with SimCLR (``train.init: generic``), the analogue of the paper's
ImageNet start.

Each image is 1-3 random objects on a random background: shapes from a radial
outline (ellipse, regular polygon, star, blob, ring) or bars and crosses, each
filled with a texture (solid, stripes, checks, dots, smooth noise, gradient)
in two random colours, at a random scale, position, rotation and aspect;
backgrounds are flat, two-tone gradients, noise or faint stripes; then a
per-image lighting (exposure, a directional light, a colour cast) and pixel
noise. Hues, shapes and textures are drawn from continuous ranges, not from a
catalogue: on purpose this module knows nothing about the marketplace's
catalogue (``marketplace.py`` is never imported), so the trunk learns generic
image statistics, not the click world's factors.

Deterministic: image ``i`` of seed ``s`` depends only on ``(s, i)`` (its own
child of ``np.random.SeedSequence(s)``), so ``n`` images are the prefix of
any larger set and rendering could be split across workers.

NumPy scalars that meet float32 arrays are passed as Python floats
(``float(rng.uniform(...))``): NumPy 2 computes a float32 array times a NumPy
float64 scalar in float64 (NEP 50), NumPy 1 in float32, so the pixels would
move with the stack; with Python floats both compute in float32 and draw the
same images (``tests/test_synthetic_world_v2.py`` pins them).
"""
from __future__ import annotations

import colorsys

import numpy as np

# Bump when the rendering changes: trunks trained on other images are not reused.
GENERATOR_VERSION = 1

_RADIAL = ("ellipse", "polygon", "star", "blob", "ring")
_SHAPES = _RADIAL + ("bar", "cross")
_TEXTURES = ("solid", "stripes", "checks", "dots", "noise", "gradient")
_BACKGROUNDS = ("flat", "gradient", "noise", "stripes")


def _colour(rng: np.random.Generator, sat: tuple[float, float] = (0.0, 1.0),
            val: tuple[float, float] = (0.1, 1.0)) -> np.ndarray:
    """A random RGB colour in [0, 255] from continuous hue/saturation/value ranges."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] noise in [0, 1]: a ``cells x cells`` random grid, bilinearly upsampled."""
    g = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]          # [size, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] mix weight in [0, 1] between a texture's two colours (u, v: rotated coordinates)."""
    freq = float(rng.uniform(3.0, 12.0))
    phase = float(rng.uniform(0.0, 2 * np.pi))
    if kind == "solid":
        return np.zeros_like(u)
    if kind == "stripes":
        return (np.sin(freq * np.pi * u + phase) > 0).astype(np.float32)
    if kind == "checks":
        return ((np.sin(freq * np.pi * u + phase) > 0) ^ (np.sin(freq * np.pi * v) > 0)).astype(np.float32)
    if kind == "dots":
        du = np.sin(freq * np.pi * u + phase)
        dv = np.sin(freq * np.pi * v + phase)
        return ((du * du + dv * dv) > float(rng.uniform(1.0, 1.6))).astype(np.float32)
    if kind == "noise":
        return _smooth_noise(rng, size, int(rng.integers(2, 9)))
    return np.clip(0.5 + 0.5 * u * float(rng.uniform(0.5, 1.5)), 0.0, 1.0)   # gradient


def _fill(rng: np.random.Generator, kind: str, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """[size, size, 3] texture of ``kind`` in two random colours."""
    a = _colour(rng)
    # the second colour: near the first (a shade) or unrelated, both occur in photos
    b = np.clip(a * float(rng.uniform(0.3, 0.8)), 0, 255) if rng.random() < 0.5 else _colour(rng)
    w = _pattern(kind, u, v, rng, size)[..., None]
    return a * (1.0 - w) + b * w


def _shape_mask(kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft [size, size] coverage of one object, plus its rotated coordinates (u, v)."""
    cx, cy = (float(t) for t in rng.uniform(-0.6, 0.6, 2))
    scale = float(rng.uniform(0.15, 0.7))          # radius, as a share of the half image
    aspect = float(np.exp(rng.uniform(-0.6, 0.6)))
    angle = rng.uniform(0.0, 2 * np.pi)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    u = ((x - cx) * c + (y - cy) * s) / (scale * aspect)
    v = (-(x - cx) * s + (y - cy) * c) * aspect / scale
    edge = size * scale / 2.0                      # ~1 pixel of soft edge, in shape units
    if kind in _RADIAL:
        rho, theta = np.hypot(u, v), np.arctan2(v, u)
        if kind == "polygon":
            k = int(rng.integers(3, 9))
            sector = 2 * np.pi / k
            r = float(np.cos(np.pi / k)) / np.cos(np.mod(theta, sector) - np.pi / k)
        elif kind == "star":
            k = int(rng.integers(4, 9))
            r = 1.0 - float(rng.uniform(0.3, 0.6)) * (0.5 + 0.5 * np.cos(k * theta))
        elif kind == "blob":
            r = np.ones_like(theta)
            for h in range(2, 6):
                r = r + float(rng.uniform(-0.15, 0.15)) * np.cos(h * theta + float(rng.uniform(0, 2 * np.pi)))
        else:
            r = np.ones_like(theta)
        cover = np.clip((r - rho) * edge, 0.0, 1.0)
        if kind == "ring":
            cover = cover * np.clip((rho - float(rng.uniform(0.4, 0.8))) * edge, 0.0, 1.0)
    else:
        half = float(rng.uniform(0.15, 0.4))
        bar_u = np.clip((1.0 - np.abs(u)) * edge, 0.0, 1.0) * np.clip((half - np.abs(v)) * edge, 0.0, 1.0)
        if kind == "cross":
            bar_v = np.clip((1.0 - np.abs(v)) * edge, 0.0, 1.0) * np.clip((half - np.abs(u)) * edge, 0.0, 1.0)
            bar_u = np.maximum(bar_u, bar_v)
        cover = bar_u
    return cover.astype(np.float32), u, v


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    a = _colour(rng, val=(0.2, 1.0))
    if kind == "flat":
        return np.broadcast_to(a, (size, size, 3)).astype(np.float32)
    b = _colour(rng, val=(0.2, 1.0))
    if kind == "gradient":
        d = rng.uniform(0, 2 * np.pi)
        w = np.clip(0.5 + 0.5 * (x * float(np.cos(d)) + y * float(np.sin(d))), 0.0, 1.0)
    elif kind == "noise":
        w = _smooth_noise(rng, size, int(rng.integers(2, 7)))
    else:   # faint stripes
        w = 0.25 * (np.sin(float(rng.uniform(2, 10)) * np.pi * (x + float(rng.uniform(0, 1)) * y)) > 0)
    return a * (1.0 - w[..., None]) + b * w[..., None]


def render_generic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """One generic image, uint8 [size, size, 3], drawn from ``rng``."""
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = np.meshgrid(t, t)
    img = _background(rng, x, y, size)
    for _ in range(int(rng.integers(1, 4))):
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        cover, u, v = _shape_mask(shape, x, y, rng, size)
        tex = _fill(rng, _TEXTURES[int(rng.integers(len(_TEXTURES)))], u, v, size)
        img = img * (1.0 - cover[..., None]) + tex * cover[..., None]
    # lighting: exposure, a directional light across the scene and a colour cast
    d = rng.uniform(0, 2 * np.pi)
    light = float(rng.uniform(0.6, 1.3)) * (1.0 + float(rng.uniform(0.0, 0.4))
                                            * (x * float(np.cos(d)) + y * float(np.sin(d))))
    img = img * light[..., None] + rng.uniform(-15.0, 15.0, 3).astype(np.float32)
    img = img + float(rng.uniform(0.0, 6.0)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generic_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` generic images, uint8 ``[n, size, size, 3]``; image ``i`` depends only on ``(seed, i)``."""
    if n < 0 or size < 4:
        raise ValueError(f"need n >= 0 and size >= 4, got n={n}, size={size}")
    out = np.empty((n, size, size, 3), np.uint8)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        out[i] = render_generic_image(np.random.default_rng(child), size)
    return out

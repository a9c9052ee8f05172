"""The synthetic items' pictures: the look vocabulary (colours, prints,
shapes and silhouettes) and ``render_item_image``, which draws one item from
its look factors with its nuisance (backdrop, lighting, pose, scale, crop)
and pixel noise. Pure numpy / Pillow; the generative story is in
``marketplace.py``."""
from __future__ import annotations

import colorsys
import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# (name, hue in degrees): hues at least 30 degrees apart so a decoded image's
# dominant hue identifies the factor even after JPEG and jitter.
COLOURS: tuple[tuple[str, float], ...] = (
    ("red", 0.0), ("orange", 30.0), ("yellow", 60.0), ("green", 120.0),
    ("cyan", 180.0), ("blue", 220.0), ("purple", 275.0), ("pink", 320.0),
)
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "checks")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# World v2: the object's silhouette is its category's (said by the category,
# never a taste); v1's five shapes plus three more, one per category.
SILHOUETTES: tuple[str, ...] = SHAPES + ("hexagon", "ring", "slab")
HUE_JITTER_DEG = 6.0      # keeps every image within +-15 degrees of its palette hue


def _rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)) * 255.0


def _shape_mask(shape: int, size: int, rng: np.random.Generator, pose: float = 0.0) -> np.ndarray:
    """Anti-aliased [0,1] mask of the shape, drawn 4x supersampled. ``pose``
    (world v2's nuisance, 0-1) widens the crop offset, scale and tilt ranges;
    at 0 they are v1's (the same random draws, so v1 images are unchanged)."""
    ss = 4
    big = size * ss
    off = 0.08 + 0.07 * pose
    cx = big * (0.5 + rng.uniform(-off, off))
    cy = big * (0.5 + rng.uniform(-off, off))
    r = big * rng.uniform(0.30 - 0.10 * pose, 0.38)
    tilt = 10.0 + 15.0 * pose
    rot = np.deg2rad(rng.uniform(-tilt, tilt))  # v1: small tilt, never enough to turn a square into a diamond
    im = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(im)

    def poly(radii: np.ndarray, start_deg: float) -> list[tuple[float, float]]:
        ang = np.deg2rad(start_deg) + rot + np.arange(len(radii)) * 2 * np.pi / len(radii)
        return [(float(cx + rr * np.cos(a)), float(cy + rr * np.sin(a))) for rr, a in zip(radii, ang)]

    name = SILHOUETTES[shape]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "square":
        d.polygon(poly(np.full(4, r * 1.05), 45.0), fill=255)
    elif name == "triangle":
        d.polygon(poly(np.full(3, r * 1.15), -90.0), fill=255)
    elif name == "star":
        d.polygon(poly(np.tile([r * 1.15, r * 0.5], 5), -90.0), fill=255)
    elif name == "hexagon":
        d.polygon(poly(np.full(6, r * 1.05), 0.0), fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.5
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "slab":  # a tall upright block (a book, a phone)
        c, s_ = np.cos(rot), np.sin(rot)
        pts = [(-0.62 * r, -1.1 * r), (0.62 * r, -1.1 * r), (0.62 * r, 1.1 * r), (-0.62 * r, 1.1 * r)]
        d.polygon([(float(cx + x * c - y * s_), float(cy + x * s_ + y * c)) for x, y in pts], fill=255)
    elif name == "cross":
        w = r * 0.38
        # two bars, tilted like the polygons
        for bar in ((r, w), (w, r)):
            pts = [(-bar[0], -bar[1]), (bar[0], -bar[1]), (bar[0], bar[1]), (-bar[0], bar[1])]
            c, s = np.cos(rot), np.sin(rot)
            d.polygon([(float(cx + x * c - y * s), float(cy + x * s + y * c)) for x, y in pts], fill=255)
    else:  # pragma: no cover - guarded by the factor ranges
        raise ValueError(f"unknown shape {shape}")
    im = im.resize((size, size), Image.BOX)
    return np.asarray(im, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    g = np.mgrid[0:size, 0:size].astype(np.float32)
    g.setflags(write=False)  # shared between calls
    return g


def _texture(pattern: int, size: int, primary: np.ndarray, secondary: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """size x size x 3 texture of the pattern in primary/secondary colours."""
    yy, xx = _grid(size)
    period = float(size * rng.uniform(0.12, 0.2))
    px, py = (float(v) for v in rng.uniform(0, period, 2))  # pattern phase jitter
    name = PATTERNS[pattern]
    if name == "solid":
        sec = np.zeros((size, size), dtype=bool)
    elif name == "stripes":
        orient = rng.integers(3)  # horizontal, vertical or diagonal
        coord = (yy + py, xx + px, (xx + yy) / float(np.sqrt(2)) + px)[orient]
        sec = ((coord / period) % 1.0) < 0.5
    elif name == "dots":
        dx = ((xx + px) % period) - period / 2
        dy = ((yy + py) % period) - period / 2
        sec = dx * dx + dy * dy < (period * 0.3) ** 2
    elif name == "checks":
        sec = (np.floor((xx + px) / period) + np.floor((yy + py) / period)) % 2 == 1
    else:  # pragma: no cover
        raise ValueError(f"unknown pattern {pattern}")
    return np.where(sec[..., None], secondary[None, None, :], primary[None, None, :]).astype(np.float32)


BACKDROP_GRADIENTS = ("vertical", "horizontal", "diagonal", "radial")
BACKDROP_TEXTURES = ("plain", "lines", "grid", "grain")
BACKDROP_MAX_SATURATION = 0.22  # the colour test reads hue from pixels with saturation > 0.35


@dataclass(frozen=True)
class BackdropStyle:
    """A brand's studio backdrop: gradient between two muted tones plus a faint texture."""
    tone_a: tuple[float, float, float]  # RGB 0-255
    tone_b: tuple[float, float, float]
    gradient: str
    texture: str
    period: float                       # texture period as a fraction of the image size


@functools.lru_cache(maxsize=None)
def backdrop_style(backdrop: int) -> BackdropStyle:
    """Deterministic style of backdrop number `backdrop` (its own seed, so
    adding brands never changes existing backdrops)."""
    if backdrop < 0:
        raise ValueError(f"backdrop must be >= 0, got {backdrop}")
    rng = np.random.default_rng([0xBAC, int(backdrop)])
    hue = rng.uniform(0.0, 360.0)
    sat = rng.uniform(0.03, BACKDROP_MAX_SATURATION - 0.04)
    v_a = rng.uniform(0.35, 0.95)
    v_b = float(np.clip(v_a + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.4), 0.3, 0.97))
    tone_a = tuple(float(c) for c in _rgb(hue, sat, v_a))
    tone_b = tuple(float(c) for c in _rgb(hue + rng.uniform(-40.0, 40.0), sat, v_b))
    return BackdropStyle(tone_a, tone_b, BACKDROP_GRADIENTS[int(rng.integers(len(BACKDROP_GRADIENTS)))],
                         BACKDROP_TEXTURES[int(rng.integers(len(BACKDROP_TEXTURES)))],
                         float(rng.uniform(0.08, 0.2)))


@functools.lru_cache(maxsize=64)
def _backdrop_base(backdrop: int, size: int) -> np.ndarray:
    """size x size x 3 float backdrop of a brand, before per-photo exposure
    (read-only, shared: every photo of the brand starts from it)."""
    style = backdrop_style(backdrop)
    yy, xx = _grid(size) / max(size - 1, 1)
    t = {"vertical": yy, "horizontal": xx, "diagonal": (xx + yy) / 2,
         "radial": np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * float(np.sqrt(2))}[style.gradient]
    img = (np.asarray(style.tone_a, np.float32)[None, None, :] * (1.0 - t[..., None])
           + np.asarray(style.tone_b, np.float32)[None, None, :] * t[..., None])
    period = style.period * size
    if style.texture == "lines":
        tex = ((yy * size / period) % 1.0 < 0.25).astype(np.float32)
    elif style.texture == "grid":
        tex = (((yy * size / period) % 1.0 < 0.2) | ((xx * size / period) % 1.0 < 0.2)).astype(np.float32)
    elif style.texture == "grain":
        tex = (np.sin(xx * size / period * 2.1 + 1.3) * np.sin(yy * size / period * 1.7) > 0.6).astype(np.float32)
    else:
        tex = np.zeros((size, size), np.float32)
    img = img - 14.0 * tex[..., None]  # darker texture marks keep the tone's hue and low saturation
    img.setflags(write=False)
    return img


def render_item_image(colour: int, pattern: int, shape: int, size: int,
                      rng: np.random.Generator, fmt: str = "png", backdrop: int | None = None,
                      nuisance: float | None = None) -> bytes:
    """Encoded PNG/JPEG of a `shape` (``SILHOUETTES`` index) filled with
    `pattern` in hue `colour` on backdrop number `backdrop` (``backdrop_style``),
    or on a light, nearly neutral background when None. The pattern's second
    colour is a darker shade of the same hue, so the saturated pixels' hue
    always names `colour`. ``nuisance`` (world v2, 0-1; None = v1) widens
    pose, scale and crop and adds a per-photo lighting (exposure and a faint
    warm/cool cast): pixel variance that says nothing about clicks."""
    if not (0 <= colour < len(COLOURS) and 0 <= pattern < len(PATTERNS) and 0 <= shape < len(SILHOUETTES)):
        raise ValueError(f"factor out of range: colour={colour} pattern={pattern} shape={shape}")
    hue = COLOURS[colour][1] + rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)
    sat = rng.uniform(0.65, 0.9)
    val = rng.uniform(0.78, 0.95)
    primary = _rgb(hue, sat, val)
    secondary = _rgb(hue, sat, val * rng.uniform(0.45, 0.6))
    grey = rng.uniform(200.0, 245.0)
    bg = np.clip(grey + rng.uniform(-6.0, 6.0, 3), 0, 255).astype(np.float32)[None, None, :]
    if backdrop is not None:
        bg = _backdrop_base(backdrop, size) * float(rng.uniform(0.95, 1.05))  # per-photo exposure
    mask = _shape_mask(shape, size, rng, pose=nuisance or 0.0)[..., None]
    tex = _texture(pattern, size, primary, secondary, rng)
    img = bg * (1.0 - mask) + tex * mask
    if nuisance:
        # lighting: exposure 0.7-1.1 and a cast of at most +-6 levels per channel,
        # small enough that the saturated pixels' hue still names the colour
        img = img * float(rng.uniform(1.0 - 0.3 * nuisance, 1.0 + 0.1 * nuisance)) \
            + rng.uniform(-6.0, 6.0, 3).astype(np.float32) * nuisance
    img += 3.0 * rng.standard_normal(img.shape, dtype=np.float32)  # pixel noise: no two images identical
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    fmt_l = fmt.lower()
    if fmt_l == "png":
        # fast zlib level: noisy pixels barely compress anyway and encoding dominates generation time
        Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    elif fmt_l in ("jpeg", "jpg"):
        Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=90)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {fmt!r}")
    return buf.getvalue()

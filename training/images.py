"""Image decoding shared by the training loader and the embedding job, so an
item is seen by the trained encoder exactly as it was during training."""
from __future__ import annotations

import io

import numpy as np

# ImageNet statistics: the usual normalisation for torchvision backbones (and
# harmless for randomly initialised ones).
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def decode_pixels(data: bytes | None, size: int) -> np.ndarray | None:
    """Encoded JPEG/PNG bytes -> uint8 [3, size, size] RGB, or None when the
    bytes are missing or undecodable (the caller masks the slot)."""
    if data is None:
        return None
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")  # greyscale / palette / RGBA -> RGB
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decoder failure makes the slot invalid
        return None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalise(pixels):
    """uint8 [..., 3, H, W] pixels (numpy or torch) -> float32 ImageNet-normalised,
    the same float32 operations in either library (so training, which keeps
    uint8 pixels and normalises per batch, sees exactly what ``decode_image`` gives)."""
    if isinstance(pixels, np.ndarray):
        return (pixels.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    import torch
    mean, std = torch.from_numpy(MEAN), torch.from_numpy(STD)
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def decode_image(data: bytes | None, size: int) -> np.ndarray | None:
    """Encoded JPEG/PNG bytes -> float32 [3, size, size] normalised, or None
    when the bytes are missing or undecodable (the caller masks the slot)."""
    pixels = decode_pixels(data, size)
    return None if pixels is None else normalise(pixels)


def decode_slots(slots: list[bytes | None], size: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed list of image slots -> ([L, 3, size, size] float32, [L] bool valid)."""
    out = np.zeros((len(slots), 3, size, size), dtype=np.float32)
    valid = np.zeros(len(slots), dtype=bool)
    for i, b in enumerate(slots):
        arr = decode_image(b, size)
        if arr is not None:
            out[i] = arr
            valid[i] = True
    return out, valid

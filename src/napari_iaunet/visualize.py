"""Pictures of results: instance overlays a person can look at (no Qt needed)."""

from __future__ import annotations

import colorsys

import numpy as np
from scipy import ndimage

from .inference.preprocess import to_model_range
from .instances import Instances

__all__ = ["instance_colors", "overlay"]


def instance_colors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct bright RGB colours (uint8), golden-ratio spaced hues."""
    rng = np.random.default_rng(seed)
    start = rng.random()
    hues = (start + np.arange(n) * 0.61803398875) % 1.0
    cols = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return (np.asarray(cols).reshape(-1, 3) * 255).astype(np.uint8)


def overlay(image: np.ndarray, instances: Instances, alpha: float = 0.3,
            outline: int = 2) -> np.ndarray:
    """RGB uint8 picture of ``image`` with every instance filled translucently and outlined.

    Overlapping instances are all drawn (fills blend), so overlaps stay visible.
    """
    base = to_model_range(image, "dtype")  # shown as stored (8-bit raw, others stretched)
    if base.shape[:2] != instances.image_shape:
        raise ValueError(f"image {base.shape[:2]} and instances {instances.image_shape} differ")
    out = base.astype(np.float32)
    colors = instance_colors(len(instances)).astype(np.float32)
    struct = ndimage.generate_binary_structure(2, 1)
    for i, crop in enumerate(instances.crops):
        y0, x0, y1, x1 = (int(v) for v in instances.boxes[i])
        region = out[y0:y1, x0:x1]
        region[crop] = (1 - alpha) * region[crop] + alpha * colors[i]
        padded = np.pad(crop, 1)
        inner = ndimage.binary_erosion(padded, struct, iterations=max(1, outline))[1:-1, 1:-1]
        edge = crop & ~inner
        region[edge] = colors[i]
    return np.clip(out, 0, 255).astype(np.uint8)

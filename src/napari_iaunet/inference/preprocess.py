"""Image → network input: intensity range, channels, resize, normalisation and padding.

Training and inference share :func:`to_model_range`, so a checkpoint's mean/std mean the same
thing in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model.config import INTENSITY_MODES

__all__ = ["INTENSITY_MODES", "PreparedImage", "as_hwc", "brightness_offset", "check_intensity",
           "pad_batch", "prepare", "resized_shape", "to_model_range"]

# Robust percentiles that map an image onto 0-255.
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9


def check_intensity(intensity: str) -> str:
    """``intensity`` if it is one of :data:`INTENSITY_MODES`, else a ``ValueError``."""
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity mode {intensity!r} (choose from "
                         f"{', '.join(INTENSITY_MODES)})")
    return intensity


def as_hwc(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as ``(H, W, C)`` with C in {1, 3}; RGBA drops alpha.

    Accepts ``(H, W)``, ``(H, W, 1|3|4)`` and channel-first ``(1|3|4, H, W)`` (when the last axis
    is clearly spatial). Anything else raises a ValueError that says what is accepted.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3:
        if image.shape[-1] in (1, 3, 4):
            return image[..., :3] if image.shape[-1] == 4 else image
        if image.shape[0] in (1, 3, 4) and image.shape[-1] > 4:
            chw = image[:3] if image.shape[0] == 4 else image
            return np.moveaxis(chw, 0, -1)
    raise ValueError(
        f"cannot segment an image of shape {image.shape}: expected a 2-D image, "
        "(H, W) gray or (H, W, 3|4) RGB/RGBA; for a stack (frames, H, W) segment each frame "
        "(Segmenter.segment_stack does this)"
    )


def to_model_range(image: np.ndarray, intensity: str = "percentile") -> np.ndarray:
    """Map a gray/RGB/RGBA image of any dtype to float32 ``(H, W, 3)`` on the 0-255 scale.

    ``intensity="percentile"`` (every model trained since 2026-12-03): the image is stretched so
    that its 0.1 and 99.9 percentiles (over all channels) land on 0 and 255, whatever its dtype,
    so a uint8 picture and its uint16 or float copy give the same values (within rounding).
    ``"dtype"`` (older models): uint8 values are kept as they are, booleans become 0/255, other
    dtypes are stretched. Gray images are replicated to three channels. NaN and ±inf become the
    lowest finite value.
    """
    check_intensity(intensity)
    hwc = as_hwc(image)
    if hwc.shape[0] < 2 or hwc.shape[1] < 2:
        raise ValueError(f"image of shape {np.asarray(image).shape} is too small to segment")
    if hwc.dtype == np.uint8 and intensity == "dtype":
        out = hwc.astype(np.float32)
    elif hwc.dtype == bool and intensity == "dtype":
        out = hwc.astype(np.float32) * 255.0
    elif hwc.dtype == bool or (np.issubdtype(hwc.dtype, np.number)
                               and not np.issubdtype(hwc.dtype, np.complexfloating)):
        if hwc.dtype in (np.uint8, np.uint16, bool):  # exact, from a histogram (fast)
            values = hwc.view(np.uint8) if hwc.dtype == bool else hwc
            counts = np.bincount(values.ravel())
            lo, hi = _percentiles_from_counts(counts)
            if hi <= lo:
                nonzero = np.flatnonzero(counts)
                lo, hi = float(nonzero[0]), float(nonzero[-1])
            # a lookup table: one gather instead of float arithmetic over every pixel
            out = _stretch(np.arange(len(counts), dtype=np.float32), lo, hi)[values]
        else:
            out = hwc.astype(np.float32)
            finite = np.isfinite(out)
            if not finite.all():
                if not finite.any():
                    raise ValueError("image holds no finite values (all NaN or inf)")
                out = np.where(finite, out, out[finite].min())
            lo, hi = np.percentile(out, [LOW_PERCENTILE, HIGH_PERCENTILE])
            if hi <= lo:
                lo, hi = float(out.min()), float(out.max())
            out = _stretch(out, lo, hi)
    else:
        raise ValueError(f"cannot segment an image of dtype {hwc.dtype}: use integers or floats")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo`` → 0 and ``hi`` → 255, clipped (all zeros when ``hi <= lo``: a flat image)."""
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float32)
    out = values.astype(np.float32, copy=True)
    out -= np.float32(lo)
    out *= np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)


def _percentiles_from_counts(counts: np.ndarray) -> tuple[float, float]:
    """The 0.1 and 99.9 percentiles of integer values given their histogram: exactly what
    ``np.percentile`` (linear interpolation) gives for the values themselves."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    found = []
    for q in (LOW_PERCENTILE, HIGH_PERCENTILE):
        position = q / 100.0 * (n - 1)
        below = int(np.floor(position))
        # the rank-th smallest value is the first whose cumulative count exceeds rank
        a, b = np.searchsorted(cumulative, [below, min(below + 1, n - 1)], side="right")
        found.append(float(a) + (position - below) * float(b - a))
    return found[0], found[1]


def resized_shape(shape: tuple[int, int], input_size: int) -> tuple[int, int]:
    """Shape after scaling the longest side to ``input_size`` (aspect ratio kept)."""
    h, w = int(shape[0]), int(shape[1])
    scale = input_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


@dataclass(frozen=True)
class PreparedImage:
    """A network-ready image and the geometry needed to map masks back."""

    tensor: torch.Tensor  # (3, Hp, Wp) normalised, zero-padded bottom/right
    original_shape: tuple[int, int]  # (H, W) of the input image
    resized_shape: tuple[int, int]  # (h, w) after the longest-side resize, before padding


def brightness_offset(rgb: np.ndarray, pixel_mean: Sequence[float]) -> float:
    """What to add to ``rgb`` (0-255 scale, from :func:`to_model_range`) so that its mean equals
    the mean of ``pixel_mean``: brightness matching (``match_brightness`` in a model config).

    One offset for every channel and pixel, so contrast and colour balance are kept; the shifted
    values may leave 0-255 (they are normalised next, never stored).
    """
    return float(np.mean(pixel_mean)) - float(rgb.mean(dtype=np.float64))


def prepare(
    image: np.ndarray,
    input_size: int,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    size_divisibility: int = 32,
    device: torch.device | str = "cpu",
    offset: float | None = 0.0,
    intensity: str = "percentile",
) -> PreparedImage:
    """Resize the longest side to ``input_size``, normalise and pad to a multiple of 32.

    ``intensity``: how values reach the 0-255 scale (:func:`to_model_range`). ``offset`` is
    added to the 0-255 values first (brightness matching); None matches the image's own
    brightness to ``pixel_mean`` (:func:`brightness_offset` of its pixels).
    """
    rgb = to_model_range(image, intensity)
    if offset is None:
        offset = brightness_offset(rgb, pixel_mean)
    if offset:
        rgb = rgb + np.float32(offset)
    h0, w0 = rgb.shape[:2]
    h, w = resized_shape((h0, w0), input_size)
    t = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None]
    if (h, w) != (h0, w0):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False,
                          antialias=(h < h0))
    mean = torch.tensor(pixel_mean, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    t = (t - mean) / std
    hp = -(-h // size_divisibility) * size_divisibility
    wp = -(-w // size_divisibility) * size_divisibility
    t = F.pad(t, (0, wp - w, 0, hp - h))  # zeros == the mean after normalisation
    return PreparedImage(tensor=t[0], original_shape=(h0, w0), resized_shape=(h, w))


def pad_batch(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``(3, H, W)`` tensors into one batch, zero-padding bottom/right to the largest."""
    hp = max(t.shape[-2] for t in tensors)
    wp = max(t.shape[-1] for t in tensors)
    return torch.stack([F.pad(t, (0, wp - t.shape[-1], 0, hp - t.shape[-2])) for t in tensors])

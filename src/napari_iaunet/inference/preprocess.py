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

__all__ = ["PreparedImage", "as_hwc", "brightness_offset", "pad_batch", "prepare", "resized_shape",
           "to_model_range"]

# Robust percentiles used to map non-8-bit images onto 0-255.
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9


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


def to_model_range(image: np.ndarray) -> np.ndarray:
    """Map a gray/RGB/RGBA image of any dtype to float32 ``(H, W, 3)`` on the 0-255 scale.

    uint8 values are kept as they are (the reference normalises raw 8-bit values); booleans become
    0/255; every other dtype (uint16, int, float) is stretched so its 0.1 and 99.9 percentiles land
    on 0 and 255. Gray images are replicated to three channels. NaN and ±inf become the lowest
    finite value.
    """
    hwc = as_hwc(image)
    if hwc.shape[0] < 2 or hwc.shape[1] < 2:
        raise ValueError(f"image of shape {np.asarray(image).shape} is too small to segment")
    if hwc.dtype == np.uint8:
        out = hwc.astype(np.float32)
    elif hwc.dtype == bool:
        out = hwc.astype(np.float32) * 255.0
    elif np.issubdtype(hwc.dtype, np.number) and not np.issubdtype(hwc.dtype, np.complexfloating):
        out = hwc.astype(np.float32)
        finite = np.isfinite(out)
        if not finite.all():
            if not finite.any():
                raise ValueError("image holds no finite values (all NaN or inf)")
            out = np.where(finite, out, out[finite].min())
        lo, hi = np.percentile(out, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if hi <= lo:
            lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out = np.clip((out - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
        else:
            out = np.zeros_like(out)
    else:
        raise ValueError(f"cannot segment an image of dtype {hwc.dtype}: use integers or floats")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


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
) -> PreparedImage:
    """Resize the longest side to ``input_size``, normalise and pad to a multiple of 32.

    ``offset`` is added to the 0-255 values first (brightness matching); None matches the image's
    own brightness to ``pixel_mean`` (:func:`brightness_offset` of its pixels).
    """
    rgb = to_model_range(image)
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

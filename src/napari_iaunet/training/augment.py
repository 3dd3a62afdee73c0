"""The paper's training augmentation on an image and its (overlapping) instances.

Recipe ("ssj"): horizontal and vertical flips (p = 0.5 each), a random multiple of 90° rotation
(p = 0.5), longest side to the input size, scale jitter 0.8–1.5, then a random crop to the input
size where the image is larger (padding to the input size happens after normalisation, with zeros
= the mean, bottom/right: see :mod:`napari_iaunet.training.dataset`). Instances the crop cuts away
(nothing or fewer than ``min_area`` pixels left) are dropped.

:meth:`AugmentConfig.resize_only` (``TrainConfig(augment=False)``, ``napari-iaunet train
--no-augment``) keeps only the resize to the input size and the padding.

Masks stay per-instance boolean crops throughout: flips and rotations act on the crops, and the
resize+crop is one nearest-neighbour index lookup per instance restricted to its box, so the cost
does not grow with the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..instances import Instances

__all__ = ["AugmentConfig", "augment", "flip", "resize_crop", "resize_longest", "rot90"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentation."""

    input_size: int = 512
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.5)
    min_area: int = 4  # instances with fewer visible pixels after the crop are dropped

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig: scale_range must satisfy 0 < lo <= hi, got "
                             f"{self.scale_range}")
        if self.input_size < 32:
            raise ValueError("AugmentConfig: input_size must be at least 32")

    @classmethod
    def resize_only(cls, input_size: int = 512, min_area: int = 4) -> AugmentConfig:
        """No flips, no rotations, no scale jitter: the longest side goes to ``input_size`` (the
        image is then padded, never cropped). ``TrainConfig(augment=False)`` trains with this."""
        return cls(input_size=input_size, hflip=0.0, vflip=0.0, rot90=0.0,
                   scale_range=(1.0, 1.0), min_area=min_area)


def flip(image: np.ndarray, inst: Instances, axis: int) -> tuple[np.ndarray, Instances]:
    """Mirror along ``axis`` (0: vertical flip, top↔bottom; 1: horizontal flip, left↔right)."""
    h, w = inst.image_shape
    boxes = inst.boxes.copy()
    if axis == 0:
        boxes[:, 0], boxes[:, 2] = h - inst.boxes[:, 2], h - inst.boxes[:, 0]
        crops = [np.ascontiguousarray(c[::-1]) for c in inst.crops]
    elif axis == 1:
        boxes[:, 1], boxes[:, 3] = w - inst.boxes[:, 3], w - inst.boxes[:, 1]
        crops = [np.ascontiguousarray(c[:, ::-1]) for c in inst.crops]
    else:
        raise ValueError(f"flip: axis must be 0 or 1, got {axis}")
    out = Instances(inst.image_shape, boxes, crops, inst.scores, inst.class_ids, inst.ids)
    return np.ascontiguousarray(np.flip(image, axis)), out


def rot90(image: np.ndarray, inst: Instances, k: int = 1) -> tuple[np.ndarray, Instances]:
    """Rotate by ``k`` × 90° counter-clockwise, like ``np.rot90(image, k)``."""
    k %= 4
    for _ in range(k):
        h, w = inst.image_shape
        y0, x0, y1, x1 = inst.boxes.T
        boxes = np.stack([w - x1, y0, w - x0, y1], axis=1)
        crops = [np.ascontiguousarray(np.rot90(c)) for c in inst.crops]
        inst = Instances((w, h), boxes, crops, inst.scores, inst.class_ids, inst.ids)
        image = np.rot90(image)
    return np.ascontiguousarray(image), inst


def _resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking) of an ``(H, W, C)`` float image."""
    h0, w0 = image.shape[:2]
    if (h0, w0) == tuple(shape):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False,
                      antialias=shape[0] < h0 or shape[1] < w0)
    return t[0].permute(1, 2, 0).numpy()


def resize_crop(image: np.ndarray, inst: Instances, scale: float,
                window: tuple[int, int, int, int], min_area: int = 1
                ) -> tuple[np.ndarray, Instances]:
    """Scale the image by ``scale`` and cut ``window`` = (y0, x0, y1, x1) of the scaled image.

    Masks use nearest-neighbour sampling at the same pixel centres as the bilinear image
    (``align_corners=False``). Instances with fewer than ``min_area`` pixels left are dropped.
    """
    h0, w0 = inst.image_shape
    sh, sw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    wy0, wx0, wy1, wx1 = window
    if not (0 <= wy0 < wy1 <= sh and 0 <= wx0 < wx1 <= sw):
        raise ValueError(f"resize_crop: window {window} outside the scaled image {sh}×{sw}")
    img = _resize_image(image, (sh, sw))[wy0:wy1, wx0:wx1]
    fy, fx = sh / h0, sw / w0
    src_r = np.minimum(((np.arange(wy0, wy1) + 0.5) / fy).astype(np.int64), h0 - 1)
    src_c = np.minimum(((np.arange(wx0, wx1) + 0.5) / fx).astype(np.int64), w0 - 1)
    boxes, crops, keep = [], [], []
    for i, (crop, (y0, x0, y1, x1)) in enumerate(zip(inst.crops, inst.boxes)):
        r0, r1 = np.searchsorted(src_r, [y0, y1])
        c0, c1 = np.searchsorted(src_c, [x0, x1])
        if r1 <= r0 or c1 <= c0:
            continue
        m = crop[(src_r[r0:r1] - y0)[:, None], (src_c[c0:c1] - x0)[None, :]]
        if np.count_nonzero(m) < max(1, min_area):
            continue
        boxes.append((r0, c0, r1, c1))
        crops.append(m)
        keep.append(i)
    k = np.asarray(keep, np.int64)
    out = Instances((wy1 - wy0, wx1 - wx0), np.asarray(boxes, np.int64).reshape(-1, 4), crops,
                    inst.scores[k], inst.class_ids[k], inst.ids[k]).tightened()
    return np.ascontiguousarray(img), out


def resize_longest(image: np.ndarray, inst: Instances, input_size: int
                   ) -> tuple[np.ndarray, Instances]:
    """Scale so the longest side is ``input_size`` (no crop, no jitter): the evaluation view."""
    h, w = inst.image_shape
    scale = input_size / max(h, w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    return resize_crop(image, inst, scale, (0, 0, sh, sw))


def augment(image: np.ndarray, inst: Instances, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, Instances]:
    """One random draw of the training recipe.

    ``image``: ``(H, W, 3)`` float32 on the 0-255 scale; returns an image of at most
    ``input_size`` × ``input_size`` (smaller sides are padded later) and its instances.
    """
    if tuple(image.shape[:2]) != inst.image_shape:
        raise ValueError(f"augment: image {image.shape[:2]} and instances {inst.image_shape} "
                         "differ in size")
    if rng.random() < config.hflip:
        image, inst = flip(image, inst, 1)
    if rng.random() < config.vflip:
        image, inst = flip(image, inst, 0)
    if rng.random() < config.rot90:
        image, inst = rot90(image, inst, int(rng.integers(1, 4)))
    h, w = inst.image_shape
    s = config.input_size
    scale = s / max(h, w) * float(rng.uniform(*config.scale_range))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    y0 = int(rng.integers(0, sh - s + 1)) if sh > s else 0
    x0 = int(rng.integers(0, sw - s + 1)) if sw > s else 0
    return resize_crop(image, inst, scale, (y0, x0, min(sh, y0 + s), min(sw, x0 + s)),
                       config.min_area)

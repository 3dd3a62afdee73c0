"""Clicks for training click queries: random cells of each image, each clicked inside.

A person adding a missed cell clicks somewhere in its middle. Training shows the decoder the same:
per image, ``per_image`` ground-truth cells are drawn (with repetition when the image has fewer),
and each is clicked at a random pixel of its inner part — where the distance to the cell's border
is at least half its largest (scipy's Euclidean distance transform, on a stride-4 view of the
mask, the resolution of the mask features the click query starts from). An image without cells
gets clicks at random points with no cell to find (target -1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["INNER_FRACTION", "sample_clicks"]

INNER_FRACTION = 0.5  # a click lies where the border distance ≥ this share of the cell's maximum
STRIDE = 4  # the mask features' stride


def _inner_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel centre ``(y, x)`` (full-resolution pixels) of the inner part of ``mask``."""
    view = mask[STRIDE // 2::STRIDE, STRIDE // 2::STRIDE]
    if view.any():
        depth = ndimage.distance_transform_edt(np.pad(view, 1))[1:-1, 1:-1]
        rows, cols = np.nonzero(depth >= INNER_FRACTION * depth.max())
        k = int(rng.integers(len(rows)))
        return (rows[k] * STRIDE + STRIDE // 2 + 0.5, cols[k] * STRIDE + STRIDE // 2 + 0.5)
    rows, cols = np.nonzero(mask)  # a cell thinner than the stride: any of its pixels
    if not len(rows):  # an empty mask: the middle of the input (its loss will teach nothing)
        return mask.shape[0] / 2, mask.shape[1] / 2
    k = int(rng.integers(len(rows)))
    return rows[k] + 0.5, cols[k] + 0.5


def sample_clicks(gt_masks: Sequence[torch.Tensor], per_image: int,
                  rng: np.random.Generator | None = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Clicks on random cells of each image of a batch.

    ``gt_masks``: one ``(N, H, W)`` tensor per image (the padded network input's size, as the
    training targets). Returns ``clicks (B, per_image, 2)`` — ``(y, x)`` fractions of the input,
    as :meth:`~napari_iaunet.model.decoder.IAUNetDecoder.decode` takes them — and per image the
    ``(per_image,)`` index of the clicked cell (-1: no cell there).
    """
    if per_image < 1:
        raise ValueError("sample_clicks: per_image must be ≥ 1")
    rng = rng if rng is not None else np.random.default_rng(int(torch.randint(2 ** 31, ())))
    clicks = torch.empty(len(gt_masks), per_image, 2)
    cells: list[torch.Tensor] = []
    for b, masks in enumerate(gt_masks):
        h, w = masks.shape[-2:]
        n = len(masks)
        if n == 0:
            clicks[b] = torch.from_numpy(rng.random((per_image, 2)).astype(np.float32))
            cells.append(torch.full((per_image,), -1, dtype=torch.int64))
            continue
        chosen = rng.choice(n, per_image, replace=n < per_image)
        host = masks[torch.as_tensor(chosen, device=masks.device)].bool().cpu().numpy()
        for k, mask in enumerate(host):
            y, x = _inner_point(mask, rng)
            clicks[b, k, 0], clicks[b, k, 1] = y / h, x / w
        cells.append(torch.as_tensor(chosen, dtype=torch.int64))
    return clicks, cells

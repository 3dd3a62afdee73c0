"""Clicks for training click queries: random cells of each image, each clicked inside.

A person adding a missed cell clicks somewhere in its middle. Training shows the decoder the same:
per image, ``per_image`` ground-truth cells are drawn (with repetition when the image has fewer),
and each is clicked at a random pixel of its inner part — where the distance to the cell's border
is at least half its largest (scipy's Euclidean distance transform, on a stride-4 view of the
mask, the resolution of the mask features the click query starts from). An image without cells
gets clicks at random points with no cell to find (target -1).

A person clicks the cells the model *missed*. With ``prefer`` (per image, the cells the model's
own segmentation misses: :func:`missed_cells`), a share of the clicks goes to those cells, so a
click decoder learns most where it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = ["INNER_FRACTION", "missed_cells", "sample_clicks", "smallest_cells_at"]

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


def missed_cells(outputs: dict[str, torch.Tensor], gt_masks: Sequence[torch.Tensor],
                 score_threshold: float = 0.5, iou_threshold: float = 0.5) -> list[torch.Tensor]:
    """Per image, which ground-truth cells the segmentation ``outputs`` (``pred_logits``,
    ``pred_masks`` of a pass without clicks) misses: no query whose score (class probability ×
    maskness, as the post-processing scores) reaches ``score_threshold`` covers the cell at
    IoU ≥ ``iou_threshold``. Compared at the masks' resolution. Returns ``(N,)`` bool tensors."""
    logits, masks = outputs["pred_logits"].detach(), outputs["pred_masks"].detach()
    missed: list[torch.Tensor] = []
    for b, gt in enumerate(gt_masks):
        if len(gt) == 0:
            missed.append(torch.zeros(0, dtype=torch.bool))
            continue
        prob = masks[b].float().sigmoid()
        binary = prob > 0.5
        area = binary.flatten(1).sum(1)
        maskness = (prob * binary).flatten(1).sum(1) / (area + 1e-6)
        cls = logits[b].float().softmax(-1)[:, :-1].max(-1).values
        kept = binary[(cls * maskness) >= score_threshold].flatten(1).float()
        if not len(kept):
            missed.append(torch.ones(len(gt), dtype=torch.bool))
            continue
        small = torch.nn.functional.interpolate(gt[None].float(), size=binary.shape[-2:],
                                                mode="area")[0].to(kept.device) > 0.5
        small = small.flatten(1).float()
        inter = small @ kept.T
        union = small.sum(1, keepdim=True) + kept.sum(1)[None] - inter
        best = (inter / union.clamp(min=1)).max(1).values
        missed.append((best < iou_threshold).cpu())
    return missed


def sample_clicks(gt_masks: Sequence[torch.Tensor], per_image: int,
                  rng: np.random.Generator | None = None,
                  prefer: Sequence[torch.Tensor] | None = None, prefer_share: float = 0.0
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Clicks on random cells of each image of a batch.

    ``gt_masks``: one ``(N, H, W)`` tensor per image (the padded network input's size, as the
    training targets). Returns ``clicks (B, per_image, 2)`` — ``(y, x)`` fractions of the input,
    as :meth:`~napari_iaunet.model.decoder.IAUNetDecoder.decode` takes them — and per image the
    ``(per_image,)`` index of the clicked cell (-1: no cell there). With ``prefer`` (per image an
    ``(N,)`` bool tensor, e.g. :func:`missed_cells`), each click lands on a preferred cell with
    probability ``prefer_share`` when the image has one, else on any cell.
    """
    if per_image < 1:
        raise ValueError("sample_clicks: per_image must be ≥ 1")
    if not 0.0 <= prefer_share <= 1.0:
        raise ValueError(f"sample_clicks: prefer_share must lie in [0, 1], got {prefer_share!r}")
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
        preferred = (np.flatnonzero(prefer[b].cpu().numpy()) if prefer is not None
                     else np.zeros(0, dtype=np.int64))
        if len(preferred) and prefer_share > 0:
            swap = rng.random(per_image) < prefer_share
            chosen = np.where(swap, rng.choice(preferred, per_image), chosen)
        host = masks[torch.as_tensor(chosen, device=masks.device)].bool().cpu().numpy()
        for k, mask in enumerate(host):
            y, x = _inner_point(mask, rng)
            clicks[b, k, 0], clicks[b, k, 1] = y / h, x / w
        cells.append(torch.as_tensor(chosen, dtype=torch.int64))
    return clicks, cells


def smallest_cells_at(gt_masks: Sequence[torch.Tensor], clicks: torch.Tensor,
                      cells: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per image, the ``(K,)`` index of the smallest cell holding each click's pixel (the target
    of ``TrainConfig.click_target="smallest"``: where cells overlap, a click has one answer, the
    smaller cell, instead of whichever cell the click was drawn for). ``clicks (B, K, 2)`` and
    ``cells`` as :func:`sample_clicks` returns them; a click on no cell keeps -1, and a click
    whose pixel no mask holds keeps its clicked cell."""
    out: list[torch.Tensor] = []
    for b, masks in enumerate(gt_masks):
        chosen = cells[b].clone()
        if len(masks) == 0:
            out.append(chosen)
            continue
        h, w = masks.shape[-2:]
        rows = (clicks[b, :, 0] * h).long().clamp(0, h - 1).to(masks.device)
        cols = (clicks[b, :, 1] * w).long().clamp(0, w - 1).to(masks.device)
        under = masks[:, rows, cols].bool()  # (N, K): which cells hold each click
        areas = masks.flatten(1).sum(1).float()
        best = areas[:, None].masked_fill(~under, float("inf")).argmin(0).cpu()
        held = under.any(0).cpu() & (chosen >= 0)
        chosen[held] = best[held]
        out.append(chosen)
    return out

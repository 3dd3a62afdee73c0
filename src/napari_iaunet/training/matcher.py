"""Hungarian matching of predicted queries to ground-truth instances.

Costs follow the IAUNet/Mask2Former recipe: ``cost_class`` × (−p(class)) + ``cost_bce`` × pairwise
sigmoid BCE + ``cost_dice`` × pairwise Dice loss, the mask terms evaluated on ``num_points``
uniformly random points shared by all predictions and ground truths of an image (bilinear
``grid_sample`` with ``align_corners=False``, so masks of any resolution compare consistently).
With PCTrans centre guidance (outputs carry ``pred_centres`` and targets ``centres``) the cost
adds ``cost_centre`` × the L1 distance between predicted and ground-truth centres.
Everything runs in float32 with autocast off; the assignment is scipy's
``linear_sum_assignment``. :meth:`HungarianMatcher.match_outputs` matches all decoder outputs of a
step at once: per image the points, and the ground truth sampled at them, are shared by every
output (the reference draws new points per output), so the costs of the 9 outputs come from one
set of tensor operations instead of nine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = [
    "HungarianMatcher",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "point_sample",
    "point_sample_indexed",
]

NUM_POINTS = 112 * 112  # 12544, the reference's value
Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, target indices)


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``inputs (N, C, H, W)`` at ``coords (N, P, 2)`` given as (x, y) in [0, 1].

    Returns ``(N, C, P)``. Bilinear, ``align_corners=False``, zeros outside.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    out = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(3)


def point_sample_indexed(masks: torch.Tensor, index: torch.Tensor, coords: torch.Tensor
                         ) -> torch.Tensor:
    """``point_sample(masks[index][:, None], coords)[:, 0]`` without copying the selected masks.

    ``masks (N, H, W)``, ``index (M,)``, ``coords (M, P, 2)`` as (x, y) in [0, 1] → ``(M, P)``.
    Bilinear with ``align_corners=False`` and zeros outside, exactly like ``grid_sample``; it
    gathers 4 values per point instead of materialising M full-resolution masks.
    """
    h, w = masks.shape[-2:]
    flat = masks.reshape(-1)
    x = coords[..., 0] * w - 0.5
    y = coords[..., 1] * h - 0.5
    x0f, y0f = x.floor(), y.floor()
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.long(), y0f.long()
    base = (index.to(masks.device).long() * (h * w))[:, None]
    out = torch.zeros_like(x, dtype=masks.dtype)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        yi = y0 + dy
        inside_y = (yi >= 0) & (yi < h)
        row = base + yi.clamp(0, h - 1) * w
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = x0 + dx
            inside = inside_y & (xi >= 0) & (xi < w)
            out += torch.take(flat, row + xi.clamp(0, w - 1)) * (wx * wy * inside)
    return out


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid BCE of every prediction ``(Q, P)`` against every target ``(N, P)`` → (Q, N)."""
    p = logits.shape[1]
    pos = F.softplus(-logits)  # BCE against 1; against 0 it is softplus(x) = pos + x
    neg = pos + logits
    return (pos @ targets.T + neg @ (1.0 - targets).T) / p


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|p∩t| + 1) / (|p| + |t| + 1)`` for every pair → (Q, N)."""
    prob = logits.sigmoid()
    inter = prob @ targets.T
    return 1.0 - (2.0 * inter + 1.0) / (prob.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1.0)


class HungarianMatcher(torch.nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted matching cost."""

    def __init__(self, cost_class: float = 1.0, cost_bce: float = 5.0, cost_dice: float = 2.0,
                 num_points: int = NUM_POINTS, cost_centre: float = 0.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bce == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all cost weights are zero")
        self.cost_class = float(cost_class)
        self.cost_bce = float(cost_bce)
        self.cost_dice = float(cost_dice)
        self.num_points = int(num_points)
        self.cost_centre = float(cost_centre)

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                    gt_masks: torch.Tensor, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """Weighted cost ``(Q, N)`` for one image.

        ``logits (Q, C+1)``, ``masks (Q, h, w)`` logits, ``labels (N,)``, ``gt_masks (N, H, W)``.
        """
        return self.cost_matrices(logits[None], masks[None], labels, gt_masks, generator)[0]

    def cost_matrices(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                      gt_masks: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """Weighted costs ``(L, Q, N)`` of ``L`` decoder outputs for one image, at one shared
        set of random points (the ground truth is sampled once for all outputs).

        ``logits (L, Q, C+1)``, ``masks (L, Q, h, w)`` logits, ``labels (N,)``,
        ``gt_masks (N, H, W)``.
        """
        logits, masks = logits.float(), masks.float()
        cost = -logits.softmax(-1)[..., labels] * self.cost_class  # (L, Q, N)
        if self.cost_bce or self.cost_dice:
            n_out, n_q = masks.shape[:2]
            coords = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
            gt = point_sample(gt_masks[None].float(), coords)[0]  # (N, P)
            pr = point_sample(masks.reshape(1, n_out * n_q, *masks.shape[-2:]), coords)[0]
            if self.cost_bce:
                cost = cost + self.cost_bce * pairwise_sigmoid_bce(pr, gt).view(n_out, n_q, -1)
            if self.cost_dice:
                cost = cost + self.cost_dice * pairwise_dice(pr, gt).view(n_out, n_q, -1)
        return torch.nan_to_num(cost, nan=0.0)

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
                generator: torch.Generator | None = None) -> list[Match]:
        """Match one decoder output (``pred_logits (B, Q, C+1)``, ``pred_masks (B, Q, h, w)``).

        ``targets[b]`` holds ``labels (N,)`` and ``masks (N, H, W)``. Returns, per image, the
        matched (query indices, target indices) as int64 tensors, sorted by query.
        """
        return self.match_outputs([outputs], targets, generator)[0]

    @torch.no_grad()
    def match_outputs(self, outputs: Sequence[dict[str, torch.Tensor]],
                      targets: Sequence[dict[str, torch.Tensor]],
                      generator: torch.Generator | None = None) -> list[list[Match]]:
        """Match every decoder output in ``outputs`` (deep supervision) in one pass.

        Per image, the cost matrices of all outputs come from one batch of tensor operations
        (:meth:`cost_matrices`); each output is then assigned on its own. Returns
        ``result[l][b]`` = (query indices, target indices) of output ``l``, image ``b``.
        """
        n_out = len(outputs)
        result: list[list[Match]] = [[] for _ in range(n_out)]
        device_type = outputs[0]["pred_logits"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            for b, tgt in enumerate(targets):
                labels = tgt["labels"]
                if labels.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    for per_output in result:
                        per_output.append((empty, empty.clone()))
                    continue
                logits = torch.stack([out["pred_logits"][b] for out in outputs])
                # (L, Q, h, w) laid out channels-last (pixel-major): sampling all L×Q maps at
                # the same points then reads contiguous memory (2x faster on the CPU)
                masks = torch.stack([out["pred_masks"][b].permute(1, 2, 0) for out in outputs],
                                    dim=2).permute(2, 3, 0, 1)
                costs = self.cost_matrices(logits, masks, labels, tgt["masks"], generator)
                if self.cost_centre and "centres" in tgt and all(
                        "pred_centres" in out for out in outputs):
                    centres = torch.stack([out["pred_centres"][b] for out in outputs]).float()
                    gt_centres = tgt["centres"].float()[None].expand(n_out, -1, -1)
                    costs = costs + self.cost_centre * torch.cdist(centres, gt_centres, p=1)
                costs_np = costs.cpu().numpy()
                for per_output, cost in zip(result, costs_np):
                    rows, cols = linear_sum_assignment(cost)
                    per_output.append((torch.as_tensor(rows, dtype=torch.int64),
                                       torch.as_tensor(np.asarray(cols), dtype=torch.int64)))
        return result

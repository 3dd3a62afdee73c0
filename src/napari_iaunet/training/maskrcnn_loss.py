"""Mask R-CNN training loss: torchvision's own losses, from the engine's training targets.

The :class:`~napari_iaunet.training.dataset.TrainingDataset` gives every family the same target:
``{"labels" (N,) class ids 0…C-1, "masks" (N, S, S) bool}``. Mask R-CNN also needs boxes and
counts classes from 1 (0 is its background), so :func:`rcnn_targets` derives
``{"boxes" (N, 4) xyxy, "labels" 1…C, "masks" uint8}``; the model in train mode then returns
torchvision's five losses (RPN objectness and box regression, box classifier and regression,
mask BCE), summed with weight 1 as in torchvision's reference recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torchvision.ops import masks_to_boxes

__all__ = ["MASKRCNN_LOSS_KEYS", "maskrcnn_training_loss", "maskrcnn_training_losses",
           "rcnn_targets"]

MASKRCNN_LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                      "loss_rpn_box_reg")


def rcnn_targets(targets: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Engine targets → torchvision detection targets (empty masks are dropped).

    Boxes are in pixel-edge coordinates: a mask covering columns ``a … b`` gives ``x0 = a``,
    ``x1 = b + 1``, so a one-pixel cell still has a box of positive size.
    """
    out = []
    for t in targets:
        masks = t["masks"].bool()
        labels = t["labels"]
        if masks.numel():
            present = masks.flatten(1).any(dim=1)
            masks, labels = masks[present], labels[present]
        if len(masks):
            boxes = masks_to_boxes(masks).float()
            boxes[:, 2:] += 1.0
        else:
            boxes = torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
        out.append({"boxes": boxes, "labels": labels.long() + 1, "masks": masks.to(torch.uint8)})
    return out


def maskrcnn_training_losses(
    net: torch.nn.Module,
    images: torch.Tensor,
    targets: Sequence[dict[str, torch.Tensor]],
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, torch.Tensor]:
    """One training forward pass of a Mask R-CNN (``net`` may be DDP-wrapped) in train mode:
    torchvision's loss terms (float32) and their sum ``"loss"``."""
    with autocast():
        losses = net(list(images), rcnn_targets(targets))
    losses = {k: v.float() for k, v in losses.items()}
    losses["loss"] = torch.stack(list(losses.values())).sum()
    return losses


def maskrcnn_training_loss(model_config: Any, cfg: Any, device: torch.device
                           ) -> tuple[Callable[..., dict[str, torch.Tensor]], tuple[str, ...]]:
    """Mask R-CNN's training loss for the registry: torchvision's terms, nothing to configure."""
    return maskrcnn_training_losses, MASKRCNN_LOSS_KEYS

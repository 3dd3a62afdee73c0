"""What the query-based networks accept as input."""

from __future__ import annotations

import torch

__all__ = ["check_images"]


def check_images(images: torch.Tensor, model_name: str) -> None:
    """Raise a clear ``ValueError`` unless ``images`` is ``(B, C, H, W)`` with ``H``, ``W``
    multiples of 32 (what the query-based models take)."""
    if images.dim() != 4:
        raise ValueError(f"{model_name} expects (B, 3, H, W) images, got shape "
                         f"{tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % 32 or width % 32:
        raise ValueError(f"{model_name} needs H and W divisible by 32, got {height}x{width}")

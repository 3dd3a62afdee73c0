"""Convolutional building blocks of the IAUNet pixel decoder.

Attribute names follow the authors' state-dict keys (reference memo, section 6) so that
their checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DoubleConv", "MaskBranch", "SEBlock", "coordinate_channels"]


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """CoordConv channels for a ``(B, C, H, W)`` map: ``(B, 2, H, W)`` in ``[-1, 1]``.

    Channel 0 is x (varies along the width), channel 1 is y (varies along the height).
    Works for any ``H`` and ``W`` (the reference only supports square maps).
    """
    batch, _, height, width = x.shape
    xs = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    x_map = xs.view(1, 1, 1, width).expand(batch, 1, height, width)
    y_map = ys.view(1, 1, height, 1).expand(batch, 1, height, width)
    return torch.cat([x_map, y_map], dim=1)


class DoubleConv(nn.Module):
    """Two depthwise-separable convs (dw3x3 -> pw1x1 -> BN -> ReLU) plus a projected residual.

    ``out = block2(block1(x)) + projection(x)``; the projection is a 1x1 conv (identity when
    ``in_channels == out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise_conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise_conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.norm_relu1 = nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.depthwise_conv2 = nn.Conv2d(
            out_channels, out_channels, 3, padding=1, groups=out_channels
        )
        self.pointwise_conv2 = nn.Conv2d(out_channels, out_channels, 1)
        self.norm_relu2 = nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.projection: nn.Module = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_relu1(self.pointwise_conv1(self.depthwise_conv1(x)))
        y = self.norm_relu2(self.pointwise_conv2(self.depthwise_conv2(y)))
        return y + self.projection(x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: avg-pool -> Linear -> ReLU -> Linear -> Sigmoid -> channel scale."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = channels // reduction
        self.excite = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.excite(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class MaskBranch(nn.Module):
    """Mask branch G_m: ``num_convs`` x [Conv3x3 -> BN -> ReLU] at constant width."""

    def __init__(self, channels: int, num_convs: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_convs):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.mask_convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_convs(x)

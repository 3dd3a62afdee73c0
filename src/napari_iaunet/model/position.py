"""Sine positional encoding of 2-D feature maps (DETR style)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "sine_embed_points"]


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of pixel positions, ``2 * num_pos_feats`` channels.

    The first ``num_pos_feats`` channels encode y (row), the rest encode x (column); with
    ``normalize`` the cumulative positions are scaled to ``(0, scale]`` per axis, so height and
    width are handled independently (non-square maps work). Holds no tensors.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for a ``(B, C, H, W)`` map, returned as ``(B, 2 * num_pos_feats, H, W)``."""
        batch, _, height, width = x.shape
        pos_y, pos_x = self.axes(height, width, x.device)
        pos = torch.cat(
            [
                pos_y[:, None, :].expand(height, width, self.num_pos_feats),
                pos_x[None, :, :].expand(height, width, self.num_pos_feats),
            ],
            dim=2,
        )  # (H, W, 2F)
        pos = pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
        return pos.to(x.dtype)

    def axes(self, height: int, width: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The row encodings ``(H, F)`` and column encodings ``(W, F)`` (float32): pixel
        ``(y, x)`` of the map is encoded as ``cat(rows[y], columns[x])``."""
        # Computed in float32 whatever the input dtype (autocast).
        y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)
        x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[-1] + eps) * self.scale
            x_embed = x_embed / (x_embed[-1] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        return (self._interleave_sin_cos(y_embed[:, None] / dim_t),
                self._interleave_sin_cos(x_embed[:, None] / dim_t))

    def sample(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, K, 2F)`` float32: the encoding of an ``H × W`` map bilinearly sampled at
        ``points (B, K, 2)``, ``(y, x)`` fractions of the map (0 = top/left edge, 1 =
        bottom/right edge), zero outside the map: what ``grid_sample`` (``align_corners=False``)
        of :meth:`forward`'s map gives, without building the map."""
        rows, columns = self.axes(height, width, points.device)
        y = points[..., 0].float() * height - 0.5  # pixel-centre coordinates
        x = points[..., 1].float() * width - 0.5
        row_enc, row_inside = _linear_sample(rows, y)
        col_enc, col_inside = _linear_sample(columns, x)
        # A y-channel is constant along x: outside columns only scale it (zero padding).
        return torch.cat([row_enc * col_inside[..., None], col_enc * row_inside[..., None]], -1)

    @staticmethod
    def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
        """``sin`` of the even feature indices and ``cos`` of the odd ones, interleaved."""
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)


def sine_embed_points(points: torch.Tensor, num_pos_feats: int = 128,
                      temperature: float = 10000.0, scale: float = 2 * math.pi) -> torch.Tensor:
    """Sine encoding of normalised ``(..., 2)`` points given as (x, y) in [0, 1].

    Returns ``(..., 2 * num_pos_feats)``: y first, then x, with the same frequencies and
    ``2π`` scale as :class:`PositionEmbeddingSine` with ``normalize=True``, so a point encodes
    like the pixel it lies on.
    """
    shape = points.shape[:-1]
    flat = points.reshape(-1, 2).float() * scale
    dim_t = torch.arange(num_pos_feats, device=points.device, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = PositionEmbeddingSine._interleave_sin_cos(flat[:, 0:1] / dim_t)
    pos_y = PositionEmbeddingSine._interleave_sin_cos(flat[:, 1:2] / dim_t)
    return torch.cat([pos_y, pos_x], dim=1).reshape(*shape, 2 * num_pos_feats).to(points.dtype)


def _linear_sample(table: torch.Tensor, coords: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``table (N, F)`` linearly interpolated at pixel coordinates ``coords (...)``
    with zero padding, and the weight that fell inside ``[0, N)``."""
    low = coords.floor()
    frac = coords - low
    low = low.long()
    values = coords.new_zeros((*coords.shape, table.shape[1]))
    inside = coords.new_zeros(coords.shape)
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        valid = (index >= 0) & (index < table.shape[0])
        weight = weight * valid
        values = values + weight[..., None] * table[index.clamp(0, table.shape[0] - 1)]
        inside = inside + weight
    return values, inside

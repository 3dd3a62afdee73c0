"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, and the PCTrans pixel
decoder built from it.

Each query looks at ``n_points`` learned sampling locations per head and per feature level,
placed around its reference point; the sampled values (bilinear, ``F.grid_sample``) are summed
with softmax weights that the query predicts. No compiled extension is needed: the sampling is
one ``grid_sample`` per level, so it runs on any device PyTorch runs on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .position import PositionEmbeddingSine

__all__ = [
    "DeformableEncoderLayer",
    "DeformablePixelDecoder",
    "MSDeformAttn",
    "deformable_sample",
]

GROUPS = 32  # GroupNorm groups of the input projections (Mask2Former's choice)


def deformable_sample(value: torch.Tensor, shapes: Sequence[tuple[int, int]],
                      locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples of multi-level values.

    Args:
        value: ``(B, sum(h*w), heads, C)`` values of all levels, flattened level after level.
        shapes: ``(h, w)`` of each level.
        locations: ``(B, Lq, heads, levels, points, 2)`` sampling positions as (x, y) in [0, 1]
            of each level's map (outside: zeros).
        weights: ``(B, Lq, heads, levels, points)`` attention weights.

    Returns:
        ``(B, Lq, heads * C)``.
    """
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1]
    sampled = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w]  # (B, hw, heads, C)
        start += h * w
        v = v.permute(0, 2, 3, 1).reshape(batch * heads, channels, h, w)
        g = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B*heads, C, Lq, points)
    stacked = torch.stack(sampled, dim=3)  # (B*heads, C, Lq, levels, points)
    w = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    out = (stacked * w.to(stacked.dtype)).sum(dim=(3, 4))  # (B*heads, C, Lq)
    return out.view(batch, heads * channels, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: ``n_heads`` x ``n_levels`` x ``n_points`` samples per
    query around its reference point, offsets and weights predicted from the query."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8,
                 n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model {d_model} must be divisible by n_heads "
                             f"{n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model, n_levels, n_heads, n_points)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's start: each head samples along its own direction, point k at k
        pixels away, with equal weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor,
                value: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Attend from ``query`` ``(B, Lq, C)`` with ``reference_points`` ``(B, Lq, levels, 2)``
        ((x, y) in [0, 1]) to ``value`` ``(B, sum(h*w), C)`` of the levels ``shapes``."""
        batch, queries, _ = query.shape
        if len(shapes) != self.n_levels:
            raise ValueError(f"MSDeformAttn: {len(shapes)} levels, built for {self.n_levels}")
        if value.shape[1] != sum(h * w for h, w in shapes):
            raise ValueError("MSDeformAttn: value length does not match the level shapes")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value).view(batch, -1, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        # offsets are in pixels of each level: divide by that level's (w, h)
        size = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype,
                            device=offsets.device)
        locations = (reference_points[:, :, None, :, None, :].to(offsets.dtype)
                     + offsets / size[None, None, None, :, None, :])
        return self.output_proj(deformable_sample(v, shapes, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int,
                 dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        attended = self.self_attn(src + pos, reference_points, src, shapes)
        src = self.norm1(src + self.dropout(attended))
        hidden = self.dropout(F.relu(self.linear1(src)))
        return self.norm2(src + self.dropout(self.linear2(hidden)))


def _reference_points(shapes: Sequence[tuple[int, int]], batch: int, n_levels: int,
                      device: torch.device) -> torch.Tensor:
    """Every token's own pixel centre as (x, y) in [0, 1], the same on each level:
    ``(B, sum(h*w), levels, 2)``."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=-1))
    ref = torch.cat(points)  # (sum hw, 2)
    return ref[None, :, None, :].expand(batch, -1, n_levels, -1)


class DeformablePixelDecoder(nn.Module):
    """PCTrans' pixel decoder: a deformable-attention encoder over the 1/8-1/32 features, then
    a lateral 1/4 connection for the mask features (Mask2Former's layout).

    ``forward([f4, f8, f16, f32])`` returns the memories at strides 32, 16, 8 (the order the
    IAUNet transformer decoder visits them) and the ``mask_dim`` mask features at stride 4.
    """

    def __init__(self, encoder_channels: Sequence[int], hidden_dim: int = 256,
                 mask_dim: int = 256, num_heads: int = 8, num_layers: int = 6,
                 num_points: int = 4, dim_feedforward: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        if len(encoder_channels) != 4:
            raise ValueError("encoder_channels: need 4 values (strides 4, 8, 16, 32)")
        if hidden_dim % GROUPS:
            raise ValueError(f"hidden_dim must be a multiple of {GROUPS} (GroupNorm groups)")
        if mask_dim != hidden_dim:
            raise ValueError("mask_dim must equal hidden_dim (the 1/8 memory joins the mask "
                             "features)")
        levels = 3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(GROUPS, hidden_dim))
            for c in encoder_channels[1:][::-1])  # f32, f16, f8
        self.level_embed = nn.Parameter(torch.zeros(levels, hidden_dim))
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(hidden_dim, levels, num_heads, num_points, dim_feedforward,
                                   dropout) for _ in range(num_layers))
        self.lateral_conv = nn.Sequential(nn.Conv2d(encoder_channels[0], mask_dim, 1),
                                          nn.GroupNorm(GROUPS, mask_dim))
        self.output_conv = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1),
                                         nn.GroupNorm(GROUPS, mask_dim), nn.ReLU(inplace=True))
        self.num_levels = levels
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        nn.init.normal_(self.level_embed)

    def forward(self, features: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Memories ``[(B, D, H/32, W/32), (B, D, H/16, W/16), (B, D, H/8, W/8)]`` and mask
        features ``(B, mask_dim, H/4, W/4)``."""
        f4 = features[0]
        maps = [proj(f) for proj, f in zip(self.input_proj, list(features[1:])[::-1],
                                           strict=True)]
        shapes = [tuple(m.shape[-2:]) for m in maps]
        batch = f4.shape[0]
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        pos = torch.cat([(self.pe_layer(m) + self.level_embed[i].view(1, -1, 1, 1).to(m.dtype))
                         .flatten(2).transpose(1, 2) for i, m in enumerate(maps)], dim=1)
        ref = _reference_points(shapes, batch, self.num_levels, f4.device)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        memories, start = [], 0
        for h, w in shapes:
            memories.append(src[:, start:start + h * w].transpose(1, 2)
                            .reshape(batch, -1, h, w))
            start += h * w
        fine = F.interpolate(memories[-1], size=f4.shape[-2:], mode="bilinear",
                             align_corners=False)
        mask_features = self.output_conv(self.lateral_conv(f4) + fine)
        return memories, mask_features

"""Post-norm transformer decoder layers (cross-attention, self-attention, FFN).

Tensors are batch-first: queries ``(B, Q, C)``, memories ``(B, HW, C)``. Attention uses
``nn.MultiheadAttention`` without returning weights, so PyTorch takes its fused
scaled-dot-product-attention path.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "CrossAttentionLayer", "FFNLayer", "SelfAttentionLayer"]


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter with more than one dimension."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class CrossAttentionLayer(nn.Module):
    """Queries attend to a pixel memory: ``q = LN(q + Dropout(MHA(q + q_pos, m + m_pos, m)))``."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        query_pos: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``attn_mask`` (B·heads, Q, HW), True where a query may not attend (masked
        attention)."""
        attended = self.multihead_attn(
            query=queries + query_pos,
            key=memory + memory_pos,
            value=memory,
            attn_mask=attn_mask,
            need_weights=False,
        )[0]
        return self.norm(queries + self.dropout(attended))

    def project_memory(self, memory: torch.Tensor, memory_pos: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention's keys and values of a memory ``(B, HW, C)`` each: what every query
        attending to it shares, so a memory attended to again and again (clicks answered from
        a kept context) is projected once (:meth:`attend_projected`)."""
        d = memory.shape[-1]
        weight, bias = self.multihead_attn.in_proj_weight, self.multihead_attn.in_proj_bias
        keys = F.linear(memory + memory_pos, weight[d:2 * d], bias[d:2 * d])
        values = F.linear(memory, weight[2 * d:], bias[2 * d:])
        return keys, values

    def attend_projected(self, queries: torch.Tensor, keys_values: tuple[torch.Tensor, ...],
                         query_pos: torch.Tensor, attn_mask: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """:meth:`forward` over a memory given as :meth:`project_memory`'s keys and values
        (the same result in eval mode; no attention dropout)."""
        mha = self.multihead_attn
        batch, count, d = queries.shape
        heads = mha.num_heads
        q = F.linear(queries + query_pos, mha.in_proj_weight[:d], mha.in_proj_bias[:d])

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.view(batch, t.shape[1], heads, d // heads).transpose(1, 2)

        keys, values = keys_values
        allowed = None if attn_mask is None else ~attn_mask.view(batch, heads, count, -1)
        attended = F.scaled_dot_product_attention(split(q), split(keys), split(values),
                                                  attn_mask=allowed)
        attended = mha.out_proj(attended.transpose(1, 2).reshape(batch, count, d))
        return self.norm(queries + self.dropout(attended))


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other: ``q = LN(q + Dropout(MHA(q + q_pos, q + q_pos, q)))``."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            d_model, num_heads, dropout=dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor,
                attn_mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_pos: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask`` (Q, Q), True where a query may not attend (separate query groups).

        ``context (B, Q', C)`` with ``context_pos``: queries these attend to besides each one
        itself, not updated here (a click query beside the learned queries; then every query
        sees the whole context and only itself, and ``attn_mask`` must be None)."""
        q = queries + query_pos
        k, value = q, queries
        if context is not None:
            if attn_mask is not None:
                raise ValueError("SelfAttentionLayer: give attn_mask or context, not both")
            n, m = queries.shape[1], context.shape[1]
            k = torch.cat([context + context_pos, q], 1)
            value = torch.cat([context, queries], 1)
            if n > 1:  # each query sees the context and itself only
                attn_mask = torch.ones(n, m + n, dtype=torch.bool, device=queries.device)
                attn_mask[:, :m] = False
                attn_mask[:, m:].fill_diagonal_(False)
        attended = self.self_attn(q, k, value=value, attn_mask=attn_mask,
                                  need_weights=False)[0]
        return self.norm(queries + self.dropout(attended))


class FFNLayer(nn.Module):
    """``q = LN(q + Dropout(Linear2(Dropout(ReLU(Linear1(q))))))``."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(F.relu(self.linear1(queries)))
        return self.norm(queries + self.dropout(self.linear2(hidden)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box-head MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

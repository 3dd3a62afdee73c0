"""PCTrans options for the IAUNet decoder: centre guidance and a dynamic (CondInst) mask head.

Both are built only when :class:`~napari_iaunet.model.config.IAUNetConfig` asks for them
(``centre_guidance``, ``dynamic_mask_head``); a plain IAUNet holds none of these parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .position import sine_embed_points
from .transformer import MLP

__all__ = ["CentreGuidance", "DynamicMaskHead", "inverse_sigmoid"]

PIXEL_EMBED_CHANNELS = 16
DYNAMIC_WIDTH = 8


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped away from 0 and 1."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


class CentreGuidance(nn.Module):
    """Per-query instance centres, refined layer by layer, that condition cross-attention.

    Centres are kept as logits (inverse sigmoid of normalised (x, y) on the padded input);
    every transformer block adds a delta predicted by ``head`` from its normed queries (the
    previous centre detached, as in Deformable DETR's iterative refinement). Before each
    cross-attention the query position gets ``query_scale(q) * pos_mlp(sine(centre))``
    (Conditional-DETR style), so each query looks around its own centre.
    """

    def __init__(self, num_queries: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.reference_points = nn.Embedding(num_queries, 2)
        self.head = MLP(hidden_dim, hidden_dim, 2, 3)
        self.pos_mlp = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        with torch.no_grad():  # initial centres spread over the image, zero first deltas
            self.reference_points.weight.copy_(
                inverse_sigmoid(torch.rand(num_queries, 2) * 0.9 + 0.05))
        nn.init.zeros_(self.head.layers[-1].weight)
        nn.init.zeros_(self.head.layers[-1].bias)

    def initial(self, batch: int) -> torch.Tensor:
        """Learned starting centres ``(B, Q, 2)`` as logits."""
        return self.reference_points.weight.unsqueeze(0).repeat(batch, 1, 1)

    def query_position(self, queries: torch.Tensor, query_pos: torch.Tensor,
                       centre_logits: torch.Tensor) -> torch.Tensor:
        """Cross-attention query position: ``query_pos`` plus the conditioned centre encoding."""
        embed = sine_embed_points(centre_logits.sigmoid(), self.hidden_dim // 2).to(queries.dtype)
        return query_pos + self.query_scale(queries) * self.pos_mlp(embed)

    def refine(self, normed: torch.Tensor, centre_logits: torch.Tensor) -> torch.Tensor:
        """Next centre logits from the block's normed queries ``(B, Q, D)``."""
        return centre_logits.detach() + self.head(normed).float()


class DynamicMaskHead(nn.Module):
    """CondInst-style mask head: per-query generated weights for three 1x1 convs.

    A 16-channel pixel embedding (1x1 conv of the mask features) is concatenated with each
    pixel's coordinates relative to the query's centre (normalised units of the padded input),
    then ``18 → 8 → 8 → 1`` 1x1 convs with ReLU whose weights and biases the ``controller``
    generates from the query. Runs for all queries at once with einsum.
    """

    def __init__(self, mask_dim: int, hidden_dim: int) -> None:
        super().__init__()
        c_in = PIXEL_EMBED_CHANNELS + 2
        w = DYNAMIC_WIDTH
        self.shapes = [(w, c_in), (w, w), (1, w)]
        self.num_params = sum(o * i + o for o, i in self.shapes)
        self.pixel_embed = nn.Conv2d(mask_dim, PIXEL_EMBED_CHANNELS, 1)
        self.controller = nn.Linear(hidden_dim, self.num_params)

    def split(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(B, Q, num_params)`` → per conv: weight ``(B, Q, out, in)``, bias ``(B, Q, out)``."""
        out, start = [], 0
        b, q = params.shape[:2]
        for o, i in self.shapes:
            weight = params[..., start:start + o * i].reshape(b, q, o, i)
            start += o * i
            bias = params[..., start:start + o]
            start += o
            out.append((weight, bias))
        return out

    def forward(self, normed: torch.Tensor, pixel_embed: torch.Tensor,
                centres: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, Q, h, w)`` from normed queries ``(B, Q, D)``, the pixel embedding
        ``(B, 16, h, w)`` and the centres ``(B, Q, 2)`` as (x, y) in [0, 1]."""
        (w1, b1), (w2, b2), (w3, b3) = self.split(self.controller(normed))
        h, w = pixel_embed.shape[-2:]
        dtype = pixel_embed.dtype
        xs = (torch.arange(w, device=pixel_embed.device, dtype=torch.float32) + 0.5) / w
        ys = (torch.arange(h, device=pixel_embed.device, dtype=torch.float32) + 0.5) / h
        grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])  # (2,h,w)
        w1_feat, w1_xy = w1[..., :PIXEL_EMBED_CHANNELS], w1[..., PIXEL_EMBED_CHANNELS:]
        # conv1 on [embed, grid - centre] = W_f·embed + W_xy·grid - W_xy·centre, no (B,Q,18,h,w)
        offset = b1 - torch.einsum("bqoc,bqc->bqo", w1_xy, centres.to(w1_xy.dtype))
        x = (torch.einsum("bqoc,bchw->bqohw", w1_feat, pixel_embed)
             + torch.einsum("bqoc,chw->bqohw", w1_xy, grid.to(dtype))
             + offset[..., None, None])
        x = F.relu(x)
        x = F.relu(torch.einsum("bqoc,bqchw->bqohw", w2, x) + b2[..., None, None])
        return torch.einsum("bqoc,bqchw->bqohw", w3, x)[:, :, 0] + b3[..., 0, None, None]

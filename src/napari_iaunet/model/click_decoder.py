"""A click decoder of its own: the transformer blocks and heads that answer click queries.

Without it, a click query runs through the same transformer blocks and heads as the learned
queries, so training the model to answer clicks also changes its segmentation (measured:
validation AP 0.228 → 0.185 after a click-only fine-tune, docs/plugin.md). With it
(``IAUNetConfig.click_decoder``), clicks have their own copy of those blocks and heads, started
from the segmentation's and trained alone (``TrainConfig.train_click_decoder``): the encoder, the
pixel decoder and every weight the segmentation uses stay exactly as they were. A click query
still sees the learned queries (as each segmentation block left them) and the same pixel memories;
only what it does with them is its own.

With ``exclusion`` (``IAUNetConfig.click_exclusion``) it is also told what is already there: a
person clicks *add* where the model missed a cell, often inside a cell it found wrongly (two cells
merged into one, a fragment). The mask features under the accepted cells at the click, averaged,
go through one linear layer (zero-initialised, no bias) and are added to the click query, so
the decoder can answer "not that one, the cell under my click".
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .transformer import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["ClickDecoder"]


class ClickDecoder(nn.Module):
    """Cross-attention, self-attention and FFN layers (one of each per transformer block) plus
    the final norm and the class and mask heads, used by click queries only."""

    def __init__(self, cross_attention_layers: nn.ModuleList, self_attention_layers: nn.ModuleList,
                 ffn_layers: nn.ModuleList, decoder_norm: nn.LayerNorm, class_embed: nn.Linear,
                 mask_embed: nn.Linear) -> None:
        super().__init__()
        self.cross_attention_layers = cross_attention_layers
        self.self_attention_layers = self_attention_layers
        self.ffn_layers = ffn_layers
        self.decoder_norm = decoder_norm
        self.class_embed = class_embed
        self.mask_embed = mask_embed
        self.exclude_embed: nn.Linear | None = None

    def add_exclusion(self) -> nn.Linear:
        """Let clicks see the accepted cells under them (see the module docstring): a
        zero-initialised projection, so answers stay the same until it is trained."""
        if self.exclude_embed is None:
            mask_dim, hidden_dim = self.mask_embed.out_features, self.mask_embed.in_features
            self.exclude_embed = nn.Linear(mask_dim, hidden_dim, bias=False)
            nn.init.zeros_(self.exclude_embed.weight)
            self.exclude_embed.to(self.mask_embed.weight.device, self.mask_embed.weight.dtype)
        return self.exclude_embed

    def excluded(self, mask_features: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        """What to add to click queries ``(B, K, D)`` told the accepted cells ``exclude (B, K,
        h, w)`` (1 inside, at the mask features' resolution; all 0 where nothing is there:
        nothing is added)."""
        if self.exclude_embed is None:
            raise ValueError("this click decoder was not built to see accepted cells "
                             "(IAUNetConfig.click_exclusion)")
        if exclude.shape[0] != mask_features.shape[0] or exclude.shape[-2:] != \
                mask_features.shape[-2:]:
            raise ValueError(f"exclude must be (batch, K, {mask_features.shape[-2]}, "
                             f"{mask_features.shape[-1]}), got {tuple(exclude.shape)}")
        weights = exclude.to(mask_features.dtype)
        pooled = torch.einsum("bkhw,bchw->bkc", weights, mask_features)
        pooled = pooled / weights.flatten(2).sum(-1, keepdim=True).clamp(min=1.0)
        return self.exclude_embed(pooled)

    @classmethod
    def build(cls, num_layers: int, hidden_dim: int, mask_dim: int, num_heads: int,
              dim_feedforward: int, dropout: float, num_classes: int, exclusion: bool = False
              ) -> ClickDecoder:
        """A newly initialised click decoder (its weights come from a checkpoint, or
        :meth:`copy_of` makes a trained one); ``exclusion``: with :meth:`add_exclusion`."""
        new = cls(
            nn.ModuleList(CrossAttentionLayer(hidden_dim, num_heads, dropout)
                          for _ in range(num_layers)),
            nn.ModuleList(SelfAttentionLayer(hidden_dim, num_heads, dropout)
                          for _ in range(num_layers)),
            nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward, dropout)
                          for _ in range(num_layers)),
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, num_classes + 1),
            nn.Linear(hidden_dim, mask_dim))
        if exclusion:
            new.add_exclusion()
        return new

    @classmethod
    def copy_of(cls, decoder: nn.Module) -> ClickDecoder:
        """A click decoder holding copies of ``decoder``'s blocks and heads (an
        :class:`~napari_iaunet.model.decoder.IAUNetDecoder`; not imported here, which imports
        this module): it answers clicks exactly as ``decoder`` does until it is trained."""
        parts = (decoder.transformer_instance_cross_attention_layers,
                 decoder.transformer_instance_self_attention_layers,
                 decoder.transformer_instance_ffn_layers, decoder.decoder_norm,
                 decoder.class_embed, decoder.mask_embed)
        new = cls(*(copy.deepcopy(part) for part in parts))
        return new.requires_grad_(True)

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Class logits (B, K, C+1) and mask logits (B, K, h, w) of click queries (B, K, D)."""
        normed = self.decoder_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed), mask_features)
        return {"pred_logits": self.class_embed(normed).float(), "pred_masks": masks.float()}

"""The IAUNet decoder: pixel decoder, transformer decoder and prediction heads.

Module names are flat and match the authors' state-dict keys (reference memo, section 6),
including the modules their forward never uses (``fc``, ``objectness``, ``bbox_pred``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import DoubleConv, MaskBranch, SEBlock, coordinate_channels
from .click_decoder import ClickDecoder
from .pctrans_heads import CentreGuidance, DynamicMaskHead
from .position import PositionEmbeddingSine
from .transformer import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["ClickContext", "IAUNetDecoder"]

NUM_LEVELS = 3  # pixel-decoder levels at strides 32, 16, 8
COORD_CHANNELS = 2
CLASS_PRIOR_PROB = 0.01


@dataclass
class ClickContext:
    """What answering clicks later needs from one forward pass (:meth:`IAUNetDecoder.decode`
    with ``keep_context=True``): the flattened pixel memories with their position embeddings,
    the stride-4 mask features, and the learned queries as each block's self-attention saw them.
    The learned queries never see a click query, so with these a click is answered by the click
    query alone (:meth:`IAUNetDecoder.answer_clicks`), not a new pass of all queries."""

    memories: list[torch.Tensor]  # (B, HW, D) per level (strides 32, 16, 8)
    memory_pos: list[torch.Tensor]
    memory_shapes: list[tuple[int, int]]
    mask_features: torch.Tensor  # (B, D, H/4, W/4)
    learned: list[torch.Tensor]  # (B, Q, D) per block: the learned queries entering self-attention
    learned_pos: torch.Tensor  # (B, Q, D)
    # Each block's cross-attention keys and values of its memory (IAUNetDecoder.prepare_context):
    # projected once instead of at every click; None until prepared.
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def select(self, i: int) -> ClickContext:
        """Image ``i`` of the batch."""
        return self.map(lambda t: t[i:i + 1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> ClickContext:
        """On another device / in another float type (float16 keeps half the memory)."""
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def map(self, fn: Any) -> ClickContext:
        """Every tensor passed through ``fn``."""
        keys_values = (None if self.keys_values is None
                       else [(fn(k), fn(v)) for k, v in self.keys_values])
        return ClickContext([fn(t) for t in self.memories], [fn(t) for t in self.memory_pos],
                            list(self.memory_shapes), fn(self.mask_features),
                            [fn(t) for t in self.learned], fn(self.learned_pos), keys_values)

    @property
    def nbytes(self) -> int:
        tensors = [*self.memories, *self.memory_pos, self.mask_features, *self.learned,
                   self.learned_pos, *(t for pair in self.keys_values or [] for t in pair)]
        return int(sum(t.numel() * t.element_size() for t in tensors))


class IAUNetDecoder(nn.Module):
    """Pixel decoder (3 levels) + 3 x ``dec_layers`` transformer blocks + heads.

    ``forward(features)`` takes the encoder features ``[f4, f8, f16, f32]`` and returns the
    predictions of every transformer block (see :meth:`forward`).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int = 1,
        num_queries: int = 100,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_heads: int = 8,
        dec_layers: int = 3,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        centre_guidance: bool = False,
        dynamic_mask_head: bool = False,
        contrast_losses: bool = False,
        unet_pixel_decoder: bool = True,
        query_groups: int = 1,
        masked_attention: bool = False,
        click_decoder: bool = False,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 4:
            raise ValueError("encoder_channels: need 4 values (strides 4, 8, 16, 32)")
        if mask_dim != hidden_dim:
            raise ValueError(
                "mask_dim must equal hidden_dim (the 1/8 memory joins the mask features)"
            )
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.dec_layers = dec_layers
        if query_groups < 1 or (query_groups > 1 and centre_guidance):
            raise ValueError("query_groups must be ≥ 1, and 1 with centre_guidance")
        self.query_groups = query_groups  # training only: see IAUNetConfig.query_groups
        self.num_heads = num_heads
        self.masked_attention = masked_attention  # see IAUNetConfig.masked_attention

        # --- pixel decoder (PCTrans brings its own: unet_pixel_decoder=False) ------------------
        self.has_pixel_decoder = unet_pixel_decoder
        if unet_pixel_decoder:
            self._build_pixel_decoder(encoder_channels, hidden_dim, mask_dim)

        # --- transformer decoder -------------------------------------------------------------
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        num_layers = NUM_LEVELS * dec_layers
        self.transformer_instance_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.transformer_instance_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.transformer_instance_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.query_feat = nn.Embedding(num_queries * query_groups, hidden_dim)
        self.query_embed = nn.Embedding(num_queries * query_groups, hidden_dim)

        # --- heads ---------------------------------------------------------------------------
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.fc = nn.Linear(hidden_dim, hidden_dim)  # unused (kept for checkpoint keys)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Linear(hidden_dim, mask_dim)
        self.objectness = nn.Linear(hidden_dim, 1)  # unused
        self.bbox_pred = nn.Linear(hidden_dim, 4)  # unused

        # --- PCTrans options (none of these exist on a plain IAUNet) ----------------------------
        if dynamic_mask_head and not centre_guidance:
            raise ValueError("dynamic_mask_head needs centre_guidance")
        self.centre_guidance = CentreGuidance(num_queries, hidden_dim) if centre_guidance else None
        self.dynamic_mask_head = (
            DynamicMaskHead(mask_dim, hidden_dim) if dynamic_mask_head else None
        )
        self.output_query_embeddings = bool(contrast_losses)

        # --- click queries' own blocks and heads (IAUNetConfig.click_decoder) ----------------
        self.click_decoder = (ClickDecoder.build(num_layers, hidden_dim, mask_dim, num_heads,
                                                 dim_feedforward, dropout, num_classes)
                              if click_decoder else None)

        self._init_weights()
        if self.dynamic_mask_head is not None:  # the dynamic head replaces the dot product
            self.mask_embed.requires_grad_(False)
        # Never used in forward (kept for checkpoint keys); frozen so that DDP does not wait for
        # their gradients. Their values are whatever the checkpoint holds.
        for unused in (self.fc, self.objectness, self.bbox_pred):
            unused.requires_grad_(False)

    def _build_pixel_decoder(self, encoder_channels: Sequence[int], hidden_dim: int,
                             mask_dim: int) -> None:
        """IAUNet's U-Net pixel decoder: skip convs, up-convs + SE, mask branch, 1/4 output."""
        skip_channels = list(encoder_channels[1:])[::-1]  # f32, f16, f8
        self.skip_conv_layers = nn.ModuleList(nn.Conv2d(c, hidden_dim, 1) for c in skip_channels)
        first_level_in = COORD_CHANNELS + hidden_dim  # [coords, skip]
        later_level_in = COORD_CHANNELS + 2 * hidden_dim  # [up2x([coords, X]), skip]
        level_in = [first_level_in] + [later_level_in] * (NUM_LEVELS - 1)
        self.up_conv_layers = nn.ModuleList(
            nn.Sequential(DoubleConv(c, hidden_dim), SEBlock(hidden_dim)) for c in level_in
        )
        self.mask_branch = nn.ModuleList(MaskBranch(hidden_dim) for _ in range(NUM_LEVELS))
        self.lateral_conv = nn.Sequential(
            nn.Conv2d(encoder_channels[0], mask_dim, 1), nn.BatchNorm2d(mask_dim)
        )
        self.output_conv = nn.Sequential(
            nn.Conv2d(mask_dim, mask_dim, 3, padding=1),
            nn.BatchNorm2d(mask_dim),
            nn.ReLU(inplace=True),
        )

    def _init_weights(self) -> None:
        """Initialisation of the reference (memo section 2.6); the rest keeps PyTorch defaults."""
        if self.has_pixel_decoder:
            for module in [*self.skip_conv_layers.modules(), *self.up_conv_layers.modules()]:
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, std=0.01)
                    nn.init.zeros_(module.bias)
            for module in self.mask_branch.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        # Attention/FFN layers are Xavier-initialised in their constructors.
        nn.init.normal_(self.class_embed.weight, std=0.01)
        prior_bias = -math.log((1 - CLASS_PRIOR_PROB) / CLASS_PRIOR_PROB)
        nn.init.constant_(self.class_embed.bias, prior_bias)
        nn.init.normal_(self.mask_embed.weight, std=0.01)
        nn.init.zeros_(self.mask_embed.bias)

    # ------------------------------------------------------------------------------------------
    def pixel_decoder(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Mask-branch memories at strides 32, 16, 8 and the stride-4 mask features."""
        f4 = features[0]
        skips = list(features[1:])[::-1]  # f32, f16, f8
        x: torch.Tensor | None = None
        x_mask: torch.Tensor | None = None
        memories: list[torch.Tensor] = []
        for level in range(NUM_LEVELS):
            skip = self.skip_conv_layers[level](skips[level])
            if x is None:
                level_input = torch.cat([coordinate_channels(skip), skip], dim=1)
            else:
                with_coords = torch.cat([coordinate_channels(x), x], dim=1)
                upsampled = _upsample_aligned(with_coords, skip.shape[-2:])
                level_input = torch.cat([upsampled, skip], dim=1)
            x = self.up_conv_layers[level](level_input)
            if x_mask is None:
                x_mask = self.mask_branch[level](x)
            else:
                x_mask = self.mask_branch[level](_upsample_aligned(x_mask, x.shape[-2:]) + x)
            memories.append(x_mask)

        fine = F.interpolate(memories[-1], size=f4.shape[-2:], mode="bilinear", align_corners=False)
        mask_features = self.output_conv(self.lateral_conv(f4) + fine)
        return memories, mask_features

    def predict(
        self,
        queries: torch.Tensor,
        mask_features: torch.Tensor,
        centre_logits: torch.Tensor | None = None,
        pixel_embed: torch.Tensor | None = None,
        normed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Class logits (B, Q, C+1) and mask logits (B, Q, h, w) of queries (B, Q, D).

        With the PCTrans options also ``pred_centres`` (B, Q, 2), normalised (x, y), and
        ``query_embeddings`` (B, Q, D), the normed queries the contrast loss compares.
        """
        if normed is None:
            normed = self.decoder_norm(queries)
        out: dict[str, torch.Tensor] = {"pred_logits": self.class_embed(normed).float()}
        if self.dynamic_mask_head is not None and pixel_embed is not None:
            centres = centre_logits.sigmoid().detach()  # masks do not move the centres
            masks = self.dynamic_mask_head(normed, pixel_embed, centres)
        else:
            mask_embeddings = self.mask_embed(normed)
            masks = torch.einsum("bqc,bchw->bqhw", mask_embeddings, mask_features)
        out["pred_masks"] = masks.float()
        if centre_logits is not None:
            out["pred_centres"] = centre_logits.float().sigmoid()
        if self.output_query_embeddings:
            out["query_embeddings"] = normed.float()
        return out

    def forward(self, features: Sequence[torch.Tensor], with_aux: bool = True,
                clicks: torch.Tensor | None = None, keep_context: bool = False
                ) -> dict[str, Any]:
        """Predictions from encoder features ``[f4, f8, f16, f32]``.

        Returns ``{"pred_logits", "pred_masks", "aux_outputs"}`` where ``aux_outputs`` lists the
        predictions of the earlier transformer blocks (empty when ``with_aux`` is False; the
        final outputs do not depend on it). ``clicks`` adds click queries, ``keep_context``
        what later clicks need (see :meth:`decode`).
        """
        if not self.has_pixel_decoder:
            raise RuntimeError("this decoder has no pixel decoder: call decode(memories, "
                               "mask_features) with another pixel decoder's outputs")
        memories, mask_features = self.pixel_decoder(features)
        return self.decode(memories, mask_features, with_aux, clicks, keep_context)

    def click_queries(self, mask_features: torch.Tensor, clicks: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and position ``(B, K, D)`` of one query per click: the stride-4 mask feature
        and the sine position embedding at each click, bilinearly sampled. ``clicks (B, K, 2)``:
        ``(y, x)`` as fractions of the padded network input (0 = top/left edge, 1 = bottom/right
        edge)."""
        if self.centre_guidance is not None:
            raise ValueError("click queries need a plain IAUNet decoder (no centre guidance "
                             "or dynamic mask head)")
        if clicks.ndim != 3 or clicks.shape[-1] != 2 or clicks.shape[0] != mask_features.shape[0]:
            raise ValueError(f"clicks must be (batch, K, 2) fractions (y, x), got "
                             f"{tuple(clicks.shape)} for a batch of {mask_features.shape[0]}")
        grid = (clicks.to(mask_features.dtype).flip(-1) * 2 - 1)[:, :, None]  # (B, K, 1, [x, y])
        feat = F.grid_sample(mask_features, grid, mode="bilinear", align_corners=False)[..., 0]
        pos = self.pe_layer.sample(clicks, *mask_features.shape[-2:])
        return feat.transpose(1, 2), pos.to(mask_features.dtype)

    def decode(self, memories: Sequence[torch.Tensor], mask_features: torch.Tensor,
               with_aux: bool = True, clicks: torch.Tensor | None = None,
               keep_context: bool = False) -> dict[str, Any]:
        """The transformer decoder and heads over pixel memories at strides 32, 16, 8
        (``hidden_dim`` channels each) and ``mask_dim`` mask features at stride 4.

        ``clicks (B, K, 2)`` (:meth:`click_queries`) adds one query per click, started from the
        pixel there, beside the learned queries: it attends to them, they do not see it (their
        outputs are the same with or without clicks), nor does one click see another. Every
        output then also holds ``click_logits (B, K, C+1)`` and ``click_masks (B, K, h, w)``.
        A model answers them well only when trained with them (``IAUNetConfig.click_queries``).
        With a click decoder (:meth:`add_click_decoder`) the click queries go through its blocks
        and heads instead, over the learned queries as the segmentation's blocks left them.
        ``keep_context=True`` adds ``click_context`` (:class:`ClickContext`): clicks made later
        are answered from it by :meth:`answer_clicks`, as they would be here.
        """
        if clicks is not None and self.click_decoder is not None:
            # the learned queries' pass, then the clicks' own blocks over what it left
            out = self.decode(memories, mask_features, with_aux, None, keep_context=True)
            context = out["click_context"] if keep_context else out.pop("click_context")
            answers = self._answer_clicks(context, clicks, every_block=with_aux)
            for block, answer in zip([*out["aux_outputs"], out], answers, strict=True):
                block.update(answer)
            return out
        batch = mask_features.shape[0]
        groups = self.query_groups if self.training else 1
        count = self.num_queries * groups
        queries = self.query_feat.weight[:count].unsqueeze(0).repeat(batch, 1, 1)
        query_pos = self.query_embed.weight[:count].unsqueeze(0).repeat(batch, 1, 1)
        n_clicks = 0
        if clicks is not None:
            click_feat, click_pos = self.click_queries(mask_features, clicks)
            n_clicks = click_feat.shape[1]
            queries = torch.cat([queries, click_feat.to(queries.dtype)], 1)
            query_pos = torch.cat([query_pos, click_pos.to(query_pos.dtype)], 1)
        self_mask = _self_attention_mask(groups, self.num_queries, n_clicks, queries.device)
        guidance = self.centre_guidance
        centres = guidance.initial(batch) if guidance is not None else None
        pixel_embed = (self.dynamic_mask_head.pixel_embed(mask_features)
                       if self.dynamic_mask_head is not None else None)

        predictions: list[dict[str, torch.Tensor]] = []
        previous: dict[str, torch.Tensor] = {}  # the last block's predictions (masked attention)
        num_layers = NUM_LEVELS * self.dec_layers
        context = (ClickContext([], [], [], mask_features, [], query_pos[:, :count])
                   if keep_context else None)
        for level, memory_map in enumerate(memories):
            memory = memory_map.flatten(2).transpose(1, 2)  # (B, HW, D)
            memory_pos = self.pe_layer(memory_map).flatten(2).transpose(1, 2)
            if context is not None:
                context.memories.append(memory)
                context.memory_pos.append(memory_pos)
                context.memory_shapes.append(tuple(memory_map.shape[-2:]))
            for j in range(self.dec_layers):
                k = level * self.dec_layers + j
                cross_pos = (query_pos if guidance is None
                             else guidance.query_position(queries, query_pos, centres))
                cross_mask = (self._attention_mask(previous["pred_masks"], memory_map.shape[-2:])
                              if self.masked_attention and k > 0 else None)
                queries = self.transformer_instance_cross_attention_layers[k](
                    queries, memory, memory_pos, cross_pos, cross_mask
                )
                if context is not None:
                    context.learned.append(queries[:, :count])
                queries = self.transformer_instance_self_attention_layers[k](queries, query_pos,
                                                                             self_mask)
                queries = self.transformer_instance_ffn_layers[k](queries)
                normed = None
                if guidance is not None:
                    normed = self.decoder_norm(queries)
                    centres = guidance.refine(normed, centres)
                if with_aux or k == num_layers - 1 or self.masked_attention:
                    previous = self.predict(queries, mask_features, centres, pixel_embed, normed)
                    if with_aux or k == num_layers - 1:
                        predictions.append(_split_clicks(previous, count) if n_clicks
                                           else previous)

        final = predictions[-1]
        out = {**final, "aux_outputs": predictions[:-1]}
        if context is not None:
            out["click_context"] = context
        return out

    def answer_clicks(self, context: ClickContext, clicks: torch.Tensor) -> dict[str, Any]:
        """``click_logits`` and ``click_masks`` of ``clicks (B, K, 2)`` from a kept
        :class:`ClickContext`: the same answer as :meth:`decode` with those clicks gives, at the
        cost of K queries instead of all of them."""
        return self._answer_clicks(context, clicks, every_block=False)[-1]

    def add_click_decoder(self) -> ClickDecoder:
        """Give clicks blocks and heads of their own (:mod:`.click_decoder`), copied from the
        segmentation's: the answers stay the same until the copy is trained."""
        if self.centre_guidance is not None:
            raise ValueError("a click decoder needs a plain IAUNet decoder (no centre guidance "
                             "or dynamic mask head)")
        self.click_decoder = ClickDecoder.copy_of(self)
        return self.click_decoder

    def _click_layers(self) -> tuple[nn.ModuleList, nn.ModuleList, nn.ModuleList, Any]:
        """Cross-attention, self-attention and FFN layers and the heads clicks go through."""
        own = self.click_decoder
        if own is not None:
            return (own.cross_attention_layers, own.self_attention_layers, own.ffn_layers,
                    own.predict)
        return (self.transformer_instance_cross_attention_layers,
                self.transformer_instance_self_attention_layers,
                self.transformer_instance_ffn_layers, self.predict)

    def _answer_clicks(self, context: ClickContext, clicks: torch.Tensor, every_block: bool
                       ) -> list[dict[str, torch.Tensor]]:
        """The click queries' predictions (``click_logits``, ``click_masks``) after the last
        block, or after every block with ``every_block``."""
        cross_layers, self_layers, ffn_layers, predict = self._click_layers()
        queries, query_pos = self.click_queries(context.mask_features, clicks)
        last = NUM_LEVELS * self.dec_layers - 1
        answers: list[dict[str, torch.Tensor]] = []
        previous: dict[str, torch.Tensor] = {}
        for level in range(NUM_LEVELS):
            for j in range(self.dec_layers):
                k = level * self.dec_layers + j
                cross_mask = (self._attention_mask(previous["pred_masks"],
                                                   context.memory_shapes[level])
                              if self.masked_attention and k > 0 else None)
                cross = cross_layers[k]
                if context.keys_values is not None:
                    queries = cross.attend_projected(queries, context.keys_values[k], query_pos,
                                                     cross_mask)
                else:
                    queries = cross(queries, context.memories[level], context.memory_pos[level],
                                    query_pos, cross_mask)
                queries = self_layers[k](queries, query_pos, context=context.learned[k],
                                         context_pos=context.learned_pos)
                queries = ffn_layers[k](queries)
                if every_block or k == last or self.masked_attention:
                    previous = predict(queries, context.mask_features)
                    if every_block or k == last:
                        answers.append({"click_logits": previous["pred_logits"],
                                        "click_masks": previous["pred_masks"]})
        return answers

    def prepare_context(self, context: ClickContext) -> ClickContext:
        """``context`` with every block's cross-attention keys and values projected
        (:attr:`ClickContext.keys_values`), so :meth:`answer_clicks` projects only the click
        queries: for many clicks on one image (in eval mode; in the context's device and
        dtype)."""
        cross_layers = self._click_layers()[0]
        keys_values = [
            cross_layers[level * self.dec_layers + j].project_memory(context.memories[level],
                                                                     context.memory_pos[level])
            for level in range(NUM_LEVELS) for j in range(self.dec_layers)]
        return ClickContext(context.memories, context.memory_pos, context.memory_shapes,
                            context.mask_features, context.learned, context.learned_pos,
                            keys_values)

    def _attention_mask(self, mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Masked attention's (B·heads, Q, HW) mask from the previous block's mask logits
        (B, Q, h, w): True (blocked) outside the predicted mask, nothing blocked for a query
        whose mask is empty at this level's resolution. Not differentiated through."""
        resized = F.interpolate(mask_logits.detach(), size=tuple(size), mode="bilinear",
                                align_corners=False)
        blocked = (resized < 0).flatten(2)  # sigmoid < 0.5
        blocked &= ~blocked.all(dim=-1, keepdim=True)
        return blocked.repeat_interleave(self.num_heads, dim=0)


def _self_attention_mask(groups: int, size: int, clicks: int, device: torch.device
                         ) -> torch.Tensor | None:
    """Self-attention mask (True = blocked) over ``groups`` × ``size`` learned queries followed
    by ``clicks`` click queries: each group stays apart, no learned query sees a click query and
    a click query sees only itself among the clicks (None: nothing to block)."""
    if groups == 1 and clicks == 0:
        return None
    learned = groups * size
    group = torch.arange(learned, device=device) // size
    blocked = torch.ones(learned + clicks, learned + clicks, dtype=torch.bool, device=device)
    blocked[:learned, :learned] = group[:, None] != group[None, :]
    blocked[learned:, :learned] = False
    blocked[learned:, learned:].fill_diagonal_(False)
    return blocked


def _split_clicks(output: dict[str, torch.Tensor], learned: int) -> dict[str, torch.Tensor]:
    """One block's predictions over learned + click queries → the learned queries' usual keys
    plus ``click_logits`` and ``click_masks``."""
    out = {k: v[:, :learned] for k, v in output.items()}
    out["click_logits"] = output["pred_logits"][:, learned:]
    out["click_masks"] = output["pred_masks"][:, learned:]
    return out


def _upsample_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the reference's ``UpsamplingBilinear2d``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)

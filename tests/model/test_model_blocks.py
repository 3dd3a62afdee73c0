"""Building blocks: CoordConv channels, DoubleConv, SE, mask branch, sine positions, attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from napari_iaunet.model.blocks import DoubleConv, MaskBranch, SEBlock, coordinate_channels
from napari_iaunet.model.position import PositionEmbeddingSine
from napari_iaunet.model.transformer import CrossAttentionLayer, FFNLayer, SelfAttentionLayer


def test_coordinate_channels_non_square() -> None:
    coords = coordinate_channels(torch.zeros(2, 5, 3, 4))
    assert coords.shape == (2, 2, 3, 4)
    x, y = coords[0, 0], coords[0, 1]
    # channel 0 = x: varies along the width, constant down a column
    assert torch.allclose(x[0], torch.linspace(-1, 1, 4))
    assert torch.allclose(x[:, 2], x[0, 2].expand(3))
    # channel 1 = y: varies along the height, constant along a row
    assert torch.allclose(y[:, 0], torch.linspace(-1, 1, 3))
    assert torch.allclose(y[1], y[1, 0].expand(4))


def test_upsampled_coordinates_equal_coordinates_at_new_size() -> None:
    """Why concatenating coords before the align_corners=True upsampling is harmless."""
    small = coordinate_channels(torch.zeros(1, 1, 4, 6))
    up = F.interpolate(small, size=(8, 12), mode="bilinear", align_corners=True)
    assert torch.allclose(up, coordinate_channels(torch.zeros(1, 1, 8, 12)), atol=1e-6)


def test_double_conv_shapes_and_projection() -> None:
    block = DoubleConv(514, 256)
    assert block.depthwise_conv1.weight.shape == (514, 1, 3, 3)
    assert block.pointwise_conv1.weight.shape == (256, 514, 1, 1)
    assert block.depthwise_conv2.weight.shape == (256, 1, 3, 3)
    assert block.projection.weight.shape == (256, 514, 1, 1)
    assert block(torch.randn(1, 514, 4, 6)).shape == (1, 256, 4, 6)
    same = DoubleConv(8, 8)
    assert isinstance(same.projection, torch.nn.Identity)


def test_double_conv_residual_is_projection_of_input() -> None:
    block = DoubleConv(4, 6).eval()
    for p in [*block.pointwise_conv2.parameters()]:
        torch.nn.init.zeros_(p)  # second conv outputs 0 -> BN(0) -> ReLU(beta=0) = 0
    x = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), block.projection(x), atol=1e-6)


def test_se_block_scales_channels() -> None:
    se = SEBlock(256)
    assert [type(m).__name__ for m in se.excite] == ["Linear", "ReLU", "Linear", "Sigmoid"]
    assert se.excite[0].weight.shape == (128, 256)
    assert se.excite[2].weight.shape == (256, 128)
    x = torch.rand(2, 256, 3, 5)
    y = se(x)
    ratio = y / x
    # one factor in (0, 1) per (batch, channel)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_mask_branch_parameter_indices() -> None:
    branch = MaskBranch(16)
    names = {k for k, _ in branch.named_parameters()}
    assert names == {f"mask_convs.{i}.{p}" for i in (0, 1, 3, 4) for p in ("weight", "bias")}
    assert branch(torch.randn(1, 16, 3, 7)).shape == (1, 16, 3, 7)


def _detr_sine_reference(height: int, width: int, feats: int) -> torch.Tensor:
    """The DETR formula written out element by element (normalize=True, scale=2*pi)."""
    out = torch.zeros(2 * feats, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            y = (i + 1) / (height + 1e-6) * 2 * math.pi
            x = (j + 1) / (width + 1e-6) * 2 * math.pi
            for k in range(feats):
                freq = 10000 ** (2 * (k // 2) / feats)
                trig = math.sin if k % 2 == 0 else math.cos
                out[k, i, j] = trig(y / freq)
                out[feats + k, i, j] = trig(x / freq)
    return out


def test_sine_position_matches_detr_formula_non_square() -> None:
    pe = PositionEmbeddingSine(num_pos_feats=8)
    pos = pe(torch.zeros(2, 3, 3, 5))
    assert pos.shape == (2, 16, 3, 5)
    expected = _detr_sine_reference(3, 5, 8).float()
    assert torch.allclose(pos[0], expected, atol=1e-5)
    assert torch.equal(pos[0], pos[1])
    assert not list(pe.state_dict())  # no tensors in checkpoints


def test_sine_position_default_width_and_dtype() -> None:
    pe = PositionEmbeddingSine()
    pos = pe(torch.zeros(1, 256, 4, 6, dtype=torch.bfloat16))
    assert pos.shape == (1, 256, 4, 6)
    assert pos.dtype == torch.bfloat16


def test_attention_layer_names_and_shapes() -> None:
    cross = CrossAttentionLayer(32, 4, dropout=0.0)
    self_attn = SelfAttentionLayer(32, 4, dropout=0.0)
    ffn = FFNLayer(32, 64, dropout=0.0)
    assert set(cross.state_dict()) == {
        "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias",
        "multihead_attn.out_proj.weight", "multihead_attn.out_proj.bias",
        "norm.weight", "norm.bias",
    }  # fmt: skip
    assert {k.split(".")[0] for k in self_attn.state_dict()} == {"self_attn", "norm"}
    assert {k.split(".")[0] for k in ffn.state_dict()} == {"linear1", "linear2", "norm"}
    queries, query_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, memory_pos = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    out = ffn(self_attn(cross(queries, memory, memory_pos, query_pos), query_pos))
    assert out.shape == (2, 5, 32)


def test_cross_attention_is_post_norm_attention() -> None:
    """LN(q + MHA(q + q_pos, m + m_pos, m)), checked against explicit softmax attention."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(8, 2, dropout=0.0).eval()
    q, qp = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    m, mp = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    mha = layer.multihead_attn
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    qh = F.linear(q + qp, w_q, b_q).view(1, 3, 2, 4).transpose(1, 2)
    kh = F.linear(m + mp, w_k, b_k).view(1, 5, 2, 4).transpose(1, 2)
    vh = F.linear(m, w_v, b_v).view(1, 5, 2, 4).transpose(1, 2)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1) @ vh
    attended = mha.out_proj(attn.transpose(1, 2).reshape(1, 3, 8))
    expected = layer.norm(q + attended)
    with torch.no_grad():
        assert torch.allclose(layer(q, m, mp, qp), expected, atol=1e-5)
        # the memory's keys and values projected once, then attended to: the same result,
        # with a masked-attention mask (True = blocked) too
        projected = layer.project_memory(m, mp)
        assert torch.allclose(layer.attend_projected(q, projected, qp), expected, atol=1e-5)
        blocked = torch.rand(2, 3, 5) > 0.5
        blocked[..., 0] = False
        assert torch.allclose(layer.attend_projected(q, projected, qp, blocked),
                              layer(q, m, mp, qp, blocked), atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (17, 23)])
def test_sine_position_sampled_at_points_is_the_bilinear_map_sample(size) -> None:
    """``sample`` equals grid_sample of the whole map, edges (zero padding) included."""
    torch.manual_seed(0)
    pe = PositionEmbeddingSine(num_pos_feats=16)
    height, width = size
    points = torch.rand(2, 30, 2) * 1.2 - 0.1
    points[0, :3] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.01]])
    grid = (points.flip(-1) * 2 - 1)[:, :, None]
    full = F.grid_sample(pe(torch.zeros(2, 1, height, width)), grid, mode="bilinear",
                         align_corners=False)[..., 0].transpose(1, 2)
    torch.testing.assert_close(pe.sample(points, height, width), full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layer_cls", [CrossAttentionLayer, SelfAttentionLayer, FFNLayer])
def test_transformer_layers_xavier_init(layer_cls: type) -> None:
    layer = layer_cls(64, 4, 0.1) if layer_cls is not FFNLayer else layer_cls(64, 128, 0.1)
    for name, p in layer.named_parameters():
        if p.dim() > 1:
            fan_out, fan_in = p.shape[0], p.shape[1]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert p.abs().max() <= bound + 1e-6, name

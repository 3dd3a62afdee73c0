"""The PCTrans family: deformable attention, its pixel decoder, config, model and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_iaunet.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.model import (
    IAUNetConfig,
    PCTrans,
    PCTransConfig,
    build_model,
    config_from_dict,
    count_parameters,
)
from napari_iaunet.model.deformable import (
    DeformablePixelDecoder,
    MSDeformAttn,
    deformable_sample,
)


def _tiny(**changes) -> PCTransConfig:
    base = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
                dec_layers=1, dim_feedforward=64, enc_layers=2, enc_points=2,
                enc_dim_feedforward=64, input_size=64)
    base.update(changes)
    return PCTransConfig(**base)


def test_sampling_matches_hand_bilinear_interpolation():
    """One level, one head, one point: the sample is the bilinear value at that location."""
    torch.manual_seed(0)
    h, w, c = 5, 7, 3
    grid = torch.randn(1, h * w, 1, c)
    x, y = 2.3, 1.6  # pixel coordinates (centres at k + 0.5)
    loc = torch.tensor([(x + 0.5) / w, (y + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
    out = deformable_sample(grid, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1))
    img = grid[0, :, 0].view(h, w, c)
    x0, y0, fx, fy = 2, 1, 0.3, 0.6
    expected = ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
                + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-5, atol=1e-5)


def test_sampling_weights_levels_and_heads():
    """Weights sum the samples of every level; heads read their own channels."""
    torch.manual_seed(1)
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(2, 20, 2, 3)
    loc = torch.rand(2, 5, 2, 2, 3, 2)
    weights = torch.rand(2, 5, 2, 2, 3)
    out = deformable_sample(value, shapes, loc, weights)
    assert out.shape == (2, 5, 6)
    # reference: one grid_sample per (batch, head, level, point)
    b, q, head = 1, 3, 1
    total = torch.zeros(3)
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[b, start:start + h * w, head].T.reshape(1, 3, h, w)
        start += h * w
        for p in range(3):
            g = (2 * loc[b, q, head, level, p] - 1).view(1, 1, 1, 2)
            total += weights[b, q, head, level, p] * F.grid_sample(
                v, g, align_corners=False).flatten()
    torch.testing.assert_close(out[b, q, 3:], total, rtol=1e-5, atol=1e-5)


def test_msdeform_attn_starts_around_reference_and_learns_offsets():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    # initial offsets: head k looks along its own direction, point p at p+1 pixels
    bias = attn.sampling_offsets.bias.view(4, 2, 2, 2)
    assert torch.allclose(bias[0, 0, 1], torch.tensor([2.0, 0.0]))
    assert bias[:, 0, 0].abs().max(dim=-1).values.allclose(torch.ones(4))
    shapes = [(6, 6), (3, 3)]
    value = torch.randn(1, 45, 16)
    query = torch.randn(1, 4, 16)
    ref = torch.rand(1, 4, 2, 2)
    out = attn(query, ref, value, shapes)
    assert out.shape == (1, 4, 16)
    out.square().sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0  # offsets learn from the loss
    assert attn.attention_weights.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="levels"):
        attn(query, ref, value, shapes[:1])


def test_pixel_decoder_shapes_and_order():
    dec = DeformablePixelDecoder([8, 16, 24, 32], hidden_dim=32, mask_dim=32, num_heads=2,
                                 num_layers=2, num_points=2, dim_feedforward=64)
    feats = [torch.randn(2, c, 64 // s, 96 // s) for c, s in ((8, 4), (16, 8), (24, 16),
                                                              (32, 32))]
    memories, mask_features = dec(feats)
    assert [tuple(m.shape) for m in memories] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert mask_features.shape == (2, 32, 16, 24)
    with pytest.raises(ValueError, match="multiple of 32"):
        DeformablePixelDecoder([8, 16, 24, 32], hidden_dim=48, mask_dim=48)


def test_config_round_trip_and_family():
    c = _tiny()
    assert c.family == "pctrans" and c.pctrans_options == (
        "centre_guidance", "dynamic_mask_head", "contrast_losses")
    d = c.to_dict()
    assert d["family"] == "pctrans" and d["enc_layers"] == 2
    assert config_from_dict(d) == c
    with pytest.raises(ValueError, match="pctrans"):
        IAUNetConfig.from_dict(d)
    assert "PCTrans resnet18" in c.describe()
    assert "without contrast losses" in _tiny(contrast_losses=False).describe()
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny(hidden_dim=48, mask_dim=48, num_heads=2)


def test_model_outputs_like_iaunet_and_parameter_count():
    torch.manual_seed(0)
    model = build_model(_tiny())
    assert isinstance(model, PCTrans)
    assert not hasattr(model.decoder, "skip_conv_layers")  # no U-Net pixel decoder inside
    out = model(torch.randn(2, 3, 64, 96))
    assert out["pred_logits"].shape == (2, 8, 2)
    assert out["pred_masks"].shape == (2, 8, 16, 24)
    assert out["pred_centres"].shape == (2, 8, 2) and "query_embeddings" in out
    assert len(out["aux_outputs"]) == 2
    eval_out = model.eval()(torch.randn(1, 3, 64, 64), with_aux=False)
    assert eval_out["aux_outputs"] == []
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 60, 64))
    # R50 at the paper's widths: IAUNet's backbone and query decoder, a 6-layer encoder
    assert count_parameters(build_model(PCTransConfig())) == 39_604_170


def test_checkpoint_round_trip_and_segmenter_clusters_by_default(tmp_path):
    torch.manual_seed(0)
    model = build_model(_tiny()).eval()
    path = save_checkpoint(tmp_path / "pct.pt", model, metadata={"description": "tiny"})
    info = read_checkpoint_info(path)
    assert isinstance(info.config, PCTransConfig)
    assert "PCTrans resnet18" in info.summary()
    loaded = load_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)["pred_masks"], model(x)["pred_masks"])
    seg = Segmenter.from_checkpoint(path, device="cpu",
                                    settings=PostprocessSettings(score_threshold=0.0))
    assert seg.effective_settings().cluster_queries is True  # PCTrans' inference
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    clustered = seg.segment(image)
    seg.settings = PostprocessSettings(score_threshold=0.0, cluster_queries=False)
    plain = seg.segment(image)
    assert clustered.image_shape == plain.image_shape == (70, 90)
    assert 0 < len(clustered) <= len(plain)
    # the fused inference copy (BatchNorm folded, conv+ReLU) gives the same instances
    unfused = Segmenter(loaded.model, device="cpu", fuse=False, settings=seg.settings)
    assert seg.inference_model() is not seg.model
    reference = unfused.segment(image)
    np.testing.assert_allclose(plain.scores, reference.scores, rtol=1e-3, atol=1e-4)
    iaunet_seg = Segmenter(build_model(IAUNetConfig(backbone="resnet18", num_queries=8,
                                                    hidden_dim=32, mask_dim=32, num_heads=2,
                                                    dec_layers=1, dim_feedforward=64,
                                                    input_size=64)), device="cpu")
    assert iaunet_seg.effective_settings().cluster_queries is False


def test_deformable_attention_grid_sample_padding_is_zero_outside():
    """A sampling location outside the map contributes nothing (as in Deformable DETR)."""
    value = torch.ones(1, 4, 1, 2)
    loc = torch.full((1, 1, 1, 1, 1, 2), 5.0)
    out = deformable_sample(value, [(2, 2)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.abs().max() == 0
    assert not math.isnan(float(out.sum()))

"""Segmenter.answer_click: a click-trained IAUNet answers clicks on an image it segmented, from
the context kept with the candidates (only the click query runs)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.inference.candidates import CandidateSource, candidates_at
from napari_iaunet.inference.preprocess import as_hwc, prepare
from napari_iaunet.inference.tiling import plan_tiles
from napari_iaunet.model import IAUNetConfig, build_model

TINY = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
            dec_layers=1, dim_feedforward=64, input_size=64, dropout=0.0)


def _segmenter(click_queries=True, click_decoder=False, **kwargs) -> Segmenter:
    torch.manual_seed(0)
    model = build_model(IAUNetConfig(**TINY, click_queries=click_queries))
    with torch.no_grad():  # every query sure it is a cell: candidates everywhere
        model.decoder.class_embed.bias.copy_(torch.tensor([3.0, -3.0]))
        model.decoder.mask_embed.bias.fill_(0.5)
    if click_decoder:  # clicks' own blocks and heads, made to differ from the segmentation's
        own = model.decoder.add_click_decoder()
        model.config = model.config.replace(click_decoder=True)
        with torch.no_grad():
            for p in own.ffn_layers.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return Segmenter(model, device="cpu", fuse=False,
                     settings=PostprocessSettings(score_threshold=0.0), **kwargs)


def _image(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.mark.parametrize("click_decoder", [False, True])
def test_a_click_is_answered_from_the_kept_context_as_a_full_pass_would(click_decoder):
    seg = _segmenter(tile_size=None, click_decoder=click_decoder)
    image = _image((96, 80))
    _, cands = seg.segment(image, candidates=True)
    assert cands.answer is not None and cands.sources[0].click_context is not None
    point = (70, 60)
    answer = seg.answer_click(cands, point)
    assert len(answer) == 1 and answer.window == (0, 0, 96, 80)
    # the same click in one full forward pass: pixel centre → fraction of the padded input
    cfg = seg.config
    prep = prepare(as_hwc(image), cfg.input_size, cfg.pixel_mean, cfg.pixel_std,
                   cfg.size_divisibility, "cpu", offset=0.0, intensity=cfg.intensity)
    (h, w), (hp, wp) = prep.resized_shape, prep.tensor.shape[-2:]
    click = torch.tensor([[[(70.5) * h / 96 / hp, (60.5) * w / 80 / wp]]])
    with torch.no_grad():
        out = seg.model(prep.tensor[None], with_aux=False, clicks=click)
    ref = CandidateSource.from_outputs(out["click_logits"][0], out["click_masks"][0], (hp, wp),
                                       (h, w), (96, 80))
    np.testing.assert_allclose(answer.logits, ref.logits, atol=0.05)  # float16 context
    np.testing.assert_allclose(answer.class_probs, ref.class_probs, atol=0.01)
    # candidates_at offers the answer first, then the segmentation's queries
    picks = candidates_at(cands, point, thresholds=(0.5,), duplicate_iou=None)
    assert picks and picks[0].source == -1
    assert all(p.source >= 0 for p in picks[1:])
    cuts = candidates_at(cands, point, thresholds=(0.3, 0.5, 0.7), duplicate_iou=None)
    assert cuts[0].source == -1 and cuts[0].threshold == 0.5  # the segmentation's cut first
    assert all(p.source >= 0 for p in candidates_at(cands, point, click_pass=False))


def test_a_click_after_the_weights_changed_is_answered_by_the_new_weights():
    """The context prepared for the first click is reused only while the weights stay."""
    seg = _segmenter(tile_size=None)
    _, cands = seg.segment(_image((96, 80)), candidates=True)
    first = seg.answer_click(cands, (70, 60))
    np.testing.assert_array_equal(seg.answer_click(cands, (70, 60)).logits, first.logits)
    with torch.no_grad():  # e.g. a fine-tune changed the cross-attention in place
        for layer in seg.model.decoder.transformer_instance_cross_attention_layers:
            layer.multihead_attn.in_proj_weight.normal_(0.0, 3.0)
    changed = seg.answer_click(cands, (70, 60))
    fresh = Segmenter(seg.model, device="cpu", fuse=False).answer_click(cands, (70, 60))
    np.testing.assert_allclose(changed.logits, fresh.logits, atol=1e-3)
    assert np.abs(changed.logits.astype(np.float32) - first.logits).max() > 0.01
    # the prepared copy goes with the candidates it was made for
    assert seg._click_context is not None
    del cands
    gc.collect()
    assert seg._click_context is None


def test_a_tiled_image_answers_a_click_in_the_tile_it_lies_deepest_in():
    seg = _segmenter(tile_size=64)
    _, cands = seg.segment(_image((150, 150), 1), candidates=True)
    tiles = plan_tiles((150, 150), 64, round(64 * seg.tile_overlap))
    assert len(cands.sources) == len(tiles) > 1
    for y, x in [(5, 5), (75, 75), (149, 20)]:
        answer = seg.answer_click(cands, (y, x))
        y0, x0, y1, x1 = answer.window
        assert any((t.y0, t.x0, t.y1, t.x1) == answer.window for t in tiles)
        deepest = max(min(y - t.y0, t.y1 - 1 - y, x - t.x0, t.x1 - 1 - x) for t in tiles)
        assert min(y - y0, y1 - 1 - y, x - x0, x1 - 1 - x) == deepest


def test_a_model_not_trained_for_clicks_keeps_nothing_for_them():
    seg = _segmenter(click_queries=False, tile_size=None)
    _, cands = seg.segment(_image((64, 64)), candidates=True)
    assert cands.answer is None and cands.sources[0].click_context is None
    assert seg.answer_click(cands, (3, 3)) is None
    trained = _segmenter(tile_size=None)
    _, kept = trained.segment(_image((64, 64)), candidates=True)
    assert kept.nbytes > cands.nbytes  # the context is counted
    assert trained.answer_click(kept, (64, 3)) is None  # outside the image

"""Segmenter.click_sources: a click-trained IAUNet's answer to clicks, as candidate sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_iaunet.inference import Segmenter
from napari_iaunet.inference.candidates import Candidates, CandidateSource, candidates_at
from napari_iaunet.inference.preprocess import as_hwc, prepare
from napari_iaunet.inference.tiling import plan_tiles
from napari_iaunet.model import IAUNetConfig, build_model

TINY = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
            dec_layers=1, dim_feedforward=64, input_size=64, dropout=0.0)


def _segmenter(click_queries=True, **kwargs) -> Segmenter:
    torch.manual_seed(0)
    model = build_model(IAUNetConfig(**TINY, click_queries=click_queries))
    with torch.no_grad():  # a clear answer: the click's mask is its own neighbourhood
        model.decoder.class_embed.bias.copy_(torch.tensor([2.0, -2.0]))
    return Segmenter(model, device="cpu", fuse=False, **kwargs)


def test_each_click_gets_its_own_query_mapped_like_the_segmentation():
    seg = _segmenter(tile_size=None)
    rng = np.random.default_rng(0)
    image = (rng.random((96, 80)) * 255).astype(np.uint8)
    points = [(10, 12), (70.4, 60.2)]
    sources = seg.click_sources(image, points)
    assert len(sources) == 2 and all(len(s) == 1 for s in sources)
    assert all(s.window == (0, 0, 96, 80) for s in sources)
    # the same clicks by hand: pixel centre → fraction of the padded input
    cfg = seg.config
    prep = prepare(as_hwc(image), cfg.input_size, cfg.pixel_mean, cfg.pixel_std,
                   cfg.size_divisibility, "cpu", offset=0.0, intensity=cfg.intensity)
    (h, w), (hp, wp) = prep.resized_shape, prep.tensor.shape[-2:]
    clicks = torch.tensor([[((y + 0.5) * h / 96 / hp, (x + 0.5) * w / 80 / wp)
                            for y, x in points]])
    with torch.no_grad():
        out = seg.model(prep.tensor[None], with_aux=False, clicks=clicks)
    for k, src in enumerate(sources):
        ref = CandidateSource.from_outputs(out["click_logits"][0, k:k + 1],
                                           out["click_masks"][0, k:k + 1], (hp, wp),
                                           (h, w), (96, 80))
        np.testing.assert_allclose(src.logits, ref.logits, atol=1e-2)
        np.testing.assert_allclose(src.class_probs, ref.class_probs, atol=1e-5)
    # they are candidates like the segmentation's: candidates_at offers the clicked part
    picks = candidates_at(Candidates((96, 80), sources[:1]), points[0], thresholds=(0.5,))
    assert all(p.crop[points[0][0] - p.box[0], points[0][1] - p.box[1]] for p in picks)


def test_a_tiled_image_answers_each_click_in_the_tile_it_lies_deepest_in():
    seg = _segmenter(tile_size=64)
    image = np.random.default_rng(1).integers(0, 255, (150, 150), dtype=np.uint8)
    tiles = plan_tiles((150, 150), 64, round(64 * seg.tile_overlap))
    points = [(5, 5), (75, 75), (149, 20)]
    sources = seg.click_sources(image, points)
    for (y, x), src in zip(points, sources):
        y0, x0, y1, x1 = src.window
        assert any((t.y0, t.x0, t.y1, t.x1) == src.window for t in tiles)
        deepest = max(min(y - t.y0, t.y1 - 1 - y, x - t.x0, t.x1 - 1 - x) for t in tiles)
        assert min(y - y0, y1 - 1 - y, x - x0, x1 - 1 - x) == deepest


def test_clicks_are_refused_by_a_model_not_trained_for_them_and_outside_the_image():
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="not trained with click queries"):
        _segmenter(click_queries=False).click_sources(image, [(3, 3)])
    with pytest.raises(ValueError, match=r"inside the 64×64 image"):
        _segmenter().click_sources(image, [(3, 64)])

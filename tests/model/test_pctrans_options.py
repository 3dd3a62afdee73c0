"""PCTrans options on IAUNet: shapes, parameters, dynamic head maths, checkpoints, inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_iaunet.checkpoint import load_checkpoint, save_checkpoint
from napari_iaunet.inference import Segmenter
from napari_iaunet.inference.postprocess import PostprocessSettings, cluster_queries
from napari_iaunet.model import IAUNetConfig, build_model, config_from_dict
from napari_iaunet.model.pctrans_heads import DynamicMaskHead
from napari_iaunet.model.position import PositionEmbeddingSine, sine_embed_points

BASE = dict(backbone="resnet18", num_queries=8, hidden_dim=32, mask_dim=32, num_heads=2,
            dec_layers=1, dim_feedforward=64, input_size=64)
ALL = dict(centre_guidance=True, dynamic_mask_head=True, contrast_losses=True)
# measured with the code before the options existed (same config, git HEAD at the time)
TINY_PARAMS = 11_334_227  # BASE; 322 state-dict entries


def _model(**opts) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(IAUNetConfig(**BASE, **opts))


@pytest.mark.parametrize("opts", [{}, dict(centre_guidance=True),
                                  dict(centre_guidance=True, dynamic_mask_head=True),
                                  dict(contrast_losses=True), ALL])
def test_shapes_with_each_option(opts):
    out = _model(**opts)(torch.randn(2, 3, 64, 96))
    assert len(out["aux_outputs"]) == 2
    for pred in [out, *out["aux_outputs"]]:
        assert pred["pred_logits"].shape == (2, 8, 2)
        assert pred["pred_masks"].shape == (2, 8, 16, 24)
        assert ("pred_centres" in pred) == bool(opts.get("centre_guidance"))
        assert ("query_embeddings" in pred) == bool(opts.get("contrast_losses"))
        if "pred_centres" in pred:
            c = pred["pred_centres"]
            assert c.shape == (2, 8, 2) and bool(((c > 0) & (c < 1)).all())
        if "query_embeddings" in pred:
            assert pred["query_embeddings"].shape == (2, 8, 32)
    loss = out["pred_masks"].sum() + out.get("pred_centres", out["pred_masks"]).sum()
    loss.backward()


def test_options_off_keep_parameters_and_keys():
    plain = _model()
    explicit = _model(centre_guidance=False, dynamic_mask_head=False, contrast_losses=False)
    assert sum(p.numel() for p in plain.parameters()) == TINY_PARAMS
    assert len(plain.state_dict()) == 322
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert shapes == {k: v.shape for k, v in explicit.state_dict().items()}
    assert not any("centre" in k or "dynamic" in k for k in shapes)
    # the dict written into checkpoints is the pre-options one
    d = IAUNetConfig(**BASE).to_dict()
    assert not {"centre_guidance", "dynamic_mask_head", "contrast_losses"} & set(d)
    full = _model(**ALL)
    extra = set(full.state_dict()) - set(shapes)
    assert extra and all(k.startswith(("decoder.centre_guidance.", "decoder.dynamic_mask_head."))
                         for k in extra)
    assert set(shapes) <= set(full.state_dict())
    assert not full.decoder.mask_embed.weight.requires_grad  # replaced by the dynamic head


def test_config_options_round_trip_and_old_dicts():
    cfg = IAUNetConfig(**BASE, **ALL)
    d = cfg.to_dict()
    assert d["centre_guidance"] is True and config_from_dict(d) == cfg
    old = IAUNetConfig(**BASE).to_dict()  # no option keys, as in older checkpoints
    assert config_from_dict(old).pctrans_options == ()
    assert cfg.replace(contrast_losses=False).pctrans_options == ("centre_guidance",
                                                                  "dynamic_mask_head")
    assert "centre guidance" in cfg.describe()
    with pytest.raises(ValueError, match="centre_guidance"):
        IAUNetConfig(**BASE, dynamic_mask_head=True)


def test_dynamic_head_equals_per_query_convs():
    torch.manual_seed(1)
    head = DynamicMaskHead(mask_dim=12, hidden_dim=10)
    normed = torch.randn(2, 3, 10)
    embed = head.pixel_embed(torch.randn(2, 12, 5, 7))
    centres = torch.rand(2, 3, 2)
    fast = head(normed, embed, centres)
    layers = head.split(head.controller(normed))
    ys, xs = torch.meshgrid((torch.arange(5) + 0.5) / 5, (torch.arange(7) + 0.5) / 7,
                            indexing="ij")
    for b in range(2):
        for q in range(3):
            rel = torch.stack([xs - centres[b, q, 0], ys - centres[b, q, 1]])
            x = torch.cat([embed[b], rel])[None]
            for i, (w, bias) in enumerate(layers):
                x = torch.nn.functional.conv2d(x, w[b, q][..., None, None], bias[b, q])
                if i < 2:
                    x = x.relu()
            torch.testing.assert_close(fast[b, q], x[0, 0], rtol=1e-4, atol=1e-5)


def test_centre_embedding_matches_the_pixel_encoding():
    pe = PositionEmbeddingSine(16, normalize=True)(torch.zeros(1, 1, 6, 9))[0]  # (32, 6, 9)
    i, j = 2, 7
    point = torch.tensor([[(j + 1) / 9, (i + 1) / 6]])  # the map's own normalised position
    torch.testing.assert_close(sine_embed_points(point, 16)[0], pe[:, i, j], atol=1e-4, rtol=0)


def test_checkpoint_round_trip_with_options(tmp_path):
    model = _model(**ALL).eval()
    path = save_checkpoint(tmp_path / "pct.pt", model)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.config.pctrans_options
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x, with_aux=False), loaded.model(x, with_aux=False)
    for key in ("pred_masks", "pred_centres", "query_embeddings"):
        assert torch.equal(a[key], b[key])


def test_cluster_queries_merges_duplicates():
    logits = torch.full((3, 8, 8), -5.0)
    logits[0, 1:5, 1:5] = 5.0
    logits[1, 1:5, 1:6] = 3.0  # near duplicate of 0 (IoU 0.8)
    logits[2, 5:8, 5:8] = 5.0  # another cell
    scores, labels = torch.tensor([0.9, 0.7, 0.8]), torch.zeros(3, dtype=torch.int64)
    s, _, m = cluster_queries(scores, labels, logits, iou_threshold=0.7)
    assert len(s) == 2 and s.tolist() == pytest.approx([0.8, 0.8])
    expected = (torch.sigmoid(logits[0]) + torch.sigmoid(logits[1])) / 2
    torch.testing.assert_close(m[0].sigmoid(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(m[1], logits[2], atol=1e-4, rtol=0)
    # other class: never merged
    s2, _, _ = cluster_queries(scores, torch.tensor([0, 1, 0]), logits, iou_threshold=0.7)
    assert len(s2) == 3


def test_segmenter_runs_with_options_and_cluster_queries():
    model = _model(**ALL)
    image = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    for fuse in (True, False):
        settings = PostprocessSettings(score_threshold=0.0, cluster_queries=True, cluster_iou=0.5)
        seg = Segmenter(model, device="cpu", fuse=fuse, tile_size=None, settings=settings)
        plain = Segmenter(model, device="cpu", fuse=fuse, tile_size=None,
                          settings=PostprocessSettings(score_threshold=0.0))
        clustered, separate = seg.segment(image), plain.segment(image)
        assert clustered.image_shape == (64, 80)
        assert len(clustered) <= len(separate)

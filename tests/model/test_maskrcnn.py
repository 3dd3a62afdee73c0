"""Mask R-CNN as the second model family: build, config, checkpoints, Segmenter (CPU, tiny)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from napari_iaunet.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from napari_iaunet.cli import main
from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.inference.detections import detections_to_instances, paste_in_box
from napari_iaunet.model import (
    IAUNetConfig,
    MaskRCNNConfig,
    build_model,
    config_from_dict,
)
from napari_iaunet.model.maskrcnn import CBAM, PreparedTransform, load_maskrcnn_weights


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def r18_cbam():
    torch.manual_seed(0)
    return build_model(MaskRCNNConfig(variant="r18_cbam", input_size=64)).eval()


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------- building
def test_r50_fpn_is_torchvisions_maskrcnn_resnet50_fpn():
    ours = build_model(MaskRCNNConfig(variant="r50_fpn"))
    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    assert _count(ours) == _count(ref) == 43_975_515  # the paper: "44M"
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}  # a COCO file loads by name
    assert ours.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert isinstance(ours.transform, PreparedTransform)
    assert ours.roi_heads.score_thresh == 0.05 and ours.roi_heads.nms_thresh == 0.5


def test_r18_cbam_is_the_livecell_study_model(r18_cbam):
    m = r18_cbam
    assert _count(m) == 30_343_907
    assert sum(isinstance(x, CBAM) for x in m.modules()) == 4
    assert m.rpn.anchor_generator.sizes == ((32,), (64,), (128,))
    assert m.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 3
    assert m.roi_heads.box_roi_pool.output_size == (7, 7)
    assert isinstance(m.roi_heads.box_head, TwoMLPHead)
    assert m.roi_heads.box_head.fc7.out_features == 1024
    assert isinstance(m.roi_heads.mask_head, MaskRCNNHeads) and len(m.roi_heads.mask_head) == 4
    assert isinstance(m.roi_heads.mask_predictor, MaskRCNNPredictor)
    assert m.roi_heads.score_thresh == 0.4 and m.roi_heads.nms_thresh == 0.5
    feats = m.backbone(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == \
        {"0": (8, 12), "1": (4, 6), "2": (2, 3)}  # strides 8 / 16 / 32, no extra level
    with torch.no_grad():
        out = m.detect([torch.randn(3, 64, 96)], score_threshold=0.0)[0]
    assert set(out) == {"boxes", "scores", "labels", "masks"}
    assert out["masks"].shape[1:] == (1, 28, 28)  # per-detection masks, never full-image ones
    assert m.roi_heads.score_thresh == 0.4  # detect() restores the config's threshold


def test_local_weights_load_by_name(tmp_path):
    other = build_model(MaskRCNNConfig(variant="r18_cbam", num_classes=3,
                                       class_names=("a", "b", "c")))
    torch.save({"model": other.state_dict()}, tmp_path / "coco_like.pth")
    torch.manual_seed(1)
    fresh = build_model(MaskRCNNConfig(variant="r18_cbam"))
    n = load_maskrcnn_weights(fresh, tmp_path / "coco_like.pth")
    # all but the class-specific predictors (cls_score, bbox_pred, mask_fcn_logits: w + b)
    assert n == len(fresh.state_dict()) - 6
    assert torch.equal(fresh.backbone.body.cbam3.spatial.conv.weight,
                       other.backbone.body.cbam3.spatial.conv.weight)
    assert not torch.equal(fresh.roi_heads.box_predictor.cls_score.weight[:2],
                           other.roi_heads.box_predictor.cls_score.weight[:2])
    # a bare ResNet state dict lands in the backbone body
    resnet = {k.removeprefix("backbone.body."): v for k, v in other.state_dict().items()
              if k.startswith("backbone.body.layer1.")}
    torch.save(resnet, tmp_path / "resnet.pth")
    assert load_maskrcnn_weights(fresh, tmp_path / "resnet.pth") == len(resnet)
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no tensor fits"):
        load_maskrcnn_weights(fresh, tmp_path / "bad.pth")


# ---------------------------------------------------------------------------------- config
def test_config_dispatch_and_round_trip():
    cfg = MaskRCNNConfig(variant="r18_cbam", num_classes=2, class_names=("a", "b"))
    d = cfg.to_dict()
    assert d["family"] == "maskrcnn" and d["score_threshold"] == 0.4
    assert config_from_dict(d) == cfg
    assert cfg.replace(input_size=128).input_size == 128
    old = IAUNetConfig().to_dict()  # IAUNet checkpoints carry no "family"
    assert "family" not in old and isinstance(config_from_dict(old), IAUNetConfig)
    assert isinstance(config_from_dict({**old, "family": "iaunet"}), IAUNetConfig)
    with pytest.raises(ValueError, match="unknown model family"):
        config_from_dict({"family": "yolo"})
    with pytest.raises(ValueError, match="variant"):
        MaskRCNNConfig(variant="r101")
    with pytest.raises(ValueError):
        IAUNetConfig.from_dict(d)


def test_checkpoint_round_trip_info_and_cli(tmp_path, r18_cbam, capsys):
    path = save_checkpoint(tmp_path / "m.pt", r18_cbam, {"description": "tiny mask r-cnn"})
    info = read_checkpoint_info(path)
    assert isinstance(info.config, MaskRCNNConfig) and info.config == r18_cbam.config
    text = info.summary()
    assert "Mask R-CNN R18-CBAM-FPN" in text and "input 64px" in text and "cell" in text
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    for k, v in r18_cbam.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert main(["info", str(path)]) == 0
    assert "Mask R-CNN R18-CBAM-FPN" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    assert '"family": "maskrcnn"' in capsys.readouterr().out


# ---------------------------------------------------------------------------------- inference
def test_segmenter_on_maskrcnn_returns_instances(r18_cbam):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (50, 80), dtype=np.uint16)  # 16-bit gray, not square
    seg = Segmenter(r18_cbam, device="cpu", settings=PostprocessSettings(score_threshold=0.0),
                    tile_size=None)
    inst = seg.segment(image)
    assert inst.image_shape == (50, 80)
    assert len(inst) > 0  # random weights, threshold 0: some detections pass
    for crop, (y0, x0, y1, x1) in zip(inst.crops, inst.boxes):
        assert 0 <= y0 < y1 <= 50 and 0 <= x0 < x1 <= 80
        assert crop.shape == (y1 - y0, x1 - x0) and crop.any()
    assert np.all(np.diff(inst.scores) <= 0)
    strict = Segmenter(r18_cbam, device="cpu", tile_size=None,
                       settings=PostprocessSettings(score_threshold=0.99)).segment(image)
    assert len(strict) <= len(inst) and all(strict.scores > 0.99)


def test_detections_paste_inside_their_boxes():
    # resized 32×64 image shown at 64×128: every coordinate doubles
    boxes = torch.tensor([[4.0, 2.0, 20.0, 18.0], [30.0, 10.0, 40.0, 30.0]])
    masks = torch.zeros(2, 1, 28, 28)
    masks[0] = 1.0  # fills its box
    masks[1, 0, 7:21, 7:21] = 1.0  # the central half of its box
    inst = detections_to_instances(boxes, torch.tensor([0.6, 0.9]), torch.tensor([1, 1]),
                                   masks, (32, 64), (64, 128), PostprocessSettings(0.5))
    assert len(inst) == 2 and inst.scores.tolist() == pytest.approx([0.9, 0.6])
    assert inst.class_ids.tolist() == [0, 0]
    # the full box (8, 4, 40, 36 in y0 x0 y1 x1 original pixels), give or take the edge pixel
    y0, x0, y1, x1 = inst.boxes[1]
    assert abs(y0 - 4) <= 1 and abs(x0 - 8) <= 1 and abs(y1 - 36) <= 1 and abs(x1 - 40) <= 1
    # the central half of box (60, 20)-(80, 60)
    y0, x0, y1, x1 = inst.boxes[0]
    assert abs(y0 - 30) <= 1 and abs(x0 - 65) <= 1 and abs(y1 - 50) <= 1 and abs(x1 - 75) <= 1
    low = detections_to_instances(boxes, torch.tensor([0.1, 0.2]), torch.tensor([1, 1]),
                                  masks, (32, 64), (64, 128), PostprocessSettings(0.5))
    assert len(low) == 0 and low.image_shape == (64, 128)


def test_paste_is_exact_on_the_map_grid_and_close_to_torchvision():
    yy, xx = np.mgrid[:28, :28]
    prob = (1 / (1 + np.exp(-(8 - np.hypot(yy - 12, xx - 15)) * 0.8))).astype(np.float32)
    # a box that is the map's own grid: pasting is the identity
    (y0, x0, y1, x1), crop = paste_in_box(prob, (0.0, 0.0, 28.0, 28.0), (40, 40))
    ours = np.zeros((40, 40), bool)
    ours[y0:y1, x0:x1] = crop
    assert np.array_equal(ours[:28, :28], prob > 0.5) and not ours[28:].any()
    # torchvision stretches the map over one more pixel (its legacy "+1"); otherwise the same
    box = (13.0, 21.0, 71.0, 60.0)
    ref = paste_masks_in_image(torch.from_numpy(prob)[None, None], torch.tensor([box]),
                               (90, 100))[0, 0].numpy() > 0.5
    (y0, x0, y1, x1), crop = paste_in_box(prob, box, (90, 100))
    ours = np.zeros((90, 100), bool)
    ours[y0:y1, x0:x1] = crop
    assert (ours & ref).sum() / (ours | ref).sum() > 0.9
    assert (ours & ~ref).sum() <= 2  # ours lies inside torchvision's slightly larger mask
    assert paste_in_box(np.zeros((28, 28), np.float32), box, (90, 100)) is None

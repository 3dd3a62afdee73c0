import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_iaunet.inference.postprocess import PostprocessSettings, postprocess, remove_duplicates
from napari_iaunet.instances import Instances


def _blob_logits(hm, wm, centres, radius, q):
    yy, xx = torch.meshgrid(torch.arange(hm), torch.arange(wm), indexing="ij")
    masks = torch.full((q, hm, wm), -8.0)
    for i, (cy, cx) in enumerate(centres):
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
        masks[i] = 6.0 * (radius - d) / radius
    return masks


def _logits(cls_probs):
    p = torch.tensor(cls_probs).clamp(1e-6, 1 - 1e-6)
    return torch.stack([p.log(), (1 - p).log()], dim=1)  # softmax gives back p


def test_exact_match_with_full_interpolation_when_no_rescale():
    hm, wm = 16, 24
    masks = _blob_logits(hm, wm, [(8, 6), (8, 16), (3, 20)], 5.0, 4)
    logits = _logits([0.99, 0.95, 0.9, 0.001])
    settings = PostprocessSettings(score_threshold=0.05)
    inst = postprocess(logits, masks, (64, 96), (64, 96), (64, 96), settings)
    full = F.interpolate(masks[None].sigmoid(), size=(64, 96), mode="bilinear",
                         align_corners=False)[0]
    expected = full[:3] > 0.5
    assert len(inst) == 3
    for i in range(3):
        # instances come sorted by score; match each to its expected mask
        ious = [(inst.mask(i) & e.numpy()).sum() / (inst.mask(i) | e.numpy()).sum()
                for e in expected]
        assert max(ious) == pytest.approx(1.0)
    # score = class prob × maskness (mean probability inside the mask)
    p0 = full[0][expected[0]]
    assert inst.scores[0] == pytest.approx(0.99 * float(p0.mean()), rel=1e-4)


def test_rescaled_masks_agree_with_two_step_reference():
    hm, wm = 32, 32  # padded 128×128, image resized to 128×100, original 540×422
    masks = _blob_logits(hm, wm, [(10, 10), (20, 14), (12, 20)], 6.0, 3)
    logits = _logits([0.9, 0.8, 0.7])
    original, resized = (540, 422), (128, 100)
    inst = postprocess(logits, masks, (128, 128), resized, original,
                       PostprocessSettings(score_threshold=0.01))
    up = F.interpolate(masks[None].sigmoid(), size=(128, 128), mode="bilinear",
                       align_corners=False)[:, :, : resized[0], : resized[1]]
    ref = F.interpolate(up, size=original, mode="bilinear", align_corners=False)[0] > 0.5
    assert len(inst) == 3
    for i in range(3):
        m = ref[i].numpy()
        j = int(np.argmax([(inst.mask(k) & m).sum() for k in range(3)]))
        iou = (inst.mask(j) & m).sum() / (inst.mask(j) | m).sum()
        assert iou > 0.98


def test_overlapping_instances_survive_and_thresholds_apply():
    masks = _blob_logits(16, 16, [(8, 6), (8, 9)], 5.0, 2)  # heavy overlap (IoU ≈ 0.5)
    logits = _logits([0.9, 0.6])
    inst = postprocess(logits, masks, (64, 64), (64, 64), (64, 64),
                       PostprocessSettings(score_threshold=0.3, duplicate_iou=None))
    assert len(inst) == 2
    assert (inst.mask(0) & inst.mask(1)).any()
    high = postprocess(logits, masks, (64, 64), (64, 64), (64, 64),
                       PostprocessSettings(score_threshold=0.7))
    assert len(high) == 1
    dedup = postprocess(logits, masks, (64, 64), (64, 64), (64, 64),
                        PostprocessSettings(score_threshold=0.3, duplicate_iou=0.3))
    assert len(dedup) == 1 and dedup.scores[0] == pytest.approx(inst.scores[0])


def test_default_filter_keeps_overlapping_cells_and_drops_a_repeated_one():
    # two cells overlapping like the most-overlapping annotated pair of the shared datasets
    # (mask IoU ≈ 0.3) and a third query repeating the first cell, slightly shifted
    masks = _blob_logits(16, 16, [(8, 5), (8, 10), (8, 5.5)], 5.0, 3)
    logits = _logits([0.9, 0.8, 0.7])
    kept = postprocess(logits, masks, (64, 64), (64, 64), (64, 64), PostprocessSettings(0.3))
    everything = postprocess(logits, masks, (64, 64), (64, 64), (64, 64),
                             PostprocessSettings(0.3, duplicate_iou=None))
    iou = everything.pairwise_iou()
    assert 0.15 < iou[0, 1] < 0.5 and iou[0, 2] > 0.8  # the premise
    assert PostprocessSettings().duplicate_iou == 0.5
    assert len(kept) == 2 and (kept.mask(0) & kept.mask(1)).any()
    np.testing.assert_allclose(kept.scores, everything.scores[:2])
    assert list(kept.ids) == [1, 2]


def test_nothing_found_gives_empty_instances():
    masks = torch.full((5, 8, 8), -5.0)
    inst = postprocess(_logits([0.9] * 5), masks, (32, 32), (32, 32), (100, 100))
    assert len(inst) == 0 and inst.image_shape == (100, 100)


def test_multiclass_labels():
    masks = _blob_logits(8, 8, [(4, 4)], 3.0, 1)
    logits = torch.tensor([[0.0, 5.0, 0.0]])  # class 1 of 2, low no-object
    inst = postprocess(logits, masks, (32, 32), (32, 32), (32, 32),
                       PostprocessSettings(score_threshold=0.1))
    assert list(inst.class_ids) == [1]


def test_remove_duplicates_keeps_best():
    m = np.zeros((3, 20, 20), bool)
    m[0, 2:10, 2:10] = m[1, 2:10, 3:11] = m[2, 12:18, 12:18] = True
    inst = Instances.from_masks(m, scores=[0.5, 0.9, 0.7])
    out = remove_duplicates(inst, 0.5)
    np.testing.assert_allclose(sorted(out.scores), [0.7, 0.9], rtol=1e-6)


def test_remove_duplicates_a_dropped_mask_drops_nothing():
    # a chain: b repeats a, c repeats b, but c and a barely overlap -> a and c stay
    m = np.zeros((3, 10, 30), bool)
    m[0, :, 0:10] = m[1, :, 3:13] = m[2, :, 6:16] = True  # IoU(a,b) = IoU(b,c) = 7/13
    inst = Instances.from_masks(m, scores=[0.9, 0.8, 0.7])
    out = remove_duplicates(inst, 0.5)
    np.testing.assert_allclose(out.scores, [0.9, 0.7], rtol=1e-6)


def test_settings_validation():
    with pytest.raises(ValueError):
        PostprocessSettings(score_threshold=1.5)
    with pytest.raises(ValueError):
        PostprocessSettings(duplicate_iou=0.0)

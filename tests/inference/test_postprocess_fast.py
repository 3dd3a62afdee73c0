"""The fast post-processing paths agree with the straightforward per-instance ``grid_sample`` one.

``_reference_postprocess`` is the previous implementation (one ``grid_sample`` per instance box);
the separable numpy path (CPU) and the batched torch path (GPU) must give the same instances: equal
masks except at pixels whose probability lies within 1e-5 of the threshold (float32 rounding of two
equivalent formulas), scores equal to 1e-4 relative (the reference sums probabilities in float32).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_iaunet.inference import postprocess as pp
from napari_iaunet.inference.postprocess import PostprocessSettings, postprocess
from napari_iaunet.instances import Instances

NEAR = 1e-5


def _reference_postprocess(pred_logits, pred_masks, padded_shape, resized_shape, original_shape,
                           settings):
    """Per-instance grid_sample over the support box; returns (instances, probability maps)."""
    H, W = original_shape
    q, c1 = pred_logits.shape
    nc = c1 - 1
    probs = pred_logits.float().softmax(-1)[:, :nc]
    cls_scores, flat = probs.flatten().topk(min(q, probs.numel()))
    query_idx, labels = flat // nc, flat % nc
    keep = cls_scores > settings.score_threshold
    cls_scores, query_idx, labels = cls_scores[keep], query_idx[keep], labels[keep]
    low = pred_masks[query_idx].float().sigmoid()
    hm, wm = low.shape[-2:]
    hp, wp = padded_shape
    h, w = resized_shape
    sy, sx = h * hm / (H * hp), w * wm / (W * wp)
    hot = low > settings.mask_threshold
    any_rows, any_cols = hot.any(dim=2), hot.any(dim=1)
    boxes, crops, scores, classes, prob_maps = [], [], [], [], []
    for k in range(low.shape[0]):
        rows = torch.nonzero(any_rows[k]).flatten()
        if rows.numel() == 0:
            continue
        cols = torch.nonzero(any_cols[k]).flatten()
        y0, y1 = pp._support(int(rows[0]), int(rows[-1]), sy, hm, H)
        x0, x1 = pp._support(int(cols[0]), int(cols[-1]), sx, wm, W)
        if y0 >= y1 or x0 >= x1:
            continue
        ys = torch.arange(y0, y1, dtype=torch.float32)
        xs = torch.arange(x0, x1, dtype=torch.float32)
        gy = (2.0 * ((ys + 0.5) * sy) / hm) - 1.0
        gx = (2.0 * ((xs + 0.5) * sx) / wm) - 1.0
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        p = F.grid_sample(low[k][None, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0, 0]
        mask = p > settings.mask_threshold
        n = int(mask.sum())
        if n == 0 or n < settings.min_area:
            continue
        score = float(cls_scores[k]) * float((p * mask).sum()) / (n + 1e-6)
        if score <= settings.score_threshold:
            continue
        full = torch.zeros(H, W)
        full[y0:y1, x0:x1] = p
        boxes.append((y0, x0, y1, x1))
        crops.append(mask.numpy())
        scores.append(score)
        classes.append(int(labels[k]))
        prob_maps.append(full.numpy())
    return boxes, crops, scores, classes, prob_maps


def _random_case(seed, hm, wm, q, n_blobs):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(hm).float(), torch.arange(wm).float(), indexing="ij")
    masks = torch.full((q, hm, wm), -6.0)
    for i in range(n_blobs):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([hm, wm])
        r = 1.0 + 6.0 * float(torch.rand(1, generator=g))
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        noise = 0.8 * torch.randn(hm, wm, generator=g)
        masks[i] = 5.0 * (r - d) / r + noise
    p = torch.full((q,), 0.002)
    p[:n_blobs] = 0.3 + 0.69 * torch.rand(n_blobs, generator=g)
    logits = torch.stack([p.log(), (1 - p).log()], dim=1)
    return logits, masks


CASES = [  # (hm, wm, padded, resized, original): down-, up-scaling, non-square, padding
    (32, 32, (128, 128), (128, 100), (540, 422)),
    (16, 24, (64, 96), (64, 96), (64, 96)),
    (40, 40, (160, 160), (160, 150), (171, 160)),
    (128, 128, (512, 512), (512, 512), (1080, 1080)),
    (24, 32, (96, 128), (90, 128), (45, 64)),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", CASES, ids=[str(c[-1]) for c in CASES])
def test_fast_postprocess_matches_grid_sample_reference(case, seed):
    hm, wm, padded, resized, original = case
    logits, masks = _random_case(seed, hm, wm, q=12, n_blobs=9)
    settings = PostprocessSettings(score_threshold=0.05, duplicate_iou=None)  # every mask
    fast = postprocess(logits, masks, padded, resized, original, settings)
    boxes, crops, scores, _, prob_maps = _reference_postprocess(
        logits, masks, padded, resized, original, settings)
    assert len(fast) == len(crops)
    # match by score (both sort the same way)
    order = np.argsort(-np.asarray(scores), kind="stable")
    np.testing.assert_allclose(fast.scores, np.asarray(scores, np.float32)[order], rtol=1e-4)
    for i, j in enumerate(order):
        ref = np.zeros(original, bool)
        y0, x0, y1, x1 = boxes[j]
        ref[y0:y1, x0:x1] = crops[j]
        differ = fast.mask(i) != ref
        assert not differ.any() or (np.abs(prob_maps[j][differ] - 0.5) < NEAR).all()


@pytest.mark.parametrize("case", CASES, ids=[str(c[-1]) for c in CASES])
def test_batched_device_path_matches_numpy_path(case):
    hm, wm, padded, resized, original = case
    _, masks = _random_case(3, hm, wm, q=10, n_blobs=10)
    H, W = original
    sy = resized[0] * hm / (H * padded[0])
    sx = resized[1] * wm / (W * padded[1])
    candidates = list(range(10))
    rng = np.random.default_rng(0)
    boxes = []
    for _ in candidates:
        y0, x0 = int(rng.integers(0, H - 2)), int(rng.integers(0, W - 2))
        boxes.append((y0, x0, int(rng.integers(y0 + 1, H + 1)), int(rng.integers(x0 + 1, W + 1))))
    a = pp._sample_boxes_numpy(masks.numpy(), candidates, boxes, sy, sx, 0.5)
    b = pp._sample_boxes_batched(masks.sigmoid(), candidates, boxes, sy, sx, 0.5)
    for (ma, na, sa), (mb, nb, sb) in zip(a, b):
        assert ma.shape == mb.shape
        assert abs(na - nb) <= max(1, na // 1000)  # threshold ties only
        assert sa == pytest.approx(sb, rel=1e-4, abs=1e-3)


def test_fast_postprocess_handles_empty_and_edge_masks():
    masks = torch.full((3, 8, 8), -5.0)
    masks[0, 0, 0] = 5.0  # one hot corner pixel
    masks[1, :, 7] = 5.0  # a column on the right border
    logits = torch.tensor([[3.0, -3.0]] * 3)
    inst = postprocess(logits, masks, (32, 32), (32, 32), (50, 50),
                       PostprocessSettings(score_threshold=0.1))
    assert isinstance(inst, Instances) and inst.image_shape == (50, 50)
    assert len(inst) == 2
    assert all(c.any() for c in inst.crops)

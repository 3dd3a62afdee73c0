import numpy as np
import pytest
import torch

from napari_iaunet.training.matcher import (
    HungarianMatcher,
    pairwise_dice,
    pairwise_sigmoid_bce,
    point_sample,
)


def _masks(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` distinct random rectangles."""
    rng = np.random.default_rng(seed)
    out = torch.zeros(n, size, size)
    for i in range(n):
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(5, 10, 2)
        out[i, y:y + h, x:x + w] = 1
    return out


def test_point_sample_hits_pixel_centres():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.375, 0.125], [0.875, 0.625]]])  # (x, y)
    assert point_sample(img, coords)[0, 0].tolist() == [0.0, 1.0, 11.0]


def test_pairwise_costs_match_elementwise_definitions():
    logits = torch.randn(3, 50)
    targets = (torch.rand(4, 50) > 0.5).float()
    bce = pairwise_sigmoid_bce(logits, targets)
    dice = pairwise_dice(logits, targets)
    for i in range(3):
        for j in range(4):
            ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], targets[j])
            assert bce[i, j].item() == pytest.approx(ref.item(), rel=1e-5)
            p = logits[i].sigmoid()
            d = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
            assert dice[i, j].item() == pytest.approx(d.item(), rel=1e-5)


def test_perfect_prediction_is_matched_to_itself():
    gt = _masks(4, seed=1)
    q = 7
    perm = [5, 0, 3, 6]  # query perm[j] predicts ground truth j
    masks = torch.full((q, 32, 32), -10.0)
    logits = torch.tensor([[-5.0, 5.0]]).repeat(q, 1)  # no object
    for j, qi in enumerate(perm):
        masks[qi] = gt[j] * 20 - 10
        logits[qi] = torch.tensor([5.0, -5.0])
    out = {"pred_logits": logits[None], "pred_masks": masks[None]}
    tgt = [{"labels": torch.zeros(4, dtype=torch.int64), "masks": gt.bool()}]
    (rows, cols), = HungarianMatcher(num_points=2048)(out, tgt)
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm))


def test_prediction_at_lower_resolution_matches():
    gt = _masks(3, size=64, seed=2)
    low = torch.nn.functional.avg_pool2d(gt[:, None], 4)[:, 0]  # predictions at 1/4
    masks = torch.cat([low.flip(0) * 20 - 10, torch.full((2, 16, 16), -10.0)])
    logits = torch.zeros(5, 2)
    out = {"pred_logits": logits[None], "pred_masks": masks[None]}
    tgt = [{"labels": torch.zeros(3, dtype=torch.int64), "masks": gt.bool()}]
    (rows, cols), = HungarianMatcher()(out, tgt)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 1, 2: 0}


def test_cost_weights_decide_the_assignment():
    """Query 0 has the right class but a poor mask, query 1 the reverse: weights pick the winner."""
    gt = _masks(1, seed=3)
    masks = torch.stack([-gt[0] * 20 + 10, gt[0] * 20 - 10])  # query 0: inverted; 1: exact
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])  # query 0 "cell", query 1 "no object"
    out = {"pred_logits": logits[None], "pred_masks": masks[None]}
    tgt = [{"labels": torch.zeros(1, dtype=torch.int64), "masks": gt.bool()}]
    (rows, _), = HungarianMatcher(cost_class=1.0, cost_bce=0.0, cost_dice=0.0)(out, tgt)
    assert rows.tolist() == [0]
    (rows, _), = HungarianMatcher(cost_class=1.0, cost_bce=5.0, cost_dice=2.0)(out, tgt)
    assert rows.tolist() == [1]


def test_cost_matrix_is_the_weighted_sum():
    torch.manual_seed(0)
    logits, masks = torch.randn(5, 2), torch.randn(5, 16, 16)
    gt, labels = _masks(3, size=16, seed=4), torch.zeros(3, dtype=torch.int64)

    def cost(c, b, d):
        g = torch.Generator().manual_seed(11)
        return HungarianMatcher(c, b, d, num_points=500).cost_matrix(logits, masks, labels, gt, g)

    parts = [cost(1, 0, 0), cost(0, 1, 0), cost(0, 0, 1)]
    torch.testing.assert_close(cost(1.0, 5.0, 2.0), parts[0] + 5 * parts[1] + 2 * parts[2])
    torch.testing.assert_close(parts[0], -logits.softmax(-1)[:, [0, 0, 0]])


def test_no_targets_gives_empty_match():
    out = {"pred_logits": torch.zeros(1, 4, 2), "pred_masks": torch.zeros(1, 4, 8, 8)}
    tgt = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}]
    (rows, cols), = HungarianMatcher()(out, tgt)
    assert rows.numel() == 0 and cols.numel() == 0


def test_point_sample_indexed_equals_grid_sample():
    from napari_iaunet.training.matcher import point_sample_indexed

    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, 13, 17, generator=g) > 0.5).float()
    index = torch.tensor([3, 0, 3, 4])
    coords = torch.rand(4, 300, 2, generator=g) * 1.2 - 0.1  # some points outside the image
    ref = point_sample(masks[index][:, None], coords)[:, 0]
    torch.testing.assert_close(point_sample_indexed(masks, index, coords), ref)

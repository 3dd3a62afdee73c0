import numpy as np
import pytest

from napari_iaunet.instances import Instances


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_from_masks_roundtrip_keeps_overlap():
    shape = (60, 80)
    masks = np.stack([_disc(shape, 30, 30, 12), _disc(shape, 30, 45, 12), _disc(shape, 5, 75, 3)])
    inst = Instances.from_masks(masks, scores=[0.9, 0.8, 0.7])
    assert len(inst) == 3
    np.testing.assert_array_equal(inst.to_dense(), masks)
    # crops are compact: no crop is the full frame
    assert all(c.size < shape[0] * shape[1] / 4 for c in inst.crops)
    np.testing.assert_array_equal(inst.areas, masks.reshape(3, -1).sum(1))
    assert list(inst.ids) == [1, 2, 3]


def test_empty_masks_dropped_with_their_attributes():
    shape = (10, 10)
    masks = np.zeros((3, *shape), bool)
    masks[0, 2:4, 2:4] = True
    masks[2, 5:9, 5:9] = True
    inst = Instances.from_masks(masks, scores=[0.1, 0.2, 0.3], ids=[7, 8, 9])
    assert list(inst.ids) == [7, 9]
    np.testing.assert_allclose(inst.scores, [0.1, 0.3])


def test_bbox_xywh_and_subset():
    shape = (20, 30)
    m = np.zeros(shape, bool)
    m[3:7, 10:15] = True
    inst = Instances.from_masks([m])
    np.testing.assert_array_equal(inst.bboxes_xywh()[0], [10, 3, 5, 4])
    assert len(inst[[0]]) == 1 and len(inst[np.array([], int)]) == 0
    np.testing.assert_array_equal(inst.mask(0), m)


def test_label_image_roundtrip():
    lab = np.zeros((16, 16), np.int32)
    lab[1:5, 1:5] = 3
    lab[8:12, 8:15] = 10
    inst = Instances.from_label_image(lab)
    assert sorted(inst.ids) == [3, 10]
    dense = inst.to_dense()
    assert dense[inst.index_of(10)].sum() == 28


def test_pairwise_iou_matches_dense():
    shape = (40, 40)
    a = Instances.from_masks([_disc(shape, 20, 15, 8), _disc(shape, 20, 25, 8)])
    dense = a.to_dense()
    inter = (dense[0] & dense[1]).sum()
    union = (dense[0] | dense[1]).sum()
    iou = a.pairwise_iou()
    assert iou[0, 1] == pytest.approx(inter / union)
    assert iou[0, 0] == pytest.approx(1.0)


def test_pairwise_iou_with_itself_agrees_with_a_copy():
    # the self case computes each pair once and mirrors it; a copy goes through every pair
    rng = np.random.default_rng(0)
    shape = (60, 60)
    a = Instances.from_masks([_disc(shape, *rng.integers(10, 50, 2), rng.integers(3, 12))
                              for _ in range(12)])
    copy = Instances(a.image_shape, a.boxes.copy(), [c.copy() for c in a.crops])
    both = a.pairwise_iou()
    np.testing.assert_array_equal(both, a.pairwise_iou(copy))
    assert (both > 0).sum() > len(a)  # some pairs overlap: the test covers the mirroring


def test_validation_errors_are_clear():
    with pytest.raises(ValueError, match="outside the image"):
        Instances((10, 10), boxes=[[0, 0, 11, 5]], crops=[np.ones((11, 5), bool)])
    with pytest.raises(ValueError, match="unique"):
        Instances.from_masks(np.ones((2, 4, 4), bool), ids=[1, 1])
    with pytest.raises(ValueError, match="positive"):
        Instances.from_masks(np.ones((1, 4, 4), bool), ids=[0])


def test_rle_matches_pycocotools_decode():
    from pycocotools import mask as mask_utils

    shape = (33, 47)
    inst = Instances.from_masks([_disc(shape, 10, 10, 6), _disc(shape, 20, 30, 9)])
    for i, rle in enumerate(inst.to_rle()):
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), inst.mask(i))


def test_concatenate_and_tightened():
    shape = (20, 20)
    a = Instances.from_masks([_disc(shape, 5, 5, 3)])
    b = Instances.from_masks([_disc(shape, 14, 14, 3)])
    both = Instances.concatenate([a, b])
    assert len(both) == 2 and list(both.ids) == [1, 2]
    loose = Instances(shape, boxes=[[0, 0, 20, 20]], crops=[_disc(shape, 10, 10, 2)])
    tight = loose.tightened()
    assert tuple(tight.boxes[0]) == (8, 8, 13, 13)
    np.testing.assert_array_equal(tight.mask(0), loose.mask(0))

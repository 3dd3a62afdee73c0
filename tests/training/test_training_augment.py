import numpy as np
import pytest

from napari_iaunet.instances import Instances
from napari_iaunet.training.augment import (
    AugmentConfig,
    augment,
    flip,
    resize_crop,
    resize_longest,
    rot90,
)


def _scene(h: int = 40, w: int = 60):
    """Two overlapping L-shaped masks and an image that encodes them (to check geometry)."""
    a = np.zeros((h, w), bool)
    a[5:20, 5:12] = True
    a[15:20, 5:30] = True
    b = np.zeros((h, w), bool)
    b[10:35, 25:40] = True
    inst = Instances.from_masks([a, b])
    image = np.stack([a * 100.0, b * 100.0, np.zeros((h, w))], -1).astype(np.float32)
    return image, inst


def _consistent(image: np.ndarray, inst: Instances) -> None:
    dense = inst.to_dense()
    for k in range(len(inst)):
        np.testing.assert_array_equal(dense[k], image[..., inst.ids[k] - 1] > 50)


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_matches_numpy(axis):
    image, inst = _scene()
    img2, inst2 = flip(image, inst, axis)
    np.testing.assert_array_equal(inst2.to_dense(), np.flip(inst.to_dense(), axis + 1))
    np.testing.assert_array_equal(img2, np.flip(image, axis))
    _consistent(img2, inst2)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_matches_numpy(k):
    image, inst = _scene()
    img2, inst2 = rot90(image, inst, k)
    assert inst2.image_shape == img2.shape[:2] == np.rot90(image, k).shape[:2]
    np.testing.assert_array_equal(inst2.to_dense(), np.rot90(inst.to_dense(), k, axes=(1, 2)))
    _consistent(img2, inst2)


def test_resize_crop_keeps_geometry_and_drops_cut_instances():
    image, inst = _scene()
    img2, inst2 = resize_crop(image, inst, 2.0, (0, 0, 40, 40))  # top-left quarter of 80×120
    assert img2.shape == (40, 40, 3)
    assert inst2.ids.tolist() == [1]  # mask b (x ≥ 50 after scaling) is cut away
    np.testing.assert_array_equal(inst2.mask(0), img2[..., 0] > 50)
    # nearest-neighbour exactness for an integer scale: each source pixel → a 2×2 block
    up = np.kron(inst.mask(0).astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    np.testing.assert_array_equal(inst2.mask(0), up[:40, :40])


def test_min_area_drops_slivers():
    image, inst = _scene()
    # a window that keeps only 2 columns × 15 rows of mask a
    _, kept = resize_crop(image, inst, 1.0, (0, 10, 40, 12), min_area=1)
    _, dropped = resize_crop(image, inst, 1.0, (0, 10, 40, 12), min_area=50)
    assert kept.ids.tolist() == [1] and len(dropped) == 0


def test_resize_longest():
    image, inst = _scene()
    img2, inst2 = resize_longest(image, inst, 120)  # ×2: nearest masks = bilinear image > 50
    assert img2.shape[:2] == inst2.image_shape == (80, 120)
    _consistent(img2, inst2)
    img3, inst3 = resize_longest(image, inst, 30)  # ×0.5, antialiased: agree up to the edges
    assert img3.shape[:2] == inst3.image_shape == (20, 30)
    for k in range(len(inst3)):
        agree = inst3.mask(k) == (img3[..., inst3.ids[k] - 1] > 50)
        assert agree.mean() > 0.95


def test_augment_is_reproducible_consistent_and_bounded():
    image, inst = _scene(90, 130)
    cfg = AugmentConfig(input_size=64)
    seen_shapes = set()
    for seed in range(12):
        a_img, a_inst = augment(image, inst, np.random.default_rng(seed), cfg)
        b_img, b_inst = augment(image, inst, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_inst.to_dense(), b_inst.to_dense())
        assert a_img.shape[0] <= 64 and a_img.shape[1] <= 64
        assert a_inst.image_shape == a_img.shape[:2]
        seen_shapes.add(a_img.shape[:2])
        for k in range(len(a_inst)):  # bilinear image vs nearest mask: agree away from edges
            m = a_inst.mask(k)
            assert (a_img[..., a_inst.ids[k] - 1][m] > 20).mean() > 0.9
    assert len(seen_shapes) > 1  # scale jitter / rotation change the output size


def test_augment_drops_instances_outside_the_crop():
    h, w = 400, 400
    a = np.zeros((h, w), bool)
    a[:20, :20] = True
    b = np.zeros((h, w), bool)
    b[380:, 380:] = True
    inst = Instances.from_masks([a, b])
    image = np.zeros((h, w, 3), np.float32)
    cfg = AugmentConfig(input_size=64, hflip=0, vflip=0, rot90=0, scale_range=(1.5, 1.5))
    counts = set()
    for seed in range(20):
        _, out = augment(image, inst, np.random.default_rng(seed), cfg)
        counts.add(len(out))  # a 64-px window of a 96-px image never holds both corners
        assert len(out) <= 1
    assert 0 in counts or 1 in counts


def test_resize_only_is_the_plain_resize():
    image, inst = _scene(90, 130)
    cfg = AugmentConfig.resize_only(64)
    want_img, want_inst = resize_longest(image, inst, 64)
    for seed in range(6):  # no random flip, rotation, jitter or crop, whatever the seed
        img, out = augment(image, inst, np.random.default_rng(seed), cfg)
        np.testing.assert_array_equal(img, want_img)
        np.testing.assert_array_equal(out.to_dense(), want_inst.to_dense())
        assert img.shape[:2] == (44, 64)


def test_bad_config():
    with pytest.raises(ValueError):
        AugmentConfig(scale_range=(1.5, 0.8))

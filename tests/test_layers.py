"""Instances ⇄ non-overlapping label images: exact round trips, few layers, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.draw import disk

from napari_iaunet.instances import Instances
from napari_iaunet.layers import (
    assign_layers,
    features_table,
    free_layer,
    label_dtype,
    merge_layers,
    overlap_pairs,
    split_into_layers,
)


def _disc(shape, cy, cx, r):
    m = np.zeros(shape, bool)
    m[disk((cy, cx), r, shape=shape)] = True
    return m


def random_discs(n, shape=(1024, 1024), r=(6, 14), seed=0, ids=None) -> Instances:
    """``n`` discs at random places (DSB-like density at n≈1000 on 1024²), overlapping freely."""
    rng = np.random.default_rng(seed)
    boxes, crops = [], []
    for _ in range(n):
        rad = rng.uniform(*r)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        y0, x0 = max(0, int(cy - rad)), max(0, int(cx - rad))
        y1, x1 = min(shape[0], int(cy + rad) + 2), min(shape[1], int(cx + rad) + 2)
        crop = np.zeros((y1 - y0, x1 - x0), bool)
        crop[disk((cy - y0, cx - x0), rad, shape=crop.shape)] = True
        boxes.append((y0, x0, y1, x1))
        crops.append(crop)
    inst = Instances(shape, np.asarray(boxes), crops, scores=rng.uniform(0.3, 1, n),
                     class_ids=rng.integers(0, 3, n))
    inst = inst.tightened()
    return inst if ids is None else inst.with_ids(ids[: len(inst)])


def _check_exact(inst: Instances, back: Instances):
    """Same ids and, per id, the same pixels (compared as tight box + crop)."""
    assert sorted(back.ids.tolist()) == sorted(inst.ids.tolist())
    a, b = inst.tightened(), back.tightened()
    for i, instance_id in enumerate(a.ids.tolist()):
        j = b.index_of(instance_id)
        np.testing.assert_array_equal(b.boxes[j], a.boxes[i])
        np.testing.assert_array_equal(b.crops[j], a.crops[i])


def test_round_trip_is_exact_with_same_ids():
    inst = random_discs(300, shape=(256, 256), seed=1, ids=np.arange(7, 7 + 3000, 10))
    layers = split_into_layers(inst)
    assert all(li.dtype == np.uint32 and li.shape == (256, 256) for li in layers)
    assert len(layers) >= 2  # heavy overlap
    # overlapping instances never share a layer; every id sits in exactly one layer
    seen = np.concatenate([np.unique(li[li > 0]) for li in layers])
    assert len(seen) == len(set(seen.tolist())) == len(inst)
    back = merge_layers(layers, scores=dict(zip(inst.ids.tolist(), inst.scores.tolist())),
                        class_ids=dict(zip(inst.ids.tolist(), inst.class_ids.tolist())))
    _check_exact(inst, back)
    order = [back.index_of(i) for i in inst.ids.tolist()]
    np.testing.assert_allclose(back.scores[order], inst.scores)
    np.testing.assert_array_equal(back.class_ids[order], inst.class_ids)


def test_overlap_graph_and_colouring_are_valid():
    inst = random_discs(120, shape=(160, 160), seed=2)
    pairs = overlap_pairs(inst)
    dense = inst.to_dense()
    for i, j in pairs.tolist():
        assert i < j and (dense[i] & dense[j]).any()
    # brute force: every truly overlapping pair is found
    flat = dense.reshape(len(inst), -1).astype(np.int32)
    truth = {(i, j) for i, j in zip(*np.nonzero(np.triu(flat @ flat.T, 1)))}
    assert truth == {tuple(p) for p in pairs.tolist()}
    layer = assign_layers(inst)
    assert all(layer[i] != layer[j] for i, j in pairs.tolist())


def test_touching_but_not_overlapping_share_a_layer():
    a = np.zeros((20, 20), bool)
    a[2:10, 2:10] = True
    b = np.zeros((20, 20), bool)
    b[10:18, 2:10] = True  # shares an edge, not a pixel
    inst = Instances.from_masks([a, b])
    assert len(split_into_layers(inst)) == 1


def test_three_mutually_overlapping_need_three_layers():
    shape = (40, 40)
    masks = [_disc(shape, 20, 15, 8), _disc(shape, 20, 25, 8), _disc(shape, 14, 20, 8)]
    layers = split_into_layers(Instances.from_masks(masks))
    assert len(layers) == 3


def test_empty_and_dtypes():
    empty = Instances.empty((5, 6))
    [only] = split_into_layers(empty)
    assert only.shape == (5, 6) and not only.any()
    assert split_into_layers(empty, min_layers=2)[1].shape == (5, 6)
    assert len(merge_layers([only])) == 0
    inst = random_discs(10, shape=(64, 64), seed=3)
    assert split_into_layers(inst, dtype="smallest")[0].dtype == np.uint8
    big = inst.with_ids(np.arange(1, 11) + 70_000)
    assert split_into_layers(big, dtype="smallest")[0].dtype == np.uint32
    assert label_dtype(2**40) == np.uint64
    with pytest.raises(ValueError, match="does not fit"):
        split_into_layers(big, dtype=np.uint16)
    huge = inst.with_ids(np.arange(1, 11) * 1_000_000_007)  # beyond uint32: uint64 layers
    _check_exact(huge, merge_layers(split_into_layers(huge)))


def test_merge_unions_a_value_found_in_several_layers_and_reads_features():
    a = np.zeros((10, 10), np.uint16)
    b = np.zeros((10, 10), np.uint16)
    a[1:3, 1:3] = 5
    b[6:8, 6:9] = 5
    b[0, 9] = 2
    inst = merge_layers([a, b], features={"index": [5, 2], "score": [0.5, 0.25],
                                          "class": [1, 0]})
    assert inst.ids.tolist() == [2, 5]
    assert inst.areas.tolist() == [1, 10]
    assert inst.scores.tolist() == [0.25, 0.5] and inst.class_ids.tolist() == [0, 1]
    default = merge_layers([a], default_score=0.7, default_class=2)
    assert default.scores.tolist() == pytest.approx([0.7]) and default.class_ids.tolist() == [2]
    with pytest.raises(ValueError, match="shape"):
        merge_layers([a, np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="integers"):
        merge_layers([a.astype(float)])


def test_features_table_and_free_layer():
    inst = random_discs(20, shape=(100, 100), seed=4)
    table = features_table(inst, class_names=("a", "b", "c"))
    assert set(table) == {"index", "id", "score", "area", "class", "class_name"}
    np.testing.assert_array_equal(table["index"], inst.ids)
    np.testing.assert_array_equal(table["area"], inst.areas)
    assert table["class_name"][0] == "abc"[inst.class_ids[0]]
    layers = split_into_layers(inst)
    i = 0
    y0, x0, y1, x1 = inst.boxes[i]
    own = [np.where(li == inst.ids[i], 0, li) for li in layers]  # take the cell out first
    k = free_layer(own, inst.boxes[i], inst.crops[i])
    assert k < len(layers) and not own[k][y0:y1, x0:x1][inst.crops[i]].any()
    full = [np.ones((100, 100), np.uint32)]
    assert free_layer(full, inst.boxes[i], inst.crops[i]) == 1
    assert free_layer([np.zeros((100, 100), np.uint32)], inst.boxes[i], inst.crops[i]) == 0


def test_thousand_dsb_like_instances_split_fast():
    inst = random_discs(1000, seed=5)
    split_into_layers(inst[:10])  # warm-up (imports)
    start = time.perf_counter()
    layers = split_into_layers(inst)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"splitting 1000 instances took {elapsed:.2f} s"
    assert len(layers) <= 6  # random discs overlap freely; real DSB nuclei need 1 layer
    _check_exact(inst, merge_layers(layers))

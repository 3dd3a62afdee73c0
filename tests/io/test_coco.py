"""COCO I/O on synthetic shapes: polygons, RLE, holes, multi-part cells, validation, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from skimage.draw import disk

from napari_iaunet.instances import Instances
from napari_iaunet.io.coco import (
    coco_to_instances,
    crop_to_rle,
    douglas_peucker,
    instances_to_coco,
    instances_to_coco_single,
    mask_to_polygons,
    read_coco,
    read_predictions,
    to_coco_results,
    validate_coco,
    write_coco,
)

H, W = 96, 128


def _disc(cy, cx, r, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[disk((cy, cx), r, shape=shape)] = True
    return m


def shapes() -> Instances:
    """Two overlapping discs, a ring with a real hole, a two-part cell, a cell on the border."""
    ring = _disc(60, 90, 18) & ~_disc(60, 90, 8)
    two_part = np.zeros((H, W), bool)
    two_part[5:15, 5:20] = True
    two_part[20:32, 10:18] = True
    border = np.zeros((H, W), bool)
    border[80:, 0:12] = True
    masks = [_disc(40, 40, 14), _disc(45, 55, 12), ring, two_part, border]
    return Instances.from_masks(masks, scores=[0.9, 0.8, 0.7, 0.6, 0.5],
                                class_ids=[0, 1, 0, 1, 0])


def _masks_by_position(inst: Instances) -> list[np.ndarray]:
    return [inst.mask(i) for i in range(len(inst))]


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_polygon_round_trip_keeps_masks_overlaps_scores_classes():
    inst = shapes()
    coco = instances_to_coco_single(inst, "img.png", category_names=("cell", "debris"))
    anns = coco["annotations"]
    assert [a["category_id"] for a in anns] == [1, 2, 1, 2, 1]
    assert [a["score"] for a in anns] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert all(a["iscrowd"] == 0 for a in anns)
    assert [a["area"] for a in anns] == inst.areas.tolist()
    np.testing.assert_allclose([a["bbox"] for a in anns], inst.bboxes_xywh())
    # the two-part cell gets two polygons; the ring (real hole) falls back to lossless RLE
    assert isinstance(anns[3]["segmentation"], list) and len(anns[3]["segmentation"]) == 2
    assert isinstance(anns[2]["segmentation"], dict)
    [(image, back)] = coco_to_instances(coco)
    assert image["file_name"] == "img.png" and (image["height"], image["width"]) == (H, W)
    assert back.ids.tolist() == [1, 2, 3, 4, 5]
    assert back.class_ids.tolist() == [0, 1, 0, 1, 0]
    np.testing.assert_allclose(back.scores, inst.scores, atol=1e-6)
    for a, b in zip(_masks_by_position(inst), _masks_by_position(back)):
        assert _iou(a, b) >= 0.99
    assert (back.mask(0) & back.mask(1)).any()  # the overlap survives


def test_rle_round_trip_is_exact():
    inst = shapes()
    coco = instances_to_coco([inst], ["a.png"], category_names=("cell", "debris"), mode="rle")
    assert all(isinstance(a["segmentation"]["counts"], str) for a in coco["annotations"])
    [(_, back)] = coco_to_instances(json.loads(json.dumps(coco)))
    for a, b in zip(_masks_by_position(inst), _masks_by_position(back)):
        np.testing.assert_array_equal(a, b)


def test_crop_to_rle_matches_pycocotools_encode():
    inst = shapes()
    for i, rle in enumerate(inst.to_rle()):
        assert crop_to_rle(inst.crops[i], inst.boxes[i], inst.image_shape) == rle
    empty = crop_to_rle(np.zeros((0, 0), bool), (0, 0, 0, 0), (4, 5))
    assert empty["size"] == [4, 5]


def test_hole_handling_fill_and_pin_holes():
    ring = _disc(48, 64, 30) & ~_disc(48, 64, 12)
    pinhole = _disc(48, 64, 30)
    pinhole[48, 64] = False
    inst = Instances.from_masks([ring, pinhole])
    filled = instances_to_coco_single(inst, holes="fill")
    seg_ring, seg_pin = (a["segmentation"] for a in filled["annotations"])
    assert isinstance(seg_ring, list) and isinstance(seg_pin, list)
    [(_, back)] = coco_to_instances(filled)
    assert _iou(back.mask(0), _disc(48, 64, 30)) >= 0.99  # the hole is filled
    # default: a real hole is kept (RLE), a pin hole within min_iou is filled as polygons
    default = instances_to_coco_single(inst)
    assert isinstance(default["annotations"][0]["segmentation"], dict)
    assert isinstance(default["annotations"][1]["segmentation"], list)


def test_polygon_geometry_xy_order_and_offset():
    """A 4×3 rectangle at rows 10..13, cols 20..22 → x in [20, 23], y in [10, 14]."""
    m = np.zeros((30, 40), bool)
    m[10:14, 20:23] = True
    inst = Instances.from_masks([m])
    coco = instances_to_coco_single(inst, tolerance=0.5)
    [poly] = coco["annotations"][0]["segmentation"]
    xy = np.asarray(poly).reshape(-1, 2)
    assert xy[:, 0].min() == 20 and xy[:, 0].max() == 23  # x is the column
    assert xy[:, 1].min() == 10 and xy[:, 1].max() == 14  # y is the row
    assert coco["annotations"][0]["bbox"] == [20.0, 10.0, 3.0, 4.0]
    # vertex order kept: the signed area has one consistent sign (no reversed/mixed order)
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert abs(area) == pytest.approx(12 - 4 * 0.125, abs=0.6)


def test_tiny_instances_are_never_lost():
    one = np.zeros((10, 10), bool)
    one[4, 4] = True
    diag = np.zeros((10, 10), bool)
    diag[[1, 2], [1, 2]] = True  # touching only diagonally
    inst = Instances.from_masks([one, diag])
    coco = instances_to_coco_single(inst)
    [(_, back)] = coco_to_instances(coco)
    assert len(back) == 2
    np.testing.assert_array_equal(back.mask(0), one)
    np.testing.assert_array_equal(back.mask(1), diag)


def test_tolerance_is_an_upper_bound_with_min_iou():
    small = Instances.from_masks([_disc(20, 20, 4, (40, 40))])
    coarse = instances_to_coco_single(small, tolerance=2.0, min_iou=0.0)
    fine = instances_to_coco_single(small, tolerance=2.0, min_iou=0.99)
    n_coarse = len(coarse["annotations"][0]["segmentation"][0])
    n_fine = len(fine["annotations"][0]["segmentation"][0])
    assert n_coarse < n_fine
    [(_, back)] = coco_to_instances(fine)
    assert _iou(back.mask(0), small.mask(0)) >= 0.99


def test_douglas_peucker_matches_skimage():
    from skimage.measure import approximate_polygon

    rng = np.random.default_rng(1)
    for _ in range(6):
        chain = np.cumsum(rng.normal(size=(60, 2)), axis=0)
        for tol in (0.3, 1.0, 3.0):
            ours = chain[douglas_peucker(chain, tol)]
            np.testing.assert_array_equal(ours, approximate_polygon(chain, tol))


def test_mask_to_polygons_multi_part_and_empty():
    crop = np.zeros((20, 20), bool)
    crop[2:6, 2:6] = True
    crop[10:15, 12:18] = True
    assert len(mask_to_polygons(crop)) == 2
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_reading_skips_crowd_and_degenerate_and_keeps_annotation_ids(caplog):
    coco = {
        "images": [{"id": 7, "file_name": "x.png", "height": 20, "width": 20}],
        "categories": [{"id": 3, "name": "nucleus"}, {"id": 9, "name": "cell"}],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 9, "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
            {"id": 102, "image_id": 7, "category_id": 3, "iscrowd": 1,
             "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"id": 103, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1]]},  # two points: degenerate
            {"id": 104, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": []},
            {"id": 105, "image_id": 7, "category_id": 3, "score": 0.25,
             "segmentation": {"size": [20, 20], "counts": [50, 5, 345]}},  # uncompressed RLE
        ],
    }
    with caplog.at_level("INFO"):
        [item] = coco_to_instances(coco, source="test.json")
    image, inst = item
    assert image["id"] == 7 and len(inst) == 2
    assert item.skipped == {"iscrowd": 1, "degenerate": 2}
    assert item.annotation_ids.tolist() == [101, 105]
    assert item.id_map == {1: 101, 2: 105}
    assert inst.class_ids.tolist() == [1, 0]  # position in 'categories'
    assert inst.scores.tolist() == pytest.approx([1.0, 0.25])
    assert inst.areas.tolist() == [64, 5]
    assert "degenerate" in caplog.text
    # rows 10..14 of column 2 (column-major runs)
    np.testing.assert_array_equal(np.argwhere(inst.mask(1)), [[10, 2], [11, 2], [12, 2],
                                                              [13, 2], [14, 2]])
    assert coco_to_instances(coco, image_id=7)[0].image["id"] == 7
    with pytest.raises(ValueError, match="no image with id 8"):
        coco_to_instances(coco, image_id=8)


def test_pickle_coco_image():
    import pickle

    [item] = coco_to_instances(instances_to_coco_single(shapes(), category_names=("a", "b")))
    again = pickle.loads(pickle.dumps(item))
    assert again.annotation_ids.tolist() == item.annotation_ids.tolist()
    assert len(again.instances) == 5


GOOD = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1,
                         "segmentation": [[1, 1, 6, 1, 6, 6]]}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("images"), "missing key"),
        (lambda d: d.update(annotations={}), "'annotations' must be a list"),
        (lambda d: d["annotations"][0].update(image_id=2),
         r"annotation id 5 \(index 0\).*image_id 2"),
        (lambda d: d["annotations"][0].update(category_id=4), "unknown category_id 4"),
        (lambda d: d["annotations"][0].update(segmentation="abc"), "segmentation is a str"),
        (lambda d: d["annotations"][0].update(segmentation=[1, 2, 3, 4, 5, 6]),
         "polygon 0 is a int"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), "odd number"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [5, 5], "counts": "x"}),
         "does not match its image"),
        (lambda d: d["annotations"][0].pop("segmentation"), "no 'segmentation'"),
        (lambda d: d["images"][0].pop("height"), "height"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "id appears twice"),
    ],
)
def test_validation_errors_name_the_annotation(change, message):
    data = json.loads(json.dumps(GOOD))
    change(data)
    with pytest.raises(ValueError, match=message) as info:
        validate_coco(data, source="my.json")
    assert str(info.value).startswith("my.json")


def test_files_malformed_json_overwrite_and_pycocotools(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON \(line 1"):
        read_coco(bad)
    with pytest.raises(FileNotFoundError):
        read_coco(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**GOOD, "annotations": [{"id": 3, "image_id": 1,
                                                           "category_id": 2,
                                                           "segmentation": []}]}))
    with pytest.raises(ValueError, match=r"(?s)broken.json.*annotation id 3"):
        read_coco(broken)

    inst = shapes()
    path = tmp_path / "out.json"
    for mode in ("polygon", "rle"):
        coco = instances_to_coco_single(inst, "img.png", category_names=("cell", "debris"),
                                        mode=mode)
        write_coco(path, coco, overwrite=True)
        assert read_coco(path) == json.loads(json.dumps(coco))
        # pycocotools loads our file and our results
        gt = COCO(str(path))
        assert len(gt.getAnnIds()) == 5
        for ann in gt.loadAnns(gt.getAnnIds()):
            assert int(gt.annToMask(ann).sum()) == pytest.approx(ann["area"], rel=0.05)
        res = gt.loadRes(to_coco_results(coco))  # loadRes needs RLE segmentations
        assert len(res.getAnnIds()) == 5
        for ann in res.loadAnns(res.getAnnIds()):
            assert int(ann["area"]) == pytest.approx(gt.anns[ann["id"]]["area"], rel=0.05)
    with pytest.raises(FileExistsError):
        write_coco(path, coco)
    with pytest.raises(ValueError, match="unknown image_id"):
        write_coco(tmp_path / "new.json", {**coco, "images": []})
    assert not (tmp_path / "new.json").exists()


def test_read_predictions_results_list(tmp_path):
    gt = instances_to_coco_single(shapes(), category_names=("cell", "debris"),
                                  include_scores=False)
    results = [{k: a[k] for k in ("image_id", "category_id", "segmentation")} | {"score": 0.5}
               for a in gt["annotations"]]
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results))
    pred = read_predictions(path, gt)
    assert len(pred["annotations"]) == 5 and pred["images"] == gt["images"]
    [(_, inst)] = coco_to_instances(pred)
    assert inst.scores.tolist() == [0.5] * 5


def test_image_infos_and_class_checks():
    inst = shapes()
    with pytest.raises(ValueError, match="height=50"):
        instances_to_coco([inst], [{"id": 1, "file_name": "a", "height": 50, "width": W}])
    with pytest.raises(ValueError, match="class ids"):
        instances_to_coco([inst], ["a"], category_names=("cell",))
    with pytest.raises(ValueError, match="mode"):
        instances_to_coco([inst], ["a"], mode="mesh")
    coco = instances_to_coco([inst, Instances.empty((8, 8))], None,
                             category_names=("a", "b"), include_scores=False)
    assert [i["id"] for i in coco["images"]] == [1, 2]
    assert "score" not in coco["annotations"][0]
    assert [c["id"] for c in coco["categories"]] == [1, 2]


def test_rle_string_decoding_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(7)
    for k in range(30):
        h, w = rng.integers(1, 90, 2)
        m = rng.random((h, w)) < rng.uniform(0.0, 1.0)
        if k % 3 == 0:  # long runs: multi-group values and negative deltas
            m[:] = False
            m[rng.integers(0, h):, rng.integers(0, w):] = True
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        coco = {"images": [{"id": 1, "height": int(h), "width": int(w)}],
                "categories": [{"id": 1}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                 "segmentation": {"size": [int(h), int(w)],
                                                  "counts": rle["counts"].decode()}}]}
        [(_, inst)] = coco_to_instances(coco)
        got = inst.mask(0) if len(inst) else np.zeros((h, w), bool)
        np.testing.assert_array_equal(got, m)


def test_malformed_rle_string_names_the_annotation():
    coco = json.loads(json.dumps(GOOD))
    coco["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": "0k1"}
    with pytest.raises(ValueError, match=r"annotation id 5 \(index 0\).*cannot decode"):
        coco_to_instances(coco, source="x.json")

"""Round trips on the real annotated images of ../shared/data (skipped when absent).

Polygons: every mask comes back at IoU ≥ 0.98 (the writer guarantees ``min_iou``=0.99);
RLE: exact. A subset of images keeps this quick on a 2-core CPU; the figures over every image are
in docs/benchmarks/layers_coco.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from napari_iaunet.io.coco import coco_to_instances, instances_to_coco, read_coco, write_coco

pytestmark = pytest.mark.data

# data set → number of images used here (all of revvity25, a few of the others)
SETS = {"revvity25": 2, "isbi2014": 6, "usiigaci": 1, "dsb2018": 8}


def _load(shared_data, name):
    """The first few images of a data set (a smaller COCO dict) and their instances."""
    path = shared_data / name / "annotations.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    coco = read_coco(path)
    images = coco["images"][: SETS[name]]
    keep = {img["id"] for img in images}
    coco = {**coco, "images": images,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    return coco, coco_to_instances(coco, source=str(path))


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


@pytest.mark.parametrize("name", list(SETS))
def test_decoding_matches_pycocotools(shared_data, name):
    coco, images = _load(shared_data, name)
    api = COCO()
    api.dataset = coco
    api.createIndex()
    _, inst = images[0]
    for i, ann_id in enumerate(images[0].annotation_ids.tolist()):
        np.testing.assert_array_equal(inst.mask(i), api.annToMask(api.anns[ann_id]).astype(bool))


@pytest.mark.parametrize("name", list(SETS))
def test_polygon_and_rle_round_trips(shared_data, name, tmp_path):
    _, images = _load(shared_data, name)
    infos = [img for img, _ in images]
    originals = [inst for _, inst in images]
    ious = []
    for mode in ("polygon", "rle"):
        path = tmp_path / f"{mode}.json"
        write_coco(path, instances_to_coco(originals, infos, mode=mode, include_scores=False))
        back = coco_to_instances(read_coco(path))
        for a, (_, b) in zip(originals, back):
            assert len(a) == len(b)
            if mode == "rle":
                for i in range(len(a)):
                    np.testing.assert_array_equal(a.mask(i), b.mask(i))
            else:
                ious.extend(_iou(a.mask(i), b.mask(i)) for i in range(len(a)))
    assert min(ious) >= 0.98, f"{name}: min IoU {min(ious):.4f}"

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_iaunet.instances import Instances
from napari_iaunet.training.augment import AugmentConfig
from napari_iaunet.training.dataset import (
    AnnotatedImages,
    TrainingDataset,
    collate,
    normalisation_stats,
    parse_spec,
)
from napari_iaunet.training.synthetic import write_synthetic_coco

REVVITY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "revvity25"


def test_parse_spec():
    assert parse_spec("a/b/train.json") == (Path("a/b/train.json"), Path("a/b/images"))
    assert parse_spec("a/train.json:imgs") == (Path("a/train.json"), Path("imgs"))
    assert parse_spec(r"C:\d\t.json:C:\d\im") == (Path(r"C:\d\t.json"), Path(r"C:\d\im"))


def _coco(tmp_path: Path, annotations: list[dict], name: str = "a.json") -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "images" / "x.png", np.zeros((20, 30), np.uint8))
    data = {"images": [{"id": 1, "file_name": "x.png", "height": 20, "width": 30}],
            "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _poly(x0, y0, x1, y1, **extra):
    return {"image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "area": 1, **extra}


def test_coco_overlaps_kept_crowd_and_degenerate_skipped(tmp_path, caplog):
    anns = [_poly(2, 2, 12, 12, id=1), _poly(8, 8, 20, 18, id=2),  # overlapping
            _poly(1, 1, 5, 5, id=3, iscrowd=1),
            {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 2, 2]],
             "area": 0, "bbox": [1, 1, 1, 1]}]
    path = _coco(tmp_path, anns)
    with caplog.at_level(logging.INFO):
        data = AnnotatedImages.from_coco(str(path))
    assert len(data) == 1 and len(data[0].instances) == 2
    assert (data[0].instances.to_dense().sum(0) == 2).any()
    assert data.sources[0]["skipped"] == {"iscrowd": 1, "degenerate": 1}
    assert "skipped 1 iscrowd and 1 degenerate" in caplog.text
    assert data.class_names == ["cell"]


def test_malformed_coco_names_file_and_annotation(tmp_path):
    bad = _coco(tmp_path, [_poly(2, 2, 12, 12, id=7, image_id=99)], "bad.json")
    with pytest.raises(ValueError, match=r"bad\.json") as err:
        AnnotatedImages.from_coco(str(bad))
    assert "7" in str(err.value) or "99" in str(err.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        AnnotatedImages.from_coco(str(tmp_path / "broken.json"))


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        AnnotatedImages.from_coco(str(tmp_path / "nope.json"))
    path = _coco(tmp_path, [_poly(2, 2, 12, 12, id=1)])
    with pytest.raises(FileNotFoundError, match="image folder"):
        AnnotatedImages.from_coco(f"{path}:{tmp_path / 'elsewhere'}")
    (tmp_path / "images" / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"x\.png"):
        AnnotatedImages.from_coco(str(path))


def test_several_coco_files_and_pairs(tmp_path, tiny_pairs):
    a = write_synthetic_coco(tmp_path / "a", 2, 64, seed=1)
    b = write_synthetic_coco(tmp_path / "b", 1, 64, seed=2)
    data = AnnotatedImages.from_coco([str(a), f"{b}:{tmp_path / 'b' / 'images'}"])
    assert len(data) == 3 and len(data.sources) == 2
    assert data[0].load().shape == (64, 64, 3)
    mem = AnnotatedImages.from_pairs(tiny_pairs)
    assert len(mem) == 4 and mem.num_instances == sum(len(i) for _, i in tiny_pairs)
    assert len(AnnotatedImages.coerce(tiny_pairs)) == 4
    with pytest.raises(ValueError, match="belong to"):
        AnnotatedImages.from_pairs([(np.zeros((10, 10)), Instances.empty((12, 10)))])


def test_normalisation_stats_on_the_model_scale():
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = 10
    img[:5, :, 1] = 100
    img[5:, :, 1] = 200
    img[..., 2] = 50
    data = AnnotatedImages.from_pairs([(img, Instances.empty((10, 10)))])
    mean, std = normalisation_stats(data, intensity="dtype")  # uint8 raw
    assert mean == pytest.approx((10, 150, 50))
    assert std == pytest.approx((1.0, 50.0, 1.0))  # flat channels get std 1, never 0
    u16 = np.linspace(0, 60000, 400, dtype=np.uint16).reshape(20, 20)  # stretched to 0-255
    mean16, _ = normalisation_stats(AnnotatedImages.from_pairs([(u16, Instances.empty((20, 20)))]))
    assert 100 < mean16[0] < 155


def test_training_dataset_samples(tiny_pairs):
    data = AnnotatedImages.from_pairs(tiny_pairs)
    mean, std = normalisation_stats(data)
    ds = TrainingDataset(data, mean, std, AugmentConfig(input_size=64, scale_range=(0.8, 0.8)))
    img, tgt = ds[(0, 5)]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert tgt["masks"].shape[1:] == (64, 64) and tgt["masks"].dtype == torch.bool
    assert len(tgt["labels"]) == len(tgt["masks"]) > 0
    assert torch.all(img[:, 52:, :] == 0) and torch.all(img[:, :, 52:] == 0)  # padded after 51
    assert not tgt["masks"][:, 52:, :].any()
    img2, _ = ds[(0, 5)]
    torch.testing.assert_close(img, img2)
    batch, targets = collate([ds[(0, 1)], ds[(1, 2)]])
    assert batch.shape == (2, 3, 64, 64) and len(targets) == 2


def test_training_dataset_matches_brightness_like_inference(tiny_pairs):
    image, inst = tiny_pairs[0]
    dark = AnnotatedImages.from_pairs([(image // 2, inst)])
    bright = AnnotatedImages.from_pairs([(image // 2 + 60, inst)])
    aug = AugmentConfig.resize_only(64)
    raw = {"intensity": "dtype"}  # uint8 fed raw (with percentile stretching they are alike)
    plain = [TrainingDataset(d, (114.0,) * 3, (30.0,) * 3, aug, **raw)[(0, 1)][0]
             for d in (dark, bright)]
    assert (plain[1] - plain[0]).mean() > 1.0  # 60 grey levels apart
    matched = [TrainingDataset(d, (114.0,) * 3, (30.0,) * 3, aug, match_brightness=True,
                               **raw)[(0, 1)][0] for d in (dark, bright)]
    torch.testing.assert_close(matched[0], matched[1], atol=0.05, rtol=0)


def test_training_sees_a_uint8_image_and_its_uint16_copy_alike(tiny_pairs):
    """Training takes the inference path: percentile stretching whatever the dtype."""
    image, inst = tiny_pairs[0]
    aug = AugmentConfig.resize_only(64)
    seen = [TrainingDataset(AnnotatedImages.from_pairs([(im, inst)]), (114.0,) * 3, (30.0,) * 3,
                            aug)[(0, 1)][0] for im in (image, image.astype(np.uint16) * 257)]
    torch.testing.assert_close(seen[0], seen[1], atol=1e-4, rtol=0)


def test_class_ids_beyond_the_model_are_an_error(tiny_pairs):
    image, inst = tiny_pairs[0]
    inst = Instances(inst.image_shape, inst.boxes, inst.crops, class_ids=np.full(len(inst), 2))
    with pytest.raises(ValueError, match="class id 2"):
        TrainingDataset(AnnotatedImages.from_pairs([(image, inst)]), (0, 0, 0), (1, 1, 1))


@pytest.mark.data
@pytest.mark.skipif(not REVVITY.is_dir(), reason="../shared/data/revvity25 not present")
def test_revvity_reads():
    data = AnnotatedImages.from_coco(str(REVVITY / "annotations.json"))
    assert len(data) == 2 and data.num_instances == 81
    assert (data[0].instances.to_dense().sum(0) >= 2).any()  # overlaps are kept

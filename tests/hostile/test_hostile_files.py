"""Hostile files: TIFF stacks, empty and damaged images, COCO coordinates that would make
pycocotools crash or hang, a UTF-8 BOM, an empty JSON object, labels that are not cells."""

from __future__ import annotations

import json
import time

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hostile_helpers import TINY_TRAIN, gray, one_error_line, run_cli

from napari_iaunet.io.images import read_image

# ------------------------------------------------------------------------------------ images


def test_z_stack_and_frame_series_are_refused_not_read_as_colour(tmp_path):
    z = np.stack([gray(32, 40, seed=i) for i in range(3)])
    tifffile.imwrite(tmp_path / "z.tif", z, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"z.tif is a stack of 3 planes \(3 slices\)"):
        read_image(tmp_path / "z.tif")
    frames = np.stack([gray(32, 40, seed=i) for i in range(4)])
    tifffile.imwrite(tmp_path / "t.tif", frames, photometric="minisblack")
    with pytest.raises(ValueError, match="stack of 4 planes"):
        read_image(tmp_path / "t.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "t.tif", allow_stack=True), frames)


def test_real_colour_images_stay_colour(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    rgba = np.random.default_rng(1).integers(0, 255, (32, 40, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)


def test_empty_damaged_and_truncated_images_say_so(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.png is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x07" * 64)
    with pytest.raises(ValueError, match=r"junk\.png: the file is damaged, truncated or not a PNG"
                       ) as info:
        read_image(tmp_path / "junk.png")
    assert "pip install" not in str(info.value) and "backend" not in str(info.value)
    tifffile.imwrite(tmp_path / "full.tif", np.stack([gray(64, 64, seed=i) for i in range(4)]),
                     photometric="minisblack")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.tif: the file is damaged, truncated") as info:
        read_image(tmp_path / "cut.tif")
    assert "shape (0,)" not in str(info.value) and "one frame per file" not in str(info.value)


# ------------------------------------------------------------------------------------ COCO
def _coco_with_point(tmp_path, value: float, name: str = "huge.json"):
    """A valid 64×64 COCO file whose one polygon has a vertex at x = ``value``."""
    coco = {"images": [{"id": 1, "file_name": "img.png", "height": 64, "width": 64}],
            "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "area": 100.0, "bbox": [10, 10, 20, 20], "score": 0.9,
                             "segmentation": [[10.0, 10.0, value, 12.0, 20.0, 30.0]]}]}
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize("value", [1e308, 1e9, -5e6])
def test_huge_coordinates_are_refused_by_evaluate_in_a_real_process(tmp_path, value):
    path = _coco_with_point(tmp_path, value)
    t0 = time.monotonic()
    result = run_cli("evaluate", "--gt", str(path), "--pred", str(path), timeout=120)
    assert result.returncode == 1, result.stderr  # not a signal (pycocotools crash)
    one_error_line(result.stderr, "huge.json", "far outside its 64×64 image")
    assert time.monotonic() - t0 < 60


def test_huge_coordinates_are_refused_by_train_in_a_real_process(tmp_path):
    path = _coco_with_point(tmp_path, 1e308)
    iio.imwrite(tmp_path / "img.png", gray(64, 64))
    result = run_cli("train", "--train", f"{path}:{tmp_path}", "--out", str(tmp_path / "run"),
                     "--steps", "1", *TINY_TRAIN, timeout=120)
    assert result.returncode == 1, result.stderr
    one_error_line(result.stderr, "far outside its 64×64 image")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_huge_coordinates_are_refused_by_the_napari_reader_in_a_real_process(tmp_path):
    import subprocess
    import sys

    from hostile_helpers import SRC

    path = _coco_with_point(tmp_path, 1e308)
    code = ("import sys\nfrom napari_iaunet._reader import get_reader\n"
            "reader = get_reader(sys.argv[1])\n"
            "try:\n    reader(sys.argv[1])\nexcept ValueError as exc:\n"
            "    print(exc)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(SRC),
                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 3, result.stderr
    assert "far outside its 64×64 image" in result.stdout


def test_points_just_outside_the_border_are_still_fine(tmp_path):
    from napari_iaunet.io.coco import coco_to_instances, read_coco

    path = _coco_with_point(tmp_path, 64.5, name="edge.json")
    (_entry, instances), = coco_to_instances(read_coco(path))
    assert len(instances) == 1


def test_coco_with_a_byte_order_mark_opens(tmp_path):
    from napari_iaunet._reader import get_reader

    path = _coco_with_point(tmp_path, 30.0, name="bom.json")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    reader = get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert [kind for *_, kind in layers] == ["labels"]


def test_empty_json_object_is_refused_with_a_reason(tmp_path):
    from napari_iaunet._reader import get_reader

    path = tmp_path / "empty.json"
    path.write_text("{ }\n")
    reader = get_reader(str(path))
    assert reader is not None  # napari must not answer only "no reader / refused the file"
    with pytest.raises(ValueError, match=r"empty.json: missing key\(s\) \['images', "):
        reader(str(path))
    (tmp_path / "other.json").write_text('{"name": "some other tool"}')
    assert get_reader(str(tmp_path / "other.json")) is None  # other plugins' JSON stays theirs


# ------------------------------------------------------------------------------------ labels
def test_intensity_image_as_labels_is_refused_in_seconds(tmp_path):
    from napari_iaunet._writer import write_coco_layers

    noise = np.random.default_rng(0).integers(0, 4000, (1024, 1024)).astype(np.int32)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="'brightfield' does not look like cell labels"):
        write_coco_layers(str(tmp_path / "cells.json"), [(noise, {"name": "brightfield"},
                                                          "labels")])
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "cells.json").exists()


def test_many_real_cells_still_export(tmp_path):
    from napari_iaunet._writer import write_coco_layers

    labels = np.zeros((512, 512), np.int32)
    k = 0
    for y in range(0, 512, 8):  # 4096 square cells of 6×6 pixels
        for x in range(0, 512, 8):
            k += 1
            labels[y:y + 6, x:x + 6] = k
    write_coco_layers(str(tmp_path / "cells.json"), [(labels, {"name": "cells"}, "labels")])
    assert len(json.loads((tmp_path / "cells.json").read_text())["annotations"]) == 4096

"""COCO out and in through napari: export button, npe2 writer, npe2 reader, sample data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_iaunet._writer as writer_module
from napari_iaunet._reader import get_reader
from napari_iaunet._widgets.edit_tools import EditToolsWidget
from napari_iaunet._widgets.layer_group import add_group_for_image, groups


def _open_png(viewer, tmp_path, image):
    import imageio.v3 as iio

    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "images" / "plate1.png"
    iio.imwrite(path, image)
    (layer,) = viewer.open(str(path))
    return layer


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _sorted_masks(instances):
    order = np.argsort(instances.ids)
    return [instances.mask(int(k)) for k in order]


def test_export_button_and_reimport(make_napari_viewer, synthetic, tmp_path):
    image, truth = synthetic
    viewer = make_napari_viewer()
    img = _open_png(viewer, tmp_path, image)
    group = add_group_for_image(viewer, img, truth)
    assert group.info["image_file"] == "plate1.png"
    answers = []
    widget = EditToolsWidget(viewer, ask=lambda t, x, c: answers.pop(0),
                             get_save_path=lambda *a: str(tmp_path / "cells"))
    # polygons (the default); the dialog's name gets .json
    out = widget.export_coco()
    assert out == tmp_path / "cells.json"
    coco = json.loads(out.read_text())
    assert coco["images"][0]["file_name"] == "plate1.png"
    assert coco["images"][0]["height"] == 256
    assert len(coco["annotations"]) == len(truth)
    assert sum(isinstance(a["segmentation"], list) for a in coco["annotations"]) > len(truth) // 2
    assert all("score" in a and "bbox" in a and "area" in a for a in coco["annotations"])
    # never silently overwritten: Cancel keeps the file, Replace writes the new one
    group.delete_cell(int(truth.ids[0]))
    before = out.read_bytes()
    answers.append("Cancel")
    assert widget.export_coco(out) is None and out.read_bytes() == before
    answers.append("Replace")
    widget.fmt_rle.setChecked(True)
    assert widget.export_coco(out) == out
    coco = json.loads(out.read_text())
    assert len(coco["annotations"]) == len(truth) - 1
    assert all(isinstance(a["segmentation"], dict) for a in coco["annotations"])
    # re-import: the image (found in images/) and the same cells, exactly (RLE)
    layers = widget.import_coco(out)
    assert type(layers[0]).__name__ == "Image"
    assert np.array_equal(layers[0].data, image)
    reimported = [g for g in groups(viewer) if g is not group]
    assert len(reimported) == 1
    new = reimported[0]
    assert new.info["source"] == "coco" and new.info["scores"] is True
    a, b = _sorted_masks(group.to_instances()), _sorted_masks(new.to_instances())
    assert len(a) == len(b)
    for ma, mb in zip(a, b):
        np.testing.assert_array_equal(ma, mb)
    widget.cleanup()


def test_polygon_round_trip_keeps_masks(make_napari_viewer, synthetic, tmp_path):
    image, truth = synthetic
    viewer = make_napari_viewer()
    img = viewer.add_image(image, name="plate1", rgb=True)
    group = add_group_for_image(viewer, img, truth)
    widget = EditToolsWidget(viewer)
    out = widget.export_coco(tmp_path / "poly.json")
    viewer.open(str(out), plugin="napari-iaunet")  # image not found: cells only, with a warning
    (new,) = [g for g in groups(viewer) if g is not group]
    for ma, mb in zip(_sorted_masks(group.to_instances()), _sorted_masks(new.to_instances())):
        assert _iou(ma, mb) >= 0.98
    widget.cleanup()


def test_npe2_writer_and_overwrite_rule(make_napari_viewer, synthetic, tmp_path, monkeypatch):
    image, truth = synthetic
    viewer = make_napari_viewer()
    img = viewer.add_image(image, name="plate1", rgb=True)
    group = add_group_for_image(viewer, img, truth)
    viewer.layers.selection = set(group.layers)
    path = tmp_path / "saved.rle.json"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-iaunet")
    assert written == [str(path)]
    coco = json.loads(path.read_text())
    assert len(coco["annotations"]) == len(truth)
    assert all(isinstance(a["segmentation"], dict) for a in coco["annotations"])  # .rle.json
    # the file exists: refused unless the user agrees
    before = path.read_bytes()
    monkeypatch.setattr(writer_module, "confirm_overwrite", lambda p: False)
    with pytest.raises(FileExistsError):
        writer_module.write_coco_layers(
            str(path), [lay.as_layer_data_tuple() for lay in group.layers])
    assert path.read_bytes() == before
    monkeypatch.setattr(writer_module, "confirm_overwrite", lambda p: True)
    assert writer_module.write_coco_layers(
        str(path), [lay.as_layer_data_tuple() for lay in group.layers[:1]]) == [str(path)]
    assert len(json.loads(path.read_text())["annotations"]) < len(truth)
    # no GUI question possible: the default refuses
    monkeypatch.setattr(writer_module, "confirm_overwrite",
                        writer_module._confirm_overwrite_default)
    monkeypatch.setattr("qtpy.QtWidgets.QApplication.instance", staticmethod(lambda: None))
    with pytest.raises(FileExistsError):
        writer_module.write_coco_layers(
            str(path), [lay.as_layer_data_tuple() for lay in group.layers])


def test_reader_only_claims_coco_json(tmp_path):
    other = tmp_path / "settings.json"
    other.write_text(json.dumps({"theme": "dark"}))
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "x.png")) is None
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert callable(get_reader(str(coco)))
    assert get_reader([str(coco), str(coco)]) is None


def test_sample_data_opens_image_and_instance_group(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-iaunet", "synthetic_cells_instances")
    image = viewer.layers["synthetic cells"]
    assert image.rgb and image.data.shape == (512, 512, 3)
    (group,) = groups(viewer)
    assert group.image_name == "synthetic cells"
    assert len(group.ids()) > 10 and len(group.layers) >= 2
    assert group.info["source"] == "sample"

"""The whole path a user takes, in one real viewer:

open image → segment (tiny checkpoint, background worker) → layer group → edit with each tool
(keys and clicks) → export COCO → re-import → the same instances.

The tiny model is untrained, so after checking its result became a group, the synthetic ground
truth is shown through the widget's result seam (``SegmentWidget.show_result``) to edit real cells.
"""

from __future__ import annotations

import numpy as np

from napari_iaunet._widgets import edit_tools as tools
from napari_iaunet._widgets.layer_group import groups, groups_for_image
from napari_iaunet._widgets.segment_widget import SegmentWidget


def _key(viewer, name):
    return next(v for k, v in viewer.keymap.items() if str(k) == name)


def _inside(mask):
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    return tuple(float(v) for v in np.unravel_index(np.argmax(dist), mask.shape))


def test_open_segment_edit_export_reimport(make_napari_viewer, tiny_checkpoint, synthetic,
                                           tmp_path, qtbot):
    import imageio.v3 as iio

    image, truth = synthetic
    (tmp_path / "images").mkdir()
    iio.imwrite(tmp_path / "images" / "plate1.png", image)
    viewer = make_napari_viewer()
    (img,) = viewer.open(str(tmp_path / "images" / "plate1.png"))

    answers: list[str] = []
    widget = SegmentWidget(viewer, ask=lambda t, x, c: answers.pop(0))
    widget.set_checkpoint(tiny_checkpoint)
    assert widget.image_layer() is img

    # 1. segment in the background
    worker = widget.segment()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    (model_group,) = groups_for_image(viewer, "plate1")
    assert model_group.info["checkpoint"] == str(tiny_checkpoint.resolve())

    # 2. real cells through the result seam (replaces the unedited model group silently)
    group = widget.show_result(truth, img, replace=groups_for_image(viewer, "plate1"))
    assert groups(viewer) == [group]
    n_layers = len(group.layers)
    edit = widget.edit_tools
    assert edit is not None and edit.group() is group

    # 3a. new cell: N opens the draft, paint, C commits
    _key(viewer, "N")(viewer)
    draft = tools.draft_layer(viewer, group)
    yy, xx = np.mgrid[:256, :256]
    blob = (yy - 40) ** 2 + (xx - 200) ** 2 < 12 ** 2
    draft.data = blob.astype(np.uint8)
    _key(viewer, "C")(viewer)
    new_id = int(group.ids().max())
    np.testing.assert_array_equal(group.mask_of(new_id), blob)

    # 3b. delete by clicking a cell
    victim = int(truth.ids[3])
    edit.set_click_action("delete")
    edit.click(_inside(group.mask_of(victim)))
    assert victim not in group.ids()

    # 3c. redraw with R (pointer over the cell), shrink it, commit
    target = int(truth.ids[5])
    viewer.cursor.position = _inside(group.mask_of(target))
    _key(viewer, "R")(viewer)
    draft = tools.draft_layer(viewer, group)
    from scipy import ndimage

    shrunk = ndimage.binary_erosion(draft.data > 0, iterations=2)
    draft.data = shrunk.astype(np.uint8)
    _key(viewer, "C")(viewer)
    np.testing.assert_array_equal(group.mask_of(target), ndimage.binary_fill_holes(shrunk))

    # 3d. move the new cell to another layer (Shift-M with the pointer on it)
    before_layer = group.layer_of(new_id)
    viewer.cursor.position = _inside(group.mask_of(new_id))
    next(v for k, v in viewer.keymap.items() if "Shift" in str(k) and "M" in str(k))(viewer)
    assert group.layer_of(new_id) != before_layer

    # 3e. napari's own brush on a group layer, then undo it (Ctrl-Z on the layer)
    layer = group.layers[0]
    layer.preserve_labels = True
    label = layer.selected_label
    layer.paint((250, 5), label)
    assert np.any(layer.data == label)
    edit.undo()
    assert not np.any(layer.data == label)

    expected = group.to_instances()
    assert len(expected) == len(truth)  # +1 new, -1 deleted
    assert len(group.layers) >= n_layers

    # 4. export (RLE: lossless) and re-import through the reader
    edit.fmt_rle.setChecked(True)
    out = edit.export_coco(tmp_path / "plate1_cells.json")
    assert out is not None and out.is_file()
    layers = edit.import_coco(out)
    assert np.array_equal(layers[0].data, image)  # the image named in the file, from images/
    (reimported,) = [g for g in groups(viewer) if g is not group]
    assert reimported.image_name == layers[0].name  # "plate1 [1]": napari renamed the copy
    assert reimported.name == "cells#2 [plate1]"  # the same file twice: told apart
    n = len(reimported.layers)
    assert [lay.name for lay in reimported.layers] == [f"cells#2 [plate1] {k}/{n}"
                                                       for k in range(1, n + 1)]
    got = reimported.to_instances()
    assert len(got) == len(expected)
    for k in range(len(expected)):  # same order: the file lists cells by id
        np.testing.assert_array_equal(got.mask(k), expected.mask(k))

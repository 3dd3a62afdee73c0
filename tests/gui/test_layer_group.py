"""Instance groups in a real viewer: representation, every edit tool, undo/redo, no clipping."""

from __future__ import annotations

import numpy as np
import pytest

from napari_iaunet._widgets import edit_tools as tools
from napari_iaunet._widgets.layer_group import (
    META_KEY,
    EditError,
    add_group_for_image,
    groups,
)
from napari_iaunet.instances import Instances


def _masks_by_id(instances: Instances) -> dict[int, np.ndarray]:
    return {int(i): instances.mask(k) for k, i in enumerate(instances.ids)}


def _assert_same(a: Instances, b: Instances) -> None:
    ma, mb = _masks_by_id(a), _masks_by_id(b)
    assert sorted(ma) == sorted(mb)
    for i in ma:
        np.testing.assert_array_equal(ma[i], mb[i], err_msg=f"instance {i}")


def _snapshot(group) -> list[np.ndarray]:
    return [np.array(layer.data) for layer in group.layers]


def _group(viewer, synthetic, instances=None):
    image, truth = synthetic
    img = viewer.add_image(image, name="plate1", rgb=True)
    return img, add_group_for_image(viewer, img, truth if instances is None else instances)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """A pixel well inside the mask (maximum of the distance transform)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    r, c = np.unravel_index(np.argmax(dist), mask.shape)
    return float(r), float(c)


def _only_cell_at(group, r: int, c: int) -> bool:
    return sum(int(layer.data[r, c] != 0) for layer in group.layers) == 1


def test_group_holds_every_instance_exactly(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, truth = synthetic
    img, group = _group(viewer, synthetic)
    n = len(group.layers)
    assert n >= 2, "the synthetic image has overlapping cells"
    # naming and metadata
    assert [layer.name for layer in group.layers] == [f"cells [plate1] {k}/{n}"
                                                     for k in range(1, n + 1)]
    for k, layer in enumerate(group.layers):
        meta = layer.metadata[META_KEY]
        assert meta["group"] == group.id and meta["layer_index"] == k
        assert meta["image"] == "plate1" and meta["role"] == "instances"
        # features: one row per cell of that layer
        feats = layer.features
        present = np.unique(layer.data)
        np.testing.assert_array_equal(np.sort(feats["id"]), present[present != 0])
        for i, area, score in zip(feats["id"], feats["area"], feats["score"]):
            assert area == np.count_nonzero(layer.data == i)
            assert score == pytest.approx(truth.scores[truth.index_of(int(i))])
    # the group sits right above its image
    assert viewer.layers.index(group.layers[0]) == viewer.layers.index(img) + 1
    # every instance lives in exactly one layer, ids unique across the group
    all_ids = np.concatenate([np.unique(lay.data)[1:] for lay in group.layers])
    assert len(all_ids) == len(set(all_ids.tolist())) == len(truth)
    # no pixel lost: the group converts back to exactly the input masks (and scores)
    back = group.to_instances()
    _assert_same(back, truth)
    np.testing.assert_allclose(back.scores[np.argsort(back.ids)],
                               truth.scores[np.argsort(truth.ids)])
    assert not group.is_edited()


def test_neighbouring_cells_get_different_colours(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    truth = synthetic[1]
    cmap = group.layers[0].colormap
    colours = {int(i): tuple(np.round(cmap.map(int(i)), 3)) for i in truth.ids}
    iou = truth.pairwise_iou()
    overlapping = [(a, b) for a, b in zip(*np.nonzero(np.triu(iou, 1) > 0))]
    assert overlapping
    for a, b in overlapping:
        assert colours[int(truth.ids[a])] != colours[int(truth.ids[b])]
    # all layers of the group share one colour per id
    for layer in group.layers[1:]:
        for i in truth.ids[:5]:
            assert tuple(np.round(layer.colormap.map(int(i)), 3)) == colours[int(i)]


def test_new_cell_goes_to_first_free_layer_with_fresh_id(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    before = _snapshot(group)
    old_max = int(max(lay.data.max() for lay in group.layers))
    # a disc over existing cells: it must not go where it would overlap, nor clip anything
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 128) ** 2 + (xx - 128) ** 2 < 15 ** 2
    draft = tools.new_cell(viewer)
    assert viewer.layers.selection.active is draft and draft.mode == "paint"
    draft.data = disc.astype(np.uint8)
    cell = tools.commit_draft(viewer)
    assert cell == old_max + 1
    assert tools.draft_layer(viewer, group) is None
    k = group.layer_of(cell)
    for j, layer in enumerate(group.layers):
        if j < len(before):
            others = before[j] != 0
            # untouched pixels everywhere except the new cell's own pixels in its layer
            changed = layer.data != before[j]
            if j == k:
                assert np.array_equal(changed, disc)
                assert not np.any(others & disc), "went to a layer where it overlaps a cell"
            else:
                assert not changed.any()
    for j in range(k):  # every earlier layer would have clipped it
        assert np.any(before[j][disc] != 0)
    assert group.is_edited()
    assert group.undo() == f"new cell {cell}"
    for layer, snap in zip(group.layers, before):
        np.testing.assert_array_equal(layer.data, snap)
    assert group.redo() == f"new cell {cell}"
    assert group.layer_of(cell) == k


def test_new_cell_over_every_layer_adds_a_layer_and_undo_removes_it(make_napari_viewer,
                                                                     synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    n = len(group.layers)
    everywhere = np.ones((256, 256), bool)
    cell = group.add_cell(everywhere)
    assert len(group.layers) == n + 1
    assert group.layer_of(cell) == n
    assert group.layers[-1].name == f"cells [plate1] {n + 1}/{n + 1}"
    assert group.layers[0].name == f"cells [plate1] 1/{n + 1}"
    assert group.layers[-1] in viewer.layers
    assert viewer.layers.index(group.layers[-1]) == viewer.layers.index(group.layers[-2]) + 1
    group.undo()
    assert len(group.layers) == n
    assert all(layer.name.endswith(f"/{n}") for layer in group.layers)
    group.redo()
    assert len(group.layers) == n + 1 and group.layers[-1] in viewer.layers


def test_delete_cell_by_click_in_any_layer(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    widget = tools.EditToolsWidget(viewer)
    truth = synthetic[1]
    # a cell of the last layer, clicked where no other cell overlaps it
    target_layer = group.layers[-1]
    victim = int(np.unique(target_layer.data)[-1])
    mask = target_layer.data == victim
    r, c = _centre(mask)
    assert _only_cell_at(group, int(r), int(c))
    before = _snapshot(group)
    viewer.layers.selection.active = group.layers[0]  # a different layer is selected
    widget.set_click_action("delete")
    assert widget.click((r, c)) == victim
    assert not any(np.any(layer.data == victim) for layer in group.layers)
    for layer, snap in zip(group.layers, before):
        changed = layer.data != snap
        assert np.array_equal(changed, mask if layer is target_layer else np.zeros_like(mask))
    assert victim not in set(target_layer.features["id"].tolist())
    widget.undo()
    _assert_same(group.to_instances(), truth)
    widget.cleanup()


def test_delete_prefers_the_selected_layer_where_cells_overlap(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    stack = np.stack([lay.data != 0 for lay in group.layers])
    both = stack[0] & stack[1]
    assert both.any()
    r, c = np.argwhere(both)[len(np.argwhere(both)) // 2]
    lower = int(group.layers[0].data[r, c])
    upper = int(group.layers[1].data[r, c])
    viewer.layers.selection.active = group.layers[0]
    assert tools.delete_cell_at(viewer, (r, c)) == lower
    viewer.layers.selection.active = group.layers[1]
    assert tools.delete_cell_at(viewer, (r, c)) == upper


def test_redraw_cell_keeps_id_and_never_clips(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    truth = synthetic[1]
    layer0 = group.layers[0]
    cell = int(np.unique(layer0.data)[1])
    old = layer0.data == cell
    r, c = _centre(old)
    before = _snapshot(group)
    draft = tools.redraw_cell_at(viewer, (r, c))
    assert draft == cell or draft is None
    draft_layer = tools.draft_layer(viewer, group)
    np.testing.assert_array_equal(draft_layer.data > 0, old)
    # grow the cell by 6 px: it now overlaps neighbours, which must keep every pixel
    from scipy import ndimage

    grown = ndimage.binary_dilation(old, iterations=6)
    draft_layer.data = grown.astype(np.uint8)
    assert tools.commit_draft(viewer) == cell
    np.testing.assert_array_equal(group.mask_of(cell), ndimage.binary_fill_holes(grown))
    for k, snap in enumerate(before):
        others = (snap != 0) & (snap != cell)
        np.testing.assert_array_equal(group.layers[k].data[others], snap[others])
    assert group.scores[cell] == 1.0  # a redrawn cell is the user's
    group.undo()
    _assert_same(group.to_instances(), truth)
    assert group.scores[cell] == pytest.approx(truth.scores[truth.index_of(cell)])


def test_split_cell_cuts_a_new_cell_out_and_never_clips(make_napari_viewer, synthetic):
    """Cutting a grown copy of part of a cell out of it: the cell keeps the rest, the new cell
    goes where it overlaps nothing, no other cell loses a pixel, one undo restores all."""
    from scipy import ndimage

    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    truth = synthetic[1]
    cell = int(max(group.ids(), key=lambda i: group.mask_of(int(i)).sum()))
    own = group.mask_of(cell)
    rows = np.flatnonzero(own.any(axis=1))
    top = own.copy()
    top[rows[0] + len(rows) // 2:] = False  # its upper half, grown into the neighbours
    piece = ndimage.binary_dilation(top, iterations=4)
    before = _snapshot(group)
    new = group.split_cell(cell, piece)
    np.testing.assert_array_equal(group.mask_of(new), piece)
    np.testing.assert_array_equal(group.mask_of(cell), own & ~piece)
    for k, snap in enumerate(before):
        others = (snap != 0) & (snap != cell)
        np.testing.assert_array_equal(group.layers[k].data[others], snap[others])
    assert group.classes[new] == group.classes.get(cell, 0)
    assert group.undo() == f"split cell {new} off cell {cell}"
    _assert_same(group.to_instances(), truth)
    with pytest.raises(EditError, match="does not overlap"):
        group.split_cell(cell, np.roll(own, own.shape[0] // 2, axis=0) & ~own)
    with pytest.raises(EditError, match="covers all"):
        group.split_cell(cell, ndimage.binary_dilation(own))
    _assert_same(group.to_instances(), truth)


def test_move_cell_to_next_free_layer_and_refuses_clipping(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    truth = synthetic[1]
    n = len(group.layers)
    # a cell of layer 0 overlapping a cell of layer 1: moving it there is refused
    overlap = (group.layers[0].data != 0) & (group.layers[1].data != 0)
    r, c = np.argwhere(overlap)[0]
    cell = int(group.layers[0].data[r, c])
    with pytest.raises(EditError, match="overlap"):
        group.move_cell(cell, target=1)
    dest = tools.move_cell_at(viewer, _centre(group.layers[0].data == cell))
    assert dest is not None and dest != 0
    assert group.layer_of(cell) == dest
    np.testing.assert_array_equal(group.mask_of(cell), truth.mask(truth.index_of(cell)))
    if dest == n:
        assert len(group.layers) == n + 1
    _assert_same(group.to_instances(), truth)  # same cells, only the layer changed
    group.undo()
    assert group.layer_of(cell) == 0
    assert len(group.layers) == n


def test_napari_brush_strokes_share_the_group_undo(make_napari_viewer, synthetic, qtbot):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    layer = group.layers[0]
    before = _snapshot(group)
    new_label = layer.selected_label
    assert new_label == group.next_id()  # napari's brush starts with a fresh, group-unique id
    layer.preserve_labels = False
    layer.paint((5, 5), new_label)  # napari's own paint (emits the paint event)
    assert np.any(layer.data == new_label)
    qtbot.waitUntil(lambda: new_label in set(layer.features["id"].tolist()), timeout=2000)
    cell = group.add_cell(np.pad(np.ones((4, 4), bool), ((200, 52), (200, 52))))
    assert group.undo() == f"new cell {cell}"
    assert group.undo() == "paint"
    for lay, snap in zip(group.layers, before):
        np.testing.assert_array_equal(lay.data, snap)
    assert group.redo() == "paint"
    assert np.any(layer.data == new_label)
    # Ctrl-Z on a group layer is the group's undo
    assert layer.keymap  # instance bindings exist
    handler = next(v for k, v in layer.keymap.items() if "Z" in str(k) and "Shift" not in str(k))
    handler(layer)
    assert not np.any(layer.data == new_label)


def test_new_label_is_unique_across_the_group(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    l0, l1 = group.layers[0], group.layers[1]
    taken_elsewhere = int(np.unique(l1.data)[1])
    assert not np.any(l0.data == taken_elsewhere)
    l0.selected_label = taken_elsewhere  # e.g. napari's "new label" (M) counting only l0
    assert l0.selected_label == group.next_id()
    own = int(np.unique(l0.data)[1])
    l0.selected_label = own  # picking a cell of the same layer is fine
    assert l0.selected_label == own


def test_reader_layers_are_adopted_and_copies_are_not(make_napari_viewer, synthetic):
    from napari_iaunet._widgets.layer_group import group_layer_data

    viewer = make_napari_viewer()
    truth = synthetic[1]
    for data, kwargs, _ in group_layer_data(truth, image_name="x", source="coco"):
        viewer.add_labels(data, **kwargs)
    (group,) = groups(viewer)
    assert group.info["source"] == "coco"
    _assert_same(group.to_instances(), truth)
    # napari's "duplicate layer" copies metadata; the copy must not join the group
    dup = viewer.add_labels(np.array(group.layers[0].data),
                            metadata={k: dict(v) for k, v in group.layers[0].metadata.items()})
    assert len(groups(viewer)) == 1
    assert dup not in group.layers and META_KEY not in dup.metadata


def test_removing_a_layer_keeps_the_group_consistent(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    n = len(group.layers)
    group.delete_cell(int(np.unique(group.layers[0].data)[1]))
    viewer.layers.remove(group.layers[-1])
    assert len(group.layers) == n - 1
    assert group.layers[-1].name.endswith(f"{n - 1}/{n - 1}")
    assert not group.can_undo  # history that touched the removed layer is dropped
    group.remove()
    assert groups(viewer) == []


def test_tools_without_a_group_start_a_manual_group(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic[0], name="fresh", rgb=True)
    draft = tools.new_cell(viewer)
    draft.data[10:20, 10:20] = 1
    cell = tools.commit_draft(viewer)
    (group,) = groups(viewer)
    assert group.info["source"] == "manual" and group.image_name == "fresh"
    assert cell == 1 and group.mask_of(1).sum() == 100


def test_shortcuts_are_bound_on_the_viewer(make_napari_viewer, synthetic):
    viewer = make_napari_viewer()
    _, group = _group(viewer, synthetic)
    tools.install_shortcuts(viewer)
    keys = {str(k) for k in viewer.keymap}
    for key in ("N", "C", "D", "R"):
        assert key in keys, keys
    assert any("Shift" in k and "M" in k for k in keys)
    # D with the pointer over a cell deletes it
    cell = int(np.unique(group.layers[-1].data)[-1])
    r, c = _centre(group.layers[-1].data == cell)
    viewer.cursor.position = (r, c)
    handler = next(v for k, v in viewer.keymap.items() if str(k) == "D")
    handler(viewer)
    assert not any(np.any(lay.data == cell) for lay in group.layers)

"""Editing tools for overlapping cells, and COCO export/import of instance groups.

napari's own Labels tools (brush, eraser, polygon, fill, picker) work in every layer of a group.
This module adds what they cannot do across layers:

* **new cell** (N): paint it on a *draft* layer, then commit (C): it goes to the first layer of the
  group where it overlaps nothing (a new layer when none has room) with a fresh id;
* **delete cell** (D, or click): remove the cell under the pointer, in whichever layer it is;
* **redraw cell** (R, or click): copy the cell under the pointer into the draft, edit it, commit;
* **move cell** (Shift-M, or click): to the next layer where it fits, or to a chosen layer;
* **add a missed cell** (A, or click; Shift-drag a box): the model's own candidate masks under the
  pointer (every query of the segmentation, kept with the group) — the best appears as a draft at
  once, Tab shows the next, C / Enter commits it like a new cell, Esc discards it; a candidate
  split off a cell already in the group (two cells detected as one) is cut out of that cell;
* **undo / redo** (Ctrl-Z / Ctrl-Shift-Z on a group layer, or the buttons) for all of them and for
  napari's own brush strokes on group layers.

No edit ever clips another cell: overlapping cells live in different layers and the tools refuse
(or add a layer) rather than overwrite a pixel of another cell.

The keyboard and mouse handlers are plain functions of the viewer (:func:`new_cell`,
:func:`commit_draft`, :func:`delete_cell_at`, :func:`redraw_cell_at`, :func:`move_cell_at`), so
tests and scripts can call them directly.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..instances import Instances
from . import _qt_utils as qtu
from .layer_group import (
    HUB,
    META_KEY,
    EditError,
    InstanceGroup,
    add_group_for_image,
    current_group,
    current_plane,
    group_of,
    groups,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels
    from napari.viewer import Viewer

__all__ = [
    "SHORTCUTS",
    "EditToolsWidget",
    "add_candidate_at",
    "commit_draft",
    "delete_cell_at",
    "discard_draft",
    "draft_layer",
    "export_group",
    "install_shortcuts",
    "move_cell_at",
    "new_cell",
    "next_candidate",
    "redraw_cell_at",
]

DRAFT_COLOUR = np.array([1.0, 0.85, 0.0, 1.0], np.float32)  # yellow: clearly "not yet a cell"

SHORTCUTS = {
    "n": "new cell: start a draft (paint it, then commit)",
    "c": "commit the draft into the group",
    "d": "delete the cell under the pointer",
    "r": "redraw the cell under the pointer (copies it into the draft)",
    "Shift-M": "move the cell under the pointer to the next layer where it fits",
    "a": "add the model's best candidate under the pointer as a draft (Tab: next, C / Enter: "
         "commit, Esc: discard)",
    "Control-Z": "undo the last edit of the group (on a group layer)",
    "Control-Shift-Z": "redo (on a group layer)",
}


def _notify(message: str, warning: bool = False) -> None:
    from napari.utils.notifications import show_info, show_warning

    (show_warning if warning else show_info)(message)


# ---------------------------------------------------------------------------------- group choice
def _image_layer_for(viewer: Viewer) -> Any:
    from napari.layers import Image

    active = viewer.layers.selection.active
    if isinstance(active, Image):
        return active
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    return images[-1] if images else None


def ensure_group(viewer: Viewer) -> InstanceGroup:
    """The current group; when there is none, an empty *manual* group on the current image."""
    group = current_group(viewer)
    if group is not None:
        return group
    image = _image_layer_for(viewer)
    if image is None:
        raise EditError("open an image first (or segment one): there is nothing to draw on")
    plane, frame = current_plane(viewer, image)
    shape = plane.shape[:2]
    return add_group_for_image(viewer, image, Instances.empty(shape), frame=frame,
                               source="manual")


# ---------------------------------------------------------------------------------- draft layer
def draft_layer(viewer: Viewer, group: InstanceGroup) -> Labels | None:
    """The draft layer of ``group`` (None when no draft is open)."""
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}).get(META_KEY)
        if isinstance(meta, dict) and meta.get("role") == "draft" and meta.get("group") == group.id:
            return layer
    return None


def _open_draft(viewer: Viewer, group: InstanceGroup, replaces: int | None,
                initial: np.ndarray | None = None) -> Labels:
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    layer = draft_layer(viewer, group)
    template = group.layers[0]
    data = np.zeros(group.image_shape, np.uint8)
    if initial is not None:
        data[initial] = 1
    if layer is None:
        layer = Labels(
            data,
            name=f"draft cell [{group.name}]",
            metadata={META_KEY: {"role": "draft", "group": group.id, "replaces": replaces,
                                 "split_from": None}},
            scale=template.scale,
            translate=template.translate,
            opacity=0.75,
            colormap=DirectLabelColormap(color_dict={None: DRAFT_COLOUR, 0: np.zeros(4),
                                                     1: DRAFT_COLOUR}),
        )
        layer.brush_size = max(3, min(group.image_shape) // 80)
        layer.bind_key("c", lambda _layer: _run(commit_draft, viewer), overwrite=True)
        layer.bind_key("Enter", lambda _layer: _run(commit_draft, viewer), overwrite=True)
        layer.bind_key("Escape", lambda _layer: discard_draft(viewer, group), overwrite=True)
        layer.bind_key("Tab", lambda _layer: _run(next_candidate, viewer), overwrite=True)
        viewer.layers.append(layer)
    else:
        layer.data = data
        layer.metadata[META_KEY]["replaces"] = replaces
        layer.metadata[META_KEY]["split_from"] = None
    _CYCLES.pop(layer, None)  # a new draft: no candidates to cycle through (add sets them)
    layer.selected_label = 1
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    return layer


def new_cell(viewer: Viewer) -> Labels:
    """Open an empty draft for a new cell of the current group (a manual group if none)."""
    group = ensure_group(viewer)
    layer = _open_draft(viewer, group, replaces=None)
    _notify(f"Paint the new cell on '{layer.name}' (brush, polygon or fill), then press C "
            "to commit it (enclosed holes are filled).")
    return layer


def _group_and_cell(viewer: Viewer, position: Sequence[float] | None
                    ) -> tuple[InstanceGroup, int, int] | None:
    position = viewer.cursor.position if position is None else position
    active = viewer.layers.selection.active
    preferred = group_of(viewer, active)
    candidates = ([preferred] if preferred else []) + [
        g for g in reversed(groups(viewer)) if g is not preferred]
    for group in candidates:
        hit = group.cell_at(position, prefer=active)
        if hit is not None:
            return group, hit[0], hit[1]
    return None


def delete_cell_at(viewer: Viewer, position: Sequence[float] | None = None) -> int | None:
    """Delete the cell under ``position`` (world coordinates; default: the mouse pointer)."""
    hit = _group_and_cell(viewer, position)
    if hit is None:
        _notify("No cell under the pointer.", warning=True)
        return None
    group, _, cell = hit
    group.delete_cell(cell)
    _notify(f"Deleted cell {cell} (Ctrl-Z on a group layer, or Undo, brings it back).")
    return cell


def redraw_cell_at(viewer: Viewer, position: Sequence[float] | None = None) -> int | None:
    """Copy the cell under ``position`` into the draft layer; commit replaces its mask."""
    hit = _group_and_cell(viewer, position)
    if hit is None:
        _notify("No cell under the pointer.", warning=True)
        return None
    group, _, cell = hit
    _open_draft(viewer, group, replaces=cell, initial=group.mask_of(cell))
    _notify(f"Redraw cell {cell} on the draft (brush adds, eraser removes), then press C.")
    return cell


def move_cell_at(viewer: Viewer, position: Sequence[float] | None = None,
                 target: int | None = None) -> int | None:
    """Move the cell under ``position`` to layer ``target`` (index) or the next that has room."""
    hit = _group_and_cell(viewer, position)
    if hit is None:
        _notify("No cell under the pointer.", warning=True)
        return None
    group, _, cell = hit
    dest = group.move_cell(cell, target)
    _notify(f"Moved cell {cell} to '{group.layers[dest].name}'.")
    return dest


class _Cycle:
    """The ranked candidates of one click, and which of them the draft shows."""

    def __init__(self, group: InstanceGroup, picks: list) -> None:
        self.group = group
        self.picks = picks
        self.index = 0


_CYCLES: weakref.WeakKeyDictionary[Any, _Cycle] = weakref.WeakKeyDictionary()


def _group_for_point(viewer: Viewer, position: Sequence[float]) -> InstanceGroup | None:
    """The group to add to: the selected layer's (or its draft's), else the newest with
    candidates whose image holds ``position``, else the current group."""
    active = group_of(viewer, viewer.layers.selection.active)
    if active is not None:
        return active
    for group in reversed(groups(viewer)):
        if group.candidates is not None and _data_point(group, position) is not None:
            return group
    return current_group(viewer)


def _data_point(group: InstanceGroup, position: Sequence[float]) -> tuple[int, int] | None:
    """``(row, column)`` image pixel of a world position on ``group``'s layers (None: outside)."""
    coords = np.asarray(group.layers[0].world_to_data(position))[-2:]
    r, c = (int(np.floor(v + 0.5)) for v in coords)
    h, w = group.image_shape
    return (r, c) if 0 <= r < h and 0 <= c < w else None


def add_candidate_at(viewer: Viewer, position: Sequence[float] | None = None, *,
                     box: Sequence[Sequence[float]] | None = None) -> Labels | None:
    """Show the model's best candidate under ``position`` (world coordinates; default: the
    pointer) as a draft of a new cell; Tab (:func:`next_candidate`) shows the next, C / Enter
    commits, Esc discards. ``box`` (two world corners of a drag) keeps only candidates that fill
    the box. Returns the draft layer, or None when no candidate fits (then: draw it, N)."""
    from ..inference.candidates import candidates_at

    position = viewer.cursor.position if position is None else position
    group = _group_for_point(viewer, position if box is None else box[0])
    if group is None:
        raise EditError("there is no instance group here: segment the image first")
    if group.candidates is None:
        raise EditError(f"{group.name} has no model candidates (only a segmentation made in "
                        "this session keeps them): draw the cell instead (N)")
    point, rect = None, None
    if box is None:
        point = _data_point(group, position)
        if point is None:
            raise EditError("the pointer is outside the image")
    else:
        corners = [np.asarray(group.layers[0].world_to_data(c))[-2:] for c in box]
        (r0, c0), (r1, c1) = corners
        rect = (min(r0, r1), min(c0, c1), max(r0, r1) + 1, max(c0, c1) + 1)
    picks = candidates_at(group.candidates, point, box=rect, accepted=group.label_images())
    if not picks:
        discard_draft(viewer, group)
        where = "in this box" if box is not None else "under the pointer"
        _notify(f"The model has no candidate {where}: draw the cell instead (N, then C).",
                warning=True)
        return None
    layer = _open_draft(viewer, group, replaces=None, initial=picks[0].mask(group.image_shape))
    layer.mode = "pan_zoom"  # the next click adds again instead of painting (paint to edit)
    _CYCLES[layer] = _Cycle(group, picks)
    _announce_candidate(layer)
    return layer


def next_candidate(viewer: Viewer, group: InstanceGroup | None = None) -> Labels | None:
    """Show the next of the click's candidates in the draft (Tab); wraps around."""
    group = group or current_group(viewer)
    layer = draft_layer(viewer, group) if group is not None else None
    cycle = _CYCLES.get(layer) if layer is not None else None
    if layer is None or cycle is None:
        raise EditError("no candidates to cycle through: press A over a missed cell first")
    cycle.index = (cycle.index + 1) % len(cycle.picks)
    layer.data = cycle.picks[cycle.index].mask(group.image_shape).astype(np.uint8)
    _announce_candidate(layer)
    return layer


def _announce_candidate(layer: Labels) -> None:
    cycle = _CYCLES[layer]
    pick = cycle.picks[cycle.index]
    more = (f"Tab: next of {len(cycle.picks)}, " if len(cycle.picks) > 1 else "")
    what, action = "", "add it"
    # a split piece whose whole shape repeats an accepted cell: committing cuts it out of it
    parent = pick.split_from or None
    layer.metadata[META_KEY]["split_from"] = parent
    if pick.source == -1:
        what = "the model's answer to the click, "
    elif parent is not None:
        what = f"cell {parent} split where it narrows, "
        action = f"split it off cell {parent}"
    elif pick.parent is not None:
        what = "a larger shape split where it narrows, "
    _notify(f"Candidate {cycle.index + 1}/{len(cycle.picks)} ({what}score {pick.score:.2f}, "
            f"{pick.area} px): {more}C or Enter: {action}, Esc: discard.")


def commit_draft(viewer: Viewer, group: InstanceGroup | None = None) -> int | None:
    """Put the draft into its group (new cell, or the redrawn cell); returns the cell id."""
    from scipy import ndimage

    if group is None:
        active = viewer.layers.selection.active
        group = group_of(viewer, active) or current_group(viewer)
    if group is None:
        raise EditError("there is no instance group to commit to")
    layer = draft_layer(viewer, group)
    if layer is None:
        raise EditError("there is no draft to commit: press N (new cell) or R (redraw) first")
    mask = ndimage.binary_fill_holes(np.asarray(layer.data) > 0)
    replaces = layer.metadata[META_KEY].get("replaces")
    split_from = layer.metadata[META_KEY].get("split_from")
    said = ""
    if replaces is not None:
        group.replace_cell(int(replaces), mask)
        cell = int(replaces)
    elif split_from is not None and int(split_from) in group.ids() and np.any(
            mask & group.mask_of(int(split_from))):
        cell = group.split_cell(int(split_from), mask)
        said = f" It was cut out of cell {split_from}, which keeps the rest (Ctrl-Z: both back)."
    else:
        cell = group.add_cell(mask)
    viewer.layers.remove(layer)
    dest = group.layers[group.layer_of(cell)]
    viewer.layers.selection.active = dest
    _notify(f"Cell {cell} is in '{dest.name}'.{said}")
    return cell


def discard_draft(viewer: Viewer, group: InstanceGroup | None = None) -> None:
    """Close the draft of ``group`` (default: the current group) without changing the group."""
    group = group or current_group(viewer)
    layer = draft_layer(viewer, group) if group is not None else None
    if layer is not None:
        viewer.layers.remove(layer)


def undo(viewer: Viewer) -> str | None:
    group = current_group(viewer)
    return group.undo() if group is not None else None


def redo(viewer: Viewer) -> str | None:
    group = current_group(viewer)
    return group.redo() if group is not None else None


# ---------------------------------------------------------------------------------- shortcuts
def _run(fn: Any, viewer: Viewer, *args: Any) -> Any:
    """Run a tool; its EditError becomes a warning instead of a traceback."""
    try:
        return fn(viewer, *args)
    except EditError as exc:
        _notify(str(exc), warning=True)
        return None


_INSTALLED: weakref.WeakSet = weakref.WeakSet()


def install_shortcuts(viewer: Viewer) -> None:
    """Bind the tool keys on ``viewer`` (once per viewer; see :data:`SHORTCUTS`)."""
    if viewer in _INSTALLED:
        return
    _INSTALLED.add(viewer)
    bindings = {
        "n": new_cell,
        "c": commit_draft,
        "d": delete_cell_at,
        "r": redraw_cell_at,
        "Shift-M": move_cell_at,
        "a": add_candidate_at,
    }
    for key, fn in bindings.items():
        viewer.bind_key(key, lambda v, fn=fn: _run(fn, v), overwrite=True)
    _install_tab_filter(viewer)


def _install_tab_filter(viewer: Viewer) -> None:
    """Tab never reaches napari's key bindings (Qt moves the keyboard focus with it): while a
    draft of candidates is open, catch it on the canvas and show the next candidate."""
    from qtpy.QtCore import QEvent, QObject, Qt

    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    if qt_viewer is None:  # a viewer without a window (headless model)
        return
    viewer_ref = weakref.ref(viewer)

    class _TabFilter(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:
            if (event.type() != QEvent.Type.KeyPress or event.key() != Qt.Key.Key_Tab
                    or event.modifiers() != Qt.KeyboardModifier.NoModifier):
                return False
            viewer = viewer_ref()
            group = current_group(viewer) if viewer is not None else None
            layer = draft_layer(viewer, group) if group is not None else None
            if layer is None or layer not in _CYCLES:
                return False
            _run(next_candidate, viewer, group)
            return True

    tab_filter = _TabFilter(qt_viewer)  # owned by the viewer's widget
    targets = [qt_viewer, getattr(getattr(qt_viewer, "canvas", None), "native", None)]
    for target in targets:
        if target is not None:
            target.installEventFilter(tab_filter)


# ---------------------------------------------------------------------------------- COCO export
def export_group(group: InstanceGroup, path: str | Path, *, rle: bool = False,
                 tolerance: float | None = None, overwrite: bool = False) -> Path:
    """Write one group as a COCO JSON file (polygons, or RLE with ``rle=True``), atomically."""
    from .._writer import coco_for_groups
    from ..io.coco import write_coco

    coco = coco_for_groups([(group.label_images(), group.info, group.scores, group.classes)],
                           rle=rle, tolerance=tolerance)
    write_coco(path, coco, overwrite=overwrite)
    group.mark_pristine()
    return Path(path)


# ---------------------------------------------------------------------------------- widget
CLICK_ACTIONS = ("off", "delete", "redraw", "move", "add")


class EditToolsWidget(QWidget):
    """Dock widget: tools for the cells of an instance group, undo, COCO export and import.

    Args:
        viewer: the napari viewer.
        ask: ``ask(title, text, choices) -> choice`` for questions (default: a message box).
        get_save_path / get_open_path: file choosers (default: Qt dialogs).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, ask: qtu.AskFn | None = None,
                 get_save_path: qtu.PathFn | None = None,
                 get_open_path: qtu.PathFn | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer = qtu.unwrap_viewer(viewer)
        self._ask = ask or (lambda t, x, c: qtu.ask(t, x, c, self))
        self._get_save_path = get_save_path or (lambda c, s, f: qtu.get_save_path(c, s, f, self))
        self._get_open_path = get_open_path or (lambda c, s, f: qtu.get_open_path(c, s, f, self))
        self._click_action = "off"
        install_shortcuts(viewer)
        self._build()
        viewer.mouse_drag_callbacks.append(self._on_click)
        for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed,
                        viewer.layers.selection.events.active):
            emitter.connect(self._on_layers_changed)
        HUB.changed.connect(self._on_group_changed)
        self.destroyed.connect(lambda *_: None)
        self._on_layers_changed()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)

        box, lay = qtu.section("Edit cells", self)
        self.group_combo = QComboBox()
        self.group_combo.setToolTip("The instance group the tools work on (follows the selected "
                                    "layer).")
        self.group_combo.activated.connect(self._on_group_chosen)
        self.group_info = QLabel("no instance group yet: segment an image, open a COCO file, "
                                 "or press New cell")
        self.group_info.setWordWrap(True)
        lay.addWidget(self.group_combo)
        lay.addWidget(self.group_info)

        self.new_btn = QPushButton("New cell (N)")
        self.new_btn.setToolTip("Open a draft layer: paint the cell (brush, polygon tool or "
                                "fill), then Commit. It goes to the first layer where it overlaps "
                                "nothing, with a fresh id.")
        self.new_btn.clicked.connect(lambda: _run(new_cell, self.viewer))
        self.commit_btn = QPushButton("Commit (C)")
        self.commit_btn.setToolTip("Put the draft into the group (enclosed holes are filled).")
        self.commit_btn.clicked.connect(lambda: _run(commit_draft, self.viewer))
        self.discard_btn = QPushButton("Discard")
        self.discard_btn.setToolTip("Close the draft without changing the group.")
        self.discard_btn.clicked.connect(lambda: discard_draft(self.viewer))
        lay.addWidget(qtu.hbox(self.new_btn, self.commit_btn, self.discard_btn))

        lay.addWidget(QLabel("Click a cell to:"))
        self.click_buttons = QButtonGroup(self)
        texts = {"off": "nothing", "delete": "delete (D)", "redraw": "redraw (R)",
                 "move": "move (Shift-M)", "add": "add missed (A)"}
        radios = []
        for i, action in enumerate(CLICK_ACTIONS):
            radio = QRadioButton(texts[action])
            radio.setToolTip({
                "off": "Clicks go to napari's tools only.",
                "delete": "Click deletes the cell under the pointer, in whichever layer.",
                "redraw": "Click copies the cell into the draft; edit it and Commit.",
                "move": "Click moves the cell to the layer chosen below.",
                "add": "Click a cell the model missed: its best own candidate mask there "
                       "appears as a draft (Tab: next, C / Enter: add, Esc: discard). "
                       "Shift-drag a box to pick among the candidates inside it.",
            }[action])
            self.click_buttons.addButton(radio, i)
            radios.append(radio)
        radios[0].setChecked(True)
        self.click_buttons.idClicked.connect(
            lambda i: self.set_click_action(CLICK_ACTIONS[i]))
        lay.addWidget(qtu.hbox(*radios, stretch_last=True))

        self.move_target = QComboBox()
        self.move_target.setToolTip("Where Move sends a cell. A layer where it would overlap "
                                    "another cell is refused (nothing is clipped).")
        lay.addWidget(qtu.hbox(QLabel("Move to:"), self.move_target, stretch_last=True))

        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setToolTip("Undo the last edit of this group: tool edits and napari brush "
                                 "strokes alike (Ctrl-Z on a group layer).")
        self.undo_btn.clicked.connect(self.undo)
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.setToolTip("Redo (Ctrl-Shift-Z on a group layer).")
        self.redo_btn.clicked.connect(self.redo)
        self.outlines = QCheckBox("outlines")
        self.outlines.setToolTip("Show cells as outlines, so overlapping cells stay visible.")
        self.outlines.toggled.connect(self._on_outlines)
        lay.addWidget(qtu.hbox(self.undo_btn, self.redo_btn, self.outlines, stretch_last=True))
        layout.addWidget(box)

        box, lay = qtu.section("COCO", self)
        self.fmt_polygons = QRadioButton("polygons")
        self.fmt_polygons.setToolTip("Contours simplified within the tolerance; several polygons "
                                     "for multi-part cells.")
        self.fmt_rle = QRadioButton("RLE (lossless)")
        self.fmt_rle.setToolTip("Run-length encoded masks: exact pixels, less readable.")
        self.fmt_polygons.setChecked(True)
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(0.0, 5.0)
        self.tolerance.setSingleStep(0.25)
        self.tolerance.setValue(1.0)
        self.tolerance.setSuffix(" px")
        self.tolerance.setToolTip("Largest distance between a simplified polygon and the mask "
                                  "contour.")
        self.fmt_rle.toggled.connect(lambda rle: self.tolerance.setEnabled(not rle))
        lay.addWidget(qtu.hbox(self.fmt_polygons, self.tolerance, self.fmt_rle,
                               stretch_last=True))
        self.export_btn = QPushButton("Export COCO…")
        self.export_btn.setToolTip("Write the group as one COCO JSON file (never overwrites "
                                   "without asking).")
        self.export_btn.clicked.connect(self._on_export_clicked)
        self.import_btn = QPushButton("Import COCO…")
        self.import_btn.setToolTip("Open a COCO JSON file as instance groups (with its image "
                                   "when found next to it or in images/).")
        self.import_btn.clicked.connect(self._on_import_clicked)
        lay.addWidget(qtu.hbox(self.export_btn, self.import_btn))
        layout.addWidget(box)

        keys = ", ".join(f"{k}" for k in ("N", "C", "D", "R", "Shift-M", "A", "Tab", "Ctrl-Z"))
        hint = QLabel(f"Keys (pointer over the canvas): {keys}")
        hint.setWordWrap(True)
        hint.setToolTip("\n".join(f"{k}: {v}" for k, v in SHORTCUTS.items()))
        layout.addWidget(hint)
        layout.addStretch(1)

    # ------------------------------------------------------------------ state
    def group(self) -> InstanceGroup | None:
        """The group the tools act on (the one shown in the combo box)."""
        gid = self.group_combo.currentData()
        for g in groups(self.viewer):
            if g.id == gid:
                return g
        return current_group(self.viewer)

    def _on_layers_changed(self, *_: Any) -> None:
        if not qtu.alive(self):  # the dock was closed with the viewer: let go of it
            self.cleanup()
            return
        all_groups = groups(self.viewer)
        active = group_of(self.viewer, self.viewer.layers.selection.active)
        chosen = active or self.group()
        self.group_combo.blockSignals(True)
        self.group_combo.clear()
        for g in all_groups:
            self.group_combo.addItem(g.name, g.id)
        if chosen is not None and chosen in all_groups:
            self.group_combo.setCurrentIndex(all_groups.index(chosen))
        self.group_combo.blockSignals(False)
        self._update_state()

    def _on_group_changed(self, group: Any) -> None:
        if not qtu.alive(self):
            self.cleanup()
            return
        if group is self.group() or group not in groups(self.viewer):
            self._on_layers_changed()

    def _on_group_chosen(self, index: int) -> None:
        group = self.group()
        if group is not None and group.layers:
            self.viewer.layers.selection.active = group.layers[0]
        self._update_state()

    def _update_state(self) -> None:
        group = self.group()
        has = group is not None
        for w in (self.undo_btn, self.redo_btn, self.export_btn, self.move_target):
            w.setEnabled(has)
        self.move_target.clear()
        self.move_target.addItem("next layer with room", None)
        if group is None:
            return
        self.undo_btn.setEnabled(group.can_undo)
        self.redo_btn.setEnabled(group.can_redo)
        for k in range(len(group.layers)):
            self.move_target.addItem(f"layer {k + 1}/{len(group.layers)}", k)
        n_cells = len(group.ids())
        source = group.info.get("source", "")
        n_layers = len(group.layers)
        edited = ", edited" if group.is_edited() else ""
        self.group_info.setText(
            f"{n_cells} cell{'' if n_cells == 1 else 's'} in {n_layers} "
            f"layer{'' if n_layers == 1 else 's'} ({source}{edited})")
        draft = draft_layer(self.viewer, group)
        self.commit_btn.setEnabled(draft is not None)
        self.discard_btn.setEnabled(draft is not None)

    # ------------------------------------------------------------------ actions
    def set_click_action(self, action: str) -> None:
        """What a left click on the canvas does: ``off``, ``delete``, ``redraw`` or ``move``."""
        if action not in CLICK_ACTIONS:
            raise ValueError(f"click action must be one of {CLICK_ACTIONS}")
        self._click_action = action
        button = self.click_buttons.button(CLICK_ACTIONS.index(action))
        if button is not None and not button.isChecked():
            button.setChecked(True)
        group = self.group()
        if action != "off" and group is not None:
            for layer in group.layers:  # so napari's brush does not also paint on the click
                layer.mode = "pan_zoom"

    def click(self, position: Sequence[float]) -> Any:
        """Apply the click action at a world position (what a canvas click does)."""
        action = self._click_action
        if action == "delete":
            return _run(delete_cell_at, self.viewer, position)
        if action == "redraw":
            return _run(redraw_cell_at, self.viewer, position)
        if action == "move":
            return _run(move_cell_at, self.viewer, position, self.move_target.currentData())
        if action == "add":
            return _run(add_candidate_at, self.viewer, position)
        return None

    def add_in_box(self, start: Sequence[float], end: Sequence[float]) -> Any:
        """Candidates inside the box between two world positions (what a Shift-drag does)."""
        return _run(lambda v: add_candidate_at(v, box=(start, end)), self.viewer)

    def _on_click(self, viewer: Viewer, event: Any) -> Any:
        if self._click_action == "off" or event.type != "mouse_press" or event.button != 1:
            return
        if self._click_action == "add" and set(event.modifiers) == {"Shift"}:
            # a Shift-drag (vispy does not pan while a modifier is held): candidates in the box
            start = tuple(event.position)
            yield
            while event.type == "mouse_move":
                yield
            self.add_in_box(start, tuple(event.position))
            return
        if event.modifiers:
            return
        self.click(event.position)

    def undo(self) -> None:
        group = self.group()
        if group is not None:
            label = group.undo()
            if label:
                _notify(f"Undone: {label}")

    def redo(self) -> None:
        group = self.group()
        if group is not None:
            label = group.redo()
            if label:
                _notify(f"Redone: {label}")

    def _on_outlines(self, on: bool) -> None:
        for group in groups(self.viewer):
            for layer in group.layers:
                layer.contour = 2 if on else 0

    # ------------------------------------------------------------------ COCO
    def export_coco(self, path: str | Path | None = None) -> Path | None:
        """Export the current group; asks for a path (and before overwriting a file)."""
        group = self.group()
        if group is None:
            _notify("There is no instance group to export.", warning=True)
            return None
        if path is None:
            start = str(Path.home() / f"{group.info.get('image_file') or group.image_name}.json")
            path = self._get_save_path("Export instances as COCO JSON", start,
                                       "COCO JSON (*.json)")
            if not path:
                return None
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path.with_suffix(path.suffix + ".json") if path.suffix else path.with_suffix(
                ".json")
        overwrite = False
        if path.exists():
            choice = self._ask("File exists", f"{path.name} already exists in {path.parent}.\n"
                               "Replace it?", ["Replace", "Cancel"])
            if choice != "Replace":
                return None
            overwrite = True
        rle = self.fmt_rle.isChecked()
        try:
            out = export_group(group, path, rle=rle,
                               tolerance=None if rle else self.tolerance.value(),
                               overwrite=overwrite)
        except (OSError, ValueError) as exc:
            _notify(f"Export failed: {exc}", warning=True)
            return None
        _notify(f"Wrote {len(group.ids())} cells to {out}")
        self._update_state()
        return out

    def _on_export_clicked(self) -> None:
        self.export_coco()

    def import_coco(self, path: str | Path | None = None) -> list:
        """Open a COCO file with this plugin's reader (image + one group per image entry)."""
        if path is None:
            path = self._get_open_path("Import COCO JSON", str(Path.home()),
                                       "COCO JSON (*.json)")
            if not path:
                return []
        layers = self.viewer.open(str(path), plugin="napari-iaunet")
        self._on_layers_changed()
        return layers

    def _on_import_clicked(self) -> None:
        try:
            self.import_coco()
        except (OSError, ValueError) as exc:
            _notify(f"Import failed: {exc}", warning=True)

    # ------------------------------------------------------------------ teardown
    def closeEvent(self, event: Any) -> None:
        self.cleanup()
        super().closeEvent(event)

    def cleanup(self) -> None:
        """Disconnect from the viewer (called when the dock closes)."""
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            HUB.changed.disconnect(self._on_group_changed)
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                        self.viewer.layers.selection.events.active):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(self._on_layers_changed)

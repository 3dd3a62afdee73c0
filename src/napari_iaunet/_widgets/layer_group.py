"""The napari side of an instance group: the Labels layers that together hold overlapping cells.

napari has no layer type for overlapping instances (napari#269), so a group is a set of ordinary
Labels layers. Instances that overlap sit in different layers; every label value (instance id) is
unique across the group, so ``(layer, id)`` never has to be disambiguated.

Representation
--------------
* Layer names: ``"<kind> [<image>] k/n"``, e.g. ``"cells [plate1] 1/3"``; the names are only for
  people and are rewritten whenever a layer is added or removed.
* ``layer.metadata["napari_iaunet"]`` (JSON-safe, so it survives saving and re-reading) holds
  ``role`` (``"instances"`` or ``"draft"``), ``group`` (a uuid), ``group_name``, ``image``
  (image layer name), ``image_file`` (for the COCO image entry), ``frame`` (leading indices of a
  stack, or None), ``source`` (``"model"`` / ``"coco"`` / ``"sample"``), ``checkpoint``,
  ``class_names`` and ``layer_index``.
* ``layer.features``: one row per instance of that layer, columns ``index`` (the label value;
  napari uses it to show the row under the cursor), ``id``, ``score``, ``area``, ``class``.
* Colours: one ``DirectLabelColormap`` shared by the layers of a group, chosen so that cells whose
  boxes touch or overlap get different colours (greedy colouring over a 24-colour palette).

The authoritative membership list is the :class:`InstanceGroup` object kept in a per-viewer
registry; metadata lets a group be rebuilt from layers a reader created (see :func:`groups`).
A duplicated layer (napari's *Duplicate layer*) carries the same metadata but is not adopted.

Edits made by the tools (:meth:`InstanceGroup.add_cell`, ``delete_cell``, ``replace_cell``,
``move_cell``) and napari's own brush strokes on group layers share one undo stack per group.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..instances import Instances

if TYPE_CHECKING:
    from napari.layers import Image, Labels
    from napari.viewer import Viewer

    from ..inference.candidates import Candidates

__all__ = [
    "META_KEY",
    "EditError",
    "InstanceGroup",
    "current_group",
    "group_layer_data",
    "group_of",
    "groups",
]

META_KEY = "napari_iaunet"
LABEL_DTYPE = np.uint32  # as napari_iaunet.layers.split_into_layers
DEFAULT_KIND = "cells"
LAYER_OPACITY = 0.6
UNDO_DEPTH = 200
BOX_GAP = 2  # cells whose boxes come this close count as neighbours for colouring


class EditError(ValueError):
    """An edit that cannot be made; the message says why (shown to the user as a warning)."""


class _Hub:
    """``HUB.changed`` fires (with the group) after every edit, undo, redo or layer change."""

    def __init__(self) -> None:
        from psygnal import SignalInstance

        self.changed: SignalInstance = SignalInstance((object,))


HUB = _Hub()


# ---------------------------------------------------------------------------------- colours
def _palette(n: int = 24) -> np.ndarray:
    """``n`` well separated RGBA colours: hues in a stride-5 order, two brightness levels."""
    colours = []
    for i in range(n):
        hue = ((i * 5) % 12) / 12.0 + (0.04 if i >= 12 else 0.0)
        sat, val = (0.85, 1.0) if i < 12 else (0.55, 0.95)
        colours.append((*colorsys.hsv_to_rgb(hue % 1.0, sat, val), 1.0))
    return np.asarray(colours, dtype=np.float32)


PALETTE = _palette()
UNASSIGNED = np.array([1.0, 1.0, 1.0, 1.0], np.float32)  # a label not yet coloured: white


def _distances_to(colours: np.ndarray) -> np.ndarray:
    """``(len(colours), len(PALETTE))`` RGB distances."""
    return np.linalg.norm(colours[:, None, :] - PALETTE[None, :, :3], axis=2)


def _neighbour_lists(boxes: np.ndarray, gap: int = BOX_GAP) -> list[np.ndarray]:
    """For each box, the indices of the boxes that touch or overlap it (grown by ``gap``)."""
    if len(boxes) == 0:
        return []
    y0, x0, y1, x1 = (boxes[:, i] for i in range(4))
    out = []
    for i in range(len(boxes)):
        hit = ((y0 < y1[i] + gap) & (y1 > y0[i] - gap) & (x0 < x1[i] + gap) & (x1 > x0[i] - gap))
        hit[i] = False
        out.append(np.flatnonzero(hit))
    return out


def assign_colours(ids: Sequence[int], boxes: np.ndarray,
                   fixed: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Give every id without a colour in ``fixed`` a palette colour its neighbours do not use."""
    colours = dict(fixed or {})
    ids = [int(i) for i in ids]
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    index = {tuple(np.round(c, 4)): k for k, c in enumerate(PALETTE)}
    slot: dict[int, int] = {}
    for i in ids:
        if i in colours:
            slot[i] = index.get(tuple(np.round(colours[i], 4)), -1)
    neighbours = _neighbour_lists(boxes)
    usage = np.zeros(len(PALETTE), np.int64)
    for s in slot.values():
        if s >= 0:
            usage[s] += 1
    for k, i in enumerate(ids):
        if i in slot:
            continue
        taken = [slot[ids[j]] for j in neighbours[k] if ids[j] in slot]
        free = [s for s in range(len(PALETTE)) if s not in taken]
        candidates = free or list(range(len(PALETTE)))
        if taken:  # the free colour least like any neighbour's (then the least used)
            near = PALETTE[[t for t in taken if t >= 0] or [0], :3]
            contrast = np.round(_distances_to(near).min(axis=0), 2)
            s = max(candidates, key=lambda c: (contrast[c], -usage[c]))
        else:
            s = min(candidates, key=lambda c: (usage[c], (c - k) % len(PALETTE)))
        slot[i] = s
        usage[s] += 1
        colours[i] = PALETTE[s]
    return colours


def _colormap(colours: dict[int, np.ndarray]):
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[Any, Any] = {None: UNASSIGNED, 0: np.zeros(4, np.float32)}
    color_dict.update({int(k): v for k, v in colours.items()})
    return DirectLabelColormap(color_dict=color_dict)


# ---------------------------------------------------------------------------------- helpers
def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _region(box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(box[0], box[2]), slice(box[1], box[3])


def _union(a: tuple[int, int, int, int] | None,
           b: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    if a is None:
        assert b is not None
        return b
    if b is None:
        return a
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def ids_and_areas(label_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero label values of a label image and their pixel counts."""
    flat = np.asarray(label_image).ravel()
    top = int(flat.max()) if flat.size else 0
    if 0 < top < 50_000_000 and flat.min() >= 0:
        counts = np.bincount(flat, minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        return ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, counts = np.unique(flat, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int64), counts[keep].astype(np.int64)


def _features(label_image: np.ndarray, scores: dict[int, float],
              classes: dict[int, int]) -> dict[str, np.ndarray]:
    ids, areas = ids_and_areas(label_image)
    return {
        "index": ids,
        "id": ids,
        "score": np.array([scores.get(int(i), 1.0) for i in ids], np.float32),
        "area": areas,
        "class": np.array([classes.get(int(i), 0) for i in ids], np.int64),
    }


def image_label(image_layer: Image | None, frame: Sequence[int] | None = None,
                fallback: str = "image") -> str:
    """``"plate1"`` or ``"plate1 t=3"``: how a group names its image."""
    name = image_layer.name if image_layer is not None else fallback
    if frame:
        name += " t=" + ",".join(str(int(f)) for f in frame)
    return name


def image_file_of(image_layer: Image | None) -> str | None:
    """The file the image layer was read from (basename), when napari knows it."""
    if image_layer is None:
        return None
    path = getattr(getattr(image_layer, "source", None), "path", None)
    if path:
        from pathlib import Path

        return Path(str(path)).name
    return None


# ---------------------------------------------------------------------------------- images
def current_plane(viewer: Viewer, image_layer: Image) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """The 2-D (gray or RGB) plane of ``image_layer`` the viewer shows, and its leading indices.

    A 2-D image gives ``(data, None)``; a stack gives the current frame and e.g. ``(3,)``.
    Multiscale images use their full-resolution level.
    """
    data = image_layer.data[0] if image_layer.multiscale else image_layer.data
    nd = image_layer.ndim  # spatial dims (an RGB channel axis is not counted)
    if nd < 2:
        raise ValueError(f"'{image_layer.name}' is not an image with at least 2 dimensions")
    if nd == 2:
        return np.asarray(data), None
    point = np.asarray(image_layer.world_to_data(viewer.dims.point))
    frame = tuple(int(np.clip(round(float(point[i])), 0, data.shape[i] - 1))
                  for i in range(nd - 2))
    return np.asarray(data[frame]), frame


def plane_geometry(image_layer: Image | None) -> dict[str, list[float]]:
    """``scale`` / ``translate`` of the image's last two axes, for labels drawn on top of it."""
    if image_layer is None:
        return {}
    return {"scale": [float(v) for v in image_layer.scale[-2:]],
            "translate": [float(v) for v in image_layer.translate[-2:]]}


def unique_group_name(viewer: Viewer, kind: str, image: str) -> str:
    """``"cells [img]"``, or ``"cells#2 [img]"`` when a group of that name already exists."""
    taken = {g.name for g in groups(viewer)}
    name, n = f"{kind} [{image}]", 2
    while name in taken:
        name, n = f"{kind}#{n} [{image}]", n + 1
    return name


def add_group_for_image(
    viewer: Viewer,
    image_layer: Image | None,
    instances: Instances,
    *,
    frame: Sequence[int] | None = None,
    label_images: list[np.ndarray] | None = None,
    source: str = "model",
    checkpoint: str | None = None,
    class_names: Sequence[str] = ("cell",),
    kind: str = DEFAULT_KIND,
    image_name: str | None = None,
) -> InstanceGroup:
    """Show ``instances`` as a new group above ``image_layer`` (the one call every tool uses)."""
    image = image_name or image_label(image_layer, frame)
    data = group_layer_data(
        instances, image_name=image, label_images=label_images, kind=kind,
        group_name=unique_group_name(viewer, kind, image), source=source,
        checkpoint=checkpoint, class_names=class_names, image_file=image_file_of(image_layer),
        frame=frame, **plane_geometry(image_layer),
    )
    if image_layer is not None:
        for _, kwargs, _ in data:
            kwargs["metadata"][META_KEY]["image"] = image_layer.name
            kwargs["metadata"][META_KEY]["image_label"] = image
    return InstanceGroup.create(viewer, data, above=image_layer)


# ---------------------------------------------------------------------------------- layer data
def group_layer_data(
    instances: Instances,
    *,
    image_name: str,
    label_images: list[np.ndarray] | None = None,
    kind: str = DEFAULT_KIND,
    group_id: str | None = None,
    group_name: str | None = None,
    source: str = "model",
    checkpoint: str | None = None,
    class_names: Sequence[str] = ("cell",),
    image_file: str | None = None,
    frame: Sequence[int] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> list[tuple[np.ndarray, dict, str]]:
    """napari layer-data tuples (``(data, kwargs, "labels")``) for one instance group.

    Overlapping instances go to different layers (``napari_iaunet.layers.split_into_layers``);
    label values are the instance ids. Used by the segment widget, the COCO reader and the sample
    data alike, so every group looks the same wherever it came from.
    """
    if label_images is None:
        from ..layers import split_into_layers

        label_images = split_into_layers(instances)
    if not label_images:  # no instance: still one (empty) layer, so the group is visible/editable
        label_images = [np.zeros(instances.image_shape, LABEL_DTYPE)]
    label_images = [np.asarray(li) for li in label_images]
    group_id = group_id or uuid.uuid4().hex
    group_name = group_name or f"{kind} [{image_name}]"
    scores = {int(i): float(s) for i, s in zip(instances.ids, instances.scores)}
    classes = {int(i): int(c) for i, c in zip(instances.ids, instances.class_ids)}
    colours = assign_colours(instances.ids, instances.boxes)
    colour_dict: dict[Any, Any] = {None: UNASSIGNED, 0: np.zeros(4, np.float32)}
    colour_dict.update(colours)
    n = len(label_images)
    out = []
    for k, data in enumerate(label_images):
        meta = {
            "role": "instances",
            "group": group_id,
            "group_name": group_name,
            "kind": kind,
            "image": image_name,
            "image_file": image_file,
            "frame": [int(f) for f in frame] if frame else None,
            "source": source,
            "checkpoint": checkpoint,
            "class_names": list(class_names),
            "layer_index": k,
            "image_shape": [int(v) for v in instances.image_shape],
        }
        kwargs: dict[str, Any] = {
            "name": f"{group_name} {k + 1}/{n}",
            "metadata": {META_KEY: meta},
            "features": _features(data, scores, classes),
            "colormap": dict(colour_dict),
            "opacity": LAYER_OPACITY,
            "blending": "translucent",
        }
        if scale is not None:
            kwargs["scale"] = list(scale)
        if translate is not None:
            kwargs["translate"] = list(translate)
        out.append((data, kwargs, "labels"))
    return out


# ---------------------------------------------------------------------------------- undo records
@dataclass
class _Patch:
    layer: Labels
    region: tuple[slice, slice]
    before: np.ndarray
    after: np.ndarray


@dataclass
class _Edit:
    label: str
    patches: list[_Patch] = field(default_factory=list)
    added_layers: list[Labels] = field(default_factory=list)
    scores: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    native_layer: Labels | None = None  # a napari brush/fill stroke: replayed by layer.undo()


# ---------------------------------------------------------------------------------- the group
class InstanceGroup:
    """A set of Labels layers holding one image's overlapping instances, with edit + undo."""

    def __init__(self, viewer: Viewer, layers: list[Labels]):
        if not layers:
            raise ValueError("an instance group needs at least one Labels layer")
        meta = dict(layers[0].metadata[META_KEY])
        self._viewer_ref = weakref.ref(viewer)  # the registry maps viewer → groups: no cycle
        self.id: str = meta["group"]
        self.info: dict[str, Any] = meta
        self.layers: list[Labels] = list(layers)
        self.scores: dict[int, float] = {}
        self.classes: dict[int, int] = {}
        self.colours: dict[int, np.ndarray] = {}
        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []
        self._busy = False  # True while this object changes layers (ignore own events)
        self._max_id = 0
        self._pending: set = set()  # layers napari painted on, refreshed from the event loop
        # every query mask of the segmentation that made the group (click-to-add, key A); only
        # in memory, set by the segment widget, dropped with the group
        self.candidates: Candidates | None = None
        for layer in self.layers:
            self._read_layer_state(layer)
        cmap = _colormap(self.colours)
        for layer in self.layers:
            layer.colormap = cmap
            layer.preserve_labels = True  # napari's brush never paints over a neighbour
            layer.selected_label = self.next_id()
            self._connect(layer)
        self._link_image()
        self._pristine = self.fingerprint()
        viewer.layers.events.removed.connect(self._on_layer_removed)

    def _link_image(self) -> None:
        """A reader's image layer carries the group id: take its (possibly renamed) name; and
        a group named like one already in the viewer (the same file opened twice) gets ``#2``."""
        for layer in self.viewer.layers:
            meta = _meta(layer)
            if meta and meta.get("role") == "image" and meta.get("group") == self.id:
                self.info["image"] = layer.name
                for member in self.layers:
                    member.metadata[META_KEY]["image"] = layer.name
                break
        others = {g.name for g in _REGISTRY.get(self.viewer, {}).values() if g.id != self.id}
        if self.name in others:
            kind = str(self.info.get("kind", DEFAULT_KIND))
            label = self.name[len(kind):].strip()  # "[image]"
            n = 2
            while f"{kind}#{n} {label}" in others:
                n += 1
            self.info["group_name"] = f"{kind}#{n} {label}"
            for member in self.layers:
                member.metadata[META_KEY]["group_name"] = self.info["group_name"]
            self.rename_layers()

    # ------------------------------------------------------------------ identity
    @property
    def viewer(self) -> Viewer:
        viewer = self._viewer_ref()
        if viewer is None:  # pragma: no cover - the viewer was closed
            raise RuntimeError("the viewer of this instance group was closed")
        return viewer

    @property
    def name(self) -> str:
        """``"cells [image]"``: the group's display name (layer names add ``k/n``)."""
        return str(self.info.get("group_name", "cells"))

    @property
    def image_name(self) -> str:
        return str(self.info.get("image", ""))

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.layers[0].data.shape[-2:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"InstanceGroup({self.name!r}, layers={len(self.layers)}, cells={len(self.ids())})"

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, viewer: Viewer, layer_data: list[tuple[np.ndarray, dict, str]],
               above: Any = None) -> InstanceGroup:
        """Add the layers of :func:`group_layer_data` to ``viewer`` (above layer ``above``)."""
        layers = []
        group_id = layer_data[0][1]["metadata"][META_KEY]["group"]
        _CREATING.add(group_id)  # no adoption of half-added groups while layers go in
        try:
            for data, kwargs, _ in layer_data:
                layers.append(viewer.add_labels(data, **kwargs))
        finally:
            _CREATING.discard(group_id)
        if above is not None and above in viewer.layers:
            dest = viewer.layers.index(above) + 1
            for offset, layer in enumerate(layers):
                src = viewer.layers.index(layer)
                if src != dest + offset:
                    viewer.layers.move(src, dest + offset)
        group = cls(viewer, layers)
        _register(viewer, group)
        HUB.changed.emit(group)
        return group

    def _read_layer_state(self, layer: Labels) -> None:
        feats = layer.features
        ids = np.asarray(feats["id"] if "id" in feats else feats.get("index", []), np.int64)
        if "score" in feats:
            for i, s in zip(ids, np.asarray(feats["score"], np.float64)):
                self.scores[int(i)] = float(s)
        if "class" in feats:
            for i, c in zip(ids, np.asarray(feats["class"], np.int64)):
                self.classes[int(i)] = int(c)
        cmap = layer.colormap
        color_dict = getattr(cmap, "color_dict", None)
        if color_dict:
            for k, v in color_dict.items():
                if k not in (None, 0):
                    self.colours.setdefault(int(k), np.asarray(v, np.float32))
        present, _ = ids_and_areas(layer.data)
        if present.size:
            self._max_id = max(self._max_id, int(present.max()))
        if self.scores:
            self._max_id = max(self._max_id, max(self.scores))
        missing = [int(i) for i in present if int(i) not in self.colours]
        if missing:
            self._colour_new_ids(missing, apply=False)

    def _adopt_layer(self, layer: Labels) -> None:
        """A member that arrived after the group was adopted (readers add layers one by one)."""
        self._read_layer_state(layer)
        index = int(layer.metadata[META_KEY].get("layer_index", len(self.layers)))
        position = sum(1 for lay in self.layers
                       if int(lay.metadata[META_KEY].get("layer_index", 0)) < index)
        self.layers.insert(position, layer)
        layer.metadata[META_KEY]["group_name"] = self.name  # may carry "#2" (see _link_image)
        layer.metadata[META_KEY]["image"] = self.image_name
        self.rename_layers()
        cmap = _colormap(self.colours)
        for lay in self.layers:
            lay.colormap = cmap
        layer.preserve_labels = True
        layer.selected_label = self.next_id()
        self._connect(layer)
        if not self._undo:
            self._pristine = self.fingerprint()
        HUB.changed.emit(self)

    def _connect(self, layer: Labels) -> None:
        layer.events.paint.connect(self._on_native_paint)
        layer.events.selected_label.connect(self._on_selected_label)
        layer.bind_key("Control-Z", lambda _layer: self.undo(), overwrite=True)
        layer.bind_key("Control-Shift-Z", lambda _layer: self.redo(), overwrite=True)

    def _disconnect(self, layer: Labels) -> None:
        for emitter, cb in ((layer.events.paint, self._on_native_paint),
                            (layer.events.selected_label, self._on_selected_label)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(cb)

    # ------------------------------------------------------------------ queries
    def ids(self) -> np.ndarray:
        """Every instance id present in the group's layers (sorted)."""
        found = [ids_and_areas(layer.data)[0] for layer in self.layers]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def next_id(self) -> int:
        """A fresh id, larger than any id the group has ever held."""
        return self._max_id + 1

    def layer_of(self, instance_id: int) -> int:
        """Index (into :attr:`layers`) of the layer that holds ``instance_id``."""
        for k, layer in enumerate(self.layers):
            if np.any(layer.data == instance_id):
                return k
        raise EditError(f"there is no cell {instance_id} in {self.name}")

    def mask_of(self, instance_id: int) -> np.ndarray:
        """Full-size boolean mask of one instance."""
        return np.asarray(self.layers[self.layer_of(instance_id)].data) == instance_id

    def cell_at(self, position: Sequence[float], prefer: Any = None) -> tuple[int, int] | None:
        """``(layer index, id)`` of the cell under a world position, or None.

        Where cells overlap, the cell in ``prefer`` (usually the selected layer) wins, then the
        topmost visible group layer.
        """
        order = sorted(range(len(self.layers)),
                       key=lambda k: -self.viewer.layers.index(self.layers[k])
                       if self.layers[k] in self.viewer.layers else 0)
        if prefer is not None and prefer in self.layers:
            k = self.layers.index(prefer)
            order.remove(k)
            order.insert(0, k)
        for k in order:
            layer = self.layers[k]
            if not layer.visible and layer is not prefer:
                continue
            coords = np.round(np.asarray(layer.world_to_data(position))[-2:]).astype(int)
            h, w = layer.data.shape[-2:]
            if not (0 <= coords[0] < h and 0 <= coords[1] < w):
                continue
            value = int(layer.data[coords[0], coords[1]])
            if value:
                return k, value
        return None

    def fingerprint(self) -> str:
        """A digest of the layers' pixels (and their order): changes whenever any cell does."""
        h = hashlib.blake2b(digest_size=16)
        for layer in self.layers:
            data = np.ascontiguousarray(layer.data)
            h.update(str((data.shape, data.dtype.str)).encode())
            h.update(memoryview(data).cast("B"))
        return h.hexdigest()

    def is_edited(self) -> bool:
        """True when the layers differ from what the model (or the file) produced."""
        return self.fingerprint() != self._pristine

    def mark_pristine(self) -> None:
        """Treat the current state as unedited (e.g. after saving)."""
        self._pristine = self.fingerprint()

    def label_images(self) -> list[np.ndarray]:
        return [np.asarray(layer.data) for layer in self.layers]

    def to_instances(self) -> Instances:
        """All cells of the group as :class:`Instances` (ids = label values, scores kept)."""
        return instances_from_label_images(self.label_images(), self.scores, self.classes)

    # ------------------------------------------------------------------ edits
    def _fits(self, k: int, box: tuple[int, int, int, int], crop: np.ndarray,
              ignore: int = 0) -> bool:
        region = np.asarray(self.layers[k].data[_region(box)])
        under = region[crop]
        return not np.any((under != 0) & (under != ignore))

    def _mask_box(self, k: int, instance_id: int) -> tuple[int, int, int, int]:
        box = _box(np.asarray(self.layers[k].data) == instance_id)
        if box is None:
            raise EditError(f"there is no cell {instance_id} in {self.name}")
        return box

    def _check_mask(self, mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.image_shape:
            raise EditError(f"the drawn mask is {mask.shape}, the group's image is "
                            f"{self.image_shape}")
        box = _box(mask)
        if box is None:
            raise EditError("the cell is empty: paint it first")
        return mask, box

    def add_cell(self, mask: np.ndarray, *, score: float = 1.0, class_id: int = 0) -> int:
        """Place a new cell in the first layer where it overlaps nothing (a new layer if none).

        Returns the new id. Nothing already in the group changes.
        """
        mask, box = self._check_mask(mask)
        crop = mask[_region(box)]
        new_id = self.next_id()
        edit = _Edit(f"new cell {new_id}")
        target = next((k for k in range(len(self.layers)) if self._fits(k, box, crop)), None)
        self._paint_into(edit, target, box, crop, new_id)
        edit.scores[new_id] = (None, float(score))
        self.classes[new_id] = int(class_id)
        self._apply(edit, forward=True, fresh=True)
        return new_id

    def split_cell(self, instance_id: int, mask: np.ndarray, *, score: float = 1.0) -> int:
        """Cut ``mask`` out of cell ``instance_id`` as a new cell (one undo step): the cell keeps
        the rest of its pixels, the new cell goes to the first layer where it fits (a new layer if
        none) and inherits the cell's class. Returns the new id. Other cells are never touched."""
        mask, box = self._check_mask(mask)
        k = self.layer_of(instance_id)
        old_box = self._mask_box(k, instance_id)
        layer = self.layers[k]
        before = np.array(layer.data[_region(old_box)])
        own = before == instance_id
        cut = own & mask[_region(old_box)]
        if not cut.any():
            raise EditError(f"the new cell does not overlap cell {instance_id}: add it instead")
        if np.array_equal(cut, own):
            raise EditError(f"the new cell covers all of cell {instance_id}: redraw that cell "
                            "instead (R)")
        new_id = self.next_id()
        edit = _Edit(f"split cell {new_id} off cell {instance_id}",
                     [_Patch(layer, _region(old_box), before,
                             np.where(cut, 0, before).astype(before.dtype))])
        crop = mask[_region(box)]
        # after the cut no pixel of the cell lies under the mask, so it counts as background
        target = next((j for j in range(len(self.layers))
                       if self._fits(j, box, crop, ignore=instance_id if j == k else 0)), None)
        self._paint_into(edit, target, box, crop, new_id)
        edit.scores[new_id] = (None, float(score))
        self.classes[new_id] = self.classes.get(instance_id, 0)
        self._apply(edit, forward=True, fresh=True)
        return new_id

    def delete_cell(self, instance_id: int) -> None:
        """Remove one cell (its pixels in its own layer become background)."""
        k = self.layer_of(instance_id)
        box = self._mask_box(k, instance_id)
        layer = self.layers[k]
        before = np.array(layer.data[_region(box)])
        after = np.where(before == instance_id, 0, before).astype(before.dtype)
        edit = _Edit(f"delete cell {instance_id}", [_Patch(layer, _region(box), before, after)])
        edit.scores[instance_id] = (self.scores.get(instance_id), None)
        self._apply(edit, forward=True, fresh=True)

    def replace_cell(self, instance_id: int, mask: np.ndarray, *, score: float = 1.0) -> int:
        """Give one cell a new mask (same id); returns the index of the layer it ends up in.

        It stays in its layer when the new mask overlaps no other cell there; otherwise it goes
        to the first layer where it fits (a new layer if none). Other cells are never touched.
        """
        mask, new_box = self._check_mask(mask)
        k = self.layer_of(instance_id)
        old_box = self._mask_box(k, instance_id)
        crop = mask[_region(new_box)]
        order = [k] + [j for j in range(len(self.layers)) if j != k]
        target = next((j for j in order if self._fits(j, new_box, crop, ignore=instance_id)), None)
        edit = _Edit(f"redraw cell {instance_id}")
        layer = self.layers[k]
        if target == k:
            box = _union(old_box, new_box)
            before = np.array(layer.data[_region(box)])
            after = np.where(before == instance_id, 0, before).astype(before.dtype)
            sub = (slice(new_box[0] - box[0], new_box[2] - box[0]),
                   slice(new_box[1] - box[1], new_box[3] - box[1]))
            after[sub][crop] = instance_id
            edit.patches.append(_Patch(layer, _region(box), before, after))
        else:
            before = np.array(layer.data[_region(old_box)])
            after = np.where(before == instance_id, 0, before).astype(before.dtype)
            edit.patches.append(_Patch(layer, _region(old_box), before, after))
            self._paint_into(edit, target, new_box, crop, instance_id)
        edit.scores[instance_id] = (self.scores.get(instance_id), float(score))
        self._apply(edit, forward=True, fresh=True)
        return self.layer_of(instance_id)

    def move_cell(self, instance_id: int, target: int | None = None) -> int:
        """Move one cell to layer ``target`` (index), or to the next layer where it fits.

        A target layer where the cell would overlap another cell is refused (:class:`EditError`):
        moving never clips anything. With ``target=None`` a new layer is added when no other layer
        has room. Returns the index of the destination layer.
        """
        k = self.layer_of(instance_id)
        box = self._mask_box(k, instance_id)
        layer = self.layers[k]
        before = np.array(layer.data[_region(box)])
        crop = before == instance_id
        n = len(self.layers)
        if target is not None:
            if not 0 <= target < n:
                raise EditError(f"{self.name} has layers 1 to {n}; there is no layer {target + 1}")
            if target == k:
                raise EditError(f"cell {instance_id} is already in layer {k + 1}/{n}")
            if not self._fits(target, box, crop):
                raise EditError(f"cell {instance_id} would overlap another cell in layer "
                                f"{target + 1}/{n}; pick another layer")
            dest_index: int | None = target
        else:
            dest_index = next((j % n for j in range(k + 1, k + n)
                               if self._fits(j % n, box, crop)), None)
        edit = _Edit(f"move cell {instance_id}")
        after = np.where(crop, 0, before).astype(before.dtype)
        edit.patches.append(_Patch(layer, _region(box), before, after))
        dest = self._paint_into(edit, dest_index, box, crop, instance_id)
        self._apply(edit, forward=True, fresh=True)
        return self.layers.index(dest)

    def _paint_into(self, edit: _Edit, target: int | None, box: tuple[int, int, int, int],
                    crop: np.ndarray, value: int) -> Labels:
        """Paint ``crop`` as ``value`` into layer ``target`` (index), or into a new layer when
        it is None; returns the layer."""
        if target is None:
            edit.added_layers.append(self._make_layer())
            dest = edit.added_layers[-1]
        else:
            dest = self.layers[target]
        self._paint_patch(edit, dest, box, crop, value)
        return dest

    def _paint_patch(self, edit: _Edit, layer: Labels, box: tuple[int, int, int, int],
                     crop: np.ndarray, value: int) -> None:
        before = np.array(layer.data[_region(box)])
        after = before.copy()
        after[crop] = value
        edit.patches.append(_Patch(layer, _region(box), before, after))

    # ------------------------------------------------------------------ layers
    def _make_layer(self) -> Labels:
        """A new, empty group layer (not yet in the viewer: :meth:`_apply` inserts it)."""
        from napari.layers import Labels

        template = self.layers[0]
        meta = dict(template.metadata[META_KEY])
        meta["layer_index"] = len(self.layers)
        layer = Labels(
            np.zeros(template.data.shape, template.data.dtype),
            name=f"{self.name} {len(self.layers) + 1}/{len(self.layers) + 1}",
            metadata={META_KEY: meta},
            scale=template.scale,
            translate=template.translate,
            opacity=template.opacity,
            blending=template.blending,
            colormap=_colormap(self.colours),
        )
        layer.contour = template.contour
        layer.features = _features(layer.data, self.scores, self.classes)
        layer.preserve_labels = True
        return layer

    def _insert_layer(self, layer: Labels) -> None:
        present = [lay for lay in self.layers if lay in self.viewer.layers]
        dest = (max(self.viewer.layers.index(lay) for lay in present) + 1
                if present else len(self.viewer.layers))
        self.layers.append(layer)  # a member before napari announces it (no re-adoption)
        self._connect(layer)
        self.viewer.layers.insert(dest, layer)

    def _remove_layer(self, layer: Labels) -> None:
        self._disconnect(layer)
        if layer in self.layers:
            self.layers.remove(layer)
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def rename_layers(self) -> None:
        """Rewrite ``"<group> k/n"`` names and ``layer_index`` after layers came or went."""
        n = len(self.layers)
        for k, layer in enumerate(self.layers):
            layer.metadata[META_KEY]["layer_index"] = k
            name = f"{self.name} {k + 1}/{n}"
            if layer.name != name:
                layer.name = name

    def remove(self) -> None:
        """Take every layer of the group out of the viewer and forget the group."""
        self._busy = True
        try:
            for layer in list(self.layers):
                self._remove_layer(layer)
        finally:
            self._busy = False
        self._undo.clear()
        self._redo.clear()
        self.candidates = None
        _unregister(self.viewer, self)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        HUB.changed.emit(self)

    # ------------------------------------------------------------------ undo
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> str | None:
        """Undo the last edit of the group (tool edit or napari brush stroke); returns its label."""
        if not self._undo:
            return None
        edit = self._undo.pop()
        self._apply(edit, forward=False)
        self._redo.append(edit)
        return edit.label

    def redo(self) -> str | None:
        if not self._redo:
            return None
        edit = self._redo.pop()
        self._apply(edit, forward=True)
        self._undo.append(edit)
        return edit.label

    def _apply(self, edit: _Edit, forward: bool, fresh: bool = False) -> None:
        self._busy = True
        touched: list[Labels] = []
        try:
            if edit.native_layer is not None:
                (edit.native_layer.redo if forward else edit.native_layer.undo)()
                touched.append(edit.native_layer)
            else:
                if forward:
                    for layer in edit.added_layers:
                        self._insert_layer(layer)
                patches = edit.patches if forward else list(reversed(edit.patches))
                for patch in patches:
                    data = patch.layer.data
                    data[patch.region] = patch.after if forward else patch.before
                    if patch.layer not in touched:
                        touched.append(patch.layer)
                for i, (old, new) in edit.scores.items():
                    value = new if forward else old
                    if value is not None:
                        self.scores[i] = value
                    self._max_id = max(self._max_id, i)
                if not forward:
                    for layer in edit.added_layers:
                        self._remove_layer(layer)
                if edit.added_layers:
                    self.rename_layers()
        finally:
            self._busy = False
        if fresh:
            self._undo.append(edit)
            del self._undo[:-UNDO_DEPTH]
            self._redo.clear()
        new_ids = [i for i in edit.scores if i not in self.colours]
        if new_ids:
            self._colour_new_ids(new_ids)
        for layer in touched:
            if layer in self.layers:
                self._refresh(layer)
        HUB.changed.emit(self)

    def _refresh(self, layer: Labels) -> None:
        layer.features = _features(layer.data, self.scores, self.classes)
        layer.refresh()

    # ------------------------------------------------------------------ colours
    def _colour_new_ids(self, new_ids: list[int], apply: bool = True) -> None:
        known = list(self.colours)
        wanted = [int(i) for i in new_ids if int(i) not in self.colours]
        boxes = self._boxes_of(known + wanted)
        self.colours = assign_colours(known + wanted, boxes, fixed=self.colours)
        if apply:
            cmap = _colormap(self.colours)
            for layer in self.layers:
                layer.colormap = cmap

    def _boxes_of(self, ids: list[int]) -> np.ndarray:
        from scipy import ndimage

        wanted = {int(i): k for k, i in enumerate(ids)}
        out = np.full((len(ids), 4), -10**6, np.int64)  # ids without pixels: far away
        for layer in self.layers:
            data = np.asarray(layer.data)
            if not data.any():
                continue
            for value, sl in enumerate(ndimage.find_objects(data.astype(np.int64)), start=1):
                if sl is not None and value in wanted:
                    out[wanted[value]] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        return out

    # ------------------------------------------------------------------ napari events
    def _on_native_paint(self, event: Any) -> None:
        if self._busy:
            return
        layer = getattr(event, "source", None)
        if layer not in self.layers:
            return
        self._undo.append(_Edit("paint", native_layer=layer))
        del self._undo[:-UNDO_DEPTH]
        self._redo.clear()
        # napari emits `paint` just before it writes a single click's pixels: look at the
        # layer once control is back in the event loop
        self._pending.add(layer)
        try:
            from qtpy.QtCore import QTimer
            from qtpy.QtWidgets import QApplication
        except ImportError:  # pragma: no cover - no Qt
            self._flush_pending()
            return
        if QApplication.instance() is None:  # pragma: no cover
            self._flush_pending()
        else:
            QTimer.singleShot(0, self._flush_pending)

    def _flush_pending(self) -> None:
        layers = [lay for lay in self._pending if lay in self.layers]
        self._pending.clear()
        if not layers:
            return
        new_ids = []
        for layer in layers:
            present = ids_and_areas(layer.data)[0]
            if present.size:
                self._max_id = max(self._max_id, int(present.max()))
            new_ids += [int(i) for i in present if int(i) not in self.colours]
        if new_ids:
            self._colour_new_ids(new_ids)
        for layer in layers:
            self._refresh(layer)
        HUB.changed.emit(self)

    def _on_selected_label(self, event: Any) -> None:
        """Keep napari's *new label* (M) unique across the group, not just within one layer."""
        if self._busy:
            return
        layer = getattr(event, "source", None)
        if layer not in self.layers:
            return
        value = int(layer.selected_label)
        if value == 0 or np.any(layer.data == value):
            return
        if any(np.any(other.data == value) for other in self.layers if other is not layer):
            self._busy = True
            try:
                layer.selected_label = self.next_id()
            finally:
                self._busy = False

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy:
            return
        layer = event.value
        if layer not in self.layers:
            return
        self._disconnect(layer)
        self.layers.remove(layer)
        # history that mentions the removed layer cannot be replayed any more
        self._undo.clear()
        self._redo.clear()
        if not self.layers:
            self.candidates = None
            _unregister(self.viewer, self)
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            HUB.changed.emit(self)
            return
        self.rename_layers()
        HUB.changed.emit(self)


def instances_from_label_images(label_images: list[np.ndarray], scores: dict[int, float],
                                classes: dict[int, int] | None = None) -> Instances:
    """Every non-zero label of every image as one instance (ids = label values)."""
    from ..layers import merge_layers

    return merge_layers(label_images, scores=scores, class_ids=classes or {})


# ---------------------------------------------------------------------------------- registry
_REGISTRY: weakref.WeakKeyDictionary[Any, dict[str, InstanceGroup]] = weakref.WeakKeyDictionary()
_CREATING: set[str] = set()


def _register(viewer: Viewer, group: InstanceGroup) -> None:
    _REGISTRY.setdefault(viewer, {})[group.id] = group


def _unregister(viewer: Viewer, group: InstanceGroup) -> None:
    _REGISTRY.get(viewer, {}).pop(group.id, None)


def _meta(layer: Any) -> dict | None:
    meta = getattr(layer, "metadata", None)
    if not isinstance(meta, dict):
        return None
    value = meta.get(META_KEY)
    return value if isinstance(value, dict) else None


def groups(viewer: Viewer) -> list[InstanceGroup]:
    """The instance groups of ``viewer``, adopting layers a reader (or sample) just added.

    Layers arrive one by one, so a group may be adopted in steps. A layer that claims a slot
    (group id, layer index) its group already fills is a copy (napari's *Duplicate layer*): it
    loses the group metadata and stays an ordinary Labels layer.
    """
    from napari.layers import Labels

    known = _REGISTRY.setdefault(viewer, {})
    claimed = {id(layer) for g in known.values() for layer in g.layers}
    pending: dict[str, list[Labels]] = {}
    for layer in viewer.layers:
        meta = _meta(layer)
        if (not isinstance(layer, Labels) or meta is None or meta.get("role") != "instances"
                or id(layer) in claimed or "group" not in meta or meta["group"] in _CREATING):
            continue
        group = known.get(meta["group"])
        if group is not None:
            slots = {int(_meta(lay).get("layer_index", -1)) for lay in group.layers  # type: ignore[union-attr]
                     if _meta(lay) is not None}
            if int(meta.get("layer_index", -1)) in slots:
                layer.metadata = {k: v for k, v in layer.metadata.items() if k != META_KEY}
            else:
                group._adopt_layer(layer)
            continue
        pending.setdefault(meta["group"], []).append(layer)
    for layers in pending.values():
        layers.sort(key=lambda lay: int(_meta(lay).get("layer_index", 0)))  # type: ignore[union-attr]
        _register(viewer, InstanceGroup(viewer, layers))
    return list(known.values())


def group_of(viewer: Viewer, layer: Any) -> InstanceGroup | None:
    """The group ``layer`` belongs to (its draft counts as belonging), or None."""
    meta = _meta(layer)
    if meta is None:
        return None
    for group in groups(viewer):
        if layer in group.layers or (meta.get("role") == "draft" and meta.get("group") == group.id):
            return group
    return None


def groups_for_image(viewer: Viewer, image_name: str,
                     frame: Sequence[int] | None = None) -> list[InstanceGroup]:
    """Groups made for one image layer (and frame)."""
    frame_l = [int(f) for f in frame] if frame else None
    return [g for g in groups(viewer)
            if g.image_name == image_name and (g.info.get("frame") or None) == frame_l]


def current_group(viewer: Viewer) -> InstanceGroup | None:
    """The group of the selected layer, else the most recently created group."""
    group = group_of(viewer, viewer.layers.selection.active)
    if group is not None:
        return group
    all_groups = groups(viewer)
    return all_groups[-1] if all_groups else None

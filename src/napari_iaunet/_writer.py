"""npe2 writer: instance label layers → one COCO JSON file.

Selected Labels layers are grouped by their instance group (``metadata["napari_iaunet"]``); each
group becomes one COCO image entry with every cell of every layer of the group as one annotation.
Plain Labels layers (not made by this plugin) of the same size count as one group.

* Polygons by default (contours simplified within 1 px, masks with real holes stored as RLE so no
  pixel is lost — see :mod:`napari_iaunet.io.coco`); a file name ending in ``.rle.json`` gets RLE
  for every cell (lossless).
* Written atomically. An existing file is never replaced silently: in napari it is replaced only
  after the user says so (napari's save dialog, then ours); without a GUI it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._widgets.layer_group import META_KEY, instances_from_label_images

__all__ = ["coco_for_groups", "write_coco_layers"]

DEFAULT_TOLERANCE = 1.0
# a labels layer with more separate pieces than this many per label value (and more than
# MIN_PIECES in all) is not cells: typically an intensity image converted to labels
PIECES_PER_LABEL = 10
MIN_PIECES = 1000


def _confirm_overwrite_default(path: Path) -> bool:
    """Ask in the GUI; without a running Qt application there is nobody to ask: refuse."""
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # pragma: no cover - no Qt binding
        return False
    if QApplication.instance() is None:
        return False
    from ._widgets._qt_utils import ask

    return ask("Replace file?", f"{path.name} already exists in {path.parent}.\nReplace it "
               "with the selected instance layers?", ["Replace", "Cancel"]) == "Replace"


# replaced in tests (and by embedding applications) to answer without a dialog
confirm_overwrite: Callable[[Path], bool] = _confirm_overwrite_default


def _features_dict(features: Any) -> dict[str, np.ndarray]:
    if features is None:
        return {}
    try:
        return {str(k): np.asarray(features[k]) for k in features}
    except (TypeError, KeyError):  # pragma: no cover - unexpected table type
        return {}


def coco_for_groups(
    groups: Sequence[tuple[list[np.ndarray], dict, dict[int, float], dict[int, int]]],
    *,
    rle: bool = False,
    tolerance: float | None = None,
) -> dict:
    """One COCO dict for several groups: ``(label_images, info, scores, classes)`` each.

    ``info`` is a group's metadata (``image``, ``image_file``, ``class_names``, ``source``).
    """
    from .io.coco import instances_to_coco

    instances_list, image_infos = [], []
    class_names: list[str] = []
    with_scores = False
    for label_images, info, scores, classes in groups:
        name = str(info.get("image_label") or info.get("image") or "labels")
        for array in label_images:
            check_labels_for_export(np.asarray(array), name)
        inst = instances_from_label_images(label_images, scores, classes)
        instances_list.append(inst)
        file_name = info.get("image_file") or info.get("image_label") or info.get("image") or ""
        image_infos.append({"id": len(image_infos) + 1, "file_name": str(file_name)})
        names = [str(n) for n in info.get("class_names") or ["cell"]]
        if len(names) > len(class_names):
            class_names = names
        with_scores |= info.get("source") == "model" or bool(info.get("scores"))
    max_class = max((int(i.class_ids.max()) for i in instances_list if len(i)), default=0)
    while len(class_names) <= max_class:
        class_names.append(f"class_{len(class_names)}")
    return instances_to_coco(
        instances_list, image_infos, category_names=class_names or ["cell"],
        mode="rle" if rle else "polygon",
        tolerance=DEFAULT_TOLERANCE if tolerance is None else float(tolerance),
        include_scores=with_scores,
    )


def check_labels_for_export(array: np.ndarray, name: str) -> None:
    """Refuse a labels layer that is not cells before the export spends minutes and gigabytes.

    One value per cell, in one (or a few) connected pieces: a layer whose values are scattered
    over the image in far more pieces than values is refused with a sentence saying so (each
    value would become a crop as large as the image and hundreds of polygons).
    """
    from skimage.measure import label

    n_ids = int(np.count_nonzero(np.unique(array)))
    if n_ids == 0:
        return
    pieces = int(label(array, background=0, connectivity=2, return_num=True)[1])
    if pieces > max(PIECES_PER_LABEL * n_ids, MIN_PIECES):
        raise ValueError(
            f"'{name}' does not look like cell labels: its {n_ids} label values are "
            f"scattered in {pieces} separate pieces (an intensity image converted to labels?); "
            "COCO export needs one region per cell: segment the image or draw the cells, then "
            "save that layer")


def group_layer_tuples(layer_data: Sequence[tuple[Any, dict, str]]
                       ) -> list[tuple[list[np.ndarray], dict, dict[int, float], dict[int, int]]]:
    """Sort napari layer-data tuples into groups (by group id, else by image size)."""
    buckets: dict[Any, list[tuple[int, np.ndarray, dict]]] = {}
    for data, meta, layer_type in layer_data:
        if layer_type != "labels":
            continue
        array = np.asarray(data)
        if array.ndim != 2:
            raise ValueError(f"layer '{meta.get('name', '')}' has {array.ndim} dimensions; COCO "
                             "export needs 2-D label layers (one image)")
        info = dict((meta.get("metadata") or {}).get(META_KEY) or {})
        if info.get("role") == "draft":  # an uncommitted cell is not part of the group yet
            continue
        key = info.get("group") or ("plain", array.shape)
        if not info:
            info = {"image": meta.get("name", "labels"), "source": "manual"}
        buckets.setdefault(key, []).append((int(info.get("layer_index", 0)), array, {
            "info": info, "features": _features_dict(meta.get("features"))}))
    out = []
    for items in buckets.values():
        items.sort(key=lambda t: t[0])
        scores: dict[int, float] = {}
        classes: dict[int, int] = {}
        for _, _, extra in items:
            feats = extra["features"]
            ids = feats.get("id", feats.get("index"))
            if ids is None:
                continue
            for key, target in (("score", scores), ("class", classes)):
                if key in feats:
                    for i, v in zip(ids, feats[key]):
                        target[int(i)] = float(v) if key == "score" else int(v)
        out.append(([arr for _, arr, _ in items], items[0][2]["info"], scores, classes))
    return out


def write_coco_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 multi-layer writer (``labels+`` → ``.json``)."""
    from .io.coco import write_coco

    target = Path(path)
    if target.suffix.lower() != ".json":
        target = target.with_name(target.name + ".json")
    groups = group_layer_tuples(layer_data)
    if not groups:
        raise ValueError("select at least one instance (Labels) layer to save as COCO; a draft "
                         "cell is saved only after it is committed")
    rle = target.name.lower().endswith(".rle.json")
    coco = coco_for_groups(groups, rle=rle)
    overwrite = False
    if target.exists():
        if not confirm_overwrite(target):
            raise FileExistsError(f"{target} already exists and was left untouched")
        overwrite = True
    write_coco(target, coco, overwrite=overwrite)
    return [str(target)]

"""npe2 reader: a COCO JSON file → its image(s) and one instance layer group per image.

The image is opened when the file names it (``file_name``) and it is found next to the JSON file
or in an ``images/`` folder beside it. Polygons and RLE, overlapping or not, are all read; every
image entry becomes the same kind of group the segment widget makes (overlapping cells in
different layers, ``features`` with id/score/area/class).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["find_image_file", "get_reader", "read_coco_layers"]

logger = logging.getLogger(__name__)
SNIFF_BYTES = 1 << 20


def _looks_like_coco(path: Path) -> bool:
    """A JSON object that names COCO's keys, or an empty object (refused later with a reason)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:  # BOM allowed
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False
    head = head.strip()
    if not head.startswith("{"):
        return False
    if "".join(head.split()) == "{}":
        return True
    return any(f'"{key}"' in head for key in ("annotations", "images", "categories"))


def get_reader(path: str | list[str]) -> Callable[[str], list] | None:
    """npe2 reader hook: a reader function for a COCO ``.json`` file, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file() or not _looks_like_coco(p):
        return None
    return read_coco_layers


def find_image_file(coco_path: str | Path, file_name: str) -> Path | None:
    """The image a COCO entry names: beside the JSON file or in ``images/`` (also by basename)."""
    if not file_name:
        return None
    folder = Path(coco_path).parent
    name = Path(file_name)
    candidates = [folder / name, folder / "images" / name, folder / name.name,
                  folder / "images" / name.name]
    if name.is_absolute():
        candidates.insert(0, name)
    for c in candidates:
        if c.is_file():
            return c
    return None


def _warn(message: str) -> None:
    logger.warning(message)
    try:
        from napari.utils.notifications import show_warning
    except ImportError:  # pragma: no cover
        return
    show_warning(message)


def read_coco_layers(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    """Layer data of a COCO file: per image entry its image (when found) and its label group."""
    from ._widgets.layer_group import META_KEY, group_layer_data
    from .io.coco import category_names, coco_to_instances, read_coco
    from .io.images import read_image

    if isinstance(path, list):
        path = path[0]
    coco = read_coco(path)
    names = category_names(coco) or ["cell"]
    out: list[tuple[Any, dict, str]] = []
    for entry, instances in coco_to_instances(coco, source=str(path)):
        group_id = uuid.uuid4().hex  # ties the image layer to its group even if napari renames it
        file_name = str(entry.get("file_name") or "")
        image_name = Path(file_name).stem if file_name else f"image {entry['id']}"
        image_path = find_image_file(path, file_name)
        if image_path is not None:
            image = read_image(image_path)
            if tuple(image.shape[:2]) != tuple(instances.image_shape):
                _warn(f"{image_path.name} is {image.shape[1]}×{image.shape[0]} but the COCO file "
                      f"says {entry['width']}×{entry['height']}: opened the cells only")
            else:
                rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
                meta = {"coco_image": dict(entry),
                        META_KEY: {"role": "image", "group": group_id}}
                out.append((image, {"name": image_name, "rgb": rgb, "metadata": meta}, "image"))
        elif file_name:
            _warn(f"image '{file_name}' was not found next to {Path(path).name} or in images/: "
                  "opened the cells only")
        has_scores = any("score" in a for a in coco["annotations"][:1000])
        labels = group_layer_data(
            instances, image_name=image_name, group_id=group_id, source="coco",
            class_names=names, image_file=file_name or None,
        )
        for _, kwargs, _ in labels:  # predictions keep their scores when saved again
            kwargs["metadata"][META_KEY]["scores"] = has_scores
        out.extend(labels)
    return out

"""Picture of one click cutting a missed cell out of the detection that merged it (real viewer).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/click_split_figure.py \\
        --data ../shared/data/revvity25 --out docs/images/plugin_click_split.png
    # the piece of an oversized answer, added as a new cell:
    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/click_split_figure.py \\
        --kind oversize --out docs/images/plugin_click_oversize.png

Segments Revvity-25 ``R01C03F14`` (never trained on) with the bundled model in the plugin's
segment widget, finds the first missed cell (no detection at IoU ≥ 0.5) whose first candidate is
a split piece that recovers it (``--kind repeat``: the piece of a detected cell, cut out of it;
``oversize``: the piece of a larger answer, a new cell), and saves three views of the canvas
around it side by side: the segmentation, the draft after pressing A there, and the group after C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _settle(app, rounds: int = 20) -> None:
    for _ in range(rounds):
        app.processEvents()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/revvity25"))
    p.add_argument("--image", default="R01C03F14.png")
    p.add_argument("--out", type=Path, default=Path("docs/images/plugin_click_split.png"))
    p.add_argument("--kind", choices=("repeat", "oversize"), default="repeat")
    args = p.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_iaunet._widgets import edit_tools as tools
    from napari_iaunet._widgets.segment_widget import SegmentWidget
    from napari_iaunet.evaluation.edits import interior_point
    from napari_iaunet.evaluation.metrics import pairwise_iou
    from napari_iaunet.inference.candidates import candidates_at
    from napari_iaunet.io.coco import coco_to_instances, read_coco
    from napari_iaunet.io.images import read_image
    from napari_iaunet.weights import default_weights

    gt = next(g for e, g, *_ in coco_to_instances(read_coco(args.data / "annotations.json"))
              if e["file_name"] == args.image)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)
    viewer.add_image(read_image(args.data / "images" / args.image), name=Path(args.image).stem)
    widget = SegmentWidget(viewer, ask=lambda *a: "Replace")
    viewer.window.add_dock_widget(widget, name="IAUNet")
    widget.set_checkpoint(default_weights())
    app = QApplication.instance()
    widget.segment()
    while widget.running:
        app.processEvents()
    group = widget.last_group
    best = pairwise_iou(gt, group.to_instances()).max(axis=1)
    for i in np.flatnonzero(best < 0.5).tolist():
        r, c = interior_point(gt.crops[i])
        point = (int(gt.boxes[i][0]) + r, int(gt.boxes[i][1]) + c)
        picks = candidates_at(group.candidates, point, accepted=group.label_images())
        repeat = bool(picks) and picks[0].split_from != 0
        if (picks and picks[0].source == -2 and repeat == (args.kind == "repeat")
                and picks[0].iou_with(gt.boxes[i], gt.crops[i]) >= 0.5):
            break
    else:
        raise SystemExit(f"no missed cell of this image is recovered by a split piece "
                         f"({args.kind})")
    zoom, half_h, half_w = 1.5, 330, 180  # the crop of each view: canvas px around its centre
    h, w = gt.image_shape  # the click near the centre, the view inside the image
    viewer.camera.center = (float(np.clip(point[0], half_h / zoom, h - half_h / zoom)),
                            float(np.clip(point[1], half_w / zoom, w - half_w / zoom)))
    viewer.camera.zoom = zoom
    views = []
    for step in ("before", "draft", "committed"):
        if step == "draft":
            tools.add_candidate_at(viewer, point)
        elif step == "committed":
            tools.commit_draft(viewer, group)
        _settle(app)
        shot = viewer.screenshot(canvas_only=True)[..., :3]
        cy, cx = shot.shape[0] // 2, shot.shape[1] // 2
        views.append(shot[max(0, cy - half_h):cy + half_h, max(0, cx - half_w):cx + half_w])
    viewer.close()
    gap = np.full((views[0].shape[0], 8, 3), 255, np.uint8)
    import imageio.v3 as iio

    args.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, np.concatenate([views[0], gap, views[1], gap, views[2]], axis=1))
    print(f"cell {i} at {point}: wrote {args.out}")


if __name__ == "__main__":
    main()

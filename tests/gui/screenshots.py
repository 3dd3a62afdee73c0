"""Screenshots of a real napari window for docs/plugin.md (not a test; run it under Xvfb):

    xvfb-run -a .venv/bin/python tests/gui/screenshots.py [--out docs/images]

Uses the synthetic sample image. The segment step runs a small *untrained* checkpoint (no trained
model is bundled yet); the cells shown from the group step on are the sample's ground truth, fed
through the widget's result seam (``SegmentWidget.show_result``), as the tests do.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_iaunet._widgets import edit_tools as tools
    from napari_iaunet._widgets import make_torch_import_safe

    viewer = napari.Viewer(show=True, title="napari-iaunet")
    window = viewer.window._qt_window
    window.resize(1500, 920)
    make_torch_import_safe()

    tmp = Path(tempfile.mkdtemp())
    ckpt = _demo_checkpoint(tmp)

    def shot(name: str) -> None:
        for _ in range(5):
            QApplication.processEvents()
        _save_small(window.grab(), out / f"plugin_{name}.png")
        print("wrote", out / f"plugin_{name}.png")

    # 1. sample image + the Segment dock (through the manifest, as a user opens it)
    viewer.open_sample("napari-iaunet", "synthetic_cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    widget.set_checkpoint(ckpt)
    image = viewer.layers["synthetic cells"]
    viewer.reset_view()
    shot("1_segment_widget")

    # 2. segmenting: the worker runs, the progress bar sits in the activity dock
    widget.tile_combo.setCurrentIndex(widget.tile_combo.findData("fixed"))
    widget.tile_spin.setValue(128)
    window._activity_dialog.show()
    taken = []

    def during(done: int, total: int) -> None:
        if not taken and done < total:
            taken.append(done)
            shot("2_segmenting")

    widget._signals.progress.connect(during)
    widget.segment()
    while widget.running:
        QApplication.processEvents()
    window._activity_dialog.hide()

    # 3. the instance group (ground truth through the result seam)
    from napari_iaunet._sample_data import SAMPLE_SIZE
    from napari_iaunet.training.synthetic import sample_data

    _, truth = sample_data(SAMPLE_SIZE)
    from napari_iaunet._widgets.layer_group import groups_for_image

    group = widget.show_result(truth, image, replace=groups_for_image(viewer, image.name))
    viewer.layers.selection.active = group.layers[0]
    shot("3_instance_group")

    # 4. outlines: overlapping cells stay visible
    edit = widget.edit_tools
    edit.outlines.setChecked(True)
    shot("4_outlines")
    edit.outlines.setChecked(False)

    # 5. new cell: a draft drawn over existing cells
    draft = tools.new_cell(viewer)
    yy, xx = np.mgrid[:SAMPLE_SIZE, :SAMPLE_SIZE]
    blob = ((yy - 250) / 38.0) ** 2 + ((xx - 260) / 60.0) ** 2 < 1
    draft.data = blob.astype(np.uint8)
    draft.refresh()
    shot("5_new_cell_draft")
    cell = tools.commit_draft(viewer)
    viewer.layers.selection.active = group.layers[group.layer_of(cell)]
    edit._on_layers_changed()
    shot("6_committed")

    # 7. export and re-import next to the original (grid view)
    import imageio.v3 as iio

    (tmp / "images").mkdir(exist_ok=True)
    iio.imwrite(tmp / "images" / "synthetic cells.png", image.data)
    group.info["image_file"] = "synthetic cells.png"
    out_json = edit.export_coco(tmp / "synthetic_cells.json")
    edit.import_coco(out_json)
    viewer.grid.enabled = True
    viewer.grid.stride = 1 + len(group.layers)
    viewer.reset_view()
    shot("7_reimported_grid")
    viewer.close()


def _save_small(pixmap, path: Path) -> None:
    """PNG with a 256-colour palette (about half the bytes; the UI text stays sharp)."""
    import io

    from PIL import Image
    from qtpy.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    image.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def _demo_checkpoint(folder: Path) -> Path:
    from napari_iaunet.checkpoint import save_checkpoint
    from napari_iaunet.model import IAUNetConfig, build_model

    cfg = IAUNetConfig(backbone="resnet18", num_queries=20, hidden_dim=64, mask_dim=64,
                       num_heads=4, dim_feedforward=128, dec_layers=1, input_size=256)
    return save_checkpoint(folder / "demo_untrained_resnet18.pt", build_model(cfg), {
        "description": "untrained demo model (docs screenshots)",
        "training_data": "none"})


if __name__ == "__main__":
    main()

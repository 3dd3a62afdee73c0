"""Screenshot of the first click: the bundled model on an unseen Revvity-25 image, in napari.

    xvfb-run -a .venv/bin/python tests/gui/screenshot_default_model.py [--data ../shared/data]

Not a test. Opens a real napari window with the held-out image ``R01C03F14.png``, adds the
Segment dock as a user does (the bundled model is preselected), clicks *Segment* once, switches
on the outlines and writes ``docs/images/plugin_default_model_revvity.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "images" / "plugin_default_model_revvity.png")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from screenshots import _save_small  # same folder: the docs screenshots' PNG writer

    from napari_iaunet.io.images import read_image

    viewer = napari.Viewer(show=True, title="napari-iaunet")
    window = viewer.window._qt_window
    window.resize(1500, 920)
    image = read_image(args.data / "revvity25" / "images" / "R01C03F14.png")
    viewer.add_image(image, name="R01C03F14", rgb=image.ndim == 3)
    _, widget = viewer.window.add_plugin_dock_widget("napari-iaunet", "Segment cells")
    t0 = time.perf_counter()
    widget.segment()  # the one click
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
    print(f"segmented in {time.perf_counter() - t0:.1f} s: {widget.status.text()}")
    widget.edit_tools.outlines.setChecked(True)
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
    _save_small(window.grab(), args.out)
    print("wrote", args.out)
    viewer.close()


if __name__ == "__main__":
    main()

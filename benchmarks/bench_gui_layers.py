"""napari-side cost of an instance group: 10 / 100 / 1000 DSB-like nuclei on a 1024² image.

What the user waits for in the GUI, on top of the library work that ``bench_layers_coco.py``
measures: adding the group's Labels layers to a real viewer (napari builds a texture and vispy
visuals per layer), adopting layers a reader added, one edit of each kind (+ undo), and the export
button's work (group → COCO polygons → atomic file). Needs a display (run under Xvfb)::

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_layers.py [--repeats 5]

Writes docs/benchmarks/gui_layers.json and docs/benchmarks/gui_layers.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, fmt_ms, interleaved, machine_info, md_table, write_results
from _fixtures import nuclei_instances

SIZES = (10, 100, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_iaunet._widgets import edit_tools as tools
    from napari_iaunet._widgets.layer_group import (
        InstanceGroup,
        add_group_for_image,
        group_layer_data,
        groups,
    )

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(np.zeros((1024, 1024), np.uint8), name="plate")
    tmp = Path(tempfile.mkdtemp())
    rows, samples = [], {}
    for n in SIZES:
        truth = nuclei_instances(n)
        state: dict = {}

        def build(truth=truth, state=state) -> None:
            for g in groups(viewer):
                g.remove()
            state["group"] = add_group_for_image(viewer, image, truth)
            QApplication.processEvents()

        def adopt(truth=truth) -> None:  # what happens after the COCO reader added layers
            for g in groups(viewer):
                g.remove()
            for data, kwargs, _ in group_layer_data(truth, image_name="plate", source="coco"):
                viewer.add_labels(data, **kwargs)
            groups(viewer)
            QApplication.processEvents()

        stats, facts = interleaved({"build": build, "adopt": adopt}, repeats=args.repeats,
                                   warmup=1, verbose=False)
        build()
        group: InstanceGroup = state["group"]
        yy, xx = np.mgrid[:1024, :1024]
        disc = (yy - 512) ** 2 + (xx - 512) ** 2 < 20 ** 2
        victim = int(truth.ids[len(truth) // 2])

        def edits(group=group, disc=disc, victim=victim) -> None:
            cell = group.add_cell(disc)
            group.delete_cell(victim)
            group.move_cell(cell)
            for _ in range(3):
                group.undo()

        out = tmp / f"plate_{n}.json"

        def export(group=group, out=out) -> None:
            tools.export_group(group, out, overwrite=True)

        more, facts2 = interleaved({"edits": edits, "export": export}, repeats=args.repeats,
                                   warmup=1, verbose=False)
        stats.update(more)
        samples[str(n)] = {"stats": stats, "facts": [facts, facts2],
                           "layers": len(group.layers)}
        rows.append({
            "n": n, "layers": len(group.layers),
            "build": fmt_ms(stats["build"].median), "adopt": fmt_ms(stats["adopt"].median),
            "edits": fmt_ms(stats["edits"].median), "export": fmt_ms(stats["export"].median),
        })
        print(rows[-1], flush=True)
    viewer.close()

    table = md_table(rows, [("n", "cells"), ("layers", "layers"),
                            ("build", "group → viewer (ms)"),
                            ("adopt", "reader layers adopted (ms)"),
                            ("edits", "new + delete + move + 3 undo (ms)"),
                            ("export", "export, COCO polygons (ms)")])
    markdown = f"""# napari-side instance group costs

`{command_line()}` — {time.strftime('%Y-%m-%d')}, medians of {args.repeats} interleaved rounds,
1024² image, DSB-like nuclei (`benchmarks/_fixtures.py`), hidden viewer under Xvfb (Mesa
software OpenGL: layer creation is slower than on a GPU driver).

{table}

* *group → viewer*: `add_group_for_image` — library split into layers, colours, napari
  `add_labels` per layer (most of the time), group registration.
* *reader layers adopted*: the same layers added as a reader would, then adopted by the registry.
* *edits*: one new cell (placement search), one delete, one move, three undos, each refreshing the
  `features` table of the touched layers. With 10 cells the group has one layer, so the move adds
  a layer (and its undo removes it): that is napari layer creation again.
* *export*: `export_group` — merge the layers, polygons within 1 px, atomic JSON write.
"""
    write_results("gui_layers", {"machine": machine_info(), "samples": samples, "rows": rows},
                  markdown)


if __name__ == "__main__":
    main()

"""Layer group and COCO export speed for 10 / 100 / 1000 DSB-like nuclei on a 1024² image,
plus the polygon round-trip fidelity on the real data of ../shared/data (when present).

Run from the repository root::

    .venv/bin/python benchmarks/bench_layers_coco.py [--repeats 7] [--no-real]

Writes docs/benchmarks/layers_coco.json (every sample) and docs/benchmarks/layers_coco.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    command_line,
    fmt_ms,
    interleaved,
    machine_info,
    md_table,
    write_results,
)
from _fixtures import nuclei_instances
from napari_iaunet.io.coco import (
    coco_to_instances,
    instances_to_coco,
    read_coco,
)
from napari_iaunet.layers import merge_layers, split_into_layers

SIZES = (10, 100, 1000)
REAL_SETS = ("revvity25", "isbi2014", "usiigaci", "dsb2018")


def _data_root() -> Path | None:
    env = os.environ.get("NAPARI_IAUNET_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return root.resolve() if root.is_dir() else None


def time_synthetic(repeats: int) -> tuple[list[dict], dict]:
    rows, samples = [], {}
    for n in SIZES:
        inst = nuclei_instances(n, size=1024, seed=n)
        layers = split_into_layers(inst)
        poly = instances_to_coco([inst], ["synthetic.png"], mode="polygon")
        rle = instances_to_coco([inst], ["synthetic.png"], mode="rle")
        cases = {
            "split": lambda inst=inst: split_into_layers(inst),
            "merge": lambda layers=layers: merge_layers(layers),
            "polygons": lambda inst=inst: instances_to_coco([inst], ["s.png"], mode="polygon"),
            "rle": lambda inst=inst: instances_to_coco([inst], ["s.png"], mode="rle"),
            "read_polygons": lambda poly=poly: coco_to_instances(poly),
            "read_rle": lambda rle=rle: coco_to_instances(rle),
        }
        print(f"{n} instances:", flush=True)
        stats, facts = interleaved(cases, repeats=repeats, warmup=1)
        vertices = [len(p) // 2 for a in poly["annotations"] if isinstance(a["segmentation"], list)
                    for p in a["segmentation"]]
        n_rle = sum(isinstance(a["segmentation"], dict) for a in poly["annotations"])
        row = {"instances": len(inst), "layers": len(layers),
               "overlapping_pairs": None, "median_vertices": int(np.median(vertices)),
               "rle_fallbacks": n_rle, **facts}
        from napari_iaunet.layers import overlap_pairs

        row["overlapping_pairs"] = len(overlap_pairs(inst))
        for name, st in stats.items():
            row[name] = fmt_ms(st.median)
            samples[f"{n}/{name}"] = st
        rows.append(row)
    return rows, samples


def real_round_trips(root: Path) -> list[dict]:
    """Polygon round trip (default tolerance 1 px, min_iou 0.99) over every image of each set."""
    rows = []
    for name in REAL_SETS:
        path = root / name / "annotations.json"
        if not path.is_file():
            continue
        coco = read_coco(path)
        images = coco_to_instances(coco, source=str(path))
        infos, originals = [i for i, _ in images], [x for _, x in images]
        t0 = time.perf_counter()
        poly = instances_to_coco(originals, infos, mode="polygon", include_scores=False)
        t_poly = time.perf_counter() - t0
        back = coco_to_instances(poly)
        rle_back = coco_to_instances(instances_to_coco(originals, infos, mode="rle"))
        ious, exact = [], True
        for a, (_, b), (_, c) in zip(originals, back, rle_back):
            for i in range(len(a)):
                ma, mb = a.mask(i), b.mask(i)
                ious.append(np.count_nonzero(ma & mb) / np.count_nonzero(ma | mb))
                exact &= bool(np.array_equal(ma, c.mask(i)))
        vertices = [len(p) // 2 for a in poly["annotations"]
                    if isinstance(a["segmentation"], list) for p in a["segmentation"]]
        rows.append({
            "set": name, "images": len(images), "instances": len(ious),
            "min_iou": f"{min(ious):.4f}", "median_iou": f"{statistics.median(ious):.4f}",
            "rle_fallbacks": sum(isinstance(a["segmentation"], dict)
                                 for a in poly["annotations"]),
            "median_vertices": int(np.median(vertices)),
            "polygon_export_ms_per_instance": f"{t_poly / len(ious) * 1e3:.2f}",
            "rle_exact": exact,
        })
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-real", action="store_true", help="skip the real-data round trips")
    args = parser.parse_args()
    info = machine_info()
    rows, samples = time_synthetic(args.repeats)
    root = None if args.no_real else _data_root()
    real = real_round_trips(root) if root else []

    md = ["# Layer group and COCO export", "",
          f"`{command_line()}` — {info['date_utc']}, {info['host_cpu']}, "
          f"{info['logical_cpus']} logical CPUs (shared with other jobs; load average "
          f"{rows[0]['load_before']} before, {rows[-1]['load_after']} after). "
          f"Median of {args.repeats} interleaved runs, milliseconds.", "",
          "Synthetic DSB-like nuclei (ellipses, radius ≈ 9 px, placed at random so some touch or "
          "overlap) on a 1024×1024 image; 1000 is the density of DSB 2018's most crowded images.",
          "`split` = `split_into_layers` (overlap graph + DSATUR + label images), `merge` = "
          "`merge_layers`, `polygons`/`rle` = `instances_to_coco` (tolerance 1 px, min IoU "
          "0.99), `read_*` = `coco_to_instances` of that dict.", "",
          md_table(rows, [("instances", "instances"), ("overlapping_pairs", "overlapping pairs"),
                          ("layers", "layers"), ("split", "split"), ("merge", "merge"),
                          ("polygons", "COCO polygons"), ("rle", "COCO RLE"),
                          ("read_polygons", "read polygons"), ("read_rle", "read RLE"),
                          ("median_vertices", "median vertices / polygon")])]
    if real:
        md += ["", "## Polygon round trip on the real data (every image)", "",
               "instances → COCO polygons (tolerance 1 px, min IoU 0.99, holes → RLE) → "
               "instances, IoU of every mask with its original; RLE round trip compared "
               "pixel for pixel.", "",
               md_table(real, [("set", "set"), ("images", "images"), ("instances", "instances"),
                               ("min_iou", "min IoU"), ("median_iou", "median IoU"),
                               ("rle_fallbacks", "written as RLE"),
                               ("median_vertices", "median vertices / polygon"),
                               ("polygon_export_ms_per_instance", "polygon export ms / instance"),
                               ("rle_exact", "RLE exact")])]
    write_results("layers_coco", {"command": command_line(), "machine": info, "rows": rows,
                                  "samples": samples, "real_data": real}, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

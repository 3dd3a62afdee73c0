"""Parameters and multiply-adds per backbone and query count, next to the paper's table.

    .venv/bin/python benchmarks/bench_complexity.py
    .venv/bin/python benchmarks/bench_complexity.py --no-maskrcnn

IAUNet rows come from :func:`napari_iaunet.model.complexity.fidelity_table` (meta-device models,
one eval forward at 1x3x512x512 with all 9 prediction heads, the paper's convention) plus the
multiply-adds of the inference forward we actually run (final head only, ``with_aux=False``).
Mask R-CNN R50-FPN (torchvision, 2 classes) is counted with the same counter on a real forward at
512² and at its default 800² resize (convolutions, linear layers and matrix products; RoIAlign and
NMS have no formula and are not counted, as in fvcore). Writes ``docs/benchmarks/complexity.*``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import _fixtures as fx
from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.model.complexity import (
    count_macs,
    fidelity_table,
    format_fidelity_table,
)

GRID = {  # backbone -> query counts (the paper's rows, plus our small backbones)
    "resnet50": (100, 300, 500, 1000),
    "resnet101": (100,),
    "swin_small": (100, 300),
    "swin_base": (100, 300),
    "resnet18": (100,),
    "resnet34": (100,),
}
PAPER_MASK_RCNN = {"params_m": 44.0, "gmacs": 115.0}


def inference_gmacs(backbone: str, queries: int) -> float:
    """Multiply-adds of the forward the Segmenter runs (final head only) at 512²."""
    with torch.device("meta"):
        model = build_model(IAUNetConfig(backbone=backbone, num_queries=queries))
    model.with_aux = False
    return round(count_macs(model) / 1e9, 1)


def mask_rcnn_counts(size: int) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    model = fx.mask_rcnn(detections=100, min_size=size, max_size=size)
    image = fx.brightfield_image(size).image
    x = fx.mask_rcnn_input(image)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model([x])
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "params_m": round(params / 1e6, 2),
            "gmacs": round(counter.get_total_flops() / 2e9, 1),
            "note": "100 detections, 1000 proposals; RoIAlign/NMS not counted"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-maskrcnn", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for backbone, queries in GRID.items():
        for row in fidelity_table(backbones=(backbone,), queries=queries):
            row["inference_gmacs"] = inference_gmacs(backbone, row["queries"])
            rows.append(row)
            print(row, flush=True)
    mrcnn = [] if args.no_maskrcnn else [mask_rcnn_counts(512), mask_rcnn_counts(800)]
    payload = {"machine": C.machine_info(), "command": C.command_line(), "iaunet": rows,
               "mask_rcnn": mrcnn, "paper_mask_rcnn": PAPER_MASK_RCNN}
    lines = [
        "# Parameters and multiply-adds (MACs), ours next to the paper's",
        "",
        f"Command: `{C.command_line()}`. Counted with `torch.utils.flop_counter` (FLOPs / 2); the "
        "paper's \"GFLOPs\" are fvcore multiply-adds at 1x3x512x512 with all 9 heads.",
        "",
        format_fidelity_table(rows),
        "",
        "Inference forward (final head only, what `Segmenter` runs), GMACs at 512²:",
        "",
        C.md_table(rows, [("backbone", "backbone"), ("queries", "queries"),
                          ("gmacs", "GMACs, 9 heads"), ("inference_gmacs", "GMACs, inference")]),
        "",
        "## Mask R-CNN R50-FPN (torchvision, 2 classes)",
        "",
        f"Paper: {PAPER_MASK_RCNN['params_m']} M parameters, {PAPER_MASK_RCNN['gmacs']} GFLOPs.",
        "",
        C.md_table(mrcnn, [("size", "input (shorter side)"), ("params_m", "params (M)"),
                           ("gmacs", "GMACs"), ("note", "note")]) if mrcnn else "not counted",
    ]
    C.write_results("complexity", payload, "\n".join(lines))


if __name__ == "__main__":
    main()

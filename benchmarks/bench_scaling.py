"""Time and memory against image size and instance count (CPU).

    .venv/bin/python benchmarks/bench_scaling.py
    .venv/bin/python benchmarks/bench_scaling.py --sizes 512,1024,2048 --counts 10,100 --repeats 3

1. Image size, 512² → 4096² (tiled above 3 × 512 = 1536 px: tiles of 1024 px, 25% overlap):
   ``Segmenter.segment`` with a stub network that returns a fixed prediction at once (30 cells per
   network pass, Revvity-like size), so the time is everything but the network — reading, resize,
   normalisation, post-processing of every tile and the seam merge — then ``split_into_layers`` and
   ``instances_to_coco`` (RLE) of the result. The network's share is ``passes × forward time``
   (``docs/benchmarks/inference.json``), given beside it.
2. Instance count, 10 → 1000 DSB-like nuclei on a 1024² image: post-processing of 1000-query
   predictions with that many confident nuclei. Layer building and COCO export at the same counts
   are timed by ``bench_layers_coco.py`` (another script; its figures are quoted here, not re-run);
   this script adds their peak memory.

Memory: peak RSS of one call in a fresh process (``segment``, which uses torch), tracemalloc peak
for the numpy-only steps. Writes ``docs/benchmarks/scaling.json`` and ``scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import _fixtures as fx
from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.inference.postprocess import postprocess
from napari_iaunet.io.coco import instances_to_coco
from napari_iaunet.layers import split_into_layers
from napari_iaunet.model import IAUNetConfig

SIZES = (512, 1024, 2048, 3072, 4096)
COUNTS = (10, 30, 100, 300, 1000)
CELLS_PER_PASS = 30
CELL_RADIUS_LOW = 7.0  # in 1/4-resolution pixels of a 512 input: ~56 px on a 1024 tile


def stub_segmenter() -> Segmenter:
    config = IAUNetConfig()
    pred = fx.blob_predictions(CELLS_PER_PASS, (128, 128), config.num_queries,
                               radius=CELL_RADIUS_LOW, seed=3)
    return Segmenter(fx.OracleOutputs(None, pred, config), device="cpu",
                     settings=PostprocessSettings(), batch_size=1,
                     flips=1)  # stub outputs do not follow the image: one view


def size_image(size: int) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)


def passes_for(seg: Segmenter, size: int) -> int:
    tile = seg._tile_size((size, size))
    if tile is None:
        return 1
    from napari_iaunet.inference.tiling import plan_tiles

    return len(plan_tiles((size, size), tile, round(tile * seg.tile_overlap)))


def forward_ms_from_inference_json() -> float | None:
    """Quiet-machine estimate of one R50 forward (the Segmenter's network, 2 threads) from
    ``inference.json``: per round, its time over the reference workload's x 242 ms."""
    path = C.RESULTS_DIR / "inference.json"
    try:
        stats = json.loads(path.read_text())["cpu"]["stats"]
        fwd = C.stats_from_summary(stats["iaunet forward 1x512² (Segmenter's network)"])
        ref = C.stats_from_summary(stats["reference_resnet50"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return C.QUIET_RESNET50_MS * C.paired_speedup(fwd, ref)["median"]


# ----------------------------------------------------------------------------------- image size
def image_size_scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    seg = stub_segmenter()
    forward_ms = forward_ms_from_inference_json()
    rows = []
    for size in args.sizes:
        image = size_image(size)
        inst = seg.segment(image)
        cases = {
            "segment (no network)": lambda image=image: seg.segment(image),
            "split_into_layers": lambda inst=inst: split_into_layers(inst),
            "COCO RLE": lambda inst=inst: instances_to_coco([inst], ["x.png"], mode="rle"),
        }
        print(f"image {size}²: {len(inst)} instances", flush=True)
        stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
        passes = passes_for(seg, size)
        _, layers_mb = C.tracemalloc_peak(lambda inst=inst: split_into_layers(inst))
        _, coco_mb = C.tracemalloc_peak(
            lambda inst=inst: instances_to_coco([inst], ["x.png"], mode="rle"))
        mem = {} if args.no_memory else C.peak_rss_subprocess(__file__, f"segment:{size}")
        row = {
            "size": f"{size}²", "passes": passes, "instances": len(inst),
            "segment_ms": C.fmt_ms(stats["segment (no network)"].median),
            "layers_ms": C.fmt_ms(stats["split_into_layers"].median),
            "coco_ms": C.fmt_ms(stats["COCO RLE"].median),
            "network_ms": round(passes * forward_ms) if forward_ms else None,
            "segment_rss_mb": mem.get("peak_rss_delta_mb"),
            "layers_mb": round(layers_mb, 1), "coco_mb": round(coco_mb, 1),
            "load": run["load_before"][:1] + run["load_after"][:1],
            "stats": stats,
        }
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- count
def instance_count_scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.counts:
        pred = fx.blob_predictions(n, (128, 128), max(1000, n), radius=2.2, seed=n)
        logits, masks = pred["pred_logits"][0], pred["pred_masks"][0]
        settings = PostprocessSettings()

        def post(logits=logits, masks=masks, settings=settings):
            return postprocess(logits, masks, (512, 512), (512, 512), (1024, 1024), settings)

        inst_post = post()
        nuclei = fx.nuclei_instances(n, size=1024, seed=n)
        stats, run = C.interleaved({"postprocess": post}, repeats=args.repeats * 2, warmup=1,
                                   verbose=False)
        _, post_mb = C.tracemalloc_peak(post)
        _, layers_mb = C.tracemalloc_peak(lambda nuclei=nuclei: split_into_layers(nuclei))
        _, poly_mb = C.tracemalloc_peak(
            lambda nuclei=nuclei: instances_to_coco([nuclei], ["x.png"], mode="polygon"))
        _, rle_mb = C.tracemalloc_peak(
            lambda nuclei=nuclei: instances_to_coco([nuclei], ["x.png"], mode="rle"))
        rows.append({
            "requested": n, "instances": len(inst_post),
            "postprocess_ms": C.fmt_ms(stats["postprocess"].median),
            "postprocess_per_instance_ms": C.fmt_ms(stats["postprocess"].median
                                                    / max(1, len(inst_post))),
            "postprocess_numpy_mb": round(post_mb, 1), "layers_mb": round(layers_mb, 1),
            "coco_polygon_mb": round(poly_mb, 1), "coco_rle_mb": round(rle_mb, 1),
            "load": run["load_before"][:1] + run["load_after"][:1], "stats": stats,
        })
        print(f"{n} instances: {rows[-1]['postprocess_ms']} ms", flush=True)
    return rows


def layers_coco_rows() -> list[dict[str, Any]]:
    """The instance-count rows of bench_layers_coco.py's last run (not re-measured here)."""
    path = C.RESULTS_DIR / "layers_coco.json"
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, KeyError, ValueError):
        return []


def memory_case(case: str) -> None:
    _, size = case.split(":")
    seg = stub_segmenter()
    image = size_image(int(size))
    print(json.dumps(C.peak_rss_of_call(lambda: seg.segment(image))))


# ----------------------------------------------------------------------------------- main
def markdown(payload: dict[str, Any]) -> str:
    info = payload["machine"]
    lines = [
        "# Scaling: image size and instance count (CPU)",
        "",
        f"Command: `{payload['command']}`; {info['host_cpu']}, {info['logical_cpus']} logical "
        f"CPUs (shared), {info['torch_threads']} torch threads, {info['date_utc']}. Medians of "
        "interleaved rounds; load average (1 min) before/after in each row.",
        "",
        "## Image size (tiled above 1536 px)",
        "",
        f"`segment` with a stub network ({CELLS_PER_PASS} cells per network pass), so the time "
        "is pre-/post-processing and seam merging only; `network` = passes × the R50 forward's "
        "quiet-machine estimate from `inference.json` (2 threads). RSS Δ: one `segment` call in "
        "a fresh process; layers/COCO: tracemalloc peak (numpy).",
        "",
        C.md_table(payload["image_size"], [
            ("size", "image"), ("passes", "network passes"), ("instances", "instances"),
            ("segment_ms", "segment w/o network ms"), ("network_ms", "network ms (est.)"),
            ("layers_ms", "split_into_layers ms"), ("coco_ms", "COCO RLE ms"),
            ("segment_rss_mb", "segment peak RSS Δ MiB"), ("layers_mb", "layers peak MiB"),
            ("coco_mb", "COCO peak MiB"), ("load", "load")]),
        "",
        "## Instance count (1024² image, DSB-like nuclei)",
        "",
        "Post-processing of 1000-query predictions (1/4-resolution logits of a 512 input, "
        "resampled to 1024²) with that many confident nuclei:",
        "",
        C.md_table(payload["instance_count"], [
            ("requested", "nuclei"), ("instances", "instances out"),
            ("postprocess_ms", "postprocess ms"),
            ("postprocess_per_instance_ms", "ms / instance"),
            ("postprocess_numpy_mb", "postprocess peak MiB (numpy)"),
            ("layers_mb", "split_into_layers peak MiB"),
            ("coco_polygon_mb", "COCO polygons peak MiB"), ("coco_rle_mb", "COCO RLE peak MiB"),
            ("load", "load")]),
        "",
    ]
    quoted = payload.get("layers_coco_rows") or []
    if quoted:
        lines += ["Layer building and COCO export times at these counts, from "
                  "`bench_layers_coco.py` (docs/benchmarks/layers_coco.md, its own run):", "",
                  C.md_table(quoted, [("instances", "instances"), ("layers", "layers"),
                                      ("split", "split ms"), ("merge", "merge ms"),
                                      ("polygons", "COCO polygons ms"), ("rle", "COCO RLE ms")])]
    else:
        lines.append("Layer/COCO times: run `benchmarks/bench_layers_coco.py`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true",
                        help="rewrite the markdown from the last JSON (network estimate refreshed)")
    args = parser.parse_args()
    if args.render:
        payload = json.loads((C.RESULTS_DIR / "scaling.json").read_text())
        forward_ms = forward_ms_from_inference_json()
        for row in payload["image_size"]:
            row["network_ms"] = round(row["passes"] * forward_ms) if forward_ms else None
        (C.RESULTS_DIR / "scaling.md").write_text(markdown(payload).rstrip() + "\n")
        (C.RESULTS_DIR / "scaling.json").write_text(json.dumps(payload, indent=1) + "\n")
        return
    torch.set_num_threads(args.threads)
    if args.memory_case:
        memory_case(args.memory_case)
        return
    args.sizes = [int(v) for v in args.sizes.split(",") if v]
    args.counts = [int(v) for v in args.counts.split(",") if v]
    payload: dict[str, Any] = {"machine": C.machine_info(), "command": C.command_line()}
    payload["image_size"] = image_size_scaling(args)
    payload["instance_count"] = instance_count_scaling(args)
    payload["layers_coco_rows"] = layers_coco_rows()
    payload["load_average_end"] = C.loadavg()
    C.write_results("scaling", payload, markdown(payload))


if __name__ == "__main__":
    main()

"""One corrected image, several fine-tune recipes: what each does to the images after it.

    .venv/bin/python benchmarks/bench_quick_recipe_variants.py --data ../shared/data/usiigaci \\
        --images set_09.tif,set_10.tif,set_27.tif,set_28.tif,set_29.tif,set_30.tif \\
        [--variants quick_lr1e-4_refit,lr1e-5,...] [--weights W] [--work DIR] [--out DIR]

The first image stands for the one image an annotator corrected; each variant of the quick
recipe fine-tunes the start model on it (``run_finetune`` with the held-back check, as the
widget does) and the model it hands over is scored on the **other** images: AP / AP50 (every
detection above 0.05) and edits per 100 cells (:func:`~napari_iaunet.evaluation.edits.count_edits`)
at score threshold 0.5 and at the threshold the check picked. The start model is scored the same
way at thresholds 0.5–0.8, so a variant's gain can be told from what the threshold alone gives.
A variant is ``name`` from :data:`VARIANTS`: the recipe's learning rate, its steps on the whole
images (``refit``), its blend with the start model, warm-up and gradient clipping.

Writes ``<out>/quick_recipe_variants_<name>.json`` and ``.md``; results already in the JSON are
kept (a variant is run again only when missing), so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_annotation_loop import _score

DEFAULT_WEIGHTS = C.REPO / "weights" / "iaunet_default.pt"
START_THRESHOLDS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8)

# name: FineTuneSettings fields, and TrainConfig fields as "config.<field>"
VARIANTS: dict[str, dict[str, Any]] = {
    "lr1e-4_refit": {"lr": 1e-4, "refit": 0.25, "blend": 1.0},  # the recipe until 2026-12-03
    "lr1e-4": {"lr": 1e-4, "refit": 0.0, "blend": 1.0},
    "lr1e-4_blend": {"lr": 1e-4, "refit": 0.0, "blend": 0.5},
    "lr1e-4_warmup_clip": {"lr": 1e-4, "refit": 0.0, "blend": 1.0, "config.warmup_steps": 10,
                           "config.grad_clip": 1.0},
    "lr3e-5": {"lr": 3e-5, "refit": 0.0, "blend": 1.0},
    "lr3e-5_blend": {"lr": 3e-5, "refit": 0.0, "blend": 0.5},
    "lr3e-5_warmup_clip": {"lr": 3e-5, "refit": 0.0, "blend": 1.0, "config.warmup_steps": 10,
                           "config.grad_clip": 1.0},
    "lr1e-5": {"lr": 1e-5, "refit": 0.0, "blend": 1.0},
    "lr1e-5_blend": {"lr": 1e-5, "refit": 0.0, "blend": 0.5},  # the recipe since 2026-12-03
}


def run_variant(name: str, data: Any, weights: Path, work: Path, device: str) -> dict[str, Any]:
    """Fine-tune on the first image with variant ``name``; score the model it hands over."""
    from napari_iaunet.checkpoint import load_checkpoint
    from napari_iaunet.inference import PostprocessSettings, Segmenter
    from napari_iaunet.training import AnnotatedImages
    from napari_iaunet.training.finetune import FineTuneSettings, make_train_config, run_finetune

    changes = VARIANTS[name]
    settings = FineTuneSettings(device=device)
    for key, value in changes.items():
        if not key.startswith("config."):
            setattr(settings, key, value)
    out = work / name
    config = make_train_config(settings, out, input_size=load_checkpoint(weights).config.input_size)
    config.overwrite = True
    for key, value in changes.items():
        if key.startswith("config."):
            setattr(config, key.removeprefix("config."), value)
    first = AnnotatedImages(data.items[:1], [{"source": "bench", "images": 1}])
    t0 = time.perf_counter()
    outcome = run_finetune(first, config, start=weights, hold_back=settings.hold_back,
                           score_threshold=0.5, refit_steps=settings.refit_steps,
                           blend=settings.blend)
    wall = time.perf_counter() - t0
    threshold = outcome.threshold.value if outcome.threshold else 0.5
    seg = Segmenter.from_checkpoint(outcome.model_path, device=device,
                                    settings=PostprocessSettings(score_threshold=0.05))
    return {"settings": changes, "finetune_s": round(wall, 1),
            "verdict": outcome.verdict.keep if outcome.verdict else None,
            "blended": outcome.blended is not None, "model": str(outcome.model_path),
            "threshold": threshold,
            "scores": {f"{t:g}": _score(seg, data.items[1:], t) for t in sorted({0.5, threshold})}}


def markdown(payload: dict[str, Any]) -> str:
    """The start model at each threshold, then one row per variant."""
    start = payload["start"]
    rows = [{"what": f"start model, threshold {t}", "ap": s["AP"], "ap50": s["AP50"],
             "edits": s["edits"]["per_100_cells"], "wall": "", "kept": ""}
            for t, s in start.items()]
    for name, r in payload["variants"].items():
        for t, s in r["scores"].items():
            rows.append({"what": f"{name}, threshold {t}", "ap": s["AP"], "ap50": s["AP50"],
                         "edits": s["edits"]["per_100_cells"], "wall": r["finetune_s"],
                         "kept": (r["verdict"] or "") + (", blended" if r["blended"] else "")})
    return "\n".join([
        f"# Quick-recipe variants: {payload['name']}", "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['host_cpu']}, 2 threads, device {payload['device']}, "
        f"load {payload['machine']['load_average']}.  ",
        f"Fine-tuned on {payload['images'][0]}; scored on {', '.join(payload['images'][1:])} "
        "(AP / AP50 rank every detection above 0.05; edits per 100 cells at the threshold).", "",
        C.md_table(rows, [("what", "model"), ("ap", "AP"), ("ap50", "AP50"),
                          ("edits", "edits / 100 cells"), ("wall", "fine-tune s"),
                          ("kept", "held-back check")]), ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="COCO folder")
    p.add_argument("--images", required=True, help="comma-separated; the first is fine-tuned on")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=C.REPO / "runs" / "quick_recipe_variants")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    p.add_argument("--name", default=None)
    args = p.parse_args()
    C.set_cpu_threads(2)
    from napari_iaunet.inference import PostprocessSettings, Segmenter
    from napari_iaunet.training import AnnotatedImages

    data = AnnotatedImages.from_coco(f"{args.data / 'annotations.json'}:{args.data / 'images'}")
    by_name = {Path(str(it.path)).name: it for it in data.items}
    wanted = [n.strip() for n in args.images.split(",") if n.strip()]
    missing = [n for n in wanted if n not in by_name]
    if missing or len(wanted) < 2:
        p.error(f"give two or more images of {args.data} (missing: {', '.join(missing)})")
    data = AnnotatedImages([by_name[n] for n in wanted], data.sources, data.class_names)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    name = args.name or args.data.resolve().name
    path = args.out / f"quick_recipe_variants_{name}.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload.update(name=name, command=C.command_line(), machine=C.machine_info(),
                   images=wanted, weights=str(args.weights), device=args.device)
    if "start" not in payload:
        seg = Segmenter.from_checkpoint(args.weights, device=args.device,
                                        settings=PostprocessSettings(score_threshold=0.05))
        payload["start"] = {f"{t:g}": _score(seg, data.items[1:], t) for t in START_THRESHOLDS}
    payload.setdefault("variants", {})
    for variant in args.variants.split(","):
        if variant not in payload["variants"]:
            payload["variants"][variant] = run_variant(variant, data, args.weights,
                                                       args.work / name, args.device)
            C.write_results(f"quick_recipe_variants_{name}", payload, markdown(payload),
                            out_dir=args.out)
            print(f"{name} {variant}: {payload['variants'][variant]}", flush=True)
    C.write_results(f"quick_recipe_variants_{name}", payload, markdown(payload), out_dir=args.out)


if __name__ == "__main__":
    main()

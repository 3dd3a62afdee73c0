"""The training issue's check: ≤ 30 CPU minutes of training → AP50 on unseen synthetic images.

    python benchmarks/bench_synthetic_goal.py --weights weights/iaunet_default.pt --threads 1
    python benchmarks/bench_synthetic_goal.py --minutes 30 --threads 1      # from random weights

Data: ``--train-images`` synthetic brightfield images (seed 30000) to train on and
``--test-images`` unseen ones (seed 20000) to score on, ``--size`` px, written once under
``--data``. The start model (``--weights``, or a new ResNet-18 IAUNet from random weights) is
scored on the test images, trained on the training images through the library's
:func:`napari_iaunet.training.train` with a hard time limit (``--minutes``, wall clock from the
call, model loading included; the run is cancelled at the limit and ``last.pt`` is scored),
then scored again: COCO mask AP/AP50 over all detections with score > 0.01 and F1 of detections
with score ≥ 0.5 at IoU 0.5. No validation set: the test images never choose a checkpoint.
Writes ``docs/benchmarks/synthetic_goal.json`` and ``.md`` (``--name`` / ``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TRAIN_SEED, TEST_SEED = 30000, 20000


def _data(folder: Path, n: int, size: int, seed: int, workers: int, preset: str,
          scale: float | None) -> Path:
    from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco

    ann = folder / "annotations.json"
    if not ann.exists():
        write_synthetic_coco(folder, n, size, seed, workers=workers,
                             params=SynthParams.preset(preset, scale))
    return ann


def _score(weights: Path, test: Path, threads: int) -> dict[str, Any]:
    from napari_iaunet.evaluation import evaluate
    from napari_iaunet.inference import PostprocessSettings, Segmenter
    from napari_iaunet.io.coco import coco_to_instances, read_coco
    from napari_iaunet.io.images import read_image

    seg = Segmenter.from_checkpoint(weights, device="cpu", tile_size=None,
                                    settings=PostprocessSettings(score_threshold=0.01))
    gts, preds = [], []
    for entry, inst in coco_to_instances(read_coco(test)):
        preds.append(seg.segment(read_image(test.parent / "images" / entry["file_name"])))
        gts.append(inst)
    m = evaluate(gts, preds, score_threshold=0.5)
    return {k: None if m[k] is None else round(float(m[k]), 4)  # None: nothing to rank
            for k in ("AP", "AP50", "AP75", "precision", "recall", "f1")}


def _postprocess_note() -> str:
    """The scoring's post-processing, as the tables say it."""
    from napari_iaunet.inference import PostprocessSettings

    iou = PostprocessSettings().duplicate_iou
    return ("no duplicate filter" if iou is None
            else f"the default duplicate filter (mask IoU {iou})")


def _new_model(args: argparse.Namespace) -> Any:
    """The config of the model trained from random weights (IAUNet-R18, or the LIVECell study's
    Mask R-CNN R18-CBAM; each family takes the options it has)."""
    from napari_iaunet.model.registry import FAMILIES

    return FAMILIES[args.family].new_config(
        ("cell",), args.input_size or 384, backbone="resnet18", variant="r18_cbam",
        num_queries=args.queries, hidden_dim=args.hidden_dim, mask_dim=args.hidden_dim,
        dropout=args.dropout, contrast_losses=args.contrast_losses,
        query_groups=args.query_groups, masked_attention=args.masked_attention)


def _describe_start(args: argparse.Namespace) -> str:
    if args.weights:
        return str(args.weights)
    from napari_iaunet.model.registry import FAMILIES

    if not FAMILIES[args.family].query_based:
        return "random weights (Mask R-CNN R18-CBAM-FPN, the LIVECell study's)"
    extra = f", {args.query_groups} query groups in training" if args.query_groups > 1 else ""
    return (f"random weights (IAUNet ResNet-18, width {args.hidden_dim}, {args.queries} "
            f"queries{extra})")


def _recipe_changes(args: argparse.Namespace) -> str:
    """The training options that differ from the reference recipe, as ``; a, b`` (or "")."""
    changes = []
    if args.no_object_weight != 0.1:
        changes.append(f"no-object weight {args.no_object_weight}")
    if args.dropout != 0.1:
        changes.append(f"dropout {args.dropout}")
    if args.contrast_losses:
        changes.append("QEC/MCC contrast losses")
    if args.masked_attention:
        changes.append("masked attention")
    return "; " + ", ".join(changes) if changes else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="start checkpoint (default: random)")
    p.add_argument("--minutes", type=float, default=30.0, help="training time limit")
    p.add_argument("--steps", type=int, default=300, help="the schedule's length (cosine decay)")
    p.add_argument("--input-size", type=int, default=None,
                   help="default: the start model's, 384 for a new one")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--points", type=int, default=3136)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=3407,
                   help="training seed: initial weights, batches, augmentation")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--test-images", type=int, default=20)
    p.add_argument("--size", type=int, default=540)
    p.add_argument("--preset", default="revvity", choices=("revvity", "clear"),
                   help="synthetic look (napari-iaunet synth --preset)")
    p.add_argument("--scale", type=float, default=None,
                   help="image pixels per Revvity pixel (default: a whole 1080 field in --size)")
    p.add_argument("--family", default="iaunet", choices=("iaunet", "maskrcnn"),
                   help="model family of a new model (maskrcnn: the R18-CBAM variant)")
    p.add_argument("--queries", type=int, default=100, help="queries of a new model")
    p.add_argument("--hidden-dim", type=int, default=128, help="decoder width of a new model")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10%%, ≤ 20)")
    p.add_argument("--no-object-weight", type=float, default=0.1,
                   help="class-loss weight of unmatched queries (the reference's 0.1)")
    p.add_argument("--query-groups", type=int, default=1,
                   help="a new model trains with this many query groups (Group DETR)")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="decoder dropout of a new model (the reference's 0.1)")
    p.add_argument("--contrast-losses", action="store_true",
                   help="a new model trains with PCTrans's QEC + MCC losses")
    p.add_argument("--masked-attention", action="store_true",
                   help="a new model uses Mask2Former's masked cross-attention")
    p.add_argument("--data", type=Path, default=C.REPO / "runs" / "synth540")
    p.add_argument("--run", type=Path, default=C.REPO / "runs" / "synthetic_goal")
    p.add_argument("--name", default="synthetic_goal")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    args = p.parse_args()

    import torch

    from napari_iaunet.allocator import keep_freed_memory
    from napari_iaunet.training import PrintProgress, TrainConfig, train

    keep_freed_memory()  # as the command line does
    torch.set_num_threads(args.threads)
    train_ann = _data(args.data / "train", args.train_images, args.size, TRAIN_SEED, 2,
                      args.preset, args.scale)
    test_ann = _data(args.data / "test", args.test_images, args.size, TEST_SEED, 2, args.preset,
                     args.scale)
    before = _score(args.weights, test_ann, args.threads) if args.weights else None
    print(f"before: {before}", flush=True)

    limit_s = args.minutes * 60.0
    t0 = time.time()
    result = train(
        str(train_ann), None,
        TrainConfig(out_dir=args.run, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    warmup_steps=(min(20, args.steps // 10) if args.warmup is None
                                  else args.warmup), grad_clip=1.0,
                    num_points=args.points, val_every=0, num_threads=args.threads,
                    input_size=args.input_size, no_object_weight=args.no_object_weight,
                    seed=args.seed, overwrite=True),
        start=args.weights,
        model_config=None if args.weights else _new_model(args),
        callbacks=[PrintProgress(every=10)],
        cancel=lambda: time.time() - t0 > limit_s,
    )
    train_s = time.time() - t0
    after = _score(args.run / "last.pt", test_ann, args.threads)
    print(f"after: {after} ({train_s / 60:.1f} min, {result.steps} steps)", flush=True)

    payload = {
        "command": C.command_line(), "machine": C.machine_info(),
        "family": args.family, "start": _describe_start(args),
        "preset": args.preset, "scale": args.scale,
        "train_images": args.train_images, "test_images": args.test_images, "size": args.size,
        "input_size": result.config.input_size, "batch_size": args.batch_size, "lr": args.lr,
        "no_object_weight": args.no_object_weight, "contrast_losses": args.contrast_losses,
        "query_groups": args.query_groups, "dropout": args.dropout,
        "masked_attention": args.masked_attention,
        "threads": args.threads, "seed": args.seed, "minutes_limit": args.minutes,
        "schedule_steps": args.steps,
        "steps_done": result.steps, "cancelled_at_limit": result.cancelled,
        "train_minutes": round(train_s / 60, 2), "postprocess": _postprocess_note(),
        "before": before, "after": after,
    }
    rows = [{"when": "before", **before}] if before else []
    rows.append({"when": f"after {payload['train_minutes']} min ({result.steps} steps)", **after})
    cols = [("when", "model")] + [(k, k) for k in ("AP", "AP50", "AP75", "precision", "recall",
                                                    "f1")]
    md = "\n".join([
        "# Training check: unseen synthetic images after ≤ 30 CPU minutes", "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['host_cpu']}, {args.threads} torch thread(s); "
        f"start: {payload['start']}; {args.train_images} training / {args.test_images} unseen "
        f"test images of {args.size} px (preset `{args.preset}`, scale "
        f"{args.scale or 'whole field'}); input {result.config.input_size}, "
        f"batch {args.batch_size}, "
        f"lr {args.lr}, cosine schedule over {args.steps} steps, time limit {args.minutes} min"
        f"{_recipe_changes(args)}.",
        "", C.md_table(rows, cols), "",
        "AP over detections with score > 0.01; precision/recall/F1 of detections with score ≥ 0.5 "
        f"at IoU 0.5; {_postprocess_note()}. The time covers the whole `train()` call (data "
        "loading and checkpoints).",
    ])
    C.write_results(args.name, payload, md, out_dir=args.out)


if __name__ == "__main__":
    main()

"""Fine-tune on one Revvity-25 image, segment the other: COCO AP before and after, and the time.

    python benchmarks/bench_finetune_revvity.py                        # weights/iaunet_default.pt
    python benchmarks/bench_finetune_revvity.py --weights runs/r50/best.pt --steps 200
    python benchmarks/bench_finetune_revvity.py --both-ways --device cuda

What the fine-tune widget does, without the GUI: the two 1080×1080 brightfield images of
``../shared/data/revvity25`` (81 overlapping cells) are split into one training image and one
held-out test image. The start model (``--weights``; by default the bundled
``weights/iaunet_default.pt``, which must exist: pass ``--weights`` otherwise) segments both; then
it is fine-tuned on the training image with the widget's own settings
(:func:`napari_iaunet.training.finetune.make_train_config` of
:meth:`~napari_iaunet.training.finetune.FineTuneSettings.thorough`, the widget's *thorough*
recipe: 200 steps, batch 2, lr 5e-5, the whole network, the model's input size, augmentation on,
a checkpoint every 25 steps; the quick recipe is measured by ``bench_annotation_loop.py``) and
the result segments both again. Without a validation image (the only other image is the test
image, which must not choose the checkpoint) ``best.pt`` is the checkpoint with the lowest
smoothed training loss: that is what *Use this model* picks; ``last.pt`` is reported too.

AP is COCO mask AP over all detections with score > 0.01 (as ``napari-iaunet evaluate``);
precision, recall and F1 count detections with score ≥ 0.5 matched at IoU 0.5. Wall time covers
the whole fine-tune (model loading, steps, checkpoints). ``--both-ways`` also trains on the second
image and tests on the first. The data set is skipped cleanly when it is absent.

Writes ``docs/benchmarks/finetune_revvity.json`` and ``.md`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO,
    RESULTS_DIR,
    command_line,
    loadavg,
    machine_info,
    md_table,
    write_results,
)

DATA = REPO.parent / "shared" / "data" / "revvity25"
NAME = "finetune_revvity"
AP_SCORE = 0.01  # detections kept for AP (as `napari-iaunet evaluate`)
MATCH_SCORE = 0.5  # detections counted by precision / recall / F1


def _args() -> argparse.Namespace:
    from napari_iaunet.training.finetune import FineTuneSettings

    d = FineTuneSettings.thorough()  # the recipe this benchmark measured (see docs/finetune.md)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None,
                   help="start checkpoint (default: weights/iaunet_default.pt)")
    p.add_argument("--data", default=str(DATA), help="Revvity-25 folder (annotations.json + "
                   "images/)")
    p.add_argument("--train-image", default=None,
                   help="file name of the training image (default: the first in the file)")
    p.add_argument("--both-ways", action="store_true", help="also train on the other image")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--input-size", type=int, default=None, help="default: the model's")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--free-batchnorm", action="store_true",
                   help="let the BatchNorm statistics move (the widget keeps them fixed)")
    p.add_argument("--match-brightness", action=argparse.BooleanOptionalAction, default=None,
                   help="brightness matching for the start model and the fine-tune (default: "
                        "the start model's)")
    p.add_argument("--every", type=int, default=d.every, help="checkpoint every N steps")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--runs", default=None, help="folder for the run folders (default: a "
                   "temporary folder, deleted)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the result files")
    return p.parse_args()


def _evaluate(seg: Any, item: Any) -> dict[str, Any]:
    from napari_iaunet.evaluation import evaluate

    t0 = time.perf_counter()
    pred = seg.segment(item.load_raw())
    seconds = time.perf_counter() - t0
    m = evaluate([item.instances], [pred], score_threshold=MATCH_SCORE)
    keep = ("AP", "AP50", "AP75", "precision", "recall", "f1", "mean_iou", "n_gt", "n_pred")
    out = {k: m.get(k) for k in keep}
    out["n_pred_scored"] = len(pred)
    out["segment_s"] = round(seconds, 2)
    return out


def _segmenter(path: Path, device: str, match_brightness: bool | None = None) -> Any:
    from napari_iaunet.inference import PostprocessSettings, Segmenter

    return Segmenter.from_checkpoint(path, device=device, match_brightness=match_brightness,
                                     settings=PostprocessSettings(score_threshold=AP_SCORE))


def _fold(args: argparse.Namespace, weights: Path, train_item: Any, test_item: Any,
          runs: Path) -> dict[str, Any]:
    import torch

    from napari_iaunet.checkpoint import read_checkpoint_info
    from napari_iaunet.training import PrintProgress, train
    from napari_iaunet.training.finetune import FineTuneSettings, make_train_config

    info = read_checkpoint_info(weights)
    settings = dataclasses.replace(
        FineTuneSettings.thorough(), steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        input_size=args.input_size, augment=not args.no_augment, device=args.device,
        every=args.every)
    input_size = args.input_size or info.config.input_size
    out_dir = runs / f"train_on_{Path(train_item.name).stem}"
    config = make_train_config(settings, out_dir, input_size=input_size)
    if args.match_brightness is not None:  # the fine-tuned model keeps it in its config
        config = dataclasses.replace(config, match_brightness=args.match_brightness)
    if args.free_batchnorm:  # the widget freezes the BatchNorm statistics of a start model
        config = dataclasses.replace(config, freeze_batchnorm=False)

    seg = _segmenter(weights, args.device, args.match_brightness)
    before = {"test": _evaluate(seg, test_item), "train": _evaluate(seg, train_item)}
    device = str(seg.device)
    del seg
    print(f"before: test AP {before['test']['AP']:.4f}, train AP {before['train']['AP']:.4f}",
          flush=True)

    load0 = loadavg()
    t0 = time.perf_counter()
    result = train([train_item], None, config, start=weights,
                   callbacks=[PrintProgress(every=max(1, args.steps // 20))])
    wall = time.perf_counter() - t0
    load1 = loadavg()
    if device.startswith("cuda"):
        torch.cuda.synchronize()

    from napari_iaunet.training.callbacks import read_log

    step_s = sorted(r["step_s"] for r in read_log(out_dir / "log.jsonl")
                    if r.get("event") == "step" and "step_s" in r)
    median_step = step_s[len(step_s) // 2] if step_s else None
    after = {}
    for name, path in (("best", result.best_path), ("last", result.last_path)):
        if path is None:
            continue
        seg = _segmenter(path, args.device)
        after[name] = {"test": _evaluate(seg, test_item), "train": _evaluate(seg, train_item),
                       "checkpoint_step": read_checkpoint_info(path).metadata.get(
                           "trained_steps")}
        del seg
        print(f"after ({name}.pt): test AP {after[name]['test']['AP']:.4f}", flush=True)
    return {
        "train_image": train_item.name, "test_image": test_item.name,
        "train_cells": len(train_item.instances), "test_cells": len(test_item.instances),
        "device": device, "steps": result.steps, "input_size": input_size,
        "train_config": config.to_dict(), "finetune_wall_s": round(wall, 1),
        "s_per_step": round(wall / max(1, result.steps), 3),
        "median_step_s": median_step,
        "load_average_before": load0, "load_average_after": load1,
        "before": before, "after": after,
        "best_step": result.best_step,
    }


def _brightness(setting: bool | None) -> str:
    return "as the start model's" if setting is None else ("on" if setting else "off")


def _markdown(payload: dict[str, Any]) -> str:
    rows = []
    for f in payload["folds"]:
        for label, m, step in [("start model", f["before"], None)] + [
                (f"fine-tuned ({k}.pt)", v, v.get("checkpoint_step"))
                for k, v in f["after"].items()]:
            rows.append({
                "train": f["train_image"], "model": label + (f", step {step}" if step else ""),
                "ap": f"{m['test']['AP']:.3f}", "ap50": f"{m['test']['AP50']:.3f}",
                "f1": f"{m['test']['f1']:.3f}", "train_ap": f"{m['train']['AP']:.3f}",
                "time": "" if label == "start model" else
                f"{f['finetune_wall_s']:.0f} s (median step {f['median_step_s']:.2f} s)",
            })
    table = md_table(rows, [("train", "trained on"), ("model", "model"), ("ap", "test AP"),
                            ("ap50", "test AP50"), ("f1", "test F1@0.5"),
                            ("train_ap", "train-image AP"), ("time", "fine-tune wall time")])
    m = payload["machine"]
    f0 = payload["folds"][0]
    return f"""# Fine-tuning on one Revvity-25 image, tested on the other

`{payload['command']}`

* Start model: `{payload['weights']}` ({payload['start_model']}).
* Fine-tuning: the fine-tune widget's settings — {f0['steps']} steps, batch
  {f0['train_config']['batch_size']}, lr {f0['train_config']['lr']:g}, input {f0['input_size']} px,
  scale jitter {f0['train_config']['scale_range']}, BatchNorm statistics
  {'frozen' if f0['train_config'].get('freeze_batchnorm') else 'updated'}, brightness matching
  {_brightness(f0['train_config'].get('match_brightness'))} — on `{f0['device']}`.
  The wall time covers loading the model, every step and the checkpoints.
* Test: the image not trained on (1080×1080, {f0['test_cells']} cells). AP: COCO mask AP over
  detections with score > {AP_SCORE}; F1: score ≥ {MATCH_SCORE}, IoU 0.5.
* best.pt: the lowest smoothed training loss (there is no validation image), which is what
  *Use this model* picks. last.pt: the end of the run.

{table}

Machine: {m.get('host_cpu')}, {m.get('logical_cpus')} logical CPUs, torch
{m.get('torch')} ({m.get('torch_threads')} threads), GPU {m.get('gpu') or 'none'}; load average
{f0['load_average_before']} before and {f0['load_average_after']} after fine-tuning (a shared
machine: wall times scale with its load).
"""


def main() -> int:
    args = _args()
    data_dir = Path(args.data)
    ann = data_dir / "annotations.json"
    if not ann.is_file() or not (data_dir / "images").is_dir():
        print(f"skipped: Revvity-25 not found at {data_dir} (annotations.json + images/)")
        return 0
    from napari_iaunet.weights import default_weights

    try:
        weights = Path(args.weights) if args.weights else default_weights()
    except FileNotFoundError as exc:
        print(f"no start model: {exc}", file=sys.stderr)
        return 2
    if not weights.is_file():
        print(f"no start model: {weights} does not exist; pass --weights PATH", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_iaunet.checkpoint import read_checkpoint_info
    from napari_iaunet.training import AnnotatedImages

    items = AnnotatedImages.from_coco(f"{ann}:{data_dir / 'images'}").items
    if len(items) < 2:
        print(f"skipped: {ann} has {len(items)} image(s); two are needed")
        return 0
    names = [it.name for it in items]
    first = names.index(args.train_image) if args.train_image else 0
    order = [(first, 1 - first if len(items) == 2 else (first + 1) % len(items))]
    if args.both_ways:
        order.append(order[0][::-1])
    info = read_checkpoint_info(weights)
    c = info.config
    with tempfile.TemporaryDirectory(prefix="finetune_revvity_") as tmp:
        runs = Path(args.runs) if args.runs else Path(tmp)
        folds = [_fold(args, weights, items[a], items[b], runs) for a, b in order]
    payload = {
        "command": command_line(), "weights": str(weights),
        "start_model": f"{c.backbone}, {c.num_queries} queries, input {c.input_size} px",
        "start_model_metadata": info.metadata, "data": str(data_dir),
        "ap_score_threshold": AP_SCORE, "match_score_threshold": MATCH_SCORE,
        "folds": folds, "machine": machine_info(),
    }
    write_results(NAME, payload, _markdown(payload), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

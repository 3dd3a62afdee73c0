"""The three model families trained the same way on the same real data: AP, speed and memory.

    python benchmarks/bench_families.py                         # ISBI 2014, 300 steps each
    python benchmarks/bench_families.py --steps 2000 --device cuda --backbone resnet50

IAUNet, PCTrans and the LIVECell study's Mask R-CNN are each trained **from random weights**
(nothing can be downloaded here) with one recipe: the same training images, steps, batch, AdamW
learning rate and cosine schedule, augmentation, input size and seed, through the same
``napari_iaunet.training.train``. Data: ``../shared/data/isbi2014`` (30 overlapping-cervical-cell
images, 512×512), the last 20 % of its images held out for testing (as the default-model recipe
splits it). Each family runs in its own fresh process, so its peak resident memory is its own.

Reported per family: parameters; training wall time, median step time and images/s; peak
resident memory of the training process (CPU) or peak allocated GPU memory; ``last.pt``'s COCO
mask AP / AP50 / AP75 over detections with score > 0.01 and F1 at IoU 0.5 for score ≥ 0.5 on
the held-out images; median ``Segmenter.segment`` time per held-out image and the peak memory of
inference. Backbones: ResNet-18 for IAUNet and PCTrans (``--backbone``) and the study's
ResNet-18 + CBAM for Mask R-CNN (``--maskrcnn-variant r50_fpn`` for torchvision's R50-FPN).

``--families iaunet+pctrans_options`` adds IAUNet with PCTrans's centre guidance, dynamic mask
head and contrast losses switched on (the question: do they help on overlapping cells?).

Writes ``docs/benchmarks/families.json`` and ``.md`` (``--out`` for another folder, ``--name``
for another file name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MEMORY_ENV,
    REPO,
    RESULTS_DIR,
    _proc_status,
    command_line,
    loadavg,
    machine_info,
    md_table,
    reset_peak_rss,
    write_results,
)

DATA = REPO.parent / "shared" / "data" / "isbi2014"
NAME = "families"
FAMILIES = ("iaunet", "pctrans", "maskrcnn")
# IAUNet with PCTrans's centre guidance, dynamic mask head and contrast losses switched on
OPTIONS_CASE = "iaunet+pctrans_options"
AP_SCORE = 0.01
MATCH_SCORE = 0.5


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="a COCO folder (annotations.json + images/)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES),
                   choices=(*FAMILIES, OPTIONS_CASE))
    p.add_argument("--name", default=NAME, help="result file name (default: families)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--backbone", default="resnet18", help="IAUNet and PCTrans backbone")
    p.add_argument("--hidden-dim", type=int, default=128, help="IAUNet and PCTrans width")
    p.add_argument("--maskrcnn-variant", default="r18_cbam", choices=("r18_cbam", "r50_fpn"))
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per family")
    p.add_argument("--runs", default=None, help="keep the run folders here (default: deleted)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the result files")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one family
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def split(data: Path, workdir: Path, val_fraction: float) -> tuple[str, str, dict[str, int]]:
    """Train / test COCO files of ``data`` (the last images test); their ``COCO:IMAGES`` specs."""
    from napari_iaunet.io.coco import read_coco, write_coco

    coco = read_coco(data / "annotations.json")
    ids = sorted(im["id"] for im in coco["images"])
    n_test = max(1, round(len(ids) * val_fraction))
    chosen = {"train": set(ids[:-n_test]), "test": set(ids[-n_test:])}
    specs, counts = {}, {}
    for name, keep in chosen.items():
        sub = {**coco, "categories": [{"id": 1, "name": "cell"}],
               "images": [im for im in coco["images"] if im["id"] in keep],
               "annotations": [{**a, "category_id": 1} for a in coco["annotations"]
                               if a["image_id"] in keep]}
        path = workdir / f"{name}.json"
        write_coco(path, sub, overwrite=True)
        specs[name] = f"{path}:{data / 'images'}"
        counts[f"{name}_images"] = len(keep)
        counts[f"{name}_cells"] = len(sub["annotations"])
    return specs["train"], specs["test"], counts


def model_config(args: argparse.Namespace, case: str) -> Any:
    """The new model of ``case`` (a family, or IAUNet with the PCTrans options) the comparison
    trains; each family keeps the options it has (the registry's ``new_config``)."""
    from napari_iaunet.model.registry import FAMILIES

    options = dict(backbone=args.backbone, hidden_dim=args.hidden_dim, mask_dim=args.hidden_dim,
                   variant=args.maskrcnn_variant)
    if case == OPTIONS_CASE:
        options.update(centre_guidance=True, dynamic_mask_head=True, contrast_losses=True)
        case = "iaunet"
    return FAMILIES[case].new_config(("cell",), args.input_size, **options)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(_proc_status("VmHWM") / 2**20, 1)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train and test one family (in this process); its result as a dict."""
    import torch

    from napari_iaunet.evaluation import evaluate
    from napari_iaunet.inference import PostprocessSettings, Segmenter
    from napari_iaunet.model import build_model, count_parameters
    from napari_iaunet.training import AnnotatedImages, train
    from napari_iaunet.training.callbacks import read_log
    from napari_iaunet.training.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    family, workdir = args.one, Path(args.workdir)
    train_spec, test_spec = (workdir / "specs.json").read_text().split("\n")[:2]
    train_data = AnnotatedImages.from_coco([train_spec])
    test_items = AnnotatedImages.from_coco([test_spec]).items
    mc = model_config(args, family)
    out_dir = workdir / family
    cfg = TrainConfig(out_dir=out_dir, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, warmup_steps=args.warmup, val_every=0, seed=args.seed,
                      device=args.device, num_threads=args.threads, plot=False,
                      overwrite=True)
    _reset_peak(args.device)
    t0 = time.perf_counter()
    result = train(train_data, None, cfg, model_config=mc)
    wall = time.perf_counter() - t0
    train_peak = _peak_memory_mb(args.device)
    step_s = sorted(r["step_s"] for r in read_log(out_dir / "log.jsonl")
                    if r.get("event") == "step" and "step_s" in r)
    losses = [r["loss"] for r in read_log(out_dir / "log.jsonl") if r.get("event") == "step"]

    seg = Segmenter.from_checkpoint(result.last_path, device=args.device,
                                    settings=PostprocessSettings(score_threshold=AP_SCORE))
    images = [item.load_raw() for item in test_items]
    seg.segment(images[0])  # warm-up
    _reset_peak(args.device)
    preds, times = [], []
    for image in images:
        t = time.perf_counter()
        preds.append(seg.segment(image))
        times.append(time.perf_counter() - t)
    infer_peak = _peak_memory_mb(args.device)
    metrics = evaluate([it.instances for it in test_items], preds, score_threshold=MATCH_SCORE)
    keep = ("AP", "AP50", "AP75", "precision", "recall", "f1", "mean_iou", "aji", "pq")
    return {
        "family": family, "model": mc.describe(), "config": mc.to_dict(),
        "parameters": count_parameters(build_model(mc)),
        "steps": result.steps, "train_wall_s": round(wall, 1),
        "median_step_s": step_s[len(step_s) // 2] if step_s else None,
        "train_images_per_s": round(args.steps * args.batch_size / wall, 3),
        "loss_first10": statistics.mean(losses[:10]), "loss_last10": statistics.mean(losses[-10:]),
        "train_peak_mb": train_peak, "infer_peak_mb": infer_peak,
        "segment_median_s": statistics.median(times),
        "metrics": {k: None if metrics.get(k) is None else float(metrics[k]) for k in keep},
        "n_pred": int(metrics.get("n_pred", 0)), "device": str(seg.device),
        "load_average_end": loadavg(),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _markdown(payload: dict[str, Any]) -> str:
    a = payload["args"]
    mem_label = "peak GPU MB" if str(a["device"]).startswith("cuda") else "peak RSS MB"
    rows = [{
        "family": r["family"], "model": r["model"], "params": f"{r['parameters'] / 1e6:.2f}M",
        "ap": _fmt(r["metrics"]["AP"]), "ap50": _fmt(r["metrics"]["AP50"]),
        "f1": _fmt(r["metrics"]["f1"]), "step": f"{r['median_step_s']:.2f}",
        "ips": f"{r['train_images_per_s']:.2f}", "loss": f"{r['loss_first10']:.2f} → "
        f"{r['loss_last10']:.2f}", "seg": f"{r['segment_median_s'] * 1000:.0f}",
        "tmem": f"{r['train_peak_mb']:.0f}", "imem": f"{r['infer_peak_mb']:.0f}",
    } for r in payload["results"]]
    table = md_table(rows, [
        ("family", "family"), ("model", "model"), ("params", "parameters"), ("ap", "AP"),
        ("ap50", "AP50"), ("f1", "F1@0.5"), ("step", "median step s"), ("ips", "train img/s"),
        ("loss", "loss (first → last 10 steps)"), ("seg", "segment ms / image"),
        ("tmem", f"train {mem_label}"), ("imem", f"segment {mem_label}")])
    d, m = payload["data"], payload["machine"]
    return f"""# Three model families trained the same way

`{payload['command']}`

* Data: `{d['path']}`: {d['train_images']} training images ({d['train_cells']} cells), tested on
  the other {d['test_images']} ({d['test_cells']} cells), 512×512 overlapping cervical cells.
* One recipe for every family, from random weights: {a['steps']} steps, batch
  {a['batch_size']}, AdamW lr {a['lr']:g} (weight decay 0.05, {a['warmup']} warm-up steps,
  cosine decay), input {a['input_size']} px, flips / 90° rotations / scale jitter 0.8-1.5,
  seed {a['seed']}, {a['threads']} thread(s) on `{payload['results'][0]['device']}`.
* AP: COCO mask AP of `last.pt` over detections with score > {AP_SCORE}; F1: score ≥
  {MATCH_SCORE}, IoU 0.5. Segment time: median over the test images (512×512 in, overlapping
  instances out). Memory: peak of the family's own process.

{table}

Machine: {m.get('host_cpu')}, {m.get('logical_cpus')} logical CPUs, torch {m.get('torch')},
GPU {m.get('gpu') or 'none'}; load average {payload['load_average_start']} at the start (a shared
machine: times scale with its load, and the families ran one after another).
"""


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return 0
    data = Path(args.data)
    if not (data / "annotations.json").is_file():
        print(f"skipped: no annotations.json in {data}")
        return 0
    with tempfile.TemporaryDirectory(prefix="families_") as tmp:
        workdir = Path(args.runs) if args.runs else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        train_spec, test_spec, counts = split(data, workdir, args.val_fraction)
        (workdir / "specs.json").write_text(f"{train_spec}\n{test_spec}\n")
        load0 = loadavg()
        results = []
        for family in args.families:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--one", family, "--workdir", str(workdir)]
            print(f"training {family} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, **MEMORY_ENV}, cwd=REPO)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            if proc.returncode or not lines:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(lines[-1]))
            r = results[-1]
            print(f"{family}: AP {_fmt(r['metrics']['AP'])} AP50 {_fmt(r['metrics']['AP50'])} "
                  f"in {r['train_wall_s']:.0f} s", flush=True)
    payload = {"command": command_line(), "args": {k: v for k, v in vars(args).items()
                                                   if k not in ("one", "workdir")},
               "data": {"path": str(data), **counts}, "results": results,
               "load_average_start": load0, "machine": machine_info()}
    write_results(args.name, payload, _markdown(payload), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed: one optimisation step of IAUNet (forward, set loss, backward, AdamW).

    python benchmarks/bench_training.py                       # R50, 512², batch 1 and 2, CPU
    python benchmarks/bench_training.py --device cuda --batch 8 --steps 20

Data are synthetic brightfield images through the real training pipeline (augmentation,
normalisation, 12 544-point matching and losses over all 9 decoder outputs). Reports the median
over ``--steps`` measured steps after ``--warmup`` steps, and writes
``docs/benchmarks/training.json`` and ``training.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from napari_iaunet.model import IAUNetConfig, build_model
from napari_iaunet.training.augment import AugmentConfig
from napari_iaunet.training.dataset import AnnotatedImages, TrainingDataset, collate
from napari_iaunet.training.losses import SetCriterion
from napari_iaunet.training.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(backbone: str, size: int, batch: int, steps: int, warmup: int, device: torch.device,
          amp: bool, num_points: int) -> dict:
    """Median timings of ``steps`` training steps at ``batch`` images of ``size``²."""
    torch.manual_seed(0)
    cfg = IAUNetConfig(backbone=backbone, input_size=size)
    model = build_model(cfg).to(device).train()
    crit = SetCriterion(cfg.num_classes, num_points=num_points).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            fused=device.type in ("cpu", "cuda"))
    pairs = generate(max(4, batch), size, seed=0)
    ds = TrainingDataset(AnnotatedImages.from_pairs(pairs), cfg.pixel_mean, cfg.pixel_std,
                         AugmentConfig(input_size=size))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.float16
    rows = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        images, targets = collate([ds[(j % len(ds), i * batch + j)] for j in range(batch)])
        images = images.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        _sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
            out = model(images)
        _sync(device)
        t2 = time.perf_counter()
        losses = crit(out, targets)
        _sync(device)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        _sync(device)
        t4 = time.perf_counter()
        opt.step()
        _sync(device)
        t5 = time.perf_counter()
        if i >= warmup:
            rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t1))
    med = [statistics.median(r[k] for r in rows) for k in range(6)]
    return {
        "backbone": backbone, "input_size": size, "batch_size": batch, "queries": cfg.num_queries,
        "num_points": num_points, "steps": steps, "warmup": warmup,
        "amp": bool(amp and device.type == "cuda"),
        "data_s": round(med[0], 4), "forward_s": round(med[1], 4), "loss_s": round(med[2], 4),
        "backward_s": round(med[3], 4), "optimizer_s": round(med[4], 4),
        "step_s": round(med[5], 4), "images_per_s": round(batch / med[5], 3),
        "instances_per_image": round(sum(len(t["labels"]) for t in targets) / batch, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--points", type=int, default=12544)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks",
                   help="folder for training.json / training.md")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc malloc's settings alone (default: keep freed memory, like "
                        "the napari-iaunet command line)")
    args = p.parse_args()
    if not args.system_malloc:
        from napari_iaunet.allocator import keep_freed_memory

        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [bench(args.backbone, args.size, b, args.steps, args.warmup, device,
                     not args.no_amp, args.points) for b in args.batch]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
               f"{torch.get_num_threads()} torch threads)"
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    report = {"device": name, "torch": torch.__version__, "load_average_1_5_15min": load,
              "results": results,
              "command": "python benchmarks/bench_training.py " + " ".join(
                  a for a in sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "training" if device.type == "cpu" else f"training_{device.type}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Training speed ({name})", "",
             f"torch {torch.__version__}; command: `{report['command'].strip()}`; "
             f"machine load average at the end (1/5/15 min): {load}", "",
             "| backbone | input | batch | step (s) | images/s | forward | loss | backward | "
             "AdamW |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backbone']} | {r['input_size']}² | {r['batch_size']} | "
                     f"{r['step_s']:.3f} | {r['images_per_s']:.2f} | {r['forward_s']:.3f} | "
                     f"{r['loss_s']:.3f} | {r['backward_s']:.3f} | {r['optimizer_s']:.3f} |")
    lines += ["", "Median over the measured steps; loss = Hungarian matching + point-sampled "
              f"losses on all 9 outputs ({results[0]['num_points']} points, "
              f"{results[0]['queries']} queries)."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

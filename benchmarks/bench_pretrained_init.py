"""Random vs ImageNet encoder initialisation, same data and steps, scored on unseen images.

    python benchmarks/bench_pretrained_init.py --data ../shared/data --out runs/cmp

Trains one IAUNet per (backbone, initialisation) with the default-model recipe
(``scripts/train_default_model.py``: Revvity-25 R01C02F13, ISBI 2014 and Usiigaci training
splits, brightness matching and percentile intensity scaling from the first step), ``--steps``
steps each, ``--parallel`` runs at a time on one CPU thread each, then scores each run's
``last.pt`` with ``napari-iaunet evaluate`` on the images no run trained on: Revvity-25
R01C03F14, ISBI 2014 ``isbi_25``–``30`` and Usiigaci ``set_09``, ``10``, ``27``–``30``.
A run whose ``report.json`` exists is not trained again (``--collect`` only gathers). Writes
``docs/benchmarks/pretrained_init.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("revvity25", "isbi2014", "usiigaci")


def _command(args: argparse.Namespace, backbone: str, init: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train_default_model.py"), "--data",
            str(args.data), "--out", str(args.out / f"{backbone}_{init}"), "--backbone",
            backbone, "--encoder", init, "--input-size", str(args.input_size), "--steps",
            str(args.steps), "--val-every", str(args.steps), "--warmup", str(args.warmup),
            "--threads", "1", "--evaluate", "last", "--resume"]


def _train(args: argparse.Namespace, backbone: str, init: str) -> None:
    run = args.out / f"{backbone}_{init}"
    if (run / "report.json").exists():
        return
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{run}.log", "a") as log:
        subprocess.run(_command(args, backbone, init), stdout=log, stderr=subprocess.STDOUT,
                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "cmp")
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--input-size", type=int, default=384)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--collect", action="store_true", help="only gather finished runs")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    args = p.parse_args(argv)

    cases = [(b, i) for b in args.backbones for i in ("imagenet", "random")]
    if not args.collect:
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda case: _train(args, *case), cases))
    rows = []
    for backbone, init in cases:
        report = args.out / f"{backbone}_{init}" / "report.json"
        if not report.exists():
            print(f"missing {report}", file=sys.stderr)
            continue
        r = json.loads(report.read_text())
        rows.append({"backbone": backbone, "init": init,
                     "command": shlex.join(["python", *_command(args, backbone, init)[1:]]),
                     **{s: {k: r["unseen"][s]["metrics"][k] for k in ("AP", "AP50", "f1")}
                        for s in SETS if s in r["unseen"]}})
    result = {"steps": args.steps, "input_size": args.input_size, "batch_size": 2,
              "threads_per_run": 1, "device": "cpu", "machine": platform.processor() or
              platform.machine(), "rows": rows}
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "pretrained_init.json").write_text(json.dumps(result, indent=2))
    head = "| backbone | encoder init | " + " | ".join(
        f"{s} AP | {s} AP50" for s in SETS) + " |"
    lines = [f"Random vs ImageNet encoder, {args.steps} steps of 2 images at {args.input_size} px,"
             " CPU, one thread per run; `last.pt` scored with `napari-iaunet evaluate` on images "
             "no run trained on.", "", head, "|---|---|" + "---|---|" * len(SETS)]
    for row in rows:
        cells = " | ".join(f"{row[s]['AP']:.3f} | {row[s]['AP50']:.3f}" if s in row else "– | –"
                           for s in SETS)
        lines.append(f"| {row['backbone']} | {row['init']} | {cells} |")
    (args.docs / "pretrained_init.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

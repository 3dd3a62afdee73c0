"""Inference speed and memory: IAUNet-R50 against torchvision's Mask R-CNN R50-FPN, same run.

    .venv/bin/python benchmarks/bench_inference.py                  # CPU (2 threads) + GPU if any
    .venv/bin/python benchmarks/bench_inference.py --repeats 7 --no-memory
    .venv/bin/python benchmarks/bench_inference.py --smoke          # every path, tiny, 1 round

Input: one 1080×1080 brightfield-like RGB image (seeded synthetic Revvity-like field of view, see
``_fixtures.py``). IAUNet runs at its default input size (longest side 512, batch 1 and batch 4);
Mask R-CNN at its own defaults (shorter side resized to 800, ≤ 1333) and at 512 (the paper's FLOP
figures are at 512²). Both produce masks at the image's 1080×1080 size. Random weights; the IAUNet
predictions are swapped for ground-truth-shaped ones after the real forward pass so that
post-processing carries a trained model's load, and Mask R-CNN returns the same number of
instances (see ``_fixtures.py``).

CPU cases run interleaved (one call of each per round) with a reference workload that gauges the
machine's load; memory is the peak RSS of one call in a fresh process. GPU cases (when CUDA is
present) are timed with CUDA events and report ``torch.cuda.max_memory_allocated``.
``--checkpoints A.pt B.pt …`` adds two cases per trained checkpoint: the same image segmented by
it with the default settings (its own backbone, input size and detections) and with one view
instead of the default four (``flips``), e.g. the bundled model against a candidate for its
place; ``--checkpoint-image`` gives them a real image.
Writes ``docs/benchmarks/inference.json`` and ``inference.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import _fixtures as fx
from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.inference.flips import DEFAULT_FLIPS
from napari_iaunet.inference.postprocess import postprocess
from napari_iaunet.inference.preprocess import prepare
from napari_iaunet.layers import split_into_layers

BATCH = 4  # "batched" on the CPU
GPU_BATCHES = (8, 32, 64)


# ----------------------------------------------------------------------------------- set-up
class Setup:
    """Everything the cases need, built once (or once per memory subprocess)."""

    def __init__(self, size: int, backbone: str, device: str = "cpu", net_input: int = 512
                 ) -> None:
        self.device = torch.device(device)
        self.size = size
        self.test = fx.brightfield_image(size)
        self.net = fx.iaunet(backbone)
        self.config = self.net.config
        self.oracle = fx.oracle_predictions(self.test.truth, self.config)
        self.wrapped = fx.OracleOutputs(self.net, self.oracle, self.config)
        self.n_cells = len(self.test.truth)
        gen = torch.Generator().manual_seed(1)
        self.net_input = net_input
        self.x1 = torch.randn(1, 3, net_input, net_input, generator=gen).to(self.device)
        self.x4 = torch.randn(BATCH, 3, net_input, net_input, generator=gen).to(self.device)

    def segmenter(self, batch_size: int = 1, amp: bool = False) -> Segmenter:
        # one view: the oracle's outputs do not follow the image, so mirror views cannot agree
        # (the trained checkpoints of --checkpoints are timed with 1 and with the default views)
        return Segmenter(self.wrapped, device=self.device, batch_size=batch_size, amp=amp,
                         settings=PostprocessSettings(), flips=1)

    def runner(self, seg: Segmenter) -> torch.nn.Module:
        """The network the Segmenter really runs (its optimised copy where it makes one)."""
        get = getattr(seg, "inference_model", None)
        model = get() if callable(get) else seg.model
        return model.net if isinstance(model, fx.OracleOutputs) else model


def cpu_cases(s: Setup, with_maskrcnn: bool = True) -> dict[str, Callable[[], Any]]:
    """name → zero-argument callable; the order is the table's."""
    seg1 = s.segmenter(1)
    seg4 = s.segmenter(BATCH)
    runner = s.runner(seg1)
    image = s.test.image
    cfg = s.config
    prepared = prepare(image, cfg.input_size, cfg.pixel_mean, cfg.pixel_std)
    logits, masks = s.oracle["pred_logits"][0], s.oracle["pred_masks"][0]
    instances = seg1.segment(image)

    def fwd(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model(x, with_aux=False)
        return run

    sz = f"{s.size}²"
    cases: dict[str, Callable[[], Any]] = {
        "reference_resnet50": C.calibration_case(),
        "iaunet forward 1x512² (as built)": fwd(s.net, s.x1),
        "iaunet forward 1x512² (Segmenter's network)": fwd(runner, s.x1.contiguous(
            memory_format=torch.channels_last)),
        f"iaunet forward {BATCH}x512²": fwd(runner, s.x4.contiguous(
            memory_format=torch.channels_last)),
        f"iaunet segment {sz} → Instances": lambda: seg1.segment(image),
        f"iaunet segment {sz} → label layers": lambda: split_into_layers(seg1.segment(image)),
        f"iaunet segment {BATCH}x{sz} batched": lambda: seg4.segment_batch([image] * BATCH),
        f"stage: preprocess {sz} → 512²": lambda: prepare(image, cfg.input_size, cfg.pixel_mean,
                                                           cfg.pixel_std),
        "stage: postprocess → Instances": lambda: postprocess(
            logits, masks, (512, 512), prepared.resized_shape, prepared.original_shape),
        "stage: split_into_layers": lambda: split_into_layers(instances),
    }
    if with_maskrcnn:
        x = fx.mask_rcnn_input(image)
        default = fx.mask_rcnn(s.n_cells)
        at512 = fx.mask_rcnn(s.n_cells, min_size=512, max_size=512)
        cases["maskrcnn image → masks (default 800–1333)"] = (
            lambda: fx.mask_rcnn_segment(default, x))
        cases["maskrcnn image → masks (512)"] = lambda: fx.mask_rcnn_segment(at512, x)
    return cases


def checkpoint_cases(paths: list[Path], image: np.ndarray, size: int
                     ) -> dict[str, Callable[[], Any]]:
    """Two cases per checkpoint: ``image`` segmented as the segment widget would (its own
    network, input size and score threshold), with the default views and with one."""
    cases: dict[str, Callable[[], Any]] = {}
    for path in paths:
        for flips in (DEFAULT_FLIPS, 1):
            seg = Segmenter.from_checkpoint(path, device="cpu", flips=flips)
            cfg = seg.model.config
            views = f"{flips} view{'s' if flips > 1 else ''}"
            name = (f"checkpoint {path.parent.name}/{path.name} ({cfg.backbone}, "
                    f"{cfg.input_size} px, {views}): segment {size}² → Instances")
            cases[name] = lambda seg=seg: seg.segment(image)
    return cases


def checkpoint_image(args: argparse.Namespace, s: Setup) -> np.ndarray:
    """The image the checkpoint cases segment: ``--checkpoint-image``, else the test image."""
    if args.checkpoint_image is None:
        return s.test.image
    from napari_iaunet.io.images import read_image

    return read_image(args.checkpoint_image)


def per_item(size: int) -> dict[str, int]:
    return {f"iaunet forward {BATCH}x512²": BATCH, f"iaunet segment {BATCH}x{size}² batched": BATCH}


# ----------------------------------------------------------------------------------- CPU
def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    s = Setup(args.size, args.backbone, net_input=args.input)
    cases = cpu_cases(s, with_maskrcnn=not args.no_maskrcnn)
    trained = checkpoint_cases(args.checkpoints, checkpoint_image(args, s), args.size)
    cases.update(trained)
    # instance counts (a sanity check that both sides return the same load)
    seg = s.segmenter(1)
    counts = {"iaunet": len(seg.segment(s.test.image)), "truth": s.n_cells}
    counts.update({name.split(":")[0]: len(case()) for name, case in trained.items()})
    if not args.no_maskrcnn:
        counts["maskrcnn_default"] = len(cases["maskrcnn image → masks (default 800–1333)"]())
        counts["maskrcnn_512"] = len(cases["maskrcnn image → masks (512)"]())
    print(f"CPU, {args.threads} threads: {len(cases)} cases, {args.repeats} rounds", flush=True)
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1, per_item=per_item(args.size))
    memory: dict[str, Any] = {}
    if not args.no_memory:
        for name in cases:
            if name == "reference_resnet50":
                continue
            print(f"memory: {name}", flush=True)
            memory[name] = C.peak_rss_subprocess(
                __file__, name, ["--size", str(args.size), "--backbone", args.backbone,
                                 "--threads", str(args.threads), "--input", str(args.input),
                                 *(["--checkpoints", *map(str, args.checkpoints)]
                                   if name in trained else []),
                                 *(["--checkpoint-image", str(args.checkpoint_image)]
                                   if name in trained and args.checkpoint_image else [])])
    return {"device": f"CPU ({args.threads} threads)", "run": run, "stats": stats,
            "memory": memory, "instances": counts, "slowdown": C.slowdown(stats),
            "image": s.test.source
            + (f"; the checkpoint cases segment {args.checkpoint_image}"
               if args.checkpoint_image else "")}


def memory_case(args: argparse.Namespace) -> None:
    """Child process: build one case, print its peak RSS as a JSON line."""
    torch.set_num_threads(args.threads)
    s = Setup(args.size, args.backbone, net_input=args.input)
    cases = cpu_cases(s, with_maskrcnn="maskrcnn" in args.memory_case)
    cases.update(checkpoint_cases(args.checkpoints, checkpoint_image(args, s), args.size))
    print(json.dumps(C.peak_rss_of_call(cases[args.memory_case])))


# ----------------------------------------------------------------------------------- GPU
def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """fp32 / bf16 / fp16 autocast, channels-last, batched 512², torch.compile, end-to-end."""
    dev = torch.device("cuda")
    s = Setup(args.size, args.backbone, "cuda", net_input=args.input)
    net = s.net.to(dev).eval()
    rows: dict[str, dict[str, Any]] = {}

    def fwd(model, x, dtype=None) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):
                return model(x, with_aux=False)
        return run

    def record(name: str, fn: Callable[[], Any], items: int = 1, events: bool = True) -> None:
        print(f"gpu: {name}", flush=True)
        try:
            if events:
                st = C.cuda_timed(fn, repeats=args.gpu_repeats, warmup=5)
            else:
                st, _ = C.interleaved({name: fn}, repeats=args.gpu_repeats, warmup=3,
                                      sync=torch.cuda.synchronize, verbose=False)
                st = st[name]
            st.per_item = items
            rows[name] = {**st.summary(), "peak_mb": round(C.cuda_peak_mb(fn), 1)}
        except Exception as exc:  # one failing variant must not hide the others
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print("row " + json.dumps({name: rows[name]}), flush=True)  # survives a killed run

    precisions = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    for label, dtype in precisions.items():
        record(f"forward 1x512² {label}", fwd(net, s.x1, dtype))
    import copy

    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x1_cl = s.x1.contiguous(memory_format=torch.channels_last)
    record("forward 1x512² bf16 channels-last", fwd(net_cl, x1_cl, torch.bfloat16))
    seg = s.segmenter(1, amp=True)
    runner = s.runner(seg)
    record("forward 1x512² Segmenter's network bf16", fwd(runner, s.x1, torch.bfloat16))
    for b in GPU_BATCHES:
        xb = torch.randn(b, 3, 512, 512, device=dev)
        record(f"forward {b}x512² bf16", fwd(net, xb, torch.bfloat16), items=b)
        record(f"forward {b}x512² bf16 channels-last",
               fwd(net_cl, xb.contiguous(memory_format=torch.channels_last), torch.bfloat16),
               items=b)
    try:
        compiled = torch.compile(net_cl)
        xb = torch.randn(GPU_BATCHES[-1], 3, 512, 512, device=dev).contiguous(
            memory_format=torch.channels_last)
        t0 = time.perf_counter()
        fwd(compiled, xb, torch.bfloat16)()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        record(f"forward {GPU_BATCHES[-1]}x512² bf16 channels-last torch.compile",
               fwd(compiled, xb, torch.bfloat16), items=GPU_BATCHES[-1])
        rows[f"forward {GPU_BATCHES[-1]}x512² bf16 channels-last torch.compile"][
            "compile_s"] = round(compile_s, 1)
    except Exception as exc:
        rows["torch.compile"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    image = s.test.image
    for amp in (False, True):
        label = "bf16/fp16 autocast" if amp else "fp32"
        seg = s.segmenter(1, amp=amp)
        record(f"segment 1080² → Instances ({label})", lambda seg=seg: seg.segment(image),
               events=False)
        record(f"segment 1080² → label layers ({label})",
               lambda seg=seg: split_into_layers(seg.segment(image)), events=False)
        segb = s.segmenter(16, amp=amp)
        record(f"segment 16x1080² batched ({label})",
               lambda segb=segb: segb.segment_batch([image] * 16), items=16, events=False)

    x = fx.mask_rcnn_input(image, dev)
    for label, kwargs in (("default 800–1333", {}), ("512", {"min_size": 512, "max_size": 512})):
        mrcnn = fx.mask_rcnn(s.n_cells, **kwargs).to(dev)
        for amp in (False, True):
            def run(m=mrcnn, amp=amp) -> Any:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    return fx.mask_rcnn_segment(m, x)
            record(f"maskrcnn image → masks ({label}, {'bf16' if amp else 'fp32'})", run,
                   events=False)
    return {"device": torch.cuda.get_device_name(0), "rows": rows,
            "note": f"CUDA events, median of {args.gpu_repeats} calls after 5 warm-up calls "
                    "(end-to-end rows: host clock after synchronising, 3 warm-up calls); peak "
                    "MiB = torch.cuda.max_memory_allocated above what was allocated before"}


# ----------------------------------------------------------------------------------- report
def _cpu_table(res: dict[str, Any]) -> str:
    stats: dict[str, C.Stats] = res["stats"]
    ref = stats.get("reference_resnet50")
    mr_default = stats.get("maskrcnn image → masks (default 800–1333)")
    mr_512 = stats.get("maskrcnn image → masks (512)")
    rows = []
    for name, st in stats.items():
        sm = st.summary()
        per = sm.get("median_per_item_s", sm["median_s"])
        mem = res["memory"].get(name, {})
        row = {
            "case": name,
            "median": C.fmt_ms(sm["median_s"]),
            "iqr": C.fmt_ms(sm["iqr_s"]),
            "per_image": C.fmt_ms(per),
            # per round: our time / the reference's time in the same round x its quiet 242 ms
            "quiet": C.fmt_ms(C.QUIET_RESNET50_MS / 1e3 * C.paired_speedup(
                C.Stats(wall=[w / st.per_item for w in st.wall]), ref)["median"])
            if ref is not None else None,
            "mem": mem.get("peak_rss_delta_mb"),
        }
        if name.startswith("iaunet segment") and mr_default is not None:
            # paired: Mask R-CNN's call and ours in the same round, per image
            for key, mr in (("vs_mr", mr_default), ("vs_mr512", mr_512)):
                ours = C.Stats(wall=[w / st.per_item for w in st.wall])
                p = C.paired_speedup(mr, ours)
                row[key] = f"{p['median']:.2f}x [{p['q1']:.2f}–{p['q3']:.2f}]"
        rows.append(row)
    cols = [("case", "case"), ("median", "median ms"), ("iqr", "IQR ms"),
            ("per_image", "per image ms"), ("quiet", "quiet-machine estimate ms"),
            ("mem", "peak RSS Δ MiB"), ("vs_mr", "speed-up vs Mask R-CNN (800) [IQR]"),
            ("vs_mr512", "speed-up vs Mask R-CNN (512) [IQR]")]
    return C.md_table(rows, cols)


def _gpu_table(res: dict[str, Any]) -> str:
    rows = []
    for name, r in res["rows"].items():
        if "error" in r:
            rows.append({"case": name, "note": r["error"]})
            continue
        rows.append({"case": name, "median": C.fmt_ms(r["median_s"]),
                     "per_image": C.fmt_ms(r.get("median_per_item_s", r["median_s"])),
                     "ips": round(r["items_per_s"], 1) if "items_per_s" in r else None,
                     "mem": r.get("peak_mb"), "note": f"compile {r['compile_s']} s"
                     if "compile_s" in r else ""})
    return C.md_table(rows, [("case", "case"), ("median", "median ms"),
                             ("per_image", "per image ms"), ("ips", "images/s"),
                             ("mem", "peak MiB"), ("note", "note")])


def markdown(payload: dict[str, Any]) -> str:
    info = payload["machine"]
    cpu = payload["cpu"]
    lines = [
        f"# Inference benchmark: IAUNet-{payload.get('backbone', 'resnet50')}"
        + (" vs Mask R-CNN R50-FPN" if payload.get("maskrcnn", True) else "")
        + (" and trained checkpoints" if payload.get("checkpoints") else ""),
        "",
        f"Command: `{payload['command']}`  ",
        f"Date (UTC): {info['date_utc']}; torch {info['torch']}, torchvision "
        f"{info['torchvision']}, timm {info['timm']}.  ",
        f"Image: {payload['size']}×{payload['size']} RGB"
        + (f", instances {cpu['instances']}; {cpu['image']}." if cpu["instances"] else "."),
        "",
    ]
    if cpu["stats"]:  # a --no-cpu run has GPU rows only
        lines += _cpu_section(cpu, info)
    lines += ["## GPU", ""]
    if payload.get("gpu") is None:
        lines.append(C.NO_GPU + ".")
    else:
        lines += [f"Device: {payload['gpu']['device']}; {payload['gpu'].get('note', '')}", "",
                  _gpu_table(payload["gpu"])]
    return "\n".join(lines)


def _cpu_section(cpu: dict[str, Any], info: dict[str, Any]) -> list[str]:
    return [
        f"## {cpu['device']} — {info['host_cpu']}, {info['logical_cpus']} logical CPUs, shared",
        "",
        f"Load average before/after: {cpu['run']['load_before']} / {cpu['run']['load_after']}; "
        f"{cpu['run']['repeats']} interleaved rounds after 1 warm-up. The reference workload "
        f"(ResNet-50 features, 242 ms on a quiet machine) ran {cpu['slowdown']:.2f}× slower "
        "(median); the quiet-machine column scales each case by the reference's time in the "
        "same round (median over rounds) — an estimate, best for convolution-heavy cases. "
        "Speed-ups vs Mask R-CNN are medians of per-round ratios (per image), IQR in brackets."
        if cpu.get("slowdown") else "",
        "",
        _cpu_table(cpu),
        "",
        "Mask R-CNN returns masks pasted at 1080×1080 (its own post-processing, then `> 0.5`); "
        "IAUNet returns `Instances` (per-cell crops) at 1080×1080. Peak RSS Δ: one call in a "
        "fresh process after one warm-up call.",
        "",
    ]


def render(name: str) -> None:
    payload = json.loads((C.RESULTS_DIR / f"{name}.json").read_text())
    cpu = payload["cpu"]
    cpu["stats"] = {k: C.stats_from_summary(v) for k, v in cpu["stats"].items()}
    payload.setdefault("size", fx.IMAGE_SIZE)
    (C.RESULTS_DIR / f"{name}.md").write_text(markdown(payload).rstrip() + "\n")  # JSON untouched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=fx.IMAGE_SIZE)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--input", type=int, default=512, help="forward-case input side")
    parser.add_argument("--no-maskrcnn", action="store_true")
    parser.add_argument("--checkpoints", type=Path, nargs="*", default=[],
                        help="trained checkpoints to time on the same image (one case each)")
    parser.add_argument("--checkpoint-image", type=Path, default=None,
                        help="image the --checkpoints cases segment (default: the synthetic test "
                             "image; a trained model's load depends on what it finds)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-cpu", action="store_true", help="GPU rows only")
    parser.add_argument("--smoke", action="store_true",
                        help="every path once on a 256² image with resnet18 (a check, not data)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true",
                        help="rewrite the markdown from the JSON of the last run (no measuring)")
    parser.add_argument("--name", default="inference")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.backbone, args.repeats, args.gpu_repeats = 256, "resnet18", 1, 2
        args.input = 128
        args.name = "inference_smoke"
    if args.memory_case:
        memory_case(args)
        return
    if args.render:
        render(args.name)
        return
    payload: dict[str, Any] = {"machine": C.machine_info(), "command": C.command_line(),
                               "size": args.size, "backbone": args.backbone,
                               "maskrcnn": not args.no_maskrcnn,
                               "checkpoints": [str(c) for c in args.checkpoints]}
    payload["cpu"] = None if args.no_cpu else run_cpu(args)
    payload["gpu"] = run_gpu(args) if torch.cuda.is_available() else None
    payload["load_average_end"] = C.loadavg()
    if payload["cpu"] is None:
        payload["cpu"] = {"device": "CPU", "instances": {}, "image": "", "run": {
            "load_before": [], "load_after": [], "repeats": 0}, "stats": {}, "memory": {}}
    C.write_results(args.name, payload, markdown(payload))
    if np.isfinite(payload["cpu"].get("slowdown") or np.nan):
        print(f"machine slowdown vs quiet: {payload['cpu']['slowdown']:.2f}x")


if __name__ == "__main__":
    main()

"""Before/after figures of every speed change tried on the inference path, on the CPU (the GPU
variants are rows of bench_inference.py). Each section times its variants interleaved in one
process; on a busy machine run it with ``--threads 1`` (see docs/performance.md).

    .venv/bin/python benchmarks/bench_optimisations.py                 # all sections
    .venv/bin/python benchmarks/bench_optimisations.py --only postprocess,forward --repeats 7

Sections: forward (BatchNorm folding, conv+ReLU fusion, channels-last, aux heads, inference_mode),
threads, batch (per-image cost of batching on the CPU), bf16
(CPU autocast: time and output error), attention (fused SDPA vs the unfused math path, and which
kernel runs), compile (torch.compile: compile time and steady state), postprocess (per-instance
grid_sample loop of the previous version vs the separable numpy path vs the batched device path),
segment (whole image → layers, previous version vs current). Writes docs/benchmarks/optimisations.*.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import _fixtures as fx
from napari_iaunet.inference import postprocess as pp
from napari_iaunet.inference.preprocess import prepare
from napari_iaunet.model.fuse import fold_batchnorm, fuse_conv_relu

SECTIONS = ("forward", "threads", "batch", "bf16", "attention", "compile", "postprocess",
            "segment")


def _forward(model: torch.nn.Module, x: torch.Tensor, with_aux: bool = False,
             grad_mode: str = "inference") -> Any:
    ctx = torch.inference_mode() if grad_mode == "inference" else torch.no_grad()
    with ctx:
        return model(x, with_aux=with_aux)


def inference_network(model: torch.nn.Module) -> torch.nn.Module:
    """What ``Segmenter`` runs on the CPU: BatchNorm folded, conv + ReLU fused, channels-last
    (feed it channels-last input, as the Segmenter does)."""
    folded, _ = fold_batchnorm(model)
    return fuse_conv_relu(folded)[0].to(memory_format=torch.channels_last)


def _channels_last(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _rows(stats: dict[str, C.Stats], baseline: str, notes: dict[str, str] | None = None
          ) -> list[dict[str, Any]]:
    base = stats[baseline]
    out = []
    for name, st in stats.items():
        q1, _, q3 = C.Stats._quartiles(st.wall)
        paired = C.paired_speedup(base, st)
        out.append({"variant": name, "median_ms": C.fmt_ms(st.median),
                    "iqr_ms": C.fmt_ms(q3 - q1), "min_ms": C.fmt_ms(min(st.wall)),
                    "cpu_ms": C.fmt_ms(st.median_cpu),
                    "vs_baseline": f"{base.median / st.median:.2f}x",
                    "paired": f"{paired['median']:.2f}x [{paired['q1']:.2f}–{paired['q3']:.2f}]",
                    "paired_cpu": f"{paired['cpu_median']:.2f}x",
                    "note": (notes or {}).get(name, "")})
    return out


# ----------------------------------------------------------------------------------- sections
def section_forward(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    folded, n_folded = fold_batchnorm(model)
    fused, n_fused = fuse_conv_relu(folded)
    cl = _channels_last(model)
    folded_cl = _channels_last(folded)
    fused_cl = _channels_last(fused)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases = {
        "reference_resnet50": C.calibration_case(),
        "baseline (eager fp32, inference_mode, no aux heads)": lambda: _forward(model, x),
        "with aux heads (9 mask heads)": lambda: _forward(model, x, with_aux=True),
        "no_grad instead of inference_mode": lambda: _forward(model, x, grad_mode="no_grad"),
        "BatchNorm folded": lambda: _forward(folded, x),
        "BatchNorm folded + conv-ReLU fused": lambda: _forward(fused, x),
        "channels-last": lambda: _forward(cl, x_cl),
        "BatchNorm folded + channels-last": lambda: _forward(folded_cl, x_cl),
        "folded + fused + channels-last (Segmenter on CPU)": lambda: _forward(fused_cl, x_cl),
    }
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    base = "baseline (eager fp32, inference_mode, no aux heads)"
    return {"run": run, "bn_pairs_folded": n_folded, "conv_relu_pairs_fused": n_fused,
            "stats": stats,
            "rows": _rows(stats, base, {"reference_resnet50": "load gauge (242 ms quiet)"}),
            "slowdown": C.slowdown(stats)}


def section_threads(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    folded = inference_network(model)
    x = x.contiguous(memory_format=torch.channels_last)

    def with_threads(n: int):
        def run() -> None:
            torch.set_num_threads(n)
            try:
                _forward(folded, x)
            finally:
                torch.set_num_threads(args.threads)
        return run

    cases = {"2 threads": with_threads(2), "1 thread": with_threads(1)}
    # the 1-thread run is also the least disturbed by other processes on a busy machine
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    return {"run": run, "stats": stats, "rows": _rows(stats, "2 threads")}


def section_batch(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    """Per-image cost of batching on the CPU: forward 1 vs 4 images, and segment_batch of four
    1080² images with batch_size 1 vs 4 (the Segmenter's default used to be 4 everywhere)."""
    from napari_iaunet.inference import Segmenter

    net = inference_network(model)
    gen = torch.Generator().manual_seed(1)
    cl = torch.channels_last
    x1 = torch.randn(1, 3, 512, 512, generator=gen).contiguous(memory_format=cl)
    x4 = torch.randn(4, 3, 512, 512, generator=gen).contiguous(memory_format=cl)
    test = fx.brightfield_image()
    wrapped = fx.OracleOutputs(model, fx.oracle_predictions(test.truth, model.config),
                               model.config)
    # the oracle's outputs do not follow the image, so its mirror views would not agree: one view
    seg1 = Segmenter(wrapped, device="cpu", batch_size=1, flips=1)
    seg4 = Segmenter(wrapped, device="cpu", batch_size=4, flips=1)
    images = [test.image] * 4
    cases = {
        "forward 1x512² (x4 calls)": lambda: [_forward(net, x1) for _ in range(4)],
        "forward 4x512² (1 call)": lambda: _forward(net, x4),
        "segment_batch 4x1080², batch_size=1": lambda: seg1.segment_batch(images),
        "segment_batch 4x1080², batch_size=4": lambda: seg4.segment_batch(images),
    }
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    rows = _rows(stats, "forward 1x512² (x4 calls)")
    seg_rows = _rows({k: v for k, v in stats.items() if k.startswith("segment")},
                     "segment_batch 4x1080², batch_size=1")
    return {"run": run, "stats": stats, "rows": rows[:2] + seg_rows}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def section_bf16(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    folded, _ = fold_batchnorm(model)  # the fused conv+ReLU op has no bf16 autocast rule

    def bf16() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _forward(folded, x)

    outputs: dict[str, Any] = {}

    def keep(name: str, fn):
        def run() -> None:
            outputs[name] = fn()
        return run

    # bf16 has no native support on AVX2-only CPUs (no AVX512-BF16 / AMX): one call can take
    # minutes there, so this section takes one untimed fp32 call, then ``--bf16-repeats`` rounds
    _forward(folded, x)
    cases = {"fp32": keep("fp32", lambda: _forward(folded, x)),
             "bf16 autocast": keep("bf16", bf16)}
    stats, run = C.interleaved(cases, repeats=args.bf16_repeats, warmup=0)
    ref, low = outputs["fp32"], outputs["bf16"]
    accuracy = {
        "pred_masks_rel_err": _relative_error(ref["pred_masks"], low["pred_masks"]),
        "pred_logits_rel_err": _relative_error(ref["pred_logits"], low["pred_logits"]),
        "mask_pixels_flipped": float(((ref["pred_masks"] > 0) != (low["pred_masks"] > 0))
                                     .float().mean()),
        "note": "random weights: output error of the network, not an AP difference",
    }
    return {"run": run, "stats": stats, "accuracy": accuracy, "rows": _rows(stats, "fp32")}


def section_attention(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    folded = inference_network(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _forward(folded, x)
    kernels = {e.key: e.count for e in prof.key_averages()
               if "attention" in e.key or e.key in ("aten::softmax", "aten::_softmax",
                                                    "aten::bmm", "aten::baddbmm")}

    def math_path() -> None:
        with sdpa_kernel([SDPBackend.MATH]):
            _forward(folded, x)

    cases = {"fused SDPA (default)": lambda: _forward(folded, x), "math path (unfused)": math_path}
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    return {"run": run, "stats": stats, "kernels_in_one_forward": kernels,
            "rows": _rows(stats, "fused SDPA (default)")}


def section_compile(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    folded = inference_network(model)
    try:
        compiled = torch.compile(model)  # inductor folds and fuses by itself
        t0 = time.perf_counter()
        out_c = _forward(compiled, x)
        compile_s = time.perf_counter() - t0
    except Exception as exc:  # report, do not fail the other sections
        return {"error": f"torch.compile failed: {type(exc).__name__}: {exc}"[:500]}
    out_e = _forward(folded, x)
    err = _relative_error(out_e["pred_masks"], out_c["pred_masks"])
    cases = {"eager (Segmenter's fused network)": lambda: _forward(folded, x),
             "torch.compile (inductor)": lambda: _forward(compiled, x)}
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    gain = (stats["eager (Segmenter's fused network)"].median
            - stats["torch.compile (inductor)"].median)
    return {"run": run, "stats": stats, "compile_s": compile_s, "pred_masks_rel_err": err,
            "images_to_repay_compile": (compile_s / gain) if gain > 0 else None,
            "rows": _rows(stats, "eager (Segmenter's fused network)",
                          {"torch.compile (inductor)": f"first call {compile_s:.1f} s"})}


def section_postprocess(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    old = C.module_at_commit("src/napari_iaunet/inference/postprocess.py", "_postprocess_before",
                             "napari_iaunet.inference")
    test = fx.brightfield_image()
    cfg = model.config
    prepared = prepare(test.image, cfg.input_size, cfg.pixel_mean, cfg.pixel_std)
    oracle = fx.oracle_predictions(test.truth, cfg)
    loads = {
        f"1080² brightfield, {len(test.truth)} cells": (
            oracle, (512, 512), prepared.resized_shape, prepared.original_shape),
        "1024² nuclei, 1000 instances (1000 queries)": (
            fx.blob_predictions(1000, (128, 128), 1000, radius=2.2), (512, 512), (512, 512),
            (1024, 1024)),
    }
    settings = pp.PostprocessSettings()
    out: dict[str, Any] = {}
    for load_name, (pred, padded, resized, original) in loads.items():
        logits, masks = pred["pred_logits"][0], pred["pred_masks"][0]

        def run(fn=pp.postprocess, logits=logits, masks=masks, padded=padded, resized=resized,
                original=original):
            return fn(logits, masks, padded, resized, original, settings)

        def batched(run=run):
            saved = pp._host_path
            pp._host_path = lambda device: False
            try:
                return run()
            finally:
                pp._host_path = saved

        cases = {}
        if old is not None:
            cases["before: grid_sample per instance (torch)"] = lambda run=run: run(old.postprocess)
        cases["after: separable resampling in numpy (CPU default)"] = run
        cases["batched padded boxes in torch (GPU path, run on CPU)"] = batched
        print(f"postprocess: {load_name}")
        stats, run_info = C.interleaved(cases, repeats=args.repeats * 2, warmup=1)
        counts = {name: len(fn()) for name, fn in cases.items()}
        base = next(iter(cases))
        out[load_name] = {"run": run_info, "stats": stats, "instances": counts,
                          "rows": _rows(stats, base)}
    return out


def section_segment(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    """Whole image → label layers, the previous version (HEAD before this work) vs now."""
    from napari_iaunet.inference import Segmenter
    from napari_iaunet.layers import split_into_layers

    old_pp = C.module_at_commit("src/napari_iaunet/inference/postprocess.py",
                                "_postprocess_before", "napari_iaunet.inference")
    old_seg = C.module_at_commit("src/napari_iaunet/inference/segmenter.py", "_segmenter_before",
                                 "napari_iaunet.inference")
    if old_pp is None or old_seg is None:
        return {"error": "git history not available"}
    old_seg.postprocess = old_pp.postprocess
    test = fx.brightfield_image()
    oracle = fx.oracle_predictions(test.truth, model.config)
    wrapped = fx.OracleOutputs(model, oracle, model.config)
    before = old_seg.Segmenter(wrapped, device="cpu")
    after = Segmenter(wrapped, device="cpu", flips=1)  # one view, as before (oracle outputs)
    cases = {
        "before (previous version)": lambda: split_into_layers(before.segment(test.image)),
        "after (current)": lambda: split_into_layers(after.segment(test.image)),
    }
    stats, run = C.interleaved(cases, repeats=args.repeats, warmup=1)
    n = {k: len(before.segment(test.image)) if "before" in k else len(after.segment(test.image))
         for k in cases}
    return {"run": run, "stats": stats, "instances": n, "rows": _rows(stats, next(iter(cases)))}


# ----------------------------------------------------------------------------------- main
def _markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    lines = ["# Speed changes, before and after", "",
             f"Device: {info['host_cpu']}, {info['logical_cpus']} logical CPUs (shared), "
             f"torch {info['torch']}, {info['torch_threads']} threads. "
             f"Command: `{C.command_line()}`. Interleaved rounds; speed-ups are baseline / variant "
             "(> 1 is faster): ratio of medians, and the median of per-round ratios (paired: "
             "both ran back to back, so slow load changes cancel).", ""]
    cols = [("variant", "variant"), ("median_ms", "median ms"), ("iqr_ms", "IQR ms"),
            ("min_ms", "min ms"), ("cpu_ms", "CPU ms"), ("vs_baseline", "ratio of medians"),
            ("paired", "paired speed-up [IQR]"), ("paired_cpu", "paired CPU-time speed-up"),
            ("note", "note")]
    for name, res in results.items():
        lines.append(f"## {name}")
        if "error" in res:
            lines += ["", res["error"], ""]
            continue
        subsections = res.items() if "rows" not in res else [(None, res)]
        for sub, r in subsections:
            if sub:
                lines.append(f"\n**{sub}**")
            if "run" in r:
                lines.append(f"\nload average before/after: {r['run']['load_before']} / "
                             f"{r['run']['load_after']}; {r['run']['repeats']} rounds\n")
            lines.append(C.md_table(r["rows"], cols))
            extra = {k: v for k, v in r.items() if k not in ("rows", "stats", "run")}
            if extra:
                lines.append("\n" + "; ".join(f"{k}: {v}" for k, v in extra.items()))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16-repeats", type=int, default=1)
    parser.add_argument("--name", default="optimisations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = C.machine_info()
    model = fx.iaunet()
    results: dict[str, Any] = {}
    for section in args.only.split(","):
        print(f"== {section}", flush=True)
        results[section] = globals()[f"section_{section}"](args, model)
    payload = {"machine": info, "command": C.command_line(), "results": results,
               "load_average_end": C.loadavg()}
    C.write_results(args.name, payload, _markdown(results, info))


if __name__ == "__main__":
    main()

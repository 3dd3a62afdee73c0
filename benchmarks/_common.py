"""Shared helpers of the benchmark scripts: timing, memory, machine facts, result files.

Every script in this folder runs as ``python benchmarks/<script>.py`` from the repository root and
writes ``docs/benchmarks/<name>.json`` (every sample) and ``docs/benchmarks/<name>.md`` (a table).

Measuring on a shared, noisy machine:

* the cases compared with each other run **interleaved** in one process (round-robin, one call of
  each case per round), so a burst of load from another process hits all of them alike; we quote
  medians, the inter-quartile range and ratios of medians;
* the load average is recorded before and after each comparison;
* wall time is the headline; process CPU time (user + system of this process) is recorded too;
* a fixed reference workload (timm ResNet-50 features, 1x3x512x512, 2 threads, fp32), whose time
  on a quiet machine of this kind is known (242 ms, ``../shared/docs/environment.md``), can run in
  the same rounds; ``slowdown = measured / 242 ms`` says how loaded the machine was, and
  ``time / slowdown`` estimates the quiet-machine figure (labelled as an estimate).

Memory:

* CPU: peak resident memory of one call, measured in a **fresh subprocess** (model built, one
  warm-up call, then the peak RSS counter ``VmHWM`` is reset and one call measured; glibc is told to
  return freed blocks to the system so the warm-up's freed memory does not hide the peak);
  pure-numpy work is measured in-process with :mod:`tracemalloc` (numpy reports its buffers to it);
* GPU: ``torch.cuda.max_memory_allocated`` around one call (after ``reset_peak_memory_stats``).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "benchmarks"
QUIET_RESNET50_MS = 242.0  # timm resnet50 features 512², 2 threads, fp32 (environment.md)
NO_GPU = "not measured: no GPU in this session"


# ----------------------------------------------------------------------------------- statistics
@dataclass
class Stats:
    """Samples of one case (seconds) and their summary."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    per_item: int = 1  # items per call (batch size): per-item figures divide by it

    @staticmethod
    def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
        if len(xs) == 1:
            return xs[0], xs[0], xs[0]
        q = statistics.quantiles(xs, n=4, method="inclusive")
        return q[0], statistics.median(xs), q[2]

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def summary(self) -> dict[str, Any]:
        q1, med, q3 = self._quartiles(self.wall)
        out = {
            "n": len(self.wall),
            "median_s": med,
            "q1_s": q1,
            "q3_s": q3,
            "iqr_s": q3 - q1,
            "min_s": min(self.wall),
            "median_cpu_s": self.median_cpu if self.cpu else None,
            "samples_s": [round(x, 6) for x in self.wall],
            "cpu_samples_s": [round(x, 6) for x in self.cpu],
        }
        if self.per_item > 1:
            out["items_per_call"] = self.per_item
            out["median_per_item_s"] = med / self.per_item
            out["items_per_s"] = self.per_item / med
        return out


def paired_speedup(base: Stats, other: Stats) -> dict[str, float]:
    """Speed-up of ``other`` over ``base`` from the rounds where both ran back to back: the median
    (and quartiles) of ``base[r] / other[r]``. Load that changes slowly cancels in each ratio, so
    this is steadier than a ratio of medians on a busy machine."""
    ratios = [b / o for b, o in zip(base.wall, other.wall) if o > 0]
    q1, med, q3 = Stats._quartiles(ratios)
    cpu = [b / o for b, o in zip(base.cpu, other.cpu) if o > 0]
    return {"median": med, "q1": q1, "q3": q3,
            "cpu_median": statistics.median(cpu) if cpu else float("nan")}


def stats_from_summary(summary: Mapping[str, Any]) -> Stats:
    """Rebuild :class:`Stats` from its :meth:`Stats.summary` (as stored in the JSON files)."""
    return Stats(wall=list(summary["samples_s"]), cpu=list(summary.get("cpu_samples_s", [])),
                 per_item=int(summary.get("items_per_call", 1)))


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def interleaved(
    cases: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    per_item: Mapping[str, int] | None = None,
    verbose: bool = True,
) -> tuple[dict[str, Stats], dict[str, Any]]:
    """Time every case ``repeats`` times, round-robin, after ``warmup`` untimed calls of each.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read. Returns the stats per
    case and run facts (load average before/after, rounds).
    """
    per_item = dict(per_item or {})
    stats = {name: Stats(per_item=per_item.get(name, 1)) for name in cases}
    load_before = loadavg()
    for _ in range(warmup):
        for fn in cases.values():
            fn()
            if sync:
                sync()
    for r in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            if sync:
                sync()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            if sync:
                sync()
            t1, c1 = time.perf_counter(), time.process_time()
            stats[name].wall.append(t1 - t0)
            stats[name].cpu.append(c1 - c0)
        if verbose:
            line = "  ".join(f"{n}={stats[n].wall[-1] * 1e3:.0f}ms" for n in cases)
            print(f"  round {r + 1}/{repeats} load={loadavg()[:1]}: {line}", flush=True)
    return stats, {"load_before": load_before, "load_after": loadavg(), "repeats": repeats,
                   "warmup": warmup}


def cuda_timed(fn: Callable[[], Any], repeats: int = 20, warmup: int = 5) -> Stats:
    """GPU timing with CUDA events (median of ``repeats`` after ``warmup`` calls)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = Stats()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.wall.append(start.elapsed_time(end) / 1e3)
    return out


# ----------------------------------------------------------------------------------- memory
def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` value in bytes (VmRSS, VmHWM); -1 where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def rss_bytes() -> int:
    return _proc_status("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_of_call(fn: Callable[[], Any], warmup: int = 1) -> dict[str, Any]:
    """Peak RSS above the pre-call RSS of one ``fn()`` call (run this in a fresh process)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    if not reset_peak_rss():
        return {"peak_rss_delta_mb": None, "note": "no /proc/self/clear_refs here"}
    before = rss_bytes()
    fn()
    peak = _proc_status("VmHWM")
    return {
        "peak_rss_delta_mb": round((peak - before) / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "rss_before_mb": round(before / 2**20, 1),
    }


MEMORY_ENV = {  # glibc: return every freed block above 64 KiB to the system at once
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
}


def peak_rss_subprocess(script: str | Path, case: str, extra_args: Sequence[str] = (),
                        timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --memory-case CASE`` in a fresh interpreter and parse its last JSON line."""
    env = {**os.environ, **MEMORY_ENV}
    cmd = [sys.executable, str(script), "--memory-case", case, *extra_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"peak_rss_delta_mb": None, "error": "timeout"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"peak_rss_delta_mb": None, "error": (proc.stderr or proc.stdout)[-500:]}


def tracemalloc_peak(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(result, peak MiB)`` of Python/numpy allocations during ``fn()`` (torch CPU not seen)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 2**20


def cuda_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak ``torch.cuda.max_memory_allocated`` above the allocated memory before ``fn()``."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ----------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """Facts that make a figure reproducible: hardware, library versions, threads, load."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "load_average": loadavg(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception:  # pragma: no cover - reported, not needed
        info["torchvision"] = None
    try:
        import timm

        info["timm"] = timm.__version__
    except Exception:  # pragma: no cover
        info["timm"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["gpu"] = None
    return info


def set_cpu_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def calibration_case() -> Callable[[], Any]:
    """The reference workload: timm ResNet-50 features of one 512² image (fp32)."""
    import timm
    import torch

    net = timm.create_model("resnet50", features_only=True, pretrained=False).eval()
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))

    def run() -> None:
        with torch.inference_mode():
            net(x)

    return run


def slowdown(stats: Mapping[str, Stats], name: str = "reference_resnet50") -> float | None:
    """How much slower than a quiet machine the reference workload ran (None if not timed)."""
    if name not in stats:
        return None
    return stats[name].median * 1e3 / QUIET_RESNET50_MS


# ----------------------------------------------------------------------------------- output
def fmt_ms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: ``columns`` are ``(key, header)`` pairs; missing values print as –."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key)
            cells.append("–" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(name: str, payload: Mapping[str, Any], markdown: str,
                  out_dir: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``.md`` (default ``docs/benchmarks``); returns both."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Stats):
        return value.summary()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def add_image_choice(p: Any) -> None:
    """``--max-images N`` and ``--images NAMES`` for a benchmark over a COCO folder."""
    p.add_argument("--max-images", type=int, default=None,
                   help="only the first N images (CPU time)")
    p.add_argument("--images", default=None,
                   help="only these images: comma-separated file names (e.g. the ones a model "
                        "did not train on)")


def chosen_images(entries: Sequence[Any], args: Any) -> list[Any]:
    """The ``(image entry, …)`` items of :func:`coco_to_instances` that ``--images`` and
    ``--max-images`` choose (an unknown name is an error, not an empty result)."""
    entries = list(entries)
    if args.images:
        names = [n.strip() for n in args.images.split(",") if n.strip()]
        known = {e[0]["file_name"] for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"--images: not in the annotations: {', '.join(unknown)}")
        entries = [e for e in entries if e[0]["file_name"] in names]
    return entries[: args.max_images]


def command_line() -> str:
    """How this script was run, for the result files."""
    args = " ".join(sys.argv[1:])
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return f".venv/bin/python {script} {args}".strip()


# ----------------------------------------------------------------------------------- baselines
BASELINE_COMMIT = "dbb0214"  # the code before this benchmark work (for before/after figures)


def module_at_commit(path: str, name: str, package: str, commit: str = BASELINE_COMMIT):
    """Import ``path`` as it was at git ``commit`` (module ``name`` inside ``package``), so that a
    before/after comparison runs both versions in one process. None if git cannot show it."""
    import importlib.util

    try:
        source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(f"{package}.{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[module.__name__] = module
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module

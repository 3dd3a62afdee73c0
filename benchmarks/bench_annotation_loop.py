"""The annotation loop, played by the ground truth: edits per 100 cells, round after round.

    .venv/bin/python benchmarks/bench_annotation_loop.py --data ../shared/data/isbi2014 \\
        --images isbi_25.tif,isbi_26.tif,isbi_27.tif --rounds 2 [--weights W] [--out DIR]

An annotator works through the images in order. Round k segments image k with the current model
(the default settings, as the segment widget) and counts the **edits** that turn the result into
the ground truth (:func:`napari_iaunet.evaluation.edits.count_edits`: delete each false
detection; add each missed cell, by one click where the model's own candidate under it fits at
IoU ≥ 0.5, else by drawing; redraw each matched cell below IoU 0.75). The ground truth then
stands for the corrected image: the model is fine-tuned on every corrected image so far with the
fine-tune widget's recipe (:func:`napari_iaunet.training.finetune.run_finetune`, including the
held-back check that keeps the start model when the fine-tune is worse there, and a quarter
more steps on the whole images, strip included, when it is not), and the model the check chose
goes on to the next round, with the score threshold that needed the fewest edits on the
held-back part (as *Use this model* sets it; ``--keep-threshold``: always 0.5). After
each round the images not used yet are scored: edits per 100 cells, AP50 and F1 (IoU 0.5; F1
counts the detections above the threshold in use; AP ranks every detection above 0.05).
``--recipe thorough`` replays the earlier recipe instead; ``--steps``, ``--lr``, ``--points``,
``--whole-network``, ``--no-hold-back`` and ``--no-refit`` change one thing of the recipe (the
options measured in docs/finetune.md).

Writes ``<out>/annotation_loop_<name>.json`` and ``.md``. Without ``--data``, ``--plot-from``
result files are summed up: ``--plot FILE`` draws edits per 100 cells against rounds, and
``<out>/annotation_loop.json`` / ``.md`` hold one table of every round of every file.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DEFAULT_WEIGHTS = C.REPO / "weights" / "iaunet_default.pt"


AP_SCORE = 0.05  # detections ranked by AP (as validation); edits and F1 use the threshold


def _score(seg: Any, items: list[Any], threshold: float, per_image: bool = False
           ) -> dict[str, Any]:
    """Edits and F1 of the detections at ``threshold`` and AP / AP50 of all of them (the
    segmenter keeps every one above :data:`AP_SCORE`); ``per_image`` adds each image's edits."""
    import numpy as np

    from napari_iaunet.evaluation import evaluate
    from napari_iaunet.evaluation.edits import Edits, count_edits

    edits, preds, truth, each = Edits(), [], [], {}
    for item in items:
        found, cands = seg.segment(item.load_raw(), candidates=True)
        shown = found[np.flatnonzero(found.scores >= threshold)] if len(found) else found
        mine = count_edits(item.instances, shown, cands)
        each[item.name] = mine.to_dict()
        edits = edits + mine
        preds.append(found)
        truth.append(item.instances)
    m = evaluate(truth, preds, score_threshold=threshold) if items else {}
    out = {"images": len(items), "edits": edits.to_dict(),
           "AP": round(m["AP"], 4) if m else None, "AP50": round(m["AP50"], 4) if m else None,
           "f1": round(m["f1"], 4) if m else None}
    if per_image:
        out["per_image"] = each
    return out


def play(data: Any, weights: Path, rounds: int, settings: Any, work: Path, device: str,
         name: str, calibrate: bool = True, check_views: int | None = None
         ) -> list[dict[str, Any]]:
    """Run the loop on the annotated images ``data`` (in order); one record per round. With
    ``calibrate`` the score threshold each fine-tune found on its held-back part is used from
    the next round on (as *Use this model* sets it in the segment widget). ``check_views``: the
    views the held-back check segments with (None: the library's default, as the segmenting)."""
    from napari_iaunet.inference import PostprocessSettings, Segmenter
    from napari_iaunet.training import AnnotatedImages
    from napari_iaunet.training.finetune import make_train_config, run_finetune

    settings.device = device
    current = weights
    threshold = PostprocessSettings().score_threshold
    records = []
    ranked = PostprocessSettings(score_threshold=AP_SCORE)
    seg = Segmenter.from_checkpoint(current, device=device, settings=ranked)
    rest = _score(seg, data.items, threshold, per_image=True)
    records.append({"round": 0, "model": str(current), "unused_before": rest})
    print(f"{name} start: unused images {rest}", flush=True)
    for k in range(1, rounds + 1):
        if k > len(data) - 1:
            break
        image = data.items[k - 1]
        now = _score(seg, [image], threshold)
        before = _score(seg, data.items[k:], threshold)  # the images after k, before the round
        corrected = AnnotatedImages(data.items[:k], [{"source": name, "images": k}])
        out = work / f"{name}_round{k}"
        config = make_train_config(settings, out, input_size=seg.model.config.input_size)
        config.overwrite = True
        t0 = time.perf_counter()
        outcome = run_finetune(corrected, config, start=current, hold_back=settings.hold_back,
                               score_threshold=threshold, refit_steps=settings.refit_steps,
                               blend=settings.blend, views=check_views)
        wall = time.perf_counter() - t0
        current = outcome.model_path
        if calibrate and outcome.threshold is not None:
            threshold = outcome.threshold.value
        seg = Segmenter.from_checkpoint(current, device=device, settings=ranked)
        after = _score(seg, data.items[k:], threshold)
        record = {
            "round": k, "image": image.name, "image_edits": now,
            "finetune_s": round(wall, 1), "estimate_s": round(outcome.estimate_s or 0, 1),
            "steps": outcome.result.steps, "device": str(config.device),
            "refit_steps": outcome.refit.steps if outcome.refit_done else 0,
            "blend": settings.blend if outcome.blended is not None else None,
            "blend_held_back": outcome.blend_metrics,
            "verdict": outcome.verdict.to_dict() if outcome.verdict else None,
            "notes": outcome.notes, "model": str(current), "score_threshold": threshold,
            "threshold_check": outcome.threshold.to_dict() if outcome.threshold else None,
            "unused_before": before,
            "unused_after": after,
        }
        records.append(record)
        check = outcome.verdict.sentence().rstrip(".") if outcome.verdict else "no check"
        print(f"{name} round {k}: {image.name} needed {now['edits']['per_100_cells']} edits/100 "
              f"cells; fine-tune {wall:.0f} s (estimate {record['estimate_s']} s); {check}; "
              f"unused images: {after}", flush=True)
    return records


def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per round of a run (round 0: the start model on every image)."""
    rows = []
    for r in records:
        if r["round"] == 0:
            u = r["unused_before"]
            rows.append({"round": 0, "image": "", "edits": "", "start": "", "wall": "",
                         "kept": "", "threshold": 0.5,
                         "rest": f"{u['edits']['per_100_cells']}", "ap50": u["AP50"],
                         "f1": u["f1"]})
            continue
        b, u = r["unused_before"], r["unused_after"]
        e, v = r["image_edits"]["edits"], r["verdict"]
        first = records[0]["unused_before"].get("per_image", {}).get(r["image"])
        rows.append({
            "round": r["round"], "image": r["image"],
            "edits": f"{e['per_100_cells']} ({e['deletes']} del, {e['clicks']} click, "
                     f"{e['drawings']} draw, {e['redraws']} redraw)",
            "start": first["per_100_cells"] if first else "",
            "wall": f"{r['finetune_s']} ({r['estimate_s']})",
            "kept": (f"{v['keep']} (AP {v['start']['AP']:.3f} → {v['tuned'].get('AP', 0):.3f})"
                     + (f", blended {r['blend']:g} with the start model (AP "
                        f"{r['blend_held_back'].get('AP', 0):.3f})" if r.get("blend") else "")
                     + (f" + {r['refit_steps']} steps on the whole image(s)"
                        if r.get("refit_steps") else "") if v else "no check"),
            "threshold": r.get("score_threshold", ""),
            "rest": f"{b['edits']['per_100_cells']} → {u['edits']['per_100_cells']}",
            "ap50": f"{b['AP50']} → {u['AP50']}", "f1": f"{b['f1']} → {u['f1']}"})
    return rows


def plot(paths: list[Path], out: Path) -> None:
    """Edits per 100 cells of the image each round segments, one colour per result file: solid,
    with the model the loop has reached; dotted, with the start model (the same images). The
    last point of a line is every image after the last round, with the model it ended with."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    last = 1
    for path in paths:
        payload = json.loads(Path(path).read_text())
        done = [r for r in payload["rounds"] if r["round"] > 0]
        if not done:
            continue
        start = payload["rounds"][0]["unused_before"].get("per_image", {})
        xs = [r["round"] for r in done]
        loop = [r["image_edits"]["edits"]["per_100_cells"] for r in done]
        first = [start.get(r["image"], {}).get("per_100_cells") for r in done]
        rest = payload["images"][done[-1]["round"]:]
        if rest and start:  # the images after the last round: the model it ended with
            xs.append(done[-1]["round"] + 1)
            loop.append(done[-1]["unused_after"]["edits"]["per_100_cells"])
            first.append(100.0 * sum(start[n]["total"] for n in rest)
                         / max(1, sum(start[n]["cells"] for n in rest)))
        line, = ax.plot(xs, loop, marker="o", label=f"{payload['name']}: the loop's model")
        if start:
            ax.plot(xs, first, ls=":", marker="x", color=line.get_color(),
                    label=f"{payload['name']}: start model")
        last = max([last, *xs])
    ax.set_xticks(range(1, last + 1))
    ax.set_xlabel("image k (the model tuned on images 1…k-1; last point: all images left)")
    ax.set_ylabel("edits per 100 cells")
    ax.set_title("Annotation loop, quick recipe, 2 CPU threads", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def summarise(paths: list[Path], out_dir: Path) -> None:
    """``annotation_loop.json`` / ``.md`` in ``out_dir``: every round of every result file."""
    import json

    rows, results = [], []
    for path in paths:
        payload = json.loads(Path(path).read_text())
        results.append({"file": Path(path).name, "name": payload["name"],
                        "settings": payload.get("settings"), "rounds": payload["rounds"],
                        "command": payload["command"], "machine": payload["machine"]})
        run = f"[{payload['name']}]({Path(path).with_suffix('.md').name})"
        rows += [{"run": run, **row} for row in _rows(payload["rounds"])[1:]]
    payload = {"command": C.command_line(), "results": results}
    md = "\n".join([
        "# Annotation loop: every round", "",
        "Edits per 100 cells on the image each round segments (with the loop's model, and with "
        "the start model), the fine-tune's wall time (and the estimate given before it), which "
        "model the held-back check kept, and the images not used yet before → after the "
        "round's fine-tune. Each run's own table (linked) has its command, machine and load.",
        "", C.md_table(rows, [
            ("run", "run"), ("round", "round"), ("image", "image k"),
            ("edits", "edits / 100 cells"), ("start", "… start model"),
            ("wall", "fine-tune s (estimate)"), ("kept", "check kept"),
            ("threshold", "threshold next"),
            ("rest", "images after k: edits / 100 cells"), ("ap50", "images after k: AP50")]),
        ""])
    C.write_results("annotation_loop", payload, md, out_dir=out_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="COCO folder: annotations.json + images/")
    p.add_argument("--images", default=None,
                   help="comma-separated file names, in the order the annotator takes them "
                        "(default: every image, in file order)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--recipe", choices=("quick", "thorough"), default="quick")
    p.add_argument("--steps", type=int, default=None, help="the recipe's, unless given")
    p.add_argument("--lr", type=float, default=None, help="the recipe's, unless given")
    p.add_argument("--points", type=int, default=None, help="the recipe's, unless given")
    p.add_argument("--whole-network", action="store_true", help="train the encoder too")
    p.add_argument("--no-hold-back", action="store_true", help="no held-back check")
    p.add_argument("--refit", action="store_true",
                   help="a quarter more steps on the whole images after the check")
    p.add_argument("--blend", type=float, default=None,
                   help="the recipe's start/fine-tuned blend, unless given (1: none)")
    p.add_argument("--no-refit", action="store_true",
                   help="no steps on the whole images after a verdict for the fine-tune")
    p.add_argument("--check-views", type=int, choices=(1, 2, 3, 4), default=None,
                   help="the views the held-back check segments with (default: the library's, "
                        "the views the loop segments with)")
    p.add_argument("--keep-threshold", action="store_true",
                   help="keep the score threshold 0.5 (do not use the held-back one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    p.add_argument("--work", type=Path, default=None, help="run folders (default: a temp dir)")
    p.add_argument("--name", default=None, help="result name (default: the data folder's)")
    p.add_argument("--plot", type=Path, default=None, help="draw the plot into this PNG")
    p.add_argument("--plot-from", type=Path, nargs="*", default=[],
                   help="result JSON files to sum up (no --data): the table, and --plot")
    args = p.parse_args()
    if args.data is None:
        if not args.plot_from:
            p.error("give --data (a run) or --plot-from result files (a summary)")
        summarise(args.plot_from, args.out)
        if args.plot is not None:
            plot(args.plot_from, args.plot)
        return
    C.set_cpu_threads(args.threads)
    from napari_iaunet.training import AnnotatedImages

    data = AnnotatedImages.from_coco(f"{args.data / 'annotations.json'}:{args.data / 'images'}")
    if args.images:
        wanted = [n.strip() for n in args.images.split(",") if n.strip()]
        by_name = {Path(str(it.path)).name: it for it in data.items}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            p.error(f"not in {args.data}: {', '.join(missing)}")
        data = AnnotatedImages([by_name[n] for n in wanted], data.sources, data.class_names)
    for it in data.items:
        it.name = Path(str(it.path)).name
    from napari_iaunet.training.finetune import FineTuneSettings

    settings = FineTuneSettings() if args.recipe == "quick" else FineTuneSettings.thorough()
    for key in ("steps", "lr"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    if args.points is not None:
        settings.num_points = args.points
    if args.whole_network:
        settings.freeze_encoder = False
    if args.no_hold_back:
        settings.hold_back = 0.0
    if args.no_refit:
        settings.refit = 0.0
    if args.refit:
        from napari_iaunet.training.finetune import REFIT_SHARE

        settings.refit = REFIT_SHARE
    if args.blend is not None:
        settings.blend = args.blend
    name = args.name or args.data.resolve().name
    with tempfile.TemporaryDirectory(prefix="annotation_loop_") as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        records = play(data, args.weights, args.rounds, settings, work, args.device, name,
                       calibrate=not args.keep_threshold, check_views=args.check_views)
        total = time.perf_counter() - t0
    walls = [r["finetune_s"] for r in records if r["round"] > 0]
    payload = {
        "name": name, "command": C.command_line(), "machine": C.machine_info(),
        "data": str(args.data), "images": [it.name for it in data.items],
        "weights": str(args.weights), "recipe": args.recipe,
        "settings": dataclasses.asdict(settings), "device": args.device,
        "threads": args.threads, "check_views": args.check_views, "rounds": records,
        "finetune_s_median": statistics.median(walls) if walls else None,
        "finetune_s_max": max(walls) if walls else None, "total_s": round(total, 1),
    }
    md = "\n".join([
        f"# Annotation loop: {name} ({args.recipe} recipe)", "",
        f"Settings: {payload['settings']}.  ",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']['host_cpu']}, {args.threads} thread(s), device "
        f"{args.device}, load {payload['machine']['load_average']}.  ",
        f"Images in order: {', '.join(payload['images'])}. Edits per 100 cells (deletes, adds by "
        "click, adds by drawing, redraws below IoU 0.75); round k segments image k with the "
        "model tuned on images 1…k-1, then fine-tunes on images 1…k; *unused* = the images after "
        "k, scored before → after the round's fine-tune (round 0: the start model on every "
        "image).", "",
        C.md_table(_rows(records), [
            ("round", "round"), ("image", "image k"), ("edits", "edits / 100 cells on image k"),
            ("start", "… with the start model"),
            ("wall", "fine-tune s (estimate)"), ("kept", "held-back check"),
            ("threshold", "score threshold next"),
            ("rest", "unused: edits / 100 cells"), ("ap50", "unused: AP50"),
            ("f1", "unused: F1")]), ""])
    C.write_results(f"annotation_loop_{name}", payload, md, out_dir=args.out)


if __name__ == "__main__":
    main()

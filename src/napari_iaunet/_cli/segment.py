"""``napari-iaunet segment IMAGES... --out DIR``: images → COCO JSON (one per image or one per set).

Under ``torchrun --nproc_per_node=N`` the images are sharded across the N processes (each on its
own GPU when there are GPUs); with ``--one-file`` rank 0 gathers everything and writes the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import fraction, non_negative_float, positive_int, score_fraction

if TYPE_CHECKING:
    from ..inference import PostprocessSettings

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", type=Path, help="image files or folders of images")
    p.add_argument("--sample", action="store_true",
                   help="segment the bundled synthetic brightfield sample image")
    p.add_argument("--weights", "-w", type=Path, default=None,
                   help="checkpoint (default: the bundled default model)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--one-file", metavar="NAME.json", default=None,
                   help="write one COCO file for the whole set instead of one per image")
    p.add_argument("--rle", action="store_true", help="store masks as RLE (lossless)")
    p.add_argument("--tolerance", type=non_negative_float, default=1.0,
                   help="polygon simplification tolerance in pixels (default 1.0)")
    p.add_argument("--score-threshold", type=score_fraction, default=None,
                   help="keep instances scoring at least this (0 to below 1; default: the one "
                        "the checkpoint recommends, from a quick fine-tune, else 0.5)")
    add_duplicate_arguments(p)
    add_flips_argument(p)
    p.add_argument("--tile-size", default="auto",
                   help="'auto', 'off' or tile size in pixels for large images")
    p.add_argument("--match-brightness", action=argparse.BooleanOptionalAction, default=None,
                   help="shift each image's mean intensity to the model's training mean first "
                        "(default: as the model was trained)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images or tiles per forward pass (default: 4 on a GPU, 1 on the CPU)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice; on a busy machine 1 can "
                        "be faster, see docs/performance.md)")
    p.add_argument("--overlay", action="store_true",
                   help="also write a PNG picture of the instances over each image "
                        "(NAME_overlay.png; such pictures beside their image are never taken "
                        "as inputs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (COCO files and overlay pictures)")


OVERLAY_SUFFIX = "_overlay.png"


def _is_own_overlay(f: Path, siblings: set[str]) -> bool:
    """Whether ``f`` is an overlay picture this command wrote for an image beside it."""
    if not f.name.lower().endswith(OVERLAY_SUFFIX):
        return False
    base = f.name[: -len(OVERLAY_SUFFIX)]
    return base in siblings


def _expand(paths: list[Path]) -> list[Path]:
    """Image files of ``paths`` (folders: their images, without our own overlay pictures)."""
    files: list[Path] = []
    skipped = 0
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            siblings = {f.stem for f in found} | {f.name for f in found}
            kept = [f for f in found if not _is_own_overlay(f, siblings)]
            skipped += len(found) - len(kept)
            files.extend(kept)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    if skipped:
        print(f"skipped {skipped} overlay picture(s) (NAME{OVERLAY_SUFFIX} beside the image "
              "NAME): they are outputs of --overlay, not images to segment", file=sys.stderr)
    if not files:
        raise ValueError("no images to segment: give image files or folders (or --sample)")
    return files


def output_stems(names: list[str]) -> dict[str, str]:
    """File name → stem of its outputs: the stem, or the whole name where stems collide
    (``x.png`` and ``x.tif`` → ``x.png.json`` and ``x.tif.json``)."""
    by_stem: dict[str, list[str]] = {}
    for n in names:
        by_stem.setdefault(Path(n).stem, []).append(n)
    stems = {n: (Path(n).stem if len(group) == 1 else n)
             for group in by_stem.values() for n in group}
    if len(set(stems.values())) != len(stems):
        raise ValueError("the output names of some images collide (e.g. 'x.png' beside "
                         "'x.png.tif'); rename them or segment them in separate runs")
    return stems


def _tile_arg(value: str) -> int | str | None:
    if value == "auto":
        return "auto"
    if value == "off":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"--tile-size must be auto, off or an integer, got {value!r}") from exc


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def add_duplicate_arguments(p: argparse.ArgumentParser) -> None:
    """``--cluster-queries``, ``--duplicate-iou`` and ``--mask-threshold`` (shared by
    ``segment`` and ``evaluate``)."""
    p.add_argument("--cluster-queries", type=fraction, nargs="?", const=0.7, default=None,
                   metavar="IOU",
                   help="merge queries whose masks overlap above IOU (default 0.7) into one "
                        "instance with their averaged mask and score (PCTrans' inference; on "
                        "by default for PCTrans models, 0 turns it off)")
    p.add_argument("--duplicate-iou", type=fraction, default=None, metavar="IOU",
                   help="drop a mask overlapping a higher-scored one above this mask IoU "
                        "(default 0.5: query duplicates go, real overlapping cells stay; "
                        "0 turns it off)")
    p.add_argument("--mask-threshold", type=_mask_threshold, default=None, metavar="P",
                   help="mask probability a pixel needs to belong to a cell (default 0.5)")


def add_flips_argument(p: argparse.ArgumentParser) -> None:
    """``--flips N`` (shared by ``segment`` and ``evaluate``). None: the Segmenter's default
    (``inference.flips.DEFAULT_FLIPS``; not imported here, it would import torch)."""
    p.add_argument("--flips", type=int, choices=(1, 2, 3, 4), default=None,
                   help="views of each image the model segments and merges (default 4: the "
                        "image, mirrored left-right, up-down and both; 1 is about 3x faster on "
                        "the CPU and finds fewer whole cells, docs/inference.md; query models "
                        "only)")


def flips_option(args: argparse.Namespace) -> dict[str, int]:
    """``{"flips": N}`` for the Segmenter when ``--flips`` was given, else nothing."""
    return {} if args.flips is None else {"flips": args.flips}


def _mask_threshold(text: str) -> float:
    """A float strictly between 0 and 1 (0 or 1 would make every mask all or nothing)."""
    value = fraction(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def postprocess_settings(args: argparse.Namespace, score_threshold: float
                         ) -> PostprocessSettings:
    """The :class:`PostprocessSettings` of :func:`add_duplicate_arguments`' options."""
    from ..inference import PostprocessSettings

    duplicates = {} if args.duplicate_iou is None else {
        "duplicate_iou": args.duplicate_iou if args.duplicate_iou > 0 else None}
    if getattr(args, "mask_threshold", None) is not None:
        duplicates["mask_threshold"] = args.mask_threshold
    return PostprocessSettings(score_threshold=score_threshold, **duplicates,
                               cluster_queries=(None if args.cluster_queries is None
                                                else args.cluster_queries > 0),
                               cluster_iou=args.cluster_queries or 0.7)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..checkpoint import recommended_score_threshold
    from ..inference import Segmenter
    from ..io.atomic import remove_stale_temp_files
    from ..io.coco import instances_to_coco, write_coco
    from ..io.images import read_image

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rank, world, local_rank = _dist()
    device = args.device
    if world > 1 and device == "auto" and torch.cuda.is_available():
        device = f"cuda:{local_rank}"

    if args.sample:
        from ..training.synthetic import sample_image

        items: list[tuple[str, object]] = [("sample.png", None)]
        loaders = {"sample.png": lambda: sample_image()}
    else:
        files = _expand(args.images)
        items = [(f.name, f) for f in files]
        loaders = {f.name: (lambda f=f: read_image(f)) for f in files}
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("two images share a file name; segment them in separate runs")
    stems = output_stems(names)
    renamed = [n for n in names if stems[n] != Path(n).stem]
    if renamed and rank == 0:
        print(f"{len(renamed)} images share a name stem with another ({', '.join(renamed[:4])}"
              f"{', ...' if len(renamed) > 4 else ''}): their outputs keep the suffix "
              f"({stems[renamed[0]]}.json)", file=sys.stderr)
    mine = names[rank::world]

    args.out.mkdir(parents=True, exist_ok=True)
    targets = ([args.out / args.one_file] if args.one_file else
               [args.out / (stems[n] + ".json") for n in mine])
    if args.overlay:
        targets += [args.out / (stems[n] + OVERLAY_SUFFIX) for n in mine]
    remove_stale_temp_files(targets)  # left by a killed run
    if not args.overwrite:  # refuse before spending time on the model
        existing = [t for t in targets if t.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise FileExistsError(f"{existing[0]}{more} exists; pass --overwrite to replace "
                                  "it, or choose another --out folder")

    segmenter = Segmenter.from_checkpoint(
        args.weights, device=device, tile_size=_tile_arg(args.tile_size),
        batch_size=args.batch_size, match_brightness=args.match_brightness, **flips_option(args),
    )
    info = segmenter.checkpoint_info
    print(f"model: {info.config.backbone} from {info.path} on {segmenter.device}"
          + (f" (rank {rank}/{world})" if world > 1 else ""), file=sys.stderr)
    # without the option, from_checkpoint chose the threshold: the checkpoint's, else the default
    threshold = args.score_threshold
    if threshold is None:
        threshold = segmenter.settings.score_threshold
        if recommended_score_threshold(info.metadata) is not None:
            print(f"score threshold {threshold:.2f}: the checkpoint's (chosen on its held-back "
                  "cells; --score-threshold overrides it)", file=sys.stderr)
    segmenter.settings = postprocess_settings(args, threshold)
    made_by = _made_by(segmenter, threshold)

    from ..cli import error_text

    records = []
    failed: list[tuple[str, str]] = []
    t_start = time.perf_counter()
    for k, name in enumerate(mine, 1):
        label = f"[{k}/{len(mine)}] {name}"
        try:
            image = np.asarray(loaders[name]())
            t0 = time.perf_counter()
            bar = _ProgressBar(label)
            inst = segmenter.segment(image, progress=bar)
        except Exception as exc:  # one bad file must not stop the batch
            if getattr(args, "debug", False):
                raise
            failed.append((name, error_text(exc)))
            print(f"{label}: skipped: {error_text(exc)}", file=sys.stderr)
            continue
        dt = time.perf_counter() - t0
        h, w = inst.image_shape
        records.append((name, h, w, inst))
        bar.finish(f"{len(inst)} instances in {dt:.2f} s")
        agreement = segmenter.last_agreement
        if agreement is not None and agreement.is_low():
            print(f"{label}: warning: {agreement.sentence()}", file=sys.stderr)
        if args.overlay:
            from ..io.atomic import atomic_write_bytes
            from ..visualize import overlay

            atomic_write_bytes(args.out / (stems[name] + OVERLAY_SUFFIX),
                               _png_bytes(overlay(image, inst)), overwrite=args.overwrite)
        if not args.one_file:
            coco = _to_coco([(name, h, w, inst)], info, args, instances_to_coco, made_by)
            write_coco(args.out / (stems[name] + ".json"), coco, overwrite=args.overwrite)

    if args.one_file:
        if world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo")
            gathered: list = [None] * world
            dist.all_gather_object(gathered, (records, failed))
            dist.destroy_process_group()
            records = [r for part, _ in gathered for r in part]
            failed = [f for _, part in gathered for f in part]
        if rank == 0 and records:
            records.sort(key=lambda r: names.index(r[0]))
            coco = _to_coco(records, info, args, instances_to_coco, made_by)
            write_coco(args.out / args.one_file, coco, overwrite=args.overwrite)
    total = sum(len(r[3]) for r in records)
    print(f"done: {len(records)} images, {total} instances, "
          f"{time.perf_counter() - t_start:.1f} s → {args.out}", file=sys.stderr)
    if failed:
        n = len(names) if args.one_file else len(mine)
        print(f"napari-iaunet segment: error: {len(failed)} of {n} images could not be "
              "segmented (their results were not written; fix or remove them and run again):",
              file=sys.stderr)
        for name, why in failed:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


class _ProgressBar:
    """One stderr line per image; on a terminal it fills as the image's tiles are segmented."""

    WIDTH = 24

    def __init__(self, label: str) -> None:
        self.label = label
        self.live = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.live and total > 1:
            filled = round(self.WIDTH * done / total)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            print(f"\r{self.label} [{bar}] {done}/{total} tiles", end="", file=sys.stderr,
                  flush=True)

    def finish(self, text: str) -> None:
        print(("\r\033[K" if self.live else "") + f"{self.label}: {text}", file=sys.stderr)


def _made_by(segmenter: Any, threshold: float) -> dict[str, Any]:
    """COCO's ``info``: what made the file (the model, its views and score threshold), so a
    shared result says how to reproduce it."""
    import datetime

    from .. import __version__

    return {"description": "napari-iaunet segment", "version": __version__,
            "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "model": str(segmenter.checkpoint_info.path), "views": segmenter.views,
            "score_threshold": float(threshold)}


def _to_coco(records, info, args, instances_to_coco, made_by: dict[str, Any]) -> dict:
    image_infos = [{"id": i + 1, "file_name": n, "height": h, "width": w}
                   for i, (n, h, w, _) in enumerate(records)]
    coco = instances_to_coco(
        [r[3] for r in records], image_infos,
        category_names=info.config.class_names,
        mode="rle" if args.rle else "polygon",
        tolerance=args.tolerance,
    )
    return {"info": made_by, **coco}


def _png_bytes(rgb) -> bytes:
    import io

    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, rgb, extension=".png")
    return buf.getvalue()

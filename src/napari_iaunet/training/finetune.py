"""Fine-tuning on a user's corrections, without Qt: the recipe and the data checks.

The napari fine-tune widget is a thin layer over this module (and so are the benchmarks that
replay it): :class:`FineTuneSettings` and :func:`make_train_config` are its recipe,
:func:`scan_coco_folder` and :func:`pairing_problem` check its data; where runs go is
:mod:`napari_iaunet.training.run_folder`'s job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import TrainCallback
from .run_folder import HOLDBACK_FILE, REFIT_DIR

if TYPE_CHECKING:
    import threading

    from .dataset import AnnotatedImages
    from .holdback import Threshold, Verdict
    from .trainer import TrainConfig, TrainResult

__all__ = [
    "BLEND_FILE",
    "HOLDBACK_FILE",
    "REFIT_DIR",
    "REFIT_SHARE",
    "CocoEntry",
    "DataError",
    "FineTuneOutcome",
    "FineTuneSettings",
    "make_train_config",
    "pairing_problem",
    "points_for",
    "read_verdict",
    "run_finetune",
    "scan_coco_folder",
]

PAPER_POINTS = 12544  # points per mask at the paper's 512-px input (112²)


# ---------------------------------------------------------------------------------- recipe
@dataclass
class FineTuneSettings:
    """What the settings controls stand for. The defaults are the quick recipe measured in
    ``docs/benchmarks/annotation_loop.md`` (``benchmarks/bench_annotation_loop.py``): the encoder
    stays as it is and only the decoder learns, at a low learning rate (the bundled model ended
    its training at 8e-6), with fewer sampled mask points, for few steps; a strip of every
    corrected image is held back to check the result against the start model, and when the
    check keeps the fine-tune, the model to use is halfway between the start weights and the
    fine-tuned ones (``blend``: one image teaches a trained model less than it makes it
    unlearn on other images; the blend keeps most of both, as in WiSE-FT, Wortsman et al.,
    CVPR 2022). ``refit`` (off) can add steps on the whole images, the strip included.

    ``num_points``: points per mask for the mask losses (None: :func:`points_for` the input size).
    ``hold_back``: the fraction of each image held back (0: no check; only when fine-tuning a
    checkpoint without a validation image). ``every``: validate and write last.pt every N steps.
    ``refit``: the steps on the whole images after a check that keeps the fine-tune, as a share
    of ``steps`` (0: none; :data:`REFIT_SHARE` when asked for).
    ``blend``: how far from the start weights towards the fine-tuned ones the model to use lies
    (1: the fine-tuned model; only after a check that keeps the fine-tune).
    """

    steps: int = 80
    lr: float = 1e-5
    batch_size: int = 2
    input_size: int | None = None  # None: the model's
    augment: bool = True
    device: str = "auto"
    every: int = 20
    freeze_encoder: bool = True
    num_points: int | None = 3136
    hold_back: float = 0.2
    refit: float = 0.0
    blend: float = 0.5

    @property
    def refit_steps(self) -> int:
        """The steps on the whole images after a check that keeps the fine-tune (none without
        a check)."""
        return round(self.steps * self.refit) if self.hold_back > 0 else 0

    @classmethod
    def thorough(cls) -> FineTuneSettings:
        """The earlier recipe: the whole network at a low learning rate, the paper's mask points,
        200 steps, no held-back check (about 6× the time of the quick one on a CPU)."""
        return cls(steps=200, lr=5e-5, every=25, freeze_encoder=False, num_points=None,
                   hold_back=0.0, refit=0.0, blend=1.0)


REFIT_SHARE = 0.25  # the steps on the whole images, as a share of the steps, when asked for
BLEND_FILE = "blended.pt"  # the start/fine-tuned blend, in the run folder


def points_for(input_size: int) -> int:
    """Sampled points per mask for the mask losses: the paper's 12 544 at a 512-px input, scaled
    with the number of predicted mask pixels for smaller inputs (at least 256)."""
    return int(min(PAPER_POINTS, max(256, round(PAPER_POINTS * (input_size / 512) ** 2))))


def make_train_config(settings: FineTuneSettings, out_dir: str | Path, *, input_size: int,
                      resume: bool = False, new_model: bool = False) -> TrainConfig:
    """The :class:`~napari_iaunet.training.TrainConfig` the widget runs (the benchmark uses it
    too). ``input_size`` is the size actually trained at (the settings' or the model's).
    Fine-tuning keeps the model's intensity normalisation and its BatchNorm statistics (batches of
    two images of one plate would drag them towards that plate); a ``new_model`` takes the
    training images' statistics, learns its BatchNorm statistics and trains its encoder too."""
    from .trainer import TrainConfig

    every = max(1, int(settings.every))
    kwargs: dict[str, Any] = dict(
        out_dir=Path(out_dir), steps=int(settings.steps), batch_size=int(settings.batch_size),
        lr=float(settings.lr), min_lr=min(1e-6, float(settings.lr) / 10),
        input_size=int(input_size),
        num_points=int(settings.num_points or points_for(int(input_size))),
        val_every=every, checkpoint_every=every, device=settings.device, resume=resume,
        normalisation="data" if new_model else "keep", freeze_batchnorm=not new_model,
        freeze_encoder=bool(settings.freeze_encoder) and not new_model,
    )
    if not settings.augment:
        # no flips, 90° rotations or scale jitter; the unused scale range is recorded as (1, 1)
        # too, so the run's stored config reads the same to anything that looks only at it
        kwargs.update(augment=False, scale_range=(1.0, 1.0))
    return TrainConfig(**kwargs)


# ---------------------------------------------------------------------------------- run
@dataclass
class FineTuneOutcome:
    """A fine-tune's training result, the held-back verdict (None: no check) and the model to
    use: the start checkpoint when the verdict kept it; else the last checkpoint of the steps on
    the whole images that followed the verdict (``refit``, when they ran to the end); else the
    blend of the start and the checked model (``blended``); else the run's best checkpoint
    (its last one while validation never found a cell: AP 0 everywhere ranks nothing)."""

    result: TrainResult
    verdict: Verdict | None = None
    start: Path | None = None
    estimate_s: float | None = None
    notes: list[str] = field(default_factory=list)
    threshold: Threshold | None = None  # the score threshold the held-back part asks for
    refit: TrainResult | None = None  # the steps on the whole images after the verdict
    blended: Path | None = None  # the start/fine-tuned blend the verdict's model became
    blend_metrics: dict[str, float] | None = None  # its score on the held-back part

    @property
    def refit_done(self) -> bool:
        """Whether the steps on the whole images ran to the end (their model is the one)."""
        r = self.refit
        return r is not None and not r.cancelled and r.last_path is not None

    @property
    def model_path(self) -> Path | None:
        if self.verdict is not None and self.verdict.kept_start:
            return self.start
        if self.refit_done:
            return self.refit.last_path
        if self.blended is not None:
            return self.blended
        r = self.result
        with_ap = any("AP" in h.get("metrics", {}) for h in r.history)
        if with_ap and r.best_metric is not None and r.best_metric <= 0:
            return r.last_path or r.best_path
        return r.best_path or r.last_path


def _step_seconds(model: Any, config: TrainConfig, data: AnnotatedImages,
                  device: Any) -> float:
    """Wall time of one training step under ``config`` on ``data``: an augmented batch, forward,
    loss, backward and the optimizer step (the mean of two after a first one, so start-up costs
    do not count). It trains ``model``: pass a copy that is thrown away afterwards."""
    import contextlib

    import torch

    from .dataset import TrainingDataset, collate
    from .trainer import (
        _adamw,
        _param_groups,
        augment_config_for,
        freeze_batchnorm,
        freeze_encoder,
        training_loss,
    )

    mc = model.config
    dataset = TrainingDataset(data, mc.pixel_mean, mc.pixel_std,
                              augment_config_for(config, mc.input_size),
                              num_classes=mc.num_classes, seed=config.seed,
                              match_brightness=mc.match_brightness, intensity=mc.intensity)
    loss_fn, _ = training_loss(mc, config, device)
    model.to(device).train()
    if config.freeze_batchnorm:
        freeze_batchnorm(model)
    if config.freeze_encoder:
        freeze_encoder(model)
    optimizer = _adamw(_param_groups(model, config), config)
    times = []
    for k in range(3):
        t0 = time.perf_counter()
        images, targets = collate([dataset[(i % len(dataset), 1000 * k + i)]
                                   for i in range(config.batch_size)])
        images = images.to(device)
        targets = [{key: v.to(device) for key, v in t.items()} for t in targets]
        loss = loss_fn(model, images, targets, contextlib.nullcontext)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    return sum(times[1:]) / len(times[1:])


def run_finetune(data: AnnotatedImages, config: TrainConfig, *,
                 start: str | Path | None = None, model_config: Any = None,
                 backbone_weights: str | Path | None = None, val_data: Any = None,
                 hold_back: float = 0.0, callbacks: Sequence[TrainCallback] = (),
                 cancel: threading.Event | Callable[[], bool] | None = None,
                 score_threshold: float | None = None, refit_steps: int = 0,
                 blend: float = 1.0, views: int | None = None) -> FineTuneOutcome:
    """Fine-tune (or train a new model) as the widget and ``napari-iaunet train --quick`` do.

    With a ``start`` checkpoint, no ``val_data`` and ``hold_back`` > 0, a strip of each image is
    held back (:func:`~napari_iaunet.training.holdback.hold_back`): the start model is scored
    there, the run validates there (best.pt = the best score) and the verdict keeps the start
    model when the fine-tuned one is worse (both scored with ``views``, the views the model will
    segment with: None means the segmenter's default; the run's own validation, which picks its
    best step, uses one); then the model chosen picks the detection score
    threshold with the fewest edits on the strips (``score_threshold``, the one in use, wins
    ties; None: the start checkpoint's recommendation, else 0.5). Before the first step each
    callback's ``on_estimate`` hears how long the run should take on this device (three timed
    steps). Verdict and threshold go to ``OUT/holdback.json``; when the fine-tuned checkpoint is
    the one to use, its metadata recommends the threshold too (the segment widget, ``segment``
    and :meth:`~napari_iaunet.inference.Segmenter.from_checkpoint` then use it).

    When the verdict keeps the fine-tune and ``blend`` < 1, the model to use is
    ``(1 - blend) · start + blend · fine-tuned`` (``OUT/blended.pt``), scored on the strips too:
    should it be worse there than the start model, the fine-tuned one stays the model to use.
    Then ``refit_steps`` > 0 more steps continue from the model chosen on the whole images,
    strip included (``OUT/whole_images``; the callbacks see them as the run's steps after its
    last); their last checkpoint is then the model to use. A cancel there keeps the checked
    model.
    """
    from ..checkpoint import load_checkpoint, recommended_score_threshold, save_checkpoint
    from ..inference.device import select_device
    from ..inference.flips import DEFAULT_FLIPS, check_flips
    from ..inference.segmenter import views_for
    from .holdback import calibrate_threshold, judge
    from .holdback import hold_back as split
    from .trainer import ValidationCancelled, _RunFolder, train, validate

    notes: list[str] = []
    views = check_flips(DEFAULT_FLIPS if views is None else views)
    blends = 0.0 <= blend < 1.0  # a kept fine-tune becomes its blend with the start model
    held = None
    train_data = data
    start_metrics: dict[str, float] = {}
    val_seconds = 0.0
    estimate = None
    if start is not None and val_data is None and hold_back > 0:
        held = split(data, hold_back)
        if held.cells == 0:
            notes.append("no cell lies in the held-back strips, so nothing can check the "
                         "fine-tune: it trains on the whole images")
            held = None
        else:
            train_data, val_data = held.train, held.held
    device = select_device(config.device)
    overrides: dict[str, Any] = {"input_size": config.input_size} if config.input_size else {}
    if config.match_brightness is not None:  # as the trainer loads the start model
        overrides["match_brightness"] = config.match_brightness
    if start is not None and (held is not None or not config.resume):
        loaded = load_checkpoint(start, device=device, overrides=overrides or None)
        model = loaded.model
        views = views_for(model.config, views)  # a Mask R-CNN segments one view
        if score_threshold is None:
            score_threshold = recommended_score_threshold(loaded.metadata)
        del loaded
        cancelled = False
        if held is not None:  # the start model's score on the strips, as it will segment
            t0 = time.perf_counter()
            try:
                start_metrics = validate(model, held.held.items, device=device,
                                         score_threshold=config.score_threshold, cancel=cancel,
                                         flips=views)
            except ValidationCancelled:  # the trainer sees the cancel too and stops at once
                cancelled = True
            val_seconds = time.perf_counter() - t0
        if not (config.resume or cancelled):  # a resumed run shows its own ETA
            step_s = _step_seconds(model, config, train_data, device)  # trains this copy
            n_val = config.steps // max(1, config.val_every) if held is not None else 0
            n_checks = 0  # scored with every view: the fine-tuned model (unless one view:
            if held is not None:  # the run's validation did it) and the blend
                n_checks = (views > 1) + blends
            n_refit = max(0, int(refit_steps)) if held is not None else 0
            estimate = (step_s * (config.steps + n_refit) + val_seconds / views * n_val
                        + val_seconds * n_checks)
            info = {"step_s": step_s, "steps": config.steps, "validation_s": val_seconds / views,
                    "validations": n_val, "checks": n_checks, "check_s": val_seconds,
                    "views": views, "refit_steps": n_refit, "device": str(device)}
            for cb in callbacks:
                cb.on_estimate(estimate, info)
        del model
    result = train(train_data, val_data, config, start=start, model_config=model_config,
                   backbone_weights=backbone_weights, callbacks=callbacks, cancel=cancel)
    outcome = FineTuneOutcome(result, None, Path(start) if start is not None else None,
                              estimate, notes)
    if config.overwrite and not config.resume:  # the replaced run's last steps are not this one's
        _RunFolder(Path(config.out_dir) / REFIT_DIR).clear()
    if held is not None and result.steps > 0:  # cancelled before step 1: nothing to judge
        best = next((h["metrics"] for h in reversed(result.history)
                     if h["step"] == result.best_step), None)  # one view
        chosen = outcome.model_path
        if views > 1 and best is not None and chosen is not None:
            # scored as the start model was (a cancel has stopped the steps; this check is
            # what makes the model the run leaves behind a judged one, so it is not cancelled)
            tuned = load_checkpoint(chosen, device=device, overrides=overrides or None).model
            best = validate(tuned, held.held.items, device=device,
                            score_threshold=config.score_threshold, flips=views)
            del tuned
        outcome.verdict = judge(start_metrics, best, result.best_step, held.cells,
                                config.metric, views=views)
        if (chosen is not None and not result.cancelled and not outcome.verdict.kept_start
                and blends):
            _blend(outcome, start, chosen, blend, held, start_metrics, config, device,
                   overrides or None, cancel, views)
            chosen = outcome.model_path
        if chosen is not None and not result.cancelled:
            loaded = load_checkpoint(chosen, device=device, overrides=overrides or None)
            outcome.threshold = calibrate_threshold(
                loaded.model, held.held, device=device,
                default=0.5 if score_threshold is None else score_threshold)
            if not outcome.verdict.kept_start and refit_steps > 0:
                del loaded
                outcome.refit = _refit(data, config, chosen, int(refit_steps), result.steps,
                                       callbacks, cancel)
                if not outcome.refit_done:
                    notes.append("the steps on the whole images were cancelled: the model the "
                                 "check kept is the one to use")
                chosen = outcome.model_path
                loaded = load_checkpoint(chosen, device=device, overrides=overrides or None)
            if not outcome.verdict.kept_start:  # our own file: it now recommends the threshold
                save_checkpoint(chosen, loaded.model, {**loaded.metadata, "score_threshold": {
                    **outcome.threshold.to_dict(), "chosen_on": "held-back strips"}},
                    overwrite=True)
        _write_verdict(Path(config.out_dir), outcome, held)
    return outcome


def _blend(outcome: FineTuneOutcome, start: str | Path, tuned: Path, weight: float, held: Any,
           start_metrics: dict[str, float], config: TrainConfig, device: Any,
           overrides: dict[str, Any] | None, cancel: Any, views: int) -> None:
    """Write ``OUT/blended.pt`` (``weight`` of the way from the start weights to ``tuned``'s)
    and make it the outcome's model unless it scores below the start model on the strips
    (segmented with ``views``, as the start model was)."""
    from ..checkpoint import CheckpointError, average_checkpoints, load_checkpoint
    from .holdback import judge
    from .trainer import ValidationCancelled, validate

    try:
        path = average_checkpoints([start, tuned], Path(config.out_dir) / BLEND_FILE,
                                   weights=[1.0 - weight, weight], overwrite=True)
    except (CheckpointError, OSError) as exc:
        outcome.notes.append(f"no blend with the start model ({exc}): the fine-tuned model is "
                             "the one to use")
        return
    model = load_checkpoint(path, device=device, overrides=overrides).model
    try:
        metrics = validate(model, held.held.items, device=device,
                           score_threshold=config.score_threshold, cancel=cancel, flips=views)
    except ValidationCancelled:
        outcome.notes.append("the blend's check was cancelled: the fine-tuned model is the one "
                             "to use")
        return
    outcome.blend_metrics = metrics
    if judge(start_metrics, metrics, None, held.cells, config.metric, views=views).kept_start:
        outcome.notes.append(f"the blend of the start and the fine-tuned model is worse than "
                             f"the start model on the held-back part ({config.metric} "
                             f"{metrics.get(config.metric, 0):.3f}): the fine-tuned model is "
                             "the one to use")
        return
    outcome.blended = path


class _Continued(TrainCallback):
    """Passes a second training run's events on as the steps after ``offset`` of the first."""

    def __init__(self, inner: TrainCallback, offset: int, stage: str) -> None:
        self.inner, self.offset, self.stage = inner, int(offset), stage

    def on_start(self, info: dict[str, Any]) -> None:
        total = int(info.get("total_steps", 0)) + self.offset
        self.inner.on_start({**info, "total_steps": total,
                             "start_step": int(info.get("start_step", 0)) + self.offset,
                             "stage": self.stage})

    def on_step(self, step: int, total: int, losses: dict[str, float], lr: float,
                eta_seconds: float) -> None:
        self.inner.on_step(step + self.offset, total + self.offset, losses, lr, eta_seconds)

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_validation(step + self.offset, metrics)

    def on_checkpoint(self, path: Path) -> None:
        self.inner.on_checkpoint(path)


def _refit(data: AnnotatedImages, config: TrainConfig, checked: Path, steps: int, offset: int,
           callbacks: Sequence[TrainCallback], cancel: Any) -> TrainResult:
    """``steps`` more steps from the checked model on the whole images (no validation: the
    held-back strips are training data now), into ``OUT/whole_images``."""
    import dataclasses

    from .trainer import train

    refit_config = dataclasses.replace(
        config, out_dir=Path(config.out_dir) / REFIT_DIR, steps=steps, epochs=None,
        warmup_steps=0, val_every=steps, checkpoint_every=steps, early_stopping=None,
        resume=False, overwrite=True)
    return train(data, None, refit_config, start=checked,
                 callbacks=[_Continued(cb, offset, "whole images") for cb in callbacks],
                 cancel=cancel)


def _write_verdict(out_dir: Path, outcome: FineTuneOutcome, held: Any) -> None:
    from ..io.atomic import atomic_write_text

    refit = outcome.refit
    record = {**outcome.verdict.to_dict(), "start_model": str(outcome.start),
              "refit": None if refit is None else {
                  "steps": refit.total_steps, "done": outcome.refit_done,
                  # relative to the run folder, which may move
                  "model": f"{REFIT_DIR}/{refit.last_path.name}" if outcome.refit_done
                  else None},
              "blend": None if outcome.blend_metrics is None else {
                  "used": outcome.blended is not None, "model": BLEND_FILE,
                  "held_back": outcome.blend_metrics},
              "fraction": held.fraction, "windows": [list(map(int, w)) for w in held.windows],
              "score_threshold": outcome.threshold.to_dict() if outcome.threshold else None}
    atomic_write_text(out_dir / HOLDBACK_FILE, json.dumps(record, indent=1), overwrite=True)


def read_verdict(out_dir: str | Path) -> dict[str, Any] | None:
    """The held-back check recorded in a run folder (None when there is none or it is
    unreadable)."""
    path = Path(out_dir) / HOLDBACK_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "keep" in record else None


# ---------------------------------------------------------------------------------- data
class DataError(ValueError):
    """The ticked data cannot train a model; the message says why."""


@dataclass
class CocoEntry:
    """A COCO file (and its image folder) found in a folder the user added."""

    json_path: Path
    image_dir: Path
    n_images: int
    n_cells: int
    n_categories: int

    @property
    def spec(self) -> str:
        return f"{self.json_path}:{self.image_dir}"

    def label(self) -> str:
        return (f"COCO {self.json_path.parent.name}/{self.json_path.name} · "
                f"{_plural(self.n_images, 'image')}, {_plural(self.n_cells, 'cell')}")


def scan_coco_folder(folder: str | Path) -> list[CocoEntry]:
    """The COCO instance files of ``folder`` (images in ``folder/images`` or beside them).

    Raises :class:`DataError` naming the problem: no COCO file, or images that are missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    entries, problems = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            coco = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: not readable JSON ({exc})")
            continue
        if not (isinstance(coco, dict) and isinstance(coco.get("images"), list)
                and isinstance(coco.get("annotations"), list)):
            continue  # some other JSON file
        image_dir = folder / "images" if (folder / "images").is_dir() else folder
        names = [str(im.get("file_name", "")) for im in coco["images"]]
        missing = [n for n in names if not (image_dir / n).is_file()]
        if missing:
            problems.append(f"{path.name}: {len(missing)} of {len(names)} images are not in "
                            f"{image_dir} (first: {missing[0]})")
            continue
        cells = sum(1 for a in coco["annotations"] if not a.get("iscrowd", 0))
        entries.append(CocoEntry(path, image_dir, len(names), cells,
                                 len(coco.get("categories") or [])))
    if not entries:
        raise DataError("; ".join(problems) if problems else
                        f"no COCO instance file (*.json with images and annotations) in {folder}")
    return entries


def pairing_problem(image_name: str, image_shape: tuple[int, ...], rgb: bool,
                    frame: tuple[int, ...] | None, cells_shape: tuple[int, int]) -> str | None:
    """Why cells drawn on a ``cells_shape`` plane cannot train with the image ``image_name`` of
    shape ``image_shape`` (``rgb``: its last axis is colour) at ``frame`` (the leading indices
    of a stack), or None when they fit."""
    spatial_shape = image_shape[:-1] if rgb else image_shape
    if frame and (len(frame) > len(spatial_shape) - 2 or any(
            int(f) >= s for f, s in zip(frame, spatial_shape))):
        return f"frame {tuple(frame)} is not in '{image_name}'"
    if len(spatial_shape) - (len(frame) if frame else 0) != 2:
        return f"'{image_name}' is not a 2-D image (a stack without a frame)"
    shape = tuple(int(v) for v in spatial_shape[-2:])
    if shape != tuple(cells_shape):
        return (f"the cells are {cells_shape[0]}×{cells_shape[1]} but '{image_name}' is "
                f"{shape[0]}×{shape[1]}")
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"

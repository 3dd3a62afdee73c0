"""The headless training / fine-tuning engine (the napari widget and the CLI drive this).

``train(train_data, val_data, config, model_config=… | start=…, callbacks=…, cancel=…)`` runs
AdamW with a cosine schedule over the model family's loss (IAUNet: the set loss; Mask R-CNN:
torchvision's detection losses, :mod:`.maskrcnn_loss`), validates with COCO AP, and keeps a run
folder::

    OUT/best.pt      best validation AP (lowest smoothed training loss without validation);
                     a validation that ties the best replaces it (the later weights win)
    OUT/last.pt      the latest weights (deployable checkpoints, napari_iaunet.checkpoint format)
    OUT/state.pt     optimizer, scheduler, step, RNG, early-stopping counters (for --resume)
    OUT/log.jsonl    one JSON record per step / validation / checkpoint
    OUT/loss.png     loss curve (written at the end)

All files are written atomically by rank 0. A run folder that already holds a run is never
overwritten unless ``resume`` (continue it) or ``overwrite`` (start again) is set.

Best checkpoint and early stopping: a validation whose metric is at least as good as the best so
far (``>=`` for AP, ``<=`` for the loss) rewrites ``best.pt``, so while every validation ties
(e.g. AP 0 before the model finds a cell) ``best.pt`` follows the newest weights instead of
staying at the first ones. Early-stopping patience counts only strict improvements: a tie is
"no improvement", so a run whose metric has stopped moving still stops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.config import IAUNetConfig, ModelConfig
from ..model.registry import config_from_dict, family_of
from . import distributed as ddp
from .augment import AugmentConfig
from .callbacks import JsonlLog, TrainCallback, plot_loss_curve
from .dataset import AnnotatedImage, AnnotatedImages, TrainingDataset, collate, normalisation_stats
from .matcher import NUM_POINTS
from .run_folder import RUN_FILES, SNAPSHOT_DIR

__all__ = ["RUN_FILES", "TrainConfig", "TrainResult", "ValidationCancelled",
           "augment_config_for", "train", "training_loss", "validate"]

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class TrainConfig:
    """Everything about a training run except the model and the data.

    Give ``steps`` (optimisation steps) or ``epochs`` (passes over the training images); with
    neither, 1000 steps. ``val_every``/``checkpoint_every`` count steps (0: only at the end).
    ``early_stopping`` is a patience in validations without improvement (None: off).
    ``normalisation``: ``"auto"`` computes mean/std from the training images for a new model and
    keeps a fine-tuned checkpoint's; ``"data"`` / ``"keep"`` force one or the other.
    ``augment=False`` turns off the random flips, 90° rotations and scale jitter (``scale_range``
    is then ignored): every image is only resized (longest side to the input size) and padded.
    ``freeze_encoder`` keeps the backbone's weights and BatchNorm statistics as they are and
    trains the rest; no gradient flows back through the encoder (forward, loss and backward of a
    fine-tuning step at 512 px on the CPU: 2.2 s instead of 2.7 s).
    """

    out_dir: str | Path = "runs/train"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    min_lr: float = 1e-6
    warmup_steps: int = 0
    backbone_lr_multiplier: float = 1.0
    grad_clip: float | None = None
    amp: str = "auto"  # "auto" (bf16/fp16 on CUDA, off on CPU), "bf16", "fp16", "off"
    seed: int = 3407
    num_workers: int = 0
    val_every: int = 500
    checkpoint_every: int | None = None  # None: with every validation (or every 500 steps)
    early_stopping: int | None = None
    metric: str = "AP"
    input_size: int | None = None  # override the model's input size (also when fine-tuning)
    match_brightness: bool | None = None  # override the model's brightness matching (None: keep)
    freeze_batchnorm: bool = False  # keep BatchNorm running statistics (fine-tuning, tiny batches)
    freeze_encoder: bool = False  # train only the decoder: no gradients through the encoder
    # also keep the model of every validation as checkpoints/step_NNNNNN.pt (for averaging the
    # last few: checkpoint.average_checkpoints)
    keep_checkpoints: bool = False
    augment: bool = True  # flips, 90° rotations, scale jitter (False: resize + pad only)
    scale_range: tuple[float, float] = (0.8, 1.5)
    num_points: int = NUM_POINTS
    # IAUNet: also train this many click queries per image (training.clicks): a cell clicked
    # in its middle, its mask predicted from the pixel there (the edit tools' "add"). 0: none.
    click_queries: int = 0
    # train only a click decoder of the model's own (model.click_decoder: added as a copy of the
    # segmentation's blocks and heads when the model has none): every other weight and
    # statistic stays as it is, so the model segments exactly as before. Needs click_queries.
    train_click_decoder: bool = False
    # with train_click_decoder: the share of clicks placed on cells the model's segmentation
    # misses (training.clicks.missed_cells; one pass without clicks per step finds them), as a
    # person clicks the cells the model missed. 0: every click on a random cell.
    hard_clicks: float = 0.0
    # what a click's answer learns: "clicked", the cell the click was drawn for, or "smallest",
    # the smallest cell under the click (where cells overlap, one answer per click: the cell on
    # top, as a person clicking inside a cell that is already there means another one)
    click_target: str = "clicked"
    weight_ce: float = 1.0
    weight_bce: float = 5.0
    weight_dice: float = 2.0
    no_object_weight: float = 0.1
    # PCTrans terms: used only when the model's config switches the matching option on
    weight_centre: float = 5.0
    weight_qec: float = 1.0
    weight_mcc: float = 1.0
    qec_temperature: float = 0.1
    mcc_temperature: float = 0.1
    normalisation: str = "auto"
    score_threshold: float = 0.05  # validation post-processing
    device: str = "auto"
    num_threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    log_every: int = 1
    plot: bool = True

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("TrainConfig: give steps or epochs, not both")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"TrainConfig: {name} must be ≥ 1")
        if self.batch_size < 1:
            raise ValueError("TrainConfig: batch_size must be ≥ 1")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError("TrainConfig: amp must be auto, bf16, fp16 or off")
        if self.normalisation not in ("auto", "data", "keep"):
            raise ValueError("TrainConfig: normalisation must be auto, data or keep")
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume and overwrite exclude each other")
        for name, low in (("lr", None), ("num_points", 1), ("warmup_steps", 0),
                          ("num_workers", 0), ("input_size", 32), ("num_threads", 1),
                          ("click_queries", 0)):
            v = getattr(self, name)
            if v is None and name in ("input_size", "num_threads"):
                continue
            if low is None:
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                    raise ValueError(f"TrainConfig: {name} must be a number greater than 0, "
                                     f"got {v!r}")
            elif not (isinstance(v, int) and v >= low):
                raise ValueError(f"TrainConfig: {name} must be a whole number ≥ {low}, got {v!r}")
        if self.train_click_decoder and not self.click_queries:
            raise ValueError("TrainConfig: train_click_decoder trains the answers to clicks: "
                             "give click_queries ≥ 1 (--click-queries N)")
        if not (isinstance(self.hard_clicks, (int, float)) and 0.0 <= self.hard_clicks <= 1.0):
            raise ValueError(f"TrainConfig: hard_clicks is a share of the clicks, from 0 to 1; "
                             f"got {self.hard_clicks!r}")
        if self.click_target not in ("clicked", "smallest"):
            raise ValueError(f"TrainConfig: click_target is 'clicked' or 'smallest', got "
                             f"{self.click_target!r}")
        if self.hard_clicks and not self.train_click_decoder:
            raise ValueError("TrainConfig: hard_clicks needs train_click_decoder (the cells "
                             "the segmentation misses are found with the segmentation fixed)")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ValueError(f"TrainConfig: min_lr must be 0 or more, got {self.min_lr!r}")
        self.scale_range = tuple(float(v) for v in self.scale_range)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["scale_range"] = list(self.scale_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    last_path: Path | None
    best_path: Path | None
    steps: int
    total_steps: int
    best_metric: float | None = None
    best_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation
    history: list[dict[str, Any]] = field(default_factory=list)  # every validation
    cancelled: bool = False
    stopped_early: bool = False
    elapsed_s: float = 0.0
    config: ModelConfig | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (last)


# ---------------------------------------------------------------------------------- helpers
def augment_config_for(cfg: TrainConfig, input_size: int) -> AugmentConfig:
    """The augmentation ``cfg`` asks for at ``input_size``."""
    if not cfg.augment:
        return AugmentConfig.resize_only(input_size)
    return AugmentConfig(input_size=input_size, scale_range=cfg.scale_range)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _is_cancelled(cancel: threading.Event | Callable[[], bool] | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up from 0.1 % to 1, then cosine from 1 to ``min_ratio`` at step ``total``."""
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return max(1e-3, (step + 1) / warmup)
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return fn


# parameter-name prefixes of the backbone (IAUNet's encoder, Mask R-CNN's ResNet body)
_BACKBONE_PREFIXES = ("encoder.", "backbone.body.")


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith(_BACKBONE_PREFIXES) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr, "name": "decoder"}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_multiplier,
                       "name": "backbone"})
    return groups


def _adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it (4× faster steps on the CPU)."""
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _RunFolder:
    """The files of one run; refuses to clobber an existing run."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir).expanduser()
        self.best = self.dir / "best.pt"
        self.last = self.dir / "last.pt"
        self.state = self.dir / "state.pt"
        self.log = self.dir / "log.jsonl"
        self.plot = self.dir / "loss.png"
        self.snapshots = self.dir / SNAPSHOT_DIR

    def snapshot(self, step: int) -> Path:
        """Where the model of the validation at ``step`` is kept (``keep_checkpoints``)."""
        return self.snapshots / f"step_{step:06d}.pt"

    def existing(self) -> list[Path]:
        kept = sorted(self.snapshots.glob("step_*.pt")) if self.snapshots.is_dir() else []
        return [self.dir / n for n in RUN_FILES if (self.dir / n).exists()] + kept

    def prepare(self, resume: bool, overwrite: bool) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"output path {self.dir} exists and is not a folder")
        found = self.existing()
        if found and not resume and not overwrite:
            raise FileExistsError(
                f"{self.dir} already holds a training run ({', '.join(p.name for p in found)}); "
                "continue it with resume (--resume), start again with overwrite (--overwrite), "
                "or choose another output folder")
        self.dir.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Delete the previous run's files (``overwrite``): called only once the new run has
        its data and model, so a run that cannot start leaves the old one as it was."""
        for p in self.existing():
            p.unlink()

    def remove_stale_temp_files(self) -> None:
        """Delete the hidden temporary files a killed run left beside its checkpoints."""
        from ..io.atomic import remove_stale_temp_files

        removed = remove_stale_temp_files([self.dir / n for n in RUN_FILES])
        if removed:
            log.info("%s: removed %d temporary file(s) left by an interrupted run", self.dir,
                     len(removed))


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    from ..io.atomic import atomic_torch_save

    atomic_torch_save(path, payload, overwrite=True)


_STATE_KEYS = ("step", "model", "model_config", "optimizer", "scheduler", "torch_rng")


def _load_state(path: Path) -> dict[str, Any]:
    from ..checkpoint import _torch_load

    state = _torch_load(path, what="training state")
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is not a napari-iaunet training state (version "
                         f"{STATE_VERSION}); start a new run or use --overwrite")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete training state (no {', '.join(missing)}); "
                         "resume from another copy or start again with --overwrite")
    return state


# ---------------------------------------------------------------------------------- validation
class ValidationCancelled(Exception):
    """:func:`validate` was cancelled between two images (no metrics)."""


@torch.no_grad()
def validate(model: torch.nn.Module, data: Sequence[AnnotatedImage], *,
             device: str | torch.device = "cpu", score_threshold: float = 0.05,
             amp: bool = True, cancel: threading.Event | Callable[[], bool] | None = None,
             flips: int = 1) -> dict[str, float]:
    """COCO AP (and friends) of ``model`` on annotated images, at the model's input size.
    An image with a ``score_window`` is segmented whole and scored inside the window.
    ``flips``: the views segmented (one by default: a quarter of the time, and the figures stay
    comparable across runs; the fine-tune's held-back verdict uses the segmenting views).

    ``cancel`` is checked before each image; when it is set, :class:`ValidationCancelled` is
    raised (partial metrics would be misleading, so there are none).
    """
    from ..evaluation import evaluate
    from ..inference.postprocess import PostprocessSettings
    from ..inference.segmenter import Segmenter
    from .holdback import crop_instances

    was_training = model.training
    seg = Segmenter(model, device=device, settings=PostprocessSettings(
        score_threshold=score_threshold), tile_size=None, amp=amp, batch_size=1, flips=flips)
    preds = []
    try:
        for i, item in enumerate(data):
            if _is_cancelled(cancel):
                raise ValidationCancelled(f"validation cancelled after {i} of {len(data)} "
                                          "images")
            pred = seg.segment(item.load_raw())
            if item.score_window is not None:  # a held-back strip: score inside it only
                pred = crop_instances(pred, item.score_window)
            preds.append(pred)
    finally:
        model.train(was_training)
    truth = [item.instances if item.score_window is None
             else crop_instances(item.instances, item.score_window) for item in data]
    # AP ranks every prediction; the matching metrics (F1, PQ, ...) count only confident ones
    metrics = evaluate(truth, preds, score_threshold=0.5)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# ---------------------------------------------------------------------------------- training
LossFn = Callable[[torch.nn.Module, torch.Tensor, list[dict[str, torch.Tensor]],
                   Callable[[], contextlib.AbstractContextManager]], dict[str, torch.Tensor]]


def training_loss(model_config: ModelConfig, cfg: TrainConfig, device: torch.device
                  ) -> tuple[LossFn, tuple[str, ...]]:
    """The family's training loss ``fn(net, images, targets, autocast) -> {"loss": …, …}`` and
    the terms to report each step. ``autocast()`` opens the run's mixed-precision context."""
    return family_of(model_config).training_loss(model_config, cfg, device)


def freeze_batchnorm(model: torch.nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode: its running mean and variance stop
    moving (its scale and shift still learn). Returns how many layers were frozen."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)


def freeze_encoder(model: torch.nn.Module) -> int:
    """Stop the backbone of ``model`` from learning: its parameters need no gradient and its
    layers stay in eval mode (BatchNorm statistics fixed). Returns how many tensors were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if name.startswith(_BACKBONE_PREFIXES):
            p.requires_grad_(False)
            frozen += 1
    for name, m in model.named_modules():
        if (name + ".").startswith(_BACKBONE_PREFIXES):
            m.eval()
    return frozen


def train_only_click_decoder(model: torch.nn.Module) -> int:
    """Let only the click decoder of ``model`` learn: every other parameter needs no gradient
    and every other layer is in eval mode (BatchNorm statistics fixed, no dropout), so the model
    segments exactly as before. Returns how many tensors train."""
    own = getattr(getattr(model, "decoder", None), "click_decoder", None)
    if own is None:
        raise ValueError(f"train_click_decoder: the {type(model).__name__} has no click decoder")
    model.requires_grad_(False)
    model.eval()
    own.requires_grad_(True)
    own.train()
    return sum(1 for _ in own.parameters())


def _build_model(cfg: TrainConfig, model_config: ModelConfig | None,
                 start: str | Path | None, backbone_weights: str | Path | None,
                 class_names: Sequence[str] | None = None
                 ) -> tuple[torch.nn.Module, ModelConfig, str]:
    from ..model import build_model
    from ..model.encoder import BACKBONES, IMAGENET

    if start is not None:
        from ..checkpoint import load_checkpoint

        overrides: dict[str, Any] = {"input_size": cfg.input_size} if cfg.input_size else {}
        if cfg.match_brightness is not None:
            overrides["match_brightness"] = cfg.match_brightness
        loaded = load_checkpoint(start, overrides=overrides or None)
        return loaded.model, loaded.config, f"checkpoint:{start}"
    if model_config is None and class_names:
        model_config = IAUNetConfig(num_classes=len(class_names), class_names=tuple(class_names))
    mc = model_config or IAUNetConfig()
    if cfg.input_size:
        mc = mc.replace(input_size=cfg.input_size)
    if cfg.match_brightness is not None:
        mc = mc.replace(match_brightness=cfg.match_brightness)
    model = build_model(mc, backbone_weights=backbone_weights)
    if backbone_weights == IMAGENET:  # the installed package's file, named in the metadata
        spec = BACKBONES[mc.backbone].imagenet
        origin = f"imagenet:{spec.pip_name}" if spec else "imagenet"
    else:
        origin = f"backbone:{backbone_weights}" if backbone_weights else "scratch"
    return model, mc, origin


def _epoch_keys(n: int, epoch: int, info: ddp.DistInfo, cfg: TrainConfig) -> list[tuple[int, int]]:
    """This rank's ``(image index, augmentation seed)`` list for ``epoch`` (≥ one batch)."""
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    if len(idx) < cfg.batch_size:  # tiny data sets (fine-tuning on one image): repeat
        idx = (idx * math.ceil(cfg.batch_size / len(idx)))[:cfg.batch_size]
    base = (cfg.seed * 1_000_003 + epoch * 7919) % (2 ** 31)
    return [(i, (base + 104_729 * (pos * info.world_size + info.rank)) % (2 ** 31))
            for pos, i in enumerate(idx)]


def _steps_per_epoch(n: int, info: ddp.DistInfo, cfg: TrainConfig) -> int:
    per_rank = max(math.ceil(n / info.world_size), cfg.batch_size)
    return math.ceil(per_rank / cfg.batch_size)


def train(
    train_data: AnnotatedImages | Sequence[Any] | str | Path,
    val_data: AnnotatedImages | Sequence[Any] | str | Path | None = None,
    config: TrainConfig | None = None,
    *,
    model_config: ModelConfig | None = None,
    start: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    callbacks: Sequence[TrainCallback] = (),
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a model (IAUNet or Mask R-CNN: the family of ``model_config`` or
    of the checkpoint ``start``); see the module docstring for the run folder.

    ``train_data`` / ``val_data``: :class:`AnnotatedImages`, ``COCO[:IMAGES]`` spec(s), or
    ``(image, Instances)`` pairs. Start from ``model_config`` (random init, optionally with local
    ``backbone_weights``) or from a checkpoint ``start`` (fine-tuning keeps its config; a new
    ``config.input_size`` is allowed). ``cancel`` is checked between steps and, during a
    validation, between its images (that validation is then dropped: no metric, no best.pt): the
    run writes ``last.pt`` + ``state.pt`` and returns with ``cancelled=True``.
    """
    cfg = config or TrainConfig()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    info, device = ddp.setup(cfg.device)
    run = _RunFolder(cfg.out_dir)
    try:
        if info.is_main:
            run.prepare(cfg.resume, cfg.overwrite)
        ddp.barrier(info)
        return _train(run, info, device, cfg, train_data, val_data, model_config, start,
                      backbone_weights, list(callbacks), cancel)
    finally:
        ddp.cleanup(info)


def _train(run: _RunFolder, info: ddp.DistInfo, device: torch.device, cfg: TrainConfig,
           train_data: Any, val_data: Any, model_config: ModelConfig | None,
           start: str | Path | None, backbone_weights: str | Path | None,
           callbacks: list[TrainCallback], cancel: Any) -> TrainResult:
    t_start = time.time()
    data = AnnotatedImages.coerce(train_data)
    if len(data) == 0:
        raise ValueError("no training images")
    val = AnnotatedImages.coerce(val_data) if val_data is not None else None
    if val is not None and len(val) == 0:
        val = None

    n_instances = sum(len(it.instances) for it in data)
    if n_instances == 0:
        raise ValueError(f"the training data ({len(data)} images) holds no usable cell "
                         "annotations (all empty, iscrowd or degenerate); a model cannot learn "
                         "from it: check the COCO files' annotations")

    resume_state = None
    if cfg.resume and run.state.exists():
        resume_state = _load_state(run.state)
    elif cfg.resume and info.is_main:
        log.info("%s holds no training state: starting a new run", run.dir)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if resume_state is not None:
        from ..model import build_model

        try:
            mcfg = config_from_dict(resume_state["model_config"])
            model = build_model(mcfg)
            model.load_state_dict(resume_state["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(f"{run.state} does not hold a usable model ({first}); start again "
                             "with --overwrite") from exc
        origin = resume_state.get("origin", "resume")
    else:
        model, mcfg, origin = _build_model(cfg, model_config, start, backbone_weights,
                                           data.class_names)
        use_data_stats = cfg.normalisation == "data" or (
            cfg.normalisation == "auto" and start is None)
        if use_data_stats:
            mean, std = normalisation_stats(data, intensity=mcfg.intensity)
            mcfg = mcfg.replace(pixel_mean=mean, pixel_std=std)
            model.config = mcfg
    if cfg.click_queries and not getattr(mcfg, "click_queries", False):
        if type(mcfg) is not IAUNetConfig:
            raise ValueError(f"click queries (--click-queries) train an IAUNet's decoder; this "
                             f"model is a {family_of(mcfg).name} model")
        mcfg = mcfg.replace(click_queries=True)  # saved with it: the model answers clicks
        model.config = mcfg
    if cfg.train_click_decoder and not mcfg.click_decoder:
        model.decoder.add_click_decoder()  # a copy of the segmentation's blocks and heads
        mcfg = mcfg.replace(click_decoder=True)
        model.config = mcfg
    model.to(device).train()
    if cfg.train_click_decoder:
        train_only_click_decoder(model)
    if cfg.freeze_encoder and not freeze_encoder(model):
        raise ValueError(f"freeze_encoder: the {type(model).__name__} has no encoder parameters "
                         f"(names starting with {' or '.join(_BACKBONE_PREFIXES)})")
    ddp.barrier(info)  # every rank has read its start checkpoint (it may be in the old run)
    if info.is_main:  # the new run can start: now the old one may go
        if cfg.overwrite:
            run.clear()
        run.remove_stale_temp_files()

    loss_fn, loss_keys = training_loss(mcfg, cfg, device)
    optimizer = _adamw(_param_groups(model, cfg), cfg)
    steps_per_epoch = _steps_per_epoch(len(data), info, cfg)
    total = cfg.steps or (cfg.epochs * steps_per_epoch if cfg.epochs else 1000)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, cfg.warmup_steps, cfg.min_lr / cfg.lr))
    amp_dtype = _amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16
                                  and device.type == "cuda")

    step = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_validations = 0
    history: list[dict[str, Any]] = []
    loss_ema: float | None = None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        best_metric = resume_state.get("best_metric")
        best_step = resume_state.get("best_step")
        bad_validations = int(resume_state.get("bad_validations", 0))
        history = list(resume_state.get("history", []))
        loss_ema = resume_state.get("loss_ema")
        torch.set_rng_state(resume_state["torch_rng"])
        if device.type == "cuda" and resume_state.get("cuda_rng") is not None:
            with contextlib.suppress(RuntimeError, IndexError):
                torch.cuda.set_rng_state(resume_state["cuda_rng"], device)
        if step >= total:
            log.info("%s: already trained %d of %d steps", run.dir, step, total)

    net: torch.nn.Module = model
    if info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)

    dataset = TrainingDataset(
        data, mcfg.pixel_mean, mcfg.pixel_std,
        augment_config_for(cfg, mcfg.input_size),
        num_classes=mcfg.num_classes, seed=cfg.seed,
        match_brightness=mcfg.match_brightness, intensity=mcfg.intensity)

    jlog = JsonlLog(run.log) if info.is_main else None
    meta_base = {
        "training_data": data.sources,
        # longest side of the largest training images: Segmenter's tile_size="auto" tiles only
        # images well beyond it, so cells are seen at the scale they were learnt at
        "image_side": max((max(it.instances.image_shape) for it in data), default=None),
        "validation_data": val.sources if val is not None else [],
        "started_from": origin,
        "train_config": cfg.to_dict(),
    }

    def emit(event: str, **kw: Any) -> None:
        if jlog is not None:
            jlog.write(event, **kw)

    def save(kind: str, metrics: dict[str, float] | None = None) -> Path | None:
        """Rank 0 writes last.pt (+ state.pt) or best.pt; every rank waits."""
        path = None
        if info.is_main:
            from ..checkpoint import save_checkpoint

            meta = {**meta_base, "trained_steps": step, "total_steps": total,
                    "metrics": metrics if metrics is not None else (
                        history[-1]["metrics"] if history else {}),
                    "best_metric": best_metric, "best_step": best_step}
            path = {"best": run.best, "last": run.last}.get(kind) or run.snapshot(step)
            save_checkpoint(path, model, meta, overwrite=True)
            if kind == "last":
                _save_state(run.state, {
                    "version": STATE_VERSION, "step": step, "total_steps": total,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "model_config": mcfg.to_dict(), "origin": origin,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "best_metric": best_metric, "best_step": best_step,
                    "bad_validations": bad_validations, "history": history,
                    "loss_ema": loss_ema, "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda"
                    else None,
                    "train_config": cfg.to_dict()})
            emit("checkpoint", kind=kind, step=step, path=str(path))
            for cb in callbacks:
                cb.on_checkpoint(path)
        ddp.barrier(info)
        return path

    def run_validation() -> dict[str, float] | None:
        """Validate (rank 0) and keep best.pt; None when cancelled (nothing recorded)."""
        nonlocal best_metric, best_step, bad_validations
        metrics: dict[str, float] = {}
        keep_best = strict = was_cancelled = False
        if info.is_main:
            value: float | None = None
            if val is not None:
                try:
                    metrics = validate(model, val.items, device=device,
                                       score_threshold=cfg.score_threshold,
                                       amp=amp_dtype is not None, cancel=cancel)
                except ValidationCancelled:
                    was_cancelled = True
                else:
                    value = metrics.get(cfg.metric)
                    if value is None:
                        raise KeyError(
                            f"validation gave no '{cfg.metric}' (got {sorted(metrics)})")
                    # ties keep the newer weights; only a strict gain resets the patience
                    keep_best = best_metric is None or value >= best_metric
                    strict = best_metric is None or value > best_metric
            else:
                value = loss_ema if loss_ema is not None else float("inf")
                metrics = {"train_loss_ema": value}
                keep_best = best_metric is None or value <= best_metric
                strict = best_metric is None or value < best_metric
            if not was_cancelled:
                if keep_best:
                    best_metric, best_step = float(value), step
                bad_validations = 0 if strict else bad_validations + 1
                history.append({"step": step, "metrics": metrics})
                emit("validation", step=step, metrics=metrics, best_metric=best_metric,
                     best_step=best_step)
                for cb in callbacks:
                    cb.on_validation(step, metrics)
        keep_best, was_cancelled = ddp.broadcast_object((keep_best, was_cancelled), info)
        if was_cancelled:
            return None
        if keep_best:
            save("best", metrics)
        if cfg.keep_checkpoints:
            save("snapshot", metrics)
        return metrics

    start_step = step
    if info.is_main:
        start_info = {"total_steps": total, "start_step": start_step,
                      "num_train_images": len(data), "num_val_images": len(val) if val else 0,
                      "world_size": info.world_size, "device": str(device),
                      "model_config": mcfg.to_dict(), "train_config": cfg.to_dict(),
                      "started_from": origin}
        emit("start", **start_info)
        for cb in callbacks:
            cb.on_start(start_info)

    val_every = cfg.val_every if cfg.val_every and cfg.val_every > 0 else 0
    ckpt_every = cfg.checkpoint_every if cfg.checkpoint_every is not None else (val_every or 500)
    cancelled = stopped_early = False
    last_saved = step if resume_state is not None else -1
    step_times: list[float] = []
    metrics: dict[str, float] = history[-1]["metrics"] if history else {}
    gen_loader_seed = torch.Generator()

    while step < total and not (cancelled or stopped_early):
        epoch, within = divmod(step, steps_per_epoch)
        keys = _epoch_keys(len(data), epoch, info, cfg)[within * cfg.batch_size:]
        gen_loader_seed.manual_seed(cfg.seed + epoch)
        loader = torch.utils.data.DataLoader(
            _KeyedDataset(dataset, keys), batch_size=cfg.batch_size, shuffle=False,
            num_workers=cfg.num_workers, collate_fn=collate, drop_last=False,
            generator=gen_loader_seed, persistent_workers=False)
        for images, targets in loader:
            if ddp.any_true(_is_cancelled(cancel), info, device):
                cancelled = True
                break
            t0 = time.time()
            if cfg.freeze_batchnorm:  # each step: a validation's model.train() unfreezes them
                freeze_batchnorm(model)
            if cfg.freeze_encoder:
                freeze_encoder(model)
            if cfg.train_click_decoder:
                train_only_click_decoder(model)
            images = images.to(device, non_blocking=True)
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()}
                       for t in targets]
            losses = loss_fn(net, images, targets, lambda: torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1

            report = torch.stack([losses[k].detach().float() for k in loss_keys])
            report = ddp.all_reduce_mean(report, info).cpu().tolist()
            values = dict(zip(loss_keys, report))
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(
                    f"training diverged at step {step} (loss {values['loss']}); lower the "
                    "learning rate (--lr) or enable gradient clipping (--grad-clip)")
            loss_ema = (values["loss"] if loss_ema is None
                        else 0.95 * loss_ema + 0.05 * values["loss"])
            step_times.append(time.time() - t0)
            eta = float(np.median(step_times[-50:])) * (total - step)
            if info.is_main:
                if step % max(1, cfg.log_every) == 0 or step == total:
                    emit("step", step=step, epoch=epoch, lr=lr, eta_s=round(eta, 1),
                         step_s=round(step_times[-1], 4), **values)
                for cb in callbacks:
                    cb.on_step(step, total, values, lr, eta)

            final = step >= total
            if (val_every and step % val_every == 0) or final:
                validated = run_validation()
                if validated is None:  # cancelled during the validation
                    cancelled = True
                    break
                metrics = validated
                if cfg.early_stopping is not None and bad_validations >= cfg.early_stopping:
                    stopped_early = True
                stopped_early = bool(ddp.broadcast_object(stopped_early, info))
            if final or stopped_early or (ckpt_every and step % ckpt_every == 0):
                save("last")
                last_saved = step
            if final or stopped_early:
                break

    if cancelled and step > 0 and last_saved != step:
        save("last")
    reason = "cancelled" if cancelled else "early_stopping" if stopped_early else "finished"
    result = TrainResult(
        out_dir=run.dir, last_path=run.last if run.last.exists() else None,
        best_path=run.best if run.best.exists() else None, steps=step, total_steps=total,
        best_metric=best_metric, best_step=best_step, metrics=metrics, history=history,
        cancelled=cancelled, stopped_early=stopped_early, elapsed_s=time.time() - t_start,
        config=mcfg, model=model.eval())
    if info.is_main:
        emit("end", reason=reason, step=step, best_metric=best_metric, best_step=best_step,
             elapsed_s=round(result.elapsed_s, 1))
        if jlog is not None:
            jlog.close()
        if cfg.plot and step > start_step:
            try:
                plot_loss_curve(run.log, run.plot, title=f"{mcfg.backbone}, {run.dir.name}")
            except Exception as exc:
                log.warning("could not draw the loss curve: %s", exc)
        for cb in callbacks:
            cb.on_end(result)
    return result


class _KeyedDataset(torch.utils.data.Dataset):
    """A fixed list of ``(index, seed)`` keys over a :class:`TrainingDataset`."""

    def __init__(self, dataset: TrainingDataset, keys: list[tuple[int, int]]) -> None:
        self.dataset = dataset
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.dataset[self.keys[i]]

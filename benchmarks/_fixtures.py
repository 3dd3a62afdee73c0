"""Inputs shared by the benchmarks: test images, realistic predictions, the models compared.

Randomly initialised networks predict nothing useful: IAUNet's class head starts at probability
0.01 for every query, so its post-processing would see no instance at all and look free. The
benchmarks therefore wrap the real network in :class:`OracleOutputs`: the network runs in full
(every convolution and attention of a real forward pass), then its predictions are replaced by
precomputed ones built from the test image's ground truth (the cells a trained model would find),
so the post-processing, layer building and export carry a realistic load. Swapping costs nothing
measurable (the tensors are prepared once). Torchvision's Mask R-CNN gets the same number of
detections (``box_detections_per_img = number of cells``, ``box_score_thresh = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_iaunet.inference.preprocess import resized_shape
from napari_iaunet.instances import Instances
from napari_iaunet.model import IAUNetConfig, build_model

IMAGE_SIZE = 1080  # Revvity-25 field of view
IMAGE_SEED = 7


@dataclass
class TestImage:
    image: np.ndarray  # (H, W, 3) uint8
    truth: Instances
    source: str


def brightfield_image(size: int = IMAGE_SIZE, seed: int = IMAGE_SEED) -> TestImage:
    """A seeded synthetic brightfield field of view with its (overlapping) cells."""
    try:
        from napari_iaunet.training.synthetic import generate_one
    except ImportError:  # the generator is optional for the benchmarks
        return textured_image(size, seed)
    image, truth = generate_one(np.random.default_rng(seed), size)
    return TestImage(image, truth, f"napari_iaunet.training.synthetic.generate_one(seed={seed})")


def textured_image(size: int = IMAGE_SIZE, seed: int = IMAGE_SEED, n_cells: int = 40,
                   radius: float = 60.0) -> TestImage:
    """Fallback: smoothed noise with ``n_cells`` overlapping discs (their masks as truth)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.normal(120, 20, (size, size)), 3)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = []
    for _ in range(n_cells):
        cy, cx = rng.uniform(radius, size - radius, 2)
        r = radius * rng.uniform(0.6, 1.4)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        base[m] -= 15
        masks.append(m)
    image = np.clip(base, 0, 255).astype(np.uint8)
    return TestImage(np.repeat(image[..., None], 3, -1), Instances.from_masks(masks),
                     f"seeded textured image (seed={seed})")


def nuclei_instances(n: int, size: int = 1024, radius: float = 9.0, seed: int = 0
                     ) -> Instances:
    """``n`` DSB-like nuclei (ellipses of ~``radius`` px, some touching/overlapping) on a
    ``size``² image; 1000 nuclei on 1024² is the density of DSB 2018's most crowded images."""
    rng = np.random.default_rng(seed)
    boxes, crops = [], []
    for _ in range(n):
        ry, rx = radius * rng.uniform(0.7, 1.3, 2)
        cy, cx = rng.uniform(ry + 1, size - ry - 1), rng.uniform(rx + 1, size - rx - 1)
        y0, x0 = int(cy - ry), int(cx - rx)
        y1, x1 = int(np.ceil(cy + ry)) + 1, int(np.ceil(cx + rx)) + 1
        yy, xx = np.mgrid[y0:y1, x0:x1]
        crop = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        boxes.append((y0, x0, y1, x1))
        crops.append(crop)
    return Instances((size, size), np.asarray(boxes), crops,
                     scores=rng.uniform(0.5, 1.0, n).astype(np.float32)).tightened()


# ----------------------------------------------------------------------------------- predictions
def oracle_predictions(truth: Instances, config: IAUNetConfig, padded: tuple[int, int] | None = None
                       ) -> dict[str, torch.Tensor]:
    """What a well-trained IAUNet would output for ``truth``: ``pred_logits (1, Q, C+1)`` with the
    first ``len(truth)`` queries confident (p = 0.95) and ``pred_masks (1, Q, Hp/4, Wp/4)`` logits
    whose 0.5 level set follows each cell's outline at 1/4 of the network's input resolution."""
    h0, w0 = truth.image_shape
    h, w = resized_shape((h0, w0), config.input_size)
    div = config.size_divisibility
    hp, wp = padded or (-(-h // div) * div, -(-w // div) * div)
    q = max(config.num_queries, len(truth))
    masks = torch.full((q, hp // 4, wp // 4), -10.0)
    for i in range(len(truth)):
        full = torch.from_numpy(truth.mask(i)).float()[None, None]
        small = F.interpolate(full, size=(h, w), mode="area")
        canvas = torch.zeros(1, 1, hp, wp)
        canvas[..., :h, :w] = small
        p = F.avg_pool2d(canvas, 4)[0, 0]
        masks[i] = ((p - 0.5) * 16.0).clamp(-10, 10)
    probs = torch.full((q,), 0.001)
    probs[: len(truth)] = 0.95
    logits = torch.zeros(q, config.num_classes + 1)
    logits[:, 0] = probs.log()
    logits[:, -1] = (1 - probs).log()
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


def blob_predictions(n: int, grid: tuple[int, int], num_queries: int, radius: float = 6.0,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` confident round blobs (radius in 1/4-resolution pixels) on a ``grid`` of mask logits,
    for post-processing loads that do not depend on an image."""
    rng = np.random.default_rng(seed)
    q = max(num_queries, n)
    hm, wm = grid
    yy, xx = torch.meshgrid(torch.arange(hm).float(), torch.arange(wm).float(), indexing="ij")
    masks = torch.full((q, hm, wm), -10.0)
    for i in range(n):
        cy, cx = rng.uniform(0, hm), rng.uniform(0, wm)
        r = radius * rng.uniform(0.7, 1.3)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        masks[i] = (4.0 * (r - d) / r).clamp(-10, 10)
    probs = torch.full((q,), 0.001)
    probs[:n] = torch.from_numpy(rng.uniform(0.7, 0.99, n)).float()
    logits = torch.stack([probs.log(), (1 - probs).log()], dim=1)
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


class OracleOutputs(nn.Module):
    """Runs ``net`` in full, then returns ``predictions`` (repeated over the batch) instead of its
    own. ``net=None`` gives a stub that costs nothing (to time everything but the network)."""

    def __init__(self, net: nn.Module | None, predictions: dict[str, torch.Tensor],
                 config: IAUNetConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("pred_logits", predictions["pred_logits"][0].clone())
        self.register_buffer("pred_masks", predictions["pred_masks"][0].clone())

    def forward(self, images: torch.Tensor, with_aux: bool | None = None) -> dict[str, Any]:
        dtype = torch.float32
        if self.net is not None:
            dtype = self.net(images, with_aux=False)["pred_masks"].dtype
        b = images.shape[0]
        hm, wm = images.shape[-2] // 4, images.shape[-1] // 4
        masks = self.pred_masks
        if masks.shape[-2:] != (hm, wm):  # another padded size: crop / pad the prepared logits
            masks = F.pad(masks, (0, max(0, wm - masks.shape[-1]), 0,
                                  max(0, hm - masks.shape[-2])), value=-10.0)[:, :hm, :wm]
        return {"pred_logits": self.pred_logits.expand(b, -1, -1).to(dtype),
                "pred_masks": masks.expand(b, -1, -1, -1).to(dtype), "aux_outputs": []}


def iaunet(backbone: str = "resnet50", num_queries: int = 100, seed: int = 0) -> nn.Module:
    """A randomly initialised IAUNet in eval mode (random weights time like trained ones)."""
    torch.manual_seed(seed)
    return build_model(IAUNetConfig(backbone=backbone, num_queries=num_queries)).eval()


# ----------------------------------------------------------------------------------- Mask R-CNN
def mask_rcnn(detections: int, min_size: int = 800, max_size: int = 1333, seed: int = 0
              ) -> nn.Module:
    """torchvision Mask R-CNN R50-FPN (the LIVECell study's model), random weights, 2 classes
    (background, cell), ``detections`` instances per image. Its transform resizes the shorter side
    to ``min_size`` (800 by default, longest side at most ``max_size``)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, min_size=min_size,
        max_size=max_size, box_detections_per_img=detections, box_score_thresh=0.0,
    ).eval()


def mask_rcnn_input(image: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """The (3, H, W) float tensor in [0, 1] torchvision detection models take."""
    return torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255.0)


def mask_rcnn_segment(model: nn.Module, image_t: torch.Tensor) -> np.ndarray:
    """Image in, boolean (N, H, W) masks out: the model's own pipeline plus the 0.5 threshold."""
    with torch.inference_mode():
        out = model([image_t])[0]
    return (out["masks"][:, 0] > 0.5).cpu().numpy()

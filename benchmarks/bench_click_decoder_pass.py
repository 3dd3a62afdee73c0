"""Click a missed cell, step 4: does one more decoder pass guided by the click recover cells?

    .venv/bin/python benchmarks/bench_click_decoder_pass.py --data ../shared/data/revvity25 \\
        [--weights weights/iaunet_default.pt] [--max-images N] [--out docs/benchmarks]

For every missed cell (no detection at IoU ≥ 0.5; click = its most interior pixel, as in
``bench_click_candidates.py``) two click-guided masks are tried besides the first candidate:

* ``decoder_pass``: one extra query per click whose content is the stride-4 pixel embedding at
  the click and whose position is the sine embedding there, run through every decoder block with
  the 100 learned queries (it attends to them, they do not see it, nor the other clicks' queries),
  then the usual class and mask heads;
* ``embedding``: the mask head applied to the pixel embedding at the click directly (no decoder).

A mask counts when its part holding the click has IoU ≥ 0.5 with the cell. The bundled model was
never trained with such queries; this measures whether it generalises to them. Writes
``<out>/click_decoder_pass_<data folder name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from bench_click_candidates import DEFAULT_WEIGHTS, interior_point
from napari_iaunet.evaluation.metrics import pairwise_iou
from napari_iaunet.inference import Segmenter
from napari_iaunet.inference.candidates import Candidates, CandidateSource, candidates_at
from napari_iaunet.inference.preprocess import as_hwc, pad_batch, prepare
from napari_iaunet.io.coco import coco_to_instances, read_coco
from napari_iaunet.io.images import read_image
from napari_iaunet.layers import split_into_layers


@torch.inference_mode()
def click_sources(seg: Segmenter, image: np.ndarray, clicks: list[tuple[int, int]]
                  ) -> tuple[CandidateSource, CandidateSource]:
    """(decoder pass, embedding only) masks of one query per click, as candidate sources."""
    model, cfg = seg.model, seg.config
    dec = model.decoder
    p = prepare(as_hwc(image), cfg.input_size, cfg.pixel_mean, cfg.pixel_std,
                cfg.size_divisibility, seg.device, offset=None, intensity=cfg.intensity)
    batch = pad_batch([p.tensor])
    memories, mf = dec.pixel_decoder(model.encoder(batch))
    (H, W), (h, w) = p.original_shape, p.resized_shape
    hm, wm = mf.shape[-2:]
    hp, wp = batch.shape[-2:]
    sy, sx = h * hm / (H * hp), w * wm / (W * wp)
    pos4 = dec.pe_layer(mf)
    at = [(min(hm - 1, max(0, round((y + 0.5) * sy - 0.5))),
           min(wm - 1, max(0, round((x + 0.5) * sx - 0.5)))) for y, x in clicks]
    feat = torch.stack([mf[0, :, r, c] for r, c in at])[None]
    pos = torch.stack([pos4[0, :, r, c] for r, c in at])[None]
    embedding = torch.einsum("bqc,bchw->bqhw", dec.mask_embed(dec.decoder_norm(feat)), mf)
    n, nq = len(clicks), dec.num_queries
    queries = torch.cat([dec.query_feat.weight[None], feat], 1)
    query_pos = torch.cat([dec.query_embed.weight[None], pos], 1)
    blocked = torch.zeros(nq + n, nq + n, dtype=torch.bool)
    blocked[:nq, nq:] = True  # the learned queries do not see the click queries
    blocked[nq:, nq:] = ~torch.eye(n, dtype=torch.bool)  # nor does one click see another
    for level, memory_map in enumerate(memories):
        memory = memory_map.flatten(2).transpose(1, 2)
        memory_pos = dec.pe_layer(memory_map).flatten(2).transpose(1, 2)
        for j in range(dec.dec_layers):
            k = level * dec.dec_layers + j
            queries = dec.transformer_instance_cross_attention_layers[k](
                queries, memory, memory_pos, query_pos, None)
            queries = dec.transformer_instance_self_attention_layers[k](queries, query_pos,
                                                                        blocked)
            queries = dec.transformer_instance_ffn_layers[k](queries)
    out = dec.predict(queries, mf)
    shapes = ((hp, wp), p.resized_shape, p.original_shape)
    guided = CandidateSource.from_outputs(out["pred_logits"][0, nq:], out["pred_masks"][0, nq:],
                                          *shapes)
    plain = CandidateSource.from_outputs(torch.zeros(n, 2), embedding[0], *shapes)
    return guided, plain


def first_iou(src: CandidateSource, j: int, shape, point, box, crop) -> float:
    one = Candidates(shape, [CandidateSource(src.logits[j:j + 1], src.class_probs[j:j + 1],
                                             src.class_ids[j:j + 1], src.scale, src.window)])
    picks = candidates_at(one, point, limit=1)
    return picks[0].iou_with(box, crop) if picks else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    C.set_cpu_threads(args.threads)
    seg = Segmenter.from_checkpoint(args.weights, device="cpu")
    rows = []
    for entry, gt, *_ in coco_to_instances(read_coco(args.data / "annotations.json"))[
            : args.max_images]:
        image = read_image(args.data / "images" / entry["file_name"])
        found, cands = seg.segment(image, candidates=True)
        best = pairwise_iou(gt, found).max(axis=1) if len(found) else np.zeros(len(gt))
        missed = np.flatnonzero(best < 0.5)
        if not len(missed):
            continue
        accepted = split_into_layers(found)
        clicks = []
        for i in missed.tolist():
            r, c = interior_point(gt.crops[i])
            clicks.append((int(gt.boxes[i][0]) + r, int(gt.boxes[i][1]) + c))
        guided, plain = click_sources(seg, image, clicks)
        for j, i in enumerate(missed.tolist()):
            box, crop = gt.boxes[i], gt.crops[i]
            picks = candidates_at(cands, clicks[j], accepted=accepted, limit=1)
            rows.append({"file": entry["file_name"], "cell": i,
                         "candidate": picks[0].iou_with(box, crop) if picks else 0.0,
                         "decoder_pass": first_iou(guided, j, gt.image_shape, clicks[j], box,
                                                   crop),
                         "decoder_pass_class": float(guided.class_probs[j]),
                         "embedding": first_iou(plain, j, gt.image_shape, clicks[j], box,
                                                crop)})
    n = len(rows)

    def rate(key: str) -> float | None:
        return round(sum(r[key] >= 0.5 for r in rows) / n, 4) if n else None

    summary = {"missed_cells": n, "recovered_candidate": rate("candidate"),
               "recovered_decoder_pass": rate("decoder_pass"),
               "recovered_embedding": rate("embedding"),
               "recovered_only_by_a_click_pass": round(sum(
                   r["candidate"] < 0.5 and max(r["decoder_pass"], r["embedding"]) >= 0.5
                   for r in rows) / n, 4) if n else None}
    payload = {"command": C.command_line(), "machine": C.machine_info(),
               "data": str(args.data), **summary, "clicks": rows}
    name = f"click_decoder_pass_{args.data.resolve().name}"
    md = "\n".join([f"# Click-guided decoder pass: {args.data.resolve().name}", "",
                    f"Command: `{payload['command']}`", "",
                    C.md_table([summary], [(k, k) for k in summary])])
    C.write_results(name, payload, md, out_dir=args.out)


if __name__ == "__main__":
    main()

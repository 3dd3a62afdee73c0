"""Click-to-add candidates: every query kept by the Segmenter, and what lies under a click."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_iaunet.inference import PostprocessSettings, Segmenter
from napari_iaunet.inference.candidates import (
    RANKINGS,
    Candidates,
    CandidateSource,
    candidates_at,
    split_at,
)
from napari_iaunet.model import IAUNetConfig, build_model

TINY = IAUNetConfig(backbone="resnet18", num_queries=8, input_size=64)


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _source(masks: list[np.ndarray], class_probs: list[float], image: int = 128,
            offset: tuple[int, int] = (0, 0)) -> CandidateSource:
    """Low-res (image / 4) logits: ±6 inside / outside each mask, one query per mask."""
    logits = np.stack([np.where(m, 6.0, -6.0) for m in masks]).astype(np.float32)
    low = logits.shape[-1]
    return CandidateSource(logits, np.asarray(class_probs), np.zeros(len(masks), np.int64),
                           (low / image, low / image),
                           (offset[0], offset[1], offset[0] + image, offset[1] + image))


def _low_disc(centre, radius, low=32):
    return _disc((low, low), centre, radius)


@pytest.fixture
def three():
    """Query 0: a small confident disc at (40, 40) px; 1: a larger, less confident disc holding
    it; 2: a disc elsewhere; 3: two separate blobs (one at (100, 100), one at (20, 100))."""
    masks = [_low_disc((10, 10), 3), _low_disc((11, 11), 6), _low_disc((25, 25), 3),
             _low_disc((25, 25), 2) | _low_disc((5, 25), 2)]
    return Candidates((128, 128), [_source(masks, [0.9, 0.4, 0.95, 0.8])])


def test_only_masks_holding_the_point_best_first(three):
    picks = candidates_at(three, (41, 41), ranking="score", thresholds=None)
    assert [p.query for p in picks] == [0, 1]
    assert picks[0].score > picks[1].score
    for p in picks:  # every candidate contains the click, in image pixels
        assert p.mask((128, 128))[41, 41]
        assert p.crop.shape == (p.box[2] - p.box[0], p.box[3] - p.box[1])
    assert candidates_at(three, (5, 120)) == []  # background
    assert candidates_at(three, (500, 5)) == []  # outside the image
    for ranking in RANKINGS:
        assert {p.query for p in candidates_at(three, (41, 41), ranking=ranking)} == {0, 1}


def test_accepted_cells_push_a_repeat_down(three):
    """A candidate that is (nearly) a cell already in the group ranks below a new shape."""
    (q0,) = [p for p in candidates_at(three, (41, 41), thresholds=None) if p.query == 0]
    accepted = np.where(q0.mask((128, 128)), 7, 0).astype(np.uint16)
    picks = candidates_at(three, (41, 41), accepted=[accepted], ranking="novel", thresholds=None)
    assert [p.query for p in picks] == [1, 0]
    assert picks[1].overlap == pytest.approx(1.0)
    assert 0.0 < picks[0].overlap < 0.5
    plain = candidates_at(three, (41, 41), accepted=[accepted], ranking="score", thresholds=None)
    assert [p.query for p in plain] == [0, 1]


def test_a_query_spanning_two_cells_offers_the_clicked_part(three):
    whole = candidates_at(three, (101, 101), component=False, thresholds=None)
    part = candidates_at(three, (101, 101), component=True, thresholds=None)
    assert {p.query for p in whole} == {2, 3} and {p.query for p in part} == {2, 3}
    q3_whole = next(p for p in whole if p.query == 3)
    q3_part = next(p for p in part if p.query == 3)
    assert q3_part.area < q3_whole.area
    assert q3_part.box[0] > 64  # only the blob at row 100 remains
    assert not q3_part.mask((128, 128))[21, 101] and q3_whole.mask((128, 128))[21, 101]


def test_box_restricts_and_ranks_by_fit(three):
    picks = candidates_at(three, box=(28, 28, 56, 56), thresholds=None)  # around query 0
    assert picks and picks[0].query == 0
    assert all(p.query in (0, 1) for p in picks)
    assert candidates_at(three, box=(0, 100, 10, 127), thresholds=None) == []
    with pytest.raises(ValueError, match="point, a box"):
        candidates_at(three)


def test_each_threshold_cuts_its_own_outline():
    """A soft query (probability falling off from its centre) is a smaller mask at 0.7 than at
    0.3: both are offered (they differ by more than the duplicate IoU)."""
    yy, xx = np.mgrid[:32, :32]
    soft = 6.0 - 0.8 * np.hypot(yy - 10, xx - 10)  # logit 0 at radius 7.5 (p = 0.5)
    src = CandidateSource(soft[None].astype(np.float32), [0.9], [0], (0.25, 0.25), (0, 0, 128, 128))
    picks = candidates_at(Candidates((128, 128), [src]), (41, 41), thresholds=(0.3, 0.5, 0.7))
    areas = {p.threshold: p.area for p in picks}
    assert min(areas, key=areas.get) == 0.7 and max(areas, key=areas.get) == 0.3


def test_near_duplicates_are_offered_once():
    masks = [_low_disc((10, 10), 5), _low_disc((10, 10), 5), _low_disc((10, 10), 8)]
    cands = Candidates((128, 128), [_source(masks, [0.9, 0.8, 0.7])])
    assert [p.query for p in candidates_at(cands, (41, 41), thresholds=None)] == [0, 2]
    assert len(candidates_at(cands, (41, 41), thresholds=None, duplicate_iou=None)) == 3


def test_tiles_are_looked_up_in_image_coordinates():
    masks = [_low_disc((10, 10), 3)]
    cands = Candidates((256, 256), [_source(masks, [0.9]), _source(masks, [0.9],
                                                                    offset=(128, 128))])
    first = candidates_at(cands, (41, 41), thresholds=None)
    second = candidates_at(cands, (128 + 41, 128 + 41), thresholds=None)
    assert [p.source for p in first] == [0] and [p.source for p in second] == [1]
    assert second[0].box[0] == first[0].box[0] + 128


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():  # every query confident, so that some pass the thresholds
        model.decoder.class_embed.bias.copy_(torch.tensor([4.0, -4.0]))
    # one view: its instances are its queries' masks (test_flipped_views_keep_the_plain_queries)
    return Segmenter(model, device="cpu", settings=PostprocessSettings(score_threshold=0.3),
                     flips=1)


def test_flipped_views_keep_the_plain_queries(segmenter):
    """With mirror views the instances are merged cells, while the click candidates stay the
    unflipped view's queries (every query, also those the merge never sees)."""
    image = np.random.default_rng(0).integers(0, 255, (90, 70), dtype=np.uint8)
    _, plain = segmenter.segment(image, candidates=True)
    segmenter.flips = 4
    try:
        _, flipped = segmenter.segment(image, candidates=True)
    finally:
        segmenter.flips = 1
    (a,), (b,) = plain.sources, flipped.sources
    assert len(flipped) == len(plain) == TINY.num_queries
    # the same network on the same view; a batch of four rounds differently (float16 storage)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)
    np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-4)


def test_segmenter_keeps_every_query_and_the_same_instances(segmenter):
    image = np.random.default_rng(0).integers(0, 255, (90, 70), dtype=np.uint8)
    plain = segmenter.segment(image)
    inst, cands = segmenter.segment(image, candidates=True)
    np.testing.assert_array_equal(inst.to_dense(), plain.to_dense())
    np.testing.assert_array_equal(inst.scores, plain.scores)
    assert cands.image_shape == (90, 70) and len(cands) == TINY.num_queries
    (src,) = cands.sources
    assert src.window == (0, 0, 90, 70) and src.logits.dtype == np.float16
    assert cands.nbytes >= src.logits.nbytes > 0
    # every kept instance is one of the candidates at its own pixels (float16 logits: ≥ 0.98)
    assert len(inst)
    for k in range(len(inst)):
        mask = inst.mask(k)
        r, c = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
        picks = candidates_at(cands, (r, c), thresholds=None, duplicate_iou=None, limit=100)
        best = max(_iou(p.mask(mask.shape), mask) for p in picks)
        assert best >= 0.98


def test_tiled_segmentation_keeps_each_tiles_queries(segmenter):
    seg = Segmenter(segmenter.model, device="cpu", settings=segmenter.settings, tile_size=64)
    image = np.random.default_rng(1).integers(0, 255, (100, 150), dtype=np.uint8)
    plain = seg.segment(image)
    inst, cands = seg.segment(image, candidates=True)
    np.testing.assert_array_equal(inst.to_dense(), plain.to_dense())
    windows = [s.window for s in cands.sources]
    assert len(windows) > 1 and len(set(windows)) == len(windows)
    covered = np.zeros(image.shape, bool)
    for y0, x0, y1, x1 in windows:
        assert 0 <= y0 < y1 <= 100 and 0 <= x0 < x1 <= 150
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_detector_keeps_no_candidates():
    """Mask R-CNN has no queries: the same instances, and nothing to click."""
    from napari_iaunet.model import MaskRCNNConfig

    torch.manual_seed(0)
    model = build_model(MaskRCNNConfig(variant="r18_cbam", input_size=128)).eval()
    seg = Segmenter(model, device="cpu", settings=PostprocessSettings(score_threshold=0.0))
    image = np.random.default_rng(2).integers(0, 255, (96, 96), dtype=np.uint8)
    inst, cands = seg.segment(image, candidates=True)
    np.testing.assert_array_equal(inst.to_dense(), seg.segment(image).to_dense())
    assert cands.sources == [] and len(cands) == 0 and cands.image_shape == (96, 96)
    assert candidates_at(cands, (48, 48)) == []


def _two_cells_merged() -> tuple[Candidates, np.ndarray]:
    """One query whose mask is two touching discs (a detection that merged two cells: centres
    (40, 36) and (40, 84) px, radius 24 px), accepted as one cell."""
    low = _low_disc((10, 9), 6) | _low_disc((10, 21), 6)
    cands = Candidates((128, 128), [_source([low], [0.95])])
    (whole,) = candidates_at(cands, (40, 36), thresholds=None)
    accepted = np.where(whole.mask((128, 128)), 3, 0).astype(np.uint16)
    return cands, accepted


def test_a_repeat_of_a_merged_cell_offers_the_clicked_half_first():
    cands, accepted = _two_cells_merged()
    for click, side in (((40, 30), "left"), ((40, 90), "right")):
        picks = candidates_at(cands, click, accepted=[accepted], thresholds=None)
        assert [p.source for p in picks] == [-2, 0]  # the piece, then the whole detection
        piece, whole = picks
        assert whole.overlap == pytest.approx(1.0)
        assert piece.mask((128, 128))[click] and piece.area < 0.6 * whole.area
        assert 0.35 < piece.overlap < 0.65  # about half of the accepted cell
        cols = np.flatnonzero(piece.mask((128, 128)).any(axis=0))
        assert (cols.max() < 64) if side == "left" else (cols.min() >= 56)
        assert piece.crop.shape == (piece.box[2] - piece.box[0], piece.box[3] - piece.box[1])
    # nothing accepted there yet, or splitting switched off: the detection as it is
    assert [p.source for p in candidates_at(cands, (40, 30), thresholds=None)] == [0]
    off = candidates_at(cands, (40, 30), accepted=[accepted], thresholds=None,
                        split_min_distance=None)
    assert [p.source for p in off] == [0]


def test_an_answer_larger_than_the_accepted_cells_offers_the_clicked_piece_first():
    """The merged discs, not accepted, partly over an accepted neighbour (a disc of radius
    20 px): the answer is larger than the median accepted cell and overlaps one, so its clicked
    half comes first, as a new cell (split_from 0). It stays whole with split_oversize off, with
    a larger factor than its size, or when it overlaps no accepted cell."""
    cands, _ = _two_cells_merged()
    neighbour = np.where(_disc((128, 128), (40, 96), 20), 5, 0).astype(np.uint16)
    picks = candidates_at(cands, (40, 30), accepted=[neighbour], thresholds=None)
    assert [p.source for p in picks] == [-2, 0]
    piece, whole = picks
    assert piece.mask((128, 128))[40, 30] and piece.area < 0.6 * whole.area
    assert 0.2 <= whole.overlap < 0.8 and piece.split_from == 0 and whole.split_from == 0
    for kwargs in ({"split_oversize": None},
                   {"split_oversize": whole.area / np.count_nonzero(neighbour) + 0.1}):
        kept = candidates_at(cands, (40, 30), accepted=[neighbour], thresholds=None, **kwargs)
        assert [p.source for p in kept] == [0], kwargs
    far = np.where(_disc((128, 128), (104, 100), 12), 5, 0).astype(np.uint16)
    assert [p.source for p in candidates_at(cands, (40, 30), accepted=[far],
                                            thresholds=None)] == [0]


def test_a_split_piece_of_a_repeated_cell_names_that_cell():
    cands, accepted = _two_cells_merged()
    piece, whole = candidates_at(cands, (40, 30), accepted=[accepted], thresholds=None)
    assert piece.split_from == 3 and whole.split_from == 0  # the whole one is no piece


def test_a_round_cell_is_not_split():
    cands = Candidates((128, 128), [_source([_low_disc((16, 16), 8)], [0.9])])
    (whole,) = candidates_at(cands, (64, 64), thresholds=None)
    accepted = np.where(whole.mask((128, 128)), 1, 0).astype(np.uint16)
    assert split_at(whole, (64, 64)) is None
    picks = candidates_at(cands, (64, 64), accepted=[accepted], thresholds=None)
    assert [p.source for p in picks] == [0]

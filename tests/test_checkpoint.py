import pytest
import torch

from napari_iaunet.checkpoint import (
    CheckpointError,
    config_from_reference_state_dict,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from napari_iaunet.model import IAUNetConfig, build_model

TINY = IAUNetConfig(backbone="resnet18", num_queries=6, input_size=64)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


def test_save_load_roundtrip_is_exact(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model,
                           {"training_data": ["synthetic"], "metrics": {"AP": 0.5}})
    loaded = load_checkpoint(path)
    assert loaded.config == TINY
    assert loaded.metadata["metrics"] == {"AP": 0.5} and "created" in loaded.metadata
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = tiny_model(x, with_aux=False)["pred_masks"]
        b = loaded.model(x, with_aux=False)["pred_masks"]
    assert torch.equal(a, b)
    assert not loaded.model.training


def test_brightness_matching_is_stored_only_when_on(tmp_path, tiny_model):
    assert "match_brightness" not in TINY.to_dict()  # older versions still read plain configs
    on = TINY.replace(match_brightness=True)
    assert on.to_dict()["match_brightness"] is True
    model = build_model(on)
    model.load_state_dict(tiny_model.state_dict())
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, {}))
    assert loaded.config.match_brightness
    assert not load_checkpoint(tmp_path / "m.pt",
                               overrides={"match_brightness": False}).config.match_brightness


def test_half_storage_halves_the_file_and_loads_as_float32(tmp_path, tiny_model):
    full = save_checkpoint(tmp_path / "full.pt", tiny_model)
    half = save_checkpoint(tmp_path / "half.pt", tiny_model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert read_checkpoint_info(half).dtype == "float16"


def test_never_overwrites_without_asking(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_checkpoint(path, tiny_model, {"other": 1})
    assert path.read_bytes() == before
    save_checkpoint(path, tiny_model, {"other": 1}, overwrite=True)
    assert read_checkpoint_info(path).metadata["other"] == 1


def test_missing_file_one_sentence(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file_one_sentence(tmp_path, tiny_model):
    good = save_checkpoint(tmp_path / "m.pt", tiny_model)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(bad)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint_info(text)


def test_other_architecture_one_sentence(tmp_path):
    torch.save({"state_dict": torch.nn.Linear(3, 4).state_dict()}, tmp_path / "lin.pt")
    with pytest.raises(CheckpointError, match="not an IAUNet checkpoint"):
        load_checkpoint(tmp_path / "lin.pt")


def test_mismatched_weights_summarised(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    obj = torch.load(path, weights_only=True)
    obj["config"]["num_queries"] = 7  # describes another model than the weights
    torch.save(obj, tmp_path / "lie.pt")
    with pytest.raises(CheckpointError, match=r"wrong shape .*query_feat") as exc:
        load_checkpoint(tmp_path / "lie.pt")
    assert len(str(exc.value).splitlines()) == 1


class _Arbitrary:
    """Any class: unpickling it would run code from the file's author."""


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"state_dict": {}, "obj": _Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(tmp_path / "evil.pt")


def test_authors_lightning_checkpoint_loads(tmp_path, tiny_model):
    """A Lightning .ckpt from the authors' code: weights under state_dict, plus criterion.*."""
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["criterion.empty_weight"] = torch.tensor([1.0, 0.1])
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.2",
            "state_dict": state, "optimizer_states": [], "lr_schedulers": []}
    torch.save(ckpt, tmp_path / "best.ckpt")
    info = read_checkpoint_info(tmp_path / "best.ckpt")
    assert info.source == "iaunet-lightning"
    assert info.config.backbone == "resnet18" and info.config.num_queries == 6
    loaded = load_checkpoint(tmp_path / "best.ckpt", overrides={"input_size": 64})
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


@pytest.mark.parametrize(("layer3_blocks", "bottleneck", "name"),
                         [(2, False, "resnet18"), (6, False, "resnet34"),
                          (6, True, "resnet50"), (23, True, "resnet101")])
def test_backbone_inferred_from_names(layer3_blocks, bottleneck, name):
    state = {"encoder.conv1.weight": torch.zeros(1),
             "decoder.query_feat.weight": torch.zeros(100, 256),
             "decoder.class_embed.weight": torch.zeros(2, 256),
             "decoder.mask_embed.weight": torch.zeros(256, 256)}
    for k in range(9):
        key = f"decoder.transformer_instance_ffn_layers.{k}.linear1.weight"
        state[key] = torch.zeros(1024, 256)
    for b in range(layer3_blocks):
        state[f"encoder.layer3.{b}.conv1.weight"] = torch.zeros(1)
    if bottleneck:
        state["encoder.layer1.0.conv3.weight"] = torch.zeros(1)
    cfg = config_from_reference_state_dict(state)
    assert cfg.backbone == name and cfg.num_queries == 100 and cfg.dec_layers == 3


def test_training_data_is_described_for_people():
    from napari_iaunet.checkpoint import describe_training_data as describe

    # what the trainer writes: a list of sources (COCO files, napari groups, memory)
    coco = {"coco": "/data/revvity25_train.json", "images_dir": "/data/images", "images": 1,
            "instances": 40, "skipped": {"iscrowd": 0, "degenerate": 0}}
    synth = {"coco": "/data/synth_train/annotations.json", "images_dir": "/data/synth/images",
             "images": 240, "instances": 5210, "skipped": {}}
    assert describe([coco]) == "revvity25_train (1 image, 40 cells)"
    assert describe([synth, coco, coco]) == (
        "synth_train (240 images, 5210 cells), revvity25_train (1 image, 40 cells) ×2")
    group = {"source": "napari", "group": "cells [x]", "image": "x", "instances": 63}
    assert describe([group]) == "cells [x] (63 cells)"
    assert describe([{"source": "memory", "images": 4, "instances": 1}]) == (
        "memory (4 images, 1 cell)")
    # what scripts/train_default_model.py installs: data set name -> licence
    licences = {"revvity25": "CC BY-NC 4.0 (Prytula et al., CVPRW 2025)",
                "isbi2014": "research use", "synthetic": "generated by napari-iaunet"}
    assert describe(licences) == "revvity25, isbi2014, synthetic"
    assert describe(licences, details=True) == (
        "revvity25: CC BY-NC 4.0 (Prytula et al., CVPRW 2025); isbi2014: research use; "
        "synthetic: generated by napari-iaunet")
    assert describe({"isbi2014": {"train_images": 24, "licence": "research use"}}) == (
        "isbi2014 (24 images)")
    assert describe([coco], details=True) == "/data/revvity25_train.json (1 image, 40 cells)"
    # plain text, nothing
    assert describe("none (random weights)") == "none (random weights)"
    assert describe(["synthetic"]) == "synthetic"
    assert describe(None) == describe([]) == "not recorded"
    # one line of at most `limit` characters: whole entries are dropped first
    many = [{"coco": f"/d/set{i}.json", "images": i} for i in range(1, 9)]
    short = describe(many, limit=60)
    assert short == "set1 (1 image), set2 (2 images), set3 (3 images) + 5 more"
    assert len(short) <= 60 and "\n" not in describe({"a": "two\nlines"}, details=True)
    assert len(describe([{"coco": "/d/" + "x" * 200 + ".json"}], limit=40)) <= 40


def test_summary_describes_the_training_data(tmp_path, tiny_model):
    meta = {"training_data": [{"coco": "/data/plate1.json", "images": 3, "instances": 120}],
            "trained_steps": 7}
    info = read_checkpoint_info(save_checkpoint(tmp_path / "m.pt", tiny_model, meta))
    line = next(x for x in info.summary().splitlines() if x.startswith("training_data:"))
    assert line.split(":", 1)[1].strip() == "/data/plate1.json (3 images, 120 cells)"


def test_stored_metrics_say_how_many_views_measured_them(tmp_path, tiny_model):
    """Metrics from before the mirror views (and the trainer's one-view validation) say "one
    view"; the default-model recipe records the views its evaluation used."""
    from napari_iaunet.checkpoint import metrics_views

    old = {"metrics": {"revvity25_AP50": 0.7268}}
    new = {**old, "metrics_views": 4}
    assert metrics_views(old) == metrics_views({**old, "metrics_views": 1}) == "one view"
    assert metrics_views(new) == "4 views"
    for meta, said in ((old, "(one view)"), (new, "(4 views)")):
        info = read_checkpoint_info(save_checkpoint(tmp_path / f"m{len(meta)}.pt", tiny_model,
                                                    meta))
        line = next(x for x in info.summary().splitlines() if x.startswith("metrics:"))
        assert line.endswith(said) and "revvity25_AP50=0.7268" in line

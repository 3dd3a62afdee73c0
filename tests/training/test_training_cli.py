import pytest

from napari_iaunet.checkpoint import load_checkpoint
from napari_iaunet.cli import main
from napari_iaunet.training.synthetic import SynthParams, write_synthetic_coco


@pytest.mark.slow
def test_train_cli_trains_resumes_and_refuses_to_clobber(tmp_path, capsys):
    ann = write_synthetic_coco(tmp_path / "d", 3, 64, seed=2, params=SynthParams(scale=0.15))
    common = ["train", "--train", str(ann), "--val", f"{ann}:{tmp_path / 'd' / 'images'}",
              "--out", str(tmp_path / "run"), "--backbone", "resnet18", "--queries", "6",
              "--input-size", "64", "--points", "256", "--threads", "1", "--print-every", "1"]
    assert main([*common, "--steps", "2", "--val-every", "2"]) == 0
    out = capsys.readouterr()
    assert "step 2/2" in out.err and "validation @ 2" in out.err and "best.pt" in out.out
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.config.backbone == "resnet18" and ckpt.config.num_queries == 6
    assert main([*common, "--steps", "2"]) == 1  # existing run, no --resume/--overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt").metadata["trained_steps"] == 3
    # fine-tune the result on the same data (keeps the checkpoint's architecture)
    ft = ["train", "--train", str(ann), "--out", str(tmp_path / "ft"), "--weights",
          str(tmp_path / "run" / "last.pt"), "--steps", "1", "--points", "256", "--threads", "1"]
    assert main(ft) == 0
    assert load_checkpoint(tmp_path / "ft" / "last.pt").config.num_queries == 6


@pytest.fixture
def trainer_calls(monkeypatch):
    """Replace the trainer: each ``train`` call records ``(cfg, model_config)`` and returns."""
    from napari_iaunet._cli import train as train_cli
    from napari_iaunet.training import trainer
    from napari_iaunet.training.trainer import TrainResult

    calls = []

    def fake_train(train_data, val_data, cfg, model_config=None, **kwargs):
        calls.append((cfg, model_config))
        return TrainResult(out_dir=cfg.out_dir, last_path=None, best_path=None, steps=0,
                           total_steps=1)

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(train_cli, "_install_stop_handler", lambda event: None)
    return calls


@pytest.fixture
def train_args(tmp_path):
    """``train`` arguments for one step on one small synthetic image."""
    ann = write_synthetic_coco(tmp_path / "d", 1, 64, seed=2, params=SynthParams(scale=0.15))
    return ["train", "--train", str(ann), "--out", str(tmp_path / "run"), "--steps", "1"]


def test_train_cli_no_augment_reaches_the_trainer(train_args, trainer_calls):
    common = train_args
    assert main(common) == 0
    assert main([*common, "--no-augment"]) == 0
    assert [cfg.augment for cfg, _ in trainer_calls] == [True, False]
    assert main([*common, "--match-brightness", "--freeze-batchnorm"]) == 0
    assert [cfg.match_brightness for cfg, _ in trainer_calls] == [None, None, True]
    assert [cfg.freeze_batchnorm for cfg, _ in trainer_calls] == [False, False, True]


def test_train_cli_query_groups_reach_a_new_model(train_args, trainer_calls, capsys):
    common = train_args
    assert main([*common, "--query-groups", "3"]) == 0
    assert trainer_calls[-1][1].query_groups == 3
    assert main([*common, "--family", "pctrans", "--query-groups", "2"]) == 1
    assert "query groups (--query-groups) do not work with centre guidance" in \
        capsys.readouterr().err


def test_train_cli_click_queries_reach_the_trainer(train_args, trainer_calls):
    assert main(train_args) == 0
    assert main([*train_args, "--click-queries", "4"]) == 0
    assert [cfg.click_queries for cfg, _ in trainer_calls] == [0, 4]


def test_train_cli_click_decoder_reaches_the_trainer(train_args, trainer_calls, capsys):
    assert main([*train_args, "--click-queries", "4", "--click-decoder"]) == 0
    assert trainer_calls[-1][0].train_click_decoder
    assert main([*train_args, "--click-decoder"]) == 1  # nothing to train without clicks
    assert "click_queries ≥ 1 (--click-queries N)" in capsys.readouterr().err
    assert main([*train_args, "--quick", "--click-queries", "4", "--click-decoder"]) == 1
    assert "does not go with --quick" in capsys.readouterr().err
    assert len(trainer_calls) == 1


def test_train_cli_masked_attention_reaches_a_new_model(train_args, trainer_calls):
    common = train_args
    assert main(common) == 0
    assert trainer_calls[-1][1].masked_attention is False
    assert main([*common, "--masked-attention"]) == 0
    assert trainer_calls[-1][1].masked_attention is True
    assert main([*common, "--family", "pctrans", "--masked-attention"]) == 0
    assert trainer_calls[-1][1].masked_attention is True


@pytest.mark.slow
def test_train_quick_says_how_long_and_which_model_to_use(tmp_path, capsys):
    ann = write_synthetic_coco(tmp_path / "d", 2, 64, seed=2, params=SynthParams(scale=0.15))
    start = ["train", "--train", str(ann), "--out", str(tmp_path / "start"), "--backbone",
             "resnet18", "--queries", "6", "--hidden-dim", "32", "--input-size", "64",
             "--points", "256", "--threads", "1", "--steps", "1"]
    assert main(start) == 0
    capsys.readouterr()
    quick = ["train", "--quick", "--train", str(ann), "--weights",
             str(tmp_path / "start" / "last.pt"), "--out", str(tmp_path / "quick"), "--steps",
             "2", "--points", "256", "--threads", "1", "--print-every", "1"]
    assert main(quick) == 0
    out = capsys.readouterr()
    assert "this run should take about" in out.err and "on cpu (2 steps of" in out.err
    assert "on the held-back part" in out.out
    used = out.out.strip().splitlines()[-1].split(" (segment with")[0]
    assert used.startswith("use: ") and used.endswith(".pt")
    assert "Score threshold" in out.out  # the one with the fewest edits on the strip
    from napari_iaunet.training.finetune import read_verdict

    verdict = read_verdict(tmp_path / "quick")
    assert verdict is not None
    # the fine-tuned model blended with the start model, or (a blend worse on the strip) the
    # fine-tuned model: best.pt, or last.pt while the strip's AP is 0 everywhere
    expected = (("start/last.pt",) if verdict["keep"] == "start"
                else ("quick/blended.pt",) if verdict["blend"]["used"]
                else ("quick/best.pt", "quick/last.pt"))
    assert used.endswith(expected)
    assert load_checkpoint(tmp_path / "quick" / "last.pt").metadata["train_config"][
        "freeze_encoder"] is True


def test_train_quick_starts_from_the_bundled_model(train_args, monkeypatch, capsys):
    from napari_iaunet._cli import train as train_cli
    from napari_iaunet.training import finetune

    seen = {}

    def fake_run(data, cfg, *, start=None, hold_back=0.0, refit_steps=0, blend=1.0, views=None,
                 **kwargs):
        seen.update(start=start, hold_back=hold_back, cfg=cfg, refit_steps=refit_steps,
                    blend=blend, views=views)
        raise SystemExit(0)

    monkeypatch.setattr(finetune, "run_finetune", fake_run)
    monkeypatch.setattr(train_cli, "_install_stop_handler", lambda event: None)
    with pytest.raises(SystemExit):
        main([*train_args, "--quick"])
    from napari_iaunet.weights import default_weights

    assert seen["start"] == default_weights() and seen["hold_back"] == 0.2
    assert seen["cfg"].freeze_encoder and seen["cfg"].lr == 1e-5 and seen["cfg"].steps == 1
    assert seen["refit_steps"] == 0 and seen["blend"] == 0.5  # halfway back to the start
    assert seen["views"] is None  # the check segments as 'segment' does by default
    assert "starting from the bundled model" in capsys.readouterr().err
    steps = train_args.index("--steps") + 1
    recipe = [*train_args[:steps], "8", *train_args[steps + 1:], "--quick"]
    with pytest.raises(SystemExit):  # a quarter more steps on the whole images after the check
        main([*recipe, "--refit", "--blend", "1"])
    assert seen["refit_steps"] == 2 and seen["blend"] == 1.0
    with pytest.raises(SystemExit):
        main([*recipe, "--no-refit"])
    assert seen["refit_steps"] == 0 and seen["hold_back"] == 0.2
    with pytest.raises(SystemExit):  # a validation set replaces the held-back strip
        main([*train_args, "--quick", "--val", train_args[2]])
    assert seen["hold_back"] == 0.0 and seen["refit_steps"] == 0
    assert main([*train_args, "--no-refit"]) == 1  # only --quick has a check to follow
    assert main([*train_args, "--blend", "0.5"]) == 1
    assert main([*train_args, "--flips", "1"]) == 1
    assert "--flips go with --quick" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the views the held-back check segments with
        main([*recipe, "--flips", "1"])
    assert seen["views"] == 1
    assert main([*recipe, "--blend", "2"]) == 2  # a bad option, as for every fraction
    assert "must be between 0 and 1" in capsys.readouterr().err
    assert main([*train_args, "--quick", "--pretrained"]) == 1

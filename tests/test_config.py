import pytest

from fgbg.config import LEGACY, Config
from fgbg.errors import FgbgError


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nwidth: 0.5\nw_depth: 2.0\nwidths: [8, 8, 16, 16, 16]\n")
    cfg = Config.load(str(path), epochs=5, width=None)
    assert (cfg.epochs, cfg.width, cfg.w_depth, cfg.widths) == (5, 0.5, 2.0, [8, 8, 16, 16, 16])
    again = Config.load(None, **{k: v for k, v in cfg.to_dict().items()})
    assert again == cfg
    (tmp_path / "round.yaml").write_text(cfg.to_yaml())
    assert Config.load(str(tmp_path / "round.yaml")) == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("epochz: 3\n", "unknown key\\(s\\) epochz"),
        ("size: 100\n", "c.yaml: size: expected an integer that is a multiple of 16 .*, not 100"),
        ("lr: abc\n", "c.yaml: lr: expected a number > 0, not 'abc'"),
        ("width: -1\n", "width: expected a number > 0, not -1"),
        ("epochs: 0\n", "epochs: expected an integer ≥ 1, not 0"),
        ("epochs: 2.5\n", "epochs: expected an integer ≥ 1, not 2.5"),
        ("w_dice: -0.5\n", "w_dice: expected a number ≥ 0, not -0.5"),
        ("batch_size: true\n", "batch_size: expected an integer ≥ 1, not True"),
        ("gpu: 1\n", "gpu: expected true or false, not 1"),
        ("test_small_epochs: false\nsize_schedule: {1: 64}\n", "test_small_epochs false with a size_schedule that never reaches size 160"),
        ("test_small_epochs: false\nschedule: plateau\nsize_schedule: {1: 64, 3: 160}\n", "leaves the plateau schedule no test loss"),
        ("widths: [8, 8, 0, 16, 16]\n", "widths: expected a list of integers, each ≥ 1"),
        ("lr_factor: 1.5\n", "lr_factor: expected a number in \\(0, 1\\)"),
        ("copy_paste: 2\n", "copy_paste: expected a number from 0 to 1"),
        ("paste_scene: -0.1\n", "paste_scene: expected a number from 0 to 1"),
        ("lr_floor: 1.5\n", "lr_floor: expected a number from 0 to 1"),
        ("name: [a]\n", "name: expected a string"),
        ("epochs: 3\nlr: [1\n", "c.yaml, line 3, column 1: not valid YAML \\(expected ',' or ']', but got '<stream end>'"),
        ("on_bad: ignore\n", "on_bad must be"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("widths: [1, 2]\n", "5 stage widths"),
        ("schedule: step\n", "schedule must be"),
        ("optimizer: sgd\n", "optimizer must be"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FgbgError, match=match):
        Config.load(str(path))


def test_a_saved_config_from_before_a_key_existed_keeps_how_it_trained(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("width: 0.5\n")  # written by an fgbg without any of LEGACY's keys (diff_input, …, depthwise_norm)
    saved = Config.load(str(old), saved=True)
    assert {k: getattr(saved, k) for k in LEGACY} == LEGACY
    assert Config.load(str(old)).width == 0.5  # a user's own file takes today's defaults
    new = tmp_path / "new.yaml"
    new.write_text(Config(diff_input=True, schedule="cosine").to_yaml())
    assert Config.load(str(new), saved=True).diff_input is True


def test_resolved_names_the_run_makes_paths_absolute_and_resumes_old_runs_as_they_were(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(data="data", out="runs", diff_input=True, schedule="cosine").resolved()
    assert cfg.name.startswith("run-") and cfg.out == str(tmp_path / "runs") and cfg.data == str(tmp_path / "data")
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "config.yaml").write_text("width: 1.0\nepochs: 2\n")  # an earlier fgbg's run
    resumed = Config(out="runs", name="old", diff_input=True, schedule="cosine", epochs=4).resolved()
    assert (resumed.diff_input, resumed.schedule, resumed.epochs) == (False, "plateau", 4)


def test_numbers_written_the_usual_ways_keep_working(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nepochs: '12'\nwidth: 1\nweight_decay: 0\n")  # PyYAML reads 1e-3 as a string
    cfg = Config.load(str(path), batch_size="16")
    assert (cfg.lr, cfg.epochs, cfg.width, cfg.weight_decay, cfg.batch_size) == (1e-3, 12, 1.0, 0.0, 16)
    assert isinstance(cfg.epochs, int) and isinstance(cfg.width, float)
    assert Config(test_samples=None, max_failures=-1).max_failures == -1


def test_set_may_name_a_key_that_has_its_own_flag_but_not_disagree_with_it(tmp_path, capsys):
    from fgbg.cli import main

    # the config is built (the run stops at the missing data, before any cluster), whichever way the key is given
    for args in (["--set", "test_samples=200"], ["--test-samples", "200", "--set", "test_samples=200"]):
        assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path), *args]) == 2
        assert "not a dataset folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "none"), "--test-samples", "100", "--set", "test_samples=200"]) == 2
    assert "--test-samples 100 and --set test_samples=200 disagree: give one" in capsys.readouterr().err

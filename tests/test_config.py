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
        ("size: 100\n", "multiple of 16"),
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
    old.write_text("width: 0.5\n")  # written by an fgbg without diff_input, w_dice, optimizer, schedule
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

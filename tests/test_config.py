import pytest

from fgbg.config import Config
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
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FgbgError, match=match):
        Config.load(str(path))

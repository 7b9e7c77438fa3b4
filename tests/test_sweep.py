"""Sweeps on a real local Ray cluster: files written, ASHA stopping early, resume after a killed driver."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.model import build_model
from fgbg.tune import load_space, sweep

FIXED = {"size": 32, "width": 0.25, "epochs": 2, "batch_size": 8, "log_every": 100}


def _space(tmp_path, space, fixed=FIXED, name="space.yaml", **sections):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"fixed": fixed, "space": space, **sections}))
    return str(path)


def test_sweep_writes_results_best_config_and_plot_and_asha_stops_weak_trials(ray_cluster, synth_data, tmp_path):
    # The objective is the test loss, and w_depth 4 weighs its depth term 8 times as much as w_depth 0.5 does:
    # those trials score far worse whatever 2 epochs of training on this tiny set do (which is little, and
    # by chance), so ASHA must stop them after their first epoch
    space = _space(tmp_path, {"w_depth": {"grid": [0.5, 4.0]}, "lr": {"uniform": [1e-3, 3e-3]}}, objective={"loss": -1})
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="s", trials=2, scheduler="asha", cache=str(tmp_path / "cache"))
    exp = tmp_path / "sweeps" / "s"
    # the sweep decoded each split once into the cache, and all four trials read that copy
    assert len(list((tmp_path / "cache").glob("*/complete.json"))) == 2
    assert len([d for d in (tmp_path / "cache").glob("*/*") if d.is_dir()]) == 2
    rows = list(csv.DictReader((exp / "results.csv").open()))
    assert len(rows) == 4 and len(r["trials"]) == 4
    for row in rows:
        assert {"lr", "w_depth", "iou", "ssim", "rmse", "samples_per_s", "params", "objective", "best_objective", "epochs", "stopped_early"} <= set(row)
        assert int(row["params"]) == sum(p.numel() for p in build_model(Config(width=0.25)).parameters())  # the space's width
        assert 0 <= float(row["iou"]) <= 1 and 0 <= float(row["ssim"]) <= 1
    assert any(row["stopped_early"] == "True" and row["epochs"] == "1" for row in rows)
    assert all(float(row["w_depth"]) == 4.0 for row in rows if row["stopped_early"] == "True")
    assert all(row["epochs"] == "2" for row in rows if row["stopped_early"] == "False")
    best = Config.load(str(exp / "best_config.yaml"))
    assert best.lr == pytest.approx(r["best"]["lr"]) and best.w_depth == pytest.approx(r["best"]["w_depth"])
    assert (best.size, best.epochs, best.width) == (32, 2, 0.25)
    assert (exp / "sweep.png").stat().st_size > 10_000


def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_cluster, synth_data, tmp_path):
    space = _space(tmp_path, {"w_depth": {"grid": [0.5, 2.0]}}, {**FIXED, "epochs": 3})
    args = ["tune", "--space", space, "--data", str(synth_data), "--trials", "1", "--scheduler", "fifo",
            "--out", str(tmp_path / "sweeps"), "--name", "r", "--concurrency", "1", "--set", "epochs=1"]  # over the space's 3
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "fgbg", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    exp = tmp_path / "sweeps" / "r"
    deadline = time.time() + 240
    finished = []
    while time.time() < deadline and not finished:
        time.sleep(2)
        finished = [d for d in exp.glob("run_trial_*") if (d / "result.json").is_file() and (d / "result.json").read_text().strip()]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished, "no trial finished before the deadline"
    assert not (exp / "results.csv").exists()
    before = {d.name: json.loads((d / "result.json").read_text().splitlines()[0]) for d in finished}
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="r", resume=True, overrides={"epochs": 1})
    assert Config.load(str(exp / "best_config.yaml")).epochs == 1
    assert len(r["trials"]) == 2 and len(list(csv.DictReader((exp / "results.csv").open()))) == 2
    for name, result in before.items():
        # a finished trial was not trained again (Tune may restart one killed as it finished: it reports
        # its last epoch again, from the checkpoint)
        assert len((exp / "trials" / result["trial_id"] / "history.jsonl").read_text().splitlines()) == 1
        assert json.loads((exp / name / "result.json").read_text().splitlines()[-1])["iou"] == result["iou"]


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"space": {"widht": {"choice": [1]}}}, "space.widht: not a training config key"),
        ({"space": {"width": {"normal": [0, 1]}}}, "space.width: expected one of choice"),
        ({"space": {"lr": {"loguniform": [0, 1]}}}, "space.lr: loguniform needs low > 0"),
        ({"space": {"lr": {"loguniform": ["1e-2", "abc"]}}}, "space.lr: loguniform takes \\[low, high\\]"),
        ({"space": {"lr": {"choice": ["abc"]}}}, "bad.yaml: lr: expected a number > 0, not 'abc'"),
        ({"space": {"lr": {"uniform": [1, 0.1]}}}, "space.lr: uniform takes \\[low, high\\]"),
        ({"space": {"batch_size": {"choice": []}}}, "space.batch_size: choice takes a non-empty list"),
        ({"space": {"size": {"choice": [32, 50]}}}, "bad.yaml: size: expected an integer that is a multiple of 16"),
        ({"space": {"lr": {"choice": [0.1]}}, "fixed": {"epochz": 3}}, "fixed.epochz: not a training config key"),
        ({"space": {"lr": {"choice": [0.1]}}, "objective": {"accuracy": 1}}, "objective weighs metrics"),
        ({"spaces": {}}, "unknown section"),
    ],
)
def test_invalid_spaces_fail_before_any_trial_naming_the_key(tmp_path, doc, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(FgbgError, match=match):
        load_space(path)


def test_set_may_not_fix_a_key_the_space_searches(synth_data, tmp_path):
    space = _space(tmp_path, {"w_depth": {"grid": [0.5, 2.0]}})
    with pytest.raises(FgbgError, match=r"--set w_depth: searched by .*space.yaml; --set fixes only keys the space does not search"):
        sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), overrides={"w_depth": 1.0, "size": 64})


def test_shipped_spaces_are_valid():
    from pathlib import Path

    spaces = sorted(Path(__file__).parents[1].glob("tune_spaces/*.yaml"))
    assert {p.name for p in spaces} >= {"default.yaml", "loss_weights.yaml", "widths.yaml", "batch_size.yaml"}
    for path in spaces:
        assert load_space(path).space


def test_numbers_in_a_space_written_as_pyyaml_reads_them(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("space:\n  lr: {loguniform: [1e-4, 1e-2]}\n  batch_size: {choice: ['8', 16]}\nfixed:\n  epochs: 2\n")
    assert load_space(path).space["lr"] == {"loguniform": [1e-4, 1e-2]}  # PyYAML reads 1e-4 as a string
    path.write_text("space:\n  lr: {loguniform: [1e-4, 1e-2}\n")
    with pytest.raises(FgbgError, match=r"space.yaml, line 2, column 31: not valid YAML \(expected ',' or '\]', but got '}'"):
        load_space(path)

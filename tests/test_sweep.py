"""Sweeps on a real local Ray cluster: files written, ASHA stopping early, resume after a killed driver."""

import csv
import json
import math
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
from fgbg.report import read_history
from fgbg.tune import load_space, sweep

FIXED = {"size": 32, "width": 0.25, "epochs": 2, "batch_size": 8, "log_every": 100}


def _space(tmp_path, space, fixed=FIXED, name="space.yaml", **sections):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"fixed": fixed, "space": space, **sections}))
    return str(path)


def test_sweep_writes_results_best_config_and_plot_and_asha_stops_weak_trials(ray_cluster, synth_data, tmp_path, capsys):
    # The objective is the test loss, and w_depth 4 weighs its depth term 8 times as much as w_depth 0.5 does:
    # those trials score far worse whatever 2 epochs of training on this tiny set do (which is little, and
    # by chance), so ASHA must stop them after their first epoch
    space = _space(tmp_path, {"w_depth": {"grid": [0.5, 4.0]}, "lr": {"uniform": [1e-3, 3e-3]}}, objective={"loss": -1})
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="s", trials=2, scheduler="asha", cache=str(tmp_path / "cache"))
    exp = tmp_path / "sweeps" / "s"
    # one-worker trials train in the trial's own process, and later trials reuse the first one's (one at a time here)
    first_epochs = [read_history(str(exp / "trials" / t["trial"]))[0] for t in r["trials"]]
    assert len({h["process"] for h in first_epochs}) < len(first_epochs)
    assert all(t["start_s"] >= 0 for t in r["trials"])  # seconds from each trial's start to its first step, measured
    # the driver's table: a compact row for each report of each trial (not a terminal: a line per change), no Tune boxes
    shown = capsys.readouterr().out
    for t in r["trials"]:
        rows = [line.split() for line in shown.splitlines() if line.startswith(t["trial"])]
        assert rows[0][1] == "RUNNING" and rows[-1][1] in ("done", "stopped") and len(rows) >= t["epochs"] + 1
        assert rows[-1][2] == f"{t['epochs']}/2" and float(rows[-1][5]) == pytest.approx(t["objective"], abs=1e-4)
    assert "Trial status" not in shown and "╭" not in shown
    # ranked by the last epoch's objective, the best epoch's beside it
    assert [t["objective"] for t in r["trials"]] == sorted((t["objective"] for t in r["trials"]), reverse=True)
    assert r["best"] is r["trials"][0] and all(t["best_objective"] >= t["objective"] for t in r["trials"])
    assert r["checkpoint"].startswith(str(exp / "trials" / r["best"]["trial"] / "checkpoint_"))
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


def test_killed_optuna_sweep_resumes_without_rerunning_finished_trials(ray_cluster, synth_data, tmp_path):
    space = _space(tmp_path, {"w_depth": {"choice": [0.5, 2.0]}}, {**FIXED, "epochs": 3})
    args = ["tune", "--space", space, "--data", str(synth_data), "--trials", "2", "--scheduler", "fifo", "--search", "optuna",
            "--out", str(tmp_path / "sweeps"), "--name", "r", "--concurrency", "1", "--set", "epochs=1",  # over the space's 3
            "--workers-per-trial", "1"]  # a Ray Train worker group per trial (slower to start: the kill finds the second running)
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
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="r", resume=True, overrides={"epochs": 1}, workers_per_trial=1)
    assert Config.load(str(exp / "best_config.yaml")).epochs == 1
    assert len(r["trials"]) == 2 and len(list(csv.DictReader((exp / "results.csv").open()))) == 2
    for name, result in before.items():
        # a finished trial was not trained again (Tune may restart one killed as it finished: it reports
        # its last epoch again, from the checkpoint)
        assert len((exp / "trials" / result["trial_id"] / "history.jsonl").read_text().splitlines()) == 1
        assert json.loads((exp / name / "result.json").read_text().splitlines()[-1])["iou"] == result["iou"]


def test_optuna_with_asha_compares_trials_only_after_epochs_at_the_final_size_and_random_runs_with_fifo(ray_cluster, synth_data, tmp_path):
    # named size schedules: "late" trains epoch 1 at 16×16, so ASHA's first rung (1 epoch at the final 32×32) falls at its
    # epoch 2, where "early" reaches it at epoch 1; a trial is never stopped before it trained an epoch at the final size
    schedules = {"late": {1: 16, 2: 32}, "early": {1: 32}}
    space = _space(tmp_path, {"size_schedule": {"choice": schedules}, "lr": {"loguniform": [1e-3, 1e-2]}},
                   {**FIXED, "epochs": 3, "test_small_epochs": False})  # not tested where ASHA does not compare
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="o", trials=4, scheduler="asha", search="optuna")
    exp = tmp_path / "sweeps" / "o"
    rows = list(csv.DictReader((exp / "results.csv").open()))
    assert len(rows) == 4 and {row["size_schedule"] for row in rows} <= set(schedules)  # the names, in the table and results
    for t in r["trials"]:
        history = read_history(str(exp / "trials" / t["trial"]))
        assert [h["epochs_at_size"] for h in history] == [e - (t["size_schedule"] == "late") for e in range(1, len(history) + 1)]
        assert history[-1]["epochs_at_size"] >= 1
        assert [math.isnan(h["iou"]) for h in history] == [h["epochs_at_size"] == 0 for h in history]  # small-size epochs untested
        # its checkpoints in its run directory, as Ray Train keeps them: the latest and the two best by IoU (untested last)
        kept = {json.loads(p.read_text())["epoch"] for p in (exp / "trials" / t["trial"]).glob("checkpoint_*/metrics.json")}
        by_iou = sorted(history, key=lambda h: -1 if math.isnan(h["iou"]) else h["iou"], reverse=True)
        assert kept == {history[-1]["epoch"], *(h["epoch"] for h in by_iou[:2])}
    best = Config.load(str(exp / "best_config.yaml"))
    assert best.size_schedule == schedules[r["best"]["size_schedule"]]  # the trial's value, not its name
    r = sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), name="f", trials=1, scheduler="fifo", search="random", epochs=2)
    assert len(r["trials"]) == 1 and (tmp_path / "sweeps" / "f" / "best_config.yaml").is_file()


def test_optuna_refuses_a_grid_in_one_line(synth_data, tmp_path):
    space = _space(tmp_path, {"w_depth": {"grid": [0.5, 2.0]}, "lr": {"choice": [0.001, 0.01]}})
    with pytest.raises(FgbgError, match=r"^\S*space.yaml: w_depth: grid: tries every value in every sample, which Optuna's sampling does not "
                       r"do: write choice: for --search optuna, or use --search random$"):
        sweep(space, str(synth_data), out=str(tmp_path / "sweeps"), search="optuna")


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


def test_a_trial_in_its_own_process_resumes_from_the_latest_whole_checkpoint_in_its_run_directory(tmp_path):
    from fgbg import checkpoints
    from fgbg.tune import InTrial

    cfg = Config(size=32, width=0.25, out=str(tmp_path), name="trial")
    assert InTrial(cfg, {}).checkpoint() is None  # a new trial starts afresh
    for epoch in (1, 2, 3):
        folder = tmp_path / "trial" / f"checkpoint_{epoch}"
        folder.mkdir(parents=True)
        checkpoints.write(folder, build_model(cfg).state_dict(), {"epoch": epoch - 1}, cfg, {"epoch": epoch, "iou": 0.1 * epoch})
    (tmp_path / "trial" / "checkpoint_3" / "model.pt").write_bytes(b"cut short")  # the latest, not written whole
    assert InTrial(cfg, {}).checkpoint().path.endswith("checkpoint_2")

"""Training, resuming, evaluating and predicting on a real local Ray cluster, on tiny data."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgbg.checkpoints import find as find_checkpoints
from fgbg.cli import main
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.ingest import load_tables
from fgbg.pictures import LABEL_PX
from fgbg.report import read_history
from fgbg.synth import SynthSpec, write_dataset
from fgbg.train import fit, make_trainer

from loopback import beyond_loopback, cluster_pids, listeners, registered_epoch, watching
from original import rewrite_zip, write_original

TINY = dict(size=32, width=0.25, batch_size=8, log_every=1, lr=3e-3)


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, synth_data, tmp_path_factory):
    """2 workers × 2 epochs; the test split cut to 23 samples, which does not split evenly."""
    out = tmp_path_factory.mktemp("runs")
    cfg = Config(data=str(synth_data), out=str(out), name="dp", epochs=2, workers=2, test_samples=23, **TINY)
    with watching(*cluster_pids(ray_cluster)) as seen:  # every listener of the session's cluster while the run trains
        result = fit(cfg)
    return result, cfg, seen


def test_data_parallel_run_reports_all_reduced_metrics_and_writes_its_directory(two_worker_run):
    result, cfg, _ = two_worker_run
    m = result["metrics"]
    assert m["epoch"] == 2
    assert m["test_samples"] == 23  # every test sample once: padding evened the shards, then was dropped
    assert m["train_samples"] == 24  # 2 workers × 12 (drop_last on batches of 4 per worker)
    for key in ("loss", "train_loss", "train_loss_mask", "train_loss_depth_ssim", "iou", "iou_flat", "ssim", "rmse", "delta1",
                "samples_per_s", "time_compute", "time_data", "time_other", "lr", "best_iou", "objective", "params"):
        assert key in m and np.isfinite(m[key]), key
    assert 0 <= m["iou"] <= 1 and 0 <= m["ssim"] <= 1 and m["skipped"] == 0
    run = result["run_dir"]
    assert Config.load(f"{run}/config.yaml").workers == 2
    checkpoints = find_checkpoints(run)
    assert checkpoints[-1][1]["epoch"] == 2 and len(checkpoints) <= 3  # the two best by IoU and the latest
    assert list(Path(checkpoints[-1][0]).glob("*.pt"))
    assert list(Path(run, "tensorboard").glob("events.out.tfevents.*"))
    # the first epoch says where the time to its first step went, part by part
    first, second = read_history(run)
    parts = {k: v for k, v in first.items() if k.startswith("startup_") and k != "startup_total"}
    assert set(parts) == {f"startup_{p}" for p in ("connect", "datasets", "workers", "model", "first_batch", "first_step")}
    assert all(v >= 0 for v in parts.values()) and sum(parts.values()) == pytest.approx(first["startup_total"])
    assert not any(k.startswith("startup_") for k in second)


def test_a_local_run_listens_on_loopback_only(two_worker_run):
    """The session's cluster is started as fgbg starts one (tests/conftest.py): Ray's servers, its workers, and the
    training group's own sockets (gloo; the rendezvous is a file) all on loopback, none reachable from the network."""
    *_, seen = two_worker_run
    assert any(name.startswith("ray::RayTrainWorker") for *_, name in seen)  # the training workers' sockets were watched
    assert {ip for ip, *_ in seen} and beyond_loopback(seen) == set()


def test_same_run_name_resumes_from_its_last_checkpoint(two_worker_run, capsys):
    _, cfg, _ = two_worker_run
    # harmless changes: allowed, and recorded; epochs of drawn samples from now on, the draws going on after the 48 trained
    cfg = Config.from_dict({**cfg.to_dict(), "epochs": 3, "lr": 1e-3, "samples_per_epoch": 16})
    result = fit(cfg)
    out, err = capsys.readouterr()
    assert "resuming after epoch 2 of 3" in out
    assert "resuming after epoch 2 with samples_per_epoch None → 16, epochs 2 → 3, lr 0.003 → 0.001" in err
    assert "epoch 1/3" not in out and "epoch 3/3 done" in out
    assert result["metrics"]["epoch"] == 3
    history = read_history(result["run_dir"])
    assert [m["epoch"] for m in history] == [1, 2, 3]  # the history goes on, no epoch twice
    assert [(m["train_samples"], m["samples_drawn"]) for m in history] == [(24, 24), (24, 48), (16, 64)]
    assert history[-1]["lr"] == pytest.approx(1e-3 * 0.01)  # the new peak rate, at the cosine's end
    changes = [json.loads(line) for line in Path(result["run_dir"], "changes.jsonl").read_text().splitlines()]
    assert [(c["after_epoch"], c["changed"]) for c in changes] == [(2, {"samples_per_epoch": [None, 16], "epochs": [2, 3], "lr": [0.003, 0.001]})]
    assert make_trainer(Config.from_dict({**cfg.to_dict(), "epochs": 4}), load_tables(cfg)).train_loop_config["drawn_from"] == 64
    assert "already trained for 3 epochs" in (fit(cfg) and capsys.readouterr().out)
    # a worker group started on a finished run (as Tune restarts a trial killed as it finished) trains
    # nothing and reports its last epoch again
    again = make_trainer(cfg, load_tables(cfg)).fit()
    assert again.metrics["epoch"] == 3 and again.metrics["iou"] == result["metrics"]["iou"]
    assert len(read_history(result["run_dir"])) == 3


def test_evaluate_any_dataset_in_the_layout(two_worker_run, tmp_path, capsys):
    result, _, _ = two_worker_run
    other = write_original(tmp_path / "other", batches=2, size=48, depth_size=24)  # another program, other sizes
    assert main(["evaluate", "--checkpoint", result["run_dir"], "--data", str(other), "--json", "--out", str(tmp_path / "ev")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["samples"] == 12 and r["split"] == "test"
    for key in ("iou", "iou_flat", "ssim", "rmse", "delta1", "baseline_iou"):
        assert 0 <= r[key] <= 1 or key == "rmse"
    grid = Image.open(tmp_path / "ev" / "results.png")
    assert grid.size[0] == LABEL_PX + 6 * 128  # each row's IoU, then six columns: bg, fg_bg, mask, predicted mask, depth, predicted depth
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["samples"] == 12
    assert main(["evaluate", "--checkpoint", result["run_dir"], "--data", str(other), "--split", "all", "--json", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 24
    assert main(["evaluate", "--checkpoint", result["run_dir"], "--data", str(other), "--flip", "--json", "--out", str(tmp_path / "ev")]) == 0
    flipped = json.loads(capsys.readouterr().out)
    assert flipped["flip"] and flipped["samples"] == 12 and 0 <= flipped["iou"] <= 1 and flipped["baseline_iou"] == r["baseline_iou"]


def test_predict_with_a_trained_run_writes_the_mask_and_depth_of_a_pair_at_its_size(two_worker_run, tmp_path):
    result, _, _ = two_worker_run
    fg_bg = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    fg_bg.save(tmp_path / "pair.jpg")
    Image.new("RGB", (70, 50), (90, 120, 30)).save(tmp_path / "bg.jpg")
    pair = ["--fg-bg", str(tmp_path / "pair.jpg"), "--bg", str(tmp_path / "bg.jpg")]
    assert main(["predict", "--checkpoint", result["run_dir"], *pair, "--out", str(tmp_path / "p")]) == 0
    mask, depth = Image.open(tmp_path / "p" / "masks" / "pair.png"), Image.open(tmp_path / "p" / "depth" / "pair.png")
    assert mask.size == (70, 50) and depth.size == (35, 25) and depth.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_local_mode_trains_in_this_process_in_epochs_of_samples_drawn_pass_after_pass(ray_cluster, synth_data, tmp_path):
    cfg = Config(data=str(synth_data), out=str(tmp_path), name="local", epochs=2, workers=0, samples_per_epoch=18, **TINY)
    result = fit(cfg)
    assert result["metrics"]["epoch"] == 2 and result["metrics"]["test_samples"] == 24
    # epochs of 16 samples (18, in whole batches of 8) drawn from the 24 training samples: the second epoch ends a third of
    # the way into the second pass (a resume goes on from there: test_same_run_name_resumes_from_its_last_checkpoint)
    assert [(m["train_samples"], m["samples_drawn"]) for m in read_history(result["run_dir"])] == [(16, 16), (16, 32)]


def test_bad_sample_stops_training_naming_it_or_is_skipped_and_counted(ray_cluster, tmp_path):
    root = write_original(tmp_path / "d", batches=2, n_fg=4)
    member = "fg_bg_jpg/fg_bg_2_1_1_1.jpg"
    with zipfile.ZipFile(root / "batch1_images.zip") as zf:
        truncated = zf.read(member)[:150]
    rewrite_zip(root / "batch1_images.zip", {member: truncated})
    cfg = dict(data=str(root), out=str(tmp_path / "runs"), epochs=1, workers=0, **TINY)
    for cache in ("", str(tmp_path / "strict-cache")):  # decoded while training, or into the cache first
        with pytest.raises(FgbgError, match=f"batch1_images.zip: {member}: undecodable or truncated JPEG"):
            fit(Config(name="strict", cache=cache, **cfg))
    # through the decoded-sample cache: the bad sample is kept marked in its shard, then skipped and counted
    result = fit(Config(name="lenient", on_bad="skip", cache=str(tmp_path / "cache"), **cfg))
    assert result["metrics"]["skipped"] == 1 and result["metrics"]["train_samples"] == 15
    assert len(list((tmp_path / "cache").glob("*/complete.json"))) == 2  # the train and the test split


def test_missing_partner_is_an_error_before_training_unless_skipping(ray_cluster, tmp_path):
    root = write_original(tmp_path / "d", batches=2, n_fg=4)
    rewrite_zip(root / "batch2_images.zip", {"mask_black_jpg/bg_mask_1_3_0_1.jpg": None})
    with pytest.raises(FgbgError, match="(?s)1 problem.*fg_bg_1_3_0_1.jpg: missing partner file mask_black_jpg/bg_mask_1_3_0_1.jpg"):
        fit(Config(data=str(root), out=str(tmp_path / "runs"), name="x", epochs=1, workers=0, **TINY))


def test_killed_train_driver_resumes_when_the_same_command_runs_again(tmp_path):
    """`fgbg train` in local mode (its own cluster), killed after its first checkpoint, then run again."""
    data = tmp_path / "data"
    write_dataset(SynthSpec(str(data), batches=2, per_batch=160, size=32, seed=2), workers=0)
    args = [sys.executable, "-m", "fgbg", "train", "--data", str(data), "--out", str(tmp_path), "--name", "k",
            "--size", "32", "--width", "0.25", "--epochs", "3", "--workers", "1", "--batch-size", "8", "--set", "log_every=100"]
    # as a user starts it: no RAY_AUTH_MODE of the tests' own (the token still comes from RAY_AUTH_TOKEN, not ~/.ray)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"} | {"RAY_ADDRESS": ""}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    deadline, seen = time.time() + 240, set()
    while registered_epoch(tmp_path / "k") < 1 and time.time() < deadline and proc.poll() is None:
        seen |= listeners(proc.pid)  # the driver, the cluster it started, and its training worker
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert any(name.startswith("ray::RayTrainWorker") for *_, name in seen) and beyond_loopback(seen) == set()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = registered_epoch(tmp_path / "k")
    assert 1 <= done < 3
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = int(re.search(r"resuming after epoch (\d) of 3", again.stdout).group(1))
    assert resumed >= done  # from the last checkpoint there is (a later one may have landed as the driver died)
    assert [f"epoch {e}/3 done" in again.stdout for e in (1, 2, 3)] == [e > resumed for e in (1, 2, 3)]
    assert find_checkpoints(tmp_path / "k")[-1][1]["epoch"] == 3
    # a quiet first run: fgbg says in one line what it started, and Ray's notices stay in Ray's logs
    assert re.search(r"fgbg: started a local Ray cluster \(\d+ CPUs on \d+ cores, listening on 127\.0\.0\.1 only, token auth on\); "
                     r"dashboard http://127\.0\.0\.1:\d+",
                     again.stderr), again.stderr[-2000:]
    assert "Token authentication is enabled" not in again.stdout + again.stderr

    # evaluate on a dataset with a truncated JPEG: no Ray Data notice, and the real problem still shows, naming the file
    member = next(n for n in zipfile.ZipFile(data / "batch2_images.zip").namelist() if n.startswith("fg_bg_jpg/fg_bg_"))
    rewrite_zip(data / "batch2_images.zip", {member: zipfile.ZipFile(data / "batch2_images.zip").read(member)[:150]})
    evaluated = subprocess.run([sys.executable, "-m", "fgbg", "evaluate", "--checkpoint", str(tmp_path / "k"), "--data", str(data)],
                               capture_output=True, text=True, env=env, timeout=300)
    printed = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 2 and f"batch2_images.zip: {member}: undecodable or truncated JPEG" in evaluated.stderr, printed[-3000:]
    assert "Progress bars disabled" not in printed and "Token authentication is enabled" not in printed and "Traceback" not in printed

"""Bad input and faults: checkpoints that do not load, pairs that do not match, resumes that would change a
run's meaning, two drivers for one run, a disk that fills while checkpointing, what a local cluster listens on.
(docs/reliability.md lists every fault with the test that shows what fgbg does.)"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fgbg import checkpoints
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.model import build_model
from fgbg.optim import Schedule, build_optimizer
from fgbg.runlock import LOCK, RunLock
from fgbg.train import fit

from loopback import beyond_loopback, cluster_pids, listeners

SMALL = dict(size=32, width=0.25)


def _checkpoint(folder, cfg=None):
    cfg = cfg or Config(**SMALL)
    checkpoints.write_untrained(folder, cfg)
    return folder


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "does not load"),
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "does not load"),
    (lambda p: torch.save([1, 2, 3], p), "holds a list, not a state_dict"),
    (lambda p: torch.save(build_model(Config(width=0.5)).state_dict(), p), "another model.s weights: 109 tensors of other shapes"),
])
def test_a_checkpoint_that_does_not_load_is_one_error_naming_its_file(tmp_path, damage, reason):
    folder = _checkpoint(tmp_path / "checkpoint_000000")
    damage(folder / "model.pt")
    with pytest.raises(FgbgError, match=f"{folder / 'model.pt'}: .*{reason}"):
        checkpoints.load_model(folder)


def test_resuming_may_not_change_the_models_shape_or_the_datas_meaning(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(Config(out=str(tmp_path / "runs"), name="r", **SMALL).to_yaml())
    with pytest.raises(FgbgError, match=r"resuming it cannot change size 32 → 64, width 0.25 → 0.5"):
        Config(out=str(tmp_path / "runs"), name="r", size=64, width=0.5).resolved().changes_since_saved()
    with pytest.raises(FgbgError, match=r"cannot change test_batches None → \[1\]"):
        Config(out=str(tmp_path / "runs"), name="r", test_batches=[1], **SMALL).resolved().changes_since_saved()
    resumed = Config(out=str(tmp_path / "runs"), name="r", epochs=20, lr=1e-3, workers=4, **SMALL).resolved()
    assert resumed.changes_since_saved() == {"epochs": [Config.epochs, 20], "lr": [Config.lr, 1e-3], "workers": [Config.workers, 4]}


@pytest.mark.parametrize("kind", ["cosine", "plateau"])
def test_a_new_lr_overrides_the_one_the_optimiser_saved(kind):
    before, after = Config(schedule=kind, lr=1e-2, epochs=2), Config(schedule=kind, lr=1e-3, epochs=2)
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(before, model.parameters())
    schedule = Schedule(before, optimizer, steps_per_epoch=10)
    for _ in range(15):
        optimizer.step()
        schedule.after_step()
    rate = optimizer.param_groups[0]["lr"]

    def resume(cfg):  # as the worker loop does: a new optimiser and schedule, then the saved states
        new = build_optimizer(cfg, model.parameters())
        new_schedule = Schedule(cfg, new, steps_per_epoch=10)
        new.load_state_dict(optimizer.state_dict())
        new_schedule.load_state_dict(schedule.state_dict())
        return new.param_groups[0]["lr"]

    assert resume(after) == pytest.approx(rate / 10 if kind == "cosine" else 1e-3)  # (plateau: the new rate, without cuts)
    assert resume(before) == pytest.approx(rate)  # the same lr: where it was


def test_one_driver_per_run_and_a_dead_drivers_lock_does_not_block(tmp_path):
    run = str(tmp_path / "run")
    with RunLock(run):
        lock = json.loads((tmp_path / "run" / LOCK).read_text())
        assert (lock["host"], lock["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(FgbgError, match=f"another fgbg train is writing this run \\(pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(run).__enter__()
    assert not (tmp_path / "run" / LOCK).exists()  # released
    dead = subprocess.Popen(["true"])
    dead.wait()
    for holder in ({"host": socket.gethostname(), "pid": dead.pid},  # this machine's driver, killed
                   {"host": "elsewhere", "pid": 1, "beat": time.time() - 120}):  # another machine's, silent for 2 minutes
        (tmp_path / "run" / LOCK).write_text(json.dumps({"started": 0, "beat": time.time(), **holder}))
        with RunLock(run):
            assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == os.getpid()
    (tmp_path / "run" / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "beat": time.time()}))
    with pytest.raises(FgbgError, match="on elsewhere"):  # another machine's driver, alive a moment ago
        RunLock(run).__enter__()


def test_train_refuses_a_run_another_live_driver_holds_and_an_unwritable_out_before_starting_ray(synth_data, tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "runs" / "r").mkdir(parents=True)
        lock = {"host": socket.gethostname(), "pid": other.pid, "started": time.time(), "beat": time.time()}
        (tmp_path / "runs" / "r" / LOCK).write_text(json.dumps(lock))
        with pytest.raises(FgbgError, match=f"another fgbg train is writing this run \\(pid {other.pid}"):
            fit(Config(data=str(synth_data), out=str(tmp_path / "runs"), name="r", epochs=1, batch_size=8, **SMALL))
    finally:
        other.kill()
    (tmp_path / "file").write_text("")
    with pytest.raises(FgbgError, match="cannot write to the run folder"):
        fit(Config(data=str(synth_data), out=str(tmp_path / "file"), name="r", epochs=1, batch_size=8, **SMALL))


def test_a_damaged_latest_checkpoint_gives_way_to_the_newest_good_one_and_the_history_is_cut_back(tmp_path):
    import ray.train

    from fgbg.losses import MaskDepthLoss
    from fgbg.report import append_history, read_history
    from fgbg.step import TrainStep
    from fgbg.train import resume

    cfg = Config(**SMALL)

    def fresh():
        model = build_model(cfg)
        optimizer = build_optimizer(cfg, model.parameters())
        return TrainStep(model, optimizer, MaskDepthLoss(), torch.device("cpu"), amp=False), Schedule(cfg, optimizer, 10)

    step, schedule = fresh()
    run = tmp_path / "run"
    for epoch in (0, 1):
        folder = run / f"checkpoint_00000{epoch}"
        folder.mkdir(parents=True)
        state = {"optimizer": step.optimizer.state_dict(), "scheduler": schedule.state_dict(), "epoch": epoch, "best_iou": 0.1, "step": 10}
        checkpoints.write(folder, step.core.state_dict(), state, cfg, {"epoch": epoch + 1, "iou": 0.1 * epoch})
        append_history(str(run), {"epoch": epoch + 1, "iou": 0.1 * epoch})
    latest = run / "checkpoint_000001"
    (latest / "model.pt").write_bytes((latest / "model.pt").read_bytes()[:1000])  # a disk that filled as it was written

    start = resume(ray.train.Checkpoint.from_directory(str(latest)), *fresh(), "cpu", str(run))
    assert start.epoch == 1 and f"{latest / 'model.pt'}: does not load" in start.damaged  # resumes after epoch 1, not 2
    append_history(str(run), {"epoch": 2, "iou": 0.5})  # the resumed run's epoch 2 replaces the lost one
    assert [(m["epoch"], m["iou"]) for m in read_history(str(run))] == [(1, 0.0), (2, 0.5)]
    (run / "checkpoint_000000" / "state.pt").write_bytes(b"")
    with pytest.raises(FgbgError, match="checkpoint_000001/model.pt: does not load"):  # none loads: the latest's error
        resume(ray.train.Checkpoint.from_directory(str(latest)), *fresh(), "cpu", str(run))


def test_a_batch_smaller_than_its_workers_and_a_missing_checkpoint_are_errors(tmp_path):
    with pytest.raises(FgbgError, match="batch_size 2 is smaller than the 4 workers it is split over"):
        Config(batch_size=2, workers=4)
    with pytest.raises(FgbgError, match="nothing: not a checkpoint"):
        checkpoints.load_model(tmp_path / "nothing")


@pytest.mark.parametrize("damage", [
    lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes()[:100]),  # copied part way
    lambda f: (f / "state.pt").unlink(),  # not copied yet
    lambda f: (f / "metrics.json").write_text((f / "metrics.json").read_text()[:20]),  # metrics.json itself part way
])
def test_a_checkpoint_folder_copied_part_way_is_not_found_as_a_checkpoint(tmp_path, damage):
    first, second = _checkpoint(tmp_path / "run" / "checkpoint_a"), _checkpoint(tmp_path / "run" / "checkpoint_b")
    damage(second)
    assert [folder for folder, _ in checkpoints.find(str(tmp_path / "run"))] == [str(first)]


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs) that a test can fill; mounting needs root. Without it, the mechanism is still
    tested: test_a_checkpoint_folder_copied_part_way_is_not_found_as_a_checkpoint."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the half-written checkpoint itself is tested without it")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk, leave: int) -> None:
    """Fill the filesystem until about `leave` bytes are free."""
    with open(disk / "filler", "wb") as f:
        while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave:
            f.write(b"\0" * min(free - leave, 1 << 20))
            f.flush()


def test_a_cache_that_would_not_fit_is_refused_before_anything_is_written(ray_cluster, synth_data, small_disk):
    from fgbg.cache import cached_dataset
    from fgbg.ingest import IngestConfig
    from fgbg.layout import load_manifest

    m = load_manifest(synth_data)
    table = m.with_paths(m.split()["train"])  # 24 samples: about 2.8 MB at 160×160 with their 9 backgrounds
    _fill(small_disk, leave=1 << 20)
    with pytest.raises(FgbgError, match=rf"--cache {small_disk}/\w+/\w+: decoding this split needs about 2\.\d MB there; 1\.\d MB are free"):
        cached_dataset(table, IngestConfig(size=160), str(small_disk), say=lambda _: None)
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


def test_a_disk_that_fills_ends_the_run_and_keeps_its_last_good_checkpoint(ray_cluster, synth_data, small_disk):
    cfg = dict(data=str(synth_data), out=str(small_disk), name="r", batch_size=8, workers=1, max_failures=0, **SMALL)
    fit(Config(epochs=1, **cfg))
    [(first, metrics)] = checkpoints.find(str(small_disk / "r"))
    size = sum(f.stat().st_size for f in Path(first).iterdir())
    _fill(small_disk, leave=size // 2)  # room for half a checkpoint
    with pytest.raises(FgbgError, match="No space left on device"):
        fit(Config(epochs=2, **cfg))
    folders = [p for p in (small_disk / "r").glob("checkpoint_*") if p.is_dir()]
    assert len(folders) == 2 and checkpoints.find(str(small_disk / "r")) == [(first, metrics)]  # the half-written
    # epoch 2 is there, and does not take epoch 1's place
    checkpoints.load_model(first)
    (small_disk / "filler").unlink()  # room again: the same command resumes after epoch 1
    result = fit(Config(epochs=2, **cfg))
    assert result["metrics"]["epoch"] == 2 and checkpoints.find(str(small_disk / "r"))[-1][1]["epoch"] == 2


def test_a_local_cluster_listens_on_loopback_only_and_refuses_a_client_with_another_token(ray_cluster, tmp_path):
    """The session's cluster, started as fgbg starts one: no listener beyond loopback (while training too:
    test_train.py::test_a_local_run_listens_on_loopback_only), and a client with another token is refused."""
    node = ray_cluster._private.worker._global_node
    seen = listeners(*cluster_pids(ray_cluster))
    dashboard = int(node.address_info["webui_url"].rsplit(":", 1)[1])
    gcs = int(ray_cluster.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    assert {port for _, port, _ in seen} >= {dashboard, gcs} and beyond_loopback(seen) == set()
    # … and on loopback, a client (another user of this machine) with another token is refused by the GCS
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN=secrets.token_hex(32))
    stranger = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{gcs}')"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert stranger.returncode != 0 and "Authentication token is missing or incorrect" in stranger.stderr

"""The worker loop's parts that run without a Ray cluster: the learning-rate schedule, an epoch's metrics, the
checkpoint format, an epoch's training mode, progressive resizing."""

import json

import pytest
import torch

from fgbg import checkpoints
from fgbg.batch import prepare_batch
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.losses import MaskDepthLoss
from fgbg.model import UNet, build_model
from fgbg.optim import Schedule, build_optimizer, warmup_cosine
from fgbg.step import TrainStep
from fgbg.train import PARTS, EpochStats, epoch_metrics, train_epoch


def test_warmup_then_cosine_by_hand():
    assert warmup_cosine(0, total=100, warmup=10) == pytest.approx(0.1)
    assert warmup_cosine(5, total=100, warmup=10) == pytest.approx(0.55)
    assert warmup_cosine(10, total=100, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(55, total=100, warmup=10) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way down the cosine
    assert warmup_cosine(100, total=100, warmup=10) == pytest.approx(0.01)
    assert warmup_cosine(55, total=100, warmup=10, floor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # lr_floor 0.1: ends at lr/10
    assert warmup_cosine(100, total=100, warmup=10, floor=0.1) == pytest.approx(0.1)


def test_cosine_ends_at_lr_floor():
    cfg = Config(lr=1e-2, epochs=2, warmup_epochs=0, lr_floor=0.1)
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 1).parameters())
    schedule = Schedule(cfg, optimizer, steps_per_epoch=5)
    for _step in range(10):
        optimizer.step()
        schedule.after_step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", ["plateau", "cosine"])
def test_schedules_step_when_they_should_and_resume(kind):
    cfg = Config(schedule=kind, lr=1e-2, epochs=4, warmup_epochs=1, lr_patience=0, lr_factor=0.5)
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(cfg, model.parameters())
    schedule = Schedule(cfg, optimizer, steps_per_epoch=10)
    rates = []
    for _ in range(4):
        for _step in range(10):
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(1.0)  # a test loss that never improves
        rates.append(optimizer.param_groups[0]["lr"])
    if kind == "plateau":  # the rate halves after each epoch without a better loss (the first sets the best)
        assert rates == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3])
    else:  # warm-up to the peak in epoch 1, then down the cosine to lr/100 at the last step
        assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-4)
        assert rates[1] > rates[2] > rates[3]
    again = Schedule(cfg, build_optimizer(cfg, model.parameters()), steps_per_epoch=10)
    again.load_state_dict(schedule.state_dict())
    assert again.state_dict() == schedule.state_dict()


def test_epoch_metrics_from_summed_parts_by_hand():
    test = {"iou": 0.5, "iou_flat": 0.4, "ssim": 0.8, "rmse": 0.1, "delta1": 0.9, "loss": 0.7, "samples": 10}
    sums = {"loss": 12.0, "loss_mask": 8.0, "loss_depth_ssim": 4.0}
    train_sums = [20, 1, *[sums.get(k, 0.0) for k in PARTS]]  # 2 workers' sums, already added up
    times = {"time_train": 4.0, "time_compute": 3.0, "time_data": 0.5, "time_epoch": 5.0}
    m = epoch_metrics(3, test, train_sums, times, lr=1e-3, objective={"iou": 0.5, "ssim": 0.5}, best_iou=0.6)
    assert m["epoch"] == 3 and m["train_samples"] == 20 and m["skipped"] == 1 and m["test_samples"] == 10
    assert (m["train_loss"], m["train_loss_mask"], m["train_loss_depth_ssim"]) == (0.6, 0.4, 0.2)
    assert "train_loss_depth_l1" not in m and "samples" not in m
    assert m["samples_per_s"] == 5.0 and m["time_other"] == 1.5
    assert m["objective"] == pytest.approx(0.65) and m["best_iou"] == 0.6
    assert epoch_metrics(4, {**test, "iou": 0.9}, train_sums, times, 1e-3, {"iou": 1.0}, best_iou=0.6)["best_iou"] == 0.9


def test_epoch_stats_sums_in_parts_order():
    stats = EpochStats(seen=6, skipped=2, parts={"loss": torch.tensor(3.0, dtype=torch.float64)})
    sums = stats.sums("cpu")
    assert sums.tolist() == [6, 2, 3.0, *[0.0] * (len(PARTS) - 1)]


def test_checkpoint_round_trip_and_an_older_checkpoint_still_loads(tmp_path):
    cfg = Config(width=0.25, diff_input=True)
    model = build_model(cfg)
    folder = tmp_path / "run" / "checkpoint_000001"
    folder.mkdir(parents=True)
    checkpoints.write(folder, model.state_dict(), {"epoch": 1, "best_iou": 0.5, "step": 7}, cfg, {"epoch": 2, "iou": 0.5})
    assert "model" not in torch.load(folder / "state.pt", weights_only=True)  # the weights are stored once, in model.pt
    weights, state, metrics = checkpoints.read_training_state(folder, "cpu")
    assert state["step"] == 7 and metrics["epoch"] == 2 and weights.keys() == model.state_dict().keys()
    loaded, loaded_cfg, where = checkpoints.load_model(tmp_path / "run", "cpu")  # a run directory: its best checkpoint
    assert where == str(folder) and loaded_cfg.diff_input and not loaded.training

    # as fgbg wrote them before: the weights also inside state.pt, a config without the newer keys
    old_model = UNet(width=0.25)
    old = tmp_path / "old" / "checkpoint_000000"
    old.mkdir(parents=True)
    torch.save({"model": old_model.state_dict(), "epoch": 0, "best_iou": 0.3, "step": 3}, old / "state.pt")
    torch.save(old_model.state_dict(), old / "model.pt")
    (old / "config.yaml").write_text("width: 0.25\nsize: 64\n")
    (old / "metrics.json").write_text(json.dumps({"epoch": 1, "iou": 0.3}))
    loaded, loaded_cfg, _ = checkpoints.load_model(old, "cpu")
    assert not loaded_cfg.diff_input and loaded.inc[0][0].in_channels == 6
    assert loaded_cfg.depthwise_norm and isinstance(loaded.inc[0][1], torch.nn.BatchNorm2d)  # the block it was trained with
    weights, state, _ = checkpoints.read_training_state(old, "cpu")
    assert "model" not in state and torch.equal(weights["mask_head.weight"], old_model.state_dict()["mask_head.weight"])


def _step(cfg: Config) -> TrainStep:
    model = build_model(cfg)
    return TrainStep(model, build_optimizer(cfg, model.parameters()), MaskDepthLoss.from_config(cfg), torch.device("cpu"), amp=False)


def _batch(n: int = 4, side: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"fg_bg": torch.rand(n, 3, side, side, generator=g), "bg": torch.rand(n, 3, side, side, generator=g),
            "mask": (torch.rand(n, 1, side, side, generator=g) > 0.5).float(), "depth": torch.rand(n, 1, side // 2, side // 2, generator=g)}


def test_an_epoch_trains_in_training_mode_after_evaluation_left_the_model_in_eval_mode():
    cfg = Config(width=0.25, epochs=1)
    step = _step(cfg)
    step.core.eval()  # as evaluate_batches leaves it
    bn = next(m for m in step.core.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    decoded = {"fg_bg": torch.zeros(4), "bad": torch.zeros(4)}  # (what prepare turns into the step's batch)
    stats = train_epoch(step, Schedule(cfg, step.optimizer, 2), [decoded] * 2, lambda batch: _batch(), lambda i, parts: None)
    assert stats.steps == 2 and step.core.training
    assert not torch.equal(bn.running_mean, before)  # BatchNorm used the batches' statistics and updated its own


def test_size_schedule_and_shrinking_a_batch():
    cfg = Config(size=96, size_schedule={1: 64, "13": 96})
    assert [cfg.size_at(e) for e in (1, 12, 13, 20)] == [64, 64, 96, 96]
    assert Config(size=64).size_at(5) == 64
    for bad in ({2: 64}, {1: 72}, {1: 128}, {0: 64, 1: 96}, {"x": 64}):
        with pytest.raises(FgbgError, match="size_schedule"):
            Config(size=96, size_schedule=bad)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.uint8) * 255
    batch = {"fg_bg": torch.full((1, 4, 4, 3), 255, dtype=torch.uint8), "bg": torch.zeros(1, 4, 4, 3, dtype=torch.uint8),
             "mask": mask.reshape(1, 4, 4, 1), "depth": torch.tensor([[[[0], [255]], [[255], [255]]]], dtype=torch.uint8)}
    small = prepare_batch(batch, torch.device("cpu"), size=2)
    assert small["fg_bg"].shape == (1, 3, 2, 2) and small["depth"].shape == (1, 1, 1, 1)
    assert small["mask"].flatten().tolist() == [1, 0, 0, 0]  # 3 of 4, 0, 0 and 1 of 4 pixels: thresholded at a half
    assert small["depth"].item() == pytest.approx(0.75)

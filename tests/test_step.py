"""fgbg's training step: the precision and memory format it picks, that it learns as the plain step does and never
waits for the device, and `fgbg profile`'s measure of it."""

import copy
import json

import pytest
import torch

from fgbg.batch import prepare_batch
from fgbg.config import Config
from fgbg.losses import MaskDepthLoss
from fgbg.metrics import SetMetrics
from fgbg.model import UNet, build_model
from fgbg.profiling import random_batch
from fgbg.step import TrainStep, amp_dtype, cpu_has_bf16

CPU = torch.device("cpu")


def test_cpu_mixed_precision_is_bfloat16_where_the_cpu_computes_it_and_float32_otherwise():
    assert amp_dtype(CPU, amp=False) is None
    assert amp_dtype(CPU, amp=True) == (torch.bfloat16 if cpu_has_bf16() else None)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", [False, True, "float16"])
def test_a_step_keeps_float32_weights_and_gives_outputs_of_the_chosen_precision_and_shape(amp, channels_last, monkeypatch):
    if amp == "float16":  # the path of GPUs without bfloat16 (float16 and a gradient scaler), taken here on the CPU
        monkeypatch.setattr("fgbg.step.amp_dtype", lambda device, amp=True: torch.float16)
    torch.manual_seed(0)
    model = UNet(width=0.25)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = copy.deepcopy(model.state_dict())
    step = TrainStep(model, torch.optim.Adam(model.parameters()), MaskDepthLoss(), CPU, amp=amp)
    batch = prepare_batch(random_batch(4, 32), CPU, channels_last)
    assert batch["fg_bg"].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert step.scaler.is_enabled() == (step.dtype == torch.float16) == (amp == "float16")

    parts = step(batch)
    if amp == "float16":  # the scaler starts at 2**16: it skips each step whose gradients overflow and halves its scale
        for _ in range(30):
            if all(torch.isfinite(p.grad).all() for p in model.parameters()):
                break
            parts = step(batch)
        assert step.scaler.get_scale() < 2.0**16

    for name, v in parts.items():  # left on the device as 0-d float32 tensors, so the step never waits for it
        assert v.shape == () and v.dtype == torch.float32 and v.device == CPU and not v.requires_grad, name
        assert torch.isfinite(v), name
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the step changed the weights
    with torch.no_grad(), step.autocast():
        mask_logits, depth = model(batch["fg_bg"], batch["bg"])
    expected = step.dtype or torch.float32
    assert (mask_logits.dtype, depth.dtype) == (expected, expected)
    assert mask_logits.shape == (4, 1, 32, 32) and depth.shape == (4, 1, 16, 16)


def test_the_fast_step_follows_the_plain_float32_step():
    """Same model, same batches: the losses of fgbg's default step track the plain NCHW float32 step's."""
    torch.manual_seed(0)
    initial = UNet(width=0.25)
    losses = {}
    for name, channels_last, amp in [("plain", False, False), ("fgbg", True, True)]:
        model = copy.deepcopy(initial)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=1e-3), MaskDepthLoss(), CPU, amp=amp)
        batch = prepare_batch(random_batch(8, 32), CPU, channels_last)
        losses[name] = torch.stack([step(batch)["loss"] for _ in range(10)])
    assert losses["plain"][-1] < losses["plain"][0]  # it learns: a comparison of two stuck runs would say nothing
    assert torch.allclose(losses["fgbg"][0], losses["plain"][0], rtol=0.005), losses  # the first forward pass, to bfloat16's precision
    # then bfloat16's rounding moves the path a little each step (3.1% apart after 10 steps on an Intel Xeon, under 3% on an AMD EPYC)
    assert torch.allclose(losses["fgbg"], losses["plain"], rtol=0.05), losses
    drop = {name: (loss[0] - loss[-1]).item() for name, loss in losses.items()}
    assert drop["fgbg"] >= 0.7 * drop["plain"], losses  # and it learns at about the plain step's pace


def test_a_step_and_its_metrics_never_read_a_value_back_from_the_device(monkeypatch):
    """On a GPU every read-back (item, float, tolist, ...) makes the host wait for the device to finish.

    Any such read in augmenting, the step (but Adam's step counts, CPU tensors on every device) or the
    evaluation sums fails here.
    """
    torch.manual_seed(0)
    model = UNet(width=0.25).to(memory_format=torch.channels_last)
    step = TrainStep(model, torch.optim.Adam(model.parameters()), MaskDepthLoss(w_depth_l1=0.5), CPU)
    augment = torch.Generator().manual_seed(0)
    step(prepare_batch(random_batch(4, 32), CPU, True, augment))
    adam_counts = {id(state["step"]) for state in step.optimizer.state.values()}

    def forbid(name):
        allowed = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            if id(tensor) not in adam_counts:
                raise AssertionError(f"Tensor.{name} read a value back")  # not assert: its message would print the tensor
            return allowed(tensor, *args, **kwargs)

        return read

    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    batch = prepare_batch(random_batch(4, 32), CPU, True, augment)
    parts = step(batch)
    metrics = SetMetrics()
    with torch.no_grad():
        mask_logits, depth = model(batch["fg_bg"], batch["bg"])
        metrics.update(mask_logits, depth, batch["mask"], batch["depth"], parts["loss"])
    monkeypatch.undo()
    assert set(parts) == {"loss", "loss_mask", "loss_depth_ssim", "loss_depth_l1"}
    assert SetMetrics.compute(metrics.sums)["loss"] == pytest.approx(parts["loss"].item())


def test_fgbg_profile_measures_the_training_step_on_this_machine(capsys):
    from fgbg.cli import main

    assert main(["profile", "--width", "0.25", "--size", "32", "--batch", "2", "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == sum(p.numel() for p in build_model(Config(width=0.25)).parameters()) and r["macs"] > 0
    assert r["inference_samples_per_s"] > 0 and r["train_samples_per_s"] > 0
    if not torch.cuda.is_available():
        assert r["device"] == "cpu" and r["train_precision"] == str(amp_dtype(CPU) or torch.float32).removeprefix("torch.")

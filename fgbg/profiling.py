"""`fgbg profile`: parameters, MACs and measured speed of the model on this machine."""

from __future__ import annotations

import copy
import statistics
import time

import torch

from .losses import MaskDepthLoss
from .model import UNet


def count_macs(model: torch.nn.Module, size: int) -> int:
    """MACs of one sample as thop counts them, on a copy (thop leaves buffers in the modules it touches)."""
    from thop import profile

    x = torch.zeros(1, 3, size, size)
    macs, _ = profile(copy.deepcopy(model).cpu().eval(), inputs=(x, x), verbose=False)
    return int(macs)


def _rate(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def profile_model(width: float = 1.0, size: int = 160, batch: int = 8, repeats: int = 3, channels_last: bool = True) -> dict:
    """params, macs, and median inference and train-step samples/s at this batch size."""
    model = UNet(width=width)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    mask = (torch.rand(batch, 1, size, size) > 0.5).float()
    depth = torch.rand(batch, 1, size // 2, size // 2)
    loss_fn = MaskDepthLoss()
    optimizer = torch.optim.Adam(model.parameters())

    def infer():
        with torch.no_grad():
            model(x, x)

    def train_step():
        loss, _ = loss_fn(*model(x, x), mask, depth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    inference = _rate(infer, batch, repeats)
    model.train()
    training = _rate(train_step, batch, repeats)
    return {
        "width": width,
        "size": size,
        "batch": batch,
        "params": params,
        "macs": macs,
        "inference_samples_per_s": round(inference, 2),
        "train_samples_per_s": round(training, 2),
        "threads": torch.get_num_threads(),
    }

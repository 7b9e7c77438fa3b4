"""One training step the way fgbg takes it: channels_last tensors and mixed precision chosen for the device.

Mixed precision is bfloat16 on CPUs that compute it natively (AVX512-BF16 or AMX, which oneDNN
uses for the convolutions) and on GPUs that support it, float16 with a gradient scaler on older
GPUs, float32 everywhere else. Weights, gradients, optimiser state and the loss stay float32
(the loss casts its inputs up). On 2 CPU cores this step is 4.6× the plain float32 NCHW one
(docs/benchmarks.md, "Train step").
"""

from __future__ import annotations

import torch

from .batch import drop_bad, prepare_batch
from .metrics import SetMetrics
from .model import infer


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device() -> torch.device:
    """The GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def wait_for(device: torch.device) -> None:
    """Block until the device has done what was queued on it (a GPU runs behind the host; a CPU never does)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype of a training step on this device, or None to stay float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


class TrainStep:
    """Forward, loss, backward and optimiser step on one batch that is already on the device."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn, device: torch.device, amp: bool = True):
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.dtype = amp_dtype(device, amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        """The forward pass's precision context."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss and its parts, as 0-d tensors on the device: nothing here waits for the device to finish."""
        with self.autocast():
            mask_logits, depth = self.model(batch["fg_bg"], batch["bg"])
        loss, parts = self.loss_fn(mask_logits, depth, batch["mask"], batch["depth"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    @property
    def core(self) -> torch.nn.Module:
        """The model being trained, without a data-parallel wrapper."""
        return getattr(self.model, "module", self.model)


def evaluate_batches(model: torch.nn.Module, batches, device: torch.device, loss_fn=None, channels_last: bool = False,
                     on_first=None, flip: bool = False) -> SetMetrics:
    """Metric sums of a model over an iterable of decoded batches (bad samples and padding dropped); flip: the mean
    of the model's outputs over each pair and its mirror (fgbg.model.infer).

    on_first(batch, mask_logits, depth) sees the first non-empty batch (for a picture grid).
    """
    metrics = SetMetrics(device)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch, _ = drop_bad(batch)
            if len(batch["fg_bg"]) == 0:
                continue
            batch = prepare_batch(batch, device, channels_last)
            mask_logits, depth = infer(model, batch["fg_bg"], batch["bg"], flip)
            loss = loss_fn(mask_logits, depth, batch["mask"], batch["depth"])[1]["loss"] if loss_fn else None
            metrics.update(mask_logits, depth, batch["mask"], batch["depth"], loss, batch["fg_bg"], batch["bg"])
            if on_first is not None:
                on_first(batch, mask_logits, depth)
                on_first = None
    return metrics

"""Decoded batches (uint8, channels last, from fgbg.reader) to the model's tensors on the training device.

Float conversion, the mask threshold and training augmentation run here, batched, on the device
that trains: on a GPU they cost next to nothing, and the decoding CPUs only decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGES = ("fg_bg", "bg")


def drop_bad(batch: dict) -> tuple[dict, int]:
    """A batch without skipped samples and padding, and how many samples were skipped (numpy or torch)."""
    bad = batch["bad"]
    if not bad.any():
        return {k: v for k, v in batch.items() if k != "bad"}, 0
    keep = bad == 0
    return {k: v[keep] for k, v in batch.items() if k != "bad"}, int((bad == 1).sum())


def prepare_batch(batch: dict, device: torch.device, channels_last: bool = True, generator: torch.Generator | None = None,
                  size: int | None = None, copy_paste: float = 0.0) -> dict:
    """fg_bg, bg and depth as float in [0, 1], mask in {0, 1}, all N×C×H×W in the model's memory format.

    With a generator (on `device`), the batch is augmented for training (`augment`, with copy_paste's share
    of pasted objects). With a size smaller than the batch's, it is first shrunk to that side (progressive
    resizing: `shrink`).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for key in (*IMAGES, "mask", "depth"):
        x = batch[key].to(device, non_blocking=True).permute(0, 3, 1, 2)  # N×H×W×C → a channels_last N×C×H×W view
        out[key] = (x >= 128).float() if key == "mask" else x.float().div_(255.0)
    if size is not None and size < out["fg_bg"].shape[-1]:
        out = shrink(out, size)
    if generator is not None:
        out = augment(out, generator, copy_paste)
    return {k: v.contiguous(memory_format=fmt) for k, v in out.items()}


def shrink(batch: dict, size: int) -> dict:
    """A prepared batch at a smaller side (depth at half of it), each pixel the mean of the area it covers;
    the mask is that mean thresholded at a half, as the reader does."""
    out = {k: F.interpolate(v, size=(size // 2,) * 2 if k == "depth" else (size, size), mode="area") for k, v in batch.items()}
    out["mask"] = (out["mask"] >= 0.5).float()
    return out


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=device).uniform_(low, high, generator=g)


def paste_objects(batch: dict, share: float, g: torch.Generator) -> dict:
    """Copy-paste: in a share of the samples, the object of the batch's next sample (its fg_bg where its mask is,
    with a one-pixel soft edge) is pasted onto fg_bg at a random shift (wrapping round the frame); the mask is
    the union of both, depth takes the pasted object's.

    A pasted object has no shadow under it and may float anywhere, as in composites of photographs (the
    original dataset's); `fgbg synth` stands every object on the ground above its contact shadow.
    """
    x = batch["fg_bg"]
    n, device = len(x), x.device
    chosen = (torch.rand(n, generator=g, device=device) < share).tolist()
    shifts = torch.rand(n, 2, generator=g, device=device).tolist()
    if n < 2 or not any(chosen):
        return batch
    out = {k: v.clone() for k, v in batch.items()}
    side, half = x.shape[-1], batch["depth"].shape[-1]
    for i in (i for i in range(n) if chosen[i]):
        j = (i + 1) % n
        dy, dx = (int(s * side) // 2 * 2 for s in shifts[i])  # even, so that depth (at half size) shifts with it
        mask = batch["mask"][j].roll((dy, dx), (-2, -1))
        alpha = F.avg_pool2d(mask[None], 3, 1, 1, count_include_pad=False)[0]
        out["fg_bg"][i] = torch.lerp(out["fg_bg"][i], batch["fg_bg"][j].roll((dy, dx), (-2, -1)), alpha)
        out["mask"][i] = torch.maximum(out["mask"][i], mask)
        alpha = F.interpolate(mask[None], size=(half, half), mode="area")[0]
        out["depth"][i] = torch.lerp(out["depth"][i], batch["depth"][j].roll((dy // 2, dx // 2), (-2, -1)), alpha)
    return out


def augment(batch: dict, g: torch.Generator, copy_paste: float = 0.0) -> dict:
    """Training augmentation per sample: objects pasted from other samples (`paste_objects`, a share copy_paste
    of the samples); a joint horizontal flip of inputs and targets; jitter on inputs only.

    The two photos of a pair share most of their exposure (same camera, same scene), so brightness,
    contrast and saturation are jittered together, then each gets a little exposure change of its
    own and sensor noise.
    """
    if copy_paste:
        batch = paste_objects(batch, copy_paste, g)
    x = batch["fg_bg"]
    n, device = len(x), x.device
    flip = torch.rand(n, 1, 1, 1, generator=g, device=device) < 0.5
    out = {k: torch.where(flip, v.flip(-1), v) for k, v in batch.items()}
    brightness, contrast, saturation = (_uniform(n, 0.75, 1.25, g, device) for _ in range(3))
    for key in IMAGES:
        img = out[key] * (brightness * _uniform(n, 0.95, 1.05, g, device))
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * contrast + mean
        gray = img.mean(dim=1, keepdim=True)
        img = (img - gray) * saturation + gray
        img = img + torch.randn(img.shape, generator=g, device=device) * _uniform(n, 0.0, 0.03, g, device)
        out[key] = img.clamp_(0.0, 1.0)
    return out

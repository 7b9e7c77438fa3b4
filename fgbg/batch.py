"""Decoded batches (uint8, channels last, from fgbg.reader) to the model's tensors on the training device.

Float conversion, the mask threshold and training augmentation run here, batched, on the device
that trains: on a GPU they cost next to nothing, and the decoding CPUs only decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGES = ("fg_bg", "bg")
# Each image's own exposure change (±) and noise (σ up to) beyond what its pair shares (`augment`): more of it
# drowns faint objects in the pair's difference (docs/experiments.md, "A quieter pair": 0.05 and 0.03 before)
PAIR_EXPOSURE, PAIR_NOISE = 0.01, 0.01
BLOW_UP = (0.35, 0.5, 0.7)  # the sides, as fractions of the model's, that `blow_up` shrinks a sample's pair to


def drop_bad(batch: dict) -> tuple[dict, int]:
    """A batch without skipped samples and padding, and how many samples were skipped (numpy or torch)."""
    bad = batch["bad"]
    if not bad.any():
        return {k: v for k, v in batch.items() if k != "bad"}, 0
    keep = bad == 0
    return {k: v[keep] for k, v in batch.items() if k != "bad"}, int((bad == 1).sum())


def prepare_batch(batch: dict, device: torch.device, channels_last: bool = True, generator: torch.Generator | None = None,
                  size: int | None = None, copy_paste: float = 0.0, paste_scene: float = 0.0, rescale: float = 0.0) -> dict:
    """fg_bg, bg and depth as float in [0, 1], mask in {0, 1}, all N×C×H×W in the model's memory format.

    With a generator (on `device`), the batch is augmented for training (`augment`, with copy_paste's share
    of pasted objects, paste_scene's share of those camouflaged, rescale's share seen as smaller pictures). With
    a size smaller than the batch's, it is first shrunk to that side (progressive resizing: `shrink`).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for key in (*IMAGES, "mask", "depth"):
        x = batch[key].to(device, non_blocking=True).permute(0, 3, 1, 2)  # N×H×W×C → a channels_last N×C×H×W view
        out[key] = (x >= 128).float() if key == "mask" else x.float().div_(255.0)
    if size is not None and size < out["fg_bg"].shape[-1]:
        out = shrink(out, size)
    if generator is not None:
        out = augment(out, generator, copy_paste, paste_scene, rescale)
    return {k: v.contiguous(memory_format=fmt) for k, v in out.items()}


def shrink(batch: dict, size: int) -> dict:
    """A prepared batch at a smaller side (depth at half of it), each pixel the mean of the area it covers;
    the mask is that mean thresholded at a half, as the reader does."""
    out = {k: F.interpolate(v, size=(size // 2,) * 2 if k == "depth" else (size, size), mode="area") for k, v in batch.items()}
    out["mask"] = (out["mask"] >= 0.5).float()
    return out


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=device).uniform_(low, high, generator=g)


def paste_objects(batch: dict, share: float, g: torch.Generator, scene: float = 0.0) -> dict:
    """Copy-paste: in a share of the samples, the object of the batch's next sample (its mask, with a one-pixel soft
    edge) is pasted onto fg_bg at a random shift (wrapping round the frame); the mask is the union of both, depth
    takes the pasted object's.

    A pasted object wears its own pixels or, in a share `scene` of the pasted ones, the background around it moved
    by 3–15% of the side (its exposure ×0.85–1.15): a camouflaged object, told from the scene only by its outline
    and its texture's seam, as an object cut from a photograph of the same kind of scene (brick on brick) is. A
    pasted object has no shadow under it and may float anywhere, as in composites of photographs (the original
    dataset's); `fgbg synth` stands every object on the ground above its contact shadow. Batched on the device,
    with no value read back: a GPU never waits for it.
    """
    x = batch["fg_bg"]
    n, device = len(x), x.device
    if n < 2:
        return batch
    side = torch.tensor(x.shape[-2:], device=device)
    chosen = (torch.rand(n, 1, 1, 1, generator=g, device=device) < share).float()
    shift = (torch.rand(n, 2, generator=g, device=device) * side).long() // 2 * 2
    nxt = (torch.arange(n, device=device) + 1) % n

    def moved(v: torch.Tensor, by: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """Each sample's source (itself when None) rolled by its row of `by`, in v's pixels."""
        c, h, w = v.shape[1:]
        rows = (torch.arange(h, device=device) - by[:, :1]) % h
        cols = (torch.arange(w, device=device) - by[:, 1:]) % w
        pixels = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return (v if source is None else v[source]).reshape(n, c, h * w).gather(2, pixels).view(n, c, h, w)

    texture = moved(x, shift, nxt)
    if scene:
        sign = torch.where(torch.rand(n, 2, generator=g, device=device) < 0.5, -1.0, 1.0)
        near = (torch.empty(n, 2, device=device).uniform_(0.03, 0.15, generator=g) * side * sign).long()
        around = (moved(batch["bg"], near) * _uniform(n, 0.85, 1.15, g, device)).clamp_(0.0, 1.0)
        texture = torch.where(torch.rand(n, 1, 1, 1, generator=g, device=device) < scene, around, texture)
    mask = moved(batch["mask"], shift, nxt) * chosen
    alpha = F.avg_pool2d(mask, 3, 1, 1, count_include_pad=False)
    depth_alpha = F.interpolate(mask, size=batch["depth"].shape[-2:], mode="area")
    return {**batch, "fg_bg": torch.lerp(x, texture, alpha), "mask": torch.maximum(batch["mask"], mask),
            "depth": torch.lerp(batch["depth"], moved(batch["depth"], shift // 2, nxt), depth_alpha)}


def blow_up(batch: dict, share: float, g: torch.Generator) -> dict:
    """In a share of the samples, both images as a smaller picture resized up to the model's side, as `evaluate` and
    `predict` resize a user's small pictures: shrunk to one of BLOW_UP's fractions of the side (pixel areas
    averaged), then bilinearly enlarged back. The targets stay sharp: the model learns to find the object in a
    blurred pair. Each fraction is computed for the whole batch and picked per sample: no value is read back."""
    x = batch["fg_bg"]
    n, device, side = len(x), x.device, x.shape[-1]
    chosen = torch.rand(n, 1, 1, 1, generator=g, device=device) < share
    pick = torch.randint(len(BLOW_UP), (n, 1, 1, 1), generator=g, device=device)
    out = dict(batch)
    for key in IMAGES:
        img = batch[key]
        for i, fraction in enumerate(BLOW_UP):
            small = F.interpolate(batch[key], size=(max(8, round(side * fraction)),) * 2, mode="area")
            img = torch.where(chosen & (pick == i), F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False), img)
        out[key] = img
    return out


def augment(batch: dict, g: torch.Generator, copy_paste: float = 0.0, paste_scene: float = 0.0, rescale: float = 0.0) -> dict:
    """Training augmentation per sample: objects pasted from other samples (`paste_objects`, a share copy_paste
    of the samples, paste_scene of those camouflaged); a share `rescale` seen as smaller pictures (`blow_up`); a
    joint horizontal flip of inputs and targets; jitter on inputs only.

    The two photos of a pair share most of their exposure (same camera, same scene), so brightness,
    contrast and saturation are jittered together, then each gets a little exposure change of its
    own (±PAIR_EXPOSURE) and sensor noise (σ up to PAIR_NOISE).
    """
    if copy_paste:
        batch = paste_objects(batch, copy_paste, g, paste_scene)
    if rescale:
        batch = blow_up(batch, rescale, g)
    x = batch["fg_bg"]
    n, device = len(x), x.device
    flip = torch.rand(n, 1, 1, 1, generator=g, device=device) < 0.5
    out = {k: torch.where(flip, v.flip(-1), v) for k, v in batch.items()}
    brightness, contrast, saturation = (_uniform(n, 0.75, 1.25, g, device) for _ in range(3))
    for key in IMAGES:
        img = out[key] * (brightness * _uniform(n, 1 - PAIR_EXPOSURE, 1 + PAIR_EXPOSURE, g, device))
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * contrast + mean
        gray = img.mean(dim=1, keepdim=True)
        img = (img - gray) * saturation + gray
        img = img + torch.randn(img.shape, generator=g, device=device) * _uniform(n, 0.0, PAIR_NOISE, g, device)
        out[key] = img.clamp_(0.0, 1.0)
    return out

"""Evaluation metrics over a whole set, kept as sums so that workers can all-reduce them.

Mask IoU at probability 0.5: the mean of per-image IoUs, and the IoU of the set flattened
(the original's way); beside it, the mean IoU of the rule that needs no learning
(`threshold_mask`). Depth: mean per-image SSIM (data_range 1), RMSE over all pixels, and the
fraction of pixels with max(pred/true, true/pred) < 1.25 (pixels where the true depth is ≥ 1/255).
"""

from __future__ import annotations

import torch

from .losses import depth_ssim

FIELDS = ("images", "iou_sum", "inter", "union", "ssim_sum", "sq_err", "pixels", "delta_ok", "delta_pixels", "loss_sum", "baseline_iou_sum")


def iou_of(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Per-image IoU from per-image intersection and union counts; an image where both masks are empty counts as perfect."""
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def per_image_iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """IoU of each image's boolean masks (N×…)."""
    pred, true = pred.flatten(1), true.flatten(1)
    return iou_of((pred & true).sum(1).double(), (pred | true).sum(1).double())


@torch.no_grad()
def per_image(mask_logits, depth, mask_true, depth_true, fg_bg=None, bg=None) -> dict[str, torch.Tensor]:
    """Each image's mask IoU at probability 0.5 (with its intersection and union), depth SSIM and summed squared
    error, and with the inputs, the threshold rule's IoU: what SetMetrics sums and predict's table lists per sample.
    mask_true and depth_true in [0, 1], N×1×H×W and N×1×h×w; fg_bg and bg as `threshold_mask` takes them."""
    pred = (mask_logits.float() > 0).flatten(1)  # sigmoid(x) > 0.5
    true = mask_true.flatten(1) > 0.5
    inter, union = (pred & true).sum(1).double(), (pred | true).sum(1).double()
    depth, depth_true = depth.float(), depth_true.float()
    each = {"iou": iou_of(inter, union), "inter": inter, "union": union,
            "ssim": depth_ssim(depth, depth_true, reduction="none").double(),
            "sq_err": ((depth - depth_true) ** 2).flatten(1).double().sum(1)}
    if fg_bg is not None:
        each["baseline_iou"] = per_image_iou(threshold_mask(fg_bg, bg), true)
    return each


class SetMetrics:
    """Accumulates sums over batches; `compute` turns (all-reduced) sums into metrics."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, mask_logits, depth, mask_true, depth_true, loss: torch.Tensor | None = None, fg_bg=None, bg=None) -> None:
        """Add a batch; loss is the batch's mean loss (a 0-d tensor); with the inputs fg_bg and bg, the threshold
        rule's IoU is kept beside the model's. Nothing is read back from the device."""
        each = per_image(mask_logits, depth, mask_true, depth_true, fg_bg, bg)
        depth, depth_true = depth.float(), depth_true.float()
        valid = depth_true >= 1 / 255
        ratio = torch.maximum(depth / depth_true.clamp(min=1e-6), depth_true / depth.clamp(min=1e-6))
        n = mask_logits.shape[0]
        count = self.sums.new_full((), float(n))  # filled on the device: torch.tensor(n, device=...) would be a blocking copy
        self.sums += torch.stack(
            [
                count,
                each["iou"].sum(),
                each["inter"].sum(),
                each["union"].sum(),
                each["ssim"].sum(),
                each["sq_err"].sum(),
                self.sums.new_full((), float(depth.numel())),
                ((ratio < 1.25) & valid).double().sum(),
                valid.double().sum(),
                loss.double() * n if loss is not None else self.sums.new_zeros(()),
                each["baseline_iou"].sum() if fg_bg is not None else self.sums.new_zeros(()),
            ]
        )

    @staticmethod
    def compute(sums: torch.Tensor) -> dict[str, float]:
        s = dict(zip(FIELDS, sums.tolist()))
        images = max(s["images"], 1.0)
        return {
            "iou": s["iou_sum"] / images,
            "iou_flat": s["inter"] / s["union"] if s["union"] else 1.0,
            "ssim": s["ssim_sum"] / images,
            "rmse": (s["sq_err"] / max(s["pixels"], 1.0)) ** 0.5,
            "delta1": s["delta_ok"] / max(s["delta_pixels"], 1.0),
            "loss": s["loss_sum"] / images,
            "baseline_iou": s["baseline_iou_sum"] / images,  # the threshold rule's (when the inputs were given)
            "samples": int(s["images"]),
        }


def threshold_mask(fg_bg: torch.Tensor, bg: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """The rule that needs no learning: foreground where the largest absolute RGB difference exceeds threshold.

    fg_bg and bg are N×3×H×W floats in [0, 1], or N×H×W×3 uint8 as decoded (then scaled to [0, 1]).
    """
    if fg_bg.dtype == torch.uint8:
        fg_bg, bg = fg_bg.permute(0, 3, 1, 2).float() / 255, bg.permute(0, 3, 1, 2).float() / 255
    return (fg_bg.float() - bg.float()).abs().amax(dim=1, keepdim=True) > threshold


def threshold_iou(fg_bg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean per-image IoU of the threshold rule on decoded uint8 arrays (mask N×H×W×1, foreground ≥ 128)."""
    return float(per_image_iou(threshold_mask(fg_bg, bg), mask >= 128).mean())

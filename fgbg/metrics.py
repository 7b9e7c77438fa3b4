"""Evaluation metrics over a whole set, kept as sums so that workers can all-reduce them.

Mask IoU at probability 0.5: the mean of per-image IoUs, and the IoU of the set flattened
(the original's way). Depth: mean per-image SSIM (data_range 1), RMSE over all pixels, and the
fraction of pixels with max(pred/true, true/pred) < 1.25 (pixels where the true depth is ≥ 1/255).
"""

from __future__ import annotations

import torch

from .losses import depth_ssim

FIELDS = ("images", "iou_sum", "inter", "union", "ssim_sum", "sq_err", "pixels", "delta_ok", "delta_pixels", "loss_sum")


class SetMetrics:
    """Accumulates sums over batches; `compute` turns (all-reduced) sums into metrics."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, mask_logits, depth, mask_true, depth_true, loss: torch.Tensor | None = None) -> None:
        """Add a batch; loss is the batch's mean loss (a 0-d tensor). Nothing is read back from the device."""
        pred = (mask_logits.float() > 0).flatten(1)  # sigmoid(x) > 0.5
        true = mask_true.flatten(1) > 0.5
        inter = (pred & true).sum(1).double()
        union = (pred | true).sum(1).double()
        per_image_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # both empty: perfect
        depth, depth_true = depth.float(), depth_true.float()
        per_image_ssim = depth_ssim(depth, depth_true, reduction="none")
        valid = depth_true >= 1 / 255
        ratio = torch.maximum(depth / depth_true.clamp(min=1e-6), depth_true / depth.clamp(min=1e-6))
        n = mask_logits.shape[0]
        count = self.sums.new_full((), float(n))  # filled on the device: torch.tensor(n, device=...) would be a blocking copy
        self.sums += torch.stack(
            [
                count,
                per_image_iou.sum(),
                inter.sum(),
                union.sum(),
                per_image_ssim.double().sum(),
                ((depth - depth_true) ** 2).double().sum(),
                self.sums.new_full((), float(depth.numel())),
                ((ratio < 1.25) & valid).double().sum(),
                valid.double().sum(),
                loss.double() * n if loss is not None else self.sums.new_zeros(()),
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
            "samples": int(s["images"]),
        }

"""The composite loss: BCE (and optionally soft Dice and Lovász hinge) on the mask logits, 1 − SSIM (and optionally L1) on the depth."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

# the parts MaskDepthLoss returns, in the order training sums them (the total first; a part whose weight is 0 is absent)
PARTS = ("loss", "loss_mask", "loss_mask_dice", "loss_mask_lovasz", "loss_depth_ssim", "loss_depth_l1")


def ssim_kernel(side: int) -> int:
    """SSIM's Gaussian window: 11 as usual, smaller (odd) for depth maps under 11 pixels."""
    return max(3, min(11, side if side % 2 else side - 1))


def depth_ssim(depth, depth_true, reduction="elementwise_mean"):
    """torchmetrics' SSIM of depth maps in [0, 1]: the metric fgbg reports."""
    return ssim(depth, depth_true, data_range=1.0, kernel_size=ssim_kernel(min(depth.shape[-2:])), reduction=reduction)


@functools.lru_cache(maxsize=16)
def _window_matrix(side: int, device: torch.device) -> torch.Tensor:
    """SSIM's Gaussian window (11 taps, σ 1.5) over `side` pixels with reflected borders, as a side×side matrix."""
    if side < 6:
        raise ValueError(f"SSIM's window reflects 5 pixels at each border: depth maps need at least 6 a side, not {side}")
    taps = torch.arange(-5, 6, dtype=torch.float64)
    weights = torch.exp(-((taps / 1.5) ** 2) / 2)
    weights /= weights.sum()
    matrix = torch.zeros(side, side, dtype=torch.float64)
    for i in range(side):
        for offset, w in zip(range(-5, 6), weights.tolist()):
            j = abs(i + offset)  # reflected at both borders, the edge pixel not repeated (F.pad's "reflect")
            matrix[i, j if j < side else 2 * (side - 1) - j] += w
    return matrix.float().to(device)


def depth_ssim_loss(depth: torch.Tensor, depth_true: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of float32 depth maps, as `depth_ssim` computes it, for the training loss.

    The same Gaussian window, reflected borders and constants as torchmetrics (tests/test_metrics.py checks the values
    and gradients against it), with the window applied as two matrix products instead of an 11×11 convolution:
    on a CPU, oneDNN's backward of that single-channel convolution took about a fifth of the whole training step
    (docs/benchmarks.md, "Train step").
    """
    c1, c2 = 0.01**2, 0.03**2
    rows, cols = _window_matrix(depth.shape[-2], depth.device), _window_matrix(depth.shape[-1], depth.device)
    stacked = torch.cat((depth, depth_true, depth * depth, depth_true * depth_true, depth * depth_true))
    mu_x, mu_y, xx, yy, xy = (rows @ stacked @ cols.T).split(len(depth))
    var_x, var_y = (xx - mu_x**2).clamp(min=0.0), (yy - mu_y**2).clamp(min=0.0)
    covariance = xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


def soft_dice_loss(mask_logits: torch.Tensor, mask_true: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged: a differentiable stand-in for 1 − IoU, on the probabilities.

    eps smooths images whose mask is empty (predicting nothing there costs nothing).
    """
    prob = torch.sigmoid(mask_logits.float()).flatten(1)
    true = mask_true.float().flatten(1)
    inter = (prob * true).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + true.sum(1) + eps)).mean()


def lovasz_hinge_loss(mask_logits: torch.Tensor, mask_true: torch.Tensor) -> torch.Tensor:
    """The Lovász hinge per image, averaged: a convex surrogate of 1 − IoU on the logits (Berman et al., 2018).

    Each pixel's hinge error (1 − logit·sign) is sorted, largest first, and weighted by how much
    counting it wrong too would add to 1 − IoU at that point of the order: the Lovász extension of
    1 − IoU evaluated at the errors, so certain predictions with margin m cost (1 + m)·(1 − IoU).
    An image whose mask is empty costs its largest error.
    """
    logits = mask_logits.float().flatten(1)
    true = mask_true.float().flatten(1)
    errors, order = (1 - logits * (2 * true - 1)).sort(dim=1, descending=True)
    true = true.gather(1, order)
    positives = true.sum(1, keepdim=True)
    jaccard = 1 - (positives - true.cumsum(1)) / (positives + (1 - true).cumsum(1))
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors) * weights).sum(1).mean()


class MaskDepthLoss(torch.nn.Module):
    """w_mask·BCE(mask) + w_dice·(1 − soft Dice(mask)) + w_lovasz·Lovász hinge(mask) + w_depth·(1 − SSIM(depth)) + w_depth_l1·L1(depth).

    Returns the total and its parts. SSIM is torchmetrics' with data_range 1 on depths in [0, 1],
    so no per-image renormalisation is needed and no image is dropped for being all black. The
    parts are detached 0-d tensors on the device, not floats: reading one waits for a GPU, so the
    training loop reads them only when it logs.
    """

    def __init__(self, w_mask: float = 1.0, w_depth: float = 1.0, w_depth_l1: float = 0.0, w_dice: float = 0.0,
                 w_lovasz: float = 0.0):
        super().__init__()
        self.w_mask, self.w_depth, self.w_depth_l1, self.w_dice, self.w_lovasz = w_mask, w_depth, w_depth_l1, w_dice, w_lovasz

    def forward(self, mask_logits, depth, mask_true, depth_true) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bce = F.binary_cross_entropy_with_logits(mask_logits.float(), mask_true.float())
        depth, depth_true = depth.float(), depth_true.float()
        ssim_loss = 1 - depth_ssim_loss(depth, depth_true)
        total = self.w_mask * bce + self.w_depth * ssim_loss
        parts = {"loss_mask": bce.detach(), "loss_depth_ssim": ssim_loss.detach()}
        if self.w_dice:
            dice = soft_dice_loss(mask_logits, mask_true)
            total = total + self.w_dice * dice
            parts["loss_mask_dice"] = dice.detach()
        if self.w_lovasz:
            lovasz = lovasz_hinge_loss(mask_logits, mask_true)
            total = total + self.w_lovasz * lovasz
            parts["loss_mask_lovasz"] = lovasz.detach()
        if self.w_depth_l1:
            l1 = F.l1_loss(depth, depth_true)
            total = total + self.w_depth_l1 * l1
            parts["loss_depth_l1"] = l1.detach()
        parts["loss"] = total.detach()
        return total, parts

    @classmethod
    def from_config(cls, cfg) -> "MaskDepthLoss":
        return cls(cfg.w_mask, cfg.w_depth, cfg.w_depth_l1, cfg.w_dice, cfg.w_lovasz)

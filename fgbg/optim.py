"""The optimiser and the learning-rate schedule a Config asks for.

`plateau` is the original's recipe (Adam, the rate cut by lr_factor when the test loss stalls for
lr_patience epochs). `cosine` warms up linearly from lr/10 over warmup_epochs, then follows a cosine
down to lr·lr_floor (lr/100 by default) by the last step: it is stepped every training step, `plateau`
every epoch.
"""

from __future__ import annotations

import math

import torch


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """Adam (the original's) or AdamW (decoupled weight decay), at cfg.lr."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """The learning rate over a run: `after_step()` every training step, `after_epoch(test_loss)` every epoch."""

    def __init__(self, cfg, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        self.kind, self.lr, self.optimizer = cfg.schedule, cfg.lr, optimizer
        if self.kind == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: warmup_cosine(step, steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.warmup_epochs,
                                                      cfg.lr_floor))

    def after_step(self) -> None:
        if self.kind != "plateau":
            self.scheduler.step()

    def after_epoch(self, test_loss: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(test_loss)

    def state_dict(self) -> dict:
        return {**self.scheduler.state_dict(), "peak_lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        """Where a saved run was; a run resumed with another lr goes on from there at the new rate
        (after the optimiser's state is loaded, whose saved rate this overrides)."""
        state = dict(state)
        saved_lr = state.pop("peak_lr", self.lr)  # (older checkpoints lack it)
        self.scheduler.load_state_dict(state)
        if saved_lr != self.lr:
            factor = 1.0 if self.kind == "plateau" else self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            for group in self.optimizer.param_groups:  # (plateau: the new rate, without the earlier cuts)
                group["initial_lr"], group["lr"] = self.lr, self.lr * factor
            if self.kind != "plateau":
                self.scheduler.base_lrs = [self.lr] * len(self.optimizer.param_groups)


def warmup_cosine(step: int, total: int, warmup: float, floor: float = 0.01) -> float:
    """The multiplier of the peak rate at a step: 0.1 → 1 linearly over warmup steps, then a cosine to floor at total."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

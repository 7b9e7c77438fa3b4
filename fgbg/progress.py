"""Training progress on the driver's terminal: rank 0 sends lines and bar updates through a Ray queue.

Ray's own worker logs stay in its log files (unless --verbose), so progress travels on its own
channel: `Progress` on the worker puts, `relay` on the driver prints.
"""

from __future__ import annotations

import sys
import time

import torch


class Progress:
    """Rank 0's side: progress lines, and step updates for the driver's bar, put on a Ray queue (printed if none)."""

    def __init__(self, queue=None):
        self.queue = queue
        self.last_step = 0.0

    def __call__(self, line) -> None:
        if self.queue is not None:
            try:
                self.queue.put_nowait(line)
                return
            except Exception:  # the driver (and its queue) is gone: progress is not worth failing training for
                self.queue = None
        if isinstance(line, str):
            print(line, flush=True)

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: torch.Tensor) -> None:
        """A bar update, at most twice a second (and at an epoch's last step): only then is the loss read from the device."""
        if time.monotonic() - self.last_step > 0.5 or step == steps:
            self.last_step = time.monotonic()
            self({"epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "loss": float(loss)})


def relay(queue, stop) -> None:
    """The driver's side: print progress lines and keep a step bar per epoch (on a terminal), until stop is set."""
    from ray.util.queue import Empty
    from tqdm import tqdm

    bar, bar_epoch = None, None
    try:
        while True:
            try:
                item = queue.get(timeout=0.5)
            except Empty:
                if stop.is_set():
                    return
                continue
            if isinstance(item, str):
                tqdm.write(item)  # above the bar, if there is one
                sys.stdout.flush()
                continue
            if item["epoch"] != bar_epoch:
                if bar is not None:
                    bar.close()
                # disable=None: a bar on a terminal only; job logs get the progress lines alone
                bar = tqdm(total=item["steps"], desc=f"epoch {item['epoch']}/{item['epochs']}", unit="step", disable=None, leave=False)
                bar_epoch = item["epoch"]
            bar.update(item["step"] - bar.n)
            bar.set_postfix(loss=f"{item['loss']:.4f}", refresh=False)
    except Exception:  # the queue's actor is gone (cluster shut down): nothing more will come
        return
    finally:
        if bar is not None:
            bar.close()

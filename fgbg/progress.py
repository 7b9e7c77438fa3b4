"""Training progress: what a worker tells people (`EpochLog`: lines, bar, TensorBoard, history; `StartupMarks`:
where the time to the first step went), and how it reaches the driver's terminal.

Ray's own worker logs stay in its log files (unless --verbose), so progress travels on its own
channel: rank 0's `Progress` puts lines and bar updates on a Ray queue, `relay` on the driver prints.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import TYPE_CHECKING

from . import storage
from .config import Config

if TYPE_CHECKING:  # (torch is imported where training runs: `Meter` serves synth and inspect without it)
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


_STARTUP = [  # (part, from mark, to mark): where the time from `fit` to the first training step goes
    ("startup_connect", "driver", "connected"),  # the manifest, and starting or joining Ray
    ("startup_datasets", "connected", "submitted"),  # the Ray Datasets (with --cache, decoding a split the first time) and the trainer
    ("startup_workers", "submitted", "worker"),  # Ray Train's controller and worker group, up to the training function
    ("startup_model", "worker", "model"),  # the model, and torch.distributed's process group
    ("startup_first_batch", "model", "first_batch"),  # Ray Data starting and delivering the first batch
    ("startup_first_step", "first_batch", "first_step"),  # the first training step
]


class StartupMarks:
    """Wall-clock marks from `fit` to the first training step, and the seconds of each part between them."""

    def __init__(self, marks: dict):
        self.marks = dict(marks)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def parts(self) -> dict[str, float]:
        return startup_parts(self.marks)

    def line(self) -> str:
        took = self.parts()
        total = took.pop("startup_total", None)
        return (f"first step {total:.1f} s after start: " if total else "start-up: ") + ", ".join(
            f"{k.removeprefix('startup_').replace('_', ' ')} {v:.1f} s" for k, v in took.items())


def startup_parts(marks: dict) -> dict[str, float]:
    """Seconds of each start-up part between the wall-clock marks that are there, and their total."""
    parts = {name: marks[b] - marks[a] for name, a, b in _STARTUP if a in marks and b in marks}
    if "driver" in marks and "first_step" in marks:
        parts["startup_total"] = marks["first_step"] - marks["driver"]
    return parts


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 3 min 20 s, 2 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Meter:
    """Progress of a long count on the driver: a bar on a terminal; in a job's log (no terminal), a line every
    `every` seconds with the count, the rate and the time left."""

    def __init__(self, total: int, what: str, unit: str = "sample", every: float = 30.0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=what, unit=unit, disable=None)
        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.bar.disable and now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{self.what}: {self.done}/{self.total} {self.unit}s, {rate:.1f}/s, {duration((self.total - self.done) / max(rate, 1e-9))} left",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


class EpochLog:
    """What a worker tells people: progress lines and bar, TensorBoard, the run's history. Rank 0 only; others stay quiet.

    startup: the marks of a fresh run, completed at the first step (which waits for the device once, so the
    mark is the step done, not queued) and said in one line; None when resuming.
    """

    def __init__(self, cfg: Config, rank: int, queue, steps_per_epoch: int, startup: StartupMarks | None, global_step: int = 0):
        self.cfg, self.rank, self.steps_per_epoch, self.startup = cfg, rank, steps_per_epoch, startup
        self.progress = Progress(queue) if rank == 0 else None
        self.writer = self.local_events = None
        self.tensorboard = storage.join(cfg.run_dir, "tensorboard")
        self.t_epoch = self.t_run = time.perf_counter()
        self.epochs_here, self.warned_data = 0, False  # epochs this process trained (for the time left); the data warning, once
        self.global_step = global_step  # TensorBoard's step axis, continued on resume
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            # for a run on an object store, events are written here and uploaded after every epoch
            self.local_events = tempfile.mkdtemp(prefix="fgbg-tensorboard-") if storage.is_uri(self.tensorboard) else self.tensorboard
            self.writer = SummaryWriter(self.local_events)

    def say(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    def step(self, epoch: int, i: int, parts: dict) -> None:
        """After step i of an epoch; the losses are read from the device only every log_every steps."""
        if self.startup is not None and "first_step" not in self.startup.marks:
            from .step import wait_for

            wait_for(parts["loss"].device)
            self.startup.mark("first_step")
            self.say(self.startup.line())
        if i == 1:
            self.t_epoch = time.perf_counter()
        self.global_step += 1
        if self.progress is None:
            return
        self.progress.step(epoch, self.cfg.epochs, i, self.steps_per_epoch, parts["loss"])
        if i % self.cfg.log_every == 0:
            values = {k: float(v) for k, v in parts.items()}
            rate = (i - 1) * self.cfg.batch_size / max(time.perf_counter() - self.t_epoch, 1e-9)  # from the end of step 1
            self.say(f"epoch {epoch}/{self.cfg.epochs} step {i}/{self.steps_per_epoch} loss {values['loss']:.4f} {rate:.1f} samples/s")
            for k, v in values.items():
                self.writer.add_scalar(f"step/{k}", v, self.global_step)

    def grid(self, epoch: int):
        """evaluate_batches' on_first: the test batch's results as a picture in TensorBoard (rank 0)."""
        if self.writer is None:
            return None

        def add(batch, mask_logits, depth):
            from .pictures import result_grid

            self.writer.add_image("test/results", result_grid(batch, mask_logits, depth), epoch, dataformats="HWC")

        return add

    def epoch(self, metrics: dict) -> None:
        """The epoch's line, its TensorBoard scalars and its line in the run's history."""
        if self.rank != 0:
            return
        from .report import append_history

        append_history(self.cfg.run_dir, metrics)
        for k, v in metrics.items():
            self.writer.add_scalar(f"epoch/{k}", v, metrics["epoch"])
        self.writer.flush()
        if self.local_events != self.tensorboard:
            storage.upload_dir(self.local_events, self.tensorboard)
        m = metrics
        self.epochs_here += 1
        left = (time.perf_counter() - self.t_run) / self.epochs_here * (self.cfg.epochs - m["epoch"])
        self.say(f"epoch {m['epoch']}/{self.cfg.epochs} done: train loss {m.get('train_loss', float('nan')):.4f} | test loss {m['loss']:.4f} "
                 f"IoU {m['iou']:.3f} SSIM {m['ssim']:.3f} RMSE {m['rmse']:.3f} | {m['samples_per_s']:.1f} samples/s"
                 + (f" | skipped {m['skipped']} bad samples" if m["skipped"] else "") + (f" | about {duration(left)} left" if left else ""))
        waited = m["time_data"] - m.get("time_first_batch", 0.0)  # (the first batch: the pipeline starting, in every epoch)
        total = m["time_compute"] + m["time_data"] + m["time_other"]
        if not self.warned_data and waited > 0.1 * total:
            self.warned_data = True
            self.say(f"fgbg: epoch {m['epoch']} waited for data {waited / total:.0%} of its time: decoding does not keep up with the "
                     "training step. --cache DIR decodes once and reads about twice as fast; or give Ray Data more CPUs (more or "
                     "larger nodes, or --set cpus_per_worker=N leaves the extra to decoding on a fixed cluster: docs/benchmarks.md, "
                     "\"Sizing a cluster\")")

    def close(self, profile_summary: str | None = None) -> None:
        if profile_summary:
            self.say(profile_summary)
        if self.writer:
            self.writer.close()
            if self.local_events != self.tensorboard:
                import shutil

                shutil.rmtree(self.local_events, ignore_errors=True)

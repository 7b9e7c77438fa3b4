"""Data-parallel training with Ray Train: the worker loop and the driver that launches it.

The worker loop reads like plain PyTorch; its Ray touchpoints are numbered [1]–[5] (`prepare_model`,
`get_checkpoint`, `get_dataset_shard`, the all-reduce, `report`). Every epoch each worker trains on
its shard, evaluates on its share of the test set, all-reduces the metric sums, and rank 0 writes a
checkpoint (fgbg.checkpoints) that Ray Train persists under the run directory. Re-running the same
run name picks up its last checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import torch

from . import checkpoints, storage
from .batch import drop_bad, prepare_batch
from .cluster import check_room, connect, quiet_ray_data
from .config import Config
from .errors import FgbgError, find_bad_sample
from .losses import PARTS, MaskDepthLoss
from .metrics import FIELDS, SetMetrics
from .model import build_model
from .optim import Schedule, build_optimizer
from .profiling import RunProfiler
from .progress import EpochLog, StartupMarks, relay
from .report import append_resume_changes, write_report
from .runlock import RunLock
from .step import TrainStep, evaluate_batches


class RayTrainSide:
    """A worker's side of Ray Train: its rank, device, model wrapping, last checkpoint, dataset shards and report.
    (fgbg.tune.InTrial is the same for a one-worker trial trained in Tune's own trial process.)"""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world, self.device = ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def report(self, metrics: dict, folder: str | None = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


def train_func_per_worker(loop_config: dict, worker=None) -> None:
    """One Ray Train worker: every epoch, train on its shard, evaluate its share of the test set, checkpoint, report.
    worker: its side of Ray Train (RayTrainSide, the default) or of a Tune trial (fgbg.tune.InTrial)."""
    cfg = Config.from_dict(loop_config["config"])
    startup = StartupMarks({**loop_config.get("startup", {}), "worker": time.time()})
    worker = worker or RayTrainSide()
    rank, world, device = worker.rank, worker.world, worker.device
    torch.manual_seed(cfg.seed)

    # [1] the model, on this worker's device and wrapped for data-parallel training
    model = build_model(cfg).to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    model = worker.prepare_model(model)
    core = getattr(model, "module", model)
    startup.mark("model")
    per_worker = max(1, cfg.batch_size // world)
    steps_per_epoch = max(1, loop_config["train_samples"] // (per_worker * world))  # (train_samples: Config.epoch_samples)
    optimizer = build_optimizer(cfg, model.parameters())
    schedule = Schedule(cfg, optimizer, steps_per_epoch)
    loss_fn = MaskDepthLoss.from_config(cfg)
    train_step = TrainStep(model, optimizer, loss_fn, device, amp=cfg.amp)

    # [2] resume from the last checkpoint Ray Train kept, if there is one
    start = resume(worker.checkpoint(), train_step, schedule, device, cfg.run_dir)
    if start.epoch >= cfg.epochs:  # a sweep killed as a trial finished restarts it: Tune wants its last epoch again
        worker.report(start.metrics)
        return
    out = EpochLog(cfg, rank, loop_config.get("progress"), steps_per_epoch, startup if not start.epoch else None, start.step)
    if start.damaged:
        out.say(f"warning: the latest checkpoint does not load ({start.damaged}); resuming from the newest one that does")
    if start.epoch:
        out.say(f"resuming after epoch {start.epoch} of {cfg.epochs}")

    # [3] this worker's shards of the run's Ray Datasets
    train_shard, test_shard = worker.shard("train"), worker.shard("test")
    # the training dataset is the run's draws, one epoch's after another (fgbg.ingest.make_datasets): one iterator, from
    # which each epoch takes its steps
    draws = iter(train_shard.iter_torch_batches(batch_size=per_worker, drop_last=True, prefetch_batches=2, pin_memory=device.type == "cuda"))
    drawn = start.metrics.get("samples_drawn", 0) if start.epoch else 0
    for _ in range(max(0, drawn - loop_config.get("drawn_from", 0)) // (per_worker * world)):
        next(draws, None)  # a worker group restarted on the datasets it had resumes later in them: these were trained on
    # training augmentation's random numbers, on the device; a resumed run does not replay the first epochs' draws
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank * 1009 + start.epoch)
    profiler = RunProfiler(cfg.profile, core, cfg.run_dir, rank, device, cfg.profile_steps)
    best_iou, step = start.best_iou, start.step

    def prepare(batch, size):
        startup.mark("first_batch")
        return prepare_batch(batch, device, cfg.channels_last, augment_rng, size, cfg.copy_paste, cfg.paste_scene, cfg.rescale)

    for epoch in range(start.epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        stats = train_epoch(train_step, schedule, itertools.islice(draws, steps_per_epoch), functools.partial(prepare, size=cfg.size_at(epoch + 1)),
                            on_step=lambda i, parts, epoch=epoch: (profiler.step(), out.step(epoch + 1, i, parts)))
        step += stats.steps
        tested = cfg.test_small_epochs or cfg.size_at(epoch + 1) == cfg.size  # (a sweep's trials may skip the others: fgbg.tune)
        test_sums = (evaluate_batches(core, test_shard.iter_torch_batches(batch_size=per_worker), device, loss_fn, cfg.channels_last,
                                      on_first=out.grid(epoch + 1)).sums if tested else torch.zeros(len(FIELDS), dtype=torch.float64, device=device))
        # [4] the metric sums of every worker, added up: each worker saw only its shards
        test_sums, train_sums = all_reduce(test_sums, stats.sums(device))
        times = {**stats.times(), "time_epoch": time.perf_counter() - t_epoch}
        test = SetMetrics.compute(test_sums) if tested else {k: 0 if k == "samples" else math.nan for k in SetMetrics.compute(test_sums)}
        metrics = epoch_metrics(epoch + 1, test, train_sums.tolist(), times,
                                lr=optimizer.param_groups[0]["lr"], objective=cfg.objective, best_iou=best_iou)
        drawn += loop_config["train_samples"]  # where the next epoch's draws start
        metrics.update(params=sum(p.numel() for p in core.parameters()), samples_drawn=drawn,
                       epochs_at_size=cfg.epochs_at_size(epoch + 1),
                       **(startup.parts() | {"first_step_at": startup.marks.get("first_step", 0.0), "process": os.getpid()} if epoch == 0 else {}))
        best_iou = metrics["best_iou"]
        schedule.after_epoch(metrics["loss"])
        out.epoch(metrics)
        # [5] rank 0's checkpoint, and every worker's report (a barrier: all call it every epoch)
        state = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "epoch": epoch, "best_iou": best_iou, "step": step}
        with tempfile.TemporaryDirectory() as tmp:  # every worker reports every epoch (a barrier); rank 0 with a checkpoint
            if rank == 0:
                checkpoints.write(tmp, core.state_dict(), state, cfg, metrics)
            worker.report(metrics, tmp if rank == 0 else None)
    out.close(profiler.finish())


@dataclass
class Start:
    """Where a worker starts: the first epoch to train (0-based), the best IoU so far, steps taken, the last metrics;
    damaged: why the latest checkpoint did not load, when an older one was taken instead."""

    epoch: int = 0
    best_iou: float = -1.0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    damaged: str = ""


def resume(checkpoint, train_step: TrainStep, schedule: Schedule, device, run_dir: str = "") -> Start:
    """Load Ray Train's latest checkpoint of this run into the model, optimiser and schedule;
    a fresh Start if there is none. If it does not load (a damaged file), the newest of the run's other
    checkpoints that does is taken (the history is then cut back to it as the next epoch is written)."""
    import ray.train

    if checkpoint is None:
        return Start()
    try:
        return _load_checkpoint(checkpoint, train_step, schedule, device)
    except FgbgError as e:
        damaged = e
    latest = os.path.basename(checkpoint.path.rstrip("/"))
    for folder, _ in reversed(checkpoints.find(run_dir) if run_dir else []):
        if os.path.basename(folder) != latest:
            try:
                start = _load_checkpoint(ray.train.Checkpoint(folder), train_step, schedule, device)
            except FgbgError:
                continue
            start.damaged = str(damaged)
            return start
    raise damaged


def _load_checkpoint(checkpoint, train_step: TrainStep, schedule: Schedule, device) -> Start:
    with checkpoint.as_directory() as folder:
        weights, state, metrics = checkpoints.read_training_state(folder, device)
    train_step.core.load_state_dict(weights)
    train_step.optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    return Start(state["epoch"] + 1, state["best_iou"], state["step"], metrics)


@dataclass
class EpochStats:
    """One worker's training epoch: samples, skipped samples, loss parts summed on the device, and where the time went."""

    seen: int = 0
    skipped: int = 0
    steps: int = 0
    parts: dict = field(default_factory=dict)  # loss part → sum over samples, a 0-d tensor on the device
    time_data: float = 0.0  # waiting for the next batch
    time_first_batch: float = 0.0  # of which waiting for the first (the pipeline starting)
    time_compute: float = 0.0  # the steps (on a GPU: the host's time issuing them; it stalls once the device's queue is full)
    time_train: float = 0.0  # the whole pass

    def sums(self, device) -> torch.Tensor:
        """[seen, skipped, *part sums in PARTS order]: what the workers all-reduce."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return torch.stack([zero + self.seen, zero + self.skipped, *[self.parts.get(k, zero) for k in PARTS]])

    def times(self) -> dict[str, float]:
        return {"time_compute": self.time_compute, "time_data": self.time_data, "time_train": self.time_train,
                "time_first_batch": self.time_first_batch}


def train_epoch(train_step: TrainStep, schedule: Schedule, batches, prepare, on_step) -> EpochStats:
    """One pass over a worker's shard, in training mode; prepare(batch) makes a decoded batch the step's tensors,
    on_step(step number, loss parts) runs after each step. Nothing here waits for the device."""
    stats = EpochStats()
    train_step.model.train()  # (evaluation left it in eval mode: BatchNorm must use and update batch statistics)
    t_epoch = t_wait = time.perf_counter()
    for batch in batches:
        batch, n_bad = drop_bad(batch)
        stats.skipped += n_bad
        t0 = time.perf_counter()
        stats.time_data += t0 - t_wait
        stats.time_first_batch = stats.time_first_batch or t0 - t_epoch
        n = len(batch["fg_bg"])
        if n:
            parts = train_step(prepare(batch))
            schedule.after_step()
            stats.seen, stats.steps = stats.seen + n, stats.steps + 1
            for k, v in parts.items():
                stats.parts[k] = stats.parts.get(k, 0.0) + v.double() * n
            on_step(stats.steps, parts)
        t_wait = time.perf_counter()
        stats.time_compute += t_wait - t0
    stats.time_train = time.perf_counter() - t_epoch
    return stats


def all_reduce(*sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors summed over every worker of the group (as they are when training in one process)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        for s in sums:
            dist.all_reduce(s)
    return sums


def epoch_metrics(epoch: int, test: dict, train_sums: list[float], times: dict, lr: float, objective: dict, best_iou: float) -> dict:
    """An epoch's metrics from the all-reduced sums: test metrics, mean training losses, throughput, times, objective."""
    seen, skipped, part_sums = int(train_sums[0]), int(train_sums[1]), dict(zip(PARTS, train_sums[2:]))
    metrics = {
        "epoch": epoch,
        **{f"train_{k}": v / max(seen, 1) for k, v in part_sums.items() if v},
        **{k: v for k, v in test.items() if k != "samples"},
        "test_samples": test["samples"],
        "train_samples": seen,
        "skipped": skipped,
        "samples_per_s": seen / max(times["time_train"], 1e-9),
        "lr": lr,
        "time_compute": times["time_compute"],
        "time_data": times["time_data"],
        "time_first_batch": times.get("time_first_batch", 0.0),
        "time_other": times["time_epoch"] - times["time_compute"] - times["time_data"],  # evaluation, all-reduce, …
    }
    metrics["objective"] = sum(w * metrics[k] for k, w in objective.items())
    metrics["best_iou"] = max(best_iou, metrics["iou"]) if not math.isnan(metrics["iou"]) else best_iou  # (an epoch not tested: NaN)
    return metrics


# ---------------------------------------------------------------- driver


def run_inputs(cfg: Config, tables: dict, startup: dict | None = None) -> tuple[dict, dict]:
    """A run's Ray Datasets (its draws from where a resumed run stopped) and the worker loop's config; writes config.yaml."""
    from .ingest import make_datasets

    last = checkpoints.find(cfg.run_dir)  # a resumed run's draws start where its last epoch's stopped
    done, drawn_from = (last[-1][1]["epoch"], last[-1][1].get("samples_drawn", 0)) if last else (0, 0)
    datasets = make_datasets(cfg, tables, drawn_from, epochs=cfg.epochs - done)
    storage.write_bytes(storage.join(cfg.run_dir, "config.yaml"), cfg.to_yaml().encode())
    return datasets, {"config": cfg.to_dict(), "train_samples": cfg.epoch_samples(tables["train"].num_rows), "drawn_from": drawn_from,
                      "startup": {**(startup or {}), "submitted": time.time()}}


def make_trainer(cfg: Config, tables: dict, progress=None, callbacks=None, startup: dict | None = None):
    """The TorchTrainer of a run: Ray Datasets from the manifest tables, scaling, storage, checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from .rendezvous import OneMachineConfig

    datasets, loop_config = run_inputs(cfg, tables, startup)
    return TorchTrainer(
        train_func_per_worker,
        train_loop_config={**loop_config, "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
                                                 placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.out,
            # the two best by IoU and the latest: a damaged latest one leaves another to resume from
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="iou", checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        torch_config=OneMachineConfig(),  # a group on one machine meets through a file, not a TCP server on every interface
    )


def fit(cfg: Config, address: str | None = None, verbose: bool = False) -> dict:
    """Train as configured; returns the last epoch's metrics and where the run lives."""
    startup = {"driver": time.time()}
    cfg = cfg.resolved()
    changed = cfg.changes_since_saved()  # before anything starts: a resume may not change the model's shape
    storage.check_bucket(cfg.out)  # a missing bucket or denied access stops here, not after the first epoch
    from .ingest import load_tables

    tables = load_tables(cfg)
    last = checkpoints.find(cfg.run_dir)
    if last and last[-1][1]["epoch"] >= cfg.epochs:
        print(f"{cfg.run_dir}: already trained for {last[-1][1]['epoch']} epochs; nothing to do")
        return {"run_dir": cfg.run_dir, "metrics": last[-1][1]}
    with RunLock(cfg.run_dir):  # one driver per run; an unwritable run folder stops here too
        if last and changed:  # a resume: the settings it changes go on record
            append_resume_changes(cfg.run_dir, last[-1][1]["epoch"], changed)
            print(f"{cfg.run_dir}: resuming after epoch {last[-1][1]['epoch']} with "
                  + ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items()), file=sys.stderr)
        return _fit(cfg, tables, startup, address, verbose)


def _fit(cfg: Config, tables: dict, startup: dict, address: str | None, verbose: bool) -> dict:
    import ray
    import ray.train
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # a local cluster gets one CPU more than the training workers take, so that Ray Data can decode
    cores, cpus = os.cpu_count() or 1, int(max(cfg.workers, 1) * cfg.cpus_per_worker)
    if connect(address, num_cpus=max(cores, cpus + 1), verbose=verbose) and cpus > cores:
        print(f"fgbg: {cfg.workers} training workers share this machine's {cores} cores: they train no faster than {cores} would",
              file=sys.stderr, flush=True)
    quiet_ray_data()
    check_room(cfg.workers, cfg.cpus_per_worker)
    # the queue lives on the driver's node: losing a worker node must not take the progress lines with it
    # (a hard affinity: Ray places a soft one elsewhere about half the time, even when the node has room)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    startup["connected"] = time.time()
    stop = threading.Event()
    printer = threading.Thread(target=relay, args=(progress, stop), daemon=True)
    printer.start()
    try:
        trainer = make_trainer(cfg, tables, progress=progress, startup=startup)  # (with --cache, decoding a split starts here)
        result = trainer.fit()
    except Exception as e:
        bad = find_bad_sample(e)
        if bad is not None:
            raise FgbgError(f"{bad} (run `fgbg inspect`, or train with --on-bad skip)") from None
        if isinstance(e, ray.train.TrainingFailedError):
            raise FgbgError(f"training failed: {e}") from e
        raise
    finally:
        stop.set()
        printer.join(timeout=10)
        progress.shutdown()
    report = write_report(cfg.run_dir)
    return {"run_dir": cfg.run_dir, "metrics": result.metrics, "report": report}

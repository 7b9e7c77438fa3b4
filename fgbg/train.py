"""Data-parallel training with Ray Train: the worker loop and the driver that launches it.

The worker loop reads like plain PyTorch; its Ray touchpoints are `prepare_model`,
`get_dataset_shard`, `get_checkpoint` and `report`. Every epoch each worker trains on its shard,
evaluates on its share of the test set, all-reduces the metric sums, and rank 0 writes a
checkpoint (model, optimiser, scheduler, epoch) that Ray Train persists under the run directory.
Re-running the same run name picks up its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from . import storage
from .batch import prepare_batch
from .config import Config
from .errors import BadSample, FgbgError
from .losses import MaskDepthLoss
from .metrics import SetMetrics
from .model import UNet
from .profiling import RunProfiler
from .report import append_history, write_report
from .step import TrainStep, wait_for


def build_model(cfg: Config) -> UNet:
    return UNet(width=cfg.width, widths=tuple(cfg.widths) if cfg.widths else None, separate_decoders=cfg.separate_decoders)


def evaluate_batches(model: torch.nn.Module, batches, device: torch.device, loss_fn=None, channels_last: bool = False, on_first=None) -> SetMetrics:
    """Metric sums of a model over an iterable of batches (bad samples and padding dropped)."""
    from .ingest import drop_bad

    metrics = SetMetrics(device)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            batch, _ = drop_bad(batch)
            if len(batch["fg_bg"]) == 0:
                continue
            batch = prepare_batch(batch, device, channels_last)
            mask_logits, depth = model(batch["fg_bg"], batch["bg"])
            loss = loss_fn(mask_logits, depth, batch["mask"], batch["depth"])[1]["loss"] if loss_fn else None
            metrics.update(mask_logits, depth, batch["mask"], batch["depth"], loss)
            if on_first is not None:
                on_first(batch, mask_logits, depth)
                on_first = None
    return metrics


_STARTUP = [  # (part, from mark, to mark): where the time from `fit` to the first training step goes
    ("startup_connect", "driver", "connected"),  # the manifest, and starting or joining Ray
    ("startup_datasets", "connected", "submitted"),  # the Ray Datasets (with --cache, decoding a split the first time) and the trainer
    ("startup_workers", "submitted", "worker"),  # Ray Train's controller and worker group, up to the training function
    ("startup_model", "worker", "model"),  # the model, and torch.distributed's process group
    ("startup_first_batch", "model", "first_batch"),  # Ray Data starting and delivering the first batch
    ("startup_first_step", "first_batch", "first_step"),  # the first training step
]


def startup_parts(marks: dict) -> dict[str, float]:
    """Seconds of each start-up part between the wall-clock marks that are there, and their total."""
    parts = {name: marks[b] - marks[a] for name, a, b in _STARTUP if a in marks and b in marks}
    if "driver" in marks and "first_step" in marks:
        parts["startup_total"] = marks["first_step"] - marks["driver"]
    return parts


def train_func_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: train, evaluate, all-reduce, checkpoint, report; every epoch."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from .ingest import drop_bad

    cfg = Config.from_dict(loop_config["config"])
    say = _Say(loop_config.get("progress"))
    startup = {**loop_config.get("startup", {}), "worker": time.time()}
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    model = build_model(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    startup["model"] = time.time()
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    loss_fn = MaskDepthLoss(cfg.w_mask, cfg.w_depth, cfg.w_depth_l1)
    train_step = TrainStep(model, optimizer, loss_fn, device, amp=cfg.amp)

    profiler = RunProfiler(cfg.profile, core, cfg.run_dir, rank, device, cfg.profile_steps)
    start_epoch, best_iou, step = 0, -1.0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=True)
            last_metrics = json.loads((Path(d) / "metrics.json").read_text())
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_iou, step = state["epoch"] + 1, state["best_iou"], state["step"]
        if start_epoch >= cfg.epochs:
            # nothing left to train (a sweep killed as a trial finished restarts that trial): report its last
            # epoch again, since Tune starts a restarted trial's results afresh
            ray.train.report(last_metrics)
            return
        if rank == 0:
            say(f"resuming after epoch {state['epoch'] + 1} of {cfg.epochs}")

    writer = None
    tensorboard = storage.join(cfg.run_dir, "tensorboard")
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # for a run on an object store, events are written here and uploaded after every epoch
        local_events = tempfile.mkdtemp(prefix="fgbg-tensorboard-") if storage.is_uri(tensorboard) else tensorboard
        writer = SummaryWriter(local_events)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    per_worker = max(1, cfg.batch_size // world)
    # training augmentation's random numbers, on the device; a resumed run does not replay the first epochs' draws
    augment_rng = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank * 1009 + start_epoch)
    steps_per_epoch = max(1, loop_config["train_samples"] // (per_worker * world))

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t_epoch = time.perf_counter()
        t_data = t_compute = 0.0
        seen = skipped = 0
        parts_sum: dict[str, torch.Tensor] = {}  # on the device, read once at the epoch's end
        batches = iter(train_shard.iter_torch_batches(batch_size=per_worker, drop_last=True, prefetch_batches=2, pin_memory=device.type == "cuda"))
        t_wait = time.perf_counter()
        for i, batch in enumerate(batches):
            batch, n_bad = drop_bad(batch)
            skipped += n_bad
            t0 = time.perf_counter()
            t_data += t0 - t_wait
            if len(batch["fg_bg"]) == 0:
                t_wait = time.perf_counter()
                continue
            startup.setdefault("first_batch", time.time())
            parts = train_step(prepare_batch(batch, device, cfg.channels_last, augment_rng))
            if "first_step" not in startup:
                wait_for(device)  # the mark is the step done, not the step queued
                startup["first_step"] = time.time()
                if rank == 0 and not checkpoint:
                    took = startup_parts(startup)
                    total = took.pop("startup_total", None)
                    say((f"first step {total:.1f} s after start: " if total else "start-up: ")
                        + ", ".join(f"{k.removeprefix('startup_').replace('_', ' ')} {v:.1f} s" for k, v in took.items()))
            profiler.step()
            # on a GPU nothing in the step waits for the device, so the host queues the next steps while it
            # computes: compute is the host's time issuing steps (it stalls there once the device's queue is full)
            t_wait = time.perf_counter()
            t_compute += t_wait - t0
            n = len(batch["fg_bg"])
            seen += n
            step += 1
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.double() * n
            if rank == 0:
                say.step(epoch + 1, cfg.epochs, i + 1, steps_per_epoch, parts["loss"])
            if rank == 0 and (i + 1) % cfg.log_every == 0:  # reading the losses waits for the device: only here
                values = {k: float(v) for k, v in parts.items()}
                rate = seen * world / max(time.perf_counter() - t_epoch, 1e-9)
                say(f"epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} loss {values['loss']:.4f} {rate:.1f} samples/s")
                for k, v in values.items():
                    writer.add_scalar(f"step/{k}", v, step)
        t_train = time.perf_counter() - t_epoch

        def grid(batch, mask_logits, depth):
            if writer:
                from .pictures import result_grid

                writer.add_image("test/results", result_grid(batch, mask_logits, depth), epoch + 1, dataformats="HWC")

        sums = evaluate_batches(core, test_shard.iter_torch_batches(batch_size=per_worker), device, loss_fn, cfg.channels_last, grid).sums
        zero = torch.zeros((), dtype=torch.float64, device=device)
        train_sums = torch.stack([zero + seen, zero + skipped, *[parts_sum.get(k, zero) for k in _PARTS]])
        if world > 1 and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(train_sums)
        test = SetMetrics.compute(sums)
        scheduler.step(test["loss"])
        seen_all, skipped_all = int(train_sums[0]), int(train_sums[1])
        metrics = {
            "epoch": epoch + 1,
            **{f"train_{k}": float(v) / max(seen_all, 1) for k, v in zip(_PARTS, train_sums[2:].tolist()) if k in parts_sum},
            **{k: v for k, v in test.items() if k != "samples"},
            "test_samples": test["samples"],
            "train_samples": seen_all,
            "skipped": skipped_all,
            "samples_per_s": seen_all / max(t_train, 1e-9),
            "lr": optimizer.param_groups[0]["lr"],
            "params": sum(p.numel() for p in core.parameters()),
            "time_compute": t_compute,
            "time_data": t_data,
            **(startup_parts(startup) if epoch == start_epoch and not checkpoint else {}),
        }
        metrics["objective"] = sum(w * metrics[k] for k, w in cfg.objective.items())
        best_iou = max(best_iou, metrics["iou"])
        metrics["best_iou"] = best_iou
        metrics["time_other"] = time.perf_counter() - t_epoch - t_compute - t_data
        if rank == 0:
            append_history(cfg.run_dir, metrics)
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            writer.flush()
            if local_events != tensorboard:
                storage.upload_dir(local_events, tensorboard)
        if rank == 0:
            say(
                f"epoch {epoch + 1}/{cfg.epochs} done: train loss {metrics.get('train_loss', float('nan')):.4f} | test loss {metrics['loss']:.4f} "
                f"IoU {metrics['iou']:.3f} SSIM {metrics['ssim']:.3f} RMSE {metrics['rmse']:.3f} | {metrics['samples_per_s']:.1f} samples/s"
                + (f" | skipped {skipped_all} bad samples" if skipped_all else "")
            )
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                state = {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_iou": best_iou,
                    "step": step,
                }
                torch.save(state, Path(tmp) / "state.pt")
                torch.save(core.state_dict(), Path(tmp) / "model.pt")
                (Path(tmp) / "config.yaml").write_text(cfg.to_yaml())
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    summary = profiler.finish()
    if summary and rank == 0:
        say(summary)
    if writer:
        writer.close()
        if local_events != tensorboard:
            shutil.rmtree(local_events, ignore_errors=True)


_PARTS = ("loss", "loss_mask", "loss_depth_ssim", "loss_depth_l1")


class _Say:
    """Rank 0's progress: lines, and steps for the driver's progress bar, sent through a Ray queue so
    that they show without Ray's logs."""

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


def _relay(queue, stop) -> None:
    """Driver side: print progress lines and keep a step bar per epoch (on a terminal), until stop is set."""
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


# ---------------------------------------------------------------- driver


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Join the cluster at address (or RAY_ADDRESS); else start a local single-node one.

    Ray's own logs stay in its log files unless verbose; fgbg's progress reaches the terminal anyway.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=verbose, logging_level="INFO" if verbose else "WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # the dashboard listens on 127.0.0.1 only; Ray Train needs its state API to clean up after runs
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def find_checkpoints(run_dir: str | os.PathLike) -> list[tuple[str, dict]]:
    """(checkpoint folder, its metrics) for every checkpoint of a run (local or on an object store), oldest first."""
    found = []
    if storage.is_dir(run_dir):
        for entry in storage.listdir(run_dir):
            metrics_file = storage.join(run_dir, entry.path, "metrics.json")
            if entry.path.startswith("checkpoint_") and storage.info(metrics_file).is_file:
                found.append((storage.join(run_dir, entry.path), json.loads(storage.read_bytes(metrics_file))))
    return sorted(found, key=lambda c: c[1]["epoch"])


def prepare(cfg: Config) -> dict:
    """Check the dataset and resolve paths; the train and test manifest tables of the run."""
    from .layout import load_manifest

    if not cfg.data:
        raise FgbgError("no dataset given (--data DIR, or data: in the config)")
    if not cfg.name:
        cfg.name = time.strftime("run-%Y%m%d-%H%M%S")
    cfg.out = storage.absolute(cfg.out)
    cfg.data = storage.absolute(cfg.data)
    cfg.cache = storage.absolute(cfg.cache) if cfg.cache else ""
    storage.check_bucket(cfg.out)  # a missing bucket or denied access stops here, not after the first epoch
    manifest = load_manifest(cfg.data)
    if manifest.problems:
        lines = "\n  ".join(str(p) for p in manifest.problems[:10])
        more = f"\n  … and {len(manifest.problems) - 10} more" if len(manifest.problems) > 10 else ""
        if cfg.on_bad == "error":
            raise FgbgError(f"{cfg.data}: {len(manifest.problems)} problem(s) in the dataset (run `fgbg inspect`, or train with --on-bad skip):\n  {lines}{more}")
        print(f"skipping {len(manifest.problems)} sample(s) or file(s) with problems found while indexing:\n  {lines}{more}")
    split = manifest.split(cfg.test_batches)
    train = split["train"].slice(0, cfg.train_samples) if cfg.train_samples else split["train"]
    test = split["test"].slice(0, cfg.test_samples) if cfg.test_samples else split["test"]
    if train.num_rows == 0 or test.num_rows == 0:
        raise FgbgError(f"{cfg.data}: need training and test samples (found {train.num_rows} and {test.num_rows}; a dataset needs at least 2 batches, or set test_batches)")
    if train.num_rows < cfg.batch_size:
        raise FgbgError(f"{train.num_rows} training samples are fewer than one batch of {cfg.batch_size}")
    return {"train": manifest.with_paths(train), "test": manifest.with_paths(test)}


def make_datasets(cfg: Config, tables: dict) -> dict:
    """The run's Ray Datasets: decoding the JPEGs while training, or read from the cache (which decodes a split first if need be)."""
    from .ingest import IngestConfig, build_dataset, pad_rows

    ingest = IngestConfig(size=cfg.size, on_bad=cfg.on_bad)

    def dataset(table, shuffle: bool = False):
        if cfg.cache:
            from .cache import cached_dataset

            return cached_dataset(table, ingest, cfg.cache, shuffle)
        return build_dataset(table, ingest, shuffle)

    return {"train": dataset(tables["train"], shuffle=True), "test": dataset(pad_rows(tables["test"], max(cfg.workers, 1)))}


def make_trainer(cfg: Config, tables: dict, progress=None, callbacks=None, startup: dict | None = None):
    """The TorchTrainer of a run: Ray Datasets from the manifest tables, scaling, storage, checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = make_datasets(cfg, tables)
    storage.write_bytes(storage.join(cfg.run_dir, "config.yaml"), cfg.to_yaml().encode())
    return TorchTrainer(
        train_func_per_worker,
        train_loop_config={"config": cfg.to_dict(), "train_samples": tables["train"].num_rows, "progress": progress,
                           "startup": {**(startup or {}), "submitted": time.time()}},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
                                                 placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.out,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="iou", checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )


def quiet_ray_data() -> None:
    import logging

    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _check_room(cfg: Config) -> None:
    """Say so when the cluster, as it is now, leaves no CPU for Ray Data to decode with (training would wait)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    need = max(cfg.workers, 1) * cfg.cpus_per_worker + 1
    if total < need:
        print(
            f"warning: the cluster has {total:g} CPUs now; {max(cfg.workers, 1)} workers × {cfg.cpus_per_worker:g} CPUs "
            f"plus 1 for decoding need {need:g}. Training waits until the cluster grows (autoscaling); on a fixed "
            f"cluster use fewer --workers or --set cpus_per_worker={max((total - 1) / max(cfg.workers, 1), 0.1):.2g}",
            flush=True,
        )


def fit(cfg: Config, address: str | None = None, verbose: bool = False) -> dict:
    """Train as configured; returns the last epoch's metrics and where the run lives."""
    import ray
    import ray.train
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    startup = {"driver": time.time()}
    tables = prepare(cfg)
    last = find_checkpoints(cfg.run_dir)
    if last and last[-1][1]["epoch"] >= cfg.epochs:
        print(f"{cfg.run_dir}: already trained for {last[-1][1]['epoch']} epochs; nothing to do")
        return {"run_dir": cfg.run_dir, "metrics": last[-1][1]}
    # a local cluster gets one CPU more than the training workers take, so that Ray Data can decode
    connect(address, num_cpus=max(os.cpu_count() or 1, int(max(cfg.workers, 1) * cfg.cpus_per_worker) + 1), verbose=verbose)
    quiet_ray_data()
    _check_room(cfg)
    # the queue lives on the driver's node: losing a worker node must not take the progress lines with it
    # (a hard affinity: Ray places a soft one elsewhere about half the time, even when the node has room)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    startup["connected"] = time.time()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(progress, stop), daemon=True)
    relay.start()
    try:
        trainer = make_trainer(cfg, tables, progress=progress, startup=startup)  # (with --cache, decoding a split starts here)
        result = trainer.fit()
    except Exception as e:
        bad = bad_sample_message(e)
        if bad is not None:
            raise FgbgError(f"{bad} (run `fgbg inspect`, or train with --on-bad skip)") from None
        if isinstance(e, ray.train.TrainingFailedError):
            raise FgbgError(f"training failed: {e}") from e
        raise
    finally:
        stop.set()
        relay.join(timeout=10)
        progress.shutdown()
    report = write_report(cfg.run_dir)
    return {"run_dir": cfg.run_dir, "metrics": result.metrics, "report": report}


def bad_sample_message(error: BaseException) -> str | None:
    """The BadSample message inside a chain of Ray errors (causes, per-worker failures), if there is one.

    Ray Data passes a task's exception on as text, so the message is also looked for in the text.
    """
    todo, seen = [error], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BadSample):
            return str(e)
        match = _BAD_SAMPLE_TEXT.search(str(e))
        if match:
            return match.group(1).strip()
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        for value in vars(e).values() if hasattr(e, "__dict__") else []:
            if isinstance(value, dict):
                todo += [v for v in value.values() if isinstance(v, BaseException)]
            elif isinstance(value, BaseException):
                todo.append(value)
    return None


_BAD_SAMPLE_TEXT = re.compile(r"fgbg\.errors\.BadSample: (.+)")

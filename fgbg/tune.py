"""Sweeps with Ray Tune: every trial is the Ray Train training of `fgbg train`, reporting every epoch.

A search space is a YAML file (tune_spaces/*.yaml):

    fixed:     {size: 64, epochs: 4}            # training config keys every trial shares
    objective: {iou: 0.5, ssim: 0.5}            # what to maximise (optional; this is the default)
    space:                                      # config keys to search
      w_depth: {loguniform: [0.3, 3.0]}
      width:   {choice: [0.25, 0.5, 1.0]}
      batch_size: {grid: [8, 16]}

Distributions: choice (list), grid (list, every value in every sample), uniform / loguniform
([low, high]), randint ([low, high), integers).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .config import Config, as_number, read_yaml
from .errors import FgbgError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass
class Space:
    """A parsed search space: distributions per config key, fixed keys, and the objective."""

    space: dict
    fixed: dict = field(default_factory=dict)
    objective: dict | None = None
    source: str = "space"


def load_space(path: str | Path) -> Space:
    """Read and check a space file; every mistake is an error naming its key, before any trial starts."""
    raw = read_yaml(str(path), "search space") or {}
    if not isinstance(raw, dict):
        raise FgbgError(f"{path}: expected a mapping with space:, fixed: and objective:")
    extra = set(raw) - {"space", "fixed", "objective"}
    if extra:
        raise FgbgError(f"{path}: unknown section(s) {', '.join(sorted(extra))} (expected space, fixed, objective)")
    space, fixed = raw.get("space") or {}, raw.get("fixed") or {}
    if not isinstance(space, dict) or not space:
        raise FgbgError(f"{path}: space: must map config keys to distributions")
    known = set(Config.__dataclass_fields__)
    for key, dist in space.items():
        where = f"{path}: space.{key}"
        if key not in known:
            raise FgbgError(f"{where}: not a training config key")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise FgbgError(f"{where}: expected one of {', '.join(DISTRIBUTIONS)}, e.g. {{choice: [1, 2]}}, not {dist!r}")
        kind, args = next(iter(dist.items()))
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise FgbgError(f"{where}: {kind} takes a non-empty list of values")
        else:
            try:  # (PyYAML reads 1e-3 as a string)
                args = dist[kind] = [as_number(a, int if kind == "randint" else float) for a in args]
            except (TypeError, ValueError):
                pass
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args) and args[0] < args[1]):
                raise FgbgError(f"{where}: {kind} takes [low, high] with low < high, not {args!r}")
            if kind == "loguniform" and args[0] <= 0:
                raise FgbgError(f"{where}: loguniform needs low > 0")
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise FgbgError(f"{where}: randint takes integers")
    for key in fixed:
        if key not in known:
            raise FgbgError(f"{path}: fixed.{key}: not a training config key")
        if key in space:
            raise FgbgError(f"{path}: {key} is both fixed and searched")
    objective = raw.get("objective")
    # every sampled combination must make a valid config: check the corners now
    for values in _corners(space):
        Config.from_dict({**fixed, **({"objective": objective} if objective else {}), **values}, source=str(path))
    return Space(space, fixed, objective, str(path))


def _corners(space: dict) -> list[dict]:
    """A few concrete configurations from the space: each distribution's first and last values."""
    firsts, lasts = {}, {}
    for key, dist in space.items():
        kind, args = next(iter(dist.items()))
        firsts[key], lasts[key] = (args[0], args[-1]) if kind != "randint" else (args[0], args[1] - 1)
    return [firsts, lasts]


def to_tune(space: dict) -> dict:
    """The space as Ray Tune search-space objects."""
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: make[kind](args) for key, dist in space.items() for kind, args in dist.items()}


def run_trial(params: dict, base: dict) -> None:
    """One Tune trial: the training of `fgbg train`, its epoch reports forwarded to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .cluster import quiet_ray_data
    from .ingest import load_tables
    from .train import make_trainer

    trial = ray.tune.get_context().get_trial_id()
    cfg = Config.from_dict({**base, **params, "name": trial})  # the trial id: a restarted trial finds its checkpoints
    quiet_ray_data()
    make_trainer(cfg, load_tables(cfg), callbacks=[TuneReportCallback()]).fit()


def max_concurrency(workers_per_trial: int, cpus_per_worker: float, gpu: bool) -> int:
    """How many trials the cluster holds at once: each takes its workers and one CPU for decoding."""
    import ray

    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // (max(workers_per_trial, 1) * cpus_per_worker + 1))
    if gpu:
        return max(1, min(by_cpu, int(resources.get("GPU", 0) // max(workers_per_trial, 1))))
    return max(1, by_cpu)


def sweep(
    space_path: str,
    data: str,
    out: str = "sweeps",
    name: str = "sweep",
    trials: int = 4,
    epochs: int | None = None,
    scheduler: str = "asha",
    concurrency: int | None = None,
    workers_per_trial: int = 1,
    gpu: bool = False,
    resume: bool = False,
    address: str | None = None,
    cache: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Run (or resume) a sweep; writes results.csv, best_config.yaml and sweep.png into OUT/NAME.
    overrides: config keys every trial shares, over the space's fixed ones (`fgbg tune --set`)."""
    from ray import tune

    from .cluster import connect

    space = load_space(space_path)
    searched = sorted(set(overrides or {}) & set(space.space))
    if searched:
        raise FgbgError(f"--set {', '.join(searched)}: searched by {space.source}; --set fixes only keys the space does not search")
    if scheduler not in ("asha", "fifo"):
        raise FgbgError(f"--scheduler must be asha or fifo, not {scheduler!r}")
    out = storage.absolute(out)
    storage.check_bucket(out)  # a missing bucket or denied access stops here, before any trial
    experiment = storage.join(out, name)
    given = {"data": data, "cache": cache or space.fixed.get("cache", ""), "workers": workers_per_trial, "gpu": gpu,
             "out": storage.join(experiment, "trials"), **({"epochs": epochs} if epochs else {}),
             **({"objective": space.objective} if space.objective else {})}
    # one resolution, checks included: absolute paths, since a trial's working directory is its own
    base = Config.from_dict({**space.fixed, **(overrides or {}), **given}).resolved()

    # a local cluster holds at least one trial: its workers, one CPU for decoding, and the trial's own driver
    connect(address, num_cpus=max(os.cpu_count() or 1, int(workers_per_trial * base.cpus_per_worker) + 2))
    cap = max_concurrency(workers_per_trial, base.cpus_per_worker, gpu)
    if concurrency and concurrency > cap:
        print(f"the cluster holds {cap} trial(s) at a time now; the others wait until it grows (autoscaling)", flush=True)
    concurrency = concurrency or cap
    if base.cache and not resume and not {"size", "on_bad", "train_samples", "test_samples"} & set(space.space):
        # decode into the cache here, once, rather than in each of the first trials at the same time
        from .ingest import load_tables, make_datasets

        make_datasets(base, load_tables(base))
    # the trial itself only launches a TorchTrainer, which reserves the workers' resources on its own;
    # it asks for no CPU at all (Tune needs some resource: 1 MiB of memory), since even a fraction of
    # one would leave its node a fraction short of the whole CPU a decoding task needs
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base.to_dict()), {"CPU": 0, "memory": 2**20})
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise FgbgError(f"{experiment}: no sweep to resume there")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        sched = (
            tune.schedulers.ASHAScheduler(max_t=base.epochs, grace_period=1, reduction_factor=2)
            if scheduler == "asha"
            else tune.schedulers.FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space.space),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", num_samples=trials, scheduler=sched, max_concurrent_trials=concurrency
            ),
            # a trial whose node is lost runs again under its trial id, so its training resumes from its checkpoint
            run_config=tune.RunConfig(name=name, storage_path=out, failure_config=tune.FailureConfig(max_failures=base.max_failures)),
        )
    grid = tuner.fit()
    rows = summarise(grid, base, list(space.space))
    if not rows:
        raise FgbgError(f"{experiment}: no trial reported any epoch")
    best = max(rows, key=lambda r: r["best_objective"])
    best_cfg = Config.from_dict({**base.to_dict(), **{k: best[k] for k in space.space}, "name": "", "out": "runs"})
    storage.write_bytes(storage.join(experiment, "results.csv"), _csv(rows))
    storage.write_bytes(storage.join(experiment, "best_config.yaml"), best_cfg.to_yaml().encode())
    storage.write_bytes(storage.join(experiment, "sweep.png"), plot(grid, rows))
    return {"experiment": experiment, "best": best, "trials": rows, "concurrency": concurrency}


def summarise(grid, base: Config, keys: list[str]) -> list[dict]:
    """One row per trial: its parameters, final and best metrics, epochs run and whether it stopped early."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "objective" not in history:
            continue
        last = history.iloc[-1]
        best = history.loc[history["objective"].idxmax()]
        rows.append(
            {
                "trial": result.metrics.get("trial_id", Path(result.path).name),
                **{k: result.config.get(k) for k in keys},
                "epochs": int(last["epoch"]),
                "stopped_early": int(last["epoch"]) < base.epochs,
                "iou": float(last["iou"]),
                "ssim": float(last["ssim"]),
                "rmse": float(last["rmse"]),
                "objective": float(last["objective"]),
                "best_objective": float(best["objective"]),
                "best_iou": float(history["iou"].max()),
                "best_ssim": float(history["ssim"].max()),
                "samples_per_s": float(last["samples_per_s"]),
                "params": int(last["params"]) if "params" in last else None,
                "error": bool(result.error),
            }
        )
    return rows


def _csv(rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def plot(grid, rows: list[dict]) -> bytes:
    """A PNG: IoU against SSIM per trial, and each trial's objective per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in rows:
        left.scatter(row["best_ssim"], row["best_iou"], marker="x" if row["stopped_early"] else "o")
        left.annotate(row["trial"][-5:], (row["best_ssim"], row["best_iou"]), fontsize=7)
    left.set_xlabel("best test SSIM")
    left.set_ylabel("best test IoU")
    left.set_title("trials (x: stopped early)")
    for result in grid:
        h = result.metrics_dataframe
        if h is not None and not h.empty and "objective" in h:
            right.plot(h["epoch"], h["objective"], marker=".", alpha=0.8)
    right.set_xlabel("epoch")
    right.set_ylabel("objective")
    right.set_title("learning curves")
    right.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()


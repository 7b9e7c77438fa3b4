"""Sweeps with Ray Tune: every trial is the Ray Train training of `fgbg train`, reporting every epoch.

A search space is a YAML file (tune_spaces/*.yaml):

    fixed:     {size: 64, epochs: 4}            # training config keys every trial shares
    objective: {iou: 0.5, ssim: 0.5}            # what to maximise (optional; this is the default)
    space:                                      # config keys to search
      w_depth: {loguniform: [0.3, 3.0]}
      width:   {choice: [0.25, 0.5, 1.0]}
      batch_size: {grid: [8, 16]}

Distributions: choice (list), grid (list, every value in every sample), uniform / loguniform
([low, high]), randint ([low, high), integers). A choice or grid may name its values (a mapping of
names to values): the searcher, the table and results.csv see the names, the trial the values; that
is how a dict such as a size schedule is searched:

      size_schedule: {choice: {gentle: {1: 64, 6: 96, 9: 160}, direct: {1: 96, 9: 160}}}

Searchers: random (Tune's own sampling; grids expanded) or optuna (TPE; no grid:). Schedulers: asha
(stops weak trials early, comparing them after equal numbers of epochs at the final size: where
trials train at several sizes, small-size epochs are never ranked against full-size ones) or fifo.
One-worker trials train in the trial's own process, which later trials reuse (no Ray Train worker
group to start: a trial starts in seconds); more workers per trial run a Ray Train worker group.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoints, storage
from .config import Config, as_number, read_yaml
from .errors import FgbgError
from .sweep_report import SweepTable, csv_bytes, plot, summarise

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCHERS = ("random", "optuna")


@dataclass
class Space:
    """A parsed search space: distributions per config key, fixed keys, and the objective; presets: for a choice or
    grid of named values, key → {name: value} (the space itself then holds the names)."""

    space: dict
    fixed: dict = field(default_factory=dict)
    objective: dict | None = None
    source: str = "space"
    presets: dict = field(default_factory=dict)

    def values(self, params: dict) -> dict:
        """A trial's parameters as config values: named presets replaced by what they name."""
        return {k: self.presets[k][v] if k in self.presets else v for k, v in params.items()}


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
    presets = {}
    for key, dist in space.items():
        where = f"{path}: space.{key}"
        if key not in known:
            raise FgbgError(f"{where}: not a training config key")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise FgbgError(f"{where}: expected one of {', '.join(DISTRIBUTIONS)}, e.g. {{choice: [1, 2]}}, not {dist!r}")
        kind, args = next(iter(dist.items()))
        if kind in ("choice", "grid") and isinstance(args, dict) and args:  # named values: the space holds the names
            presets[key] = {str(name): value for name, value in args.items()}
            args = dist[kind] = list(presets[key])
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise FgbgError(f"{where}: {kind} takes a non-empty list of values (or a mapping of names to values)")
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
    parsed = Space(space, fixed, objective, str(path), presets)
    for values in _corners(space) + [{k: name} for k in presets for name in presets[k]]:  # and every preset
        Config.from_dict({**fixed, **({"objective": objective} if objective else {}), **parsed.values(values)}, source=str(path))
    return parsed


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


def run_trial(params: dict, base: dict, presets: dict | None = None) -> None:
    """One Tune trial: the training of `fgbg train`, every epoch reported to Tune. One worker (workers 0): trained here, in
    the trial's own process (which Tune reuses for later trials); more: a Ray Train worker group, its reports forwarded."""
    import ray.tune

    from .cluster import quiet_ray_data
    from .ingest import load_tables
    from .train import make_trainer, run_inputs, train_func_per_worker

    startup = {"driver": time.time()}
    trial = ray.tune.get_context().get_trial_id()
    values = Space({}, presets=presets or {}).values(params)
    cfg = Config.from_dict({**base, **values, "name": trial})  # the trial id: a restarted trial finds its checkpoints
    quiet_ray_data()
    tables = load_tables(cfg)
    startup["connected"] = time.time()
    if cfg.workers == 0:
        datasets, loop_config = run_inputs(cfg, tables, startup)
        train_func_per_worker(loop_config, InTrial(cfg, datasets))
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        make_trainer(cfg, tables, callbacks=[TuneReportCallback()], startup=startup).fit()


class InTrial:
    """The worker's side of training (fgbg.train.RayTrainSide's) for a one-worker trial trained in Tune's trial process:
    checkpoints written to the trial's run directory as Ray Train writes them (the latest and the two best by IoU kept),
    the epoch's metrics reported to Tune."""

    rank, world = 0, 1

    def __init__(self, cfg: Config, datasets: dict):
        import torch

        self.cfg, self.datasets = cfg, datasets
        self.device = torch.device("cuda" if cfg.gpu else "cpu")

    def prepare_model(self, model):
        return model.to(self.device)

    def checkpoint(self):
        import ray.train

        found = checkpoints.find(self.cfg.run_dir)
        return ray.train.Checkpoint(found[-1][0]) if found else None

    def shard(self, name: str):
        return self.datasets[name].iterator()

    def report(self, metrics: dict, folder: str | None = None) -> None:
        import ray.tune

        if folder:
            storage.upload_dir(folder, storage.join(self.cfg.run_dir, f"checkpoint_{time.strftime('%Y-%m-%d_%H-%M-%S')}_{metrics['epoch']:04d}"))
            found = checkpoints.find(self.cfg.run_dir)
            keep = {found[-1][0], *(f for f, _ in sorted(found, key=lambda c: -checkpoints.iou_score(c[1]))[:2])}
            for old, _ in found:
                if old not in keep:
                    storage.delete(old, folder=True)
        ray.tune.report(metrics)


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
    search: str = "random",
    concurrency: int | None = None,
    workers_per_trial: int = 0,
    gpu: bool = False,
    resume: bool = False,
    address: str | None = None,
    cache: str | None = None,
    overrides: dict | None = None,
    verbose: bool = False,
) -> dict:
    """Run (or resume) a sweep; writes results.csv, best_config.yaml and sweep.png into OUT/NAME.
    overrides: config keys every trial shares, over the space's fixed ones (`fgbg tune --set`). workers_per_trial 0: each
    trial trains in its own process (one worker), later trials reusing the process; verbose: Tune's own output too."""
    from ray import tune

    from .cluster import connect, quiet_ray_data

    space = load_space(space_path)
    searched = sorted(set(overrides or {}) & set(space.space))
    if searched:
        raise FgbgError(f"--set {', '.join(searched)}: searched by {space.source}; --set fixes only keys the space does not search")
    if scheduler not in ("asha", "fifo"):
        raise FgbgError(f"--scheduler must be asha or fifo, not {scheduler!r}")
    if search not in SEARCHERS:
        raise FgbgError(f"--search must be {' or '.join(SEARCHERS)}, not {search!r}")
    grids = sorted(k for k, dist in space.space.items() if "grid" in dist)
    if search == "optuna" and grids:
        raise FgbgError(f"{space.source}: {', '.join(grids)}: grid: tries every value in every sample, which Optuna's sampling does not do: "
                        "write choice: for --search optuna, or use --search random")
    if search == "optuna":
        try:
            import optuna
        except ImportError:
            raise FgbgError("--search optuna needs Optuna: pip install 'fgbg[optuna]' (or optuna>=3.0)") from None
    out = storage.absolute(out)
    storage.check_bucket(out)  # a missing bucket or denied access stops here, before any trial
    experiment = storage.join(out, name)
    given = {"data": data, "cache": cache or space.fixed.get("cache", ""), "workers": workers_per_trial, "gpu": gpu,
             "out": storage.join(experiment, "trials"), **({"epochs": epochs} if epochs else {}),
             **({"objective": space.objective} if space.objective else {})}
    # one resolution, checks included: absolute paths, since a trial's working directory is its own
    base = Config.from_dict({**space.fixed, **(overrides or {}), **given}).resolved()

    # a local cluster holds at least one trial: its workers, one CPU for decoding, and the trial's own driver
    connect(address, num_cpus=max(os.cpu_count() or 1, int(max(workers_per_trial, 1) * base.cpus_per_worker) + 2))
    if not verbose:
        quiet_ray_data()
    cap = max_concurrency(workers_per_trial, base.cpus_per_worker, gpu)
    if concurrency and concurrency > cap:
        print(f"the cluster holds {cap} trial(s) at a time now; the others wait until it grows (autoscaling)", flush=True)
    concurrency = concurrency or cap
    if base.cache and not resume and not {"size", "on_bad", "train_samples", "test_samples"} & set(space.space):
        # decode into the cache here, once, rather than in each of the first trials at the same time
        from .ingest import load_tables, make_datasets

        make_datasets(base, load_tables(base))
    # A one-worker trial trains in its own process, which asks for the worker's resources. A trial of more workers only
    # launches a TorchTrainer, which reserves the workers' resources on its own; the trial asks for no CPU at all (Tune
    # needs some resource: 1 MiB of memory), since even a fraction of one would leave its node a fraction short of the
    # whole CPU a decoding task needs.
    resources = {"CPU": base.cpus_per_worker, **({"GPU": 1} if gpu else {})} if workers_per_trial == 0 else {"CPU": 0, "memory": 2**20}
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base.to_dict(), presets=space.presets), resources)
    table = SweepTable(list(space.space), base.epochs)
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise FgbgError(f"{experiment}: no sweep to resume there")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        searcher = None
        if search == "optuna":
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # (not a line per study)
            searcher = ConcurrencyLimiter(OptunaSearch(seed=base.seed), max_concurrent=concurrency)  # TPE, Optuna's default
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space.space),
            tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=trials, search_alg=searcher,
                                        scheduler=_scheduler(scheduler, base, space), max_concurrent_trials=None if searcher else concurrency,
                                        reuse_actors=workers_per_trial == 0),
            # a trial whose node is lost runs again under its trial id, so its training resumes from its checkpoint
            run_config=tune.RunConfig(name=name, storage_path=out, failure_config=tune.FailureConfig(max_failures=base.max_failures),
                                      callbacks=None if verbose else [table], verbose=None if verbose else 0, log_to_file=not verbose),
        )
    # Tune's own output: its newer engine prints the experiment's box whatever the verbosity, the older one nothing at 0
    engine = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    try:
        grid = tuner.fit()
    finally:
        if engine is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = engine
    rows = summarise(grid, base, list(space.space), table.starts)
    if not rows:
        raise FgbgError(f"{experiment}: no trial reported any epoch")
    best = rows[0]  # by its last epoch's objective (the best epoch of many is an optimistic figure)
    best_cfg = Config.from_dict({**base.to_dict(), **space.values({k: best[k] for k in space.space}), "name": "", "out": "runs"})
    storage.write_bytes(storage.join(experiment, "results.csv"), csv_bytes(rows))
    storage.write_bytes(storage.join(experiment, "best_config.yaml"), best_cfg.to_yaml().encode())
    storage.write_bytes(storage.join(experiment, "sweep.png"), plot(grid, rows, list(space.space)))
    found = checkpoints.find(storage.join(base.out, best["trial"]))
    return {"experiment": experiment, "best": best, "trials": rows, "concurrency": concurrency, "keys": list(space.space),
            "checkpoint": found[-1][0] if found else None}


def _scheduler(kind: str, base: Config, space: Space):
    """FIFO, or ASHA comparing trials after equal numbers of epochs at the final size (the `epochs_at_size` each epoch
    reports): where trials train at smaller sizes first, their rungs fall only where every trial trains at the final size.
    max_t: the most epochs a trial may run (a trial with fewer at the final size ends on its own)."""
    from ray import tune

    if kind == "fifo":
        return tune.schedulers.FIFOScheduler()
    dist = space.space.get("epochs")
    epochs = [base.epochs] if dist is None else list(space.presets.get("epochs", {}).values()) or next(iter(dist.values()))
    return tune.schedulers.ASHAScheduler(time_attr="epochs_at_size", max_t=max(int(e) for e in epochs), grace_period=1, reduction_factor=2)

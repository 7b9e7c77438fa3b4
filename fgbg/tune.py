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

import csv
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback

from . import checkpoints, storage
from .config import Config, as_number, read_yaml
from .errors import FgbgError

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
        os.environ.pop("RAY_AIR_NEW_OUTPUT") if engine is None else os.environ.update(RAY_AIR_NEW_OUTPUT=engine)
    rows = summarise(grid, base, list(space.space), table.starts)
    if not rows:
        raise FgbgError(f"{experiment}: no trial reported any epoch")
    best = rows[0]  # by its last epoch's objective (the best epoch of many is an optimistic figure)
    best_cfg = Config.from_dict({**base.to_dict(), **space.values({k: best[k] for k in space.space}), "name": "", "out": "runs"})
    storage.write_bytes(storage.join(experiment, "results.csv"), _csv(rows))
    storage.write_bytes(storage.join(experiment, "best_config.yaml"), best_cfg.to_yaml().encode())
    storage.write_bytes(storage.join(experiment, "sweep.png"), plot(grid, rows, list(space.space)))
    found = checkpoints.find(storage.join(base.out, best["trial"]))
    return {"experiment": experiment, "best": best, "trials": rows, "concurrency": concurrency, "keys": list(space.space),
            "checkpoint": found[-1][0] if found else None}


def _epochs_at_size(cfg: Config) -> int:
    return sum(cfg.size_at(e) == cfg.size for e in range(1, cfg.epochs + 1))


def _scheduler(kind: str, base: Config, space: Space):
    """FIFO, or ASHA comparing trials after equal numbers of epochs at the final size (the `epochs_at_size` each epoch
    reports): where trials train at smaller sizes first, their rungs fall only where every trial trains at the final size."""
    from ray import tune

    if kind == "fifo":
        return tune.schedulers.FIFOScheduler()
    schedules = [base.size_schedule]
    if "size_schedule" in space.space:
        schedules = list(space.presets["size_schedule"].values()) if "size_schedule" in space.presets else next(iter(space.space["size_schedule"].values()))
    epochs = [base.epochs]
    if "epochs" in space.space:
        epochs = list(space.presets.get("epochs", {}).values()) or next(iter(space.space["epochs"].values()))
    longest = max(_epochs_at_size(Config.from_dict({**base.to_dict(), "size_schedule": s, "epochs": e})) for s in schedules for e in epochs)
    return tune.schedulers.ASHAScheduler(time_attr="epochs_at_size", max_t=max(1, longest), grace_period=1, reduction_factor=2)


class SweepTable(Callback):
    """The driver's view of a sweep (a Tune callback): one compact row per trial (state, epoch, IoU, SSIM, objective, its
    parameters), updated as trials report: redrawn in place on a terminal, a line per change in a job's log. Also the
    seconds from each trial's start to its first training step (`starts`)."""

    def __init__(self, keys: list[str], epochs: int, stream=None):
        self.keys, self.epochs, self.stream = keys, epochs, stream
        self.rows: dict[str, dict] = {}
        self.started: dict[str, float] = {}
        self.starts: dict[str, float] = {}
        self.drawn = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self._update(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("first_step_at") and trial.trial_id in self.started and trial.trial_id not in self.starts:
            self.starts[trial.trial_id] = max(0.0, result["first_step_at"] - self.started[trial.trial_id])
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self.rows.get(trial.trial_id, {})
        self._update(trial, "stopped" if last.get("epoch", self.epochs) < self.epochs else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, "ERROR")

    def _update(self, trial, state: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"trial": trial.trial_id, **{k: trial.config.get(k) for k in self.keys}})
        row["state"] = state
        if result:
            row |= {k: result[k] for k in ("epoch", "iou", "ssim", "objective") if k in result}
        self._show(row)

    def lines(self) -> list[str]:
        head = ["trial", "state", "epoch", "IoU", "SSIM", "objective", *self.keys]
        cells = [[r["trial"], r["state"], f"{r['epoch']}/{self.epochs}" if "epoch" in r else "-",
                  *(f"{r[k]:.4f}" if k in r else "-" for k in ("iou", "ssim", "objective")), *(_short(r[k]) for k in self.keys)]
                 for r in self.rows.values()]
        widths = [max(len(str(c)) for c in column) for column in zip(head, *cells)]
        return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *cells]]

    def _show(self, row: dict) -> None:
        stream = self.stream or sys.stdout
        if stream.isatty():
            lines = self.lines()
            stream.write((f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "") + "\n".join(lines) + "\n")
            self.drawn = len(lines)
        else:  # a job's log: the header once, then a line per change
            lines = self.lines()
            stream.write(("" if self.drawn else lines[0] + "\n") + next(line for line, r in zip(lines[1:], self.rows.values()) if r is row) + "\n")
            self.drawn = 1
        stream.flush()


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summarise(grid, base: Config, keys: list[str], starts: dict | None = None) -> list[dict]:
    """One row per trial, best first by its last epoch's objective: its parameters, final and best metrics, epochs run,
    whether it stopped early, the seconds from its start to its first training step."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "objective" not in history:
            continue
        last = history.iloc[-1]
        best = history.loc[history["objective"].idxmax()]
        trial = result.metrics.get("trial_id", Path(result.path).name)
        rows.append(
            {
                "trial": trial,
                **{k: result.config.get(k) for k in keys},
                "epochs": int(last["epoch"]),
                "stopped_early": int(last["epoch"]) < base.epochs,
                "iou": float(last["iou"]),
                "ssim": float(last["ssim"]),
                "rmse": float(last["rmse"]),
                "objective": float(last["objective"]),
                "best_objective": float(best["objective"]),
                "best_epoch": int(best["epoch"]),
                "best_iou": float(history["iou"].max()),
                "best_ssim": float(history["ssim"].max()),
                "samples_per_s": float(last["samples_per_s"]),
                "params": int(last["params"]) if "params" in last else None,
                "start_s": round((starts or {}).get(trial, float("nan")), 2),
                "error": bool(result.error),
            }
        )
    return sorted(rows, key=lambda r: -r["objective"])


def _csv(rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def plot(grid, rows: list[dict], keys: list[str]) -> bytes:
    """A PNG: IoU against SSIM per trial, each trial's objective per epoch, and the last objective against each swept knob
    (a log axis for a knob swept over decades; named or other values side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2 + len(keys)
    per_row = min(columns, 4)
    fig, axes = plt.subplots(-(-columns // per_row), per_row, figsize=(4.2 * per_row, 3.8 * -(-columns // per_row)), squeeze=False)
    axes = axes.ravel()
    left, right = axes[0], axes[1]
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
    for ax, key in zip(axes[2:], keys):
        values = [row[key] for row in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values}) if not numeric else []
        xs = values if numeric else [labels.index(str(v)) for v in values]
        ax.scatter(xs, [row["objective"] for row in rows], c=["tab:gray" if row["stopped_early"] else "tab:blue" for row in rows])
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if labels:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel("last objective")
    for ax in axes[columns:]:
        ax.set_visible(False)
    fig.suptitle("gray: stopped early", fontsize=8, x=0.99, ha="right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()

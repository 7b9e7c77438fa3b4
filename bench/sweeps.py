"""Sweeps on the demo's data and cache (`make demo` first): where a trial's start goes, and what each searcher finds.

  start    the same 4 short trials (one config, so their results must agree) with a Ray Train worker group each
           (--workers-per-trial 1, fgbg's way before) and in
           the trial's own process, reused by the next trial (--workers-per-trial 0, the default): the seconds from
           each trial's start (Tune's on_trial_start) to its first training step, and the parts of it the trial
           measures (its manifest, datasets, Ray Train's workers, the model, the first batch, the first step)
  search   tune_spaces/recipe.yaml, 16 trials with ASHA: random search against Optuna's TPE: best last-epoch objective,
           its IoU, trial-epochs spent, wall time, median trial start

    python bench/sweeps.py [--stages start,search] [--demo demo_out]
Prints a table per stage and writes bench/out/sweeps.json (each stage as it ends).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
PARTS = ("startup_connect", "startup_datasets", "startup_workers", "startup_model", "startup_first_batch", "startup_first_step")


def _start(demo: Path, work: Path) -> dict:
    from fgbg.report import read_history
    from fgbg.tune import sweep

    space = work / "start.yaml"
    space.write_text(yaml.safe_dump({"fixed": {"size": 64, "width": 0.5, "epochs": 1, "samples_per_epoch": 200, "test_samples": 100,
                                               "batch_size": 16, "log_every": 1000}, "space": {"lr": {"choice": [0.005]}}}))
    # every trial the same config: what they compute must not depend on where they run (a worker group, a reused process)
    out = {}
    for workers in (1, 0):
        shutil.rmtree(work / "sweeps" / f"start-w{workers}", ignore_errors=True)
        r = sweep(str(space), str(demo / "data"), out=str(work / "sweeps"), name=f"start-w{workers}", trials=4, scheduler="fifo",
                  workers_per_trial=workers, cache=str(demo / "cache"))
        trials = sorted(r["trials"], key=lambda t: read_history(str(Path(r["experiment"]) / "trials" / t["trial"]))[0]["first_step_at"])
        parts = [read_history(str(Path(r["experiment"]) / "trials" / t["trial"]))[0] for t in trials]
        out[f"workers_per_trial_{workers}"] = {
            "start_s": [t["start_s"] for t in trials],  # in the order the trials ran
            "later_median_s": round(statistics.median(t["start_s"] for t in trials[1:]), 2),
            "processes": len({p["process"] for p in parts}),
            "iou": [round(t["iou"], 6) for t in trials], "train_loss": [round(p["train_loss"], 6) for p in parts],
            # where a later trial's start goes (medians): before the trial function runs (its process), then its parts
            "parts_later_median_s": {"before_trial_function": round(statistics.median(t["start_s"] - p.get("startup_total", 0)
                                                                                      for t, p in zip(trials[1:], parts[1:])), 2),
                                     **{k: round(statistics.median(p.get(k, 0.0) for p in parts[1:]), 2) for k in PARTS}},
        }
    return out


def _search(demo: Path, work: Path, search: str) -> dict:
    from fgbg.tune import sweep

    shutil.rmtree(work / "sweeps" / f"recipe-{search}", ignore_errors=True)
    start = time.perf_counter()
    r = sweep(str(ROOT / "tune_spaces" / "recipe.yaml"), str(demo / "data"), out=str(work / "sweeps"), name=f"recipe-{search}",
              trials=16, scheduler="asha", search=search, cache=str(demo / "cache"),
              overrides={"cpus_per_worker": os.cpu_count()})  # one trial at a time, training on every core (as the demo)
    return {search: {
        "seconds": round(time.perf_counter() - start, 1),
        "trials": len(r["trials"]),
        "trial_epochs": sum(t["epochs"] for t in r["trials"]),
        "stopped_early": sum(t["stopped_early"] for t in r["trials"]),
        "best_objective": round(r["best"]["objective"], 4),
        "best_iou": round(r["best"]["iou"], 4),
        "best_ssim": round(r["best"]["ssim"], 4),
        "best": {k: r["best"][k] for k in r["keys"]},
        "start_median_s": round(statistics.median(t["start_s"] for t in r["trials"]), 2),
    }}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="start,search")
    ap.add_argument("--demo", default=str(ROOT / "demo_out"), help="make demo's output: its data and cache")
    ap.add_argument("--searchers", default="random,optuna", help="the search stage's, in turn")
    args = ap.parse_args()
    demo, work = Path(args.demo), OUT / "sweeps"
    if not (demo / "data").is_dir():
        raise SystemExit(f"{demo}/data: no demo data (run `make demo` first)")
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads((OUT / "sweeps.json").read_text()) if (OUT / "sweeps.json").is_file() else {}
    runs = [("start", None)] if "start" in args.stages.split(",") else []
    runs += [("search", s) for s in args.searchers.split(",")] if "search" in args.stages.split(",") else []
    for stage, search in runs:  # each searcher's figures written as soon as its sweep ends
        got = _start(demo, work) if stage == "start" else _search(demo, work, search)
        results[stage] = {**results.get(stage, {}), **got, "date": time.strftime("%Y-%m-%d %H:%M")}
        (OUT / "sweeps.json").write_text(json.dumps(results, indent=1))
        print(json.dumps({stage: results[stage]}, indent=1), flush=True)


if __name__ == "__main__":
    main()

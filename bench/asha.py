"""ASHA against the full grid: the best IoU each finds and the trial-epochs each spends.

Both sweep the same grid (learning rate × width) on the same synthetic set; FIFO runs every trial
to the end, ASHA stops the weak ones at rungs of 1, 2, 4 … epochs.
    python bench/asha.py [--size 32] [--per-batch 400] [--epochs 4]
Prints a table and writes bench/out/asha.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-batch", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()

    from fgbg.synth import SynthSpec, write_dataset
    from fgbg.tune import sweep

    work = OUT / f"asha-{args.size}-{args.per_batch}"
    data = work / "data"
    if not data.exists():
        write_dataset(SynthSpec(str(data), batches=2, per_batch=args.per_batch, size=args.size, seed=5))
    space = work / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "fixed": {"size": args.size, "epochs": args.epochs, "batch_size": 16, "log_every": 1000},
                "space": {"lr": {"grid": [0.003, 0.001, 0.0003, 0.00003]}, "width": {"grid": [0.25, 0.5]}},
            }
        )
    )
    results = {"config": vars(args)}
    for scheduler in ("fifo", "asha"):
        start = time.perf_counter()
        r = sweep(str(space), str(data), out=str(work / "sweeps"), name=scheduler, trials=1, scheduler=scheduler)
        results[scheduler] = {
            "trials": len(r["trials"]),
            "trial_epochs": sum(t["epochs"] for t in r["trials"]),
            "stopped_early": sum(t["stopped_early"] for t in r["trials"]),
            "best_iou": round(max(t["best_iou"] for t in r["trials"]), 4),
            "best_objective": round(r["best"]["best_objective"], 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(f"{'scheduler':<10} {'trials':>6} {'trial-epochs':>13} {'stopped early':>14} {'best IoU':>9} {'best objective':>15} {'seconds':>8}")
    for name in ("fifo", "asha"):
        x = results[name]
        print(f"{name:<10} {x['trials']:>6} {x['trial_epochs']:>13} {x['stopped_early']:>14} {x['best_iou']:>9} {x['best_objective']:>15} {x['seconds']:>8}")
    OUT.mkdir(exist_ok=True)
    (OUT / "asha.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

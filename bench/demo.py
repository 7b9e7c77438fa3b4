"""What a new user gets from `make demo`: its model on data it never saw, over several runs of the demo.

Runs `make clean demo` N times (each from nothing but .venv: synth, inspect, train, evaluate), timing
each, and evaluates each run's model with `fgbg evaluate` on:
  - fresh synthetic sets: `fgbg synth` at its defaults (160×160) with seeds the demo never used, and the same
    with `--picture-textures 0 --scene-textures 0` (what fgbg synth wrote before those options);
  - photographs: bench/transfer.py's photo set (real photographs; needs scikit-image);
reporting the model's IoU and SSIM beside the threshold rule's IoU (`baseline_iou`) on the same data,
per run and their median.

    python bench/demo.py [--runs 3] [--train-args "--set w_lovasz=1"] [--out demo.json]
Prints a table; writes bench/out/demo.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
FGBG = str(ROOT / ".venv" / "bin" / "fgbg")


def evaluation_sets() -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "bench"))
    from transfer import write_photo_set

    work = OUT / "demo-eval"
    sets = {}
    # fgbg synth as it is, and as it was before its texture options (drawn textures only: the same bytes as then)
    for label, folder, options in (("", "fresh", []), (", drawn textures", "fresh-drawn", ["--picture-textures", "0", "--scene-textures", "0"])):
        for seed in (777, 778):
            path = sets[f"fresh synthetic{label} (seed {seed})"] = work / f"{folder}{seed}"
            if not path.exists():
                subprocess.run([FGBG, "synth", "--out", str(path), "--batches", "1", "--per-batch", "400", "--seed", str(seed), "--quiet",
                                *options], check=True)
    sets["photographs"] = work / "photos"
    if not sets["photographs"].exists():
        write_photo_set(sets["photographs"], 400, 160)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--train-args", default="", help='more `fgbg train` flags for the demo (one lever of the ablation), e.g. "--set w_lovasz=1"')
    ap.add_argument("--out", default="demo.json", help="file name under bench/out")
    args = ap.parse_args()
    sets = evaluation_sets()
    runs = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(["make", "clean", "demo", f"TRAIN_ARGS={args.train_args}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        keep = OUT / f"demo-run{i + 1}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(ROOT / "demo_out" / "runs" / "demo", keep)
        row = {"seconds": round(seconds, 1)}
        for name, data in sets.items():
            done = subprocess.run([FGBG, "evaluate", "--checkpoint", str(keep), "--data", str(data), "--split", "all", "--json",
                                   "--out", str(keep / "bench-eval" / data.name)], check=True, capture_output=True, text=True)
            r = json.loads(done.stdout)
            row[name] = {k: round(r[k], 4) for k in ("iou", "ssim", "baseline_iou")}
        runs.append(row)
        print(json.dumps(row), flush=True)
    median = {"seconds": statistics.median(r["seconds"] for r in runs)}
    for name in sets:
        median[name] = {k: statistics.median(r[name][k] for r in runs) for k in ("iou", "ssim", "baseline_iou")}
    OUT.mkdir(exist_ok=True)
    (OUT / args.out).write_text(json.dumps({"runs": runs, "median": median}, indent=2))
    print(f"{'':<28}" + "".join(f"{n:>30}" for n in sets) + f"{'make demo s':>14}")
    for label, row in [*((f"run {i + 1}", r) for i, r in enumerate(runs)), ("median", median)]:
        cells = "".join(f"{row[n]['iou']:>12.3f} /{row[n]['ssim']:.3f} /{row[n]['baseline_iou']:.3f}" for n in sets)
        print(f"{label + ' IoU/SSIM/baseline':<28}{cells}{row['seconds']:>14.0f}")


if __name__ == "__main__":
    main()

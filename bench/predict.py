"""Batch prediction: `fgbg predict` on Ray Data (1 and 2 actors) against the plain single-process loop.

The same files, model, batch size, precision (float32 on the CPU), memory format and threads: the plain loop is
`fgbg predict --concurrency 0` (decode, infer, write, one after another, in one process with torch's default
threads); the Ray arms are the same command with --concurrency 1 and 2 (each actor gets the cluster's CPUs
divided among the actors as torch threads). One run of each, side by side, each a fresh output folder.
Reported: samples/s over the whole command (Ray's start included) and after the first batch came back.

    python bench/predict.py [--samples 800] [--size 160] [--width 1.0]
Prints a table; writes bench/out/predict.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from fgbg import checkpoints  # noqa: E402
from fgbg.config import Config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    fgbg = str(Path(sys.executable).parent / "fgbg")
    work = OUT / "predict"
    data = work / f"data-{args.samples}-{args.size}"
    if not data.exists():
        subprocess.run([fgbg, "synth", "--out", str(data), "--batches", "1", "--per-batch", str(args.samples), "--size", str(args.size),
                        "--seed", "9", "--quiet"], check=True)
    cfg = Config(size=args.size, width=args.width)
    ckpt = work / f"checkpoint-{args.size}-{args.width}"
    if not ckpt.exists():
        torch.manual_seed(0)
        checkpoints.write_untrained(ckpt, cfg)
    arms = {"plain loop (one process)": 0, "Ray Data, 1 actor": 1, "Ray Data, 2 actors": 2}
    results = {}
    for label, concurrency in arms.items():
        out = work / f"out-{concurrency}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        done = subprocess.run([fgbg, "predict", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--json",
                               "--batch-size", str(args.batch_size), "--concurrency", str(concurrency)],
                              check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r = json.loads(done.stdout)
        steady = (r["samples"] - args.batch_size) / max(r["seconds"] - r["first_s"], 1e-9)
        results[label] = {"command_s": round(wall, 1), "predict_s": r["seconds"], "first_batch_s": r["first_s"],
                          "samples_per_s": round(r["samples"] / wall, 2), "steady_samples_per_s": round(steady, 2)}
        print(label, json.dumps(results[label]), flush=True)
    plain = results["plain loop (one process)"]
    for row in results.values():
        row["ratio_steady"] = round(row["steady_samples_per_s"] / plain["steady_samples_per_s"], 3)
        row["ratio_command"] = round(row["samples_per_s"] / plain["samples_per_s"], 3)
    OUT.mkdir(exist_ok=True)
    (OUT / "predict.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"\n{args.samples} samples at {args.size}x{args.size}, width {args.width}, batch {args.batch_size}, float32 on the CPU")
    print(f"{'':<28}{'command s':>10}{'samples/s':>11}{'ratio':>7}{'first batch s':>15}{'steady samples/s':>18}{'ratio':>7}")
    for label, row in results.items():
        print(f"{label:<28}{row['command_s']:>10.1f}{row['samples_per_s']:>11.1f}{row['ratio_command']:>7.2f}"
              f"{row['first_batch_s']:>15.1f}{row['steady_samples_per_s']:>18.1f}{row['ratio_steady']:>7.2f}")


if __name__ == "__main__":
    main()

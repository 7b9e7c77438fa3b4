"""Ray overhead: fgbg's Ray Train run with one worker against a plain loop of the same training step.

Same synthetic set, model, batch size, step (fgbg.step.TrainStep), augmentation (fgbg.batch) and
torch threads. The plain loop trains on arrays decoded beforehand, so it pays for nothing but the
step; the Ray run decodes with Ray Data while it trains, as `fgbg train` does, or with --cache
reads the samples it decoded once before its first epoch. Each epoch is one repeat: medians
over the epochs after the first (which warms up both). With a GPU (--device cuda) both train on
it: the plain loop from pinned memory, `fgbg train` with --gpu.
    python bench/ray_overhead.py [--size 64] [--samples 960] [--epochs 6] [--threads 2] [--device cuda|cpu]
Prints a table and writes bench/out/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fgbg.batch import prepare_batch  # noqa: E402
from fgbg.config import Config  # noqa: E402
from fgbg.layout import load_manifest  # noqa: E402
from fgbg.losses import MaskDepthLoss  # noqa: E402
from fgbg.model import build_model  # noqa: E402
from fgbg.reader import decode_table  # noqa: E402
from fgbg.report import read_history  # noqa: E402
from fgbg.step import TrainStep, default_device, wait_for  # noqa: E402
from fgbg.synth import SynthSpec, write_dataset  # noqa: E402

OUT = Path(__file__).parent / "out"


def plain_loop(cfg: Config, data: Path, device: torch.device) -> list[float]:
    """samples/s of each epoch of the training step over the decoded training set."""
    m = load_manifest(data)
    train = {k: torch.from_numpy(v) for k, v in decode_table(m.with_paths(m.split()["train"]), cfg.size).items() if k != "bad"}
    if device.type == "cuda":
        train = {k: v.pin_memory() for k, v in train.items()}
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), MaskDepthLoss(), device, amp=cfg.amp)
    n, rates = len(train["fg_bg"]), []
    augment = torch.Generator(device=device).manual_seed(cfg.seed)  # augmented as fgbg train augments
    for _ in range(cfg.epochs):
        t = time.perf_counter()
        for i in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            step(prepare_batch({k: v[i : i + cfg.batch_size] for k, v in train.items()}, device, cfg.channels_last, augment))
        wait_for(device)  # the epoch ends when the device has finished it
        rates.append((n // cfg.batch_size) * cfg.batch_size / (time.perf_counter() - t))
    return rates


def ray_train(cfg: Config) -> list[float]:
    """samples/s of each epoch of `fgbg train` (its training loop's time, evaluation excluded)."""
    from fgbg.train import fit

    fit(cfg)
    return [m["samples_per_s"] for m in read_history(cfg.run_dir)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=960, help="training samples (one batch of them, and a small test batch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both (the Ray worker's CPUs)")
    ap.add_argument("--device", default=default_device().type, help="cuda when there is a GPU, else cpu")
    args = ap.parse_args()
    device = torch.device(args.device)

    data = OUT / f"overhead-{args.size}-{args.samples}"
    if not data.exists():
        write_dataset(SynthSpec(str(data), batches=2, per_batch=args.samples, size=args.size, seed=3), workers=0)
    runs = Path(tempfile.mkdtemp(prefix="fgbg-overhead-"))
    cfg = Config(data=str(data), size=args.size, width=args.width, batch_size=args.batch, epochs=args.epochs, workers=1,
                 cpus_per_worker=args.threads, gpu=device.type == "cuda", test_samples=64, log_every=10**6, out=str(runs), name="ray")
    torch.set_num_threads(args.threads)
    results = {
        "plain loop": plain_loop(cfg, data, device),
        "Ray Train, 1 worker (fgbg train)": ray_train(cfg),
        "Ray Train, 1 worker, --cache": ray_train(dataclasses.replace(cfg, name="ray-cache", cache=str(runs / "cache"))),
    }

    print(f"{'loop':<34} {'median samples/s':>17}   epochs")
    summary = {"size": args.size, "width": args.width, "batch": args.batch, "samples": args.samples, "threads": args.threads,
               "device": args.device, "results": {}}
    for name, rates in results.items():
        median = statistics.median(rates[1:])
        summary["results"][name] = {"median_samples_per_s": round(median, 2), "epochs": [round(r, 2) for r in rates]}
        print(f"{name:<34} {median:>17.2f}   {[round(r, 1) for r in rates]}")
    rate = {name: r["median_samples_per_s"] for name, r in summary["results"].items()}
    summary["ray_vs_plain"] = round(rate["Ray Train, 1 worker (fgbg train)"] / rate["plain loop"], 3)
    summary["ray_cache_vs_plain"] = round(rate["Ray Train, 1 worker, --cache"] / rate["plain loop"], 3)
    print(f"Ray Train / plain loop: {summary['ray_vs_plain']}   with --cache: {summary['ray_cache_vs_plain']}")
    OUT.mkdir(exist_ok=True)
    (OUT / "ray_overhead.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Which levers make the model good? One row per change, each on top of the row above, same data and steps.

Every arm trains in this one process with fgbg's own model, loss, optimiser, schedule, batch
preparation and augmentation (no Ray: the same step the Ray Train workers take, without start-up
noise), on the demo's data (`fgbg synth --batches 3 --per-batch 500 --size 64 --seed 0`: 1,000
training samples), then is evaluated on three sets it never saw:
  - fresh synthetic: `fgbg synth` at its defaults (160×160) with another seed, resized to the model's size;
  - photographs: bench/transfer.py's photo set (real photographs, real silhouettes; needs scikit-image);
  - the demo's own test split.
The threshold rule |fg_bg − bg| > 0.1 (fgbg.metrics.threshold_iou) is scored on the same sets.

    python bench/ablation.py [--arm NAME ...]
Prints a table; writes bench/out/ablation.json (each arm's row as it finishes; reruns skip rows already there).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).parent))

from fgbg.batch import prepare_batch  # noqa: E402
from fgbg.config import Config  # noqa: E402
from fgbg.layout import load_manifest  # noqa: E402
from fgbg.losses import MaskDepthLoss  # noqa: E402
from fgbg.metrics import SetMetrics, threshold_iou  # noqa: E402
from fgbg.model import build_model  # noqa: E402
from fgbg.optim import Schedule, build_optimizer  # noqa: E402
from fgbg.reader import decode_table  # noqa: E402
from fgbg.step import TrainStep  # noqa: E402
from fgbg.synth import SynthSpec, write_dataset  # noqa: E402

OUT = Path(__file__).parent / "out"
# the rows below were measured on fgbg synth before its texture options: drawn textures only (the same bytes as then)
DRAWN = dict(picture_textures=0.0, scene_textures=0.0, cast_shadows=0.0)
# the recipe before this bench, with the block every row below was measured with (fgbg's until 2026-12-02)
TODAY = dict(diff_input=False, w_dice=0.0, optimizer="adam", schedule="plateau", lr=1e-3, depthwise_norm=True)

# name: (config keys on top of the arms above, and "data": the training set; epochs; training samples; False: later
# arms do not build on this one, it lost)
ARMS = {
    "today, 5 epochs": (TODAY, 5, 1000),
    "today, 15 epochs": ({}, 15, 1000),
    "+ |fg_bg-bg| input": ({"diff_input": True}, 15, 1000),
    "+ soft Dice": ({"w_dice": 1.0}, 15, 1000),
    "+ AdamW, warm-up + cosine, lr 3e-3": ({"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine", "lr": 3e-3}, 15, 1000),
    "+ 3,000 samples (5 epochs)": ({}, 5, 3000, False),
    "+ lr 6e-3": ({"lr": 6e-3}, 15, 1000),
    "+ data drawn at 160×160, resized": ({"data": "demo at 160"}, 15, 1000),
    # each of these on top of the row above them all, alone
    "+ width 0.75, separate decoders": ({"width": 0.75, "separate_decoders": True}, 15, 1000, False),
    "+ 96×96 (same steps)": ({"size": 96}, 15, 1000, False),
    "+ twice the steps (30 epochs)": ({}, 30, 1000, False),
    "+ 50 backgrounds instead of 20 (1,250 samples, 12 epochs)": ({"data": "more backgrounds"}, 12, 1250, False),
    # an exponential moving average of the weights and BatchNorm statistics, evaluated instead of the weights
    # (this bench's own: it lost, so fgbg has no such option)
    "+ EMA of the weights, decay 0.99": ({"ema": 0.99}, 15, 1000, False),
    "+ EMA of the weights, decay 0.998": ({"ema": 0.998}, 15, 1000, False),
    "+ 64 then 96 (12 + 3 epochs)": ({"size": 96, "size_schedule": {1: 64, 13: 96}}, 15, 1000, False),
    "+ 64 then 96 (15 + 5 epochs)": ({"size": 96, "size_schedule": {1: 64, 16: 96}}, 20, 1000, False),
    "+ width 0.5 at 96×96 (same steps)": ({"width": 0.5, "size": 96}, 15, 1000, False),
    "+ width 0.5 at 96×96, 20 epochs": ({"width": 0.5, "size": 96}, 20, 1000, False),
}


def sets() -> dict[str, Path]:
    work = OUT / "ablation-data"
    paths = {"demo": work / "demo", "demo at 160": work / "demo160", "fresh synthetic": work / "fresh", "photographs": work / "photos"}
    if not paths["demo"].exists():
        write_dataset(SynthSpec(str(paths["demo"]), batches=7, per_batch=500, size=64, seed=0, **DRAWN))
    if not paths["demo at 160"].exists():  # the same samples drawn at 160×160, as `fgbg synth` writes by default
        write_dataset(SynthSpec(str(paths["demo at 160"]), batches=3, per_batch=500, size=160, seed=0, **DRAWN))
    paths["more backgrounds"] = work / "demo160-6x250"
    if not paths["more backgrounds"].exists():  # 6 batches of 250: 50 training backgrounds instead of 20
        write_dataset(SynthSpec(str(paths["more backgrounds"]), batches=6, per_batch=250, size=160, seed=0, **DRAWN))
    if not paths["fresh synthetic"].exists():
        write_dataset(SynthSpec(str(paths["fresh synthetic"]), batches=1, per_batch=400, seed=777, **DRAWN))
    if not paths["photographs"].exists():
        from transfer import write_photo_set

        write_photo_set(paths["photographs"], 400, 160)
    return paths


def decoded(root: Path, size: int, batches: list[int] | None = None) -> dict[str, torch.Tensor]:
    manifest = load_manifest(root)
    table = manifest.table
    if batches is not None:
        table = table.filter(np.isin(table["batch"].to_numpy(), batches))
    arrays = decode_table(manifest.with_paths(table), size)
    return {k: torch.from_numpy(v) for k, v in arrays.items() if k != "bad"}


def evaluate(model, data: dict, device) -> dict:
    metrics = SetMetrics(device)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(data["fg_bg"]), 64):
            batch = prepare_batch({k: v[i : i + 64] for k, v in data.items()}, device)
            mask_logits, depth = model(batch["fg_bg"], batch["bg"])
            metrics.update(mask_logits, depth, batch["mask"], batch["depth"])
    return SetMetrics.compute(metrics.sums)


def train_arm(cfg: Config, train: dict, samples: int, device, on_epoch=None, ema: float = 0.0) -> tuple[torch.nn.Module, float]:
    """The model to evaluate after cfg.epochs (with ema > 0, a moving average of it with that decay), and the
    seconds spent training; on_epoch(epoch, model, seconds) after each epoch (not counted) may stop training
    early by returning True."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters())
    steps_per_epoch = samples // cfg.batch_size
    schedule = Schedule(cfg, optimizer, steps_per_epoch)
    step = TrainStep(model, optimizer, MaskDepthLoss.from_config(cfg), device, amp=cfg.amp)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None
    g = torch.Generator().manual_seed(cfg.seed)
    seconds = 0.0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(samples, generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            parts = step(prepare_batch({k: v[idx] for k, v in train.items()}, device, True, g, cfg.size_at(epoch + 1)))
            schedule.after_step()
            if average is not None:
                average.update_parameters(model)
        schedule.after_epoch(float(parts["loss"]))  # (this bench has no test loss per epoch: the last step's)
        seconds += time.perf_counter() - t0
        if on_epoch is not None and on_epoch(epoch + 1, average.module if average else model, seconds):
            break
    return (average.module if average else model), seconds


@functools.cache
def data_at(size: int, data: str = "demo") -> tuple[dict, dict]:
    """(training samples of a set, {evaluation set: samples}), decoded at a model size."""
    paths = sets()
    train = decoded(paths[data], size, batches={"demo": [1, 2, 4, 5, 6, 7], "more backgrounds": [1, 2, 3, 4, 5]}.get(data, [1, 2]))
    evals = {"fresh synthetic": decoded(paths["fresh synthetic"], size), "photographs": decoded(paths["photographs"], size),
             "demo test": decoded(paths["demo"], size, batches=[3])}
    return train, evals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", dest="arms", help="an arm to run (repeatable; default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    result_file = OUT / "ablation.json"
    results = json.loads(result_file.read_text()) if result_file.exists() else {}
    for size in (64, 96):
        results[f"threshold rule at {size}"] = {name: threshold_iou(d["fg_bg"], d["bg"], d["mask"]) for name, d in data_at(size)[1].items()}
    kept: dict = {"size": 64}
    for name, (change, epochs, samples, *keep) in ARMS.items():
        keys = {**kept, **change}
        if keep != [False]:
            kept = keys
        if (args.arms and name not in args.arms) or name in results:
            continue
        cfg = Config(batch_size=16, epochs=epochs, **{k: v for k, v in keys.items() if k not in ("data", "ema")})
        train_all, evals = data_at(cfg.size, keys.get("data", "demo"))
        train = {k: v[:samples] for k, v in train_all.items()}
        model, seconds = train_arm(cfg, train, samples, device, ema=keys.get("ema", 0.0))
        row = {"train_seconds": round(seconds, 1), "epochs": epochs, "samples": samples, "config": dict(keys)}
        for set_name, data in evals.items():
            m = evaluate(model, data, device)
            row[set_name] = {"iou": round(m["iou"], 4), "ssim": round(m["ssim"], 4)}
        results[name] = row
        print(name, json.dumps(row), flush=True)
        OUT.mkdir(exist_ok=True)
        result_file.write_text(json.dumps(results, indent=2))
    names = ["fresh synthetic", "photographs", "demo test"]
    print(f"{'arm':<40}{'s':>7}" + "".join(f"{n + ' IoU/SSIM':>26}" for n in names))
    for name, row in results.items():
        if name.startswith("threshold rule"):
            print(f"{name:<40}{'':>7}" + "".join(f"{row[n]:>26.3f}" for n in names))
        else:
            print(f"{name:<40}{row['train_seconds']:>7.0f}" + "".join(f"{row[n]['iou']:>19.3f} / {row[n]['ssim']:.3f}" for n in names))


if __name__ == "__main__":
    main()

"""Train step: plain PyTorch (eager, NCHW, float32: the original's way) against fgbg's training step.

On the GPU when there is one (--device cuda; fgbg's step then autocasts to bfloat16 or float16),
else on the CPU. Speed: every variant takes one step on the same random batch in turn, --repeats
times (after two warm-up steps each), each timed until the device has finished it; medians.
Achieved FLOP/s count thop's MACs × 2 (multiply-add) × 3 (forward and backward), against the
device's float32 matrix product (sgemm) measured in the same run.
Numerics (--check): each step trains the same initial model on the same synthetic batches in the
same order, for several seeds; IoU and SSIM on the test batch after the run, against the plain step's.
    python bench/train_step.py [--size 160] [--batch 32] [--width 1.0] [--repeats 5] [--device cuda|cpu] [--compile] [--block] [--slow-paths]
                               [--check | --check-only]
Prints tables and writes bench/out/train_step.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from fgbg import losses
from fgbg import model as unet
from fgbg.batch import prepare_batch
from fgbg.config import Config
from fgbg.losses import MaskDepthLoss
from fgbg.metrics import SetMetrics
from fgbg.model import build_model
from fgbg.profiling import count_macs, random_batch
from fgbg.step import TrainStep, default_device, wait_for

OUT = Path(__file__).parent / "out"


def sgemm_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Median float32 FLOP/s of an n×n matrix product on the device (on a CPU, all of torch's threads)."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        wait_for(device)
        t = time.perf_counter()
        a @ b
        wait_for(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def plain_step(model: torch.nn.Module, device: torch.device):
    """The original's loop body: NCHW float32 tensors straight into the model."""
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = MaskDepthLoss()

    def step(batch: dict) -> dict[str, float]:
        loss, parts = loss_fn(*model(batch["fg_bg"], batch["bg"]), batch["mask"], batch["depth"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return parts

    return step, (lambda batch: prepare_batch(batch, device, channels_last=False))


def fgbg_step(model: torch.nn.Module, device: torch.device, channels_last: bool, amp: bool, compile: bool = False):
    """What fgbg's training loop does (fgbg/train.py): model and batch in its memory format, then TrainStep."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    step = TrainStep(forward, torch.optim.Adam(model.parameters()), MaskDepthLoss(), device, amp=amp)
    return step, (lambda batch: prepare_batch(batch, device, channels_last))


@contextlib.contextmanager
def slow_paths():
    """fgbg's step as it was until 2026-12-02: the SSIM loss through torchmetrics (its window an 11×11 convolution,
    whose backward oneDNN runs slowly on a CPU), and upsampling's backward on cat's gradient slice (no _DenseGrad)."""
    fast_loss = losses.depth_ssim_loss
    losses.depth_ssim_loss, unet._DenseGrad.apply = losses.depth_ssim, (lambda x: x)
    try:
        yield
    finally:
        losses.depth_ssim_loss = fast_loss
        del unet._DenseGrad.apply  # torch.autograd.Function's own again


def slow_step(model: torch.nn.Module, device: torch.device):
    """fgbg's step (default config) with its slow paths of until 2026-12-02."""
    cfg = Config()
    step, prepare = fgbg_step(model, device, channels_last=cfg.channels_last, amp=cfg.amp)

    def slow(batch: dict) -> dict:
        with slow_paths():
            return step(batch)

    return slow, prepare


def variants(device: torch.device, include_compile: bool) -> dict:
    """name → a function that moves a model to the device and gives its (step, prepare)."""
    cfg = Config()
    out = {
        "plain eager NCHW fp32": lambda m: plain_step(m.to(device), device),
        "channels_last fp32": lambda m: fgbg_step(m.to(device), device, channels_last=True, amp=False),
        "fgbg (default config)": lambda m: fgbg_step(m.to(device), device, channels_last=cfg.channels_last, amp=cfg.amp),
    }
    if include_compile:
        out["fgbg + torch.compile"] = lambda m: fgbg_step(m.to(device), device, channels_last=cfg.channels_last, amp=cfg.amp, compile=True)
    return out


def speed(args, device: torch.device) -> dict:
    batch = random_batch(args.batch, args.size)
    makers = {name: (make, Config(width=args.width)) for name, make in variants(device, args.compile).items()}
    if args.block:  # the same step on the model with the block fgbg had before 2026-12-02
        makers["fgbg, depthwise_norm"] = makers["fgbg (default config)"][0], Config(width=args.width, depthwise_norm=True)
    if args.slow_paths:
        makers["fgbg, slow paths"] = (lambda m: slow_step(m.to(device), device)), Config(width=args.width)
    steps, macs = {}, {}
    for name, (make, cfg) in makers.items():
        t = time.perf_counter()
        model = build_model(cfg)
        macs[name] = count_macs(model, args.size)  # (on a copy: the model itself is left as it was)
        step, prepare = make(model)
        ready = prepare(batch)
        step(ready)
        step(ready)
        wait_for(device)
        steps[name] = (step, ready)
        print(f"  {name}: warm-up {time.perf_counter() - t:.1f} s", flush=True)
    rates = {name: [] for name in steps}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every variant alike
        for name, (step, ready) in steps.items():
            t = time.perf_counter()
            step(ready)
            wait_for(device)
            rates[name].append(args.batch / (time.perf_counter() - t))
    return {name: {"median_samples_per_s": round(statistics.median(r), 2), "runs": [round(x, 2) for x in r], "macs_per_sample": macs[name]}
            for name, r in rates.items()}


def numerics(args, device: torch.device) -> dict:
    """IoU and SSIM of each step after the same short run on synthetic data, for --check-seeds seeds.

    A seed fixes the initial model and the order of the batches; within a seed every step starts
    from the same weights and sees the same batches. channels_last fp32 differs from the plain step
    only in the order of float32 operations: how far two runs drift with no change of precision.
    """
    from fgbg.layout import load_manifest
    from fgbg.reader import decode_table
    from fgbg.synth import SynthSpec, write_dataset

    size, batch = args.check_size, 16
    data = OUT / f"step-check-{size}"
    if not data.exists():
        write_dataset(SynthSpec(str(data), batches=3, per_batch=320, size=size, seed=11), workers=0)
    m = load_manifest(data)
    split = m.split()

    def arrays(table):
        return {k: torch.from_numpy(v) for k, v in decode_table(m.with_paths(table), size).items() if k != "bad"}

    train, test = arrays(split["train"]), arrays(split["test"])
    n = len(train["fg_bg"])
    runs = {name: [] for name in variants(device, False)}
    for seed in range(args.check_seeds):
        order = torch.Generator().manual_seed(seed)
        batches = [torch.randperm(n, generator=order) for _ in range(args.check_epochs)]
        torch.manual_seed(seed)
        initial = build_model(Config(width=args.width))
        for name, make in variants(device, False).items():
            model = copy.deepcopy(initial)
            step, prepare = make(model)
            model.train()
            for perm in batches:
                for i in range(0, n - batch + 1, batch):
                    step(prepare({k: v[perm[i : i + batch]] for k, v in train.items()}))
            model.eval()
            metrics = SetMetrics(device)
            with torch.no_grad():
                for i in range(0, len(test["fg_bg"]), 64):
                    b = prepare({k: v[i : i + 64] for k, v in test.items()})
                    metrics.update(*model(b["fg_bg"], b["bg"]), b["mask"], b["depth"])
            result = SetMetrics.compute(metrics.sums)
            runs[name].append({"seed": seed, "iou": round(result["iou"], 4), "ssim": round(result["ssim"], 4)})
            print(f"  seed {seed} {name}: IoU {result['iou']:.4f} SSIM {result['ssim']:.4f}", flush=True)
    plain = runs["plain eager NCHW fp32"]
    summary = {}
    for name, r in runs.items():
        d_iou = [x["iou"] - p["iou"] for x, p in zip(r, plain)]
        d_ssim = [x["ssim"] - p["ssim"] for x, p in zip(r, plain)]
        summary[name] = {"runs": r, "mean_iou": round(statistics.mean(x["iou"] for x in r), 4),
                         "iou_vs_plain": round(statistics.mean(d_iou), 4), "max_abs_iou_vs_plain": round(max(map(abs, d_iou)), 4),
                         "ssim_vs_plain": round(statistics.mean(d_ssim), 4)}
    print(f"\n{'step':<26} {'mean IoU':>9} {'IoU − plain':>12} {'max |Δ|':>8} {'SSIM − plain':>13}")
    for name, x in summary.items():
        print(f"{name:<26} {x['mean_iou']:>9} {x['iou_vs_plain']:>+12.4f} {x['max_abs_iou_vs_plain']:>8} {x['ssim_vs_plain']:>+13.4f}")
    return {"size": size, "batch": batch, "epochs": args.check_epochs, "seeds": args.check_seeds, "train_samples": n,
            "test_samples": len(test["fg_bg"]), "results": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=default_device().type, help="cuda when there is a GPU, else cpu")
    ap.add_argument("--compile", action="store_true", help="also time fgbg's step under torch.compile (a minute or more to compile)")
    ap.add_argument("--block", action="store_true", help="also time fgbg's step on the model with depthwise_norm "
                    "(BatchNorm and ReLU after each depthwise convolution too: MobileNet's block, fgbg's before 2026-12-02)")
    ap.add_argument("--slow-paths", action="store_true", help="also time fgbg's step with the two slow paths it had until "
                    "2026-12-02 (the SSIM loss's window as an 11×11 convolution; upsampling's backward on cat's gradient slice)")
    ap.add_argument("--check", action="store_true", help="also train the plain and the fgbg step on the same data and compare IoU")
    ap.add_argument("--check-size", type=int, default=64)
    ap.add_argument("--check-epochs", type=int, default=4)
    ap.add_argument("--check-seeds", type=int, default=5)
    ap.add_argument("--check-only", action="store_true", help="the numerics check alone")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.check_only:
        print("numerics: the same short run with each step")
        OUT.mkdir(exist_ok=True)
        (OUT / "train_step_check.json").write_text(json.dumps(numerics(args, device), indent=2))
        return

    macs = count_macs(build_model(Config(width=args.width)), args.size)
    sgemm = sgemm_flops(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; sgemm {sgemm / 1e9:.1f} GFLOP/s; {macs / 1e6:.1f}M MACs per sample at {args.size}×{args.size}")
    results = speed(args, device)
    plain = results["plain eager NCHW fp32"]["median_samples_per_s"]
    print(f"\n{'step':<26} {'samples/s':>10} {'× plain':>8} {'GFLOP/s':>8} {'% sgemm':>8}   runs")
    for name, r in results.items():
        flops = r["median_samples_per_s"] * r["macs_per_sample"] * 6
        r.update(vs_plain=round(r["median_samples_per_s"] / plain, 2), gflops=round(flops / 1e9, 1), of_sgemm=round(flops / sgemm, 3))
        print(f"{name:<26} {r['median_samples_per_s']:>10} {r['vs_plain']:>8} {r['gflops']:>8} {100 * r['of_sgemm']:>7.1f}%   {r['runs']}")
    summary = {
        "size": args.size, "batch": args.batch, "width": args.width, "repeats": args.repeats, "device": where,
        "threads": torch.get_num_threads(), "macs_per_sample": macs, "sgemm_gflops": round(sgemm / 1e9, 1),
        "speed": results,
    }
    if args.check:
        print("\nnumerics: the same short run with each step")
        summary["numerics"] = numerics(args, device)
    OUT.mkdir(exist_ok=True)
    (OUT / "train_step.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

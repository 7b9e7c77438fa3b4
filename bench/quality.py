"""Time to quality: wall seconds of training until the fresh-synthetic IoU reaches 0.8 and 0.9, for the
original's recipe and for fgbg's default as `make demo` trains it, one run each, side by side, each capped at
15 minutes.

Both arms train as bench/ablation.py's rows do (one process, 2 threads, fgbg's own model, loss, optimiser,
schedule and augmentation, batch 16) on the demo's data (`fgbg synth --batches 4 --per-batch 1000 --seed 0`,
160×160: its 3,000 training samples), and after every epoch the model is evaluated at its own size on the
fresh synthetic set (`fgbg synth` defaults, seed 777, 400 samples); evaluation is not counted in the seconds.
  - the original's recipe at 64×64: 6 input channels, BCE + SSIM, Adam at 1e-3, ReduceLROnPlateau; it has no
    fixed length, so it trains until it reaches 0.9 or the cap;
  - fgbg's default with `make demo`'s training flags (half width, 5 epochs at 64×64, 3 at 96×96, 2 at
    160×160: its epochs set the cosine's length).

    python bench/quality.py [--cap-minutes 15]
Prints a table; writes bench/out/quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from ablation import DRAWN, OUT, TODAY, decoded, evaluate, sets, train_arm  # noqa: E402

from fgbg.config import Config  # noqa: E402
from fgbg.synth import SynthSpec, write_dataset  # noqa: E402

DEMO = dict(width=0.5, epochs=11, size_schedule={1: 64, 6: 96, 9: 160})  # `make demo`'s training flags (Makefile) that differ from Config's defaults
ARMS = {
    "fgbg's default, as make demo trains": DEMO,
    "the original's recipe": dict(size=64, epochs=1000, **TODAY),
}
DATA = OUT / "quality-data" / "demo"  # what `make demo` trained on when these arms were measured (drawn textures)
GOALS = (0.8, 0.9)


def run_arm(name: str, keys: dict, cap_seconds: float, device) -> dict:
    """Train one arm, evaluating after every epoch, until both goals are reached, its epochs end or the cap passes."""
    cfg = Config(batch_size=16, **keys)
    if not DATA.exists():
        write_dataset(SynthSpec(str(DATA), batches=4, per_batch=1000, size=160, seed=0, **DRAWN))
    train = decoded(DATA, cfg.size, batches=[1, 2, 3])
    fresh = decoded(sets()["fresh synthetic"], cfg.size)
    curve, reached = [], {}

    def on_epoch(epoch, model, seconds):
        iou = evaluate(model, fresh, device)["iou"]
        curve.append({"epoch": epoch, "seconds": round(seconds, 1), "iou": round(iou, 4)})
        print(f"{name}: epoch {epoch} {seconds:.0f} s IoU {iou:.3f}", flush=True)
        for goal in GOALS:
            if iou >= goal and goal not in reached:
                reached[goal] = {"seconds": round(seconds, 1), "epoch": epoch}
        return len(reached) == len(GOALS) or seconds > cap_seconds

    train_arm(cfg, train, len(train["fg_bg"]), device, on_epoch)
    return {"config": keys, "reached": {str(g): reached.get(g) for g in GOALS}, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap-minutes", type=float, default=15.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name, keys in ARMS.items():
        results[name] = run_arm(name, keys, args.cap_minutes * 60, torch.device("cpu"))
        OUT.mkdir(exist_ok=True)
        (OUT / "quality.json").write_text(json.dumps(results, indent=2))
    print(f"{'arm':<40}" + "".join(f"{'IoU ' + str(g):>22}" for g in GOALS) + f"{'last IoU':>10}")
    for name, r in results.items():
        cells = [f"{v['seconds']:.0f} s (epoch {v['epoch']})" if v else f"not in {r['curve'][-1]['seconds']:.0f} s" for v in r["reached"].values()]
        print(f"{name:<40}" + "".join(f"{c:>22}" for c in cells) + f"{r['curve'][-1]['iou']:>10.3f}")


if __name__ == "__main__":
    main()

"""Inputs of any size: a model's IoU and the threshold rule's on `fgbg synth --size S` sets, S from 64 to 320.

`fgbg evaluate` and `fgbg predict` resize every input to the model's size, so a user's small or large pictures
reach the model as blurred up or sharpened down versions of what it trained on. For each S this writes (once) a
set of `fgbg synth --size S --seed 555 --cast-shadows 0` (one batch of 200 samples: the generator as issue #37
measured it, before objects threw their own shadows) and evaluates the model on all of it; the rule (largest
RGB difference > 0.1) is scored on the same resized inputs, at the model's size.

    python bench/sizes.py RUN_DIR [--sizes 64,96,128,160,224,320] [--samples 200]
Prints a table; adds the run's row to bench/out/sizes.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a training run's directory (or checkpoint)")
    ap.add_argument("--sizes", default="64,96,128,160,224,320")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=555)
    args = ap.parse_args()

    from fgbg.evaluate import evaluate
    from fgbg.synth import SynthSpec, write_dataset

    rows = {}
    for size in (int(s) for s in args.sizes.split(",")):
        data = OUT / "sizes" / f"synth-{size}-{args.samples}-{args.seed}"
        if not data.exists():
            write_dataset(SynthSpec(str(data), batches=1, per_batch=args.samples, size=size, seed=args.seed, cast_shadows=0.0))
        r = evaluate(args.run, str(data), split="all", out=str(OUT / "sizes" / "eval" / Path(args.run).name / str(size)))
        rows[size] = {"iou": round(r["iou"], 4), "rule_iou": round(r["baseline_iou"], 4), "ssim": round(r["ssim"], 4)}
    print(f"{'size':>6}{'model IoU':>11}{'rule IoU':>10}{'margin':>9}")
    for size, r in rows.items():
        print(f"{size:>6}{r['iou']:>11.3f}{r['rule_iou']:>10.3f}{r['iou'] - r['rule_iou']:>+9.3f}")
    results = OUT / "sizes.json"
    past = json.loads(results.read_text()) if results.is_file() else {}
    past[str(Path(args.run).resolve())] = rows
    results.write_text(json.dumps(past, indent=1))


if __name__ == "__main__":
    main()

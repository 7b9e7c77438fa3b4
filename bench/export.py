"""Exported models against fgbg's own inference: do they agree, and how fast are they on this CPU?

Agreement: a trained checkpoint exported as ONNX and as torch.export's program; 64 samples of a fresh synthetic set
(`fgbg synth --seed 4242`, 160×160) through each and through fgbg's PyTorch inference (fgbg.predict.Predictor, float32
on the CPU): the largest absolute difference of the mask probability and of depth, the share of mask pixels that
agree at 0.5, and the largest depth difference in gray levels after 8-bit conversion.

Speed: the demo's width (0.5) and the default (1.0) at 160×160, batch 1 and 32, float32 on the CPU, the three engines
taking turns (after a warm-up), medians of the repeats; then `fgbg predict` over 800 samples with each engine
(its defaults: Ray Data, one actor per CPU but one), side by side.

    python bench/export.py --checkpoint demo_out/runs/demo [--repeats 7]
Prints tables; writes bench/out/export.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "export.json"
sys.path.insert(0, str(ROOT))

from fgbg import checkpoints  # noqa: E402
from fgbg.config import Config  # noqa: E402
from fgbg.export import export  # noqa: E402
from fgbg.layout import load_manifest  # noqa: E402
from fgbg.predict import Predictor  # noqa: E402
from fgbg.reader import decode_table  # noqa: E402


def engines(checkpoint: str, work: Path) -> dict:
    """fgbg's inference and the two exported files' runtimes, each a function of uint8 pairs → (mask probability, depth)."""
    import onnxruntime as ort

    work.mkdir(parents=True, exist_ok=True)  # (fgbg export writes into a folder that exists)
    files = {fmt: export(checkpoint, fmt, str(work / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}"))["out"] for fmt in ("onnx", "torch")}
    predictor = Predictor(checkpoint, str(work))
    session = ort.InferenceSession(files["onnx"])
    program = torch.export.load(files["torch"]).module()

    def fgbg(fg_bg, bg):
        logits, depth = predictor.infer(fg_bg, bg)
        return torch.sigmoid(logits).numpy(), depth.numpy()

    def onnxruntime(fg_bg, bg):
        return tuple(session.run(["mask", "depth"], {"fg_bg": fg_bg, "bg": bg}))

    @torch.no_grad()
    def exported(fg_bg, bg):
        return tuple(t.numpy() for t in program(torch.from_numpy(fg_bg), torch.from_numpy(bg)))

    return {"fgbg (PyTorch eager)": fgbg, "onnxruntime": onnxruntime, "torch.export program": exported}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a trained checkpoint or run directory (the agreement's)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fgbg-export-bench-"))
    fgbg_cli = str(Path(sys.executable).parent / "fgbg")
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": torch.get_num_threads()}

    # agreement
    subprocess.run([fgbg_cli, "synth", "--out", str(work / "fresh"), "--batches", "1", "--per-batch", "64", "--seed", "4242", "--quiet"], check=True)
    m = load_manifest(work / "fresh")
    decoded = decode_table(m.with_paths(), size=Config.load(str(Path(checkpoints.resolve(args.checkpoint)) / "config.yaml")).size)
    fg_bg, bg = decoded["fg_bg"], decoded["bg"]
    run = engines(args.checkpoint, work / "trained")
    want_mask, want_depth = run["fgbg (PyTorch eager)"](fg_bg, bg)
    results["agreement"] = {}
    for name in ("onnxruntime", "torch.export program"):
        mask, depth = run[name](fg_bg, bg)
        results["agreement"][name] = {
            "max_abs_mask": float(np.abs(mask - want_mask).max()), "max_abs_depth": float(np.abs(depth - want_depth).max()),
            "mask_pixels_equal": float(((mask > 0.5) == (want_mask > 0.5)).mean()),
            "max_depth_gray_levels": int(np.abs(np.round(depth * 255) - np.round(want_depth * 255)).max())}
        print(name, results["agreement"][name], flush=True)

    # speed
    results["speed"] = {}
    rng = np.random.default_rng(0)
    for width in (0.5, 1.0):
        ckpt = checkpoints.write_untrained(work / f"w{width}", Config(width=width))
        run = engines(ckpt, work / f"w{width}-files")
        for batch in (1, 32):
            pair = tuple(rng.integers(0, 256, (batch, 160, 160, 3), dtype=np.uint8) for _ in range(2))
            times = {name: [] for name in run}
            for f in run.values():
                f(*pair)  # warm-up
            for _ in range(args.repeats):
                for name, f in run.items():
                    t0 = time.perf_counter()
                    f(*pair)
                    times[name].append(time.perf_counter() - t0)
            row = {name: round(batch / statistics.median(t), 1) for name, t in times.items()}
            results["speed"][f"width {width}, batch {batch}"] = row
            print(f"width {width} batch {batch}: samples/s {row}", flush=True)

    # fgbg predict over 800 samples, each engine
    subprocess.run([fgbg_cli, "synth", "--out", str(work / "p800"), "--batches", "1", "--per-batch", "800", "--seed", "9", "--quiet"], check=True)
    ckpt = str(work / "w1.0")
    onnx_file = str(work / "w1.0-files" / "model.onnx")
    results["predict"] = {}
    for name, engine in (("PyTorch (--checkpoint)", ["--checkpoint", ckpt]), ("onnxruntime (--model)", ["--model", onnx_file])):
        out = work / f"pred-{'onnx' if 'onnx' in name else 'torch'}"
        done = subprocess.run([fgbg_cli, "predict", *engine, "--data", str(work / "p800"), "--out", str(out), "--json"],
                              capture_output=True, text=True, check=True)
        summary = json.loads(done.stdout[done.stdout.index("{"):])
        steady = summary["predicted"] / max(summary["seconds"] - summary["first_s"], 1e-9)
        results["predict"][name] = {"seconds": summary["seconds"], "samples_per_s": summary["samples_per_s"], "steady_per_s": round(steady, 1)}
        print(name, results["predict"][name], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

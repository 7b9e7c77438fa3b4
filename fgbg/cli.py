"""The `fgbg` command: one verb per job, `fgbg VERB --help` for each."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from .config import Config
from .errors import FgbgError


def _synth(args) -> int:
    from .synth import SynthSpec, write_dataset

    shares = {k: getattr(args, k) for k in ("picture_textures", "scene_textures", "cast_shadows") if getattr(args, k) is not None}
    spec = SynthSpec(args.out, args.batches, args.per_batch, args.size, args.seed, args.format, **shares)
    root = write_dataset(spec, workers=args.workers, progress=not args.quiet)
    print(f"wrote {spec.batches * spec.per_batch} samples in {spec.batches} batches ({spec.format}) to {root}")
    return 0


def _inspect(args) -> int:
    from .inspect import format_inspection, inspect_dataset

    report = inspect_dataset(args.data, decode=not args.quick, workers=args.workers, test_batches=args.test_batches, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_inspection(report))
    return 1 if report["problems"] else 0


def _train(args) -> int:
    from .train import fit

    flags, sets = {key: getattr(args, key) for key, _, _ in TRAIN_FLAGS}, _set_values(args.set)
    both = sorted(k for k in sets if flags.get(k) is not None and flags[k] != sets[k])
    if both:
        raise FgbgError(f"--{both[0].replace('_', '-')} {flags[both[0]]} and --set {both[0]}={sets[both[0]]} disagree: give one")
    cfg = Config.load(args.config, **(flags | sets))
    result = fit(cfg, address=args.address, verbose=args.verbose)
    m = result["metrics"]
    print(f"run {result['run_dir']}: epoch {m['epoch']} IoU {m['iou']:.4f} SSIM {m['ssim']:.4f} RMSE {m['rmse']:.4f} (best IoU {m['best_iou']:.4f})")
    if result.get("report"):
        print(f"  report: {result['report']}")
    if result["run_dir"].startswith("s3://"):
        print(f"  aws s3 sync {result['run_dir']}/tensorboard tensorboard/ && tensorboard --logdir tensorboard")
    else:
        print(f"  tensorboard --logdir {result['run_dir']}/tensorboard")
    return 0


def _set_values(items: list[str] | None) -> dict:
    """--set KEY=VALUE items as config keys and values (YAML: 2, 1e-3, true, [1, 2], {1: 64, 6: 96})."""
    values = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise FgbgError(f"--set takes key=value, not {item!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


def _evaluate(args) -> int:
    from .evaluate import evaluate

    r = evaluate(args.checkpoint, args.data, split=args.split, out=args.out, batch_size=args.batch_size, on_bad=args.on_bad, address=args.address,
                 flip=args.flip)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['samples']} samples ({r['split']}): IoU {r['iou']:.4f} (flattened {r['iou_flat']:.4f})  "
              f"SSIM {r['ssim']:.4f}  RMSE {r['rmse']:.4f}  δ<1.25 {r['delta1']:.4f}")
        gain = r["iou"] - r["baseline_iou"]
        print(f"  baseline |fg_bg − bg| > 0.1 on the same data: IoU {r['baseline_iou']:.4f} (the model is {abs(gain):.4f} "
              f"{'above' if gain >= 0 else 'BELOW'} it)")
        print(f"  pictures: {r['pictures']}")
    return 0


def _predict(args) -> int:
    from .predict import dataset_rows, pair_rows, predict

    if bool(args.data) == bool(args.fg_bg or args.bg) or bool(args.fg_bg) != bool(args.bg):
        raise FgbgError("predict takes --data DATA (a dataset in the layout), or --fg-bg and --bg (your own pairs)")
    rows = dataset_rows(args.data, args.split, args.on_bad) if args.data else pair_rows(args.fg_bg, args.bg)
    concurrency = args.concurrency
    if concurrency is None and rows.num_rows == 1 and not args.gpu:
        concurrency = 0  # one pair: no cluster to start
    r = predict(args.checkpoint or args.model, rows, args.out, batch_size=args.batch_size, concurrency=concurrency, gpu=args.gpu,
                on_bad=args.on_bad, raw=args.raw, address=args.address, flip=args.flip, verbose=args.verbose)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    before = f", {r['done_before']} done before" if r["done_before"] else ""
    skipped = f", {r['skipped']} skipped (see the error column)" if r["skipped"] else ""
    print(f"predicted {r['predicted']} samples in {r['seconds']:.1f} s ({r['samples_per_s']:.1f} samples/s){skipped}{before}: "
          f"{r['out']}/masks, depth, predictions.csv")
    if "iou" in r:
        print(f"  IoU {r['iou']:.4f}  SSIM {r['ssim']:.4f}  RMSE {r['rmse']:.4f}  (baseline |fg_bg − bg| > 0.1: IoU {r['baseline_iou']:.4f}); "
              f"the 16 worst: {r['worst']}")
    return 0


def _export(args) -> int:
    from .export import export

    r = export(args.checkpoint, args.format, args.out)
    print(f"wrote {r['out']} ({r['format']}{', opset ' + str(r['opset']) if 'opset' in r else ''}, {r['bytes'] / 1e6:.1f} MB) from {r['checkpoint']}: "
          f"inputs fg_bg and bg, uint8 N×{r['size']}×{r['size']}×3; outputs mask (probability) and depth")
    return 0


def _profile(args) -> int:
    from .profiling import profile_model

    r = profile_model(width=args.width, size=args.size, batch=args.batch, repeats=args.repeats)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        where = f"{r['threads']} CPU threads" if r["device"] == "cpu" else r["device"]
        print(
            f"width {r['width']} at {r['size']}x{r['size']}: {r['params'] / 1e6:.3f}M parameters, {r['macs'] / 1e6:.1f}M MACs per sample\n"
            f"  inference {r['inference_samples_per_s']} samples/s, train step {r['train_samples_per_s']} samples/s "
            f"(batch {r['batch']}, {where}, training in {r['train_precision']})"
        )
    return 0


def _report(args) -> int:
    from .report import write_report

    print(write_report(args.run_dir))
    return 0


def _compare(args) -> int:
    from .report import compare

    print(compare(args.run_a, args.run_b))
    return 0


def _tune(args) -> int:
    from .tune import sweep

    r = sweep(
        args.space, args.data, out=args.out, name=args.name, trials=args.trials, epochs=args.epochs, scheduler=args.scheduler,
        search=args.search, concurrency=args.concurrency, workers_per_trial=args.workers_per_trial, gpu=args.gpu, resume=args.resume,
        address=args.address, cache=args.cache, overrides=_set_values(args.set), verbose=args.verbose,
    )
    print(f"\n{len(r['trials'])} trials ({r['concurrency']} at a time) in {r['experiment']}, ranked by their last epoch's objective:")
    print(ranking(r["trials"], r["keys"]))
    best = r["best"]
    print(f"best: trial {best['trial']}, objective {best['objective']:.4f} at its last epoch ({best['epochs']}), IoU {best['iou']:.4f}, "
          f"SSIM {best['ssim']:.4f}; its best epoch ({best['best_epoch']}) {best['best_objective']:.4f}")
    print(f"  its config: fgbg train --config {r['experiment']}/best_config.yaml --data DATA")
    if r["checkpoint"]:
        print(f"  its checkpoint: {r['checkpoint']}")
    print(f"  every trial: {r['experiment']}/results.csv and sweep.png")
    return 0


def ranking(rows: list[dict], keys: list[str], shown: int = 10) -> str:
    """The sweep's trials best first (the first `shown`): last and best objective, IoU, SSIM, epochs, parameters."""
    head = ["#", "trial", "objective", "best", "IoU", "SSIM", "epochs", *keys]
    cells = [[str(i + 1), r["trial"], f"{r['objective']:.4f}", f"{r['best_objective']:.4f}", f"{r['iou']:.4f}", f"{r['ssim']:.4f}",
              f"{r['epochs']}{' (stopped)' if r['stopped_early'] else ''}", *(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)]
             for i, r in enumerate(rows[:shown])]
    widths = [max(len(c) for c in column) for column in zip(head, *cells)]
    more = [f"… and {len(rows) - shown} more in results.csv"] if len(rows) > shown else []
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *cells]] + more)


def _batches(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch numbers like 10 or 9,10, not {text!r}") from None


# the config keys `fgbg train` takes as flags (--batch-size for batch_size …); every other key goes through --set
TRAIN_FLAGS = [
    ("data", str, "dataset root: batch{K}_images.zip files or batch{K}/ folders, local or s3://"),
    ("out", str, "where runs live; a run is OUT/NAME"),
    ("name", str, "run name; the same name again resumes the run (default: from the time)"),
    ("workers", int, "data-parallel workers; 0 trains in this process"),
    ("gpu", bool, "one GPU per worker, mixed precision"),
    ("epochs", int, "epochs to train"),
    ("batch_size", int, "global batch size, split over the workers"),
    ("size", int, "input side in pixels, a multiple of 16; depth is half"),
    ("width", float, "width multiplier of every stage"),
    ("lr", float, "peak learning rate"),
    ("on_bad", ["error", "skip"], "on a bad sample: stop, naming it; or skip it and count it"),
    ("train_samples", int, "train on the first N samples only"),
    ("test_samples", int, "evaluate on the first N test samples only"),
    ("cache", str, "folder (s3:// on a cluster) for decoded samples: decoded once, later epochs and runs read them"),
    ("profile", ["cprofile", "torch", "memory"], "profile the run: cProfile per worker, a PyTorch profiler trace, or activation memory per layer"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgbg", description="Train and tune a foreground mask + depth network on Ray.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("synth", help="write a synthetic dataset in the original layout")
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--batches", type=int, default=4, help="number of batches (default 4; the original has 10)")
    p.add_argument("--per-batch", type=int, default=1000, help="samples per batch (default 1000; the original has 40000)")
    p.add_argument("--size", type=int, default=160, help="image side in pixels (default 160); depth is half")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    p.add_argument("--format", choices=["zip", "dir"], default="zip", help="batch{K}_images.zip files or batch{K}/ folders")
    p.add_argument("--picture-textures", type=float, metavar="SHARE",
                   help="share of objects textured with a crop of a picture instead of a drawn pattern (default 0.3)")
    p.add_argument("--scene-textures", type=float, metavar="SHARE",
                   help="share of samples whose object wears a crop of its own background (default 0.15); "
                        "0 for both, with --cast-shadows 0, writes what fgbg wrote before these options")
    p.add_argument("--cast-shadows", type=float, metavar="SHARE",
                   help="share of samples whose object also throws its own shape's shadow on the ground, not in the mask (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_synth)

    p = verbs.add_parser("inspect", help="count samples and find every problem in a dataset")
    p.add_argument("data", help="dataset root (batch{K}_images.zip files or batch{K}/ folders)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="check names and partner files only, decode nothing")
    p.add_argument("--test-batches", type=_batches, default=None, help="batches of the test split (default: the last)")
    p.add_argument("--workers", type=int, default=None, help="processes for decoding (default: one per core)")
    p.set_defaults(run=_inspect)

    p = verbs.add_parser("train", help="train on Ray Train (a local cluster unless --address or RAY_ADDRESS)")
    p.add_argument("--config", help="YAML file of config keys (see fgbg/config.py); flags override it")
    defaults = Config()
    for key, kind, text in TRAIN_FLAGS:
        flag = "--" + key.replace("_", "-")
        default = getattr(defaults, key)
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None, help=text)
        elif isinstance(kind, list):
            p.add_argument(flag, choices=kind, help=f"{text} (default {default or 'off'})")
        else:
            shown = "" if "default" in text else f" (default {default if default not in ('', None) else 'none'})"
            p.add_argument(flag, type=kind, help=text + shown)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config key, e.g. --set w_depth=2 (repeatable)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    p.set_defaults(run=_train)

    p = verbs.add_parser("report", help="write (again) a run's report.md, curves.png and times.png; also while it runs")
    p.add_argument("run_dir", help="a run directory (OUT/NAME), local or a URI")
    p.set_defaults(run=_report)

    p = verbs.add_parser("compare", help="two runs' last metrics and median times per epoch, side by side")
    p.add_argument("run_a", help="a run directory (OUT/NAME), local or a URI")
    p.add_argument("run_b", help="another run directory")
    p.set_defaults(run=_compare)

    p = verbs.add_parser("tune", help="sweep loss weights, widths, batch size … with Ray Tune")
    p.add_argument("--space", required=True, help="search space YAML (see tune_spaces/)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--trials", type=int, default=4, help="samples of the space (each grid value is tried in every one)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's fixed epochs, else 10)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="asha stops weak trials early (compared after equal "
                   "epochs at the final size)")
    p.add_argument("--search", choices=["random", "optuna"], default="random", help="random samples (grids expanded), or Optuna's TPE, "
                   "which learns from the trials so far (no grid: in its space)")
    p.add_argument("--concurrency", type=int, help="trials at a time (default: what the cluster holds now; more waits for an autoscaling cluster to grow)")
    p.add_argument("--workers-per-trial", type=int, default=0, help="data-parallel workers of each trial; 0 (default): one, in the "
                   "trial's own process, which later trials reuse (they start in seconds)")
    p.add_argument("--verbose", action="store_true", help="Tune's own output and the trials' logs, instead of fgbg's table")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--out", default="sweeps", help="where sweeps live; a sweep is OUT/NAME")
    p.add_argument("--name", default="sweep", help="the sweep's name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are not run again")
    p.add_argument("--cache", help="folder (s3:// on a cluster) for decoded samples: decoded once, read by every trial")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config key every trial shares, over the space's fixed: "
                   "e.g. --set size=64 --set train_samples=500 for a first small sweep (repeatable)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.set_defaults(run=_tune)

    p = verbs.add_parser("evaluate", help="metrics and a picture grid of a checkpoint on a dataset")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run directory (its best checkpoint)")
    p.add_argument("--data", required=True, help="dataset root (any dataset in the layout)")
    p.add_argument("--split", choices=["test", "all"], default="test", help="the test split (the last batch) or every sample (default test)")
    p.add_argument("--out", help="folder for metrics.json and results.png (default: evaluations/<time>-<split>/ in the checkpoint's run directory)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per inference batch (default 32)")
    p.add_argument("--on-bad", choices=["error", "skip"], default="error", help="on a bad sample: stop, naming it; or skip it and count it (default error)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--flip", action="store_true", help="average the model's outputs over each pair and its left-right mirror "
                   "(about +0.003 IoU for twice the compute)")
    p.set_defaults(run=_evaluate)

    p = verbs.add_parser("predict", help="masks and depth maps for a dataset in the layout, or for your own fg_bg and bg images")
    engine = p.add_mutually_exclusive_group(required=True)
    engine.add_argument("--checkpoint", help="a checkpoint folder, or a run directory (its best checkpoint): PyTorch, the default engine")
    engine.add_argument("--model", metavar="FILE.onnx", help="or an ONNX file `fgbg export` wrote, run by onnxruntime (pip install "
                        "'fgbg[export]'): the same files and table; on CPUs the faster engine (predict over 800 samples at "
                        "full width: 3.4x the samples/s on 2 cores, docs/benchmarks.md \"Export\")")
    p.add_argument("--data", help="a dataset in the layout (local or s3://): predict its samples, scored against its truths")
    p.add_argument("--split", choices=["train", "test", "all"], default="all", help="with --data: which samples (default all)")
    p.add_argument("--fg-bg", help="or: an image, or a folder of images (local or s3://)")
    p.add_argument("--bg", help="with --fg-bg: the background image, or a folder of them named like the fg_bg images")
    p.add_argument("--out", required=True, help="folder (or s3:// URI) to write into; a second run into it resumes")
    p.add_argument("--batch-size", type=int, default=32, help="samples per inference batch (default 32)")
    p.add_argument("--concurrency", type=int, help="predicting actors (default: one per GPU with --gpu, else one per CPU "
                   "but one; 0: no Ray, one process; a single pair runs so)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor, mixed precision")
    p.add_argument("--raw", action="store_true", help="also raw/NAME.npz: mask probability and depth, float16 at the model's size")
    p.add_argument("--on-bad", choices=["error", "skip"], default="error", help="on a bad image: stop, naming it; or skip it and count it (default error)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--flip", action="store_true", help="average the model's outputs over each pair and its left-right mirror "
                   "(about +0.003 IoU for twice the compute)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs and warnings too")
    p.set_defaults(run=_predict)

    p = verbs.add_parser("export", help="the trained model as an ONNX file or a PyTorch program, to run without fgbg")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run directory (its best checkpoint, as evaluate picks it)")
    p.add_argument("--format", required=True, help="onnx (onnxruntime and other ONNX runtimes; pip install 'fgbg[export]') or torch "
                   "(torch.export's program: torch.export.load(FILE).module())")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx or model.pt2; local or s3://)")
    p.set_defaults(run=_export)

    p = verbs.add_parser("profile", help="parameters, MACs and measured speed of the model")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of every stage (default 1.0)")
    p.add_argument("--size", type=int, default=160, help="input side in pixels (default 160)")
    p.add_argument("--batch", type=int, default=8, help="samples per timed batch (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_profile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FgbgError as e:
        print(f"fgbg {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fgbg {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

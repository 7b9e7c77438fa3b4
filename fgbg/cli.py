"""The `fgbg` command: one verb per job, `fgbg VERB --help` for each."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import FgbgError


def _synth(args) -> int:
    from .synth import SynthSpec, write_dataset

    spec = SynthSpec(args.out, args.batches, args.per_batch, args.size, args.seed, args.format)
    root = write_dataset(spec, workers=args.workers, progress=not args.quiet)
    print(f"wrote {spec.batches * spec.per_batch} samples in {spec.batches} batches ({spec.format}) to {root}")
    return 0


def _inspect(args) -> int:
    from .checks import inspect_dataset

    report = inspect_dataset(args.data, decode=not args.quick, workers=args.workers, test_batches=args.test_batches, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 1 if report["problems"] else 0


def format_report(report: dict) -> str:
    """The inspect report as a person reads it."""
    lines = [f"{report['root']}: {report['samples']} samples in {len(report['batches'])} batches"]
    split_of = {b: name for name, s in report["splits"].items() for b in s["batches"]}
    for k, b in report["batches"].items():
        lines.append(f"  batch {k:>3}  {b['source']:<24} {b['samples']:>7} samples  {b['backgrounds']:>4} backgrounds  {split_of.get(int(k), '')}")
    lines.append("splits: " + ", ".join(f"{n} {s['samples']} samples (batches {s['batches']})" for n, s in report["splits"].items()))
    if report["sizes"]:
        lines.append("sizes: " + "; ".join(f"{k} " + ", ".join(f"{sz} ×{n}" for sz, n in c.items()) for k, c in report["sizes"].items()))
    problems = report["problems"]
    lines.append(f"problems: {len(problems) or 'none'}")
    for p in problems[:200]:
        lines.append(f"  {p['source']}: {p['member'] + ': ' if p['member'] else ''}{p['what']}")
    if len(problems) > 200:
        lines.append(f"  … and {len(problems) - 200} more (--json lists all)")
    return "\n".join(lines)


def _batches(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch numbers like 10 or 9,10, not {text!r}") from None


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

"""`fgbg inspect`: counts per batch and split, image sizes, and every problem in a dataset."""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pyarrow.compute as pc

from . import storage
from .errors import BadSample
from .layout import Problem, load_manifest
from .reader import open_jpeg, read_member

KINDS = ("fg_bg", "bg", "mask", "depth")


def check_file(source: str, member: str) -> tuple[int, int]:
    """(width, height) of a JPEG after decoding it fully (at 1/8 scale: truncation still shows)."""
    with open_jpeg(read_member(source, member), source, member) as img:
        size = img.size
        img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
        return size


def _check_chunk(files: list[tuple[str, str, str]]) -> list[tuple[str, str, str, object]]:
    """(kind, source, member, (w, h) or the problem's text) for each file."""
    out = []
    for kind, source, member in files:
        try:
            out.append((kind, source, member, check_file(source, member)))
        except BadSample as e:
            out.append((kind, source, member, e.what))
    return out


def inspect_dataset(root, decode: bool = True, workers: int | None = None, test_batches=None, progress: bool = False) -> dict:
    """The dataset's report: samples, batches, splits, sizes, problems (each naming zip/folder and member).

    decode=False checks names and partners only; otherwise every image is decoded.
    """
    start = time.perf_counter()
    manifest = load_manifest(root)
    indexed = time.perf_counter()
    table = manifest.table
    problems: list[Problem] = list(manifest.problems)
    batches = {}
    for b in manifest.batches:
        rows = table.filter(pc.equal(table.column("batch"), b))
        batches[str(b)] = {
            "source": rows.column("source")[0].as_py(),
            "samples": rows.num_rows,
            "backgrounds": len(set(rows.column("bg").to_pylist())),
        }
    split = manifest.split(test_batches) if len(table) else {"train": table, "test": table}
    splits = {name: {"batches": sorted(set(t.column("batch").to_pylist())), "samples": t.num_rows} for name, t in split.items()}
    sizes: dict[str, Counter] = {k: Counter() for k in KINDS}
    checked = 0
    if decode and len(table):
        by_size: dict[tuple, list] = {}
        # the AWS SDK inside pyarrow does not survive a fork: processes for an object store are spawned
        start_method = "spawn" if storage.is_uri(manifest.root) else "fork"
        for kind, source, member, result in _run_checks(_files_to_check(manifest), workers, progress, start_method):
            checked += 1
            if isinstance(result, str):
                problems.append(Problem(os.path.basename(source), member, result))
                continue
            sizes[kind][result] += 1
            where = by_size.setdefault((kind, result), [])
            if len(where) < _MAX_LISTED:
                where.append((os.path.basename(source), member))
        problems += _size_problems(sizes, by_size)
    return {
        "root": str(manifest.root),
        "samples": len(table),
        "batches": batches,
        "splits": splits,
        "sizes": {k: {f"{w}x{h}": n for (w, h), n in sorted(c.items())} for k, c in sizes.items() if c},
        "problems": [{"source": p.source, "member": p.member, "what": p.what} for p in problems],
        "files_checked": checked,
        "seconds": {"index": round(indexed - start, 2), "check": round(time.perf_counter() - indexed, 2)},  # (index: or its cache)
    }


_MAX_LISTED = 10_000  # files of one unexpected size named one by one; past that, one line says how many more


def _size_problems(sizes: dict[str, Counter], by_size: dict[tuple, list]) -> list[Problem]:
    """Every image whose size is not the dataset's: fg_bg, bg and mask share the fg_bg size, depth has its own."""
    problems = []
    expected = {}
    if sizes["fg_bg"]:
        expected["fg_bg"] = expected["bg"] = expected["mask"] = sizes["fg_bg"].most_common(1)[0][0]
    if sizes["depth"]:
        expected["depth"] = sizes["depth"].most_common(1)[0][0]
    for (kind, size), where in sorted(by_size.items()):
        want = expected.get(kind)
        if want is None or size == want:
            continue
        what = f"wrong size {size[0]}x{size[1]} (expected {want[0]}x{want[1]} like the other {kind} images)"
        problems += [Problem(source, member, what) for source, member in where]
        if sizes[kind][size] > len(where):
            problems.append(Problem(where[-1][0], "", f"and {sizes[kind][size] - len(where)} more {kind} images of size {size[0]}x{size[1]}"))
    return problems


def _files_to_check(manifest) -> list[tuple[str, str, str]]:
    """Every image of every complete sample once (a background once, however many samples share it)."""
    table = manifest.with_paths()
    cols = {k: table.column(k).to_pylist() for k in ("source", *KINDS)}
    files, seen_bg = [], set()
    for i, source in enumerate(cols["source"]):
        for kind in ("fg_bg", "mask", "depth"):
            files.append((kind, source, cols[kind][i]))
        if (source, cols["bg"][i]) not in seen_bg:
            seen_bg.add((source, cols["bg"][i]))
            files.append(("bg", source, cols["bg"][i]))
    return files


def _run_checks(files, workers: int | None, progress: bool, start: str = "fork"):
    if workers is None:
        workers = os.cpu_count() or 1
    chunk = 500
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    bar = None
    if progress:
        from .progress import Meter

        bar = Meter(len(files), "inspect", unit="file")
    pool = ProcessPoolExecutor(workers, mp_context=get_context(start)) if workers > 1 and len(chunks) > 1 else None
    try:
        for results in pool.map(_check_chunk, chunks) if pool else map(_check_chunk, chunks):
            yield from results
            if bar:
                bar.update(len(results))
    finally:
        if pool:
            pool.shutdown()
        if bar:
            bar.close()


def format_inspection(report: dict) -> str:
    """An inspection (inspect_dataset's report) as a person reads it."""
    lines = [f"{report['root']}: {report['samples']} samples in {len(report['batches'])} batches"]
    split_of = {b: name for name, s in report["splits"].items() for b in s["batches"]}
    for k, b in report["batches"].items():
        lines.append(f"  batch {k:>3}  {b['source']:<24} {b['samples']:>7} samples  {b['backgrounds']:>4} backgrounds  {split_of.get(int(k), '')}")
    lines.append("splits: " + ", ".join(f"{n} {s['samples']} samples (batches {s['batches']})" for n, s in report["splits"].items()))
    if report["sizes"]:
        lines.append("sizes: " + "; ".join(f"{k} " + ", ".join(f"{sz} ×{n}" for sz, n in c.items()) for k, c in report["sizes"].items()))
    seconds = report.get("seconds", {})
    if report.get("files_checked"):
        lines.append(f"checked {report['files_checked']} files in {seconds['check']:.1f} s (the index: {seconds['index']:.1f} s)")
    problems = report["problems"]
    lines.append(f"problems: {len(problems) or 'none'}")
    for p in problems[:200]:
        lines.append(f"  {p['source']}: {p['member'] + ': ' if p['member'] else ''}{p['what']}")
    if len(problems) > 200:
        lines.append(f"  … and {len(problems) - 200} more (--json lists all)")
    return "\n".join(lines)

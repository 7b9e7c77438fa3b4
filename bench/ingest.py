"""Ingest throughput: the Ray Data pipeline against a plain decode loop and torch's DataLoader.

Same files, same decode (fgbg.reader), one pass over the set per repeat; medians of --repeats,
the pipelines taking turns. Also the same pass read from the decoded-sample cache (fgbg.cache).
    python bench/ingest.py [--samples 4000] [--size 160] [--repeats 5]
Prints a table and writes bench/out/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fgbg.layout import load_manifest  # noqa: E402
from fgbg.reader import decode_batch, load_sample  # noqa: E402
from fgbg.synth import SynthSpec, write_dataset  # noqa: E402

OUT = Path(__file__).parent / "out"


def plain_loop(table, size: int) -> int:
    """One process decoding batch after batch: the per-core decode limit."""
    rows = {k: np.array(table.column(k).to_pylist(), dtype=object) for k in table.column_names}
    n = 0
    for i in range(0, table.num_rows, 64):
        n += len(decode_batch({k: v[i : i + 64] for k, v in rows.items()}, size=size)["fg_bg"])
    return n


def parallel_loops(table, size: int, processes: int) -> int:
    """The plain loop in `processes` processes at once, each on its share, nothing sent back but a count:
    what the cores give to decoding when nothing else runs."""
    import multiprocessing

    share = -(-table.num_rows // processes)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.starmap(plain_loop, [(table.slice(i, share), size) for i in range(0, table.num_rows, share)]))


class _TorchSet:
    """The manifest as a map-style torch dataset (what a user would write by hand)."""

    def __init__(self, table, size: int):
        self.rows, self.size = table.to_pylist(), size

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return load_sample(self.rows[i], self.size, self.size // 2)


def dataloader(table, size: int, workers: int) -> int:
    import torch

    loader = torch.utils.data.DataLoader(_TorchSet(table, size), batch_size=64, num_workers=workers)
    return sum(len(b["fg_bg"]) for b in loader)


def ray_data(table, size: int, reserve: bool = False) -> int:
    from fgbg.ingest import IngestConfig, build_dataset

    ds = build_dataset(table, IngestConfig(size=size))
    ds.context.op_resource_reservation_enabled = reserve  # fgbg turns Ray's per-operator reservation off
    return sum(len(b["fg_bg"]) for b in ds.iter_batches(batch_size=64, batch_format="numpy"))


def ray_cache(table, size: int, root: Path) -> int:
    """The same pass read from fgbg's decoded-sample cache (written before the first repeat)."""
    from fgbg.cache import cached_dataset
    from fgbg.ingest import IngestConfig

    ds = cached_dataset(table, IngestConfig(size=size), str(root), say=lambda _: None)
    return sum(len(b["fg_bg"]) for b in ds.iter_batches(batch_size=64, batch_format="numpy"))


def timed(pipelines: dict, repeats: int) -> dict:
    """Medians of samples/s, the pipelines interleaved (a slow spell of the machine hits each alike), after a warm-up round."""
    rates = {name: [] for name in pipelines}
    for r in range(repeats + 1):
        for name, fn in pipelines.items():
            t = time.perf_counter()
            n = fn()
            if r:  # round 0 starts worker processes and fills caches
                rates[name].append(n / (time.perf_counter() - t))
    return {name: {"median_samples_per_s": round(statistics.median(x), 1), "runs": [round(v, 1) for v in x]} for name, x in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    data = OUT / f"data-{args.samples}-{args.size}"
    if not data.exists():
        write_dataset(SynthSpec(str(data), batches=1, per_batch=args.samples, size=args.size), progress=True)
    m = load_manifest(data)
    table = m.with_paths()

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    cache = Path(tempfile.mkdtemp(prefix="fgbg-bench-cache-"))
    ray_data(table, args.size)  # starts the worker processes, which the cache's write then finds running
    t = time.perf_counter()
    ray_cache(table, args.size, cache)  # decodes into the cache once
    cache_write = table.num_rows / (time.perf_counter() - t)
    results = timed({
        "plain loop, 1 process": lambda: plain_loop(table, args.size),
        f"plain loops, {cores} processes": lambda: parallel_loops(table, args.size, cores),
        "torch DataLoader, 2 workers": lambda: dataloader(table, args.size, 2),
        "Ray Data (fgbg.ingest)": lambda: ray_data(table, args.size),
        "Ray Data, Ray's CPU reservation on": lambda: ray_data(table, args.size, reserve=True),
        "Ray Data from the cache (--cache)": lambda: ray_cache(table, args.size, cache),
    }, args.repeats)
    shutil.rmtree(cache)
    ray.shutdown()

    limit = results["plain loop, 1 process"]["median_samples_per_s"] * cores
    ray_rate = results["Ray Data (fgbg.ingest)"]["median_samples_per_s"]
    dl_rate = results["torch DataLoader, 2 workers"]["median_samples_per_s"]
    parallel = results[f"plain loops, {cores} processes"]["median_samples_per_s"]
    summary = {
        "samples": args.samples,
        "size": args.size,
        "cores": cores,
        "repeats": args.repeats,
        "results": results,
        "decode_limit_samples_per_s": round(limit, 1),
        "ray_vs_decode_limit": round(ray_rate / limit, 3),
        "ray_vs_parallel_loops": round(ray_rate / parallel, 3),
        "ray_vs_dataloader": round(ray_rate / dl_rate, 3),
        "cache_write_samples_per_s": round(cache_write, 1),
        "cache_vs_decoding": round(results["Ray Data from the cache (--cache)"]["median_samples_per_s"] / ray_rate, 3),
    }
    print(f"{'pipeline':<36} {'median samples/s':>17}   runs")
    for name, r in results.items():
        print(f"{name:<36} {r['median_samples_per_s']:>17}   {r['runs']}")
    print(f"decode limit (plain × {cores} cores): {limit:.1f} samples/s")
    print(f"Ray Data / decode limit: {summary['ray_vs_decode_limit']}   Ray Data / {cores} plain processes: "
          f"{summary['ray_vs_parallel_loops']}   Ray Data / DataLoader: {summary['ray_vs_dataloader']}")
    print(f"cache: written at {cache_write:.0f} samples/s (one decoding pass), read at {summary['cache_vs_decoding']}× decoding")
    OUT.mkdir(exist_ok=True)
    (OUT / "ingest.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

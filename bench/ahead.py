"""How much Ray Data decodes ahead of a slow consumer, and how fast it decodes for a fast one, with Ray Data's budgets
off (how fgbg decodes for training) and on (how `fgbg evaluate` reads).

The test batch of a dataset through fgbg's decoding (fgbg.ingest.samples_dataset, 160×160). slow: a consumer taking
32 samples every 0.1 s (320 samples/s) for 30 s, the object store's peak use watched; fast: every sample taken as it
comes, samples/s after the first batch.

    python bench/ahead.py --data /work/scale/data-400000            # each setting, slow and fast, one after another
Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("off", "on", "on_512mb", "off_downstream_2")


def one(data: str, setting: str, mode: str) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import ray
    from scale import _object_store_bytes

    from fgbg.cluster import connect, quiet_ray_data
    from fgbg.ingest import IngestConfig, samples_dataset
    from fgbg.layout import load_manifest

    connect(num_cpus=2)
    quiet_ray_data()
    manifest = load_manifest(data)
    ds = samples_dataset(manifest.with_paths(manifest.split()["test"]), IngestConfig(size=160))  # budgets off, as decoding sets them
    ctx = ds.context
    if setting.startswith("on"):
        ctx.op_resource_reservation_enabled = True
    if setting == "on_512mb":
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=512 * 2**20)
    if setting == "off_downstream_2":
        ctx.downstream_capacity_backpressure_ratio = 2.0
    address, peak, done = ray.get_runtime_context().gcs_address, [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _object_store_bytes(address))
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    start, first, n = time.perf_counter(), None, 0
    for batch in ds.iter_batches(batch_size=32, batch_format="numpy"):
        if first is None:
            first, first_n = time.perf_counter(), len(batch["bad"])
        n += len(batch["bad"])
        if mode == "slow":
            time.sleep(0.1)
            if time.perf_counter() - start > 30:
                break
    end = time.perf_counter()
    done.set()
    return {"setting": setting, "mode": mode, "samples": n, "samples_per_s": round((n - first_n) / (end - first), 1),
            "peak_object_store_mb": peak[0] >> 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a dataset in the layout (its test batch is read)")
    ap.add_argument("--one", nargs=2, metavar=("SETTING", "MODE"), help=argparse.SUPPRESS)  # one run, in its own process
    args = ap.parse_args()
    if args.one:
        return print(json.dumps(one(args.data, *args.one)))
    for mode in ("slow", "fast"):
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--data", args.data, "--one", setting, mode], capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{setting} {mode}: failed\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()

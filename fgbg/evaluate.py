"""Evaluate a checkpoint on any dataset in the layout: metrics beside the threshold rule's, and a picture grid."""

from __future__ import annotations

import json
import time

from . import storage
from .checkpoints import load_model
from .errors import FgbgError, find_bad_sample
from .pictures import png_bytes, result_grid
from .progress import Meter
from .report import HISTORY, append_evaluation, write_report
from .step import default_device

AHEAD_BYTES = 512 * 2**20  # decoded samples waiting for inference in the object store, at most


def evaluate(checkpoint, data, split: str = "test", out=None, batch_size: int = 32, on_bad: str = "error", address=None,
             flip: bool = False) -> dict:
    """Metrics of a checkpoint over a dataset's test split (or all of it), decoded by Ray Data at the model's size;
    with flip, of the mean of the model's outputs over each pair and its mirror (fgbg.model.infer).

    Writes metrics.json and results.png (bg, fg_bg, true and predicted mask, true and predicted depth) to out.
    """
    from .cluster import connect, quiet_ray_data
    from .ingest import IngestConfig, samples_dataset
    from .layout import load_manifest
    from .metrics import SetMetrics
    from .step import evaluate_batches

    if split not in ("test", "all"):
        raise FgbgError(f"--split must be test or all, not {split!r}")
    device = default_device()
    model, cfg, ckpt = load_model(checkpoint, device)
    manifest = load_manifest(data)
    manifest.report_problems(on_bad)
    table = manifest.table if split == "all" else manifest.split()["test"]
    if table.num_rows == 0:
        raise FgbgError(f"{data}: no samples in the {split} split")
    connect(address)
    quiet_ray_data()
    ds = samples_dataset(manifest.with_paths(table), IngestConfig(size=cfg.size, on_bad=on_bad))
    # Inference here, in the driver, is far slower than decoding: with Ray Data's budgets off (as decoding sets them,
    # fgbg.cache.manifest_blocks) it would decode the whole split ahead into the object store (6.3 GB of 40,000
    # samples at 160x160). On, and 512 MB, what is decoded ahead stays the same at any size (docs/benchmarks.md)
    ds.context.op_resource_reservation_enabled = True
    ds.context.execution_options.resource_limits = ds.context.execution_options.resource_limits.copy(object_store_memory=AHEAD_BYTES)
    grid = {}

    def keep_grid(batch, mask_logits, depth):
        grid["image"] = result_grid(batch, mask_logits, depth)

    meter, times = Meter(table.num_rows, "evaluate"), {"start": time.perf_counter()}

    def counted(batches):  # the meter, and when the first batch came (the start-up: Ray Data's pipeline)
        for batch in batches:
            times.setdefault("first", time.perf_counter())
            meter.update(len(batch["bad"]))
            yield batch

    try:
        batches = counted(ds.iter_torch_batches(batch_size=batch_size))
        sums = evaluate_batches(model, batches, device, channels_last=cfg.channels_last, on_first=keep_grid, flip=flip).sums
    except Exception as e:
        bad = find_bad_sample(e)
        if bad is None:
            raise
        raise FgbgError(f"{bad} (run `fgbg inspect`, or evaluate with --on-bad skip)") from None
    finally:
        meter.close()
    end = time.perf_counter()
    metrics = SetMetrics.compute(sums)
    metrics.pop("loss")
    run_dir = ckpt.rsplit("/", 1)[0]  # a checkpoint_* folder's run
    out = storage.absolute(out) if out else storage.join(run_dir, "evaluations", time.strftime(f"%Y%m%d-%H%M%S-{split}"))
    first = times.get("first", end) - times["start"]
    result = {**metrics, "checkpoint": ckpt, "data": storage.absolute(data), "split": split, "flip": flip, "out": out,
              "seconds": round(end - times["start"], 2), "first_batch_s": round(first, 2),  # after the first: the steady rate
              "samples_per_s": round(table.num_rows / max(end - times["start"] - first, 1e-9), 2),
              "pictures": storage.join(out, "results.png"), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    storage.write_bytes(storage.join(out, "metrics.json"), json.dumps(result, indent=2).encode())
    if grid:
        storage.write_bytes(storage.join(out, "results.png"), png_bytes(grid["image"]))
    if storage.info(storage.join(run_dir, HISTORY)).is_file:  # the run's report lists its evaluations
        append_evaluation(run_dir, result)
        write_report(run_dir)
    return result

"""Evaluate a checkpoint on any dataset in the layout, and predict for a user's own image pairs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import storage
from .checkpoints import load_model
from .errors import FgbgError, find_bad_sample
from .pictures import plasma, png_bytes, result_grid
from .report import HISTORY, append_evaluation, write_report
from .step import default_device


def evaluate(checkpoint, data, split: str = "test", out=None, batch_size: int = 32, on_bad: str = "error", address=None) -> dict:
    """Metrics of a checkpoint over a dataset's test split (or all of it), decoded by Ray Data at the model's size.

    Writes metrics.json and results.png (bg, fg_bg, true and predicted mask, true and predicted depth) to out.
    """
    from tqdm import tqdm

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
    grid = {}

    def keep_grid(batch, mask_logits, depth):
        grid["image"] = result_grid(batch, mask_logits, depth)

    batches = tqdm(ds.iter_torch_batches(batch_size=batch_size), total=-(-table.num_rows // batch_size), desc="evaluate",
                   unit="batch", disable=None)  # a bar on a terminal only
    try:
        sums = evaluate_batches(model, batches, device, on_first=keep_grid).sums
    except Exception as e:
        bad = find_bad_sample(e)
        if bad is None:
            raise
        raise FgbgError(f"{bad} (run `fgbg inspect`, or evaluate with --on-bad skip)") from None
    metrics = SetMetrics.compute(sums)
    metrics.pop("loss")
    run_dir = ckpt.rsplit("/", 1)[0]  # a checkpoint_* folder's run
    out = storage.absolute(out) if out else storage.join(run_dir, "evaluations", time.strftime(f"%Y%m%d-%H%M%S-{split}"))
    result = {**metrics, "checkpoint": ckpt, "data": storage.absolute(data), "split": split, "out": out,
              "pictures": storage.join(out, "results.png"), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    storage.write_bytes(storage.join(out, "metrics.json"), json.dumps(result, indent=2).encode())
    if grid:
        storage.write_bytes(storage.join(out, "results.png"), png_bytes(grid["image"]))
    if storage.info(storage.join(run_dir, HISTORY)).is_file:  # the run's report lists its evaluations
        append_evaluation(run_dir, result)
        write_report(run_dir)
    return result


def _load_rgb(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    try:
        img = Image.open(path).convert("RGB")
    except Exception as e:
        raise FgbgError(f"{path}: cannot read the image ({e})") from None
    original = img.size
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None], original


def _pairs(fg_bg: Path, bg: Path) -> list[tuple[Path, Path]]:
    """(fg_bg, bg) pairs: two files; a folder of fg_bg images with one bg; or two folders matched by name."""
    if not fg_bg.exists() or not bg.exists():
        raise FgbgError(f"{fg_bg if not fg_bg.exists() else bg}: no such file or folder")
    if fg_bg.is_file():
        if bg.is_dir():
            raise FgbgError(f"{bg}: a folder of backgrounds needs a folder of fg_bg images (--fg-bg DIR)")
        return [(fg_bg, bg)]
    images = sorted(p for p in fg_bg.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise FgbgError(f"{fg_bg}: no .jpg or .png images in it")
    if bg.is_file():
        return [(p, bg) for p in images]
    missing = [p.name for p in images if not (bg / p.name).is_file()]
    if missing:
        raise FgbgError(f"{bg}: no background named like {', '.join(missing[:5])} (backgrounds are matched to fg_bg images by file name)")
    return [(p, bg / p.name) for p in images]


def predict(checkpoint, fg_bg, bg, out) -> list[dict]:
    """mask.png (white foreground on black) and depth.png (plasma) for each pair, at the fg_bg image's size."""
    model, cfg, _ = load_model(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(Path(fg_bg), Path(bg))
    written = []
    with torch.no_grad():
        for fg_path, bg_path in pairs:
            x, original = _load_rgb(fg_path, cfg.size)
            b, bg_size = _load_rgb(bg_path, cfg.size)
            if bg_size != original:
                raise FgbgError(f"{fg_path} is {original[0]}×{original[1]} but its background {bg_path} is {bg_size[0]}×{bg_size[1]}: "
                                "the two images of a pair are photos of one scene, of one size")
            mask_logits, depth = model(x, b)
            mask = (torch.sigmoid(mask_logits[0, 0]) > 0.5).numpy().astype(np.uint8) * 255
            prefix = "" if len(pairs) == 1 else f"{fg_path.stem}_"
            mask_path, depth_path = out / f"{prefix}mask.png", out / f"{prefix}depth.png"
            Image.fromarray(mask).resize(original, Image.NEAREST).save(mask_path)
            Image.fromarray(plasma(depth[0, 0].numpy())).resize(original, Image.BILINEAR).save(depth_path)
            written.append({"fg_bg": str(fg_path), "bg": str(bg_path), "mask": str(mask_path), "depth": str(depth_path)})
    return written
